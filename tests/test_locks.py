"""locks: one writer per folder, readers that keep writers out, waits that say who and give up."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time

import pytest

from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.fsutil import os_error_line


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch, code):
    """Lustre without ``-o flock`` (and some FUSE mounts) answer flock() with ENOSYS/ENOLCK:
    every command writing there failed with "Function not implemented; check the path". It
    now runs, saying that nothing guards against a second writer. Other errors still raise."""
    import fcntl

    from ffcv_dp4tl.locks import directory_lock

    def no_locks(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with pytest.warns(RuntimeWarning, match=r"does not support file locks .* a second dp4tl "
                                            r"process from writing run r at the same time"):
        with directory_lock(tmp_path / "r" / ".lock", "run r"):
            ran.append(True)
    assert ran == [True]

    def denied(fd, op):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fcntl, "flock", denied)
    with pytest.raises(PermissionError):
        with directory_lock(tmp_path / "r" / ".lock", "run r"):
            pass


def test_a_killed_runs_lock_is_free_at_once_though_its_forked_workers_live_on(tmp_path):
    """kill -9 of a run whose data-loader workers (forked children) still live: a flock belongs
    to the open file, which a fork shares, so the workers held the lock until they noticed
    their parent was gone (~5 s), and an immediate rerun was refused naming the dead pid. Forked
    children now close the lock's descriptor."""
    import signal

    from ffcv_dp4tl.locks import directory_lock

    lock = tmp_path / ".lock"
    script = ("import multiprocessing as mp, time\n"
              "from ffcv_dp4tl.locks import directory_lock\n"
              f"with directory_lock({str(lock)!r}, 'the test folder'):\n"
              "    p = mp.get_context('fork').Process(target=time.sleep, args=(60,))\n"
              "    p.start()\n"
              "    print(p.pid, flush=True)\n"
              "    time.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(run.stdout.readline())

    def child_holds_the_lock() -> bool:
        with contextlib.suppress(OSError):  # (a descriptor closed while listed)
            return any(os.path.realpath(f"/proc/{child}/fd/{fd}") == os.path.realpath(lock)
                       for fd in os.listdir(f"/proc/{child}/fd"))
        return True

    try:
        # the child closes it in its at-fork hook, which runs when the kernel first schedules
        # it: a loaded machine (CI) may not have yet when the parent is killed
        deadline = time.monotonic() + 30
        while child_holds_the_lock() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not child_holds_the_lock(), "the forked worker kept the lock's descriptor"
        with pytest.raises(DataError, match=f"another dp4tl process \\(pid {run.pid}\\)"):
            with directory_lock(lock, "the test folder"):
                pass
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        os.kill(child, 0)  # the worker lives on
        with directory_lock(lock, "the test folder"):  # and the lock is free
            pass
    finally:
        run.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_a_full_disk_when_a_lock_is_taken_names_the_lock_file(tmp_path, monkeypatch):
    """The lock's pid is written with ``os.pwrite`` on a descriptor, whose OSError names no
    file: a disk full at that point read "disk full (No space left on device)" with no path
    (audit, a tmpfs filled mid-pipeline). Now the line names the lock file."""
    from ffcv_dp4tl import locks

    lock = tmp_path / "runs" / ".lock"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks.os, "pwrite", full)
    with pytest.raises(OSError) as e:
        with locks.directory_lock(lock, "runs folder"):
            pass
    assert e.value.filename == str(lock)
    assert os_error_line(e.value).startswith(f"disk full writing {lock} (No space left on device)")
    monkeypatch.undo()
    with locks.directory_lock(lock, "runs folder"):  # (the descriptor was closed: free again)
        pass


def test_a_lock_wait_says_who_and_where_beats_and_gives_up_at_the_timeout(tmp_path, monkeypatch):
    """A run waiting for a lock blocked in flock() after one line, with no time: behind a
    suspended holder (kill -STOP, a suspended Slurm job, a hung NFS client) nothing more was
    ever said, and the lock file held a bare pid (which machine's?). The wait now polls: its
    first line says who (pid and host, since when) and when; a "still waiting" line follows
    every LOCK_HEARTBEAT_S; $DP4TL_LOCK_TIMEOUT ends it with one line naming the holder."""
    import re
    import socket

    from ffcv_dp4tl import locks

    from lock_probe import holding

    lock = tmp_path / "stage" / ".lock"
    holder = holding(lock)
    try:
        host = re.escape(socket.gethostname())
        assert re.fullmatch(rf"{host}:{holder.pid} \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d",
                            lock.read_text())  # (who holds it, written by the holder)
        monkeypatch.setattr(locks, "LOCK_POLL_S", 0.02)
        monkeypatch.setattr(locks, "LOCK_HEARTBEAT_S", 0.3)
        monkeypatch.setenv("DP4TL_LOCK_TIMEOUT", "1.2")
        said: list[str] = []
        with pytest.raises(DataError) as e:
            with locks.directory_lock(lock, "stage S", wait=True, on_wait=said.append):
                pytest.fail("the lock was taken while held")
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
        assert re.fullmatch(rf"another dp4tl run \(pid {holder.pid}\) on host {host}, since "
                            rf"{stamp} is using stage S; waiting for it \({stamp}\)", said[0]), said
        beats = said[1:]
        assert 2 <= len(beats) <= 4, said
        for b in beats:
            assert re.fullmatch(rf"still waiting \(\ds\) for pid {holder.pid} on host {host} "
                                rf"\(stage S, holding it since {stamp}\); "
                                rf"{re.escape(str(lock.parent))} last changed at \d\d:\d\d:\d\d",
                                b), b
        assert re.fullmatch(rf"gave up waiting for stage S after 1s \(DP4TL_LOCK_TIMEOUT=1.2\): "
                            rf"another dp4tl run \(pid {holder.pid}\) on host {host} still holds "
                            r"it; if that run is stopped or hung, end it and rerun \(this run "
                            r"resumes\), or unset DP4TL_LOCK_TIMEOUT to wait for it",
                            str(e.value)), str(e.value)
        # a bad value is one line, before any wait
        monkeypatch.setenv("DP4TL_LOCK_TIMEOUT", "soon")
        with pytest.raises(DataError, match=r"^DP4TL_LOCK_TIMEOUT='soon' is not a number of "
                                            r"seconds; set it to one \(e\.g\. 3600\), or unset"):
            with locks.directory_lock(lock, "stage S", wait=True):
                pass
        # without a timeout it waits, and a stop signal still ends the wait, as no error
        monkeypatch.delenv("DP4TL_LOCK_TIMEOUT")
        import signal

        def stop(*_):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            with pytest.raises(KeyboardInterrupt) as stopped:
                with locks.directory_lock(lock, "stage S", wait=True):
                    pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        # (a stop that lands between two tries may carry the try's BlockingIOError: the CLI
        # reads only a DP4TLError there, app._stopped)
        assert not isinstance(stopped.value.__context__, DataError)
    finally:
        holder.kill()
        holder.wait(30)
    with locks.directory_lock(lock, "stage S", wait=True):  # free again
        pass


def test_readers_share_a_lock_that_refuses_a_writer_and_make_no_lock_file(tmp_path):
    """``shared=True``: runs reading a folder hold its lock together; a writer asking with
    ``readers`` is refused with those words (waiting or not); a reader makes no folder, and
    reads unguarded where it cannot open the lock file."""
    from ffcv_dp4tl.locks import directory_lock

    lock = tmp_path / "ds" / ".lock"
    with directory_lock(tmp_path / "absent" / ".lock", "x", shared=True):
        assert not (tmp_path / "absent").exists()
    lock.parent.mkdir()
    with directory_lock(lock, "ds", shared=True), directory_lock(lock, "ds", shared=True):
        for wait in (False, True):
            with pytest.raises(DataError, match=r"^ds is being read$"):
                with directory_lock(lock, "ds", wait=wait, readers="ds is being read"):
                    pass
    with directory_lock(lock, "ds", readers="ds is being read"):  # free once they end
        with pytest.raises(DataError, match=r"another dp4tl process \(pid \d+\) on host .* is "
                                            r"using the ds; wait"):
            with directory_lock(lock, "the ds", shared=True):
                pass


@pytest.mark.parametrize("wait", [False, True])
def test_a_writer_that_lets_go_between_two_tries_is_not_taken_for_readers(tmp_path, monkeypatch,
                                                                          wait):
    """The exclusive try fails (a build holds the lock), the build ends, then the shared probe
    succeeds on the now free lock: that was read as "only readers hold it", and a build nobody
    read was refused as "being read" (review: 17 refusals in 15 s of a writer taking and
    dropping the lock). The lock is now taken."""
    import fcntl

    from ffcv_dp4tl import locks

    real = fcntl.flock
    refused = []

    def held_once(fd, op):  # the first exclusive try meets the (then ending) build
        if op == fcntl.LOCK_EX | fcntl.LOCK_NB and not refused:
            refused.append(op)
            raise BlockingIOError(errno.EAGAIN, "held")
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", held_once)
    monkeypatch.setattr(locks, "LOCK_POLL_S", 0.01)
    with locks.directory_lock(tmp_path / ".build.lock", "dataset folder D", wait=wait,
                               readers="D is being read by another dp4tl run"):
        assert (tmp_path / ".build.lock").read_text().split(" ")[0].endswith(f":{os.getpid()}")
    assert refused


def test_a_reader_on_a_full_disk_without_a_lock_file_reads_unguarded(tmp_path, monkeypatch):
    """A reader makes the lock file when it is missing (data built before it existed); on a
    full disk or quota that creation failed and the training was refused for it (review)."""
    from ffcv_dp4tl import locks

    real = os.open

    def full(path, flags, *a):
        if flags & os.O_CREAT and not os.path.exists(path):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(path))
        return real(path, flags, *a)

    monkeypatch.setattr(os, "open", full)
    with locks.directory_lock(tmp_path / ".build.lock", "the dataset D", shared=True) as w:
        assert w.holder is None
    assert not (tmp_path / ".build.lock").exists()


@pytest.mark.parametrize("shared", [False, True])
def test_a_lock_whose_file_was_deleted_while_waited_for_is_taken_on_the_file_there_now(
        tmp_path, monkeypatch, shared):
    """The holder a run waits for may delete the lock's folder before it lets go (a synth
    ``--overwrite`` removing a part it no longer makes): the waiter got its lock on the deleted
    file, a lock nobody else sees, and went on into a folder that was gone (review). A writer
    now makes the folder again and locks the file there; a reader finds nothing to lock and
    says whom it waited for."""
    from ffcv_dp4tl import locks

    from lock_probe import ReleaseOnWait, holding

    lock = tmp_path / "part" / ".build.lock"
    monkeypatch.setattr(locks, "LOCK_POLL_S", 0.02)
    probe = ReleaseOnWait(holding(lock, then="shutil.rmtree(lock.rsplit('/', 1)[0])"))
    try:
        with locks.directory_lock(lock, "part P", wait=True, on_wait=probe.log,
                                  shared=shared) as w:
            assert w.holder is not None and w.holder.pid == str(probe.holder.pid)
            if shared:
                assert not lock.parent.exists()  # (nothing to read: the caller says so)
            else:  # the new file is locked, and says so to the next run
                assert lock.read_text().split(" ")[0].endswith(f":{os.getpid()}")
                from lock_probe import exclusive_is_free

                assert not exclusive_is_free(lock)
    finally:
        probe.end()


def test_a_bad_lock_timeout_is_one_line_as_any_command_starts(capsys, monkeypatch, tmp_path):
    """``$DP4TL_LOCK_TIMEOUT`` was read only when a run first waited for a lock, so a bad value
    let a whole pipeline run (or failed it hours in, at its first wait; audit). Every command
    now refuses it as it starts, as ``$DP4TL_LOADER_TIMEOUT`` is."""
    from cli_runner import cli

    monkeypatch.setenv("DP4TL_LOCK_TIMEOUT", "abc")
    code, out, err = cli(capsys, monkeypatch, "info", "--data", str(tmp_path))
    assert code == 2 and err.strip() == ("error: DP4TL_LOCK_TIMEOUT='abc' is not a number of "
                                         "seconds; set it to one (e.g. 3600), or unset it to wait "
                                         "for a lock forever"), err
    monkeypatch.setenv("DP4TL_LOCK_TIMEOUT", "60")
    assert "DP4TL_LOCK_TIMEOUT" not in cli(capsys, monkeypatch, "info", "--data", str(tmp_path))[2]

