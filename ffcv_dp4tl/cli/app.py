"""The typer application object and the error handling shared by every command."""
from __future__ import annotations

import sys

import typer

from ..errors import DP4TLError

app = typer.Typer(
    name="dp4tl",
    help="Dataset pruning for transfer learning on FFCV betons and WebDataset shards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _quiet_numba_exit_noise() -> None:
    """Hide numba's harmless ``KeyError`` from dispatcher finalizers at interpreter exit.

    ffcv compiles pipelines with numba; when they are collected at exit numba's finalizer can
    raise a KeyError that Python prints as a traceback although nothing went wrong.
    """
    previous = sys.excepthook

    def hook(kind, value, tb):
        frames = []
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        if kind is KeyError and frames and frames[-1].endswith("numba/core/dispatcher.py"):
            return
        previous(kind, value, tb)

    sys.excepthook = hook
    previous_unraisable = sys.unraisablehook

    def unraisable(info):
        tb, frames = info.exc_traceback, []
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        if info.exc_type is KeyError and frames and frames[-1].endswith("numba/core/dispatcher.py"):
            return
        previous_unraisable(info)

    sys.unraisablehook = unraisable


def run() -> None:
    """Console entry point: user errors become one clear line and exit status 2."""
    _quiet_numba_exit_noise()
    try:
        app()
    except DP4TLError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume where it stopped", file=sys.stderr)
        raise SystemExit(130) from None
