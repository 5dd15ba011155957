"""Feature mapping (FM) scores: cluster the source features, let target images vote.

DP4TL-FM is LM for source data without (useful) labels: k-means on the surrogate's source
features defines K pseudo-classes, every target feature votes for its nearest centroid, and
the pseudo-classes with the most votes are kept (``select_classes`` on the vote histogram,
then ``kept_sample_indices`` on the k-means labels). With labels, :func:`class_centroids`
makes the classes themselves the clusters.

All heavy lifting goes through :mod:`ffcv_dp4tl.kernels`, so k-means on 1.28M x 512 features
runs on the GPU (CuPy) when one is present and on the CPU otherwise, with the same results
up to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .. import kernels
from ..contracts import check_seeds
from ..kernels.checks import array_module, as_float32_matrix, is_cupy
from .ranking import ScoringError, as_vector, check_ids, check_positive_int


@dataclass(frozen=True)
class KMeansResult:
    """Output of :func:`kmeans`.

    ``inertia`` holds the sum of squared distances after every assignment pass; its last
    entry belongs to the returned ``labels``/``centroids`` pair, which are always consistent
    (labels are the nearest returned centroid).
    """

    centroids: np.ndarray  # float32 (K, D)
    labels: np.ndarray  # int64 (N,)
    inertia: list[float] = field(default_factory=list)
    n_iter: int = 0  # centroid updates performed
    converged: bool = False  # labels stopped changing or the tol criterion was met
    backend: str = "cpu"
    #: empty clusters moved onto far points, summed over all updates (each costs a host pass
    #: over the N distances; benchmarks report it beside the per-iteration time)
    reseeded: int = 0

    def run_record(self) -> dict[str, Any]:
        """What a scores folder records of the run: whether it converged (labels stopped
        changing) within its ``iters``, and the centroid updates it made; a run stopped by
        ``iters`` keeps centroids one update away from its clusters' means."""
        return {"kmeans_converged": bool(self.converged), "kmeans_updates": int(self.n_iter)}


def _to_host(a: Any) -> np.ndarray:
    return a.get() if is_cupy(a) else np.asarray(a)


def _take_rows(x: Any, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` as a host float32 array, for NumPy (incl. memmap) or CuPy ``x``."""
    if is_cupy(x):
        import cupy

        return np.ascontiguousarray(x[cupy.asarray(rows)].get(), dtype=np.float32)
    return np.ascontiguousarray(np.asarray(x)[rows], dtype=np.float32)


#: the largest squared row norm the float32 distance kernels take: ``||x - c||^2`` of two such
#: rows stays below float32's maximum (3.4e38); above, ``||x||^2`` or a distance overflows to
#: Inf, and every kernel treated the row as a NaN row (cluster 0, or an arbitrary one on the
#: BLAS path)
MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / 4


def check_finite_rows(x: Any, name: str) -> None:
    """Features with a NaN/Inf entry, or too large for float32 distances (a squared norm above
    :data:`MAX_SQUARED_NORM`, entries of about 1e19), are refused (k-means++ seeding and the
    target votes alike): a NaN row compares false with every
    centroid, so the nearest-centroid search gave it cluster 0, and FM counted NaN target
    features as votes for cluster 0."""
    xp = array_module(x)
    # in blocks of ~16M values: a mask of the whole matrix would be 2.6 GB at 1.28M x 2048
    step = max(1, (1 << 24) // max(1, x.shape[1]))
    found = {"NaN/Inf rows": [None, 0], "rows too large for float32 distances": [None, 0]}
    for a in range(0, x.shape[0], step):
        block = x[a:a + step]
        finite = xp.isfinite(block).all(axis=1)
        big = xp.zeros_like(finite)
        # the exact norms only where the cheap bound D * max|x|^2 says they may be too large
        may = finite & (xp.abs(block).max(axis=1, initial=0)
                        > (MAX_SQUARED_NORM / max(1, block.shape[1])) ** 0.5)
        if bool(may.any()):
            b64 = block.astype(xp.float64)
            big = may & (xp.einsum("ij,ij->i", b64, b64) > MAX_SQUARED_NORM)
        for what, bad in (("NaN/Inf rows", ~finite), ("rows too large for float32 distances", big)):
            if bool(bad.any()):
                found[what][1] += int(bad.sum())
                if found[what][0] is None:
                    found[what][0] = a + int(xp.flatnonzero(bad)[0])
    for what, (first, count) in found.items():
        if first is not None:
            why = f" (squared norm above {MAX_SQUARED_NORM:.1e})" if "large" in what else ""
            raise ScoringError(f"{name} contains {what}{why} ({count} of {x.shape[0]}, the first "
                               f"at row {first}); clean the features (or recompute them)")


def _check_seed(seed: Any) -> int:
    """Seeds of k-means: integers >= 0 (contracts.check_seeds, the project's seed rule)."""
    return check_seeds([seed], "seed", ScoringError)[0]


def _check_clusters(k: Any, n: int) -> int:
    """K: a positive integer, at most the ``n`` rows to cluster."""
    k = check_positive_int(k, "k")
    if k > n:
        raise ScoringError(f"k={k} clusters requested but x has only {n} rows; use k <= {n}")
    return k


def _default_init_sample(n: int, k: int) -> int:
    return min(n, max(20 * k, 10_000))


def kmeans_plus_plus(
    x: Any, k: int, *, seed: int = 0, sample: int | None = None
) -> np.ndarray:
    """k-means++ seeding on a seeded subsample of ``x``: float32 (K, D) centroids.

    D^2 sampling costs O(sample * K * D), so it runs on ``sample`` rows (default
    ``max(20K, 10000)``, capped at N) instead of all N: each step is one vectorised GEMV,
    never a Python loop over points. If fewer than K distinct points exist, the remaining
    centroids are drawn uniformly from the not-yet-chosen rows (still deterministic).
    """
    x = as_float32_matrix(x, "x")
    n = x.shape[0]
    k = _check_clusters(k, n)
    seed = _check_seed(seed)
    m = _default_init_sample(n, k) if sample is None else min(n, check_positive_int(sample, "init_sample"))
    if m < k:
        raise ScoringError(f"init_sample={m} is smaller than k={k}; use at least k rows for seeding")
    rng = np.random.default_rng(seed)
    rows = np.arange(n) if m == n else np.sort(rng.choice(n, size=m, replace=False))
    s = _take_rows(x, rows)
    check_finite_rows(s, "x")
    s_norm = np.einsum("ij,ij->i", s.astype(np.float64), s.astype(np.float64))
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(m)
    taken = np.zeros(m, dtype=bool)
    taken[chosen[0]] = True

    def sq_dist_to(i: int) -> np.ndarray:
        dot = (s @ s[i]).astype(np.float64)
        return np.maximum(s_norm - 2.0 * dot + s_norm[i], 0.0)

    pot = sq_dist_to(int(chosen[0]))
    pot[taken] = 0.0
    for j in range(1, k):
        total = float(pot.sum())
        if total > 0.0 and np.isfinite(total):
            cum = np.cumsum(pot)
            i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
            i = min(i, m - 1)
            if taken[i]:  # only reachable through float round-off at the top end
                i = int(np.flatnonzero(~taken & (pot > 0))[-1])
        else:
            free = np.flatnonzero(~taken)
            i = int(free[rng.integers(free.size)])
        chosen[j] = i
        taken[i] = True
        np.minimum(pot, sq_dist_to(i), out=pot)
        pot[taken] = 0.0
    return s[chosen].copy()


def _reseed_empty(centroids: np.ndarray, counts: np.ndarray, d2: Any, x: Any) -> int:
    """Move every empty cluster onto one of the points farthest from their centroid.

    Points are taken in order of (distance desc, row index asc), the j-th empty cluster (by
    id) getting the j-th point, so the repair is deterministic. Returns how many were empty.
    """
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return 0
    dist = _to_host(d2)
    m = min(empty.size, dist.size)
    # Only the m farthest points matter: select them in O(N) (a full sort of 1.28M distances
    # cost ~0.2 s per Lloyd iteration), keeping every point tied with the m-th so the
    # (distance desc, row asc) order below is the same as sorting everything.
    kth = np.partition(dist, dist.size - m)[dist.size - m]
    cand = np.flatnonzero(dist >= kth)
    farthest = cand[np.lexsort((cand, -dist[cand].astype(np.float64)))][:m]
    centroids[empty[: farthest.size]] = _take_rows(x, farthest)
    return int(empty.size)


def kmeans(
    x: Any,
    k: int,
    *,
    iters: int = 20,
    tol: float | None = None,
    init: Literal["k-means++", "random"] = "k-means++",
    seed: int = 0,
    backend: str = "auto",
    init_sample: int | None = None,
) -> KMeansResult:
    """Lloyd's k-means on the rows of ``x`` (N, D): assign -> update, ``iters`` times.

    * ``init="k-means++"`` seeds on a subsample (see :func:`kmeans_plus_plus`); ``"random"``
      picks K distinct rows. Both are deterministic given ``seed``.
    * Stops early when no label changes, or when ``tol`` is set and the inertia improved by
      less than ``tol`` relative to the previous pass.
    * Empty clusters are re-seeded onto the points farthest from their centroid (deterministic).
    * On the CUDA backend, ``x`` is copied to the GPU once and stays there.
    * Stopped by ``iters`` before converging, it returns the centroids the returned labels were
      assigned to (scikit-learn's rule too), not the means of those labels' members: the two
      differ by the last, unapplied update. ``converged`` says which; FM and SSP record it in
      ``scores.json`` (:meth:`KMeansResult.run_record`).
    """
    b = kernels.resolve_backend(backend)
    x = as_float32_matrix(x, "x")
    if b == "cuda":
        import cupy

        x = cupy.asarray(x)
    n = x.shape[0]
    k = _check_clusters(k, n)
    seed = _check_seed(seed)
    iters = check_positive_int(iters, "iters")
    if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0):
        raise ScoringError(f"tol must be None or a number >= 0, got {tol!r}")
    if init == "k-means++":
        centroids = kmeans_plus_plus(x, k, seed=seed, sample=init_sample)
    elif init == "random":
        rows = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
        centroids = _take_rows(x, rows)
    else:
        raise ScoringError(f"init must be 'k-means++' or 'random', got {init!r}")

    history: list[float] = []
    prev_labels = None
    converged = False
    n_iter = 0
    reseeded = 0
    assign = kernels.assigner(x, backend=b)  # x-only work (e.g. its BF16 copy) once, not per pass
    while True:
        labels, d2 = assign(centroids)
        inertia = float(d2.sum(dtype=np.float64))
        if not np.isfinite(inertia):
            raise ScoringError("x contains NaN/Inf rows (k-means inertia is not finite); clean the features")
        history.append(inertia)
        if prev_labels is not None and bool((labels == prev_labels).all()):
            converged = True
        elif tol is not None and len(history) > 1 and history[-2] - inertia <= tol * abs(history[-2]):
            converged = True
        if converged or n_iter == iters:
            break
        sums, counts = kernels.update_centroids(x, labels, k, backend=b)
        sums, counts = _to_host(sums), _to_host(counts)
        new = np.empty_like(centroids)
        nonempty = counts > 0
        new[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        new[~nonempty] = centroids[~nonempty]
        reseeded += _reseed_empty(new, counts, d2, x)
        centroids = new
        prev_labels = labels
        n_iter += 1
    return KMeansResult(
        centroids=centroids,
        labels=_to_host(labels).astype(np.int64, copy=False),
        inertia=history,
        n_iter=n_iter,
        converged=converged,
        backend=b,
        reseeded=reseeded,
    )


def feature_mapping_votes(
    target_features: Any, centroids: Any, *, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Votes per cluster (int64 (K,)) and a tie-breaker (float64 (K,)) from the target set.

    Every target feature votes for its nearest centroid. The tie-breaker is the negative sum
    of the voters' squared distances: among clusters with equal votes, the one whose voters
    sit closer ranks higher (pass it as ``select_classes(..., tiebreak=...)``).
    """
    t = as_float32_matrix(target_features, "target_features")
    check_finite_rows(t, "target_features")
    c = as_float32_matrix(centroids, "centroids")
    labels, d2 = kernels.assign_nearest(t, c, backend=backend)
    k = c.shape[0]
    votes = kernels.histogram(labels, k, backend=backend)
    spread = kernels.histogram(labels, k, weights=d2.astype(np.float64), backend=backend)
    return _to_host(votes).astype(np.int64), -_to_host(spread).astype(np.float64)


def feature_mapping_scores(target_features: Any, centroids: Any, *, backend: str = "auto") -> np.ndarray:
    """Number of target features whose nearest centroid is each cluster: int64 (K,)."""
    return feature_mapping_votes(target_features, centroids, backend=backend)[0]


def reciprocal_rank_votes(target_features: Any, centroids: Any, *, rows: int = 2048) -> np.ndarray:
    """How near each centroid lies to the target: float64 (K,), the sum over target features of
    ``1 / rank`` of the centroid among that feature's centroids (nearest = rank 1; equal
    distances: lower id first, as the votes). FM's tie-break of equal votes.

    Why this, not the cluster's size (used before 2026-12-03): with K = 2000 and a target of a
    few thousand images, most clusters get no vote, and at low ratios the kept slots were filled
    with the *largest* unvoted clusters, so FM kept far more samples than ``1 - ratio`` for
    reasons unrelated to the target. Like LM's softmax mass, this orders the ties by the target
    itself, and it is scale-free (features are not normalised) and positive, so several
    targets' values combine as their scores do. Distances in float64 on the host, ``rows``
    target features at a time (N_t x K x D = 75k x 2000 x 512, Food-101's train split: about
    half a minute on 2 CPU cores, beside minutes of feature extraction)."""
    t = np.asarray(_to_host(as_float32_matrix(target_features, "target_features")), np.float64)
    check_finite_rows(t, "target_features")
    c = np.asarray(_to_host(as_float32_matrix(centroids, "centroids")), np.float64)
    if t.shape[1] != c.shape[1]:
        raise ScoringError(f"centroids has D={c.shape[1]} but target_features has D={t.shape[1]}")
    k = c.shape[0]
    weights = 1.0 / np.arange(1, k + 1)
    c2 = (c * c).sum(1)
    out = np.zeros(k)
    for lo in range(0, t.shape[0], rows):
        x = t[lo:lo + rows]
        d2 = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + c2[None, :]
        order = np.argsort(d2, axis=1, kind="stable")
        out += np.bincount(order.ravel(), weights=np.tile(weights, x.shape[0]), minlength=k)
    return out


def class_centroids(features: Any, labels: Any, num_classes: int, *, backend: str = "auto") -> np.ndarray:
    """Mean feature of every class: float32 (num_classes, D), the supervised FM variant.

    Using class means as centroids makes FM vote over real source classes. Every class must
    have at least one sample (an empty class has no mean; the error lists them).
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    f = as_float32_matrix(features, "features")
    check_finite_rows(f, "features")
    lab = as_vector(labels, "labels", kind="i")
    if lab.shape[0] != f.shape[0]:
        raise ScoringError(f"labels has {lab.shape[0]} entries but features has {f.shape[0]} rows; they must match")
    check_ids(lab, num_classes, "labels", "num_classes")
    sums, counts = kernels.update_centroids(f, lab, num_classes, backend=backend)
    sums, counts = _to_host(sums), _to_host(counts)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        shown = ", ".join(str(int(i)) for i in missing[:10])
        more = f" (+{missing.size - 10} more)" if missing.size > 10 else ""
        raise ScoringError(f"classes without samples: {shown}{more}; check labels / num_classes")
    return (sums / counts[:, None]).astype(np.float32)
