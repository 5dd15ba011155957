"""Masked FFCV loading that stays alive across epochs and resolution changes.

Design notes (each works around a known ffcv limitation):

* The mask is fixed when the Loader is built (``indices=``); changing indices on a live Loader
  is unsupported, and the Loader (with its compiled pipeline) is reused for every epoch.
* ffcv's own distributed mode pads like DistributedSampler and QUASI_RANDOM refuses
  ``distributed=True``. We install our own traversal order, :class:`PlanOrder` (a
  ``TraversalOrder`` subclass constructed by ffcv with its own ``plan`` argument), which
  reshuffles the whole mask each epoch and gives every rank a disjoint stride of it.
* ffcv batches carry no sample indices. Batches come out in traversal order, so the indices of
  batch ``b`` are ``order[b*B:(b+1)*B]`` of the order our traversal produced for that epoch.
* Progressive resizing sets ``output_size`` on the live decoder, as ffcv-imagenet does.
* Two views (``views=2``) are a second pipeline reading the same ``image`` field
  (``PipelineSpec("image", decoder=...)``, ffcv 1.0's way to get several outputs per field):
  each view decodes and crops independently.
"""
from __future__ import annotations

from pathlib import Path
import inspect
from typing import Any, Iterator

import numpy as np
import torch

from .sampling import Batch, EpochPlan
from .transforms import AugSpec, Normalize, resolve_aug


def _traversal_order_base():
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
        from ffcv.loader import Loader as loader_cls
    return "order_kwargs" in inspect.signature(loader_cls.__init__).parameters


def plan_order_arguments(plan: EpochPlan, loader_cls=None) -> dict[str, Any]:
    """The ``Loader`` keywords that install :class:`PlanOrder` for ``plan``, the way the
    installed ffcv documents custom orders."""
    plan_order, factory = _order_classes()
    if loader_takes_order_kwargs(loader_cls):
        return {"order": plan_order, "order_kwargs": {"plan": plan}}
    return {"order": factory(plan)}


class FFCVMaskedLoader:
    """Iterate :class:`Batch` es of the masked samples of one beton."""

    def __init__(self, beton: str | Path, plan: EpochPlan, *, batch_size: int,
                 resolution: int, aug: AugSpec | None = None, device: str | torch.device = "cpu",
                 num_workers: int = 2, drop_last: bool | None = None, os_cache: bool = True,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 train: bool | None = None, views: int | None = None,
                 crop_scale: tuple[float, float] | None = None):
        """``aug`` says how images are cropped/flipped; ``train``/``views``/``crop_scale`` are
        the legacy spelling of it (:meth:`AugSpec.from_flags`)."""
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import (CenterCropRGBImageDecoder,
                                           RandomResizedCropRGBImageDecoder)
        from ffcv.loader import Loader
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        aug = resolve_aug(aug, train, views, crop_scale).validate()
        self.aug = aug
        self.plan = plan
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.drop_last = aug.train if drop_last is None else drop_last
        non_blocking = self.device.type == "cuda"

        def to_torch() -> list:  # fresh op instances per pipeline
            return [ToTensor(), ToDevice(self.device, non_blocking=non_blocking), ToTorchImage()]

        def flip() -> list:
            return [RandomHorizontalFlip()] if aug.flip else []

        if aug.train:
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
        label_ops = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(self.device, non_blocking=non_blocking)]
        pipelines = {"image": image_ops, "label": label_ops}
        if aug.views == 2:
            pipelines["image2"] = PipelineSpec("image", decoder=self.decoders[1],
                                               transforms=flip() + to_torch())
        self.loader = Loader(
            str(beton), batch_size=batch_size, num_workers=num_workers, os_cache=os_cache,
            indices=plan.indices, drop_last=self.drop_last, pipelines=pipelines, seed=plan.seed,
            **plan_order_arguments(plan, Loader),
        )
        self.normalize = Normalize(dtype, channels_last).to(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int, resolution: int | None = None) -> None:
        """Select the epoch (order) and, for progressive resizing, the output resolution."""
        self.epoch = epoch
        self.loader.next_epoch = epoch
        if resolution is not None:
            for dec in self.decoders:
                dec.output_size = (resolution, resolution)

    @property
    def resolution(self) -> int:
        return int(self.decoder.output_size[0])

    @property
    def train(self) -> bool:
        return self.aug.train

    def __len__(self) -> int:
        return self.plan.num_batches(self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.loader.next_epoch = epoch
        order = self.plan.order(epoch)
        for b, (images, labels, *rest) in enumerate(self.loader):
            idx = torch.from_numpy(np.asarray(order[b * self.batch_size:(b + 1) * self.batch_size],
                                              dtype=np.int64))
            yield Batch(self.normalize(images), labels.long(), idx,
                        self.normalize(rest[0]) if rest else None)
        self.epoch = epoch + 1
