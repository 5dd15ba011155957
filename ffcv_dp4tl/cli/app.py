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


def _is_numba_finalizer_noise(kind: type | None, tb) -> bool:
    last = None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return kind is KeyError and last is not None and last.endswith("numba/core/dispatcher.py")


def _quiet_numba_exit_noise() -> None:
    """Hide numba's harmless ``KeyError`` from dispatcher finalizers at interpreter exit.

    ffcv compiles pipelines with numba; when they are collected at exit numba's finalizer can
    raise a KeyError that Python prints as a traceback although nothing went wrong.
    """
    previous, previous_unraisable = sys.excepthook, sys.unraisablehook

    def hook(kind, value, tb):
        if not _is_numba_finalizer_noise(kind, tb):
            previous(kind, value, tb)

    def unraisable(info):
        if not _is_numba_finalizer_noise(info.exc_type, info.exc_traceback):
            previous_unraisable(info)

    sys.excepthook, sys.unraisablehook = hook, unraisable


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
