"""A WebDataset loader worker that never delivers a batch stops the loader with one line.

Cluster audit (torchrun, 2 CPU ranks, ``--format wds``, once in 23 launches): a DataLoader worker
forked in the first epoch hung in CPython's post-fork setup (fork with threads). It stayed alive,
so torch never noticed, and the DataLoader had no timeout: the run waited forever. The loader now
waits ``$DP4TL_LOADER_TIMEOUT`` seconds (300 by default) and raises :class:`LoaderTimeout`, after
stopping its workers (the stuck one SIGKILLed: it has SIGTERM blocked)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl.data import AugSpec, load_manifest, make_loader
from ffcv_dp4tl.data import wds_loader
from ffcv_dp4tl.data.sampling import EpochPlan
from ffcv_dp4tl.data.wds_loader import LoaderTimeout, WdsMaskedLoader, _MaskedShardDataset
from ffcv_dp4tl.errors import DP4TLError

#: what the stalled worker does instead of its batch: longer than the test's timeout and the
#: loader's shutdown together; the old loader (no timeout) returned the batch after it
STALL_S = 30


def _loader(root: Path, workers: int):
    return make_loader(root, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=8,
                       resolution=16, num_workers=workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_that_delivers_no_batch_is_one_line_and_is_stopped(index_dataset, tmp_path,
                                                                      monkeypatch):
    """The worker stalls on its first batch with SIGTERM blocked (as a child stuck before its
    at-fork hooks is: ``stopping`` blocks SIGTERM across the fork). The loader raises the
    one-line error within the timeout plus the shutdown, no worker is left, and the next
    iteration starts fresh workers and reads the whole epoch."""
    stall, pid_file = tmp_path / "stall", tmp_path / "worker.pid"
    stall.touch()
    real = _MaskedShardDataset._batch

    def stalling(self, *item):
        if stall.exists():  # (read in the worker: the fork inherits this patch)
            pid_file.write_text(str(os.getpid()))
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            time.sleep(STALL_S)
        return real(self, *item)

    monkeypatch.setattr(_MaskedShardDataset, "_batch", stalling)
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", "2")
    loader = _loader(index_dataset.root, 1)
    t0 = time.monotonic()
    with pytest.raises(LoaderTimeout) as info:  # (a DP4TLError: the CLI prints it as one line)
        next(iter(loader))
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, DP4TLError)
    del info  # (its traceback holds this frame: a cycle that would leave the loader to the GC)
    assert msg.startswith("a data-loader worker delivered no batch of split 'train' in 2 s "
                          "(a worker stuck at its start")
    assert "DP4TL_LOADER_TIMEOUT=SECONDS sets the wait (0 = wait forever)" in msg
    assert "a training run resumes from its last checkpoint" in msg
    assert elapsed < STALL_S - 5, f"took {elapsed:.1f} s"  # 2 s + torch's shutdown (2 x 5 s)
    pid = int(pid_file.read_text())
    assert not _alive(pid), "the stuck worker was left running"
    assert pid not in [p.pid for p in multiprocessing.active_children()]
    assert loader.dataloader._iterator is None and loader._stream is None

    stall.unlink()  # the next iteration forks fresh workers (which do not stall)
    batches = list(loader)
    assert sorted(i for b in batches for i in b.indices.tolist()) == list(range(len(index_dataset)))


def test_no_workers_waits_without_a_timeout(index_dataset, monkeypatch):
    """torch refuses a timeout without workers: the loader passes 0 there, and loads."""
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", "2")
    loader = _loader(index_dataset.root, 0)
    assert loader.timeout == 0 and loader.dataloader.timeout == 0
    assert sum(len(b.indices) for b in loader) == len(index_dataset)


@pytest.mark.parametrize("env,want", [(None, 300), ("", 300), (" 45 ", 45), ("0", 0)])
def test_the_timeout_is_300_s_unless_the_environment_says(index_dataset, monkeypatch, env, want):
    assert wds_loader.LOADER_TIMEOUT_S == 300
    if env is None:
        monkeypatch.delenv("DP4TL_LOADER_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", env)
    loader = _loader(index_dataset.root, 1)  # (no worker starts before the first iteration)
    assert loader.timeout == want and loader.dataloader.timeout == want


@pytest.mark.parametrize("env", ["abc", "-1", "1.5", "²"])
def test_a_bad_timeout_in_the_environment_is_one_line(index_dataset, monkeypatch, env):
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", env)
    with pytest.raises(DP4TLError, match=r"^DP4TL_LOADER_TIMEOUT=.* is not a whole number >= 0: "
                                         r"give the seconds to wait .* \(0 = wait forever\)"):
        _loader(index_dataset.root, 1)


def test_the_timeout_argument(index_dataset, monkeypatch):
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", "abc")  # (an explicit timeout does not read it)
    split = load_manifest(index_dataset.root).split("train")
    plan = EpochPlan(np.arange(8, dtype=np.int64), shuffle=False, seed=0)
    kw = dict(batch_size=4, resolution=16, aug=AugSpec.for_eval(), num_workers=1)
    assert WdsMaskedLoader(split, plan, timeout=1.5, **kw).dataloader.timeout == 1.5
    for bad in (-1, float("nan"), True, "5"):
        with pytest.raises(DP4TLError, match="timeout must be a number of seconds >= 0"):
            WdsMaskedLoader(split, plan, timeout=bad, **kw)


def test_other_runtime_errors_pass_through(index_dataset):
    """Only torch's "DataLoader timed out" becomes the line; a dead worker's error stays."""
    loader = _loader(index_dataset.root, 1)

    class DeadWorker:
        num_workers = 1

        def __iter__(self):
            raise RuntimeError("DataLoader worker (pid(s) 123) exited unexpectedly")

    loader.dataloader = DeadWorker()
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        next(iter(loader))
