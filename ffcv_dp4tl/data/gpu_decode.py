"""Masked loading that decodes JPEGs on the training device (``make_loader(decode="gpu")``).

Why: on the GPU host stock ffcv fed ResNet-18 at ~4.8k img/s because CPU JPEG decoding is the
limit, while nvJPEG decodes ~26k small JPEGs/s when given whole batches. This loader therefore
keeps only byte reading and crop draws on the host and does the pixel work on the device,
batched:

* **Read-ahead threads** (a small pool, bounded read-ahead; each thread first makes the
  loader's device its current one and decodes on a CUDA stream of its own): for batch ``b`` of
  the epoch take ``plan.order(epoch)[b*B:(b+1)*B]`` (the same :class:`EpochPlan` as the other
  loaders, so it visits exactly their samples in their order), read each sample's JPEG bytes
  with ``os.pread`` (position-free, so threads share a descriptor per file) from the beton
  (the image field's ``data_ptr`` + ffcv's allocation table give offset and size) or from the
  WebDataset shards (the shard index gives them), draw every crop box and flip of the batch at
  once (numpy), turn them into a few numbers per image, then ``torchvision.io.decode_jpeg(list,
  device=...)`` (batched nvJPEG on CUDA; the same call decodes on the CPU, which is how the tests
  run) and pad the batch into one ``(B, 3, Hmax, Wmax)`` uint8 canvas (nested tensor → padded),
  refused with a clear error beyond :data:`MAX_CANVAS_BYTES`.
* **Iterating thread**: one ``F.grid_sample`` (bilinear) per pyramid level does crop + flip +
  resize for the whole batch, then the normalisation.

Geometry matches the CPU loaders: crop boxes and flips come from
:func:`~ffcv_dp4tl.data.transforms.crop_draws` with the epoch's
:meth:`~ffcv_dp4tl.data.sampling.EpochPlan.aug_seed`, the rule the WebDataset loader uses too, so
for the same seed both loaders crop the same boxes; the sampling grid puts output pixel centres
where PIL's and OpenCV's resize put them, clamped to the image (edge replication, as their
filters do).

Antialiasing: bilinear sampling aliases when shrinking by much more than 2×. Instead of
per-image ``F.interpolate(antialias=True)`` (one call per distinct size), the padded canvas gets
a small mipmap: each level is a 2×2 average of the one before (masked, so padding never bleeds
into the image edge). An image whose crop shrinks by ``s >= 2`` samples level
``floor(log2(s))``, so bilinear never shrinks by 2× or more; every level serves all its images in
one ``grid_sample``. The box prefilter plus bilinear is close to OpenCV's INTER_AREA (ffcv) and
PIL's antialiased bilinear (WebDataset loader).
"""
from __future__ import annotations

import importlib
import io
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from queue import SimpleQueue
from typing import Callable, Iterator, Literal

import numpy as np
import torch

from .. import stopping
from ..errors import DataError
from beton_builders.beton import beton_images
from beton_builders.integrity import DAMAGED_SAMPLE_HINT

from .manifest import SplitInfo
from .pread import PreadFiles
from .gpu_resample import (MAX_CANVAS_BYTES, LevelGroups, check_canvas, grid_params, level_groups, mip_level,
                           mip_pyramid, pad_batch, resample)
from .interface import PlanLoaderBase, Stalled, checked_timeout
from .sampling import Batch, EpochPlan
from .transforms import AugSpec, Normalize, crop_draws

#: Name prefix of the read-ahead threads (tests check none outlive an iteration).
THREAD_PREFIX = "dp4tl-jpeg-read"
SOURCES = ("ffcv", "wds")


# ---------------------------------------------------------------------------------------------
# Where each sample's JPEG bytes are
# ---------------------------------------------------------------------------------------------

#: Shard (or beton) files the loader holds open at once, shared by its read-ahead threads;
#: None: the loader's part of the process's open-file budget, shared with the process's other
#: readers (``resources.OpenFilesClaim``), so ImageNet-1K's 1,282 shards stay open where the
#: limit allows, and a split with more shards than the limit (ImageNet-21K: about 14,200) still
#: reads, beside a val loader in the same process
MAX_OPEN_FILES: int | None = None


class _ByteLocations:
    """Per-sample (file, offset, size) of the JPEG bytes, plus height/width where known.

    Reads go through ``os.pread`` (:class:`~ffcv_dp4tl.data.pread.PreadFiles`): it has no file
    position, so the read-ahead threads can share a descriptor per file (ShardReader's
    seek+read on shared handles would race), and at most :data:`MAX_OPEN_FILES` stay open
    (by default its share of the open-file budget, which the train and val loaders' readers, both
    reading in the main process, split between them: :class:`~.resources.OpenFilesClaim`).
    """

    def __init__(self, paths: list[str], file_id: np.ndarray, offset: np.ndarray,
                 size: np.ndarray, hw: np.ndarray | None):
        self.paths = paths  # (named in errors)
        self.file_id, self.offset, self.size, self.hw = file_id, offset, size, hw
        self.files = PreadFiles(paths, max_open=MAX_OPEN_FILES or None)

    def read(self, indices: np.ndarray) -> list[torch.Tensor]:
        """The JPEG bytes of ``indices`` as 1-D uint8 tensors (views of one host buffer)."""
        sizes = self.size[indices].astype(np.int64)
        ends = np.cumsum(sizes)
        buf = np.empty(int(ends[-1]) if len(ends) else 0, np.uint8)
        view = memoryview(buf)
        for i, start, n in zip(indices.tolist(), (ends - sizes).tolist(), sizes.tolist()):
            got = self.files.readinto(int(self.file_id[i]), view[start:start + n],
                                      int(self.offset[i]))
            if got != n:
                raise DataError(f"{self.paths[int(self.file_id[i])]}: sample {i} is truncated "
                                f"({got} of {n} bytes); rebuild the dataset")
        return list(torch.from_numpy(buf).split(sizes.tolist()))

    def close(self) -> None:
        self.files.close()


def _beton_locations(beton: Path, check: np.ndarray) -> _ByteLocations:
    """JPEG byte locations of a beton; the samples in ``check`` must be stored as JPEG."""
    images = beton_images(beton)
    raw = int(np.count_nonzero(~images.is_jpeg[check]))
    if raw:
        raise DataError(
            f"{beton}: {raw} of the {len(check)} masked samples are stored as raw pixels "
            "(a --beton-mode proportion build); decode='gpu' needs JPEG bytes: read the "
            "WebDataset shards instead (fmt='wds'), or use decode='cpu'")
    if (images.size[check] < 0).any():
        raise DataError(f"{beton}: allocation table does not match the image metadata; "
                        "the file is damaged, rebuild the dataset")
    return _ByteLocations([str(beton)], np.zeros(len(images.mode), np.int64), images.data_ptr,
                          images.size, images.hw)


def _shard_locations(split: SplitInfo) -> _ByteLocations:
    """Locate JPEG bytes in the WebDataset shards through the split's random-access index
    (the index ShardReader uses); image sizes come from the JPEG headers."""
    index = split.load_index()
    return _ByteLocations([str(p) for p in split.shards], index["shard"].astype(np.int64),
                          index["offset"].astype(np.int64), index["size"].astype(np.int64), None)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT/JPG/DAC)


def jpeg_hw(data: bytes | memoryview) -> tuple[int, int]:
    """(height, width) from a JPEG's frame header, without decoding it.

    A marker walk to the first SOF segment (a few segments in, ~2 µs); PIL's header parser
    took ~40 µs per image, which at 256 images per batch made it the host's largest cost.
    Anything unexpected falls back to PIL.
    """
    buf = bytes(data[:65536]) if len(data) > 65536 else bytes(data)
    pos = 2
    try:
        if buf[:2] == b"\xff\xd8":
            while pos + 9 <= len(buf) and buf[pos] == 0xFF:
                marker = buf[pos + 1]
                if marker == 0xFF:  # fill byte
                    pos += 1
                    continue
                if marker in _SOF_MARKERS:
                    return (int.from_bytes(buf[pos + 5:pos + 7], "big"),
                            int.from_bytes(buf[pos + 7:pos + 9], "big"))
                pos += 2 + int.from_bytes(buf[pos + 2:pos + 4], "big")
    except IndexError:
        pass
    from PIL import Image, UnidentifiedImageError

    try:
        w, h = Image.open(io.BytesIO(bytes(data))).size
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"not a readable JPEG: {e}") from e
    return h, w


# ---------------------------------------------------------------------------------------------
# Per-batch host work: bytes, crop boxes, sampling parameters (gpu_resample's numbers)
# ---------------------------------------------------------------------------------------------

@dataclass
class _HostBatch:
    indices: np.ndarray          # (B,) sample indices
    data: list[torch.Tensor]     # JPEG bytes per sample
    hw: np.ndarray               # (B, 2) image sizes
    canvas: tuple[int, int]      # padded (H, W): multiples of 2**max level
    top_level: int               # highest pyramid level any view samples
    groups: list[LevelGroups]    # per view: batch positions per pyramid level
    params: list[torch.Tensor]   # per view: (B, 8) grid parameters
    hw_t: torch.Tensor           # (B, 2) image sizes, for the pyramid's masks
    labels: torch.Tensor         # (B,) int64
    # host tensors are pinned when the device is CUDA, so the copies are asynchronous
    decoded: torch.Tensor | None = None  # (B, 3, H, W) uint8 canvas on the device
    ready: "torch.cuda.Event | None" = None  # recorded after the decode + pad (CUDA)


# ---------------------------------------------------------------------------------------------
# Bounded read-ahead
# ---------------------------------------------------------------------------------------------

#: seconds given the read-ahead threads to end once a stalled iteration stops them
_STALLED_JOIN_S = 2.0
#: seconds ``close`` waits for the threads to finish the batches they are on (a batch takes
#: seconds); one still busy after that is stuck (a Ctrl-C while a read hangs): it is left, a
#: daemon that ends with the process, rather than holding the command's stop for good
_CLOSE_JOIN_S = 30.0


def _read_ahead_worker(tasks: SimpleQueue, fn: Callable[[int], _HostBatch],
                       initializer: Callable[[], None] | None) -> None:
    """A read-ahead thread: ``fn(b)`` for each ``(future, b)`` taken from ``tasks`` until
    ``None``. A module function holding only the queue and ``fn``, not the
    :class:`_ReadAhead`, so a reader dropped without ``close`` is collected (and its
    ``__del__`` ends the threads)."""
    failed: BaseException | None = None
    if initializer is not None:
        try:
            initializer()
        except BaseException as e:  # noqa: BLE001 - handed to each batch this thread takes
            failed = e
    while (task := tasks.get()) is not None:
        fut, b = task
        # no name may hold the done batch while the thread waits for its next task: it stayed
        # alive after the consumer dropped it (a device canvas, ~0.8 GB at batch 1024, per thread)
        task = None
        if fut.set_running_or_notify_cancel():
            if failed is not None:
                fut.set_exception(failed)
            else:
                try:
                    fut.set_result(fn(b))
                except BaseException as e:  # noqa: BLE001 - raised where the batch is taken
                    fut.set_exception(e)
        fut = None


class _ReadAhead:
    """Yield ``fn(0..n-1)`` in order, computing up to ``depth`` of them ahead on ``workers``
    threads (inline when ``workers == 0``). ``close`` cancels what is queued and joins the
    threads; the loader calls it when iteration ends, stops early or the loader is closed.

    A batch that does not come within ``timeout`` seconds (0: wait forever; inline: no wait to
    bound) raises :class:`~.interface.Stalled`. The threads are daemons, started here rather
    than by a ``ThreadPoolExecutor``: at exit the interpreter joins an executor's threads without a
    timeout, so one stuck in a read (storage that stopped answering) would hold the process,
    and its allocation, after the error line. ``initializer`` runs first in each thread; an
    exception there fails every batch that thread takes."""

    def __init__(self, fn: Callable[[int], _HostBatch], n: int, workers: int, depth: int,
                 initializer: Callable[[], None] | None = None, timeout: float = 0.0):
        self._fn, self._n, self._depth = fn, n, max(1, depth)
        self._timeout = float(timeout)
        self._tasks: SimpleQueue[tuple[Future, int] | None] = SimpleQueue()
        self._pending: deque[Future] = deque()
        self._next = 0
        self._stalled = False
        self._threads = [threading.Thread(target=_read_ahead_worker,
                                          args=(self._tasks, fn, initializer), daemon=True,
                                          name=f"{THREAD_PREFIX}_{i}")
                         for i in range(max(0, workers))]
        for t in self._threads:
            stopping.runs_native_code(t)  # (one stuck in a read is left at exit)
            t.start()

    def _fill(self) -> None:
        while self._threads and self._next < self._n and len(self._pending) < self._depth:
            fut: Future = Future()
            self._tasks.put((fut, self._next))
            self._pending.append(fut)
            self._next += 1

    def __iter__(self) -> Iterator[_HostBatch]:
        if not self._threads:
            for b in range(self._n):
                yield self._fn(b)
            return
        self._fill()
        while self._pending:
            fut = self._pending.popleft()
            self._fill()
            try:
                result = fut.result(timeout=self._timeout or None)
            except FutureTimeout:
                self._stalled = True
                raise Stalled(self._timeout, self.close()) from None
            yield result

    def _end_threads(self) -> list[threading.Thread]:
        """Cancel the batches not started and tell every thread to end (no wait)."""
        threads, self._threads = self._threads, []
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        for _ in threads:
            self._tasks.put(None)
        return threads

    def close(self) -> bool:
        """Cancel the batches not started, let the threads finish theirs and end; returns
        whether they all ended. A thread still busy after :data:`_CLOSE_JOIN_S` seconds (after
        a stall, :data:`_STALLED_JOIN_S`) is stuck and left: a daemon, it ends with the
        process."""
        threads = self._end_threads()
        deadline = time.monotonic() + (_STALLED_JOIN_S if self._stalled else _CLOSE_JOIN_S)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def __del__(self) -> None:
        if getattr(self, "_threads", None):  # (a reader dropped without close: they end)
            self._end_threads()


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------

def _import_torchvision() -> None:
    """Import torchvision (its decoders) in a thread of its own, once. Its video models call
    ``torch.fx.wrap`` at import, which keeps the importing frame, and so every frame under it,
    alive for the life of the process: imported first by a read-ahead thread (or a loader's
    ``__init__``), that kept the loader and its buffers alive after its last reference was
    dropped. A thread of its own leaves only that thread's frames behind."""
    if "torchvision.io" not in sys.modules:
        t = threading.Thread(target=importlib.import_module, args=("torchvision.io",),
                             name="dp4tl-import-torchvision", daemon=True)
        t.start()
        t.join()


class DeviceDecodeLoader(PlanLoaderBase):
    """Iterate :class:`Batch` es of the masked samples, JPEG-decoded and augmented on ``device``.

    Same interface and sample order as :class:`FFCVMaskedLoader` / :class:`WdsMaskedLoader`;
    ``source`` says whether the bytes come from the split's beton (``"ffcv"``; it must store
    JPEGs) or its WebDataset shards (``"wds"``). ``num_workers`` is the number of read-ahead
    threads (0: read inline); ``prefetch`` batches are read ahead (default 2 per thread).
    """

    def __init__(self, split: SplitInfo, plan: EpochPlan, *,
                 source: Literal["ffcv", "wds"] = "ffcv", batch_size: int,
                 resolution: int, aug: AugSpec, device: str | torch.device = "cpu",
                 num_workers: int = 2, drop_last: bool | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 prefetch: int | None = None, max_canvas_bytes: int = MAX_CANVAS_BYTES,
                 timeout: float | None = None):
        """``aug`` says how images are cropped and flipped. ``max_canvas_bytes``: the largest
        padded batch canvas (:func:`check_canvas`) before a clear error. ``timeout``: seconds
        to wait for a read-ahead thread's batch before :class:`~.interface.LoaderTimeout`
        (None: :func:`~.interface.loader_timeout`, 300 unless ``$DP4TL_LOADER_TIMEOUT`` says
        otherwise; 0 = wait forever; no threads: no timeout)."""
        if source not in SOURCES:
            raise DataError(f"unknown byte source {source!r}; choose one of {', '.join(SOURCES)}")
        _import_torchvision()
        aug = aug.validate()
        timeout = checked_timeout(timeout)
        self._readers: weakref.WeakSet[_ReadAhead] = weakref.WeakSet()
        self._locations: _ByteLocations | None = None
        self.aug = aug
        self.plan = plan
        self.batch_size = batch_size
        self.resolution = resolution
        self.device = with_index(torch.device(device))
        self.drop_last = aug.train if drop_last is None else drop_last
        self.source = source
        self.num_workers = max(0, int(num_workers))
        #: seconds to wait for a read-ahead thread's batch (0: forever, and always without threads)
        self.timeout = timeout if self.num_workers > 0 else 0.0
        self.prefetch = prefetch if prefetch is not None else max(2, 2 * self.num_workers)
        self.max_canvas_bytes = int(max_canvas_bytes)
        self.epoch = 0
        self.labels = np.asarray(split.load_labels(), dtype=np.int64)
        self._split_name, self._root = split.name, split.root
        if source == "ffcv":
            if not split.beton.exists():
                raise DataError(f"{split.beton} is missing; rebuild the dataset")
            self._locations = _beton_locations(split.beton, np.asarray(plan.indices))
        else:
            self._locations = _shard_locations(split)
        self.normalize = Normalize(dtype, channels_last, aug.normalize).to(self.device)
        self._pin = self.device.type == "cuda"

    # -- interface shared with the other loaders (MaskedLoader) ----------------------------------

    def __iter__(self) -> Iterator[Batch]:
        epoch, resolution = self.epoch, self.resolution
        order = self.plan.order(epoch)
        eseed = self.plan.aug_seed(epoch)
        reader = _ReadAhead(lambda b: self._host_batch(order, b, resolution, eseed), len(self),
                            self.num_workers, self.prefetch,
                            initializer=partial(thread_device_setup, self.device),
                            timeout=self.timeout)
        self._readers.add(reader)
        stalled_type = Stalled  # (bound here: see FFCVMaskedLoader.__iter__)
        try:
            for host in reader:
                yield self._device_batch(host, resolution)
        except stalled_type as stalled:
            raise stalled.error("a JPEG read-ahead thread", self._split_name, "a read stuck on "
                                "storage that stopped answering, such as a network mount, or a "
                                "device decode that hung") from None
        finally:
            reader.close()
        self.epoch = epoch + 1

    def close(self) -> None:
        """Stop read-ahead threads of unfinished iterations and close the data files."""
        for reader in list(getattr(self, "_readers", ())):
            reader.close()
        if getattr(self, "_locations", None) is not None:
            self._locations.close()

    def __del__(self) -> None:
        self.close()

    # -- host side (read-ahead threads) ---------------------------------------------------------

    def _host_batch(self, order: np.ndarray, b: int, resolution: int, eseed: int) -> _HostBatch:
        idx = np.asarray(order[b * self.batch_size:(b + 1) * self.batch_size], dtype=np.int64)
        loc = self._locations
        data = loc.read(idx)
        hw = loc.hw[idx] if loc.hw is not None else self._header_sizes(idx, data)
        draws = crop_draws(hw, idx, eseed=eseed, aug=self.aug)
        levels = [mip_level(boxes, resolution) for boxes, _ in draws]
        top = int(max(lv.max(initial=0) for lv in levels))
        canvas = (int(-(-hw[:, 0].max(initial=1) // 2**top) * 2**top),
                  int(-(-hw[:, 1].max(initial=1) // 2**top) * 2**top))
        pin = self._host_tensor
        params = [pin(torch.from_numpy(grid_params(boxes, flips, hw, lv, resolution, canvas)))
                  for (boxes, flips), lv in zip(draws, levels)]
        groups = [[(lv, None if pos is None else pin(pos)) for lv, pos in level_groups(view)]
                  for view in levels]
        check_canvas(idx, hw, canvas, top, self.max_canvas_bytes)
        host = _HostBatch(idx, data, hw, canvas, top, groups, params,
                          pin(torch.from_numpy(hw)), pin(torch.from_numpy(self.labels[idx])))
        host.decoded, host.ready = self._decode_padded(host)
        host.data = []  # the JPEG bytes are no longer needed
        return host

    def _header_sizes(self, idx: np.ndarray, data: list[torch.Tensor]) -> np.ndarray:
        hw = np.empty((len(idx), 2), np.int64)
        for k, (i, d) in enumerate(zip(idx.tolist(), data)):
            try:
                hw[k] = jpeg_hw(memoryview(d.numpy()))
            except DataError as e:
                loc = self._locations
                raise DataError(
                    f"split {self._split_name!r} sample {i}: {e} in {loc.paths[int(loc.file_id[i])]} "
                    f"at byte offset {int(loc.offset[i])} ({int(loc.size[i])} bytes); "
                    + DAMAGED_SAMPLE_HINT.format(root=self._root)) from None
        return hw

    def _host_tensor(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory() if self._pin else t

    # -- device side (the iterating thread) -----------------------------------------------------

    def _device_batch(self, host: _HostBatch, resolution: int) -> Batch:
        """Crop, flip, resize and normalise a decoded batch (on the iterating thread's stream)."""
        dev, nb = self.device, self._pin
        canvas = host.decoded
        if host.ready is not None:
            main = torch.cuda.current_stream(dev)
            main.wait_event(host.ready)
            canvas.record_stream(main)  # its block is not reused before main's kernels ran
        canvas = canvas.float()
        pyramid = [canvas]
        if host.top_level:
            pyramid += mip_pyramid(canvas, host.hw_t.to(dev, non_blocking=nb), host.top_level)
        images = []
        for params, groups in zip(host.params, host.groups):
            groups = [(lv, None if pos is None else pos.to(dev, non_blocking=nb))
                      for lv, pos in groups]
            out = resample(pyramid, params.to(dev, non_blocking=nb), groups, resolution)
            images.append(self.normalize(out))
        return Batch(images[0], host.labels.to(dev, non_blocking=nb),
                     torch.from_numpy(host.indices), images[1] if len(images) > 1 else None)

    def _decode_padded(self, host: _HostBatch
                       ) -> tuple[torch.Tensor, "torch.cuda.Event | None"]:
        """Decode the batch on the device into one zero-padded uint8 (B, 3, H, W) canvas: on a
        read-ahead thread (its own CUDA stream, :meth:`_decode_on_side_stream`), so the
        iterating thread only crops and resizes. Returns the canvas and, on CUDA, the event
        the iterating thread waits on."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            if self.device.type == "cuda":
                return self._decode_on_side_stream(host)
            images = decode_jpeg(host.data, device=self.device, mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise DataError(self._decode_failure(host, e)) from None
        self._check_sizes(host, images)
        return pad_batch(images, host.canvas), None

    def _check_sizes(self, host: _HostBatch, images: list[torch.Tensor]) -> None:
        got = np.array([img.shape[1:] for img in images], np.int64).reshape(-1, 2)
        if not np.array_equal(got, host.hw):
            bad = host.indices[(got != host.hw).any(axis=1)].tolist()
            raise DataError(f"samples {bad}: decoded size differs from the stored size; "
                            "rebuild the dataset")

    def _decode_failure(self, host: _HostBatch, error: Exception) -> str:
        """One line naming the first sample of the batch that does not decode on its own, its
        file and byte offset (a batched decode only says that one of them failed)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        bad, why = None, str(error).splitlines()[0] if str(error) else type(error).__name__
        for i, d in zip(host.indices.tolist(), host.data):
            try:
                decode_jpeg(d, mode=ImageReadMode.RGB)  # on the CPU: independent of the device
            except RuntimeError as e:
                bad, why = i, str(e).splitlines()[0] if str(e) else why
                break
        loc = self._locations
        if bad is None:
            return (f"split {self._split_name!r}: cannot decode the JPEGs of samples "
                    f"{host.indices.tolist()} on {self.device} ({why}); run `dp4tl verify "
                    f"{self._root} --deep` to check the data")
        return (f"split {self._split_name!r} sample {bad}: cannot decode the JPEG ({why}) in "
                f"{loc.paths[int(loc.file_id[bad])]} at byte offset {int(loc.offset[bad])} "
                f"({int(loc.size[bad])} bytes); " + DAMAGED_SAMPLE_HINT.format(root=self._root))

    def _decode_on_side_stream(self, host: _HostBatch
                               ) -> tuple[torch.Tensor, "torch.cuda.Event"]:
        """nvJPEG decode and padding on this read-ahead thread's own stream, never the
        training stream.

        nvJPEG's hardware engine writes its output buffers without waiting for work already
        queued on the stream it is given (pytorch/vision#9606, meta-pytorch/torchcodec#1634).
        Decoding on the training stream, the caching allocator can hand the decoder a block that
        queued kernels (the previous step's backward) still read, and the decoder overwrites it:
        wrong numbers or NaN in code that never touched the decoder. The first GPU check saw
        exactly that. Here each read-ahead thread decodes and pads on a stream of its own and
        waits for it before letting the decoded images go, so no queued kernel still reads a
        block the next decode may get; the canvas is marked as used by the training stream
        (``record_stream`` in :meth:`_device_batch`), so its block returns to this stream's pool
        only after every kernel that read it has finished.
        """
        from torchvision.io import ImageReadMode, decode_jpeg

        stream = _thread_stream(self.device)
        with torch.cuda.stream(stream):
            try:
                images = decode_jpeg(host.data, device=self.device, mode=ImageReadMode.RGB)
            except RuntimeError as e:
                raise DataError(self._decode_failure(host, e)) from None
            self._check_sizes(host, images)
            canvas = pad_batch(images, host.canvas)
            ready = torch.cuda.Event()
            ready.record(stream)
        stream.synchronize()  # before `images` is freed back to this stream's pool
        del images
        return canvas, ready


_THREAD_STATE = threading.local()


def _thread_stream(device: torch.device) -> "torch.cuda.Stream":
    """This thread's own CUDA stream on ``device`` (made on first use)."""
    streams = getattr(_THREAD_STATE, "streams", None)
    if streams is None:
        streams = _THREAD_STATE.streams = {}
    s = streams.get(device)
    if s is None:
        s = streams[device] = torch.cuda.Stream(device=device)
    return s


def with_index(device: torch.device) -> torch.device:
    """``cuda`` → ``cuda:N``, N the calling thread's current device (others unchanged).

    Why: a read-ahead thread starts on device 0 whatever the loader was made for, so
    :func:`thread_device_setup` must name the device, and ``torch.cuda.set_device`` refuses one
    without an index. Called on the thread that makes the loader, whose current device is the
    one meant (``resolve_device("cuda")`` gives no index)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def thread_device_setup(device: torch.device) -> None:
    """Run first in every read-ahead thread: on CUDA, make ``device`` the thread's current
    device, so nothing the thread does (pinning, streams, events) creates a context on GPU 0
    (each DDP rank would otherwise hold one there)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


@lru_cache(maxsize=None)
def device_decode_available(device: str) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` decodes on ``device`` here (``decode="auto"``)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

        jpeg = encode_jpeg(torch.zeros((3, 8, 8), dtype=torch.uint8))
        out = decode_jpeg([jpeg], device=device, mode=ImageReadMode.RGB)
        return tuple(out[0].shape) == (3, 8, 8)
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


__all__ = ["DeviceDecodeLoader", "SOURCES", "THREAD_PREFIX", "device_decode_available", "jpeg_hw",
           "thread_device_setup", "with_index"]
