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
from collections.abc import Iterator

__all__ = ["Terminated", "exit_status", "interrupt_for", "line", "received", "record",
           "sigterm_raises"]


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


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread, once.

    * A second SIGTERM (the cleanup the first began takes too long for whoever sends it)
      ends the process at once with status 143, as SIGTERM did before.
    * A forked child (a data-loader or writer worker inherits the handler) dies of SIGTERM
      as before: the parent reports the stop once, instead of a traceback per worker.
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
        if os.getpid() != parent:  # a forked worker: die of the signal, as with no handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if signal.SIGTERM in _RECEIVED:  # the second one: stop the cleanup too
            os._exit(exit_status(signal.SIGTERM))
        record(signum)
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
