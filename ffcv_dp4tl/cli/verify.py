"""``dp4tl verify``: check a built dataset against its manifest, in both formats."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command()
def verify(
    data: Path = typer.Argument(..., help="Built dataset directory (holds manifest.json)"),
    deep: bool = typer.Option(False, "--deep", help="Also hash every sample's bytes in the shards "
                              "and the beton (reads the whole dataset once per format)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar (--deep)"),
) -> None:
    """Check manifest, labels, index, shard and beton sizes; with --deep every sample's bytes.

    Exit status 0 when intact, 1 with one line per problem otherwise; 2 (one line) when DATA
    is not a built dataset at all.
    """
    from ..contracts.names import printable
    from ..data.manifest import load_manifest, manifest_path
    from ..data.verify import verify_dataset

    if not manifest_path(data).exists():
        # no dataset to check (a typo, a file, a folder of several builds): a usage error, in
        # the one line every --data gets (exit 2), not a "problem found" (1) of a dataset
        load_manifest(data)  # (raises DataError: it names what DATA is instead)
    report = verify_dataset(data, deep=deep, progress=progress)
    what = "sizes and every sample's bytes (both formats)" if deep else "structure and sizes (add --deep to hash every sample)"
    if report.ok:
        splits = ", ".join(f"{printable(name)} {n:,}" for name, n in report.samples.items())
        typer.echo(f"{data}: OK — {what}; splits: {splits}")
        return
    for line in report.problems:
        typer.echo(f"problem: {printable(line)}", err=True)  # (lines quote manifest names)
    typer.echo(f"{data}: {len(report.problems)} problem(s) found ({what})", err=True)
    raise typer.Exit(1)
