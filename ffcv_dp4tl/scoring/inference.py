"""Run a surrogate over a masked loader: logits and penultimate features, in sample order.

Scoring needs, per sample of a split, the surrogate's logits (LM, EL2N, GraNd) and/or its
penultimate features (FM, MODERATE, GraNd's last-layer norm). Features are captured with a
forward pre-hook on the classifier head, so any model whose head is an ``nn.Linear`` works
without model-specific code. Outputs are placed by ``Batch.indices``, so the result is in the
split's file order whatever order (or rank) the loader visits samples in.

:func:`predict` keeps every sample's logits and features (N × C floats: what Influence needs).
:func:`predict_reduce` keeps only what a per-batch function returns, per-sample values and
per-class sums, so a scorer that needs no more (EL2N, GraNd's last-layer norm, LM) never holds
N × C in memory (at ImageNet-21K scale that matrix alone is hundreds of GB).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..data.sampling import Batch
from ..progress import bar as progress_bar
from .ranking import ScoringError


@dataclass
class Predictions:
    indices: np.ndarray  # sample indices (sorted) that were predicted
    logits: np.ndarray | None  # (n, num_classes) float32, rows follow ``indices``
    features: np.ndarray | None  # (n, d) float32


@dataclass
class BatchResult:
    """What a :func:`predict_reduce` function keeps of one batch."""
    #: per-sample values, name → array whose rows follow the batch's ``indices``
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    #: name → array added up over the batches (integers in int64, the rest in float64)
    sums: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Reduced:
    """:func:`predict_reduce`'s result: the batches' rows in sample order, and the sums."""
    indices: np.ndarray  # sample indices (sorted) that were predicted
    rows: dict[str, np.ndarray]  # name → (n, ...) rows following ``indices``
    sums: dict[str, np.ndarray]  # name → the sum over every batch

#: ``fn(indices, logits, features)`` of :func:`predict_reduce`: int64 (b,), float32 (b, C) or None,
#: float32 (b, D) or None (numpy, on the CPU)
BatchFn = Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], BatchResult]


@contextlib.contextmanager
def _eval_with_head_inputs(model: torch.nn.Module, head: torch.nn.Module | None
                           ) -> Iterator[list[torch.Tensor]]:
    """Eval mode for the block; the inputs of ``head`` (penultimate features) land in the list."""
    captured: list[torch.Tensor] = []
    hook = None
    if head is not None:
        hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        yield captured
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)


def _forward(model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        return model(images)


class _Rows:
    """The batches' rows of one output, one batch after another. With the expected number of
    rows known they are copied into one array of that many rows (a wrong count is an error at
    the end, so rows beyond it are not kept); else they are joined at the end."""

    def __init__(self, capacity: int | None):
        self.capacity, self.buf, self.parts, self.n = capacity, None, [], 0

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if self.capacity is None:
            self.parts.append(rows)
        else:
            if self.buf is None:
                self.buf = np.empty((self.capacity,) + rows.shape[1:], dtype=rows.dtype)
            keep = rows[:max(0, self.capacity - self.n)]
            self.buf[self.n:self.n + len(keep)] = keep
        self.n += len(rows)

    def take(self) -> np.ndarray:
        if self.capacity is None:
            out, self.parts = np.concatenate(self.parts), []
            return out
        return self.buf


@torch.no_grad()
def _batches(model: torch.nn.Module, loader: Iterable[Batch], head: torch.nn.Module | None,
             want_logits: bool, want_features: bool, desc: str, progress: bool,
             autocast_dtype: torch.dtype | None
             ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """(indices, logits, features) of every batch of an eval-mode pass, as numpy on the CPU."""
    with _eval_with_head_inputs(model, head if want_features else None) as captured:
        for batch in progress_bar(loader, desc=desc, unit="batch", show=progress):
            captured.clear()
            out = _forward(model, batch.images, autocast_dtype)
            yield (batch.indices.cpu().numpy(),
                   out.float().cpu().numpy() if want_logits else None,
                   captured[-1].flatten(1).float().cpu().numpy() if want_features else None)


@torch.no_grad()
def predict_reduce(model: torch.nn.Module, loader: Iterable[Batch], fn: BatchFn, *,
                   head: torch.nn.Module | None = None, want_logits: bool = True,
                   want_features: bool = False, num_samples: int | None = None,
                   desc: str = "predict", progress: bool = True,
                   autocast_dtype: torch.dtype | None = None) -> Reduced:
    """Eval-mode forward pass over ``loader`` that keeps, of each batch, only what
    ``fn(indices, logits, features)`` returns (a :class:`BatchResult`): its per-sample rows,
    sorted by sample index at the end, and its sums, added up. Nothing bigger than one batch's
    logits or features is held, whatever the number of samples."""
    if want_features and head is None:
        raise ValueError("want_features=True needs the model's classifier head module")
    rows: dict[str, _Rows] = {}
    sums: dict[str, np.ndarray] = {}
    idx = _Rows(num_samples)
    for indices, logits, features in _batches(model, loader, head, want_logits, want_features,
                                              desc, progress, autocast_dtype):
        try:
            res = fn(indices, logits, features)
        except ScoringError as e:  # (its rows are the batch's: say which samples they are)
            raise ScoringError(f"{desc}, the batch of samples {_span(indices)}: {e}") from e
        for name, value in res.rows.items():
            if len(value) != len(indices):
                raise ValueError(f"{desc}: the per-sample {name!r} of a batch has {len(value)} "
                                 f"rows for its {len(indices)} samples")
            rows.setdefault(name, _Rows(num_samples)).add(value)
        for name, value in res.sums.items():
            value = np.asarray(value)
            if name not in sums:
                sums[name] = value.astype(np.int64 if value.dtype.kind in "biu" else np.float64)
            else:
                sums[name] += value
        idx.add(indices)
    if idx.n == 0:
        raise RuntimeError(f"{desc}: the loader produced no samples")
    if num_samples is not None and idx.n != num_samples:
        raise RuntimeError(f"{desc}: loader produced {idx.n} samples, expected {num_samples} "
                           "(use drop_last=False for inference)")
    for name, r in rows.items():
        if r.n != idx.n:
            raise ValueError(f"{desc}: the per-sample {name!r} was returned for {r.n} of the "
                             f"{idx.n} samples")
    indices = idx.take()
    order = np.argsort(indices, kind="stable")
    in_order = bool((order == np.arange(len(order))).all())  # (then no reordered copy)

    def sorted_rows(r: _Rows) -> np.ndarray:
        a = r.take()
        return a if in_order else a[order]

    return Reduced(indices=indices if in_order else indices[order],
                   rows={name: sorted_rows(r) for name, r in rows.items()}, sums=sums)


def _span(indices: np.ndarray) -> str:
    """A batch's sample indices in a few characters: ``512..767`` or ``3, 9, 40``."""
    ids = np.sort(np.asarray(indices)).tolist()
    if len(ids) > 3 and ids[-1] - ids[0] == len(ids) - 1 == len(set(ids)) - 1:
        return f"{ids[0]}..{ids[-1]}"
    return ", ".join(map(str, ids[:6])) + (", ..." if len(ids) > 6 else "")


def _keep_all(_indices: np.ndarray, logits: np.ndarray | None, features: np.ndarray | None
              ) -> BatchResult:
    return BatchResult(rows={k: v for k, v in (("logits", logits), ("features", features))
                             if v is not None})


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Iterable[Batch], *, head: torch.nn.Module | None = None,
            want_logits: bool = True, want_features: bool = False, num_samples: int | None = None,
            desc: str = "predict", progress: bool = True,
            autocast_dtype: torch.dtype | None = None) -> Predictions:
    """Eval-mode forward pass over ``loader``; results sorted by sample index. Every sample's
    logits (and features) are held: a scorer that needs only a value per sample or a sum per
    class reads them through :func:`predict_reduce` instead."""
    r = predict_reduce(model, loader, _keep_all, head=head, want_logits=want_logits,
                       want_features=want_features, num_samples=num_samples, desc=desc,
                       progress=progress, autocast_dtype=autocast_dtype)
    return Predictions(indices=r.indices, logits=r.rows.get("logits"),
                       features=r.rows.get("features"))


@torch.no_grad()
def extract_to_store(model: torch.nn.Module, head: torch.nn.Module, loader: Iterable[Batch],
                     path, num_samples: int, *, dataset_fingerprint: str | None = None,
                     surrogate_hash: str | None = None, settings: dict | None = None,
                     desc: str = "features", progress: bool = True,
                     autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Penultimate features of every sample straight into a memmap feature store. A complete
    store is reused; an interrupted extraction starts again from the first sample (the loader
    reads the whole split in one pass, and a GPU pass over ImageNet takes minutes).

    Rows are placed by sample index, so nothing bigger than one batch is ever held in RAM;
    the returned array is the finalised store opened as a read-only memmap. A complete store
    is reused only when it was extracted from the same data, surrogate and ``settings`` (how
    ``loader`` reads the images: resolution, crop, format, precision); else it is recomputed.
    """
    from ..errors import DataError
    from .features import FeatureWriter, is_complete, load_features, meta_path

    if is_complete(path):
        try:
            return load_features(path, expect_dataset_fingerprint=dataset_fingerprint,
                                 expect_surrogate_hash=surrogate_hash, expect_extra=settings)
        except DataError:  # stale (other data, surrogate or settings): derived data, redone
            meta_path(path).unlink()  # (the store is then incomplete: the writer starts afresh)
    with _eval_with_head_inputs(model, head) as captured, FeatureWriter(
            path, num_samples, head.in_features, dataset_fingerprint=dataset_fingerprint,
            surrogate_hash=surrogate_hash, extra=settings, resume=False) as writer:
        for batch in progress_bar(loader, desc=desc, unit="batch", show=progress):
            captured.clear()
            _forward(model, batch.images, autocast_dtype)
            feats = captured[-1].flatten(1).float().cpu().numpy()
            idx = batch.indices.cpu().numpy()
            # write contiguous runs (the inference loaders visit samples in file order)
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            for run in np.split(np.arange(len(idx)), breaks):
                writer.write(int(idx[run[0]]), feats[run])
        writer.finalize()
    return load_features(path)
