"""Parse a ``dp4tl build`` SOURCE string into the datasets it describes.

``synth[:preset,key=value...]``  the embedded generated data: ``source`` + ``targets/<name>``
``LAYOUT:PATH``                  a dataset on disk in a published layout (see ``LAYOUTS``)
"""
from __future__ import annotations

from pathlib import Path

from ffcv_dp4tl.errors import DataError

from .layouts import LAYOUTS, read_layout
from .spec import DatasetSpec


def source_help() -> str:
    return "synth[:PRESET,...] or " + "|".join(sorted(LAYOUTS)) + ":PATH"


def default_max_side(spec: DatasetSpec) -> int:
    """Stored image size when the user gives none: synth keeps its rendered size, else 256."""
    return int(spec.extra.get("synth_config", {}).get("image_size", 256))


def resolve_source(text: str, split_json: str | Path | None = None) -> dict[str, DatasetSpec]:
    """Map output subdirectory ('' = the --out dir itself) → dataset spec."""
    text = text.strip()
    if text == "synth" or text.startswith("synth:"):
        if split_json:
            raise DataError("--split-json does not apply to synth data")
        from .synth import parse_synth, synth_all

        return dict(synth_all(parse_synth(text)))
    name, sep, path = text.partition(":")
    if not sep or not path:
        raise DataError(f"SOURCE {text!r} must look like {source_help()}")
    if name not in LAYOUTS:
        raise DataError(f"unknown SOURCE kind {name!r}; choose one of: synth, "
                        + ", ".join(sorted(LAYOUTS)))
    return {"": read_layout(name, Path(path).expanduser(), split_json)}
