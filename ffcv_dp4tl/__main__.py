"""``python -m ffcv_dp4tl`` = the ``dp4tl`` command, and the console script's entry point.

It imports the CLI itself (torch, ffcv, numba: seconds) inside :func:`main`, so that Ctrl-C
while those imports run prints one line instead of a ``KeyboardInterrupt`` traceback from
deep inside an import; this module imports nothing heavy."""
from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("interrupted before the command started: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    run()


if __name__ == "__main__":
    main()
