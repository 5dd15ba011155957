"""Run a surrogate over a masked loader: logits and penultimate features, in sample order.

Scoring needs, per sample of a split, the surrogate's logits (LM, EL2N, GraNd) and/or its
penultimate features (FM, MODERATE, GraNd's last-layer norm). Features are captured with a
forward pre-hook on the classifier head, so any model whose head is an ``nn.Linear`` works
without model-specific code. Outputs are placed by ``Batch.indices``, so the result is in the
split's file order whatever order (or rank) the loader visits samples in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.sampling import Batch


@dataclass
class Predictions:
    indices: np.ndarray  # sample indices (sorted) that were predicted
    logits: np.ndarray | None  # (n, num_classes) float32, rows follow ``indices``
    features: np.ndarray | None  # (n, d) float32


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Iterable[Batch], *, head: torch.nn.Module | None = None,
            want_logits: bool = True, want_features: bool = False, num_samples: int | None = None,
            desc: str = "predict", progress: bool = True,
            autocast_dtype: torch.dtype | None = None) -> Predictions:
    """Eval-mode forward pass over ``loader``; results sorted by sample index."""
    if want_features and head is None:
        raise ValueError("want_features=True needs the model's classifier head module")
    captured: list[torch.Tensor] = []
    hook = None
    if want_features:
        hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    idx_parts, logit_parts, feat_parts = [], [], []
    try:
        bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)
        for batch in bar:
            captured.clear()
            device_type = batch.images.device.type
            with torch.autocast(device_type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                out = model(batch.images)
            idx_parts.append(batch.indices.cpu().numpy())
            if want_logits:
                logit_parts.append(out.float().cpu().numpy())
            if want_features:
                feat_parts.append(captured[-1].flatten(1).float().cpu().numpy())
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
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
                     surrogate_hash: str | None = None, desc: str = "features",
                     progress: bool = True, autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Penultimate features of every sample straight into a resumable memmap feature store.

    Rows are placed by sample index, so nothing bigger than one batch is ever held in RAM;
    the returned array is the finalised store opened as a read-only memmap.
    """
    from .features import FeatureWriter, is_complete, load_features

    if is_complete(path):
        try:
            return load_features(path, expect_dataset_fingerprint=dataset_fingerprint,
                                 expect_surrogate_hash=surrogate_hash)
        except Exception:  # stale store: recompute below (FeatureWriter starts fresh)
            pass
    d = head.in_features
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        with FeatureWriter(path, num_samples, d, dataset_fingerprint=dataset_fingerprint,
                           surrogate_hash=surrogate_hash, resume=False) as writer:
            for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
                captured.clear()
                with torch.autocast(batch.images.device.type, dtype=autocast_dtype,
                                    enabled=autocast_dtype is not None):
                    model(batch.images)
                feats = captured[-1].flatten(1).float().cpu().numpy()
                idx = batch.indices.cpu().numpy()
                # write contiguous runs (the inference loaders visit samples in file order)
                breaks = np.flatnonzero(np.diff(idx) != 1) + 1
                for run in np.split(np.arange(len(idx)), breaks):
                    writer.write(int(idx[run[0]]), feats[run])
            writer.finalize()
    finally:
        hook.remove()
        model.train(was_training)
    return load_features(path)
