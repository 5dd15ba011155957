"""Masked, random-access loading of WebDataset shards.

The builder's ``wds/SPLIT.index.npy`` gives each sample's shard and byte range, so a masked
epoch seeks straight to the kept JPEGs: the bytes read scale with the mask, not with the
dataset. Decoding runs in torch DataLoader worker processes (PIL), one whole batch per worker
task, and the sampler hands each worker ``(sample indices, resolution, aug seed)`` so
progressive resizing and per-epoch seeds need no state shared with workers.
"""
from __future__ import annotations

import io
import re
import os
import weakref
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from .manifest import SplitInfo
from .interface import PlanLoaderBase
from .sampling import Batch, EpochPlan
from .transforms import AugSpec, Normalize, crop_draws, crop_resize


class ShardReader:
    """Read one sample's JPEG bytes by index; file handles are opened lazily per process."""

    def __init__(self, split: SplitInfo):
        self.split = split.name
        self.root = split.root
        self.index = split.load_index()
        self.paths = [str(p) for p in split.shards]
        self._files: dict[int, object] = {}
        self._pid = None

    def read(self, i: int) -> tuple[bytes, int]:
        if self._pid != os.getpid():  # fresh handles after fork
            self._files, self._pid = {}, os.getpid()
        rec = self.index[i]
        s = int(rec["shard"])
        f = self._files.get(s)
        if f is None:
            f = self._files[s] = open(self.paths[s], "rb", buffering=0)
        f.seek(int(rec["offset"]))
        data = f.read(int(rec["size"]))
        if len(data) != int(rec["size"]):
            raise SampleError(self.where(i, f"truncated ({len(data)} of {int(rec['size'])} bytes)"))
        return data, int(rec["label"])

    def where(self, i: int, what: str) -> str:
        """One line naming the split, sample, shard file and byte offset, with the advice."""
        rec = self.index[i]
        return (f"split {self.split!r} sample {i}: {what} in {self.paths[int(rec['shard'])]} at "
                f"byte offset {int(rec['offset'])} ({int(rec['size'])} bytes); run `dp4tl verify "
                f"{self.root} --deep` to list every damaged sample, then rebuild the dataset")


class SampleError(DataError):
    """A sample's bytes could not be read or decoded (the message names sample and file)."""


class _Failed:
    """What a worker returns instead of raising: torch re-raises worker exceptions with the
    worker's traceback glued into the message; the loader raises this one line instead."""

    def __init__(self, message: str):
        self.message = message


class _MaskedShardDataset(Dataset):
    """What a worker does: one whole batch per item ``(sample indices, resolution, aug seed)``.

    Reads and decodes the batch's JPEGs (PIL, with a DCT downscale when they are much larger than
    the output), draws every crop and flip of the batch at once (:func:`crop_draws`, the rule
    the GPU-decode loader shares), resizes into one uint8 array and, when the loader's device is
    the CPU, normalises it here (``normalize``): the main process then only receives finished
    batches. Returns ``(images, labels, indices[, images2])`` or :class:`_Failed`."""

    def __init__(self, split: SplitInfo, aug: AugSpec, normalize: Normalize | None):
        self.reader = ShardReader(split)
        self.aug = aug
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.reader.index)

    def __getitem__(self, item: tuple[np.ndarray, int, int]):
        try:
            return self._batch(*item)
        except SampleError as e:
            return _Failed(str(e))

    def _open(self, i: int, resolution: int) -> tuple[Image.Image, int]:
        data, label = self.reader.read(i)
        try:
            img = Image.open(io.BytesIO(data))
            img.draft("RGB", (resolution, resolution))  # DCT downscale when the JPEG is much larger
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
            raise SampleError(self._cannot_decode(i, e)) from None
        return img, label

    def _cannot_decode(self, i: int, e: Exception) -> str:
        msg = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "",
                     str(e).splitlines()[0] if str(e) else "")
        return self.reader.where(i, f"cannot decode the JPEG ({type(e).__name__}: {msg})")

    def _batch(self, indices: np.ndarray, resolution: int, eseed: int):
        aug, n = self.aug, len(indices)
        opened = [self._open(int(i), resolution) for i in indices]
        hw = np.array([(img.height, img.width) for img, _ in opened], np.int64).reshape(n, 2)
        draws = crop_draws(hw, indices, eseed=eseed, aug=aug)
        out = np.empty((len(draws), n, resolution, resolution, 3), np.uint8)
        for k, (i, (img, _)) in enumerate(zip(indices.tolist(), opened)):
            try:
                img = img.convert("RGB")  # decodes: a damaged JPEG raises here
            except Exception as e:  # noqa: BLE001
                raise SampleError(self._cannot_decode(i, e)) from None
            for v, (boxes, flips) in enumerate(draws):
                out[v, k] = crop_resize(img, tuple(boxes[k].tolist()), resolution,
                                        flip=bool(flips[k]))
        views = [torch.from_numpy(x) for x in out]
        if self.normalize is not None:
            views = [self.normalize(x) for x in views]
        labels = torch.tensor([label for _, label in opened], dtype=torch.int64)
        return (views[0], labels, torch.from_numpy(np.asarray(indices, np.int64)), *views[1:])


class _PlanSampler(Sampler):
    """One item per batch of the epoch: ``(sample indices, resolution, aug seed)``, the plan's
    order cut into ``batch_size`` pieces (the last one dropped or short per ``drop_last``).

    Reads epoch/resolution from its loader through a weak reference: a strong one would make
    loader -> DataLoader -> sampler -> loader a cycle, freed only by the cyclic GC, whose
    teardown of persistent workers then stalls ~5 s (torch's worker join timeout) per loader."""

    def __init__(self, loader: "WdsMaskedLoader"):
        self._loader = weakref.ref(loader)

    @property
    def loader(self) -> "WdsMaskedLoader":
        return self._loader()

    def __len__(self) -> int:
        ld = self.loader
        return ld.plan.num_batches(ld.batch_size, ld.drop_last)

    def __iter__(self):
        # Read the epoch's settings up front: a paused generator must not hold the loader either.
        ld = self.loader
        order, resolution = ld.plan.order(ld.epoch), ld.resolution
        eseed, b, drop_last = ld.plan.aug_seed(ld.epoch), ld.batch_size, ld.drop_last
        del ld
        n = len(order) - (len(order) % b if drop_last else 0)
        for start in range(0, n, b):
            yield np.asarray(order[start:min(start + b, n)], np.int64), resolution, eseed


def _as_is(item):
    return item


class WdsMaskedLoader(PlanLoaderBase):
    """Iterate :class:`Batch` es of the masked samples of one split's shards.

    Each DataLoader worker builds whole batches (decode, crop, and on a CPU device the
    normalisation), so the training process does no per-image or per-pixel work: on a 2-core
    machine that work used to compete with the workers (issue 21). On CUDA the uint8 batch is
    sent (pinned) and normalised on the device, which moves 4x fewer bytes."""

    def __init__(self, split: SplitInfo, plan: EpochPlan, *, batch_size: int,
                 resolution: int, aug: AugSpec, device: str | torch.device = "cpu",
                 num_workers: int = 2, drop_last: bool | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False):
        """``aug`` says how images are cropped and flipped."""
        aug = aug.validate()
        self.aug = aug
        self.plan = plan
        self.batch_size = batch_size
        self.resolution = resolution
        self.device = torch.device(device)
        self.drop_last = aug.train if drop_last is None else drop_last
        self.epoch = 0
        self.normalize = Normalize(dtype, channels_last).to(self.device)
        on_cpu = self.device.type == "cpu"
        #: the workers normalise (CPU device); else the device does, after the uint8 copy
        self.normalize_in_workers = on_cpu
        self.dataset = _MaskedShardDataset(split, aug, Normalize(dtype, channels_last)
                                           if on_cpu else None)
        self.dataloader = DataLoader(
            self.dataset, sampler=_PlanSampler(self), batch_size=None, collate_fn=_as_is,
            num_workers=num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
            prefetch_factor=2 if num_workers > 0 else None,  # batches in flight per worker
        )

    def __iter__(self) -> Iterator[Batch]:
        nb = self.device.type == "cuda"
        for out in self.dataloader:
            if isinstance(out, _Failed):
                raise SampleError(out.message)
            images, labels, idx, *rest = out
            views = [images, *rest]
            if not self.normalize_in_workers:
                views = [self.normalize(v.to(self.device, non_blocking=nb)) for v in views]
            yield Batch(views[0], labels.to(self.device, non_blocking=nb), idx,
                        views[1] if len(views) > 1 else None)
        self.epoch += 1
