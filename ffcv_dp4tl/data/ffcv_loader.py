"""Masked FFCV loading that stays alive across epochs and resolution changes.

Design notes (each works around a known ffcv limitation):

* The mask is fixed when the Loader is built (``indices=``); changing indices on a live Loader
  is unsupported, and the Loader (with its compiled pipeline) is reused for every epoch.
* ffcv's own distributed mode pads like DistributedSampler and QUASI_RANDOM refuses
  ``distributed=True``. We install our own traversal order, :class:`PlanOrder` (a
  ``TraversalOrder`` subclass constructed by ffcv with its own ``plan`` argument), which
  reshuffles the whole mask each epoch and gives every rank a disjoint stride of it (train
  plans: as many samples on every rank, ``EpochPlan.even``).
* ffcv batches carry no sample indices. Batches come out in traversal order, so the indices of
  batch ``b`` are ``order[b*B:(b+1)*B]`` of the order our traversal produced for that epoch.
* Progressive resizing sets ``output_size`` on the live decoder, as ffcv-imagenet does.
* Two views (``views=2``) are a second pipeline reading the same ``image`` field
  (``PipelineSpec("image", decoder=...)``, ffcv 1.0's way to get several outputs per field):
  each view decodes and crops independently.
* Every new ffcv Loader would JIT-compile its pipeline again (seconds per loader); ours is
  :class:`~ffcv_dp4tl.data.ffcv_compile.ReusingLoader`, which shares compiled operations with
  earlier Loaders of the same shape in the process (``DP4TL_FFCV_CODE_CACHE=0`` turns it off).
* ffcv's decoders ignore a damaged JPEG (the batch keeps stale pixels); ours record each
  sample's decode status, and a failed batch is a one-line :class:`DataError` naming the split,
  sample and beton (:meth:`FFCVMaskedLoader._damage_error`).
"""
from __future__ import annotations

from pathlib import Path
import inspect
import weakref
from typing import Any, Iterator

import numpy as np
import torch

from beton_builders.integrity import DAMAGED_SAMPLE_HINT

from ..errors import DataError
from ..lazy import import_ffcv, threads_kept, threads_kept_overlapping
from .ffcv_compile import PipelineFailure, damaged_samples, ffcv_classes
from .interface import PlanLoaderBase, Stalled, checked_sizes, checked_timeout
from .sampling import Batch, EpochPlan
from .transforms import AugSpec, Normalize


def _traversal_order_base():
    import_ffcv()
    from ffcv.traversal_order.base import TraversalOrder

    return TraversalOrder


def _make_plan_order():
    TraversalOrder = _traversal_order_base()

    class PlanOrder(TraversalOrder):
        """ffcv traversal order that follows an :class:`EpochPlan`: the whole mask reshuffled
        per epoch (seeded), then this rank's stride of it. Constructed by ffcv's Loader as
        ``PlanOrder(loader, plan=...)`` (see :func:`plan_order_arguments`)."""

        def __init__(self, loader, plan: EpochPlan):
            super().__init__(loader)
            self.plan = plan

        def sample_order(self, epoch: int) -> np.ndarray:
            return self.plan.order(epoch)

    class PlanOrderFactory(TraversalOrder):
        """ffcv 1.0.2's form of a custom order: ``Loader(order=x)`` needs
        ``isinstance(x, TraversalOrder)`` and calls ``x(loader)`` for the loader's order.
        Calling this factory constructs a :class:`PlanOrder` for that loader."""

        def __init__(self, plan: EpochPlan):
            # Base init with the plan's view of what it reads from a loader (indices, seed; our
            # order does its own rank striding, so ffcv's ``distributed`` is off).
            super().__init__(_PlanView(plan))
            self.plan = plan

        def __call__(self, loader) -> "PlanOrder":
            return PlanOrder(loader, self.plan)

        def sample_order(self, epoch: int) -> np.ndarray:
            return self.plan.order(epoch)

    for cls in (PlanOrder, PlanOrderFactory):
        cls.__qualname__ = cls.__name__
    return PlanOrder, PlanOrderFactory


class _PlanView:
    """The three attributes ``TraversalOrder.__init__`` reads from a loader, for a plan."""

    def __init__(self, plan: EpochPlan):
        self.indices, self.seed, self.distributed = np.asarray(plan.indices), plan.seed, False


_ORDER_CLASSES: tuple[type, type] | None = None


def _order_classes() -> tuple[type, type]:
    global _ORDER_CLASSES
    if _ORDER_CLASSES is None:
        _ORDER_CLASSES = _make_plan_order()
    return _ORDER_CLASSES


def __getattr__(name: str):  # PlanOrder is built lazily: importing this module needs no ffcv
    if name == "PlanOrder":
        return _order_classes()[0]
    raise AttributeError(name)


def loader_takes_order_kwargs(loader_cls=None) -> bool:
    """Whether ffcv's Loader takes ``order=<TraversalOrder subclass>, order_kwargs={...}``
    (ffcv >= 1.1 / main) rather than ``order=<TraversalOrder instance>`` (1.0.x)."""
    if loader_cls is None:
        import_ffcv()
        from ffcv.loader import Loader as loader_cls
    return "order_kwargs" in inspect.signature(loader_cls.__init__).parameters


def plan_order_arguments(plan: EpochPlan, loader_cls=None) -> dict[str, Any]:
    """The ``Loader`` keywords that install :class:`PlanOrder` for ``plan``, the way the
    installed ffcv documents custom orders."""
    plan_order, factory = _order_classes()
    if loader_takes_order_kwargs(loader_cls):
        return {"order": plan_order, "order_kwargs": {"plan": plan}}
    return {"order": factory(plan)}


# --------------------------------------------------------------------------- deterministic mode
#: salts of the per-sample seeds: view 1 and view 2 of a two-view loader draw different crops
_VIEW_SALT = (0x9E3779B1, 0x85EBCA77)


def _seeded_crop_flip_class():
    """``SeededRandomResizedCrop``: ffcv's random-resized-crop decoder with the flip folded in,
    whose randomness is a pure function of (seed, view, the batch, the sample).

    ffcv's augmentations call ``np.random`` inside numba-compiled code, which draws from numba's
    *per-thread* generator: Python cannot seed it, and with several decode threads which thread
    decodes which image changes from run to run. This decoder reseeds numba's generator (of the
    thread at hand) right before each image's crop and flip, from a hash of the data seed, the
    view, the image's sample index and its batch (first/last sample index and its position in
    it). The batch enters the seed so that an image gets a new crop every epoch: the shuffled
    batches differ from epoch to epoch, and they are themselves a function of (seed, epoch).
    Any number of decode threads therefore gives the same pixels. Cost: one generator reseed
    per image (microseconds, next to a JPEG decode) and the flip done in the decoder; with
    ``shuffle=False`` the crops repeat every epoch.

    The seed's hash (``base``) reaches the compiled code through a one-value buffer the decoder
    declares (filled by :meth:`fill_buffers` when the Loader allocates its batch buffers), not
    as a value the closure captures: numba freezes captured values into the machine code, so
    every data seed and view compiled the decoder and its helpers again (leak audit: ~12 MB of
    code and several seconds of compiling per new seed in a process, never freed)."""
    import_ffcv()
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder, get_random_crop
    from ffcv.libffcv import resize_crop
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler

    from .ffcv_compile import ffcv_classes, mirror_columns, source_image_decoder

    class SeededRandomResizedCrop(ffcv_classes()["StatusDecoderMixin"],
                                  RandomResizedCropRGBImageDecoder):
        def __init__(self, output_size, scale=(0.08, 1.0), ratio=(0.75, 4 / 3), seed: int = 0,
                     view: int = 0, flip: bool = True):
            super().__init__(output_size, scale=scale, ratio=ratio)
            self.seed, self.view, self.flip = int(seed), int(view), bool(flip)

        @property
        def base(self) -> np.uint64:
            """The hash of (seed, view) every image's seed starts from."""
            return np.uint64((self.seed * 0x2545F4914F6CDD1D + _VIEW_SALT[self.view % 2])
                             % (1 << 63))

        def declare_state_and_memory(self, previous_state):
            state, allocs = super().declare_state_and_memory(previous_state)
            *head, status = allocs  # (the status buffer stays last: StatusDecoderMixin)
            # (int64, as torch holds it everywhere: the hash is below 2**63)
            return state, (*head, AllocationQuery((1,), np.dtype("<i8")), status)

        def fill_buffers(self, buffers) -> None:
            """Write :attr:`base` into this decoder's buffers (``ReusingLoader.epoch_buffers``
            calls it for every set it allocates; a reused set keeps it)."""
            buffers[-2][...] = int(self.base)

        def generate_code(self):
            decode_source = source_image_decoder(self.memory_read)
            my_range = Compiler.get_iterator()
            resize_crop_c = Compiler.compile(resize_crop)
            get_crop_c = Compiler.compile(get_random_crop)
            mirror_c = Compiler.compile(mirror_columns)
            scale, ratio = np.array(self.scale), np.array(self.ratio)
            do_flip = self.flip

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage, seed_base, status = my_storage
                base = np.uint64(seed_base[0, 0])
                n = len(batch_indices)
                first = np.uint64(batch_indices[0])
                last = np.uint64(batch_indices[n - 1])
                for dst_ix in my_range(n):
                    source_ix = batch_indices[dst_ix]
                    image = decode_source(source_ix, dst_ix, metadata, storage_state,
                                          temp_storage, status)
                    height, width = np.uint32(image.shape[0]), np.uint32(image.shape[1])
                    # splitmix64 of (base, sample, batch, position) → a 32-bit seed
                    z = (base + np.uint64(source_ix) * np.uint64(0x9E3779B97F4A7C15)
                         + first * np.uint64(0xBF58476D1CE4E5B9)
                         + last * np.uint64(0x94D049BB133111EB) + np.uint64(dst_ix))
                    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                    z = z ^ (z >> np.uint64(31))
                    np.random.seed(np.uint32(z & np.uint64(0xFFFFFFFF)))
                    i, j, h, w = get_crop_c(height, width, scale, ratio)
                    out = destination[dst_ix]
                    resize_crop_c(image, i, i + h, j, j + w, out)
                    if do_flip and np.random.random() < 0.5:
                        mirror_c(out)
                return destination[:n]

            decode.is_parallel = True
            return decode

    SeededRandomResizedCrop.__qualname__ = "SeededRandomResizedCrop"
    return SeededRandomResizedCrop


_SEEDED_CLASS = None


def seeded_crop_decoder(*args, **kw):
    """A ``SeededRandomResizedCrop`` (see :func:`_seeded_crop_flip_class`)."""
    global _SEEDED_CLASS
    if _SEEDED_CLASS is None:
        _SEEDED_CLASS = _seeded_crop_flip_class()
    return _SEEDED_CLASS(*args, **kw)


class FFCVMaskedLoader(PlanLoaderBase):
    """Iterate :class:`Batch` es of the masked samples of one beton."""

    def __init__(self, beton: str | Path, plan: EpochPlan, *, batch_size: int,
                 resolution: int, aug: AugSpec, device: str | torch.device = "cpu",
                 num_workers: int = 2, drop_last: bool | None = None, os_cache: bool = True,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 deterministic: bool = False, split: str | None = None,
                 scaled_decode: bool = False, timeout: float | None = None):
        """``aug`` says how images are cropped and flipped. ``deterministic``: random crops
        and flips seeded per sample and batch (:func:`_seeded_crop_flip_class`), so two runs
        give identical batches whatever the number of decode threads. ``split``: the split's
        name in error messages (default: the beton's file stem). ``scaled_decode`` (train,
        not deterministic): crop first, decode each JPEG at reduced DCT scale, flip in the
        decoder (``ffcv_compile.ScaledRandomResizedCrop``; off by default: it changes pixels).
        ``timeout``: seconds to wait for ffcv's epoch thread's next batch before
        :class:`~.interface.LoaderTimeout` (None: :func:`~.interface.loader_timeout`, 300
        unless ``$DP4TL_LOADER_TIMEOUT`` says otherwise; 0 = wait forever).

        Building one costs little once a Loader of the same shape (aug, views, workers, device)
        ran in this process: the compiled decoders are shared (module ``ffcv_compile``)."""
        import_ffcv()  # (the first import: torch's and numba's thread counts kept, Ctrl-C held)
        from ffcv.fields.basics import IntDecoder
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        classes = ffcv_classes()
        Loader = classes["ReusingLoader"]
        RandomResizedCropRGBImageDecoder = classes["CheckedRandomResizedCrop"]
        CenterCropRGBImageDecoder = classes["CheckedCenterCrop"]
        aug = aug.validate()
        #: seconds to wait for the epoch thread's next batch (0: forever)
        self.timeout = checked_timeout(timeout)
        self.aug = aug
        self.plan = plan
        self.beton = Path(beton)
        self.split = split if split is not None else self.beton.stem
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.drop_last = aug.train if drop_last is None else drop_last
        non_blocking = self.device.type == "cuda"

        def to_torch() -> list:  # fresh op instances per pipeline
            return [ToTensor(), ToDevice(self.device, non_blocking=non_blocking), ToTorchImage()]

        self.deterministic = bool(deterministic)
        self.scaled_decode = bool(scaled_decode) and aug.train and not self.deterministic
        # the scaled and the seeded decoders flip inside the decoder; the stock crop needs ffcv's op
        separate_flip = aug.flip and aug.train and not (self.scaled_decode or self.deterministic)

        def flip() -> list:  # a fresh op per pipeline
            return [RandomHorizontalFlip()] if separate_flip else []

        if self.scaled_decode:  # crop first, decode at reduced scale, flip in the decoder
            self.decoders = [classes["ScaledRandomResizedCrop"](
                (resolution, resolution), scale=aug.crop_scale, ratio=aug.crop_ratio,
                flip=aug.flip) for _ in range(aug.views)]
            image_ops = [self.decoders[0]] + to_torch()
        elif aug.train and self.deterministic:  # the flip happens inside the seeded decoder
            self.decoders = [seeded_crop_decoder((resolution, resolution), scale=aug.crop_scale,
                                                 ratio=aug.crop_ratio, seed=plan.seed, view=v,
                                                 flip=aug.flip)
                             for v in range(aug.views)]
            image_ops = [self.decoders[0]] + to_torch()
        elif aug.train:
            self.decoders = [RandomResizedCropRGBImageDecoder((resolution, resolution),
                                                              scale=aug.crop_scale,
                                                              ratio=aug.crop_ratio)
                             for _ in range(aug.views)]
            image_ops = [self.decoders[0]] + flip() + to_torch()
        else:
            self.decoders = [CenterCropRGBImageDecoder((resolution, resolution),
                                                       aug.center_crop_ratio)]
            image_ops = [self.decoders[0]] + to_torch()
        self.decoder = self.decoders[0]
        # Squeeze(1), not Squeeze(): a batch of one sample keeps labels of shape (1,) (a bare
        # Squeeze made them 0-d, and ToDevice raised IndexError)
        label_ops = [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(self.device, non_blocking=non_blocking)]
        pipelines = {"image": image_ops, "label": label_ops}
        if aug.views == 2:
            pipelines["image2"] = PipelineSpec("image", decoder=self.decoders[1],
                                               transforms=flip() + to_torch())
        # ffcv has no in-process loading: it reads 0 as os.cpu_count(), the machine's cores, past
        # this process's share (under taskset or a Slurm allocation its thread pool then refused
        # to start: "number of threads must be between 1 and N"); 0 here = one decode thread
        # (ffcv's Loader sets torch's and numba's thread counts to its workers as it is built:
        # the caller's stay theirs until an epoch runs, :meth:`__iter__`)
        with threads_kept():
            self.loader = Loader(
                str(beton), batch_size=batch_size, num_workers=max(1, num_workers),
                os_cache=os_cache, indices=plan.indices, drop_last=self.drop_last,
                pipelines=pipelines, seed=plan.seed, **plan_order_arguments(plan, Loader),
            )
        self.loader.timeout = self.timeout  # (read by each epoch's GuardedEpochIterator)
        self.normalize = Normalize(dtype, channels_last, aug.normalize).to(self.device)
        self.epoch = 0
        #: the epoch threads of iterations not finished (a generator kept suspended by a
        #: traceback leaves its thread decoding until it is closed)
        self._epochs: weakref.WeakSet = weakref.WeakSet()
        #: the iterations (generators) not finished: :meth:`close` ends them
        self._iterations: weakref.WeakSet = weakref.WeakSet()

    def close(self) -> None:
        """End the unfinished iterations (:meth:`MaskedLoader.close`): their epoch threads
        stop, torch's and numba's thread counts are the caller's again (:meth:`__iter__`), and
        the beton's memory map is released now, its descriptor closed, even while the loader
        itself is still referenced (a traceback a notebook keeps held an interrupted
        ``train``'s loader, and with it one open descriptor of the beton per interruption; API
        audit). Iterating the loader again maps the beton again. Where an iteration is still
        executing (another thread's loop, or ``close()`` called from its own), the map stays
        until the loader is collected."""
        busy = False
        for iteration in list(self._iterations):
            try:
                iteration.close()  # (its finally: the epoch's thread stopped, the counts back)
            except ValueError:  # ("generator already executing": in another thread, or
                busy = True     # close() from its own loop)
        for batches in list(self._epochs):
            self._stop_epoch(batches)
        if not busy:  # (an iteration still executing reads the map: numba failed to type a
            self._release_map()  # reader of None in the thread iterating; review)

    def _release_map(self) -> None:
        """Drop every reference this loader holds to ffcv's memory map of the beton (its
        ``OSCacheContext`` maps the file once and keeps it; the epoch iterators keep its state):
        numpy then unmaps it and closes its descriptor. ffcv maps it again when it next
        enters the context (``mmap is None``)."""
        for batches in list(self._epochs):
            if getattr(batches, "storage_state", None) is not None:
                batches.storage_state = None
        context = getattr(getattr(self.loader, "memory_manager", None), "context", None)
        if getattr(context, "mmap", None) is not None:
            context.mmap = None

    @staticmethod
    def _stop_epoch(batches) -> None:
        """End an epoch's thread now and wait for it (``GuardedEpochIterator.stop``). A method,
        not a module function: the generator's ``finally`` may run at interpreter exit, after
        module globals are cleared (see :meth:`__iter__`)."""
        stop = getattr(batches, "stop", None)
        if stop is not None:
            stop()

    def set_epoch(self, epoch: int, resolution: int | None = None,
                  next_resolution: int | None = None, start_batch: int = 0) -> None:
        """Select the epoch (order), the batch it starts at and, for progressive resizing, the
        output resolution (``next_resolution``, a hint about the next epoch, is not used)."""
        resolution, _ = checked_sizes(resolution, next_resolution)
        self.start_epoch_at(epoch, start_batch)
        self.loader.next_epoch = epoch
        if resolution is not None:
            for dec in self.decoders:
                dec.output_size = (resolution, resolution)

    @property
    def resolution(self) -> int:
        return int(self.decoder.output_size[0])

    def __iter__(self) -> Iterator[Batch]:
        """The epoch's batches. While the epoch runs, torch's and numba's thread counts are
        the loader's workers (ffcv's, what a training step on CPU runs with); when it ends,
        however it ends (exhausted, left early, :meth:`close`), they are the caller's again
        (ffcv left them set for the rest of the process: a notebook's later CPU work ran on
        one thread; API audit)."""
        iteration = self._iterate()
        self._iterations.add(iteration)
        return iteration

    def _iterate(self) -> Iterator[Batch]:
        with threads_kept_overlapping():
            yield from self._epoch_batches()

    def _epoch_batches(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.loader.next_epoch = epoch
        order = self.plan.order(epoch)
        batches = iter(self.loader)  # (sets the thread counts to the loader's workers)
        self._epochs.add(batches)  # (close() stops it, where this generator is left suspended)
        # bound here, not looked up in the module at the `except`: a generator left suspended
        # by a stop signal (its frame kept by the traceback) is closed only at interpreter
        # exit, after module globals are cleared, and `except <None>` printed "Exception
        # ignored in ... TypeError" under the one stop line
        failure_type, stalled_type = PipelineFailure, Stalled
        try:
            for b, (images, labels, *rest) in enumerate(batches):
                idx = torch.from_numpy(np.asarray(
                    order[b * self.batch_size:(b + 1) * self.batch_size], dtype=np.int64))
                # normalise = a new tensor, labels cloned: nothing refers to ffcv's buffers,
                # which the next epoch reuses (ReusingLoader.epoch_buffers)
                yield Batch(self.normalize(images), labels.to(torch.int64, copy=True), idx,
                            self.normalize(rest[0]) if rest else None)
        except failure_type as failure:
            raise self._damage_error(failure) from None
        except stalled_type as stalled:
            raise stalled.error("ffcv's epoch thread", self.split, "a decode stuck on storage "
                                "that stopped answering, such as a network mount, or a thread "
                                "that hung") from None
        finally:  # left early (break, an exception) or not: the epoch's thread has ended
            self._stop_epoch(batches)
        self.epoch = epoch + 1

    def _damage_error(self, failure: PipelineFailure) -> Exception:
        """The one-line error for a failed ffcv batch: PIL re-reads the batch's JPEGs straight
        from the beton (ffcv's decoder says only *that* it failed) and the first damaged sample
        is named. A pipeline exception with every image intact is re-raised as it was (a bug,
        not the data)."""
        suspects = failure.failed if failure.failed.size else failure.indices
        bad = damaged_samples(self.beton, suspects)
        advice = DAMAGED_SAMPLE_HINT.format(root=self.beton.parent)
        if bad:
            (i, why), more = bad[0], [j for j, _ in bad[1:]]
            also = f" (also damaged in this batch: samples {more})" if more else ""
            return DataError(f"sample {i} of split {self.split!r} in {self.beton} is damaged "
                             f"(PIL: {why}){also}; {advice}")
        if failure.error is not None:
            return failure.error
        return DataError(f"ffcv's JPEG decoder rejects sample(s) {failure.failed.tolist()} of "
                         f"split {self.split!r} in {self.beton} (PIL reads them); {advice}")
