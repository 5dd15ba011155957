"""``manifest.json``: what a built dataset directory contains.

The manifest is written last (atomically) by the builder, so a directory with a manifest is a
complete build. It records class names, per-split counts, the image settings and a content
fingerprint. Masks store the fingerprint of the split they index, so a mask can never be
silently applied to a different (or rebuilt) dataset.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..fsutil import read_json

MANIFEST_NAME = "manifest.json"
FORMAT = "ffcv-dp4tl/1"

#: Per-sample record of the WebDataset random-access index (``wds/SPLIT.index.npy``).
#: ``shard``: shard number; ``offset``/``size``: byte range of the ``.jpg`` member's data in the
#: tar; ``label``: class id; ``key``: the sample's ``__key__`` in the shard (source ordinal).
INDEX_DTYPE = np.dtype(
    [("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i8"), ("key", "<u8")]
)


def split_fingerprint(sample_digests: bytes, labels: np.ndarray, classes: list[str]) -> str:
    """Content fingerprint of one split: hash of every sample's JPEG digest and label, in order."""
    h = hashlib.sha256()
    h.update("\n".join(classes).encode())
    h.update(sample_digests)
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SplitInfo:
    name: str
    num_samples: int
    fingerprint: str
    beton: Path
    labels: Path
    index: Path
    shards: list[Path]

    def load_labels(self) -> np.ndarray:
        return np.load(self.labels, mmap_mode="r")

    def load_index(self) -> np.ndarray:
        return np.load(self.index)


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.data["classes"])

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def split_names(self) -> list[str]:
        return list(self.data["splits"])

    def split(self, name: str) -> SplitInfo:
        splits = self.data["splits"]
        if name not in splits:
            raise DataError(
                f"{self.root / MANIFEST_NAME} has no split {name!r}; available: {', '.join(splits)}"
            )
        s = splits[name]
        return SplitInfo(
            name=name,
            num_samples=int(s["num_samples"]),
            fingerprint=s["fingerprint"],
            beton=self.root / s["beton"],
            labels=self.root / s["labels"],
            index=self.root / s["index"],
            shards=[self.root / p for p in s["shards"]],
        )


def load_manifest(root: str | Path) -> Manifest:
    """Load ``root/manifest.json`` (``root`` may also be the manifest file itself)."""
    root = Path(root)
    if root.name == MANIFEST_NAME:
        root = root.parent
    path = root / MANIFEST_NAME
    if not path.exists():
        raise DataError(
            f"{root} is not a built dataset (no {MANIFEST_NAME}); build it with "
            f"`dp4tl build SOURCE --out {root}` or finish an interrupted build by rerunning it"
        )
    data = read_json(path, "manifest")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path} is not an ffcv-dp4tl manifest (format {data.get('format')!r}, "
                        f"expected {FORMAT!r}); rebuild the dataset")
    for key in ("classes", "splits", "fingerprint"):
        if key not in data:
            raise DataError(f"{path} lacks field {key!r}; rebuild the dataset")
    return Manifest(root=root, data=data)
