"""Who reads what, each epoch: mask → per-epoch order → this rank's part.

Both loaders (FFCV and WebDataset) use :class:`EpochPlan`, so the two formats visit the same
samples in the same order for a given seed. Across ranks, an eval plan covers every masked
sample exactly once per epoch; a train plan (``even``) first drops the last ``n mod world_size``
samples of the epoch's order, so every rank holds as many samples and takes as many steps.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

# (with the contracts, which recipes and up-front checks read without torch; importable from here)
from ..contracts.images import MAX_RESOLUTION, check_resolution  # noqa: F401
from ..errors import DataError
from .masks import epoch_order, shard_for_rank


class Batch(NamedTuple):
    images: torch.Tensor  # float, normalised, NCHW, on the loader's device
    labels: torch.Tensor  # int64
    indices: torch.Tensor  # int64 sample indices into the split (file order)
    # a second, independently augmented view of the same samples (loaders made with views=2,
    # for two-view self-supervised recipes such as MoCo); None otherwise
    images2: torch.Tensor | None = None


def check_size(value: Any, what: str) -> int:
    """A loader's ``batch_size``: a positive integer; a bool, a float or a string is none.
    Checked before any worker runs: 0 was a ZeroDivisionError inside ffcv."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DataError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values (both or neither: one alone would be dropped and
    this process would read every rank's samples), else torch.distributed's, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise DataError(f"give rank and world_size together, or neither (torch.distributed's "
                        f"are used then); got rank={rank!r}, world_size={world_size!r}")
    if rank is not None and world_size is not None:
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in (rank, world_size)) \
                or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank must be an integer in [0, world_size) and world_size an integer "
                            f">= 1; got rank={rank!r}, world_size={world_size!r}")
        return int(rank), int(world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class EpochPlan:
    """Which samples of a mask each rank reads in each epoch, in which order: one plan shared by
    every loader (ffcv, WebDataset, GPU decode) and every rank, so a masked epoch is the same
    whatever reads it. ``indices``: the mask's sorted, unique sample indices; ``shuffle``:
    a new seeded order per epoch (else the mask's order); ``rank`` / ``world_size``: this
    rank's share (every ``world_size``-th sample from position ``rank``); ``even``: see below.
    Checked when made: a plan over a list with repeats or an impossible rank read wrong samples
    or failed an epoch later (Python API review)."""

    indices: np.ndarray  # the mask (sorted sample indices)
    shuffle: bool
    seed: int
    rank: int = 0
    world_size: int = 1
    # training: every rank gets floor(n / world_size) samples (the epoch's last n mod world_size
    # are not read that epoch, a different few each shuffled epoch), so under DDP every rank takes
    # the same steps at the same learning rates; a rank with one batch more would step alone
    # and its momentum would part from the others' (DistributedSampler's drop_last=True rule)
    even: bool = False
    _cached: tuple[int, np.ndarray] | None = field(default=None, init=False, repr=False,
                                                   compare=False)
    #: (epoch, batch, first, stop): that epoch starts at its batch ``batch``, i.e. at position
    #: ``first`` of its global order, and ends before ``stop`` (:meth:`start_at_batch`: a run
    #: resumed from a mid-epoch checkpoint); None: every epoch whole
    _start: tuple[int, int, int, int | None] | None = field(default=None, init=False,
                                                             repr=False, compare=False)

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise DataError(f"EpochPlan indices must be a 1-D array of sample indices (a mask's "
                            f".indices), got shape {idx.shape}, dtype {idx.dtype}")
        idx = idx.astype(np.int64)  # (first: np.diff wraps around on unsigned integers)
        if idx.size and (idx[0] < 0 or np.any(np.diff(idx) <= 0)):
            raise DataError("EpochPlan indices must be sorted, unique and >= 0 (a mask's "
                            "indices: make one with make_mask or mask_from_classes)")
        self.indices = idx
        self.rank, self.world_size = dist_info(self.rank, self.world_size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise DataError(f"EpochPlan seed must be an integer, got {self.seed!r}")

    def order(self, epoch: int) -> np.ndarray:
        """This rank's visiting order for ``epoch`` (memoised: ffcv's traversal and the index
        attachment both ask for it, and a 1.28M-sample permutation is worth computing once)."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise DataError(f"an epoch is an integer >= 0 (the first is 0), got {epoch!r}")
        cached = self._cached
        if cached is None or cached[0] != epoch:
            full = epoch_order(self.indices, epoch, self.seed, self.shuffle)
            if self.even:
                full = full[:len(full) - len(full) % self.world_size]
            if self._start is not None and self._start[0] == epoch:
                full = full[self._start[2]:self._start[3]]
            self._cached = cached = (epoch, shard_for_rank(full, self.rank, self.world_size))
        return cached[1]

    def start_at_batch(self, epoch: int, batch: int, batch_size: int, drop_last: bool) -> None:
        """Begin ``epoch`` at its batch ``batch`` (0: the whole epoch; the other epochs stay
        whole). A run resumed from a checkpoint written ``batch`` steps into the epoch then
        reads exactly the batches it had not trained, in the order it would have read them.
        ``batch_size`` is this rank's.

        The part skipped is counted on the epoch's global order, so the rest does not depend
        on how many ranks resume it: global batch ``j`` is positions ``[j*B, (j+1)*B)`` of that
        order on any number of ranks (B the global batch; rank ``r`` takes every
        ``world_size``-th sample from position ``r``), and skipping ``batch`` batches on every
        rank skips the first ``batch * B`` positions."""
        self._start, self._cached = None, None
        whole = self.num_batches(batch_size, drop_last)
        if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) \
                or not 0 <= batch <= whole:
            raise DataError(f"an epoch of {whole} batches cannot start at batch {batch!r}")
        if batch:
            b = batch_size * self.world_size
            self._start = (int(epoch), int(batch), int(batch) * b,
                           whole * b if drop_last else None)

    def aug_seed(self, epoch: int) -> int:
        """The epoch's augmentation seed: loaders that draw their own crops and flips
        (WebDataset, GPU decode) feed it to :func:`~ffcv_dp4tl.data.transforms.crop_draws`,
        so every loader and rank crops a sample the same way in a given (seed, epoch)."""
        return int(np.random.default_rng([self.seed, epoch, 7]).integers(2**31))

    def samples_per_epoch(self) -> int:
        n = len(self.indices)
        if self.even:
            return n // self.world_size
        return n // self.world_size + (1 if self.rank < n % self.world_size else 0)

    def num_batches(self, batch_size: int, drop_last: bool, epoch: int | None = None) -> int:
        """Batches per epoch on this rank; with ``epoch``, those that epoch still reads (fewer
        when it starts at a later batch: :meth:`start_at_batch`)."""
        n = self.samples_per_epoch()
        whole = n // batch_size if drop_last else -(-n // batch_size)
        if epoch is not None and self._start is not None and self._start[0] == epoch:
            return whole - self._start[1]
        return whole
