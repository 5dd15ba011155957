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


def run() -> None:
    """Console entry point: user errors become one clear line and exit status 2."""
    try:
        app()
    except DP4TLError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume where it stopped", file=sys.stderr)
        raise SystemExit(130) from None
