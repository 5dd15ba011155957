"""Sample-wise pruning baselines the paper compares DP4TL against, on plain arrays.

Every ``*_scores`` function returns one float64 score per source sample where *higher means
keep*; :func:`select_samples` turns scores into the sorted index list to keep.

* Random: uniform scores from a seeded generator.
* MODERATE (Xia et al., ICLR 2023, "Moderate coreset"): distance of each sample's feature to
  its class's coordinate-wise median feature; samples whose distance is closest to the median
  of all those distances are kept (neither the easiest nor the hardest).
* EL2N (Paul et al., 2021): ``||softmax - onehot||_2``, averaged over training runs; hard
  (high-score) samples are kept.
* GraNd (Paul et al., 2021): per-sample gradient norm averaged over runs; for the last layer
  it has the closed form in :func:`grand_last_layer_norms`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels.checks import as_float32_matrix
from .ranking import (
    ScoringError,
    as_vector,
    check_fraction,
    check_ids,
    check_positive_int,
    keep_count,
    rank,
)

_CHUNK = 65536


def random_scores(n: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) scores; keeping the top fraction is a seeded random subset."""
    n = check_positive_int(n, "n")
    return np.random.default_rng(seed).random(n)


def _labels_for(labels: Any, n: int, what: str) -> np.ndarray:
    lab = as_vector(labels, "labels", kind="i")
    if lab.shape[0] != n:
        raise ScoringError(f"labels has {lab.shape[0]} entries but {what} has {n} rows; they must match")
    if int(lab.min()) < 0:
        raise ScoringError(f"labels must be non-negative class ids, found {int(lab.min())}")
    return lab


def moderate_distances(features: Any, labels: Any) -> np.ndarray:
    """L2 distance of each sample's feature to its class median feature: float64 (N,).

    The class "prototype" is the coordinate-wise median (as in the MODERATE reference code),
    computed one class at a time so only one class's rows are copied into memory.
    """
    f = as_float32_matrix(features, "features")
    lab = _labels_for(labels, f.shape[0], "features")
    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lab))])
    dist = np.empty(f.shape[0], dtype=np.float64)
    for c in range(bounds.size - 1):
        rows = order[bounds[c] : bounds[c + 1]]
        if rows.size == 0:
            continue
        block = f[rows].astype(np.float64)
        block -= np.median(block, axis=0)
        dist[rows] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return dist


def moderate_scores(features: Any, labels: Any) -> np.ndarray:
    """MODERATE scores: ``-|d - median(d)|`` with ``d`` from :func:`moderate_distances`.

    The highest scores belong to samples whose distance to their class median is closest to
    the median distance over the whole dataset, so ``select_samples(scores, f)`` keeps the
    "moderate" band of samples the method prescribes.
    """
    d = moderate_distances(features, labels)
    return -np.abs(d - np.median(d))


def _as_prob_stack(probs: Any) -> np.ndarray:
    """(N, C) or (R, N, C) probabilities as an (R, N, C) view (no copy)."""
    if type(probs).__module__.split(".")[0] == "cupy":
        probs = probs.get()
    p = np.asarray(probs)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or min(p.shape) == 0:
        raise ScoringError(
            f"probs must be (num_samples, num_classes) or (runs, num_samples, num_classes), got shape {np.shape(probs)}"
        )
    if p.dtype.kind != "f":
        raise ScoringError(f"probs must be floating point softmax outputs, got dtype {p.dtype}")
    return p


def _check_probs(block: np.ndarray) -> None:
    if not np.isfinite(block).all() or (block < 0).any() or not np.allclose(block.sum(axis=-1), 1.0, atol=1e-3):
        raise ScoringError(
            "probs rows must be finite, non-negative and sum to 1; apply softmax to the logits first"
        )


def el2n_scores(probs: Any, labels: Any) -> np.ndarray:
    """EL2N: ``||p - onehot(y)||_2`` per sample, averaged over runs: float64 (N,).

    ``probs`` is softmax output (N, C), or a stack (R, N, C) from R independent training runs.
    """
    p = _as_prob_stack(probs)
    runs, n, c = p.shape
    lab = _labels_for(labels, n, "probs")
    check_ids(lab, c, "labels", "num_classes")
    out = np.zeros(n, dtype=np.float64)
    for r in range(runs):
        for start in range(0, n, _CHUNK):
            block = p[r, start : start + _CHUNK].astype(np.float64)
            _check_probs(block)
            block[np.arange(block.shape[0]), lab[start : start + _CHUNK]] -= 1.0
            out[start : start + block.shape[0]] += np.sqrt(np.einsum("ij,ij->i", block, block))
    return out / runs


def grand_scores(per_sample_grad_norms: Any) -> np.ndarray:
    """GraNd: per-sample gradient norms (N,) or (R, N), averaged over the R runs."""
    if type(per_sample_grad_norms).__module__.split(".")[0] == "cupy":
        per_sample_grad_norms = per_sample_grad_norms.get()
    g = np.asarray(per_sample_grad_norms)
    if g.ndim == 1:
        g = g[None]
    if g.ndim != 2 or min(g.shape) == 0:
        raise ScoringError(f"per_sample_grad_norms must be (N,) or (runs, N), got shape {np.shape(per_sample_grad_norms)}")
    if g.dtype.kind not in "fiu":
        raise ScoringError(f"per_sample_grad_norms must be numeric, got dtype {g.dtype}")
    g = g.astype(np.float64)
    if not np.isfinite(g).all() or (g < 0).any():
        raise ScoringError("per_sample_grad_norms must be finite and >= 0 (they are norms)")
    return g.mean(axis=0)


def grand_last_layer_norms(features: Any, probs: Any, labels: Any, *, bias: bool = True) -> np.ndarray:
    """Exact per-sample norm of the cross-entropy gradient w.r.t. the last linear layer.

    For logits ``W h + b`` the gradient is ``(p - y) h^T`` for ``W`` and ``p - y`` for ``b``,
    so its Frobenius norm is ``||p - y|| * sqrt(||h||^2 + 1)`` (drop the ``+1`` with
    ``bias=False``). This gives GraNd scores from penultimate features and softmax outputs
    without any backward pass. ``features`` (N, H), ``probs`` (N, C), ``labels`` (N,).
    """
    h = as_float32_matrix(features, "features")
    p = _as_prob_stack(probs)
    if p.shape[0] != 1:
        raise ScoringError("probs must be a single run (N, C) here; call once per run and stack the results")
    if p.shape[1] != h.shape[0]:
        raise ScoringError(f"probs has {p.shape[1]} rows but features has {h.shape[0]}; they must match")
    err = el2n_scores(p[0], labels)
    out = np.empty(h.shape[0], dtype=np.float64)
    for start in range(0, h.shape[0], _CHUNK):
        block = h[start : start + _CHUNK].astype(np.float64)
        out[start : start + block.shape[0]] = np.einsum("ij,ij->i", block, block)
    return err * np.sqrt(out + (1.0 if bias else 0.0))


def select_samples(
    scores: Any, keep_fraction: float, higher_is_better: bool = True, seed: int | None = None
) -> np.ndarray:
    """Indices (sorted int64) of the ``round(keep_fraction * N)`` best-scoring samples.

    ``keep_fraction`` must be in (0, 1]. Ties are broken by lower sample index, or, when
    ``seed`` is given, by a seeded random permutation (useful when many scores are equal);
    either way the result is deterministic.
    """
    s = as_vector(scores, "scores")
    frac = check_fraction(keep_fraction, "keep_fraction", low_open=True, high_open=False)
    m = keep_count(s.shape[0], frac, "samples")
    tie = None if seed is None else np.random.default_rng(seed).permutation(s.shape[0])
    order = rank(s if higher_is_better else -s, None, tie)
    return np.sort(order[:m]).astype(np.int64)
