"""Parse a ``dp4tl build`` SOURCE string into the datasets it describes.

``synth[:preset,key=value...]``  the embedded generated data: ``source`` + ``targets/<name>``
``LAYOUT:PATH``                  a dataset on disk in a published layout (see ``LAYOUTS``)
"""
from __future__ import annotations

from pathlib import Path

from ffcv_dp4tl.contracts import TargetSplit
from ffcv_dp4tl.errors import DataError

from .layouts import LAYOUTS, read_layout
from .spec import DatasetSpec


def layout_names() -> str:
    """The layouts a ``LAYOUT:PATH`` SOURCE may name, as help and errors list them: the keys of
    :data:`~.layouts.LAYOUTS`, so a layout added there is listed everywhere (``dp4tl build
    --help`` listed a copy, which a new layout missed; docs audit)."""
    return ", ".join(sorted(LAYOUTS))


def source_help() -> str:
    return f"synth[:PRESET,...] or LAYOUT:PATH, LAYOUT one of {layout_names()}"


def default_max_side(spec: DatasetSpec) -> int:
    """Stored image size when the user gives none: synth keeps its rendered size, else 256."""
    return int(spec.extra.get("synth_config", {}).get("image_size", 256))


def resolve_source(text: str, split_json: str | Path | None = None,
                   split: str = "auto") -> dict[str, DatasetSpec]:
    """Map output subdirectory ('' = the --out dir itself) → dataset spec.

    ``split``: ``auto`` uses the layout's CoOp split JSON when it lies beside the data (the
    paper's Tab. A1 splits; :func:`~.layouts.coop.find_split_json`), else the official splits;
    ``coop`` requires that JSON; ``official`` never uses one. An explicit ``split_json`` wins
    over all three. The spec's ``extra["split"]`` says which was used (see :func:`split_note`)."""
    split = TargetSplit.check(split, "split", DataError)
    text = text.strip()
    if text == "synth" or text.startswith("synth:"):
        if split_json:
            raise DataError("--split-json does not apply to synth data")
        if split == "coop":  # ("coop" means require it: ignoring it would build other splits)
            raise DataError("--split coop: synth data has no CoOp split (the generator makes its "
                            "own splits); drop --split")
        from .synth import parse_synth, synth_all

        return dict(synth_all(parse_synth(text)))
    name, sep, path = text.partition(":")
    if not sep or not path:
        where = Path(text).expanduser()
        said = ("is a folder but names no layout: write LAYOUT:PATH, e.g. folder:" + text if
                where.is_dir() and text else "is no such folder" if not where.exists() and text
                else "is no SOURCE")
        raise DataError(f"SOURCE {text!r} {said}; SOURCE must look like {source_help()}")
    if name not in LAYOUTS:
        raise DataError(f"unknown SOURCE kind {name!r}; choose one of: synth, {layout_names()}")
    root = Path(path).expanduser()
    chosen = split_json
    if chosen is None and split != "official":
        from .layouts.coop import COOP_FILES, find_split_json

        chosen = find_split_json(name, root) if root.is_dir() else None
        if chosen is None and split == "coop":
            raise DataError(f"--split coop: no {COOP_FILES.get(name, 'CoOp split JSON')} in "
                            f"{root}, its parent or the dataset folder in it" if name in COOP_FILES else
                            f"--split coop: the {name} layout has no CoOp split")
    spec = read_layout(name, root, chosen)
    spec.extra["split"] = (f"coop ({chosen})" if chosen is not None and split_json is None
                           else f"json ({chosen})" if chosen is not None else "official")
    return {"": spec}


def layout_path(text: str) -> tuple[str, str] | None:
    """``(LAYOUT, PATH)`` of a ``LAYOUT:PATH`` SOURCE of a known layout; None for anything else
    (synth, a folder, an unknown kind, a folder name holding a ``:``). The pipeline reads the
    form by it: to record PATH absolute, and to tell two spellings of one input apart."""
    name, sep, path = text.partition(":")
    return (name, path) if sep and path and name in LAYOUTS else None


def split_note(spec: DatasetSpec) -> str:
    """One line saying which split a build used (for ``dp4tl build`` and the pipeline's log)."""
    how = spec.extra.get("split")
    if how is None:
        return ""
    if how.startswith("coop"):
        return (f"splits: CoOp split JSON found beside the data, {how[6:-1]} (the paper's Tab. A1 "
                "sizes); `--split official` for the official splits")
    if how.startswith("json"):
        return f"splits: from --split-json {how[6:-1]}"
    return "splits: the dataset's official splits"
