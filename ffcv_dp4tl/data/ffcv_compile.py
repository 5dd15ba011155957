"""What ffcv's ``Loader`` costs to start, and what it cannot report: our subclasses of it.

**Compile once per pipeline shape.** ffcv 1.0.2 JIT-compiles every operation of a pipeline
(decoders, flips, ...) with numba when a new ``Loader`` runs its first batch: each
``generate_code`` returns a fresh Python closure and ``Compiler.compile`` wraps it in a fresh
numba dispatcher, so a second ``Loader`` of the same shape in the same process compiles the same
code again (measured on synth:tiny, 2 shared cores: ~2.5 s for ``RandomHorizontalFlip``, ~1.3 s
for a crop decoder; the ``BENCHMARKS.md`` section "ffcv loader start-up" has the table).
:class:`ReusingLoader` keeps one process-wide table of compiled operations keyed by what the
compiled code depends on: the closure's code object, the values it captured (crop scale and
ratio, ``prange`` vs ``range``, ...; nested jitted functions by the same rule) and the
numba options (``parallel`` follows ``Compiler.num_threads``). A closure that captures anything
else (an operation object, a torch module) is not keyed and compiles as before. Only the
compiled functions are shared: each Loader still builds its own graph, memory and stage code.
``DP4TL_FFCV_CODE_CACHE=0`` turns the table off (the benchmark's "before" column).

ffcv's ``Compiler`` offers no on-disk cache (it never passes numba's ``cache=True``, and the
stage functions it generates are ``exec``'d source, which numba cannot cache), so the first
loader of each shape in a process still compiles; the one-time numba start-up (~3 s of typing
numba's own helpers) is paid once per process either way.

**Name the damaged image.** ffcv's JPEG decoders ignore the status of ``imdecode`` (libjpeg-
turbo): a damaged JPEG neither raises nor aborts, it leaves the decode buffer as it was, so the
batch silently carries zeros or the previous image's pixels in that slot. Our decoders
(:func:`checked_decoder_classes`) are ffcv's random-resized-crop and center-crop decoders with
one addition: each sample's ``imdecode`` status goes to a small per-batch buffer. After each
batch, :class:`GuardedEpochIterator` reads that buffer; a failed sample (or any exception in
the pipeline, which in ffcv 1.0.2 kills the loader thread and leaves the consumer waiting
forever) ends the epoch with :class:`PipelineFailure` naming the batch's sample indices, which
:class:`~ffcv_dp4tl.data.ffcv_loader.FFCVMaskedLoader` turns into a one-line ``DataError``.

**Leave numba's types alone.** ffcv 1.0.2's ``OSCacheManager.state_type`` (called by its
``compile_reader`` each time a ``Loader`` is built) sets ``mutable = False`` on numba's
*interned* ``uint8[::1]`` type object, the one shared by every compiled function typed with a
writable 1-d uint8 array since; that changes the type's hash while it sits in the keys of
dispatchers' overload tables. A dispatcher shared between Loaders (the table above: the crop
decoders' ``imdecode``) then cannot be typed again: the next specialization of a shared decoder
(a split of one image has C-contiguous metadata, any other split an 'A' view) failed with
``KeyError: (Array(uint8, 1, 'C'), ...)`` in every later Loader of the process. Our Loader's
memory manager (:func:`_os_cache_reader_class`) compiles the same reader with the same
signature (a read-only uint8 array out of a read-only page map), asking numba for the read-only
type instead of turning its writable one into it, so building a Loader changes no type object.

Importing this module needs no ffcv; the classes are built on first use.
"""
from __future__ import annotations

import os
import re
import threading
import types
import weakref
from typing import Any

import numpy as np

from .. import stopping
from ..lazy import import_ffcv
from .interface import Stalled

#: set to "0" to compile every Loader's operations afresh (ffcv's own behaviour)
CODE_CACHE_ENV = "DP4TL_FFCV_CODE_CACHE"


def code_cache_enabled() -> bool:
    return os.environ.get(CODE_CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


#: seconds between two looks at the epoch thread while the consumer waits for a batch (a batch
#: that arrives wakes the consumer at once; this only bounds how late a dead thread or the
#: timeout is noticed)
_POLL_S = 0.5
#: seconds given a stalled epoch thread to end once told to stop, before it is left behind
_STALLED_STOP_S = 2.0
#: seconds the first batch of an epoch may take beyond the timeout: the epoch thread also
#: JIT-compiles the pipeline then (numba), when its shape is new in this process (a crop
#: decoder ~1 s on an idle core, many times that on a busy node), which is no stalled decode
FIRST_BATCH_EXTRA_S = 120.0


class PipelineFailure(Exception):
    """One ffcv batch failed: ``indices`` are its sample indices (split numbering), ``failed``
    those whose JPEG ``imdecode`` rejected (empty when ``error`` was raised instead)."""

    def __init__(self, indices: np.ndarray, failed: np.ndarray, error: BaseException | None):
        why = repr(error) if error is not None else f"imdecode failed on samples {failed.tolist()}"
        super().__init__(f"ffcv batch of samples {indices.tolist()} failed: {why}")
        self.indices, self.failed, self.error = indices, failed, error


# ----------------------------------------------------------------------- compiled-code table
class _Unkeyable(Exception):
    """A closure captured something whose effect on the compiled code we cannot name."""


_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def _fingerprint(obj: Any, depth: int = 0) -> Any:
    """A hashable value that is equal for two objects iff numba compiles them the same way."""
    from numba.core.dispatcher import Dispatcher

    if depth > 8:
        raise _Unkeyable("nesting too deep")
    if isinstance(obj, _SCALARS):
        return (type(obj).__name__, obj)
    if isinstance(obj, np.generic):
        return ("np", obj.dtype.str, obj.tobytes())
    if isinstance(obj, np.ndarray):
        return ("nd", obj.dtype.str, obj.shape, np.ascontiguousarray(obj).tobytes())
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_fingerprint(x, depth + 1) for x in obj))
    if isinstance(obj, Dispatcher):
        opts = tuple(sorted((k, repr(v)) for k, v in obj.targetoptions.items()))
        sigs = () if obj._can_compile else tuple(str(s) for s in obj.signatures)
        return ("jit", _fingerprint(obj.py_func, depth + 1), opts, sigs)
    if isinstance(obj, types.FunctionType):
        cells = tuple(_fingerprint(c.cell_contents, depth + 1) for c in (obj.__closure__ or ()))
        return ("fn", obj.__module__, obj.__qualname__, obj.__code__, cells,
                _fingerprint(obj.__defaults__, depth + 1),
                bool(getattr(obj, "is_parallel", False)))
    if isinstance(obj, (type, types.BuiltinFunctionType)):  # range, numba.prange, ...
        return ("obj", getattr(obj, "__module__", None), obj.__qualname__)
    raise _Unkeyable(type(obj).__qualname__)


_TABLE: dict[Any, Any] = {}
_TABLE_LOCK = threading.RLock()
#: hits / misses / unkeyed closures of the table, and epoch buffer sets allocated / reused,
#: for benchmarks and tests
STATS = {"hits": 0, "misses": 0, "unkeyed": 0, "buffers_allocated": 0, "buffers_reused": 0}


def clear_code_cache() -> None:
    """Forget every compiled operation (the next Loader of each shape compiles again)."""
    with _TABLE_LOCK:
        _TABLE.clear()
        for k in STATS:
            STATS[k] = 0


def _compiled(fn):
    """``Compiler.compile(fn)``, shared between Loaders whose closures are the same."""
    import_ffcv()
    from ffcv.pipeline.compiler import Compiler

    try:
        key = (_fingerprint(fn), bool(getattr(fn, "is_parallel", False)) and Compiler.num_threads > 1)
    except _Unkeyable:
        STATS["unkeyed"] += 1
        return Compiler.compile(fn)
    hit = _TABLE.get(key)
    if hit is not None:
        STATS["hits"] += 1
        return hit
    STATS["misses"] += 1
    _TABLE[key] = compiled = Compiler.compile(fn)
    return compiled


# --------------------------------------------------------------------------- ffcv subclasses
def source_image_decoder(mem_read):
    """The numba helper every checked decoder's ``generate_code`` calls (ours and the seeded
    one in ``ffcv_loader``): ``decode_source(source_ix, dst_ix, metadata, storage_state,
    temp_storage, status)`` returns sample ``source_ix``'s full image as an HWC uint8 array
    (a JPEG decoded into ``temp_storage[dst_ix]``, raw pixels viewed in place) and writes
    ``imdecode``'s status to ``status[dst_ix, 0]`` (0 = decoded; raw pixels are always 0).
    ``decode_source(..., scale_num)`` decodes a JPEG at ``scale_num / 8`` of its size in the
    DCT domain (libjpeg-turbo's scaled decode: ``ceil(side * scale_num / 8)`` per side, less
    work the smaller it is); raw pixels are returned at full size whatever ``scale_num``.

    A closure over ``mem_read`` (the Loader's page reader) like ffcv's own code, so the compiled
    code table (:func:`_fingerprint`) keys the decoders that call it by what it captured."""
    import_ffcv()
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.libffcv import imdecode
    from ffcv.pipeline.compiler import Compiler

    jpg = IMAGE_MODES["jpg"]
    imdecode_c = Compiler.compile(imdecode)

    def decode_source(source_ix, dst_ix, metadata, storage_state, temp_storage, status,
                      scale_num=8):
        field = metadata[source_ix]
        image_data = mem_read(field["data_ptr"], storage_state)
        height = np.uint32(field["height"])
        width = np.uint32(field["width"])
        if field["mode"] == jpg:
            temp_buffer = temp_storage[dst_ix]
            if scale_num >= 8:  # ffcv's own call
                status[dst_ix, 0] = imdecode_c(image_data, temp_buffer, height, width, height,
                                               width, 0, 0, 1, 1, False, False)
            else:
                status[dst_ix, 0] = imdecode_c(image_data, temp_buffer, height, width, height,
                                               width, 0, 0, np.uint32(scale_num), 8, False, False)
                height = np.uint32((height * scale_num + 7) // 8)
                width = np.uint32((width * scale_num + 7) // 8)
            selected_size = 3 * height * width
            temp_buffer = temp_buffer.reshape(-1)[:selected_size]
            return temp_buffer.reshape(height, width, 3)
        status[dst_ix, 0] = 0
        return image_data.reshape(height, width, 3)

    return Compiler.compile(decode_source)


def mirror_columns(image):
    """Flip an HWC image left-right in place: the in-decoder flip of the scaled and the seeded
    crop decoders (one pass over the output image instead of ffcv's separate flip op). Compiled
    with ``Compiler.compile`` by the decoders' ``generate_code``."""
    wd = image.shape[1]
    for r in range(image.shape[0]):
        for c in range(wd // 2):
            for ch in range(image.shape[2]):
                t = image[r, c, ch]
                image[r, c, ch] = image[r, wd - 1 - c, ch]
                image[r, wd - 1 - c, ch] = t


def _os_cache_reader_class() -> type:
    """ffcv 1.0.2's ``OSCacheManager`` whose ``compile_reader`` mutates no numba type.

    ffcv's ``state_type`` does ``t1 = nb.uint8[::1]; t1.mutable = False``: ``nb.uint8[::1]`` is
    numba's interned (process-wide, hashed by value) ``Array(uint8, 1, 'C')``, so the assignment
    turns the writable-array type that every earlier typing used (``imdecode``'s overloads keyed
    by it, numba's caches) into a read-only one under its old hash (see the module docstring).
    The reader here is ffcv's, compiled with the signature ffcv's ends up with: a read-only
    ``uint8[::1]`` slice of the read-only page map (``np.memmap(mode='r')``), from the pointers
    and sizes (writable ``uint64[::1]``; ffcv's second ``mutable = False`` hits ``t1`` again)."""
    import_ffcv()
    import numba as nb
    from ffcv.memory_managers.os_cache import OSCacheManager
    from ffcv.pipeline.compiler import Compiler

    class FrozenTypesOSCacheManager(OSCacheManager):
        @property
        def state_type(self):
            pages = nb.types.Array(nb.uint8, 1, "C", readonly=True)  # asked for, not made so
            return nb.types.Tuple([pages, nb.uint64[::1], nb.uint64[::1]])

        def compile_reader(self):
            """The page reader, compiled once per process and shared by every Loader (one
            signature, no captured value). ffcv compiles a new one per Loader, and numba never
            frees compiled code: ~1.2 MB and 2 memory maps more per Loader for the life of the
            process (audit: ~0.4 GB over a cost table's ~360 Loaders)."""
            if not (code_cache_enabled() and Compiler.is_enabled):
                return _compile_page_reader(self.state_type)
            with _TABLE_LOCK:
                reader = _TABLE.get(_PAGE_READER)
                if reader is None:
                    STATS["misses"] += 1
                    _TABLE[_PAGE_READER] = reader = _compile_page_reader(self.state_type)
                else:
                    STATS["hits"] += 1
                return reader

    def _compile_page_reader(state_type):
        def read(address, mem_state):  # ffcv 1.0.2's OSCacheManager reader
            size = mem_state[2][np.searchsorted(mem_state[1], address)]
            return mem_state[0][address:address + size]

        out = nb.types.Array(nb.uint8, 1, "C", readonly=True)
        return Compiler.compile(read, out(nb.uint64, state_type))

    FrozenTypesOSCacheManager.__qualname__ = FrozenTypesOSCacheManager.__name__
    return FrozenTypesOSCacheManager


#: the compiled-code table's key of the page-map reader (:func:`_os_cache_reader_class`)
_PAGE_READER = ("os-cache-reader",)


_CLASSES: dict[str, type] | None = None


def _build_classes() -> dict[str, type]:
    import_ffcv()
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.libffcv import resize_crop
    import time
    from queue import Empty, Queue
    from threading import Event, Thread

    import torch
    from ffcv.loader import Loader
    from ffcv.loader import epoch_iterator as ffcv_epoch_iterator
    from ffcv.loader.epoch_iterator import EpochIterator
    from ffcv.memory_managers.os_cache import OSCacheManager
    from ffcv.utils import chunks
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.graph import DecoderNode

    class StatusDecoderMixin:
        """A crop decoder that also allocates one int32 per sample for ``imdecode``'s status
        (0 = decoded, nonzero = libjpeg-turbo rejected the bytes); ``generate_code`` writes it.
        The status buffer is the last entry of the decoder's ``my_storage``."""

        reports_status = True

        def declare_state_and_memory(self, previous_state):
            state, allocs = super().declare_state_and_memory(previous_state)
            return state, (*allocs, AllocationQuery((1,), np.dtype("<i4")))

    class CheckedResizedCropMixin(StatusDecoderMixin):
        def generate_code(self):
            # ffcv 1.0.2's ResizedCropRGBImageDecoder.generate_code, plus the status store
            decode_source = source_image_decoder(self.memory_read)
            my_range = Compiler.get_iterator()
            resize_crop_c = Compiler.compile(resize_crop)
            get_crop_c = Compiler.compile(self.get_crop_generator)
            scale, ratio = self.scale, self.ratio
            if isinstance(scale, tuple):
                scale = np.array(scale)
            if isinstance(ratio, tuple):
                ratio = np.array(ratio)

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage, status = my_storage
                for dst_ix in my_range(len(batch_indices)):
                    image = decode_source(batch_indices[dst_ix], dst_ix, metadata,
                                          storage_state, temp_storage, status)
                    height, width = np.uint32(image.shape[0]), np.uint32(image.shape[1])
                    i, j, h, w = get_crop_c(height, width, scale, ratio)
                    resize_crop_c(image, i, i + h, j, j + w, destination[dst_ix])
                return destination[:len(batch_indices)]

            decode.is_parallel = True
            return decode

    class CheckedRandomResizedCrop(CheckedResizedCropMixin, RandomResizedCropRGBImageDecoder):
        """ffcv's ``RandomResizedCropRGBImageDecoder`` that reports undecodable JPEGs."""

    class CheckedCenterCrop(CheckedResizedCropMixin, CenterCropRGBImageDecoder):
        """ffcv's ``CenterCropRGBImageDecoder`` that reports undecodable JPEGs."""

    class ScaledRandomResizedCrop(StatusDecoderMixin, RandomResizedCropRGBImageDecoder):
        """Random-resized crop that decodes less: the crop box is drawn first (from the
        stored height and width, ffcv's rule), then the JPEG is decoded at the smallest DCT
        scale of 1/1, 1/2, 1/4, 1/8 at which the crop still covers the output size
        (libjpeg-turbo's scaled decode; those four have SIMD IDCTs, the other n/8 do not and
        measured slower than a full decode), the box is mapped onto the scaled image and
        resized (INTER_AREA) as usual; the horizontal flip happens in the decoder (no separate
        pass over the batch). Output differs from the full decode by the DCT-domain downscale
        (tests/data/test_ffcv_startup.py bounds it); with crops at or below the output size it
        is ffcv's decode exactly."""

        def __init__(self, output_size, scale=(0.08, 1.0), ratio=(0.75, 4 / 3), flip=True):
            super().__init__(output_size, scale=scale, ratio=ratio)
            self.flip = bool(flip)

        def generate_code(self):
            decode_source = source_image_decoder(self.memory_read)
            my_range = Compiler.get_iterator()
            resize_crop_c = Compiler.compile(resize_crop)
            get_crop_c = Compiler.compile(self.get_crop_generator)
            scale, ratio = np.array(self.scale), np.array(self.ratio)
            do_flip = self.flip
            mirror_c = Compiler.compile(mirror_columns)

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage, status = my_storage
                n = len(batch_indices)
                out_h, out_w = destination.shape[1], destination.shape[2]
                for dst_ix in my_range(n):
                    source_ix = batch_indices[dst_ix]
                    field = metadata[source_ix]
                    height = np.int64(field["height"])
                    width = np.int64(field["width"])
                    i, j, h, w = get_crop_c(np.uint32(height), np.uint32(width), scale, ratio)
                    num = 8  # 8/8, 4/8, 2/8, 1/8: libjpeg-turbo's SIMD IDCTs (3/8 etc. are C)
                    while num > 1 and h * (num // 2) >= 8 * out_h and w * (num // 2) >= 8 * out_w:
                        num //= 2
                    image = decode_source(source_ix, dst_ix, metadata, storage_state,
                                          temp_storage, status, num)
                    sh, sw = image.shape[0], image.shape[1]
                    top = (i * sh) // height
                    left = (j * sw) // width
                    bottom = min(sh, ((i + h) * sh + height - 1) // height)
                    right = min(sw, ((j + w) * sw + width - 1) // width)
                    out = destination[dst_ix]
                    resize_crop_c(image, top, bottom, left, right, out)
                    if do_flip and np.random.random() < 0.5:
                        mirror_c(out)
                return destination[:n]

            decode.is_parallel = True
            return decode

    class _Failed:
        def __init__(self, failure: PipelineFailure):
            self.failure = failure

    class GuardedEpochIterator(EpochIterator):
        """ffcv's epoch thread, with four guards: an exception while running the pipeline is
        handed to the consumer (ffcv 1.0.2's thread dies and ``__next__`` waits forever), and
        a sample whose decoder reported a failed ``imdecode`` ends the epoch (either way the
        consumer gets :class:`PipelineFailure` for that batch); an exception anywhere else in
        the thread is raised in the consumer as it was (it, too, left ``__next__`` waiting
        forever, after a traceback on stderr); and a batch that does not come within the
        loader's ``timeout`` seconds (0: wait forever; the epoch's first batch gets
        :data:`FIRST_BATCH_EXTRA_S` more, for numba's compile) ends the wait with
        :class:`~.interface.Stalled` (a decode thread stuck on storage that stopped answering
        would otherwise hold the run, and its allocation, for good).

        Its batch buffers (pinned host memory, device memory) and CUDA streams come from the
        loader (:meth:`ReusingLoader.epoch_buffers`): ffcv allocates and pins them afresh at
        every ``iter(loader)``, on the training thread (~1.2 GB at batch 1024, 160 px)."""

        #: what close() finds when a SIGTERM or Ctrl-C cut ``__init__`` short (raised between
        #: two of its lines): ffcv's ``__del__`` still runs close(), which read
        #: ``terminate_event`` before it was set ("Exception ignored in ... __del__" with an
        #: AttributeError after the stop line, 1 ffcv SIGTERM test in 2 under load)
        terminate_event: Event | None = None
        entered = False  # the memory context was entered (close() exits it)

        def __init__(self, loader, order):
            # ffcv 1.0.2's EpochIterator.__init__, with buffers and streams from the loader
            Thread.__init__(self, daemon=True)
            stopping.runs_native_code(self)  # (one a stop could not end is left at exit)
            self.loader = loader
            self.order = order
            self.metadata = loader.reader.metadata
            self.current_batch_slot = 0
            batches = list(chunks(order, loader.batch_size))
            self.iter_ixes = iter(batches)
            self.closed = False
            self.output_queue = Queue(loader.batches_ahead)
            self.terminate_event = Event()
            self.memory_context = loader.memory_manager.schedule_epoch(batches)
            if ffcv_epoch_iterator.IS_CUDA:
                self.current_stream = torch.cuda.current_stream()
            self.memory_context.__enter__()
            self.entered = True
            self.storage_state = self.memory_context.state
            self.cuda_streams, self.memory_allocations = loader.epoch_buffers(self)
            self.timeout = float(getattr(loader, "timeout", 0.0) or 0.0)
            self.died: BaseException | None = None  # what ended the thread, if not its epoch
            self.stalled = False  # a batch did not come in time (stop() then waits no more)
            self.delivered = 0  # queue entries taken by the consumer
            self.start()

        def run(self):
            try:
                super().run()
            except BaseException as e:  # noqa: BLE001 - handed to the consumer in __next__
                self.died = e

        def _next_result(self):
            """The thread's next queue entry (None: the epoch is over), waiting at most
            ``timeout`` seconds (0: for good; the first batch :data:`FIRST_BATCH_EXTRA_S`
            more); the thread's death raises what ended it, the timeout
            :class:`~.interface.Stalled`."""
            wait = self.timeout + (FIRST_BATCH_EXTRA_S if self.delivered == 0 else 0.0)
            deadline = time.monotonic() + wait if self.timeout > 0 else None
            while True:
                try:
                    result = self.output_queue.get(timeout=_POLL_S)
                    self.delivered += 1
                    return result
                except Empty:
                    pass
                if not self.is_alive():
                    try:  # (its last entry may have been queued as it ended)
                        return self.output_queue.get_nowait()
                    except Empty:
                        pass
                    died, self.died = self.died, None
                    self.close()
                    if died is not None:
                        raise died
                    return None  # (ended, stopped or closed: asked again after its end)
                if deadline is not None and time.monotonic() >= deadline:
                    self.stalled = True
                    raise Stalled(wait, self.stop(_STALLED_STOP_S))

        def run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event):
            try:
                result = super().run_pipeline(b_ix, batch_indices, batch_slot, cuda_event)
            except Exception as e:  # noqa: BLE001 - handed to the consumer below
                return self._fail(batch_indices, np.empty(0, np.int64), e)
            n = len(batch_indices)
            allocations = self.memory_allocations["operation"]
            for node_id in self.loader.status_node_ids:
                status = allocations[node_id][-1][batch_slot][:n, 0]
                if status.any():
                    failed = np.asarray(batch_indices, np.int64)[np.flatnonzero(status)]
                    return self._fail(batch_indices, failed, None)
            return result

        def _fail(self, batch_indices, failed, error):
            self.iter_ixes = iter(())  # the thread's next batch is StopIteration
            return _Failed(PipelineFailure(np.asarray(batch_indices, np.int64), failed, error))

        def __next__(self):
            # ffcv 1.0.2's EpochIterator.__next__, waiting with _next_result's guards
            result = self._next_result()
            if result is None:
                self.close()
                raise StopIteration()
            slot, result = result
            if ffcv_epoch_iterator.IS_CUDA:
                self.current_stream.wait_stream(self.cuda_streams[slot])  # the copy is done
            if isinstance(result, _Failed):
                self.close()
                raise result.failure
            return result

        def close(self):
            # ffcv 1.0.2's close, closing only what a cut-short __init__ made
            if self.terminate_event is not None:
                self.terminate_event.set()
            if self.entered and not self.closed:
                self.memory_context.__exit__(None, None, None)

        def stop(self, timeout: float = 60.0) -> bool:
            """End the epoch thread now and wait for it (the consumer left the epoch early:
            ``break``, an exception). Returns whether it ended within ``timeout`` seconds.

            Why: ffcv's thread keeps decoding after ``close()`` until its queue is full, so an
            abandoned epoch (a) keeps writing into the batch buffers that the loader's next
            epoch reuses (:meth:`ReusingLoader.epoch_buffers`), and (b) may still be in numba's
            native code when the interpreter exits, where CPython ends daemon threads with a
            forced unwind that aborts the process ("terminate called without an active
            exception", exit code 134, after all the work was done: a bench that broke out of
            its epochs aborted 1 run in 4). Its next batch is made StopIteration, and the queue
            is drained so that its last ``put`` (ffcv's ``put(None)`` has no timeout) returns.
            A thread that stalled (:class:`~.interface.Stalled`) was given its time already."""
            if self.stalled and timeout > _STALLED_STOP_S:
                timeout = 0.0
            self.terminate_event.set()
            self.iter_ixes = iter(())  # its next batch is StopIteration
            deadline = time.monotonic() + timeout
            while self.is_alive() and time.monotonic() < deadline:
                try:
                    self.output_queue.get(timeout=0.05)
                except Empty:
                    pass
                self.join(timeout=0.01)
            return not self.is_alive()

    FrozenTypesOSCacheManager = _os_cache_reader_class()

    class ReusingLoader(Loader):
        """ffcv's ``Loader`` that shares compiled operations between Loaders of the same
        shape (see the module docstring), iterates with :class:`GuardedEpochIterator` and
        compiles its page reader without changing numba's types (``memory_manager``)."""

        @property
        def memory_manager(self):
            return self._memory_manager

        @memory_manager.setter
        def memory_manager(self, manager):
            # ffcv's __init__ assigns its manager, then at once compiles the reader: ours for
            # the page-map one, whose reader mutates no numba type (_os_cache_reader_class)
            if type(manager) is OSCacheManager:
                manager.__class__ = FrozenTypesOSCacheManager
            self._memory_manager = manager

        @property
        def status_node_ids(self) -> list[int]:
            return [n.id for n in self.graph.nodes if isinstance(n, DecoderNode)
                    and getattr(n.decoder, "reports_status", False)]

        def generate_code(self):
            if not (code_cache_enabled() and Compiler.is_enabled):
                return super().generate_code()
            with _TABLE_LOCK:
                _, code = self.graph.collect_requirements()
                for s_ix, stage in enumerate(self.graph.group_operations()):
                    if s_ix % 2:  # odd stages run as Python (ToTensor, ToDevice, ...)
                        continue
                    for node_id in stage:
                        for kind in ("operation", "shared"):
                            fn = code[kind].get(node_id)
                            if fn is not None:
                                code[kind][node_id] = _compiled(fn)
                # ffcv's codegen would wrap each operation in a new dispatcher; with the
                # Compiler off it takes our (already compiled or shared) ones as they are
                Compiler.set_enabled(False)
                try:
                    self.code = self.graph.codegen_all(code)
                finally:
                    Compiler.set_enabled(True)

        def __init__(self, *args, **kw):
            self._epoch_buffers = None
            with _TABLE_LOCK:  # no other thread's Loader may be built while the Compiler is off
                super().__init__(*args, **kw)

        def epoch_buffers(self, iterator) -> tuple[list, dict]:
            """(CUDA streams, batch buffers) for ``iterator``'s epoch: those of the previous
            epoch when its shapes are the same (same resolution, batch, pipelines) and its
            iterator has stopped; else freshly allocated (and pinned on a CUDA machine) as
            ffcv does, replacing the previous set. Batches are copied out by
            :class:`~ffcv_dp4tl.data.ffcv_loader.FFCVMaskedLoader` (normalised images, cloned
            labels), so reuse never changes what a consumer holds."""
            requirements, _ = self.graph.collect_requirements()
            key = (self.batch_size, self.batches_ahead, _frozen(requirements))
            cached = self._epoch_buffers
            if cached is not None and cached[0] == key:
                previous = cached[3]()
                if previous is not None and previous.is_alive():
                    previous.join(timeout=0.5)  # a finished epoch's thread is about to end
                if previous is None or not previous.is_alive():
                    if ffcv_epoch_iterator.IS_CUDA:
                        # ffcv's per-slot events start afresh with each epoch, so nothing else
                        # makes this epoch's first batches wait for the consumer's stream, which
                        # may still be copying the previous epoch's last batches out of these
                        # slots (a caller that did not sync at epoch end): once per epoch
                        torch.cuda.current_stream().synchronize()
                    STATS["buffers_reused"] += 1
                    self._epoch_buffers = (*cached[:3], weakref.ref(iterator))
                    return cached[1], cached[2]
            slots = self.batches_ahead + 2
            streams = [torch.cuda.Stream() if ffcv_epoch_iterator.IS_CUDA else None
                       for _ in range(slots)]
            self._epoch_buffers = None  # let the old set go before allocating the new one
            allocations = self.graph.allocate_memory(self.batch_size, slots)
            for node in self.graph.nodes:  # values a decoder reads at run time (its seed)
                fill = getattr(getattr(node, "decoder", None), "fill_buffers", None)
                if fill is not None and allocations["operation"].get(node.id) is not None:
                    fill(allocations["operation"][node.id])
            STATS["buffers_allocated"] += 1
            self._epoch_buffers = (key, streams, allocations, weakref.ref(iterator))
            return streams, allocations

        def __iter__(self):
            # ffcv 1.0.2's Loader.__iter__ with our iterator
            Compiler.set_num_threads(self.num_workers)
            order = self.next_traversal_order()
            selected_order = order[:len(self) * self.batch_size]
            self.next_epoch += 1
            if self.code is None or self.recompile:
                self.generate_code()
            return GuardedEpochIterator(self, selected_order)

    out = {c.__name__: c for c in (StatusDecoderMixin, CheckedResizedCropMixin,
                                  CheckedRandomResizedCrop, CheckedCenterCrop,
                                  ScaledRandomResizedCrop,
                                  GuardedEpochIterator, ReusingLoader)}
    for c in out.values():
        c.__qualname__ = c.__name__
    return out


def _frozen(requirements: dict) -> tuple:
    """A hashable, comparable form of ffcv's memory requirements (kind -> node -> queries)."""
    def query(q):
        return tuple(q) if isinstance(q, (list, tuple)) else q

    return tuple((kind, tuple((nid, query(q)) for nid, q in sorted(reqs.items())))
                 for kind, reqs in sorted(requirements.items()))


def ffcv_classes() -> dict[str, type]:
    """``{"ReusingLoader", "GuardedEpochIterator", "CheckedRandomResizedCrop",
    "CheckedCenterCrop", "StatusDecoderMixin", "CheckedResizedCropMixin"}`` (built once)."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _build_classes()
    return _CLASSES


# ----------------------------------------------------------------------- naming the damage
def damaged_samples(beton, indices) -> list[tuple[int, str]]:
    """``(sample, why)`` for each of ``indices`` whose stored image PIL cannot decode (JPEG
    samples only; raw pixels are not checked). Reads the bytes straight from the beton."""
    import io

    from PIL import Image

    from beton_builders.beton import beton_images

    images = beton_images(beton)
    bad = []
    with open(beton, "rb", buffering=0) as f:
        for i in sorted({int(i) for i in indices}):
            if not images.is_jpeg[i] or images.size[i] < 0:
                continue
            data = os.pread(f.fileno(), int(images.size[i]), int(images.data_ptr[i]))
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
            except Exception as e:  # noqa: BLE001 - PIL raises assorted errors on bad bytes
                why = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e)).strip()
                bad.append((i, why.splitlines()[0] if why else type(e).__name__))
    return bad
