"""The interface every masked loader implements (ffcv, WebDataset, GPU decode).

Code that trains or scores takes a :class:`MaskedLoader` and never needs to know which file
format or decoder feeds it: all three visit the same samples in the same order for a given
:class:`~ffcv_dp4tl.data.sampling.EpochPlan` and apply the same
:class:`~ffcv_dp4tl.data.transforms.AugSpec`.
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Protocol, runtime_checkable

import torch

from ..errors import DP4TLError
from .resources import env_int
from .sampling import Batch, EpochPlan, check_resolution
from .transforms import AugSpec

#: seconds a loader waits for its next batch before it stops with :class:`LoaderTimeout`
#: (``$DP4TL_LOADER_TIMEOUT`` sets it; 0 = wait forever), whichever loader it is: the
#: WebDataset loader's worker processes, ffcv's epoch thread, the GPU-decode loader's
#: read-ahead threads. What it guards against: a WebDataset worker forked from a process that
#: runs threads can hang in CPython's post-fork setup (the hazard of fork with threads; a
#: cluster audit saw it once in 23 torchrun launches): it stays alive, so torch never notices;
#: a read from storage that stopped answering (a network mount) blocks a decode thread for
#: good. Without a timeout the run waited forever, burning its allocation. A batch takes
#: seconds (ImageNet at batch 1024: ~10 s on one slow core); 300 s leaves room for a slow or
#: cold network mount without leaving a stuck run to burn a scheduler's allocation for long.
LOADER_TIMEOUT_S = 300
#: the environment variable that sets :data:`LOADER_TIMEOUT_S`
TIMEOUT_ENV = "DP4TL_LOADER_TIMEOUT"


def loader_timeout() -> int:
    """``$DP4TL_LOADER_TIMEOUT`` in whole seconds (unset or blank: :data:`LOADER_TIMEOUT_S`);
    anything but a whole number >= 0 is one line naming the variable."""
    if not os.environ.get(TIMEOUT_ENV, "").strip():
        return LOADER_TIMEOUT_S
    return env_int(TIMEOUT_ENV, LOADER_TIMEOUT_S, 0, "give the seconds to wait for a data "
                   "loader's next batch (0 = wait forever), or unset it for the default "
                   f"{LOADER_TIMEOUT_S}")


def checked_timeout(timeout: float | None) -> float:
    """A loader's ``timeout`` argument in seconds: None reads :func:`loader_timeout`; else a
    number >= 0 (0 = wait forever), anything else one line."""
    if timeout is None:
        return float(loader_timeout())
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or timeout < 0):
        raise DP4TLError(f"timeout must be a number of seconds >= 0 (0 = wait forever), got "
                         f"{timeout!r}")
    return float(timeout)


class LoaderTimeout(DP4TLError):
    """No batch came from a loader within its timeout (the message says why that happens and
    what to do); what the loader ran (worker processes, threads) has been stopped or left."""


class Stalled(Exception):
    """A loader's threads (ffcv's epoch thread, the GPU-decode read-ahead threads) delivered no
    batch within ``seconds``; ``stopped``: whether they then ended (one stuck in a read from
    storage that stopped answering cannot be stopped; a daemon, it ends with the process).
    Raised where the threads are run; the loader, which knows its split, turns it into the
    :class:`LoaderTimeout` line (:meth:`error`)."""

    def __init__(self, seconds: float, stopped: bool):
        super().__init__(f"no batch in {seconds:g} s")
        self.seconds, self.stopped = seconds, stopped

    def error(self, who: str, split: str, causes: str) -> LoaderTimeout:
        """The one line: ``who`` delivered no batch of ``split`` (likely ``causes``)."""
        return LoaderTimeout(timeout_line(
            who, split, self.seconds, causes, "its threads were stopped" if self.stopped
            else "the stuck thread was left to end with the process"))


def timeout_line(who: str, split: str, seconds: float, causes: str, after: str) -> str:
    """The one line of a :class:`LoaderTimeout`: ``who`` delivered no batch of ``split`` in
    ``seconds`` (likely ``causes``); ``after``: what became of it. Then what to do, the same
    for every loader."""
    return (f"{who} delivered no batch of split {split!r} in {seconds:g} s ({causes}); "
            f"{after}: rerun the command (a training run resumes from its last checkpoint); "
            f"{TIMEOUT_ENV}=SECONDS sets the wait (0 = wait forever)")


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

    def close(self) -> None:
        """End the loader's worker processes and read-ahead threads and close its files now,
        not when it is collected; iterating again starts them afresh."""
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

    def close(self) -> None:
        """Nothing runs beside the caller here (:meth:`MaskedLoader.close`); a loader that
        runs threads, processes or files overrides it."""
