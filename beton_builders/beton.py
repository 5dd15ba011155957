"""Write an FFCV ``.beton`` holding exactly the JPEG bytes of the WebDataset shards.

Stock ``RGBImageField.encode`` only accepts pixel arrays and would decode and re-encode every
image (a second lossy step, and betons that disagree with the shards). We keep the stock field
class (so the file's header says ``RGBImageField`` and stock ffcv reads it) and give the field
*instance* an ``encode`` that stores our already-encoded bytes in JPEG mode. In ``proportion``
mode a deterministic, per-sample fraction is stored RAW (decoded pixels of the same JPEG),
trading disk for decode time, as ffcv's own proportion mode does.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ffcv_dp4tl.contracts import INDEX_DTYPE


@dataclass(frozen=True)
class JPEGBytes:
    """Already-encoded image passed through the ffcv writer untouched."""

    data: np.ndarray  # uint8, 1-D
    height: int
    width: int


def _encode(field, destination, image, malloc) -> None:  # bound to a field instance
    if isinstance(image, JPEGBytes):
        from ffcv.fields.rgb_image import IMAGE_MODES

        destination["mode"] = IMAGE_MODES["jpg"]
        destination["height"], destination["width"] = image.height, image.width
        destination["data_ptr"], storage = malloc(image.data.nbytes)
        storage[:] = image.data
        return
    type(field).encode(field, destination, image, malloc)  # raw pixels, stock path


def keep_as_jpeg(sample_index: int, raw_fraction: float) -> bool:
    """Deterministic per-sample choice for ``proportion`` mode (same build → same beton)."""
    if raw_fraction <= 0:
        return True
    digest = hashlib.blake2b(int(sample_index).to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 >= raw_fraction


class ShardBytesDataset:
    """Indexable view of the shards for ``DatasetWriter.from_indexed_dataset``."""

    def __init__(self, index: np.ndarray, shard_paths: list[Path], heights, widths,
                 raw_fraction: float):
        assert index.dtype == INDEX_DTYPE
        self.index = index
        self.shard_paths = [str(p) for p in shard_paths]
        self.heights = np.asarray(heights)
        self.widths = np.asarray(widths)
        self.raw_fraction = raw_fraction

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        rec = self.index[i]
        with open(self.shard_paths[rec["shard"]], "rb") as f:
            f.seek(int(rec["offset"]))
            data = np.frombuffer(f.read(int(rec["size"])), dtype=np.uint8)
        if keep_as_jpeg(i, self.raw_fraction):
            image = JPEGBytes(data, int(self.heights[i]), int(self.widths[i]))
        else:
            import cv2

            image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return image, int(rec["label"])


_PROGRESS_LOCK = threading.Lock()


@contextlib.contextmanager
def _ffcv_progress(enabled: bool) -> Iterator[None]:
    """Let ffcv's ``DatasetWriter`` draw its progress bar, or silence it for this block only.

    ffcv offers no switch for its bar: ``DatasetWriter._write_common`` always calls the module's
    ``tqdm(total=...)`` (ffcv 1.0.2 and upstream main: no constructor or method argument,
    and tqdm reads its ``TQDM_*`` environment overrides once, at import). So with progress off
    we patch ``ffcv.writer.tqdm`` for the duration of one write, under a lock (two concurrent
    writes in one process cannot interleave their patch/restore), and always restore it. With
    progress on nothing is touched.
    """
    if enabled:
        yield
        return
    import ffcv.writer
    from unittest import mock

    with _PROGRESS_LOCK, mock.patch.object(
            ffcv.writer, "tqdm", functools.partial(ffcv.writer.tqdm, disable=True)):
        yield


def write_beton(path: Path, dataset: ShardBytesDataset, quality: int, max_side: int,
                workers: int, progress: bool = True) -> None:
    """Write ``dataset`` to the beton at ``path`` (in place; the caller renames atomically)."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    image_field = RGBImageField(write_mode="raw", max_resolution=max_side, jpeg_quality=quality)
    # Supported per-instance hook: the field's class (and so the file's header) stays stock.
    image_field.encode = functools.partial(_encode, image_field)
    writer = DatasetWriter(str(path), {"image": image_field, "label": IntField()},
                           num_workers=max(1, workers))
    with _ffcv_progress(progress):
        writer.from_indexed_dataset(dataset, chunksize=64)
