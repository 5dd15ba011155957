"""A build never hangs or leaves trusted debris: full disks, killed runs, concurrent builds."""
from __future__ import annotations

import os
import shutil
from collections import namedtuple

import numpy as np
import pytest

from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset
from beton_builders.out_dir import LOCK_NAME
from ffcv_dp4tl import fsutil
from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.fsutil import directory_lock

OPTS = BuildOptions(max_side=32, shard_size=8, workers=1, progress=False)


def _spec(n=20):
    rng = np.random.default_rng(0)
    return DatasetSpec("s", ["a", "b"], {"train": [Sample(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), k % 2)
                                                   for k in range(n)]})


def test_too_little_space_for_the_beton_is_a_clear_error_then_resumes(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    real = shutil.disk_usage
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1000))
    with pytest.raises(DataError, match=r"not enough space for train.beton in .*ds: needs ~\d+ MiB, 0 MiB free"):
        build_dataset(_spec(), out, OPTS)
    assert not (out / "train.beton").exists() and not list(out.rglob(".*.tmp*"))
    monkeypatch.setattr(fsutil.shutil, "disk_usage", real)
    summary = build_dataset(_spec(), out, OPTS)  # resumes: shards were kept
    assert summary.splits[0].num_samples == 20 and (out / "manifest.json").exists()


def test_disk_full_while_writing_shards_is_one_line(tmp_path, monkeypatch):
    import beton_builders.writer as writer

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "write_shard", full)
    with pytest.raises(DataError, match=r"disk full while writing .*\(No space left on device\).*rerun: the build resumes"):
        build_dataset(_spec(), tmp_path / "ds", OPTS)


def test_orphan_temp_files_of_a_killed_build_are_removed(tmp_path):
    out = tmp_path / "ds"
    build_dataset(_spec(), out, OPTS)
    # the state a kill -9 during the beton write leaves: no manifest, no beton, temp debris
    (out / "manifest.json").unlink()
    (out / "train.beton").unlink()
    orphans = [out / ".train.beton.abc123.tmp.beton", out / "wds" / ".train-000000.tar.x1y2.tmp.tar"]
    for p in orphans:
        p.write_bytes(b"x" * 100)
    mine = out / "notes.tmp.txt"  # not atomic_path's pattern: never touched
    mine.write_text("mine")
    build_dataset(_spec(), out, OPTS)
    assert not any(p.exists() for p in orphans) and mine.exists()
    assert (out / "manifest.json").exists() and not list(out.rglob(".*.tmp*"))


def test_concurrent_build_on_one_folder_is_refused(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    with directory_lock(out / LOCK_NAME, "x"):  # another process's build, as far as flock can tell
        pid = os.fork()
        if pid == 0:  # child: a second build must be refused immediately, not wait or corrupt
            try:
                build_dataset(_spec(), out, OPTS)
                os._exit(1)
            except DataError as e:
                os._exit(0 if "another dp4tl process" in str(e) and "is using dataset folder" in str(e) else 2)
        _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    build_dataset(_spec(), out, OPTS)  # the lock is gone with its holder
    assert (out / "manifest.json").exists()


def test_out_pointing_at_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder; choose a folder"):
        build_dataset(_spec(), f, OPTS)


def test_rebuild_after_a_lost_manifest_rewrites_a_damaged_beton(tmp_path):
    from ffcv_dp4tl.data.verify import verify_dataset

    out = tmp_path / "ds"
    build_dataset(_spec(), out, OPTS)
    good = (out / "train.beton").read_bytes()
    (out / "manifest.json").unlink()
    with open(out / "train.beton", "r+b") as f:
        f.truncate(len(good) - 500)  # into the last images
    build_dataset(_spec(), out, OPTS)  # must not keep the truncated file and declare success
    assert (out / "train.beton").read_bytes() == good
    assert verify_dataset(out, deep=True).ok


def test_ctrl_c_that_python_cannot_raise_during_a_build_prints_no_traceback(monkeypatch):
    """Ctrl-C while ffcv forks its beton writers lands in logging's at-fork hook, where Python
    can only print "Exception ignored in ..." and a traceback before the build's own line. The
    build's interrupt flag stops it at the next check, so such a KeyboardInterrupt is silent;
    any other unraisable error still reaches the hook, which is restored after the build."""
    import gc
    import sys

    from beton_builders import writer

    class RaisesOnDelete:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    gc.collect()  # earlier tests' garbage first (numba's dispatcher finalizers raise KeyError)
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(type(info.exc_value)))
    before = sys.unraisablehook
    with writer._stop_guard():
        writer._Interrupted.flag = True  # what the SIGINT handler sets before raising
        RaisesOnDelete(KeyboardInterrupt())
        gc.collect()
        assert seen == []
        RaisesOnDelete(ValueError("a real bug"))
        gc.collect()
        assert seen == [ValueError]
        writer._Interrupted.flag = False
        RaisesOnDelete(KeyboardInterrupt())  # not the build's Ctrl-C: reported as before
        gc.collect()
        assert seen == [ValueError, KeyboardInterrupt]
    assert sys.unraisablehook is before


def test_an_interrupted_beton_write_frees_ffcv_shared_memory(tmp_path, monkeypatch):
    """ffcv's writer frees its metadata shared memory only when a write completes: Ctrl-C
    mid-beton left it to the resource tracker, which printed a "leaked shared_memory objects"
    warning after the build's one line. The block is gone once the interrupt reaches the
    caller."""
    from multiprocessing import shared_memory

    from ffcv.writer import DatasetWriter

    from beton_builders.beton import write_beton

    names = []

    def interrupted(self, num_samples, *args, **kwargs):  # ffcv allocates, then Ctrl-C
        self.num_samples = num_samples
        self.prepare()
        names.append(self.metadata_sm.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(DatasetWriter, "_write_common", interrupted)

    class ThreeSamples:
        def __len__(self):
            return 3

    with pytest.raises(KeyboardInterrupt):
        write_beton(tmp_path / "x.beton", ThreeSamples(), quality=90, max_side=32, workers=1,
                    progress=False)
    assert len(names) == 1
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=names[0])


def test_a_ctrl_c_swallowed_while_ffcv_forks_does_not_leave_the_build_waiting(monkeypatch):
    """The swallowed Ctrl-C above also ended the writers already forked, and ffcv's main loop
    waited for their samples forever (seen: a build still waiting 10 minutes after Ctrl-C).
    While a beton is written, a watchdog re-raises the interrupt in the main thread once the
    flag is set, so the wait ends with the build's KeyboardInterrupt."""
    import time

    from beton_builders import writer

    with writer._stop_guard():
        with pytest.raises(KeyboardInterrupt):
            with writer._interrupt_watchdog(every=0.05):
                writer._Interrupted.flag = True  # set by the handler, its raise swallowed
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:  # ffcv's `while previous != n: sleep(0.1)`
                    time.sleep(0.01)
                pytest.fail("the build kept waiting after Ctrl-C")


def test_the_stop_guard_keeps_an_ignored_ctrl_c_and_still_stops_on_sigterm(monkeypatch):
    """A Ctrl-C the process inherited as ignored (a script's background job) stays ignored
    while the build runs, as every other command leaves it (ffcv_dp4tl.stopping); Python's own
    handler is replaced by the build's as before. SIGTERM still stops an ignoring build: the
    watchdog re-sends SIGTERM, since the SIGINT it sent would raise nothing there."""
    import signal
    import time

    from beton_builders import writer
    from ffcv_dp4tl import stopping

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(stopping, "_RECEIVED", [])
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with writer._stop_guard():
            assert signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN,
                                                           signal.default_int_handler)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopped = None
        with writer._stop_guard():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            try:
                with writer._interrupt_watchdog(every=0.05):
                    writer._Interrupted.flag = True  # a SIGTERM's, its raise swallowed
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        time.sleep(0.01)
            except KeyboardInterrupt as e:  # (caught: pytest would end the session on it)
                stopped = e
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert isinstance(stopped, stopping.Terminated), "the build kept waiting: SIGINT is ignored"
