"""``python -m ffcv_dp4tl`` = the ``dp4tl`` command, and the console script's entry point.

It imports the CLI itself (torch, ffcv, numba: seconds) inside :func:`main`, so that Ctrl-C
while those imports run prints one line instead of a ``KeyboardInterrupt`` traceback from
deep inside an import; this module imports nothing heavy."""
from __future__ import annotations

import os
import sys


def main() -> None:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("interrupted before the command started: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    try:
        run()
    except SystemExit as e:
        _quiet_interrupt_at_exit(finished=e.code not in (130, 143))  # (Ctrl-C, SIGTERM)
        raise


def _quiet_interrupt_at_exit(finished: bool) -> None:
    """Once the command's outcome is decided (outputs written, its line printed), a Ctrl-C
    during interpreter shutdown (torch's atexit hooks, worker joins) printed an "Exception
    ignored in atexit callback" traceback, or killed the process without a word. Now it ends
    the process at once, with one line when the command had ended (none when it was itself
    interrupted: that line is printed already). Only here, at the process's real exit: the
    CLI's ``main`` also runs inside other programs (tests), whose Ctrl-C stays theirs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        try:
            for stream in (sys.stdout, sys.stderr):  # (None or closed in the teardown)
                try:
                    stream.flush()
                except (AttributeError, ValueError, OSError):
                    pass
            if finished:  # to the descriptor: sys.stderr may be gone by now
                os.write(2, b"interrupted while exiting, after the command had ended: nothing "
                            b"was cut short\n")  # (= cli.app.AT_EXIT_LINE, not imported here)
        finally:
            os._exit(130)

    signal.signal(signal.SIGINT, handler)


if __name__ == "__main__":
    main()
