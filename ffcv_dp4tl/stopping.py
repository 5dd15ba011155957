"""How a run is stopped from outside: Ctrl-C (SIGINT) and SIGTERM end a command the same way.

On a cluster the usual way a run ends early is SIGTERM, not Ctrl-C: a scheduler's time limit
or preemption (Slurm sends SIGTERM, then SIGKILL after its grace period), ``kill``, or torchrun
stopping its other ranks when one fails. Python's default for SIGTERM is to die on the spot:
no ``finally`` block runs, so ffcv's decode threads, data-loader workers and half-written
temporary files are left as they are, and the user reads no word of what happened.

:func:`sigterm_raises` turns SIGTERM into :class:`Terminated`, a ``KeyboardInterrupt``: every
cleanup that runs for Ctrl-C (loader threads stopped and joined, temporary files removed,
the build's interrupt checks) runs for it too, and the command ends with one line and exit
status 143 (128 + SIGTERM, what a shell and Slurm report for a process SIGTERM ended). Every
write is atomic and every long stage checkpoints, so the same command resumes. The signals
received are recorded here (:func:`received`), so that the CLI names the right one even where
a library turned the exception into an exit code (typer: 130 for any KeyboardInterrupt).

A stdlib-only leaf: the CLI and the beton builder (which has its own Ctrl-C guard) share it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["GRACE_S", "STOP_STATUSES", "Terminated", "child_pids", "deferred", "exit_status",
           "failed_children", "forget_interrupt", "interrupt_for", "last_interrupt", "late_line",
           "late_status", "line", "quiet_children", "native_threads_left", "received", "record",
           "resend_signal", "runs_native_code", "settle", "settled", "sigterm_handler",
           "sigterm_raises", "status_of"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises ``KeyboardInterrupt`` (a subclass, so that every
    ``except KeyboardInterrupt`` cleanup runs for it too)."""


#: the stop signals this process received, in order (SIGINT, SIGTERM)
_RECEIVED: list[int] = []


def record(signum: int) -> None:
    """Note a stop signal (a handler of its own, such as the build's Ctrl-C guard, calls
    this so that :func:`received` sees it)."""
    _RECEIVED.append(int(signum))


def resend_signal() -> int:
    """The signal that raises a stop again in the main thread after native code or an
    unraisable context swallowed it: SIGINT, unless this process ignores SIGINT (a script's
    background job inherits it ignored, and an ignored SIGINT raises nothing: the stop was
    lost and the command ran on), then SIGTERM. The one rule of the CLI's unraisable hook and
    the build's interrupt watchdog."""
    return signal.SIGTERM if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else signal.SIGINT


def received() -> int | None:
    """The first stop signal this process received: the one that decided how it ends (a
    second signal arrives during the cleanup the first began); None when none came."""
    return _RECEIVED[0] if _RECEIVED else None


#: the exception made last for a stop signal (:func:`last_interrupt`)
_RAISED: list[KeyboardInterrupt] = []


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a stop signal raises: :class:`Terminated` for SIGTERM, else Ctrl-C's.
    Every handler makes it here (this module's, the build's stop guard); the last one is kept
    (:func:`last_interrupt`)."""
    _RAISED[:] = [Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()]
    return _RAISED[0]


#: how many :func:`deferred` blocks are open, and the stop signals held back meanwhile
_DEFERRING = [0]
_HELD: list[int] = []


def _interrupt(signum: int) -> None:
    """What this module's handlers do with a stop signal (Ctrl-C, SIGTERM): raise its exception
    now, or, inside :func:`deferred`, hold it until the block ends."""
    if _DEFERRING[0]:
        _HELD.append(int(signum))
        return
    raise interrupt_for(signum)


def forget_interrupt() -> None:
    """Drop the exception :func:`last_interrupt` keeps: through its traceback it holds every
    frame of the stopped command (its loaders' generators, whose cleanup then waited for the
    interpreter's teardown, and the model). The CLI calls it once the command has ended."""
    _RAISED.clear()


def last_interrupt() -> KeyboardInterrupt | None:
    """The exception made last for a stop signal in this command (:func:`interrupt_for`), the
    one its handler raised; None when none came.

    typer turns a ``KeyboardInterrupt`` that leaves a command into exit code 130 and drops it;
    the CLI asks here what was being unwound when it was raised (its ``__context__``)."""
    return _RAISED[0] if _RAISED else None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that no stop signal cuts into: one that comes meanwhile (Ctrl-C, SIGTERM, through
    the handlers :func:`sigterm_raises` installs) is held, and raised as the block ends, as if it
    had come just after it.

    For a step of a few bytecodes that must happen whole: the CLI prints a failed command's
    error line and settles its status (:func:`settle`) in one, so that a signal landing between
    the two neither drops the line nor prints it twice; the signal held is then a late one
    (:func:`late_line`). Blocking the signal (``pthread_sigmask``) does not do it: Python runs
    its handlers in the main thread whichever thread the kernel delivers the signal to, and
    the grace watchdog's thread is always there. A second SIGTERM and the grace still end the
    process at once (:func:`_forced_exit`), held or not. (A block stuck in a write, its error
    line into a stderr pipe whose reader stopped reading, holds every Ctrl-C; SIGTERM's
    grace ends it, its own line written only where there is room.)"""
    _DEFERRING[0] += 1
    try:
        yield
    finally:
        _DEFERRING[0] -= 1
        if not _DEFERRING[0] and _HELD:
            signum = _HELD[0]
            _HELD.clear()
            _interrupt(signum)


def exit_status(signum: int | None = None) -> int:
    """128 + the signal, as a shell reports a process it ended: 130 for Ctrl-C, 143 for
    SIGTERM. ``signum`` defaults to the first signal received (Ctrl-C when none was)."""
    s = received() if signum is None else signum
    return 128 + int(s if s is not None else signal.SIGINT)


def line(signum: int | None = None) -> str:
    """The one line a stopped command prints: which signal, and that rerunning resumes."""
    s = received() if signum is None else signum
    if s == signal.SIGTERM:
        return ("stopped by SIGTERM (a scheduler's time limit or preemption, `kill`, or "
                "torchrun ending the other ranks): rerun the same command to resume where "
                "it stopped")
    return "interrupted: rerun the same command to resume where it stopped"


#: the exit status of the command, once decided (its outputs written, or its error printed)
_SETTLED: list[int] = []


def settle(status: int) -> None:
    """The command's outcome is decided: it exits with ``status`` (0: it did its work; else
    it failed, and said why). A stop signal that comes from now on cuts nothing short: it is
    named (:func:`late_line`) but the command keeps its status (:func:`late_status`), and so
    does a forced exit after it (the grace, a second SIGTERM)."""
    _SETTLED[:] = [int(status)]


def settled() -> int | None:
    """The command's exit status once :func:`settle` decided it; None before."""
    return _SETTLED[0] if _SETTLED else None


def _signal_name(signum: int) -> str:
    return "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C (SIGINT)"


#: the exit statuses of a command a stop signal ended (Ctrl-C, SIGTERM): its line is printed
STOP_STATUSES = (128 + int(signal.SIGINT), 128 + int(signal.SIGTERM))


def status_of(code: Any) -> int:
    """The exit status ``SystemExit(code)`` gives: None is 0, a message 1 (Python prints it)."""
    return 0 if code is None else code if isinstance(code, int) else 1


def late_line(signum: int, status: int) -> str:
    """The line for a stop signal that came while a command whose outcome was decided (its
    ``status``) was exiting: which signal, and that nothing was cut short.

    Under torchrun a rank whose peer failed prints its error, and torchrun's SIGTERM then often
    lands while it exits: that line used to be Ctrl-C's, as if the user had pressed it."""
    if status:
        return (f"{_signal_name(signum)} arrived while exiting, after the command had failed: "
                f"nothing was cut short; the exit status stays the command's own ({status})")
    if signum == signal.SIGTERM:
        return ("stopped by SIGTERM while exiting, after the command had ended: nothing was "
                "cut short")
    return "interrupted while exiting, after the command had ended: nothing was cut short"


def late_status(signum: int, status: int) -> int:
    """The exit status of a command a stop signal reached as it exited with ``status``: a
    failure keeps its own (an error's 2 does not become 143: the signal is not why it
    failed); a command that succeeded reports the signal (128 + it), as a shell does for a
    process a signal ended, since its exit (atexit hooks, workers joined) was cut."""
    return status if status else exit_status(signum)


def _child_ended(signum, frame) -> None:
    """SIGCHLD once the command is stopping: a child that ends is no news then."""


def quiet_children() -> None:
    """From now on, a child process that ends raises nothing in this one (main thread only).

    torch's DataLoader installs a SIGCHLD handler that raises "DataLoader worker (pid N) is
    killed by signal: Terminated" for any worker a signal ended. A scheduler's SIGTERM reaches
    every process of the job, so each worker it ends raised that once more in the main thread,
    wherever the stop's cleanup was, even in the print of the command's line (exit 1 and a
    traceback instead of 143 and the line). Handled by a Python function that does nothing,
    not given its default action: a SIGCHLD already noted but not yet handled would then be
    reported as "ignored due to race condition"."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, _child_ended)


#: daemon threads that may be inside native code when the process exits (:func:`runs_native_code`)
_NATIVE_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def runs_native_code(thread: threading.Thread) -> threading.Thread:
    """Record ``thread``, a daemon that may still be inside native code (torch, numba, a read
    from storage) when the process exits: ffcv's epoch thread, the GPU-decode read-ahead
    threads. A stop that could not end it in time, or one stuck in a read, lives on as a daemon,
    and CPython ends such a thread at exit by a forced unwind as it next takes the GIL; through
    C++ frames that unwind aborts the whole process ("terminate called without an active
    exception", exit 134 or -6), after the command's line and outputs. The console entry point
    (:mod:`ffcv_dp4tl.__main__`) ends the process before that happens while one is alive
    (:func:`native_threads_left`). Returns ``thread``."""
    _NATIVE_THREADS.add(thread)
    return thread


def native_threads_left(wait: float) -> int:
    """How many threads recorded by :func:`runs_native_code` are still alive after waiting up to
    ``wait`` seconds in all for them to end (a stopped one usually ends within milliseconds)."""
    deadline = time.monotonic() + wait
    alive = [t for t in list(_NATIVE_THREADS) if t.is_alive()]
    for t in alive:
        if t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    return sum(t.is_alive() for t in alive)


#: seconds a command has, after SIGTERM, to stop cleanly before it ends at once: less than
#: the grace a scheduler or torchrun gives before SIGKILL (Slurm's default KillWait and
#: torchrun's stop timeout are 30 s), so that the command's line still gets out
GRACE_S = 15.0


class _GraceWatchdog:
    """Ends the process ``grace`` seconds after a SIGTERM, whatever its main thread is doing.

    Python runs signal handlers in the main thread only, between bytecodes. A main thread
    blocked in native code (a DDP rank waiting in a collective for a rank that is gone: gloo
    waits 30 minutes) never runs the handler, so SIGTERM, which used to end the process at
    once, would wait for the SIGKILL that follows. The C-level handler writes every handled
    signal's number to the wakeup fd even then; this thread reads it, and a SIGTERM arms the
    deadline. After a SIGTERM it keeps running through the interpreter's exit (a hang there is
    cut too); a process that ends in time takes it along."""

    def __init__(self, grace: float) -> None:
        self.grace, self.armed = float(grace), False
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        previous = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.owned = previous == -1
        if not self.owned:  # an event loop's: keep it, go without the deadline
            signal.set_wakeup_fd(previous)
            self._close_fds()
            return
        _WATCHDOGS.append(self)
        self.thread = threading.Thread(target=self._watch, name="dp4tl-sigterm-grace",
                                       daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, 64)
            except OSError:
                return
            if int(signal.SIGTERM) in data:
                self.armed = True
                threading.Event().wait(self.grace)
                _forced_exit(signal.SIGTERM,
                             f"its cleanup took more than {self.grace:g} s, so it ended at once",
                             f"its exit then took more than {self.grace:g} s, so it ended at once")
            if not data or 0 in data:  # closed, or close()'s wake-up byte
                return

    def close(self) -> None:
        """Give the wakeup fd back; stop the thread unless a SIGTERM armed it (or is on its
        way to it: the handler recorded one), which then runs on until the process ends."""
        if not self.owned:
            return
        signal.set_wakeup_fd(-1)
        _WATCHDOGS.remove(self)
        if self.armed or signal.SIGTERM in _RECEIVED:
            return
        os.write(self.write_fd, b"\0")
        self.thread.join()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def forget_in_child(self) -> None:
        """After a fork: the child shares the pipe, and its own SIGTERM (torch ends data-loader
        workers that way) would arm the parent's deadline. The child has no watcher thread."""
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        self._close_fds()


#: the error file torchrun gives every rank (its ``ErrorHandler``'s), read into its failure
#: report; "" or unset: not under torchrun, or torchrun without a log folder
LAUNCHER_FILE_ENV = "TORCHELASTIC_ERROR_FILE"


def launcher_error(said: str, follows: bool = False) -> dict[str, Any]:
    """The error file's content (torch's ``ErrorHandler`` format) for a rank that printed
    ``said``: its last line as the message, the whole as the traceback torchrun's report shows.
    torchrun's root cause is the failure with the earliest timestamp, in whole seconds, a tie
    going to the rank it noticed first: a rank that stopped only because another failed
    (``follows``) is dated a second later, so the failure it followed is named (review)."""
    text = said.rstrip("\n")
    when = int(time.time()) + (1 if follows else 0)  # (an integer string: torch reads it so)
    return {"message": {"message": text.splitlines()[-1] if text else "",
                        "extraInfo": {"py_callstack": text, "timestamp": str(when)}}}


def _tell_launcher_at_exit(said: str) -> None:
    """The forced exit's line into the rank's torchrun error file, unless the command wrote
    one (a rank the grace ended wrote none, so torchrun's report said of it only "To enable
    traceback see ..."). A plain write, no temporary file and rename, and nothing that may
    wait: the exit must come before the launcher's SIGKILL (best effort, like the line)."""
    path = os.environ.get(LAUNCHER_FILE_ENV, "")
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:  # (the command's own file is there, or no folder for it)
        return
    try:
        os.write(fd, json.dumps(launcher_error(said, follows=True)).encode())
    except OSError:
        pass
    finally:
        os.close(fd)


#: the thread that is ending the process at once, once one is (:func:`_forced_exit`)
_FORCING: list[int] = []


def _forced_exit(signum: int, cleanup_why: str, exit_why: str) -> None:
    """End the process at once: the stop's line with ``cleanup_why`` (or, once the command's
    outcome was decided, :func:`settle`, the late line with ``exit_why``) on stderr (to the
    descriptor: the main thread may hold sys.stderr's lock), this process's own children
    killed, then ``os._exit`` with the status of the signal, or the command's own."""
    if _FORCING:  # (the other thread is at it: the grace's and a second SIGTERM's)
        return
    _FORCING.append(threading.get_ident())
    status = settled()
    said = (f"{line(signum)} ({cleanup_why})" if status is None
            else f"{late_line(signum, status)} ({exit_why})")
    _write_if_room(2, f"{said}\n".encode())
    _tell_launcher_at_exit(said)
    code = exit_status(signum) if status is None else late_status(signum, status)
    try:
        doomed = _own_children()
    except Exception:  # (nothing may stop the exit)
        doomed = set()
    # From the first kill to the exit no call here lets go of the GIL: a main thread the kill
    # wakes (blocked waiting on a child) cannot run on meanwhile (a pending SIGTERM's handler,
    # which then waits, or a cleanup going on to exit on its own)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(code)


def _write_if_room(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` unless the write would block (or fails): the forced exit must
    reach ``os._exit``. A stderr pipe whose reader stopped reading held its watchdog thread in
    ``write`` for good, so neither the grace nor a second signal ended the process. ``select``
    rather than O_NONBLOCK, which would change the descriptor shared with the shell."""
    import select

    try:
        if select.select([], [fd], [], 0)[1]:
            os.write(fd, data)
    except (OSError, ValueError):
        pass


def _stat(pid: int) -> tuple[str, int] | None:
    """The state letter and the parent's pid of process ``pid`` (/proc, Linux); None when it
    is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()  # (after the name, which may hold ")")
        return fields[0].decode(), int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def _direct_children() -> set[int] | None:
    """The pids of this process's child processes (whichever thread started them), from /proc;
    None without it (not Linux)."""
    me = os.getpid()
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        return None
    pids: set[int] = set()
    listed = False
    for tid in tasks:
        try:
            with open(f"/proc/{me}/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
            listed = True
        except (OSError, ValueError):  # (a thread that ended meanwhile)
            continue
    if not listed:  # a kernel built without the children files: every process's parent
        with contextlib.suppress(OSError):
            for name in os.listdir("/proc"):
                if name.isdigit() and (_stat(int(name)) or ("", 0))[1] == me:
                    pids.add(int(name))
    return pids


#: the stop signals a whole process group receives (a child ended by one is no failure)
_STOPS = (int(signal.SIGINT), int(signal.SIGTERM), int(signal.SIGHUP))


def child_pids() -> set[int]:
    """The pids of this process's child processes now (/proc; empty without it): what
    :func:`failed_children` later compares with."""
    return _direct_children() or set()


def failed_children(before: set[int]) -> list[tuple[int, str]]:
    """The child processes not in ``before`` (pids) that have ended in failure and are not yet
    reaped: ``(pid, "exit status 1")`` or ``(pid, "killed by SIGBUS")``. They are read with
    ``waitid(WNOWAIT)``, so whoever started them still joins them and reads their exit code.
    Empty without /proc (not Linux). For a parent that waits on its workers' results without
    watching them (ffcv's beton writer waits forever for the samples of a worker that died).
    A child ended by a stop signal (SIGINT, SIGTERM, SIGHUP: killed by it, or exited 128 + it
    through an inherited handler) is no failure: a stop sent to the whole process group (a
    scheduler's SIGTERM, Ctrl-C) reaches the parent too, whose own handler reports it (review:
    it was reported as a writer failure when the child died first)."""
    pids = _direct_children()
    if not pids:
        return []
    failed = []
    for pid in sorted(pids - before):
        try:
            r = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (ChildProcessError, OSError):  # (reaped meanwhile)
            continue
        if r is None:
            continue
        if r.si_code == os.CLD_EXITED:
            if r.si_status and r.si_status - 128 not in _STOPS:
                failed.append((pid, f"exit status {r.si_status}"))
        elif r.si_status not in _STOPS:  # CLD_KILLED, CLD_DUMPED
            try:
                name = signal.Signals(r.si_status).name
            except ValueError:
                name = f"signal {r.si_status}"
            failed.append((pid, f"killed by {name}"))
    return failed


def _multiprocessing_helpers() -> set[int]:
    """multiprocessing's resource tracker and fork server, if this process started them: both
    end on their own once it has (their pipe from it closes), the tracker after removing the
    shared memory and semaphores it left: killed, it would leave them behind."""
    pids = set()
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    server = sys.modules.get("multiprocessing.forkserver")
    for pid in (getattr(getattr(tracker, "_resource_tracker", None), "_pid", None),
                getattr(getattr(server, "_forkserver", None), "_forkserver_pid", None)):
        if isinstance(pid, int):
            pids.add(pid)
    return pids


def _own_children() -> set[int]:
    """The child processes a forced exit kills (SIGKILL) first.

    ``os._exit`` leaves a process's children running: a stuck data-loader worker (a
    multiprocessing fork child, which the job's SIGTERM does not end when it is stuck in
    native code or ignores it) became an orphan of init, ran on for good and kept the run's
    lock file open (cluster audit, torchrun). These are: the direct children (/proc, so
    subprocesses too) and multiprocessing's (``active_children()``; one a fork server started
    is that server's child, ours through it); not multiprocessing's helpers
    (:func:`_multiprocessing_helpers`). Nothing else: with /proc a pid is taken only while it
    names this process (or its fork server) its parent, and a child's pid is not reused before
    its parent reaps it; without /proc (not Linux), multiprocessing's list, which its own
    ``terminate()`` trusts."""
    helpers = _multiprocessing_helpers()
    workers: list[int] = []
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        with contextlib.suppress(Exception):  # (another thread may be starting one meanwhile)
            workers = [p.pid for p in mp.active_children() if p.pid]
    direct = _direct_children()
    if direct is None:
        return set(workers) - helpers
    servers = direct & helpers
    return (direct - helpers) | {p for p in workers if p not in helpers
                                 and (_stat(p) or ("", 0))[1] in servers}


#: the watchdogs of the blocks now open (one per command; the list is what a fork clears)
_WATCHDOGS: list[_GraceWatchdog] = []
#: how many blocks now hold a Python-level SIGTERM handler (:func:`sigterm_handler`)
_HOLDERS = [0]
_FORK_MASK = threading.local()


def _before_fork() -> None:
    if _HOLDERS[0]:  # held until the child has the default action back (see sigterm_handler)
        _FORK_MASK.old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _after_fork_in_parent() -> None:
    old = getattr(_FORK_MASK, "old", None)
    if old is not None:
        _FORK_MASK.old = None
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _after_fork_in_child() -> None:
    for w in _WATCHDOGS:
        w.forget_in_child()
    _WATCHDOGS.clear()
    old = getattr(_FORK_MASK, "old", None)
    if old is None:
        return
    _FORK_MASK.old = None
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):  # (then the inherited handler's child branch ends it)
        pass
    finally:  # a SIGTERM that came meanwhile is delivered now, and ends the child
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def sigterm_handler(handler: Callable[[int, Any], Any]) -> Iterator[None]:
    """Install ``handler`` for SIGTERM for the block (main thread only), then the previous one.

    A process forked meanwhile starts with SIGTERM's default action, not ``handler``: a pool's
    ``terminate()``, torch ending its data-loader workers and a scheduler ending the job all
    rely on SIGTERM killing a worker, and a Python handler runs only when the worker's main
    thread returns to Python. One that came between ``fork()`` and the child's start was even
    lost (CPython clears pending signals in a new child), and the worker, waiting on its task
    queue, never ended: a build's ``Pool.terminate()`` waited forever. SIGTERM is blocked
    across the fork and unblocked in the child once the default is back, so none is lost."""
    previous = signal.signal(signal.SIGTERM, handler)
    _HOLDERS[0] += 1
    try:
        yield
    finally:
        _HOLDERS[0] -= 1
        signal.signal(signal.SIGTERM, previous)


def _ctrl_c(signum, frame) -> None:
    """Ctrl-C while a command runs: ``KeyboardInterrupt``, as Python's own handler raises, but
    held inside :func:`deferred`."""
    _interrupt(signum)


@contextlib.contextmanager
def _ctrl_c_handler() -> Iterator[None]:
    """:func:`_ctrl_c` for Ctrl-C within the block, then Python's own again; nothing changes
    where another handler is set (an embedding program keeps it)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def sigterm_raises(grace: float | None = GRACE_S) -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread, once.

    * If the command has not ended ``grace`` seconds later (its main thread blocked in native
      code, a slow cleanup, a hang at exit), it ends at once with its line and status 143
      (:class:`_GraceWatchdog`; ``grace=None``: no deadline, for a process that must live on,
      such as a test runner).
    * A second SIGTERM (the cleanup the first began takes too long for whoever sends it)
      ends the process at once with status 143, as SIGTERM did before.
    * Either way its own child processes are killed first (:func:`_own_children`: a stuck
      data-loader worker lived on as an orphan), and a command whose outcome was decided
      before the SIGTERM came (:func:`settle`: its error printed) keeps its exit status.
    * A forked child (a data-loader or writer worker) starts with SIGTERM's default action
      (:func:`sigterm_handler`) and dies of it as before: the parent reports the stop once,
      and from the first SIGTERM on a child that ends raises nothing here
      (:func:`quiet_children`, kept after the block: the process is ending; torch then finds
      a dead worker by its loader's timeout check, not at once).
    * Ctrl-C raises ``KeyboardInterrupt`` as before, through a handler of this module: both
      signals are held inside :func:`deferred` (Python's own Ctrl-C handler is back after).
    * Nothing changes outside the main thread, or when the program running this code set a
      SIGTERM handler of its own (an embedding program keeps it).

    Entering the block starts a fresh record of the signals received and of the command's
    outcome (:func:`settle`; one per command)."""
    _SETTLED.clear()
    _RAISED.clear()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    _RECEIVED.clear()
    _HELD.clear()
    parent = os.getpid()

    def handler(signum, frame):
        if _FORCING:  # the process is ending at once (:func:`_forced_exit`)
            if _FORCING[0] != threading.get_ident():
                threading.Event().wait()  # (nothing is to run meanwhile)
            return
        if os.getpid() != parent:  # (a child forked elsewhere than through os.fork's hooks)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if signal.SIGTERM in _RECEIVED:  # the second one: stop the cleanup too, with the line
            _forced_exit(signal.SIGTERM, "a second SIGTERM ended its cleanup",
                         "a second SIGTERM ended its exit")
        record(signum)
        quiet_children()  # (the job's workers die of the same SIGTERM; for good: it is ending)
        _interrupt(signum)

    with sigterm_handler(handler), _ctrl_c_handler():
        watchdog = None if grace is None else _GraceWatchdog(grace)
        try:
            yield
        finally:
            if watchdog is not None:
                watchdog.close()
