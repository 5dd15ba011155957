"""A build never hangs or leaves trusted debris: full disks, killed runs, concurrent builds."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
import shutil
from collections import namedtuple

import numpy as np
import pytest

import beton_builders.writer as _writer
from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset
from beton_builders.out_dir import LOCK_NAME
from ffcv_dp4tl import fsutil
from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.locks import directory_lock

#: the builder's shard task, before a test replaces it
_REAL_SHARD_TASK = _writer._shard_task

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


@pytest.mark.parametrize("disk", ["full", "quota"])
def test_a_beton_writer_process_that_fails_ends_the_build_in_one_line_then_it_resumes(
        tmp_path, monkeypatch, capfd, disk):
    """A writer process that fails (the disk filled, or the quota ran out, while it flushed a
    page) left ffcv's main loop waiting forever for its samples, after its traceback (audit:
    seen hanging for minutes on a tmpfs filled during the write; a Slurm job burns its whole
    allocation). The build now ends in one line naming the beton and quoting the writer's
    error, whose traceback goes to a log in the build's records, not the screen; it leaves no
    temporary beton, and the same command resumes once the cause is gone."""
    import errno
    import signal

    from beton_builders import beton, writer

    out = tmp_path / "ds"
    real_item = beton.ShardBytesDataset.__getitem__
    code = errno.ENOSPC if disk == "full" else errno.EDQUOT

    def fails_midway(self, i):  # (in the forked writer: the write's error, uncaught there)
        if i >= 5:
            raise OSError(code, os.strerror(code))
        return real_item(self, i)

    monkeypatch.setattr(beton.ShardBytesDataset, "__getitem__", fails_midway)
    error = re.escape(f"its error: OSError: [Errno {code}] {os.strerror(code)}; traceback in "
                      f"{out / '.build'}/writer-") + r"(\d+)\.log"
    if disk == "full":
        Usage = namedtuple("Usage", "total used free")
        real_usage = shutil.disk_usage
        # the beton's own check before the write sees room; the line after the failure, none
        monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 10**6)
                            if str(p) == str(out) else real_usage(p))
        monkeypatch.setattr(writer, "check_free_space", lambda *a, **k: None)
        said = (r"^disk full while writing .*ds/train\.beton \(ffcv's beton writer \(process "
                rf"(\d+), exit status 1\), {error}; 1\.0 MiB free\); free some space")
    else:
        said = (r"^ffcv's beton writer \(process (\d+), exit status 1\) failed while writing "
                rf".*ds/train\.beton \({error}\); fix it and rerun: the build resumes$")

    def hung(signum, frame):
        raise TimeoutError("the build kept waiting for a writer process that had failed")

    capfd.readouterr()
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        with pytest.raises(DataError) as e:
            build_dataset(_spec(), out, OPTS)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    said = re.match(said, str(e.value))
    assert said and said[1] == said[2], str(e.value)  # (the log of the writer that failed)
    assert "Traceback" not in capfd.readouterr().err  # (ffcv's frames: in the log only)
    log = (out / ".build" / f"writer-{said[1]}.log").read_text()
    assert "Traceback (most recent call last)" in log and "fails_midway" in log
    assert not (out / "train.beton").exists() and not list(out.rglob(".*.tmp*"))
    assert not (out / "manifest.json").exists()
    monkeypatch.undo()
    summary = build_dataset(_spec(), out, OPTS)  # resumes: the shards were kept
    assert summary.splits[0].num_samples == 20 and (out / "manifest.json").exists()
    assert not list((out / ".build").glob("writer-*.log"))  # (an earlier write's logs go)


def test_a_writers_stderr_that_cannot_be_written_to_its_log_reaches_the_terminal(tmp_path, capfd):
    """The log of a writer that failed for a full disk may itself not be writable: the
    traceback then reaches the terminal, as before, and the line says "its error above"."""
    from beton_builders import beton, writer

    log = beton._WriterLog(tmp_path / "absent" / "writer-7.log")
    log.write("Traceback (most recent call last):\nOSError: disk\n")
    assert "OSError: disk" in capfd.readouterr().err
    assert beton.writer_error(tmp_path / "absent", 7) is None
    line = writer.writer_failed_line(tmp_path / "train.beton", 7, "exit status 1")
    assert "(its error above: an exceeded disk quota is a usual cause" in line
    # a log cut short (a file-size limit, a network file system failing late) quotes no fragment
    # of the traceback's middle as the error (review); a whole one, its exception
    whole = ("Process Process-1:\nTraceback (most recent call last):\n  File \"w.py\", line 1\n"
             "    x()\nOSError: [Errno 122] Disk quota exceeded\n")
    for text, said in ((whole[:70], None), (whole, "OSError: [Errno 122] Disk quota exceeded"),
                       ("a warning\n", None)):
        (tmp_path / "writer-8.log").write_text(text)
        assert (beton.writer_error(tmp_path, 8) or (None,))[0] == said, text


def test_a_full_dev_shm_is_not_blamed_on_the_build_folder(tmp_path, monkeypatch):
    """The worker pool's semaphores raise ENOSPC, naming no file, when /dev/shm is full; the
    build said "disk full while writing OUT; … choose another --out" (audit), so users freed
    the wrong disk. With /dev/shm nearly full and room in the folder, the error is left to the
    CLI's line; a write's ENOSPC (no file named) on a full folder is still the folder's."""
    import beton_builders.writer as writer

    Usage = namedtuple("Usage", "total used free")
    free = {"/dev/shm": 10**6}
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: Usage(10**12, 0, free.get(str(p), 10**11)))

    class NoSemaphores:  # the pool's SemLock in a full /dev/shm: ENOSPC, no file named
        def Pool(self, n, **kwargs):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.mp, "get_context", lambda method: NoSemaphores())
    two = dataclasses.replace(OPTS, workers=2)
    with pytest.raises(OSError, match="No space left on device") as e:
        build_dataset(_spec(), tmp_path / "ds", two)
    assert not isinstance(e.value, DataError)
    free["/dev/shm"] = 10**10  # /dev/shm has room: the folder's disk is the one that filled
    with pytest.raises(DataError, match=r"disk full while writing .*ds \(No space left on device\)"):
        build_dataset(_spec(), tmp_path / "ds", two)


def test_a_failed_shard_leaves_no_temporary_shard_of_the_workers_it_stopped(tmp_path, monkeypatch):
    """When one shard fails (a full disk), the pool's other workers are killed inside their
    atomic writes: their temporary shards stayed (half of a full 4 MB disk in an audit, while
    the message said "free some space"). They are removed before the build's line. (Shard 0
    fails only once the other workers are inside their writes: their markers say so.)"""
    import beton_builders.writer as writer

    monkeypatch.setattr(writer, "_shard_task", _full_or_slow_shard)
    monkeypatch.setenv("DP4TL_TEST_MARKERS", str(tmp_path / "inside"))
    (tmp_path / "inside").mkdir()
    out = tmp_path / "ds"
    with pytest.raises(DataError, match="disk full while writing"):
        build_dataset(_spec(30), out, dataclasses.replace(OPTS, workers=3))
    assert len(list((tmp_path / "inside").iterdir())) >= 2  # workers were inside their writes
    assert not list(out.rglob(".*.tmp*"))


def test_shard_workers_leave_ctrl_c_to_the_build(tmp_path, monkeypatch):
    """Ctrl-C reaches the whole process group: a shard worker that ended on it while idle held
    the pool's task-queue lock, and the build's Pool.terminate() then waited for it forever
    (review). The workers ignore it; the build reports the stop and ends them."""
    import beton_builders.writer as writer

    monkeypatch.setattr(writer, "_shard_task", _saying_its_ctrl_c)
    monkeypatch.setenv("DP4TL_TEST_MARKERS", str(tmp_path / "said"))
    (tmp_path / "said").mkdir()
    build_dataset(_spec(30), tmp_path / "ds", dataclasses.replace(OPTS, workers=2))
    said = {p.read_text() for p in (tmp_path / "said").iterdir()}
    assert said == {"ignored"}


def _saying_its_ctrl_c(args):
    """A shard task (module level: pickled by name) that notes how its worker treats Ctrl-C."""
    import signal

    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    (Path(os.environ["DP4TL_TEST_MARKERS"]) / str(os.getpid())).write_text(
        "ignored" if ignored else "handled")
    return _REAL_SHARD_TASK(args)


def _full_or_slow_shard(args):
    """A shard task (module level: the pool pickles it by name): the others mark that they
    are inside their atomic writes and stay there a minute; shard 0 then fails with a full disk."""
    import time

    import beton_builders.writer as writer
    from ffcv_dp4tl.fsutil import atomic_path

    markers = Path(os.environ["DP4TL_TEST_MARKERS"])
    out_dir, split, shard_id = args[:3]
    if shard_id == 0:
        deadline = time.monotonic() + 60
        while len(list(markers.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        raise OSError(28, "No space left on device")
    with atomic_path(writer.shard_files(out_dir, split, shard_id)[0], suffix=".tar") as tmp:
        tmp.write_bytes(b"x" * 1000)
        (markers / str(shard_id)).touch()
        time.sleep(60)  # killed here by the pool's terminate()


def test_a_writer_failure_swallowed_inside_ffcvs_wait_is_raised_again(monkeypatch):
    """A wake-up that lands where Python cannot raise (an at-fork hook while ffcv forks its
    next writer) was the only one: the watchdog then stopped, and the build waited forever
    (review). It is sent again while ffcv's wait runs, and dropped in the cleanup after it."""
    import multiprocessing as mp
    import time

    from beton_builders import writer

    waits: list[str] = []
    # a stand-in for ffcv's DatasetWriter.from_indexed_dataset: its name and module are what
    # the handler checks (it raises only there); the first raise is swallowed, like a hook's
    code = '''
def from_indexed_dataset(waits, time, WriterFailed):
    swallowed = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except WriterFailed:
            if swallowed:
                raise
            swallowed = True
            waits.append("swallowed")
    waits.append("waited forever")
'''
    space = {"__name__": "ffcv.writer"}
    exec(compile(code, "ffcv/writer.py", "exec"), space)
    failed = None
    with writer._stop_guard():
        with writer._interrupt_watchdog(every=0.05, tick=0.01):
            child = mp.get_context("fork").Process(target=os._exit, args=(1,))
            child.start()
            try:
                space["from_indexed_dataset"](waits, time, writer.WriterFailed)
            except writer.WriterFailed as e:
                failed = e
            time.sleep(0.3)  # (cleanup: later wake-ups are dropped here, not raised)
        child.join()
    assert waits == ["swallowed"] and failed is not None
    assert failed.args == (child.pid, "exit status 1")


def test_a_child_ended_by_a_stop_signal_is_no_failure():
    """A stop sent to the whole process group (a scheduler's SIGTERM, Ctrl-C) ends the writers
    too; the parent's own handler reports it. Taking their deaths for a writer failure said
    "an exceeded disk quota is a usual cause" where the job was stopped (review)."""
    import multiprocessing as mp
    import signal
    import time

    from ffcv_dp4tl import stopping

    before = stopping.child_pids()
    ctx = mp.get_context("fork")
    kids = {how: ctx.Process(target=_sleep_as_a_writer) for how in ("TERM", "INT", "BUS")}
    kids["130"] = ctx.Process(target=os._exit, args=(130,))
    kids["1"] = ctx.Process(target=os._exit, args=(1,))
    for p in kids.values():
        p.start()
    time.sleep(0.5)  # (their handlers are set)
    for how in ("TERM", "INT", "BUS"):
        os.kill(kids[how].pid, getattr(signal, f"SIG{how}"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(stopping.failed_children(before)) < 2:
        time.sleep(0.05)
    time.sleep(0.3)  # (the stop-ended ones have long ended too)
    failed = dict(stopping.failed_children(before))
    for p in kids.values():
        p.join()
    assert failed == {kids["1"].pid: "exit status 1", kids["BUS"].pid: "killed by SIGBUS"}


def test_a_writer_failure_is_said_by_its_likeliest_cause(tmp_path, monkeypatch):
    """SIGKILL is the out-of-memory killer's; SIGBUS with a nearly full /dev/shm is shared
    memory's; a folder whose free space cannot be read still gets a line (review)."""
    from beton_builders import writer

    beton = tmp_path / "train.beton"
    assert "out-of-memory killer" in writer.writer_failed_line(beton, 7, "killed by SIGKILL")
    monkeypatch.setattr(fsutil, "shm_nearly_full", lambda: 2**20)
    assert "shared memory (/dev/shm)" in writer.writer_failed_line(beton, 7, "killed by SIGBUS")
    gone = tmp_path / "gone" / "train.beton"
    assert "an exceeded disk quota" in writer.writer_failed_line(gone, 7, "exit status 1")


def _sleep_as_a_writer():
    """A child with the stop signals' defaults, as the build's writers end on them (killed, or
    exited 128 + the signal by the build's inherited handler), not pytest's handlers."""
    import signal
    import time

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(60)


def _read_by_a_run(out: Path) -> int:
    """The descriptor of a run reading the built folder ``out``, as flock sees it: its build
    lock held shared (what :func:`beton_builders.out_dir.reading` takes). Close it to end."""
    import fcntl

    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def test_a_build_that_would_change_data_being_read_is_refused_a_plain_one_reuses_it(tmp_path):
    """``dp4tl build --overwrite`` while a training read the data: the build finished (rc 0) and
    the training died with "not found: .../val.beton" (audit). Now ``--overwrite`` and a repair
    are refused in one line while a run reads the folder; a plain build finding the data built
    changes nothing and goes on (a second pipeline's build step while the first one trains)."""
    import re

    from beton_builders.repair import damaged_files

    out = tmp_path / "ds"
    build_dataset(_spec(), out, OPTS)
    beton = out / "train.beton"
    size = beton.stat().st_size
    refused = (rf"^{re.escape(str(out))} is being read by another dp4tl run; wait for it to "
               r"finish or build into another --out$")
    fd = _read_by_a_run(out)
    try:
        assert build_dataset(_spec(), out, OPTS).skipped
        with pytest.raises(DataError, match=refused):
            build_dataset(_spec(), out, OPTS, overwrite=True)
        assert beton.stat().st_size == size and (out / "manifest.json").exists()
        with open(beton, "r+b") as f:  # damaged while read: its repair waits for the readers
            f.truncate(size - 1000)
        with pytest.raises(DataError, match=refused):
            build_dataset(_spec(), out, OPTS)
        assert beton.stat().st_size == size - 1000
    finally:
        os.close(fd)
    build_dataset(_spec(), out, OPTS)  # repaired once nobody reads
    assert damaged_files(out) == []
    build_dataset(_spec(), out, OPTS, overwrite=True)


def test_an_overwrite_of_a_synth_build_is_refused_before_any_part_when_one_is_read(tmp_path):
    """A SOURCE of several parts (synth: ``source/``, ``targets/NAME``): a finetuning reading
    one target refuses ``--overwrite`` before any part is replaced (a new source beside an old
    target would not be a build of one SOURCE); nobody reading, every part is held."""
    from beton_builders.out_dir import overwriting_parts

    from lock_probe import exclusive_is_free

    for part in ("source", "targets/a"):
        build_dataset(_spec(), tmp_path / part, OPTS)
    fd = _read_by_a_run(tmp_path / "targets" / "a")
    try:
        with pytest.raises(DataError, match="targets/a is being read by another dp4tl run"):
            with overwriting_parts(tmp_path, ["source", "targets/a"]):
                pass
        assert exclusive_is_free(tmp_path / "source" / LOCK_NAME)  # (let go on the refusal)
    finally:
        os.close(fd)
    with overwriting_parts(tmp_path, ["source", "targets/a"]):
        assert not exclusive_is_free(tmp_path / "source" / LOCK_NAME)
        assert not exclusive_is_free(tmp_path / "targets" / "a" / LOCK_NAME)
        assert build_dataset(_spec(), tmp_path / "source", OPTS, overwrite=True)  # (its own)


def test_a_build_made_before_files_txt_is_reused_while_read_and_gets_it(tmp_path):
    """A build made before ``S.files.txt`` existed needed the exclusive lock to add it, so the
    same build command was refused while a training read the folder (review). The listing is
    written under the readers' lock (atomically: the same bytes whoever writes them)."""
    out = tmp_path / "ds"
    build_dataset(_spec(), out, OPTS)
    listings = {p: p.read_bytes() for p in out.glob("*.files.txt")}
    assert listings
    for p in listings:
        p.unlink()
    fd = _read_by_a_run(out)
    try:
        assert build_dataset(_spec(), out, OPTS).skipped
    finally:
        os.close(fd)
    assert {p: p.read_bytes() for p in out.glob("*.files.txt")} == listings


def test_a_build_kept_for_a_reader_is_checked_again_under_its_lock(tmp_path, monkeypatch):
    """``hold`` (a pipeline): the build checked, then its readers' lock taken once the build's
    lock is let go. An ``--overwrite`` with other settings that ran in that gap was held as the
    build checked (review); it is now refused, and one with the same settings is kept."""
    import contextlib
    from dataclasses import replace

    from beton_builders import writer

    out = tmp_path / "ds"
    build_dataset(_spec(), out, OPTS)
    real = writer.reading
    for other, refused in ((OPTS, False), (replace(OPTS, max_side=OPTS.max_side - 2), True)):
        calls = []

        def gap(*a, _o=other, **k):  # (1st call: the build's check; 2nd: the lock kept)
            calls.append(a)
            if len(calls) == 2:  # another run's --overwrite lands first
                monkeypatch.setattr(writer, "reading", real)
                build_dataset(_spec(), out, _o, overwrite=True)
            return real(*a, **k)

        monkeypatch.setattr(writer, "reading", gap)
        with contextlib.ExitStack() as hold:
            if refused:
                with pytest.raises(DataError, match=r"was built again by another run, with other "
                                                    r"settings, while this one started"):
                    build_dataset(_spec(), out, OPTS, hold=hold)
            else:
                assert build_dataset(_spec(), out, OPTS, hold=hold).skipped
        assert len(calls) == 2
        monkeypatch.setattr(writer, "reading", real)
        build_dataset(_spec(), out, OPTS, overwrite=True)  # (back to this test's build)
