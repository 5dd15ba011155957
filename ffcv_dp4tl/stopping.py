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
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["GRACE_S", "Terminated", "exit_status", "interrupt_for", "line", "quiet_children",
           "received", "record", "sigterm_handler", "sigterm_raises"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises ``KeyboardInterrupt`` (a subclass, so that every
    ``except KeyboardInterrupt`` cleanup runs for it too)."""


#: the stop signals this process received, in order (SIGINT, SIGTERM)
_RECEIVED: list[int] = []


def record(signum: int) -> None:
    """Note a stop signal (a handler of its own, such as the build's Ctrl-C guard, calls
    this so that :func:`received` sees it)."""
    _RECEIVED.append(int(signum))


def received() -> int | None:
    """The first stop signal this process received: the one that decided how it ends (a
    second signal arrives during the cleanup the first began); None when none came."""
    return _RECEIVED[0] if _RECEIVED else None


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a stop signal raises: :class:`Terminated` for SIGTERM, else Ctrl-C's."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


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
                os.write(2, (f"{line(signal.SIGTERM)} (its cleanup took more than "
                             f"{self.grace:g} s, so it ended at once)\n").encode())
                os._exit(exit_status(signal.SIGTERM))
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


@contextlib.contextmanager
def sigterm_raises(grace: float | None = GRACE_S) -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread, once.

    * If the command has not ended ``grace`` seconds later (its main thread blocked in native
      code, a slow cleanup, a hang at exit), it ends at once with its line and status 143
      (:class:`_GraceWatchdog`; ``grace=None``: no deadline, for a process that must live on,
      such as a test runner).
    * A second SIGTERM (the cleanup the first began takes too long for whoever sends it)
      ends the process at once with status 143, as SIGTERM did before.
    * A forked child (a data-loader or writer worker) starts with SIGTERM's default action
      (:func:`sigterm_handler`) and dies of it as before: the parent reports the stop once,
      and from the first SIGTERM on a child that ends raises nothing here
      (:func:`quiet_children`, kept after the block: the process is ending; torch then finds
      a dead worker by its loader's timeout check, not at once).
    * Nothing changes outside the main thread, or when the program running this code set a
      SIGTERM handler of its own (an embedding program keeps it).

    Entering the block starts a fresh record of the signals received (one per command)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    _RECEIVED.clear()
    parent = os.getpid()

    def handler(signum, frame):
        if os.getpid() != parent:  # (a child forked elsewhere than through os.fork's hooks)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if signal.SIGTERM in _RECEIVED:  # the second one: stop the cleanup too, with the line
            # (to the descriptor: the cleanup may hold sys.stderr's lock)
            os.write(2, f"{line(signal.SIGTERM)} (a second SIGTERM ended its cleanup)\n".encode())
            os._exit(exit_status(signal.SIGTERM))
        record(signum)
        quiet_children()  # (the job's workers die of the same SIGTERM; for good: it is ending)
        raise Terminated()

    with sigterm_handler(handler):
        watchdog = None if grace is None else _GraceWatchdog(grace)
        try:
            yield
        finally:
            if watchdog is not None:
                watchdog.close()
