"""Tiny in-memory and on-disk datasets for the builder's tests (test_writer, test_repair,
test_out_dir): 40 structured 32x32 images in 3 classes, 5 shards of 8."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from beton_builders import BuildOptions, DatasetSpec, Sample

N = 40
CLASSES = ["ant", "bee", "cat"]
SHARD = 8  # -> 5 shards
OPTS = BuildOptions(max_side=32, quality=90, shard_size=SHARD, workers=1, progress=False)


def image(i: int, salt: int = 0) -> np.ndarray:
    """A 32x32 image with structure (gradient + blocks + noise), different for every i."""
    rng = np.random.default_rng([i, salt])
    y, x = np.mgrid[0:32, 0:32]
    img = np.stack([(x * 8 + i * 5) % 256, (y * 8 + i * 11) % 256, ((x // 8 + y // 8) * 40) % 256], -1)
    img = img + rng.integers(-10, 11, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def labels_of(n: int = N) -> np.ndarray:
    return (np.arange(n) * 7 // 3) % len(CLASSES)


def mem_spec(changed: int | None = None, n: int = N) -> DatasetSpec:
    labels = labels_of(n)
    samples = [Sample(image(i, salt=int(i == changed)), int(labels[i]), name=f"mem/{i:03d}")
               for i in range(n)]
    return DatasetSpec("tiny", list(CLASSES), {"train": samples})


def manifest_of(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def shards_of(d: Path, split: str = "train") -> list[Path]:
    return sorted((d / "wds").glob(f"{split}-*.tar"))


def file_spec(folder: Path, salt: int = 0) -> DatasetSpec:
    """``mem_spec``'s images as PNG files (what a folder layout lists): same names, ``salt`` other
    pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels_of()
    samples = []
    for i in range(N):
        path = folder / f"{i:03d}.png"
        Image.fromarray(image(i, salt)).save(path)
        samples.append(Sample(str(path), int(labels[i])))
    return DatasetSpec("tiny", list(CLASSES), {"train": samples})


def verify_ok(out: Path) -> bool:
    from ffcv_dp4tl.data.verify import verify_dataset

    return verify_dataset(out).ok
