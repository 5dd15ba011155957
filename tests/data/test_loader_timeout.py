"""A loader that delivers no batch stops with one line, whichever loader it is.

WebDataset workers. Cluster audit (torchrun, 2 CPU ranks, ``--format wds``, once in 23 launches): a DataLoader worker
forked in the first epoch hung in CPython's post-fork setup (fork with threads). It stayed alive,
so torch never noticed, and the DataLoader had no timeout: the run waited forever. The loader now
waits ``$DP4TL_LOADER_TIMEOUT`` seconds (300 by default) and raises :class:`LoaderTimeout`, after
stopping its workers (the stuck one SIGKILLed: it has SIGTERM blocked).

ffcv's epoch thread and the GPU-decode loader's read-ahead threads wait under the same timeout:
a decode stuck on storage that stopped answering (a network mount) held the run, and its
allocation, for good. A stuck thread cannot be stopped; it is a daemon, so the process still
exits after the line (the read-ahead threads were a ``ThreadPoolExecutor``'s, which the
interpreter joins at exit without a timeout). And an ffcv epoch thread that died outside its
pipeline (ffcv 1.0.2 prints the traceback and leaves the consumer waiting forever) raises its
error in the consumer."""
from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl import stopping
from ffcv_dp4tl.data import AugSpec, DeviceDecodeLoader, load_manifest, make_loader
from ffcv_dp4tl.data import gpu_decode as gd
from ffcv_dp4tl.data import ffcv_compile, interface
from ffcv_dp4tl.data.ffcv_compile import ffcv_classes
from ffcv_dp4tl.data.interface import LoaderTimeout
from ffcv_dp4tl.data.sampling import EpochPlan
from ffcv_dp4tl.data.wds_loader import WdsMaskedLoader, _MaskedShardDataset
from ffcv_dp4tl.errors import DP4TLError

#: what the stalled worker does instead of its batch: longer than the test's timeout and the
#: loader's shutdown together; the old loader (no timeout) returned the batch after it
STALL_S = 30

#: the loader timeout of the tests whose loader, once free, reads a whole epoch under it (every
#: batch in time): tiny batches take milliseconds, but 1 s (2 s for a worker's, its fork and
#: start included) left little room on a loaded machine; still far below STALL_S
TIMEOUT_S = 3


#: (format, decode) of every loader make_loader builds
LOADERS = [("wds", "cpu"), ("ffcv", "cpu"), ("wds", "gpu")]


def _loader(root: Path, workers: int, fmt: str = "wds", decode: str = "cpu"):
    return make_loader(root, "train", fmt=fmt, decode=decode, aug=AugSpec.for_eval(),
                       batch_size=8, resolution=16, num_workers=workers)


def _timeout_of(loader) -> float:
    """The timeout a loader waits with (and, for the WebDataset loader, that torch got)."""
    if isinstance(loader, WdsMaskedLoader):
        assert loader.dataloader.timeout == loader.timeout
    elif not isinstance(loader, DeviceDecodeLoader):  # ffcv: its epoch threads read it there
        assert loader.loader.timeout == loader.timeout
    return loader.timeout


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
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", str(TIMEOUT_S))
    loader = _loader(index_dataset.root, 1)
    t0 = time.monotonic()
    with pytest.raises(LoaderTimeout) as info:  # (a DP4TLError: the CLI prints it as one line)
        next(iter(loader))
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, DP4TLError)
    del info  # (its traceback holds this frame: a cycle that would leave the loader to the GC)
    assert msg.startswith(f"a data-loader worker delivered no batch of split 'train' in {TIMEOUT_S} s "
                          "(a worker stuck at its start")
    assert "DP4TL_LOADER_TIMEOUT=SECONDS sets the wait (0 = wait forever)" in msg
    assert "a training run resumes from its last checkpoint" in msg
    assert elapsed < STALL_S - 5, f"took {elapsed:.1f} s"  # 3 s + torch's shutdown (2 x 5 s)
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


@pytest.mark.parametrize("fmt,decode", LOADERS)
@pytest.mark.parametrize("env,want", [(None, 300), ("", 300), (" 45 ", 45), ("0", 0)])
def test_the_timeout_is_300_s_unless_the_environment_says(index_dataset, monkeypatch, env, want,
                                                          fmt, decode):
    assert interface.LOADER_TIMEOUT_S == 300
    if env is None:
        monkeypatch.delenv("DP4TL_LOADER_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", env)
    loader = _loader(index_dataset.root, 1, fmt, decode)  # (nothing starts before iterating)
    assert _timeout_of(loader) == want


@pytest.mark.parametrize("fmt,decode", LOADERS)
@pytest.mark.parametrize("env", ["abc", "-1", "1.5", "²"])
def test_a_bad_timeout_in_the_environment_is_one_line(index_dataset, monkeypatch, env, fmt,
                                                      decode):
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", env)
    with pytest.raises(DP4TLError, match=r"^DP4TL_LOADER_TIMEOUT=.* is not a whole number >= 0: "
                                         r"give the seconds to wait .* \(0 = wait forever\)"):
        _loader(index_dataset.root, 1, fmt, decode)


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


# ---------------------------------------------------------------------------------------------
# ffcv's epoch thread
# ---------------------------------------------------------------------------------------------

def _stall_ffcv(monkeypatch, wait, first_batch_extra: float = 0.0) -> None:
    """Every ffcv batch first calls ``wait(iterator, batch number)`` on the epoch thread; the
    epoch's first batch waits ``first_batch_extra`` seconds beyond the timeout (numba's
    compile; 120 s in use)."""
    cls = ffcv_classes()["GuardedEpochIterator"]
    real = cls.run_pipeline

    def stalling(self, b_ix, *args):
        wait(self, b_ix)
        return real(self, b_ix, *args)

    monkeypatch.setattr(cls, "run_pipeline", stalling)
    monkeypatch.setattr(ffcv_compile, "FIRST_BATCH_EXTRA_S", first_batch_extra)


def _ffcv_epoch_thread_alive() -> bool:
    cls = ffcv_classes()["GuardedEpochIterator"]
    return any(isinstance(t, cls) and t.is_alive() for t in threading.enumerate())


class _CutShort(KeyboardInterrupt):
    """The SIGTERM (``stopping.Terminated``) or Ctrl-C that lands inside an iterator's __init__."""


class _Loader:
    """What GuardedEpochIterator.__init__ reads of a loader, in its order; the step named
    ``cut`` raises as a signal landing there would."""

    def __init__(self, cut: str):
        self.cut, self.exits = cut, 0
        me = self

        class Context:
            state = None

            def __enter__(self):
                me._step("enter")

            def __exit__(self, *exc):
                me.exits += 1

        self.context = Context()

    def _step(self, name: str):
        if name == self.cut:
            raise _CutShort(name)

    @property
    def reader(self):
        self._step("metadata")  # ffcv's first read: before terminate_event exists
        return type("Reader", (), {"metadata": None})()

    batch_size, batches_ahead, timeout = 4, 2, 0.0

    @property
    def memory_manager(self):
        me = self

        class Manager:
            def schedule_epoch(self, batches):
                me._step("schedule")  # terminate_event made, no memory context yet
                return me.context

        return Manager()

    def epoch_buffers(self, it):
        self._step("buffers")  # the memory context entered
        return [], {}


@pytest.mark.parametrize("cut, entered", [("metadata", False), ("schedule", False),
                                          ("enter", False), ("buffers", True)])
def test_a_signal_inside_the_epoch_threads_construction_leaves_nothing_at_exit(monkeypatch, cut,
                                                                               entered):
    """A SIGTERM that lands while ffcv's epoch iterator is being made (``iter(loader)``) ends
    the command with its one line and nothing after it: ffcv's ``__del__`` closes the half-made
    iterator, which read a field its ``__init__`` had not set yet ("Exception ignored in ...
    __del__ ... AttributeError: ... 'terminate_event'", seen under load in the ffcv SIGTERM test
    of tests/test_stopping.py). A memory context that was entered is exited once."""
    import gc

    cls = ffcv_classes()["GuardedEpochIterator"]
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    loader = _Loader(cut)
    with pytest.raises(_CutShort, match=cut) as info:
        cls(loader, np.arange(10))
    del info  # (its traceback holds the half-made iterator)
    gc.collect()
    assert [f"{u.exc_type.__name__}: {u.exc_value}" for u in unraisable] == []
    assert loader.exits == int(entered)


#: what the line of each threaded loader starts with: who stalled, and the likely cause
STALL_LINES = {
    "ffcv": ("ffcv's epoch thread", "a decode stuck on storage that stopped answering"),
    "gpu": ("a JPEG read-ahead thread", "a read stuck on storage that stopped answering"),
}


@pytest.mark.parametrize("kind", sorted(STALL_LINES))
def test_a_batch_that_never_comes_from_a_thread_is_one_line(index_dataset, monkeypatch, kind):
    """The loader's thread is stuck for good (a read from storage that stopped answering): the
    loader gives up after the timeout and says the thread was left (a daemon, it does not hold
    the process's exit); once the thread is free again the next iteration reads the whole
    epoch."""
    release = threading.Event()
    if kind == "ffcv":
        _stall_ffcv(monkeypatch, lambda it, b: release.wait(STALL_S))
        cls = ffcv_classes()["GuardedEpochIterator"]
        mine = lambda t: isinstance(t, cls)  # noqa: E731
    else:
        real = DeviceDecodeLoader._host_batch

        def stalling(self, *args):
            release.wait(STALL_S)
            return real(self, *args)

        monkeypatch.setattr(DeviceDecodeLoader, "_host_batch", stalling)
        mine = lambda t: t.name.startswith(gd.THREAD_PREFIX)  # noqa: E731
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", str(TIMEOUT_S))
    loader = _loader(index_dataset.root, *((1, "ffcv") if kind == "ffcv" else (2, "wds", "gpu")))
    t0 = time.monotonic()
    try:
        with pytest.raises(LoaderTimeout) as info:
            next(iter(loader))
        elapsed = time.monotonic() - t0
        stuck = [t for t in threading.enumerate() if mine(t) and t.is_alive()]
        assert stuck and all(t.daemon for t in stuck)  # (left: they end with the process)
        # and the console entry point ends the process before CPython's end of a daemon
        # inside native code aborts it (test_stopping's native-code test)
        assert set(stuck) <= set(stopping._NATIVE_THREADS)
    finally:
        release.set()
    msg = str(info.value)
    del info
    who, cause = STALL_LINES[kind]
    assert "\n" not in msg
    assert msg.startswith(f"{who} delivered no batch of split 'train' in {TIMEOUT_S} s ({cause}")
    assert "; the stuck thread was left to end with the process: rerun the command" in msg
    assert "DP4TL_LOADER_TIMEOUT=SECONDS sets the wait (0 = wait forever)" in msg
    # timeout + the stop's wait (3 s) or a little more: not the stall's 30 s (a bound of 6 s
    # counted the iterator's start and the 0.5 s polls too, with 2.5 s for a loaded machine)
    assert elapsed < STALL_S / 2, f"took {elapsed:.1f} s"
    for t in stuck:
        t.join(STALL_S)
    assert not any(t.is_alive() for t in stuck)
    monkeypatch.undo()
    batches = list(loader)
    assert sorted(i for b in batches for i in b.indices.tolist()) == list(range(len(index_dataset)))


def test_a_stalled_ffcv_thread_that_can_stop_is_stopped(index_dataset, monkeypatch):
    """A thread that waits on something the stop ends (here, the stop itself) is stopped, and
    the line says so; no epoch thread is left. (The pipeline is compiled first: a thread freed
    by the stop then runs its batch, whose cold numba compile outlasted the stop's 2 s wait on
    a loaded machine, and the thread was rightly reported left.)"""
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", str(TIMEOUT_S))  # (read as the loader is made)
    loader = _loader(index_dataset.root, 1, "ffcv")
    assert sum(len(b.indices) for b in loader) == len(index_dataset)  # (compiled)
    _stall_ffcv(monkeypatch, lambda it, b: it.terminate_event.wait(STALL_S))
    with pytest.raises(LoaderTimeout, match=f"in {TIMEOUT_S} s .*; its threads were stopped: rerun"):
        next(iter(loader))
    assert not _ffcv_epoch_thread_alive()


def test_the_first_ffcv_batch_may_take_longer_for_the_compile(index_dataset, monkeypatch):
    """The epoch thread compiles the pipeline (numba) in its first batch: with a 1 s timeout a
    cold first batch (~1 s on an idle core) timed out, blaming storage. The first batch gets
    FIRST_BATCH_EXTRA_S more; the others do not."""
    slow = {0}  # (1.5 s past the timeout; the extra leaves numba's cold compile, which
    # takes several seconds on a loaded machine, its time: 5 s left it 3.5 s)
    _stall_ffcv(monkeypatch, lambda it, b: time.sleep(TIMEOUT_S + 1.5) if b in slow else None,
                first_batch_extra=60.0)
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", str(TIMEOUT_S))
    loader = _loader(index_dataset.root, 1, "ffcv")
    assert sum(len(b.indices) for b in loader) == len(index_dataset)
    slow.clear()
    slow.add(1)  # a later batch as slow: past its 1 s
    with pytest.raises(LoaderTimeout, match="ffcv's epoch thread delivered no batch of split "
                                            f"'train' in {TIMEOUT_S} s"):
        list(loader)


def test_an_ended_ffcv_epoch_stays_ended(index_dataset):
    """Asking an epoch's iterator again after its end is StopIteration (ffcv waited forever)."""
    loader = _loader(index_dataset.root, 1, "ffcv")
    it = iter(loader.loader)
    assert len(list(it)) == len(loader)
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.timeout(120)  # (before: the consumer waited forever)
def test_an_ffcv_epoch_thread_that_dies_raises_its_error_in_the_consumer(index_dataset,
                                                                         monkeypatch):
    """An error outside the pipeline (here, in the thread's loop itself) ended ffcv's thread
    with a traceback on stderr, and the consumer waited forever: it is raised there now, as
    it was, even with no timeout, and the next iteration reads the whole epoch."""
    from ffcv.loader.epoch_iterator import EpochIterator

    def dies(self):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(EpochIterator, "run", dies)
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", "0")
    loader = _loader(index_dataset.root, 1, "ffcv")
    with pytest.raises(OSError, match="Input/output error") as info:
        next(iter(loader))
    assert info.value.errno == errno.EIO
    del info
    monkeypatch.undo()
    batches = list(loader)
    assert sorted(i for b in batches for i in b.indices.tolist()) == list(range(len(index_dataset)))


# ---------------------------------------------------------------------------------------------
# The GPU-decode loader's read-ahead threads (run on the CPU)
# ---------------------------------------------------------------------------------------------

def test_no_read_ahead_threads_wait_without_a_timeout(index_dataset, monkeypatch):
    monkeypatch.setenv("DP4TL_LOADER_TIMEOUT", "2")
    loader = _loader(index_dataset.root, 0, "wds", "gpu")
    assert loader.timeout == 0
    assert sum(len(b.indices) for b in loader) == len(index_dataset)


def test_a_stop_while_a_read_hangs_waits_a_bounded_time(monkeypatch):
    """Closing the reader while a thread is stuck (a Ctrl-C during a read that hangs: the
    loader closes its reader on the way out) gives the thread _CLOSE_JOIN_S, then leaves it
    (the join waited for the read, for good)."""
    monkeypatch.setattr(gd, "_CLOSE_JOIN_S", 1.0)
    release, started = threading.Event(), threading.Event()

    def hang(b):
        started.set()
        release.wait(STALL_S)
        return b

    reader = gd._ReadAhead(hang, 4, workers=1, depth=2)
    it = iter(reader)
    th = threading.Thread(target=lambda: next(it, None), daemon=True)
    th.start()
    assert started.wait(10)
    t0 = time.monotonic()
    try:
        assert reader.close() is False  # the stuck thread was left
        assert time.monotonic() - t0 < 1 + 3
    finally:
        release.set()
    th.join(10)


def test_an_idle_read_ahead_thread_holds_no_done_batch():
    """A thread waiting for its next task held the batch it had finished (the device canvas,
    ~0.8 GB at batch 1024) after the consumer had dropped it."""
    import gc
    import weakref

    class Host:
        pass

    refs = []

    def make(b):
        h = Host()
        refs.append(weakref.ref(h))
        return h

    reader = gd._ReadAhead(make, 8, workers=3, depth=2)
    it = iter(reader)
    for _ in range(8):
        next(it)  # (the consumer keeps none of them)
    deadline = time.monotonic() + 10  # (each thread lets go once it is past its set_result;
    while True:                       # a fixed 0.2 s assumed the threads were scheduled)
        gc.collect()
        alive = [r for r in refs[:-1] if r() is not None]  # (the last is the generator's own)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not alive, f"{len(alive)} done batches still held"
    reader.close()


def test_a_reader_dropped_without_close_ends_its_threads():
    import gc

    reader = gd._ReadAhead(lambda b: b, 4, workers=2, depth=2)
    assert list(reader) == [0, 1, 2, 3]
    threads = list(reader._threads)
    del reader
    gc.collect()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)


def test_a_stuck_read_ahead_thread_does_not_hold_the_exit():
    """The process ends after the timeout although its thread never returns (an executor's
    thread held the interpreter's exit for good)."""
    script = ("import threading\n"
              "from ffcv_dp4tl.data import gpu_decode as gd\n"
              "r = gd._ReadAhead(lambda b: threading.Event().wait(), 4, workers=2, depth=2, "
              "timeout=0.5)\n"
              "try:\n"
              "    next(iter(r))\n"
              "except gd.Stalled as e:\n"
              "    print('stalled', e.stopped, flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["stalled", "False"]


def test_a_read_ahead_initializer_error_fails_each_batch():
    def setup():
        raise RuntimeError("no such device")

    reader = gd._ReadAhead(lambda b: b, 3, workers=2, depth=2, initializer=setup, timeout=30)
    with pytest.raises(RuntimeError, match="no such device"):
        list(reader)
    assert reader.close()
