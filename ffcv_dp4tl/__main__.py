"""``python -m ffcv_dp4tl`` = the ``dp4tl`` command, and the console script's entry point.

It imports the CLI itself (torch, ffcv, numba: seconds) inside :func:`main`, so that Ctrl-C
while those imports run prints one line instead of a ``KeyboardInterrupt`` traceback from
deep inside an import; this module imports nothing heavy."""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys

from . import lazy, stopping  # (standard library only)


#: seconds the loader threads still alive at exit get to end (:func:`_leave_native_threads`)
NATIVE_WAIT_S = 2.0


def main() -> None:
    import atexit

    _streams_take_any_text()
    outcome: list[int] = []  # the command's exit status, once decided
    atexit.register(_leave_native_threads, outcome)  # (registered first: run last)
    # the process ends on Ctrl-C: an import it cuts short is never read again, so it is not
    # held for the seconds torch's or ffcv's import still takes
    lazy.interrupts_cut_imports()
    try:
        # SIGTERM while the CLI imports (seconds; torchrun ending the other ranks as a rank
        # starts) ended the process by the signal, with no line: it raises there as it does in
        # the command, and its default is back after the import (no grace timer: nothing runs)
        with stopping.sigterm_raises(grace=None):
            from .cli import main as run
    except KeyboardInterrupt as e:
        if isinstance(e, stopping.Terminated):
            print("stopped by SIGTERM before the command started: nothing was written",
                  file=sys.stderr)
            raise SystemExit(stopping.exit_status(signal.SIGTERM)) from None
        print("interrupted before the command started: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    try:
        run()
    except SystemExit as e:
        outcome.append(stopping.status_of(e.code))
        _quiet_interrupt_at_exit(outcome[0])
        raise
    except BaseException:  # a bug: Python prints its traceback and exits with 1
        outcome.append(1)
        _quiet_interrupt_at_exit(1)  # (a signal in the exit hook's wait: no abort, status 1)
        raise


#: error handler of an output stream whose encoding is not UTF-8 (:func:`_streams_take_any_text`)
TEXT_ERRORS = "dp4tl.replace"


def _replace_keeping_bytes(e: UnicodeError) -> tuple[str | bytes, int]:
    """A character the stream's encoding lacks prints as ``?``; an undecodable byte of a file
    name (Python's surrogate escape) goes out as the byte it was, as ``surrogateescape`` does,
    where the encoding is ASCII-compatible (a lone byte is no UTF-16 text: ``?`` there too)."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    c = ord(e.object[e.start])
    if 0xDC80 <= c <= 0xDCFF and _ascii_compatible(e.encoding):
        return bytes([c - 0xDC00]), e.start + 1
    return "?", e.start + 1


@functools.lru_cache(maxsize=None)
def _ascii_compatible(encoding: str) -> bool:
    try:
        return "?a".encode(encoding) == b"?a"
    except (LookupError, UnicodeError):
        return False


def text_errors() -> str:
    """:data:`TEXT_ERRORS`, registered with :mod:`codecs` (once)."""
    import codecs

    try:
        codecs.lookup_error(TEXT_ERRORS)
    except LookupError:
        codecs.register_error(TEXT_ERRORS, _replace_keeping_bytes)
    return TEXT_ERRORS


def _streams_take_any_text() -> None:
    """The process's output streams take whatever the command writes.

    * Under a locale that is not UTF-8 (``LANG=en_US.ISO-8859-1``; ``LC_ALL=C`` with
      ``PYTHONUTF8=0``) the help pages' → … — ε ∩ met stdout's strict encoder and the help
      ended in a ``UnicodeEncodeError`` traceback (environment audit): such a stream now
      prints a character it cannot encode as ``?`` (:func:`_replace_keeping_bytes`).
      stderr escapes them already (Python's ``backslashreplace``).
    * A stream the shell closed (``2>&-``, ``>&-``) is ``None`` in Python: the error line's
      write failed, and ``dp4tl verify`` exited 1 (damaged) instead of 2 (not a built dataset).
      It is now a sink, so the status is the command's own.

    Only here, at the process's entry point: the CLI inside another program (tests) leaves
    that program's streams alone."""
    import codecs

    errors = text_errors()
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
            continue
        try:
            utf8 = codecs.lookup(stream.encoding or "ascii").name == "utf-8"
        except (AttributeError, LookupError):
            continue
        # (only Python's own choices: an error mode the user set, PYTHONIOENCODING=x:replace, stays)
        if not utf8 and name == "stdout" and getattr(stream, "errors", None) in (
                "strict", "surrogateescape") and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors=errors)


def _leave_native_threads(outcome: list[int]) -> None:
    """The last exit hook, run before the interpreter finalizes: a loader thread still inside
    native code then (:func:`ffcv_dp4tl.stopping.runs_native_code`: ffcv's epoch thread that a
    stop could not end in time under load, a read-ahead thread stuck in a read from storage)
    would be ended by CPython's forced unwind, which aborts the process through C++ frames
    ("terminate called without an active exception": exit -6 instead of 143 in one CI run of
    a SIGTERMed ffcv training, its stop line already printed). Such threads get
    :data:`NATIVE_WAIT_S` seconds to end; then the process ends at once with the command's own
    status (``outcome``), its output flushed. The command's own exit hooks (torch's,
    multiprocessing's, logging's, temporary files') have run: they are registered after this
    one, which runs last; and every file the command wrote was written atomically. A hook
    registered before :func:`main` (a ``sitecustomize`` or ``.pth`` file) is skipped then, and
    so is the rest of finalization: :func:`main` is the process's own entry point (a program
    that runs the CLI inside itself calls :func:`ffcv_dp4tl.cli.main`, which adds no hook)."""
    if not outcome or not stopping.native_threads_left(NATIVE_WAIT_S):
        return
    if "logging" in sys.modules:  # (its exit hook may be registered before this one)
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    os._exit(outcome[0])


def _quiet_interrupt_at_exit(status: int) -> None:
    """Once the command's outcome is decided (``status``: outputs written and 0, or its error
    printed), a Ctrl-C during interpreter shutdown (torch's atexit hooks, worker joins) printed
    an "Exception ignored in atexit callback" traceback, or killed the process without a word,
    and a SIGTERM (torchrun ending a rank whose peer failed) ended it by the signal. Now either
    ends the process at once with one line naming the signal (none when the command was itself
    stopped: that line is printed already) and the command's own status when it had failed
    (``stopping.late_line`` / ``late_status``, the rule the CLI's exit follows too). Only here,
    at the process's real exit: the CLI's ``main`` also runs inside other programs (tests),
    whose signals stay theirs."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    stopped = status in stopping.STOP_STATUSES  # (Ctrl-C, SIGTERM: its line is printed)

    def handler(signum, frame):
        try:
            for stream in (sys.stdout, sys.stderr):  # (None or closed in the teardown)
                try:
                    stream.flush()
                except (AttributeError, ValueError, OSError):
                    pass
            if not stopped:  # to the descriptor: sys.stderr may be gone by now
                os.write(2, f"{stopping.late_line(signum, status)}\n".encode())
        finally:
            os._exit(status if stopped else stopping.late_status(signum, status))

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


if __name__ == "__main__":
    main()
