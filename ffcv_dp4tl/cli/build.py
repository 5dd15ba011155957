"""``dp4tl build`` and ``dp4tl info``: convert datasets once, inspect what was built."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from beton_builders.sources import layout_names

from ..errors import count
from ..outputs import claim_out_dir
from .app import app
from .options import DATA_HELP, BetonMode, TargetSplit


@app.command()
def build(
    source: str = typer.Argument(..., help="synth[:tiny|bench|hard|default|costtable|imagenet]"
                                 "[,key=value...], or LAYOUT:PATH with LAYOUT one of "
                                 + layout_names()),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (synth: DIR/source and "
                             "DIR/targets/<name>)"),
    max_side: Optional[int] = typer.Option(None, help="Shrink images so the longer side is at most "
                                           "this (default 256; synth: its image size)"),
    quality: int = typer.Option(90, help="JPEG quality of the stored images"),
    shard_size: int = typer.Option(1000, help="Samples per WebDataset shard (also the unit of "
                                   "resumable work)"),
    beton_mode: BetonMode = typer.Option(BetonMode.jpg, help="jpg: all JPEG; proportion: "
                                         "--raw-fraction of the images stored as raw pixels "
                                         "(faster decode, more disk)"),
    raw_fraction: float = typer.Option(0.0, help="With --beton-mode proportion"),
    workers: Optional[int] = typer.Option(None, min=1, help="Parallel encoder processes (default: every core "
                                          "this process may run on)", show_default=False),
    split: TargetSplit = typer.Option(TargetSplit.auto, help="auto: the layout's CoOp split_zhou_*.json when it "
                                "lies beside the data (the paper's Tab. A1 splits), else the "
                                "official splits; coop: require it; official: never use it"),
    split_json: Optional[Path] = typer.Option(None, help="CoOp-style split_zhou_*.json overriding "
                                              "the official splits (wins over --split)"),
    overwrite: bool = typer.Option(False, help="Replace an existing or partial build in --out"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """Convert SOURCE into FFCV betons + WebDataset shards + labels + manifest (resumable)."""
    from beton_builders.out_dir import check_parts_fit, overwriting_parts, remove_stale_parts
    from beton_builders.sources import default_max_side, resolve_source
    from beton_builders.writer import BuildOptions, build_dataset

    from ..fsutil import check_out_dir

    check_out_dir(out, "--out", must_write=False)  # (a read-only finished build is reused)
    specs = resolve_source(source, split_json, split.value)
    parts = [sub for sub in specs if sub]  # a SOURCE of several datasets: its sub-folders
    check_parts_fit(out, parts, overwrite)
    for sub in specs:  # (not a training run's folder, scores, …)
        claim_out_dir(out / sub if sub else out, "dataset")
    # (an --overwrite of several parts holds them all from the first to the last: no run reads
    # an old target while the source is replaced)
    with overwriting_parts(out, parts) if overwrite and parts else contextlib.nullcontext():
        for sub, spec in specs.items():
            side = max_side if max_side is not None else default_max_side(spec)
            opts = BuildOptions(max_side=side, quality=quality, shard_size=shard_size,
                                beton_mode=beton_mode.value, raw_fraction=raw_fraction,
                                **({} if workers is None else {"workers": workers}),
                                progress=progress)
            target = out / sub if sub else out
            summary = build_dataset(spec, target, opts, source=source, overwrite=overwrite)
            _echo_built(target, spec, summary)
        if overwrite and len(specs) > 1:
            for gone in remove_stale_parts(out, parts):
                typer.echo(f"{gone}: removed (a part of the replaced build that {source} does "
                           "not make)")


def _echo_built(target: Path, spec, summary) -> None:
    """What ``dp4tl build`` says of one dataset it built or found built."""
    from beton_builders.sources import split_note

    state = "already built" if summary.skipped else "built"
    typer.echo(f"{target}: {state} ({spec.name})")
    if split_note(spec):
        typer.echo(f"  {split_note(spec)}")
    for line in summary.lines():
        typer.echo(f"  {line}")
    for line in summary.warnings:
        typer.echo(f"warning: {line}", err=True)
    rejected = sum(s.num_rejected for s in summary.splits)
    if rejected:
        typer.echo(f"  {rejected} inputs skipped; reasons in {target / 'rejects.txt'}")


@app.command()
def info(
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    classes: bool = typer.Option(False, "--classes",
                                 help="Also list every class: its id (what `dp4tl mask classes` "
                                      "takes), name and samples per split"),
) -> None:
    """Show classes, splits, counts and fingerprints of a built dataset."""
    from ..contracts.names import printable
    from ..data.manifest import load_manifest

    m = load_manifest(data)
    typer.echo(f"{m.root}: {printable(m.name)} — {count(m.num_classes, 'class')}"
               f"{'' if classes else ' (--classes lists them)'}, fingerprint {m.fingerprint[:16]}")
    img = m.contract.image
    typer.echo(f"  images: JPEG q{img and img.quality}, max side {img and img.max_side}, "
               f"beton mode {img and img.beton_mode}")
    for name in m.split_names:
        s = m.split_entry(name)
        typer.echo(f"  {printable(name)}: {s.num_samples} samples ({s.num_rejected} rejected), "
                   f"{count(len(s.shards), 'shard')}, "
                   f"fingerprint {s.fingerprint[:16]}")
    if classes:
        _echo_classes(m)


def _echo_classes(m) -> None:
    """One line per class: id, name, then its samples in each split (tab-separated, for
    ``cut``/``awk``). A split's counts are the build's (``class_counts``), else its labels'.
    Names are shown :func:`~beton_builders.spec.printable` (a manifest may hold anything)."""
    import numpy as np

    from ..contracts.names import printable

    per_split = {}
    for name in m.split_names:
        counts = m.class_counts(name)
        if counts is None:  # (a build from before the manifest recorded them)
            counts = np.bincount(m.split(name).load_labels(), minlength=m.num_classes).tolist()
        per_split[name] = counts
    typer.echo("\t".join(["id", "class", *map(printable, per_split)]))
    for i, cls in enumerate(m.classes):
        typer.echo("\t".join([str(i), printable(cls), *(str(c[i]) for c in per_split.values())]))
