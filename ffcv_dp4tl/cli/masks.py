"""``dp4tl mask``: make and check index masks by hand (``dp4tl prune`` makes them from scores)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .app import Group, app
from ..contracts import split_items
from ..errors import MaskError, class_ids, count
from .options import DATA_HELP, not_blank_callback

mask_app = typer.Typer(cls=Group, help="Create and check index masks (sorted sample indices + JSON).",
                       no_args_is_help=True)
app.add_typer(mask_app, name="mask")


def _parse_ranges(text: str) -> list[tuple[int, int]]:
    """``--classes`` as inclusive (low, high) ranges, never expanded here: ``0-999999999999``
    must be refused by the bounds check, not first built as a list in memory."""
    ranges: list[tuple[int, int]] = []
    for part in split_items(text, "--classes", MaskError):  # ('1,,2': an id dropped, refused)
        lo, sep, hi = part.partition("-")
        try:
            low, high = (int(lo), int(hi)) if sep else (int(lo), int(lo))
        except ValueError:
            raise MaskError(f"--classes: {part!r} is not a class id or range like 3-7") from None
        if low > high:
            raise MaskError(f"--classes: {part!r} is a reversed range (it starts after it ends); "
                            f"write it low-high, e.g. {high}-{low}")
        ranges.append((low, high))
    ordered = sorted(ranges)  # a class twice ('0,0', '0-3,2'): refused as every list's repeats
    for (_, high), (low, _) in zip(ordered, ordered[1:]):
        if low <= high:
            raise MaskError(f"--classes {text!r} lists class {low} twice; list each class "
                            "once")
    return ranges


def _outside(ranges: list[tuple[int, int]], num_classes: int) -> str:
    """The requested ids past the last class, as merged compact ranges ('5-999, 2000')."""
    beyond = sorted((max(lo, num_classes), hi) for lo, hi in ranges if hi >= num_classes)
    merged: list[list[int]] = []
    for lo, hi in beyond:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    parts = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in merged]
    return ", ".join(parts[:5]) + (f" and {len(parts) - 5} more ranges" if len(parts) > 5 else "")


@mask_app.command("classes")
def classes_cmd(
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    classes: str = typer.Option(..., help="Class ids to keep, e.g. '0,3,10-19'"),
    out: Path = typer.Option(..., "--out", "-o", help="Mask file to write (.npy; .json beside)"),
    split: str = typer.Option("train", help="Split the mask indexes"),
) -> None:
    """Keep every sample of the given classes (reads labels.npy only, no images)."""
    from ..data.manifest import load_manifest
    from ..data.masks import (check_mask_name, describe_mask, mask_conflict, mask_files,
                              mask_from_classes, save_mask)

    from ..fsutil import check_out_dir

    ranges = _parse_ranges(classes)  # a bad id fails before the dataset is read
    if not ranges:  # (it reached the dataset and was refused as an empty mask of the split)
        raise MaskError(f"--classes is empty ({classes!r}): give the class ids to keep, e.g. "
                        "'0,3,10-19'")
    if Path(out).is_dir():
        raise MaskError(f"--out {out} is a folder; give the mask file's name, e.g. {Path(out) / 'keep.npy'}")
    check_mask_name(out, "--out")  # (m.txt wrote m.txt.npy and m.txt.json)
    _outside_the_dataset(Path(out))
    check_out_dir(Path(out).parent, "--out's folder")
    manifest = load_manifest(data)
    shown = _outside(ranges, manifest.num_classes)  # ids are >= 0: "-" only separates
    if shown:  # never clamp silently: 0-999 on 32 classes is a typo or the wrong dataset
        raise MaskError(f"--classes: {shown} outside the {count(manifest.num_classes, 'class')} "
                        f"of {manifest.root} ({class_ids(manifest.num_classes)}); `dp4tl info "
                        f"--data {manifest.root} --classes` lists them")
    ids = [i for lo, hi in ranges for i in range(lo, hi + 1)]  # each range within the classes
    info = manifest.split(split)
    mask = mask_from_classes(info, ids, method="classes")
    clash = mask_conflict(out, mask)  # never another mask (a prune's train.npy), nor a user's file
    if clash is not None:
        npy, side = mask_files(out)
        where = f"--out {out}" + ("" if clash[0] == Path(out) else f": {clash[0]}")
        raise MaskError(f"{where} holds {clash[1]}; pass another --out for "
                        f"{describe_mask(mask.meta)} (or delete {npy} and {side} to replace it)")
    path = save_mask(out, mask)
    typer.echo(f"{path}: {len(mask)} of {info.num_samples} samples of {split!r} "
               f"({100 * mask.kept_fraction:.1f} %)")


def _outside_the_dataset(out: Path) -> None:
    """A file these commands write never lands in a built dataset (the one they read or
    another): --out DATA/train.labels.npy replaced the build's labels, DATA/manifest.npy its
    manifest (the sidecar), DATA/train.files.txt its files list (review). The rule is
    :func:`~ffcv_dp4tl.outputs.dataset_around`, as for every command's --out folder."""
    from ..outputs import dataset_around

    inside = dataset_around(out)
    if inside is not None:
        raise MaskError(f"--out {out} lies inside the dataset {inside}, whose own files it could "
                        "replace; write it elsewhere (e.g. beside the dataset)")


@mask_app.command("check")
def check_cmd(
    mask: Path = typer.Argument(..., help="Mask .npy file"),
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    split: Optional[str] = typer.Option(None, help="Split (default: the one named in the mask)",
                                        callback=not_blank_callback),
) -> None:
    """Validate a mask against a dataset: range, order, duplicates, fingerprint, and the
    classes its sidecar records against the labels of its samples."""
    from ..data.manifest import load_manifest
    from ..data.masks import check_recorded_classes, load_mask

    dataset = data
    m = load_mask(mask)
    info = load_manifest(dataset).split(split or m.meta.get("split", "train"))
    check_recorded_classes(load_mask(mask, info, split_option=True), info, mask)
    typer.echo(f"{mask}: OK — {len(m)} of {info.num_samples} samples of {info.name!r}")


@mask_app.command("files")
def files_cmd(
    mask: Path = typer.Argument(..., help="Mask .npy file"),
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    split: Optional[str] = typer.Option(None, help="Split (default: the one named in the mask)",
                                        callback=not_blank_callback),
    pruned: bool = typer.Option(False, "--pruned", help="List the samples the mask removes "
                                "instead of those it keeps"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the list to this file "
                                       "(default: print it)", show_default=False),
) -> None:
    """Where the kept samples came from: their input files, one per line in sample order
    (the build's SPLIT.files.txt), for tools that read a file list."""
    import numpy as np

    from ..contracts.names import printable
    from ..data.manifest import load_manifest
    from ..data.masks import load_mask
    from ..fsutil import atomic_write_text, check_out_dir

    if out is not None:
        if out.is_dir():
            raise MaskError(f"--out {out} is a folder; give the list's file name, e.g. "
                            f"{out / 'kept.txt'}")
        _outside_the_dataset(out)
        check_out_dir(out.parent, "--out's folder")
    dataset = data
    m = load_mask(mask)
    info = load_manifest(dataset).split(split or m.meta.get("split", "train"))
    load_mask(mask, info, split_option=True)  # made for this split of this dataset (fingerprint), indices in range
    origins = info.load_origins()
    kept = np.zeros(info.num_samples, dtype=bool)
    kept[m.indices] = True
    chosen = np.flatnonzero(~kept if pruned else kept)
    # a person reads a terminal, which must not act on a file name's escape sequence: names
    # shown printable there; a pipe and --out get the paths as stored
    shown = printable if out is None and sys.stdout.isatty() else str
    text = "".join(f"{shown(origins[i])}\n" for i in chosen)
    what = "removed" if pruned else "kept"
    if out is None:
        # in pieces of a pipe's buffer: one write of the whole list into a pipe whose reader left
        # mid-way (`| head`) ended with exit 0 and the list cut without a sign; a piece after it
        # meets EPIPE, so the command ends as a shell reports a piped tool the reader stopped
        # (141; review)
        for start in range(0, len(text), 1 << 16):
            typer.echo(text[start:start + (1 << 16)], nl=False)
        return
    if out.exists() and not out.is_file():  # (/dev/null, a folder: never advised to delete it)
        raise MaskError(f"--out {out} is not a regular file; pass a file path, or leave --out "
                        "out to print the list (`> FILE` to keep it)")
    if out.exists() and not _holds(out, text.encode("utf-8")):
        raise MaskError(f"--out {out} already exists and holds something else than this list of "
                        f"{what} files; pass another --out (or delete {out} to replace it)")
    atomic_write_text(out, text)
    typer.echo(f"{out}: the {len(chosen)} {what} of {info.num_samples} samples of "
               f"{info.name!r}", err=True)


def _holds(path: Path, data: bytes) -> bool:
    """Whether ``path`` holds exactly ``data``: the list an identical earlier run wrote, the only
    file `mask files --out` replaces (a typo once replaced a trained checkpoint.pt with a list
    of files). Read only when the sizes agree."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:  # (unreadable: not known to be ours)
        return False


@mask_app.command("overlap")
def overlap_cmd(
    mask: Path = typer.Argument(..., help="Mask .npy file (selection A)"),
    reference: Path = typer.Argument(..., help="Reference mask .npy file (selection B, e.g. the "
                                     "default ResNet-18 surrogate's)"),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP + "; needed only when a "
                                        "mask does not record its kept classes (cluster/sample "
                                        "masks)", show_default=False),
    json_: bool = typer.Option(False, "--json", help="Print the numbers as JSON"),
) -> None:
    """Overlap of two selections, |A ∩ B| / |B| with B the reference (paper Tab. A6): of kept
    classes and of kept samples."""
    import json

    from ..pipeline.compare import compare_mask_files

    res = compare_mask_files(mask, reference, data)
    if json_:
        typer.echo(json.dumps({k: v.to_json() for k, v in res.items()}, indent=2))
        return
    a, b = _telling_names(mask, reference)
    for what, o in res.items():
        typer.echo(f"{what}: {100 * o.share:.1f} % of the reference's {o.kept_ref} kept {what} "
                   f"(in {b}) are kept by {a} ({o.common} in common; it keeps {o.kept}; "
                   f"Jaccard {100 * o.jaccard:.1f} %)")


def _telling_names(a: Path, b: Path) -> tuple[str, str]:
    """The two paths as typed, each cut to its shortest ending that the other's differs from:
    ``runs/prune-A/train.npy`` and ``runs/prune-B/train.npy`` are ``prune-A/train.npy`` and
    ``prune-B/train.npy`` (the overlap named both by their file name, ``train.npy`` twice:
    docs audit). The same path given twice is named whole."""
    for n in range(1, max(len(a.parts), len(b.parts)) + 1):
        if a.parts[-n:] != b.parts[-n:]:
            return str(Path(*a.parts[-n:])), str(Path(*b.parts[-n:]))
    return str(a), str(b)
