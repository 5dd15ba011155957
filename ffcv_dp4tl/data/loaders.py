"""One entry point for masked loading from either file format."""
from __future__ import annotations

import contextlib
import contextvars
import numbers
import weakref
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

from ..contracts import Decode, Format, check_device, check_seeds
from ..errors import DataError
from .ffcv_loader import FFCVMaskedLoader
from .gpu_decode import DeviceDecodeLoader, device_decode_available
from .interface import MaskedLoader
from .manifest import load_manifest
from .masks import IndexMask, full_mask, load_mask, validate_mask
from .resources import available_cores, effective_workers, raise_open_files_limit
from .sampling import EpochPlan, check_resolution, check_size, dist_info
from .transforms import AugSpec
from .wds_loader import WdsMaskedLoader

__all__ = ["AugSpec", "MaskedLoader", "make_loader", "resolve_decode"]


#: CPU cores per GPU below which ``decode="auto"`` decodes on the GPU. Measured on the H100
#: host (BENCHMARKS.md, GPU check): ffcv's CPU decode gave ~1,230 img/s per core (19.7k img/s on
#: 16 cores, 160 px crops) and the batched nvJPEG path ~9.8k img/s, so the GPU only pays off
#: with fewer than ~8 cores feeding each GPU. The H200 host (2026-12-04, 256 px q90 JPEGs) is a
#: data point against it: at 16 cores nvJPEG fed 11.4k img/s and CPU decode 9.8k (~600 img/s per
#: worker). Kept until the GPU check's scaling rows say why that host's rate per worker was low
#: (docs/gpu.md); ``data.decode=gpu`` chooses the GPU there.
AUTO_GPU_DECODE_MAX_CORES = 8


def _cores_per_gpu() -> float:
    return available_cores() / max(1, torch.cuda.device_count())


def resolve_decode(decode: str, device: str | torch.device) -> str:
    """``"auto"`` → ``"gpu"`` when ``device`` is CUDA, torchvision decodes JPEGs there and fewer
    than :data:`AUTO_GPU_DECODE_MAX_CORES` CPU cores feed each GPU; else ``"cpu"``."""
    if decode != "auto":
        return decode
    dev = torch.device(device)
    if dev.type != "cuda" or _cores_per_gpu() >= AUTO_GPU_DECODE_MAX_CORES:
        return "cpu"
    return "gpu" if device_decode_available(str(dev)) else "cpu"


def make_loader(
    dataset_dir: str | Path,
    split: str,
    *,
    fmt: Literal["ffcv", "wds"] = "ffcv",
    mask: IndexMask | str | Path | None = None,
    aug: AugSpec,
    batch_size: int,
    resolution: int,
    device: str | torch.device = "cpu",
    num_workers: int = 2,
    seed: int = 0,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    even: bool | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    decode: Literal["cpu", "gpu", "auto"] = "cpu",
    deterministic: bool = False,
    scaled_decode: bool = False,
) -> MaskedLoader:
    """Loader over the samples of ``split`` kept by ``mask`` (all samples if None).

    ``mask`` is an :class:`IndexMask` (``make_mask(indices, split_info)``,
    ``mask_from_classes``) or the path of a saved one; a bare index array or list is refused
    (a mask records which dataset its indices belong to). ``batch_size`` and ``resolution``
    are positive integers, ``dtype`` a floating dtype, ``device`` auto, cpu, cuda or cuda:N.

    Reads only masked samples. ``aug`` (:class:`AugSpec`) says what is done to each image:
    train (``AugSpec.for_train()``): random-resized crop + flip at ``resolution`` (change it
    per epoch with ``set_epoch(epoch, resolution)``); eval (``AugSpec.for_eval()``): center
    crop. A train spec also makes ``shuffle``, ``drop_last`` and ``even`` default to True. Under
    torchrun (or with explicit ``rank``/``world_size``, given together) each rank gets a disjoint
    part of the mask each epoch; with ``even`` every rank gets the same number of samples (the
    epoch's last ``n mod world_size`` are left out that epoch), so DDP ranks take the same steps.

    ``AugSpec(views=2)`` (train only) adds ``Batch.images2``: a second random crop + flip of
    every sample, drawn independently, for two-view self-supervised training; ``crop_scale``
    is the random-resized-crop area range (MoCo v2 uses (0.2, 1)).

    ``decode`` says where JPEGs are decoded: ``"cpu"`` (ffcv's / PIL's decoders in worker
    processes), ``"gpu"`` (:class:`DeviceDecodeLoader`: bytes read from the beton for
    ``fmt="ffcv"`` or the shards for ``fmt="wds"``, decoded and augmented in batches on
    ``device``; see docs/gpu.md) or ``"auto"`` (see :func:`resolve_decode`). Every choice
    visits the same samples in the same order.

    ``deterministic`` (recipes: ``[data] deterministic = true``) makes ffcv's random crops and
    flips a function of (seed, epoch, sample), so two runs give identical batches (ffcv's own
    augmentations draw from numba's per-thread generator, which Python cannot seed). The
    WebDataset loader is deterministic already (augmentation seeded per (seed, epoch, sample)).

    ``scaled_decode`` (ffcv train loaders): draw each crop first and decode the JPEG at the
    smallest DCT scale that still covers the output (libjpeg-turbo), flipping in the decoder;
    a CPU speed-up for images much larger than the output, at a bounded pixel difference
    (``ffcv_compile.ScaledRandomResizedCrop``). Off by default.
    """
    if fmt not in Format.values():
        raise DataError(f"unknown loader format {fmt!r}; choose one of {', '.join(Format.values())}")
    if decode not in Decode.values():
        raise DataError(f"unknown decode {decode!r}; choose one of {', '.join(Decode.values())}")
    batch_size = check_size(batch_size, "batch_size")
    resolution = check_resolution(resolution, "resolution")
    if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise DataError(f"num_workers must be an integer >= 0 (0 = load in this process), got "
                        f"{num_workers!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise DataError(f"dtype={dtype!r}: images are normalised floats; use a floating dtype "
                        "(torch.float32, torch.float16 or torch.bfloat16)")
    seed = check_seeds([seed], "seed", DataError)[0]
    device = torch.device(check_device(device))  # auto: cuda when visible, else cpu
    aug = aug.validate()
    raise_open_files_limit()
    manifest = load_manifest(dataset_dir)
    info = manifest.split(split)
    if mask is None:
        mask = full_mask(info)
    elif isinstance(mask, IndexMask):
        validate_mask(mask, info)
    else:  # a saved mask's path (anything else is refused there, pointing to make_mask)
        mask = load_mask(mask, info)
    r, w = dist_info(rank, world_size)
    plan = EpochPlan(np.asarray(mask.indices, dtype=np.int64),
                     shuffle=aug.train if shuffle is None else shuffle, seed=seed, rank=r,
                     world_size=w, even=aug.train if even is None else even)
    common = dict(batch_size=batch_size, aug=aug, resolution=resolution, device=device,
                  num_workers=effective_workers(num_workers, "num_workers"),
                  drop_last=drop_last, dtype=dtype,
                  channels_last=channels_last)
    decode = resolve_decode(decode, device)
    info.check_files(fmt)  # size + header checksums of the files about to be read
    info.load_labels()  # the labels a batch carries: the build's, each a class of the manifest's
    if decode == "gpu":
        loader: MaskedLoader = DeviceDecodeLoader(info, plan, source=fmt, **common)
    elif fmt == "ffcv":
        if not info.beton.exists():
            raise DataError(f"{info.beton} is missing; rebuild {dataset_dir}")
        loader = FFCVMaskedLoader(info.beton, plan, deterministic=deterministic, split=split,
                                  scaled_decode=scaled_decode, **common)
    else:
        loader = WdsMaskedLoader(info, plan, **common)
    opened = _OPENED.get()
    if opened is not None:
        opened.append(weakref.ref(loader))
    return loader


#: the loaders made within the innermost :func:`closing_loaders` block (weak: one a run drops
#: is not kept alive until the block ends), or None outside any
_OPENED: contextvars.ContextVar[list | None] = contextvars.ContextVar("dp4tl_loaders", default=None)


@contextlib.contextmanager
def closing_loaders() -> Iterator[None]:
    """Close every loader :func:`make_loader` makes within the block when the block ends, as it
    ends: ``train``, ``finetune`` and ``score`` run in one (``process_state``), and so do the
    corruption and flatness evaluations. A failed call
    kept its loaders, their worker processes, threads and files, for as long as its traceback
    was kept (a notebook keeps the last one: four WebDataset workers and 26 files after a
    failed ``train``; a leak audit)."""
    opened: list = []
    token = _OPENED.set(opened)
    try:
        yield
    finally:
        _OPENED.reset(token)
        for ref in reversed(opened):
            loader = ref()
            if loader is not None:
                with contextlib.suppress(Exception):  # (closing must not hide the block's error)
                    loader.close()
