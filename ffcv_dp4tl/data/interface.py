"""The interface every masked loader implements (ffcv, WebDataset, GPU decode).

Code that trains or scores takes a :class:`MaskedLoader` and never needs to know which file
format or decoder feeds it: all three visit the same samples in the same order for a given
:class:`~ffcv_dp4tl.data.sampling.EpochPlan` and apply the same
:class:`~ffcv_dp4tl.data.transforms.AugSpec`.
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch

from .sampling import Batch, EpochPlan, check_resolution
from .transforms import AugSpec


@runtime_checkable
class MaskedLoader(Protocol):
    """Iterates :class:`Batch` es (normalised images on ``device``, labels, sample indices) of
    the samples ``plan`` keeps, one epoch per iteration."""

    plan: EpochPlan
    aug: AugSpec
    batch_size: int
    drop_last: bool
    device: torch.device
    #: the epoch the next iteration reads (set_epoch selects it; a full pass increments it)
    epoch: int

    @property
    def resolution(self) -> int:
        """Output side length in pixels of the next epoch."""
        ...

    def set_epoch(self, epoch: int, resolution: int | None = None,
                  next_resolution: int | None = None, start_batch: int = 0) -> None:
        """Select the epoch (order, crops) and, for progressive resizing, the resolution.
        ``next_resolution``: epoch ``epoch + 1`` follows at that resolution (a loader may start
        building its first batches early; the WebDataset loader does); None: no promise.
        ``start_batch``: the epoch's first ``start_batch`` batches are not read (a run resumed
        from a mid-epoch checkpoint: :meth:`~.sampling.EpochPlan.start_at_batch`)."""
        ...

    def __len__(self) -> int:
        """Batches the next epoch's iteration yields on this rank."""
        ...

    def __iter__(self) -> Iterator[Batch]:
        ...


def checked_sizes(resolution: int | None, next_resolution: int | None) -> tuple[int | None, int | None]:
    """``set_epoch``'s resolution and next-epoch hint, each None or a number of pixels
    (:func:`~.sampling.check_resolution`), checked before a loader changes anything."""
    return tuple(None if v is None else check_resolution(v, what)  # type: ignore[return-value]
                 for v, what in ((resolution, "resolution"), (next_resolution, "next_resolution")))


class PlanLoaderBase:
    """What the three loaders share: batches per epoch from the plan, the AugSpec's flags as
    attributes, and a ``set_epoch`` that records epoch and resolution (ffcv extends it to reach
    its live decoders). Subclasses set ``plan``, ``aug``, ``batch_size``, ``drop_last``,
    ``epoch`` and, unless they compute it, ``resolution``."""

    plan: EpochPlan
    aug: AugSpec
    batch_size: int
    drop_last: bool
    epoch: int

    @property
    def train(self) -> bool:
        return self.aug.train

    @property
    def views(self) -> int:
        return self.aug.views

    @property
    def crop_scale(self) -> tuple[float, float]:
        return self.aug.crop_scale

    def set_epoch(self, epoch: int, resolution: int | None = None,
                  next_resolution: int | None = None, start_batch: int = 0) -> None:
        """Select the epoch (order, crops), the batch it starts at and, for progressive
        resizing, the resolution (``next_resolution``, a hint about the next epoch, is not used
        here)."""
        resolution, _ = checked_sizes(resolution, next_resolution)
        self.start_epoch_at(epoch, start_batch)
        if resolution is not None:
            self.resolution = resolution

    def start_epoch_at(self, epoch: int, start_batch: int) -> None:
        """``set_epoch``'s epoch and first batch (every loader's ``set_epoch`` calls it)."""
        self.plan.start_at_batch(epoch, start_batch, self.batch_size, self.drop_last)
        self.epoch = epoch

    def __len__(self) -> int:
        return self.plan.num_batches(self.batch_size, self.drop_last, epoch=self.epoch)
