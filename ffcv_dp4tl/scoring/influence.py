"""Influence of source training samples on held-out samples through the last layer (INFMAX,
INFSUM), in closed form.

DP4TL compares against INFMAX and INFSUM, citing Feldman & Zhang (NeurIPS 2020, "What neural
networks memorize and why"), whose influence of training sample ``i`` on test sample ``j`` is
the change of ``j``'s correctness when ``i`` is left out of training, aggregated per training
sample by its max (INFMAX) or sum (INFSUM) over test samples. The paper does not say how it
estimated them: it cites Feldman & Zhang [53] for both and nothing else (Koh & Liang 2017, its
ref. [19], appears only among the influence-function DP methods of its introduction and related
work), and the authors' released code has no INFMAX/INFSUM. Estimating Feldman & Zhang's
influence by subsampled retraining needs thousands of models, so — our choice, not the paper's
(docs/deviations.md) — we use the closed-form influence function of Koh & Liang (2017)
restricted to the last linear layer ``z = W h + b`` of the surrogate, whose cross-entropy loss is
convex in ``θ = [W b]``:

    I(i, j) = ∇ℓ_j(θ)ᵀ (H + λI)⁻¹ ∇ℓ_i(θ),   H = (1/n) Σ_i ∇²ℓ_i(θ)

``I(i, j) > 0`` means up-weighting (keeping) training sample ``i`` lowers the loss of held-out
sample ``j``: ``I = -dℓ_j/dε`` for ``θ_ε = argmin (1/n) Σ ℓ + (λ/2)|θ|² + ε ℓ_i`` (exact for a
model trained to that optimum; ``tests/scoring/test_indomain_baselines.py`` checks it by finite
differences). Per sample, with ``p`` the softmax output, ``e = p - onehot(y)`` and
``a = [h, 1]``: ``∇ℓ = e ⊗ a`` and ``∇²ℓ = (diag p - p pᵀ) ⊗ a aᵀ``.

Two Hessians: ``exact`` (the full ``C(D+1)``-square matrix, for small heads) and ``kfac``
(Kronecker-factored, ``H ≈ G ⊗ A`` with ``G = mean(diag p - p pᵀ)``, ``A = mean(a aᵀ)``,
each damped by ``√λ``), for which ``I(i, j) = (e_jᵀ G⁻¹ e_i)(a_jᵀ A⁻¹ a_i)`` costs
``O(C + D)`` per pair. ``auto`` picks exact up to :data:`EXACT_MAX_PARAMS` parameters.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .ranking import ScoringError, as_vector, check_ids

#: ``hessian="auto"`` inverts the exact last-layer Hessian up to this many parameters
EXACT_MAX_PARAMS = 4096
_CHUNK = 4096


def _matrix(x: Any, name: str) -> np.ndarray:
    """A finite 2-D float64 array (features keep their precision: float64 stays float64)."""
    if type(x).__module__.split(".")[0] == "cupy":
        x = x.get()
    a = np.asarray(x)
    if a.ndim != 2 or a.dtype.kind not in "fiu":
        raise ScoringError(f"{name} must be a numeric (N, D) array, got shape {a.shape}, dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ScoringError(f"{name} contains NaN/Inf")
    return a


def _inputs(features: Any, probs: Any, labels: Any, what: str
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a = [h, 1], p, e = p - onehot(y)) as float64."""
    h = _matrix(features, f"{what} features".strip())
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != h.shape[0]:
        raise ScoringError(f"{what} probs must be (N, C) with N = {h.shape[0]} rows, got shape "
                           f"{p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ScoringError(f"{what} probs rows must be softmax outputs (non-negative, sum 1)")
    y = as_vector(labels, f"{what} labels", kind="i")
    if y.shape[0] != h.shape[0]:
        raise ScoringError(f"{what} labels has {y.shape[0]} entries but features has "
                           f"{h.shape[0]} rows; they must match")
    check_ids(y, p.shape[1], f"{what} labels", "num_classes")
    a = np.concatenate([h, np.ones((h.shape[0], 1))], axis=1)
    e = p.copy()
    e[np.arange(len(y)), y] -= 1.0
    return a, p, e


def last_layer_hessian(features: Any, probs: Any) -> np.ndarray:
    """Exact Hessian of the mean cross-entropy w.r.t. ``vec([W b])`` (row-major, class-major:
    index ``c·(D+1) + j``): ``(1/n) Σ (diag p - p pᵀ) ⊗ a aᵀ``, float64 (P, P)."""
    h = _matrix(features, "features")
    a = np.concatenate([h, np.ones((h.shape[0], 1))], axis=1)
    p = np.asarray(probs, dtype=np.float64)
    n, c, d = a.shape[0], p.shape[1], a.shape[1]
    out = np.zeros((c, d, c, d))
    for s in range(0, n, 256):
        pp, aa = p[s:s + 256], a[s:s + 256]
        S = -np.einsum("ic,id->icd", pp, pp)
        S[:, np.arange(c), np.arange(c)] += pp
        out += np.einsum("icd,ij,ik->cjdk", S, aa, aa)
    return out.reshape(c * d, c * d) / n


def per_sample_gradients(features: Any, probs: Any, labels: Any) -> np.ndarray:
    """``∇ℓ_i = e_i ⊗ a_i`` for every sample, float64 (N, C·(D+1)) (same layout as the Hessian)."""
    a, _, e = _inputs(features, probs, labels, "")
    return np.einsum("ic,id->icd", e, a).reshape(a.shape[0], -1)


def _resolve(hessian: str, num_params: int) -> str:
    if hessian not in ("auto", "exact", "kfac"):
        raise ScoringError(f"hessian must be auto, exact or kfac, got {hessian!r}")
    if hessian == "auto":
        return "exact" if num_params <= EXACT_MAX_PARAMS else "kfac"
    return hessian


def influence_matrix(train_features: Any, train_probs: Any, train_labels: Any,
                     eval_features: Any, eval_probs: Any, eval_labels: Any, *,
                     damping: float = 0.01, hessian: str = "auto") -> np.ndarray:
    """``I[i, j]`` for every training sample ``i`` and held-out sample ``j``: float64 (N, M).
    Small problems only (tests, inspection); :func:`influence_scores` streams the same values."""
    rows = []
    _stream(train_features, train_probs, train_labels, eval_features, eval_probs, eval_labels,
            damping, hessian, lambda s, block: rows.append(block))
    return np.concatenate(rows, axis=0)


def influence_scores(train_features: Any, train_probs: Any, train_labels: Any,
                     eval_features: Any, eval_probs: Any, eval_labels: Any, *,
                     damping: float = 0.01, hessian: str = "auto",
                     aggregate: str = "max") -> np.ndarray:
    """INFMAX (``aggregate="max"``: ``max_j I(i, j)``) or INFSUM (``"sum"``: ``Σ_j I(i, j)``)
    per training sample, float64 (N,); higher = more helpful to some / all held-out samples.
    Streams the (N, M) influence matrix in row blocks."""
    if aggregate not in ("max", "sum"):
        raise ScoringError(f"aggregate must be max or sum, got {aggregate!r}")
    out = np.empty(_matrix(train_features, "train features").shape[0])

    def take(start: int, block: np.ndarray) -> None:
        out[start:start + block.shape[0]] = block.max(1) if aggregate == "max" else block.sum(1)

    _stream(train_features, train_probs, train_labels, eval_features, eval_probs, eval_labels,
            damping, hessian, take)
    return out


def _stream(tf, tp, tl, ef, ep, el, damping: float, hessian: str, take) -> None:
    if not (isinstance(damping, (int, float)) and damping >= 0):
        raise ScoringError(f"damping must be a number >= 0, got {damping!r}")
    a_tr, p_tr, e_tr = _inputs(tf, tp, tl, "train")
    a_ev, _, e_ev = _inputs(ef, ep, el, "eval")
    if a_ev.shape[1] != a_tr.shape[1] or e_ev.shape[1] != e_tr.shape[1]:
        raise ScoringError("train and eval features/probs must have the same widths")
    c, d = e_tr.shape[1], a_tr.shape[1]
    mode = _resolve(hessian, c * d)
    if mode == "exact":
        H = last_layer_hessian(a_tr[:, :-1], p_tr) + damping * np.eye(c * d)
        g_ev = np.einsum("ic,id->icd", e_ev, a_ev).reshape(len(a_ev), -1)
        X = _solve_psd(H, g_ev.T)  # (P, M) = H⁻¹ ∇ℓ_j
        for s in range(0, len(a_tr), _CHUNK):
            g = np.einsum("ic,id->icd", e_tr[s:s + _CHUNK], a_tr[s:s + _CHUNK]).reshape(-1, c * d)
            take(s, g @ X)
        return
    gamma = float(np.sqrt(damping))
    n = len(a_tr)
    G = -(p_tr.T @ p_tr) / n
    G[np.diag_indices(c)] += p_tr.mean(0)
    A = (a_tr.T @ a_tr) / n
    Ue = _solve_psd(G + gamma * np.eye(c), e_ev.T).T  # (M, C) = e_jᵀ G⁻¹
    Ua = _solve_psd(A + gamma * np.eye(d), a_ev.T).T  # (M, D+1) = a_jᵀ A⁻¹
    for s in range(0, n, _CHUNK):
        take(s, (e_tr[s:s + _CHUNK] @ Ue.T) * (a_tr[s:s + _CHUNK] @ Ua.T))


def _solve_psd(M: np.ndarray, B: np.ndarray) -> np.ndarray:
    try:
        L = np.linalg.cholesky(M)
    except np.linalg.LinAlgError:
        raise ScoringError("the damped last-layer Hessian is not positive definite; raise "
                           "the damping") from None
    return np.linalg.solve(L.T, np.linalg.solve(L, B))
