"""Run a surrogate over a masked loader: logits and penultimate features, in sample order.

Scoring needs, per sample of a split, the surrogate's logits (LM, EL2N, GraNd) and/or its
penultimate features (FM, MODERATE, GraNd's last-layer norm). Features are captured with a
forward pre-hook on the classifier head, so any model whose head is an ``nn.Linear`` works
without model-specific code. Outputs are placed by ``Batch.indices``, so the result is in the
split's file order whatever order (or rank) the loader visits samples in.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from ..data.sampling import Batch
from ..progress import bar as progress_bar


@dataclass
class Predictions:
    indices: np.ndarray  # sample indices (sorted) that were predicted
    logits: np.ndarray | None  # (n, num_classes) float32, rows follow ``indices``
    features: np.ndarray | None  # (n, d) float32


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


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Iterable[Batch], *, head: torch.nn.Module | None = None,
            want_logits: bool = True, want_features: bool = False, num_samples: int | None = None,
            desc: str = "predict", progress: bool = True,
            autocast_dtype: torch.dtype | None = None) -> Predictions:
    """Eval-mode forward pass over ``loader``; results sorted by sample index."""
    if want_features and head is None:
        raise ValueError("want_features=True needs the model's classifier head module")
    idx_parts, logit_parts, feat_parts = [], [], []
    with _eval_with_head_inputs(model, head if want_features else None) as captured:
        for batch in progress_bar(loader, desc=desc, unit="batch", show=progress):
            captured.clear()
            out = _forward(model, batch.images, autocast_dtype)
            idx_parts.append(batch.indices.cpu().numpy())
            if want_logits:
                logit_parts.append(out.float().cpu().numpy())
            if want_features:
                feat_parts.append(captured[-1].flatten(1).float().cpu().numpy())
    indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
    order = np.argsort(indices, kind="stable")
    if num_samples is not None and len(indices) != num_samples:
        raise RuntimeError(f"{desc}: loader produced {len(indices)} samples, expected {num_samples} "
                           "(use drop_last=False for inference)")
    return Predictions(
        indices=indices[order],
        logits=np.concatenate(logit_parts)[order] if want_logits else None,
        features=np.concatenate(feat_parts)[order] if want_features else None,
    )


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
