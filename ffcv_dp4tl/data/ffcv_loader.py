"""Masked FFCV loading that stays alive across epochs and resolution changes.

Design notes (each works around a known ffcv limitation):

* The mask is fixed when the Loader is built (``indices=``); changing indices on a live Loader
  is unsupported, and the Loader (with its compiled pipeline) is reused for every epoch.
* ffcv's own distributed mode pads like DistributedSampler and QUASI_RANDOM refuses
  ``distributed=True``. We install our own traversal order (:class:`_PlanOrder`), which
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
from typing import Iterator

import numpy as np
import torch

from .sampling import Batch, EpochPlan
from .transforms import CENTER_CROP_RATIO, RRC_SCALE, Normalize


def _plan_order_class():
    from ffcv.traversal_order.base import TraversalOrder

    class _PlanOrder(TraversalOrder):
        """A TraversalOrder *instance* that binds itself when ffcv calls it with the Loader.

        ffcv 1.0.2 accepts ``isinstance(order, TraversalOrder)`` and then calls ``order(loader)``,
        so the instance's ``__call__`` finishes the construction.
        """

        def __init__(self, plan: EpochPlan):  # noqa: D401 - no super().__init__: no loader yet
            self.plan = plan
            self.indices = plan.indices
            self.seed = plan.seed
            self.distributed = plan.world_size > 1
            self.sampler = None

        def __call__(self, loader):
            self.loader = loader
            return self

        def sample_order(self, epoch: int):
            return self.plan.order(epoch)

    return _PlanOrder


class FFCVMaskedLoader:
    """Iterate :class:`Batch` es of the masked samples of one beton."""

    def __init__(self, beton: str | Path, plan: EpochPlan, *, batch_size: int, train: bool,
                 resolution: int, device: str | torch.device = "cpu", num_workers: int = 2,
                 drop_last: bool | None = None, os_cache: bool = True,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 views: int = 1, crop_scale: tuple[float, float] = RRC_SCALE):
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import (CenterCropRGBImageDecoder,
                                           RandomResizedCropRGBImageDecoder)
        from ffcv.loader import Loader
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        self.plan = plan
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.drop_last = train if drop_last is None else drop_last
        non_blocking = self.device.type == "cuda"

        def to_torch() -> list:  # fresh op instances per pipeline
            return [ToTensor(), ToDevice(self.device, non_blocking=non_blocking), ToTorchImage()]

        if train:
            self.decoders = [RandomResizedCropRGBImageDecoder((resolution, resolution),
                                                              scale=tuple(crop_scale))
                             for _ in range(views)]
            image_ops = [self.decoders[0], RandomHorizontalFlip()] + to_torch()
        else:
            self.decoders = [CenterCropRGBImageDecoder((resolution, resolution), CENTER_CROP_RATIO)]
            image_ops = [self.decoders[0]] + to_torch()
        self.decoder = self.decoders[0]
        label_ops = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(self.device, non_blocking=non_blocking)]
        pipelines = {"image": image_ops, "label": label_ops}
        if views == 2:
            pipelines["image2"] = PipelineSpec("image", decoder=self.decoders[1],
                                               transforms=[RandomHorizontalFlip()] + to_torch())
        self.loader = Loader(
            str(beton), batch_size=batch_size, num_workers=num_workers, os_cache=os_cache,
            order=_plan_order_class()(plan), indices=plan.indices, drop_last=self.drop_last,
            pipelines=pipelines, seed=plan.seed,
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
