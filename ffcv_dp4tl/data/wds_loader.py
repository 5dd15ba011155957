"""Masked, random-access loading of WebDataset shards.

The builder's ``wds/SPLIT.index.npy`` gives each sample's shard and byte range, so a masked
epoch seeks straight to the kept JPEGs: the bytes read scale with the mask, not with the
dataset. Decoding runs in torch DataLoader worker processes (PIL), one whole batch per worker
task, and the sampler hands each worker ``(sample indices, resolution, aug seed)`` so
progressive resizing and per-epoch seeds need no state shared with workers.

Across epochs the workers see one stream of batches: when the caller says which epoch comes
next (``set_epoch(epoch, resolution, next_resolution=...)``, as the trainer does), the sampler
runs on into that epoch's first batches while this one drains, so an epoch does not begin with
idle workers filling the pipeline (issue 21: on a 10-batch epoch that fill cost 20-30 %). Every
batch is still a pure function of ``(sample indices, resolution, aug seed)``; a speculative
batch that the next ``set_epoch`` does not match is dropped (torch restarts the stream).

A worker that delivers no batch for :data:`~.interface.LOADER_TIMEOUT_S` seconds
(``$DP4TL_LOADER_TIMEOUT``) stops the loader with :class:`LoaderTimeout`, one line, instead of
a wait that never ends: a worker forked from a process that runs threads can hang in CPython's
post-fork setup (seen once under torchrun), alive, so torch never notices it.
"""
from __future__ import annotations

import io
import math
import multiprocessing.util
import re
import os
import weakref
from collections import deque
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from beton_builders.integrity import DAMAGED_SAMPLE_HINT

from ..errors import DataError
from .manifest import SplitInfo
from .pread import PreadFiles
from .interface import LoaderTimeout, PlanLoaderBase, checked_timeout, timeout_line
from .sampling import Batch, EpochPlan
from .transforms import AugSpec, Normalize, crop_draws, crop_resize


#: shard files a reader keeps open in one process; None: its part of that process's open-file
#: budget, shared with the process's other readers (``resources.OpenFilesClaim``, the GPU-decode
#: loader's rule; in a worker, the worker's own budget, from the limit its loader raised). A
#: masked epoch visits the shards in random order, so without a cap every process held one
#: handle per shard: ImageNet's 1,282 train shards are past the usual limit of 1,024 open files,
#: and the first epoch failed with "Too many open files". A cap of 64 made about 95 % of
#: shuffled ImageNet-1K reads reopen a file: microseconds on a local disk, a metadata round trip
#: each on the shared file systems the shards are for.
MAX_OPEN_SHARDS: int | None = None

#: seconds given a worker that the timeout stopped to exit after torch's own shutdown
_KILL_JOIN_S = 5.0


def _is_timeout(e: RuntimeError) -> bool:
    """torch's "DataLoader timed out after N seconds" (every other RuntimeError is not)."""
    return str(e).startswith("DataLoader timed out after")


class ShardReader:
    """Read one sample's JPEG bytes by index; file handles are opened lazily per process
    (:class:`~.pread.PreadFiles`) and the least recently used is closed past
    :data:`MAX_OPEN_SHARDS`: by default the reader's part of the open-file budget of the process
    that reads, shared only with the readers that read there (a loader without workers reads
    train and val in the main process; a worker has its own limit and reads one split, and a
    reader its parent built takes no part of it until it reads there)."""

    def __init__(self, split: SplitInfo):
        self.split = split.name
        self.root = split.root
        self.index = split.load_index()
        self.paths = [str(p) for p in split.shards]
        self._files: PreadFiles | None = None
        self._pid = None

    def read(self, i: int) -> tuple[bytes, int]:
        if self._pid != os.getpid():  # fresh handles (and this process's own share) after fork
            self._files, self._pid = PreadFiles(self.paths, MAX_OPEN_SHARDS or None), os.getpid()
        rec = self.index[i]
        data = self._files.read(int(rec["shard"]), int(rec["offset"]), int(rec["size"]))
        if len(data) != int(rec["size"]):
            raise SampleError(self.where(i, f"truncated ({len(data)} of {int(rec['size'])} bytes)"))
        return data, int(rec["label"])

    def close(self) -> None:
        """Close this process's shard handles (reading again reopens them)."""
        if getattr(self, "_pid", None) == os.getpid():  # (None: __init__ did not finish)
            self._files.close()

    def __del__(self) -> None:
        self.close()

    def where(self, i: int, what: str) -> str:
        """One line naming the split, sample, shard file and byte offset, with the advice."""
        rec = self.index[i]
        return (f"split {self.split!r} sample {i}: {what} in {self.paths[int(rec['shard'])]} at "
                f"byte offset {int(rec['offset'])} ({int(rec['size'])} bytes); "
                + DAMAGED_SAMPLE_HINT.format(root=self.root))


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
    batches. Returns ``(images, labels, indices[, images2])`` or :class:`_Failed`.

    In a worker the returned images are written straight into shared memory (torch would copy
    them there to send them) and normalised in place, the uint8 pixels going to a buffer
    reused from batch to batch: about a quarter of the fresh pages per batch, whose page
    faults were a large part of a worker's CPU time on small images."""

    def __init__(self, split: SplitInfo, aug: AugSpec, normalize: Normalize | None):
        self.reader = ShardReader(split)
        self.aug = aug
        self.normalize = normalize
        self._scratch: dict[torch.dtype, torch.Tensor] = {}  # per-process reusable buffers

    def __len__(self) -> int:
        return len(self.reader.index)

    def __getitem__(self, item: tuple[np.ndarray, int, int]):
        try:
            return self._batch(*item)
        except SampleError as e:
            return _Failed(str(e))
        except OSError as e:  # the environment (too many open files, a lost network mount):
            if e.errno is None:  # torch would re-raise it errno-less, as a traceback
                raise
            from ..fsutil import os_error_line

            return _Failed(os_error_line(e))

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
        shape = (len(draws), n, resolution, resolution, 3)
        shared = get_worker_info() is not None  # in a worker: the batch goes to the main process
        # uint8 pixels: scratch when normalised here, else sent as is (the device normalises)
        u8 = (self._buffer(torch.uint8, shape) if self.normalize is not None
              else _new_tensor(shape, torch.uint8, shared))
        out = u8.numpy()
        for k, (i, (img, _)) in enumerate(zip(indices.tolist(), opened)):
            try:
                img = img.convert("RGB")  # decodes: a damaged JPEG raises here
            except Exception as e:  # noqa: BLE001
                raise SampleError(self._cannot_decode(i, e)) from None
            for v, (boxes, flips) in enumerate(draws):
                out[v, k] = crop_resize(img, tuple(boxes[k].tolist()), resolution,
                                        flip=bool(flips[k]))
        views = list(u8.unbind(0))
        if self.normalize is not None:
            views = [self._normalized(x, shared) for x in views]
        labels = torch.tensor([label for _, label in opened], dtype=torch.int64)
        return (views[0], labels, torch.from_numpy(np.asarray(indices, np.int64)), *views[1:])

    def _buffer(self, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """This process's scratch tensor of ``dtype`` and ``shape`` (reused while it holds)."""
        buf = self._scratch.get(dtype)
        if buf is None or tuple(buf.shape) != shape:
            buf = self._scratch[dtype] = torch.empty(shape, dtype=dtype)
        return buf

    def _normalized(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """:class:`Normalize` of the uint8 NHWC batch ``x`` (:meth:`Normalize.into` of its NCHW
        view: the same floats) in a new tensor of the loader's dtype in :class:`Normalize`'s
        output layout (channels_last or NCHW), in shared memory when ``shared``."""
        dtype = self.normalize.dtype
        n, h, w, c = x.shape
        nhwc = self.normalize.channels_last
        out = (_new_tensor((n, h, w, c), dtype, shared).permute(0, 3, 1, 2) if nhwc
               else _new_tensor((n, c, h, w), dtype, shared))
        scratch = None if dtype == torch.float32 else self._buffer(torch.float32, (n, c, h, w))
        return self.normalize.into(x.permute(0, 3, 1, 2), out, scratch)


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; with ``shared``, in shared memory (how torch's own collate
    allocates batches in workers, so sending it copies nothing)."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(nbytes)).view(shape)


class _PlanSampler(Sampler):
    """The workers' items, ``(sample indices, resolution, aug seed)``: an epoch's plan order
    cut into ``batch_size`` pieces (the last one dropped or short per ``drop_last``), then, if
    the loader announced the next epoch for it (``set_epoch(..., next_resolution=)``), straight
    on into the next epoch's batches (see :class:`_Stream`).

    Reads the loader through a weak reference: a strong one would make
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

    def __iter__(self) -> "_Stream":
        return _Stream(self._loader, self.loader._stream_start)


class _Stream:
    """The sampler's iterator: the items of epoch ``key``, then of the epoch the loader
    announced to follow it. The announcement is read when ``key``'s items run out, from the
    loader's ``_follows`` (``(epoch, announced next)``, set when an epoch's iteration begins);
    each epoch taken on is appended to the loader's ``_queued``. With no announcement (yet) it
    raises StopIteration but is not finished: torch's multi-worker iterator just dispatches
    nothing then, and asks again when the next batch comes in, by which time the loader may
    have announced more (an epoch shorter than what is in flight is dispatched whole before its
    own iteration begins). The loader reads exactly one epoch of batches per iteration, so
    torch keeps the workers busy across the boundary.

    Holds the loader weakly, and only inside ``__next__`` strongly (see :class:`_PlanSampler`)."""

    def __init__(self, loader_ref: "weakref.ref[WdsMaskedLoader]", key: tuple[int, int]):
        self._loader = loader_ref
        self.key = key
        self._items: Iterator | None = None

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> tuple[np.ndarray, int, int]:
        while True:
            if self._items is not None:
                item = next(self._items, None)
                if item is not None:
                    return item
            ld = self._loader()
            if ld is None:
                raise StopIteration
            if self._items is not None:  # this epoch's items are out: on to the announced one
                follows = ld._follows
                if follows is None or follows[0] != self.key or follows[1] is None:
                    raise StopIteration  # nothing announced (yet)
                self.key = follows[1]
                ld._queued.append(self.key)
            epoch, resolution = self.key
            order, eseed = ld.plan.order(epoch), ld.plan.aug_seed(epoch)
            b, drop_last = ld.batch_size, ld.drop_last
            del ld
            n = len(order) - (len(order) % b if drop_last else 0)
            self._items = ((np.asarray(order[i:min(i + b, n)], np.int64), resolution, eseed)
                           for i in range(0, n, b))


def _as_is(item):
    return item


class WdsMaskedLoader(PlanLoaderBase):
    """Iterate :class:`Batch` es of the masked samples of one split's shards.

    Each DataLoader worker builds whole batches (decode, crop, and on a CPU device the
    normalisation), so the training process does no per-image or per-pixel work: on a 2-core
    machine that work used to compete with the workers (issue 21). On CUDA the uint8 batch is
    sent (pinned) and normalised on the device, which moves 4x fewer bytes.

    ``set_epoch(epoch, resolution, next_resolution=r)`` announces that epoch ``epoch + 1`` at
    resolution ``r`` follows: the workers start on its first batches while this epoch drains (at
    most ``prefetch_factor x num_workers`` batches, as many as are in flight within an epoch).
    The next iteration uses them if it is that (epoch, resolution); otherwise they are dropped
    and the workers restart on what was asked, so batches never depend on the look-ahead.
    Without the announcement (the default, e.g. evaluation loaders) nothing is built ahead."""

    def __init__(self, split: SplitInfo, plan: EpochPlan, *, batch_size: int,
                 resolution: int, aug: AugSpec, device: str | torch.device = "cpu",
                 num_workers: int = 2, drop_last: bool | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 timeout: float | None = None):
        """``aug`` says how images are cropped and flipped. ``timeout``: seconds to wait for a
        worker's batch before :class:`LoaderTimeout` (None: :func:`~.interface.loader_timeout`,
        300 unless ``$DP4TL_LOADER_TIMEOUT`` says otherwise; 0 = wait forever; no workers: no
        timeout)."""
        aug = aug.validate()
        timeout = checked_timeout(timeout)
        #: seconds to wait for the workers' next batch (0: forever, and always without workers)
        self.timeout = float(timeout) if num_workers > 0 else 0.0
        self.aug = aug
        self.plan = plan
        self.batch_size = batch_size
        self.resolution = resolution
        self.device = torch.device(device)
        self.drop_last = aug.train if drop_last is None else drop_last
        self.epoch = 0
        #: (epoch, resolution) announced by set_epoch's next_resolution, or None
        self._next: tuple[int, int] | None = None
        # the stream of batches (one live DataLoader iterator across epochs; see _PlanSampler)
        self._stream = None
        self._stream_start: tuple[int, int] | None = None  # where a (re)started stream begins
        self._follows: tuple[tuple[int, int], tuple[int, int] | None] | None = None
        self._queued: deque[tuple[int, int]] = deque()  # epochs the stream took on, not yet read
        self._stream_ok = False  # the stream stands at the start of _queued[0]
        self.restarts = 0  #: epochs whose iteration (re)started the stream (no look-ahead used)
        self.normalize = Normalize(dtype, channels_last, aug.normalize).to(self.device)
        on_cpu = self.device.type == "cpu"
        #: the workers normalise (CPU device); else the device does, after the uint8 copy
        self.normalize_in_workers = on_cpu
        self.dataset = _MaskedShardDataset(split, aug, Normalize(dtype, channels_last, aug.normalize)
                                           if on_cpu else None)
        if num_workers > 0:
            # the folder of the sockets a worker hands its batches' shared memory through
            # (multiprocessing's resource sharer), made here so the workers, forked later, use
            # this process's, which it removes at its exit: each worker made its own, and one
            # that a signal to the job's process group ended (a scheduler's SIGTERM, torchrun's)
            # left it in $TMPDIR, a pymp-* folder per worker and rank at every preemption
            multiprocessing.util.get_temp_dir()
        self.dataloader = DataLoader(
            self.dataset, sampler=_PlanSampler(self), batch_size=None, collate_fn=_as_is,
            num_workers=num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
            prefetch_factor=2 if num_workers > 0 else None,  # batches in flight per worker
            # torch draws its workers' base seed when an iterator starts: from the global RNG
            # unless the loader has a generator of its own. A resumed run starts the stream one
            # more time than an unbroken one (at the epoch it resumes), and that extra draw
            # shifted the training loop's torch RNG (white balance, ...) for the rest of the
            # epoch: resumed != unbroken with workers. The batches never needed it (each is a
            # function of its indices, resolution and aug seed).
            generator=torch.Generator(),
            timeout=self.timeout,  # (torch refuses a timeout without workers: 0 then)
        )

    def set_epoch(self, epoch: int, resolution: int | None = None,
                  next_resolution: int | None = None, start_batch: int = 0) -> None:
        """Select the epoch (order, crops), its first batch and resolution; ``next_resolution``:
        epoch ``epoch + 1`` follows at that resolution, so its first batches may be built early."""
        super().set_epoch(epoch, resolution, next_resolution, start_batch)  # (checks both first)
        self._next = None if next_resolution is None else (epoch + 1, int(next_resolution))

    def __iter__(self) -> Iterator[Batch]:
        key = (self.epoch, int(self.resolution))
        workers = self.dataloader.num_workers > 0
        nxt = self._next if workers and self._next and self._next[0] == key[0] + 1 else None
        if workers and self._stream_ok and self._queued and self._queued[0] == key:
            self._queued.popleft()  # its first batches are built or in flight already
        else:  # (re)start the stream at this epoch; torch drops whatever was in flight
            self._queued.clear()
            self._stream_start = key
            self._stream = None
            self.restarts += 1
        self._stream_ok = False
        self._follows = (key, nxt)  # read by the sampler when this epoch's batches run out
        if self._stream is None:  # (a restart waits for the persistent workers: it may time out)
            self._stream = self._timed(iter, self.dataloader)
        stream, nb = self._stream, self.device.type == "cuda"
        for _ in range(len(self)):
            out = self._timed(next, stream)
            if isinstance(out, _Failed):
                raise SampleError(out.message)
            images, labels, idx, *rest = out
            views = [images, *rest]
            if not self.normalize_in_workers:
                views = [self.normalize(v.to(self.device, non_blocking=nb).permute(0, 3, 1, 2))
                         for v in views]
            yield Batch(views[0], labels.to(self.device, non_blocking=nb), idx,
                        views[1] if len(views) > 1 else None)
        self._stream_ok = workers
        self.epoch += 1

    def _timed(self, step, arg):
        """``step(arg)``, with torch's "DataLoader timed out" turned into :class:`LoaderTimeout`
        once the workers are stopped (every other error passes through as it is)."""
        try:
            return step(arg)
        except RuntimeError as e:
            if not _is_timeout(e):
                raise
        self._stop_workers()
        raise LoaderTimeout(timeout_line(
            "a data-loader worker", self.dataset.reader.split, self.timeout,
            "a worker stuck at its start — forking a process that runs threads can hang on "
            "Linux —, a worker or pin-memory thread that died unnoticed, or storage that "
            "stopped answering", "its workers were stopped"))

    def close(self) -> None:
        """End the worker processes and close this process's shard files (iterating again
        starts fresh workers)."""
        self._stop_workers()
        self.dataset.reader.close()

    def _stop_workers(self) -> None:
        """End the stream and its worker processes; the next iteration starts fresh ones.

        torch's shutdown asks the workers to exit, then SIGTERMs those still alive; one stuck in
        CPython's post-fork setup has SIGTERM blocked (:mod:`ffcv_dp4tl.stopping` blocks it
        across a fork until the child's at-fork hooks run, which a stuck child never reaches),
        so it is SIGKILLed. Left alive, it would also hang the interpreter's exit
        (multiprocessing joins its daemon children without a timeout)."""
        it = getattr(self.dataloader, "_iterator", None) or self._stream
        self._stream, self._stream_ok = None, False
        self._queued.clear()
        if getattr(self.dataloader, "_iterator", None) is it:
            self.dataloader._iterator = None  # (persistent workers: not reused after this)
        if it is None:
            return
        workers = list(getattr(it, "_workers", ()))
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # (removes the workers from torch's SIGCHLD watch before they end)
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join(timeout=_KILL_JOIN_S)
