"""One entry point for masked loading from either file format."""
from __future__ import annotations

import contextlib
import numbers
import os
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..contracts import Decode, Format, check_device, check_seeds
from ..errors import DataError
from .ffcv_loader import FFCVMaskedLoader
from .gpu_decode import DeviceDecodeLoader, device_decode_available
from .interface import MaskedLoader
from .manifest import load_manifest
from .masks import IndexMask, full_mask, load_mask, validate_mask
from .sampling import EpochPlan, check_size, dist_info
from .transforms import AugSpec
from .wds_loader import WdsMaskedLoader

__all__ = ["AugSpec", "MaskedLoader", "make_loader", "resolve_decode"]


#: CPU cores per GPU below which ``decode="auto"`` decodes on the GPU. Measured on the H100
#: host (BENCHMARKS.md, GPU check): ffcv's CPU decode gave ~1,230 img/s per core (19.7k img/s on
#: 16 cores, 160 px crops) and the batched nvJPEG path ~9.8k img/s, so the GPU only pays off
#: with fewer than ~8 cores feeding each GPU.
AUTO_GPU_DECODE_MAX_CORES = 8


def _cores_per_gpu() -> float:
    return available_cores() / max(1, torch.cuda.device_count())


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a Slurm or container limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_NOTED: set[tuple[int, int]] = set()


#: Environment variable that sets :func:`reserved_cores` (e.g. 0 to give the loader every core)
RESERVED_ENV = "DP4TL_RESERVED_CORES"


def reserved_cores(cores: int) -> int:
    """Cores kept free of loader workers for the training thread (and the CUDA launch / pin
    threads): none on up to 4 cores (a small CPU machine needs every core for the loader and
    trains on the same threads), 1 on 5-8 cores, 2 above (a GPU node: the first GPU check ran
    16 decode threads on 16 cores beside the training thread). ``$DP4TL_RESERVED_CORES`` sets
    the number instead (the GPU check measures 16 workers against 14 with it)."""
    text = os.environ.get(RESERVED_ENV, "").strip()
    if text:
        if not (text.isascii() and text.isdigit()):
            raise DataError(f"{RESERVED_ENV}={text!r}: give a number of cores >= 0 to keep free of "
                            "loader workers (or unset it for the default)")
        return min(int(text), max(cores - 1, 0))
    return 0 if cores <= 4 else 1 if cores <= 8 else 2


_LIMIT_RAISED = False


def raise_open_files_limit(cap: int = 1 << 20) -> None:
    """Raise this process's soft limit on open files to its hard limit (at most ``cap``), once.
    Loader workers keep shard files open (WebDataset: up to ``MAX_OPEN_SHARDS`` each; GPU
    decode: one per shard, 1,282 on ImageNet), and many systems start at a soft 1,024."""
    global _LIMIT_RAISED
    if _LIMIT_RAISED:
        return
    _LIMIT_RAISED = True
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        for want in (target, min(target, 10240)):  # (macOS: an unlimited hard limit, capped lower)
            with contextlib.suppress(ValueError, OSError):  # a sandbox may forbid it: keep it
                resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), hard))
                return


def local_ranks() -> int:
    """Processes torchrun started on this node (``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    text = os.environ.get("LOCAL_WORLD_SIZE", "1").strip()
    return max(1, int(text)) if text.isascii() and text.isdigit() else 1


def _launcher_cores() -> int:
    """Cores of the process that started this one (torchrun's agent holds the job's CPU set);
    the machine's when that cannot be read."""
    try:
        return len(os.sched_getaffinity(os.getppid()))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def ranks_sharing(cores: int, ranks: int) -> int:
    """How many of this node's ``ranks`` share this process's ``cores``, assuming the launcher's
    CPU set is split evenly: all of them when each sees the launcher's whole set (a node, or a
    Slurm / ``--cpuset-cpus`` job set), one when they were pinned to disjoint parts, four when 8
    ranks are bound to the 2 sockets of a node."""
    return max(1, min(ranks, round(ranks * cores / max(_launcher_cores(), cores))))


def loader_cores() -> int:
    """The cores loader workers may use: this process's (:func:`available_cores`), no more than
    numba's thread pool allows (ffcv's workers are numba threads). Under torchrun, ranks that
    were not pinned to their own cores share the node's: each gets its part (8 ranks with 12
    workers each on 64 cores ran 96 decode threads)."""
    cores = available_cores()
    ranks = local_ranks()
    if ranks > 1:
        cores = max(1, cores // ranks_sharing(cores, ranks))
    try:
        import numba

        cores = min(cores, int(numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba comes with ffcv
        pass
    return cores


def effective_workers(requested: int) -> int:
    """``min(requested, cores - reserved_cores(cores))``: more loader workers than cores only
    slows the loader and the training thread down, and ffcv's numba pool refuses more than the
    cores ("number of threads must be between 1 and N"). The full recipes ask for 8-12 workers
    (a GPU node); on a smaller machine they run with what it leaves, with a one-time note on
    stderr. (``0`` = in-process loading, kept.)"""
    cores = loader_cores()
    usable = max(1, cores - reserved_cores(cores))
    if requested <= usable:
        return requested
    if (requested, usable) not in _NOTED:
        _NOTED.add((requested, usable))
        spare = cores - usable
        share = f" (its part of the node, shared by {local_ranks()} ranks)" if local_ranks() > 1 else ""
        print(f"[note] data.num_workers = {requested} but this machine gives the process {cores} "
              f"cores{share}: loading with {usable} workers"
              + (f" ({spare} left for the training thread)" if spare else ""),
              file=sys.stderr, flush=True)
    return usable


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
    crop. A train spec also makes ``shuffle`` and ``drop_last`` default to True. Under torchrun
    (or with explicit ``rank``/``world_size``) each rank gets a disjoint part of the mask each
    epoch.

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
    resolution = check_size(resolution, "resolution")
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
                     world_size=w)
    common = dict(batch_size=batch_size, aug=aug, resolution=resolution, device=device,
                  num_workers=effective_workers(num_workers), drop_last=drop_last, dtype=dtype,
                  channels_last=channels_last)
    decode = resolve_decode(decode, device)
    info.check_files(fmt)  # size + header checksums of the files about to be read
    if decode == "gpu":
        return DeviceDecodeLoader(info, plan, source=fmt, **common)
    if fmt == "ffcv":
        if not info.beton.exists():
            raise DataError(f"{info.beton} is missing; rebuild {dataset_dir}")
        return FFCVMaskedLoader(info.beton, plan, deterministic=deterministic, split=split,
                                scaled_decode=scaled_decode, **common)
    return WdsMaskedLoader(info, plan, **common)
