"""A loader used from a notebook leaves the process as it found it (API audit): torch's and
numba's thread counts are the caller's again once an epoch ends or the loader closes, and a
closed loader holds no descriptor of its beton, even while something (a kept traceback) still
references it."""
from __future__ import annotations

import gc
import os

import numba
import pytest
import torch

from ffcv_dp4tl.data import AugSpec, make_loader


def _beton_fds(beton) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == str(beton)
        except OSError:
            pass
    return n


def _loader(index_dataset, train=False):
    aug = AugSpec.for_train() if train else AugSpec.for_eval()
    return make_loader(index_dataset.root, "train", aug=aug, batch_size=16, resolution=16,
                       num_workers=1)


@pytest.fixture
def caller_counts():
    """torch and numba set to 2 threads (the loader runs with 1 worker): restored after."""
    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(2)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    yield torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_the_callers_thread_counts_come_back_after_make_loader_an_epoch_and_close(
        index_dataset, caller_counts):
    loader = _loader(index_dataset)
    assert (torch.get_num_threads(), numba.get_num_threads()) == caller_counts
    seen = []
    for _ in loader:
        seen.append(torch.get_num_threads())  # (inside the epoch: the loader's workers)
    assert seen and set(seen) == {1}
    assert (torch.get_num_threads(), numba.get_num_threads()) == caller_counts
    for _ in loader:  # left early: the counts come back with close()
        break
    loader.close()
    assert (torch.get_num_threads(), numba.get_num_threads()) == caller_counts


def test_a_closed_loader_holds_no_descriptor_of_its_beton_while_referenced(index_dataset):
    beton = index_dataset.root / "train.beton"
    gc.collect()
    baseline = _beton_fds(beton)
    kept = []
    for _ in range(3):  # interrupted iterations, their tracebacks (and loaders) kept
        loader = _loader(index_dataset, train=True)
        try:
            for i, _batch in enumerate(loader):
                if i == 1:
                    raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            kept.append((loader, e))
        loader.close()
    gc.collect()
    assert _beton_fds(beton) == baseline
    loader = kept[0][0]  # a closed loader maps its beton again when iterated again
    assert sum(len(b.labels) for b in loader) > 0
    loader.close()
    assert _beton_fds(beton) == baseline


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_the_callers_counts_come_back_when_two_epochs_overlap_without_nesting(
        index_dataset, caller_counts):
    """Two loaders' epochs interleaved, the first ending first: each restoring its own snapshot
    left the first loader's worker count (1) set for the rest of the process (review)."""
    first = make_loader(index_dataset.root, "train", aug=AugSpec.for_eval(), batch_size=16,
                        resolution=16, num_workers=1)
    second = make_loader(index_dataset.root, "train", aug=AugSpec.for_eval(), batch_size=16,
                         resolution=16, num_workers=2)
    a = iter(first)
    next(a)
    b = iter(second)
    next(b)
    for _ in a:  # the first epoch ends while the second still runs
        pass
    for _ in b:
        pass
    assert (torch.get_num_threads(), numba.get_num_threads()) == caller_counts
    first.close()
    second.close()


def test_close_while_another_thread_iterates_leaves_that_iteration_whole(index_dataset):
    """close() from another thread released the beton's map under a running epoch: the
    iterating thread failed in numba ("read ... with parameters (uint64, none)"; review). The
    map now stays while an iteration executes; the iterating thread ends without an error."""
    import threading

    loader = _loader(index_dataset)
    started, errors = threading.Event(), []

    def iterate():
        try:
            for _ in range(3):
                for _batch in loader:
                    started.set()
        except Exception as e:  # noqa: BLE001 - what the test looks for
            errors.append(e)

    t = threading.Thread(target=iterate)
    t.start()
    assert started.wait(60)
    loader.close()
    t.join(120)
    assert not t.is_alive() and errors == []
    loader.close()
