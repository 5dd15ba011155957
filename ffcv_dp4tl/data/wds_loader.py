"""Masked, random-access loading of WebDataset shards.

The builder's ``wds/SPLIT.index.npy`` gives each sample's shard and byte range, so a masked
epoch seeks straight to the kept JPEGs: the bytes read scale with the mask, not with the
dataset. Decoding runs in torch DataLoader worker processes (PIL), and the sampler hands each
worker ``(sample index, resolution, seed)`` so progressive resizing and per-epoch seeds need
no state shared with workers.
"""
from __future__ import annotations

import io
import re
import os
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from .manifest import SplitInfo
from .interface import PlanLoaderBase
from .sampling import Batch, EpochPlan
from .transforms import AugSpec, Normalize, center_crop_box, crop_resize, random_crop_box


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
    def __init__(self, split: SplitInfo, aug: AugSpec):
        self.reader = ShardReader(split)
        self.aug = aug

    def __len__(self) -> int:
        return len(self.reader.index)

    def __getitem__(self, item: tuple[int, int, int]):
        i = item[0]
        try:
            return self._get(*item)
        except SampleError as e:
            return _Failed(str(e))
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
            msg = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e).splitlines()[0] if str(e) else "")
            return _Failed(self.reader.where(i, f"cannot decode the JPEG ({type(e).__name__}: {msg})"))

    def _get(self, i: int, resolution: int, seed: int):
        data, label = self.reader.read(i)
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (resolution, resolution))  # DCT downscale when the JPEG is much larger
        img = img.convert("RGB")  # decodes: a damaged JPEG raises here
        w, h = img.size
        aug = self.aug
        if not aug.train:
            arr = crop_resize(img, center_crop_box(h, w, aug.center_crop_ratio), resolution)
            return torch.from_numpy(np.array(arr)), label, i
        rng = np.random.default_rng([seed, i])  # views are successive draws of one stream
        # the flip coin is drawn even when flips are off, so crops do not depend on ``flip``
        crops = [torch.from_numpy(np.array(crop_resize(
            img, random_crop_box(h, w, rng, scale=aug.crop_scale, ratio=aug.crop_ratio),
            resolution, flip=(rng.random() < 0.5) and aug.flip))) for _ in range(aug.views)]
        return (crops[0], label, i, *crops[1:])


#: Images per worker task. Workers decode chunks, not whole batches, and the loader joins the
#: chunks of a batch: a worker holding a whole batch made every epoch start with one batch of
#: latency and end with workers idling on the last batch, a fixed cost per epoch that weighed
#: 1.17-1.28x on a masked epoch's fewer batches (issue 12). Chunks bound it to ~one chunk.
CHUNK = 32


class _PlanSampler(Sampler):
    """Batch sampler: each epoch's batches (``batch_size`` samples of the plan's order, the last
    one dropped or short per ``drop_last``), each cut into chunks of at most :data:`CHUNK`
    samples; a chunk is a list of ``(sample index, resolution, seed)``.

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
        n, b = ld.plan.samples_per_epoch(), ld.batch_size
        full, rest = divmod(n, b)
        chunks = full * -(-b // ld.chunk)
        return chunks + (0 if ld.drop_last or not rest else -(-rest // ld.chunk))

    def __iter__(self):
        # Read the epoch's settings up front: a paused generator must not hold the loader either.
        ld = self.loader
        order, resolution = ld.plan.order(ld.epoch), ld.resolution
        seed = int(np.random.default_rng([ld.plan.seed, ld.epoch, 7]).integers(2**31))
        b, chunk, drop_last = ld.batch_size, ld.chunk, ld.drop_last
        del ld
        n = len(order) - (len(order) % b if drop_last else 0)
        order = order[:n].tolist()
        for start in range(0, n, b):
            batch = order[start:start + b]
            for c in range(0, len(batch), chunk):
                yield [(i, resolution, seed) for i in batch[c:c + chunk]]


def _collate(items):
    failed = next((it for it in items if isinstance(it, _Failed)), None)
    if failed is not None:
        return failed
    images, labels, idx, *rest = zip(*items)
    out = (torch.stack(images), torch.tensor(labels, dtype=torch.int64),
           torch.tensor(idx, dtype=torch.int64))
    return out + (torch.stack(rest[0]),) if rest else out


class WdsMaskedLoader(PlanLoaderBase):
    """Iterate :class:`Batch` es of the masked samples of one split's shards."""

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
        self.chunk = max(1, min(CHUNK, batch_size))
        self.dataset = _MaskedShardDataset(split, aug)
        self.normalize = Normalize(dtype, channels_last).to(self.device)
        chunks_per_batch = -(-batch_size // self.chunk)
        self.dataloader = DataLoader(
            self.dataset, batch_sampler=_PlanSampler(self),
            num_workers=num_workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
            # in flight per worker: about two batches' worth of chunks, as before (4 batches)
            prefetch_factor=max(4, 2 * chunks_per_batch) if num_workers > 0 else None,
        )

    def __iter__(self) -> Iterator[Batch]:
        non_blocking = self.device.type == "cuda"
        for images, labels, idx, *rest in self._batches():
            images = images.to(self.device, non_blocking=non_blocking)
            second = (self.normalize(rest[0].to(self.device, non_blocking=non_blocking))
                      if rest else None)
            yield Batch(self.normalize(images), labels.to(self.device, non_blocking=non_blocking),
                        idx, second)
        self.epoch += 1

    def _batches(self):
        """Join the workers' chunks back into the epoch's batches (chunks arrive in order)."""
        n = self.plan.samples_per_epoch()
        sizes = [self.batch_size] * (n // self.batch_size)
        if n % self.batch_size and not self.drop_last:
            sizes.append(n % self.batch_size)
        pending, have, k = [], 0, 0
        for chunk in self.dataloader:
            if isinstance(chunk, _Failed):
                raise SampleError(chunk.message)
            pending.append(chunk)
            have += len(chunk[1])
            if have == sizes[k]:
                yield (pending[0] if len(pending) == 1
                       else tuple(torch.cat(parts) for parts in zip(*pending)))
                pending, have, k = [], 0, k + 1
