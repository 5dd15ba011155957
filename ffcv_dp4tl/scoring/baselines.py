"""Sample-wise pruning baselines the paper compares DP4TL against, on plain arrays.

Every ``*_scores`` function returns one float64 score per source sample where *higher means
keep*; :func:`select_samples` turns scores into the sorted index list to keep.

* Random: uniform scores from a seeded generator.
* MODERATE (Xia et al., ICLR 2023, "Moderate coreset"): distance of each sample's feature to
  its class's coordinate-wise median feature; the samples in a band around the median
  distance are kept (neither the easiest nor the hardest). The reference code sorts the
  distances and keeps the band of *ranks* ``[n(1-f)/2, n(1+f)/2)`` around the median rank
  (:func:`moderate_rank_scores`, the default); :func:`moderate_scores` is this project's older
  variant, a band symmetric in distance *value* ``|d - median(d)|`` — on a skewed distance
  distribution it shifts the kept band towards the dense side.
* SP / SSP (Sorscher et al., NeurIPS 2022, "Beyond neural scaling laws"): distance of each
  sample's (L2-normalised) embedding to its class prototype (SP, supervised: class-mean
  embedding) or to its nearest k-means centroid (SSP, self-supervised prototypes):
  :func:`prototype_distances`. Far = hard; the paper keeps hard examples when data is
  abundant (our default) and easy ones when it is scarce.
* FORGET (Toneva et al., ICLR 2019): forgetting events (correct → incorrect between two
  consecutive presentations of a sample during training); never-learned samples count as the
  most forgettable: :func:`forgetting_scores`. Unforgettable samples are pruned first.
* EL2N (Paul et al., 2021): ``||softmax - onehot||_2``, averaged over training runs; hard
  (high-score) samples are kept.
* GraNd (Paul et al., 2021): per-sample gradient norm averaged over runs; for the last layer
  it has the closed form in :func:`grand_last_layer_norms`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..contracts import check_seeds
from ..kernels.checks import MAX_ROWS, as_float32_matrix
from .ranking import (
    ScoringError,
    as_vector,
    check_fraction,
    check_ids,
    check_positive_int,
    keep_count,
    rank,
)

#: bytes of one float64 block these functions work on: features (N, D) are read (from a
#: memory-mapped store, say), converted to float64 and normalised this many bytes at a time
#: (16384 rows at D=512), never as one float64 copy of the matrix (5.2 GB at 1.28M x 512);
#: a few such blocks are alive at once. Tests lower it to measure memory on small inputs.
CHUNK_BYTES = 64 << 20
#: the most rows one distance-to-all-prototypes block holds: BLAS rounds a row's products in a
#: way that can depend on the number of rows in the call, and the nearest-prototype distances
#: were computed in blocks of 4096 rows, which this keeps wherever CHUNK_BYTES allows it
_GEMM_ROWS = 4096


def _chunk_rows(width: int) -> int:
    """Rows of ``width`` float64 values in one :data:`CHUNK_BYTES` block (at least one)."""
    return max(1, CHUNK_BYTES // (8 * max(1, int(width))))


def _feature_matrix(a: Any, name: str) -> np.ndarray:
    """``a`` checked as :func:`as_float32_matrix` checks it (2-D, floating, not empty), but not
    copied: a memory-mapped feature store stays on disk until :func:`_rows` reads a block."""
    a = a if isinstance(a, np.ndarray) else np.asarray(a)
    if a.ndim != 2 or a.dtype.kind != "f" or 0 in a.shape or a.shape[0] > MAX_ROWS:
        as_float32_matrix(a, name)  # raises its error
    return a


def _rows(f: np.ndarray, rows: Any) -> np.ndarray:
    """Rows of ``f`` (a slice or an index array) as C-ordered float64, rounded to float32 first
    as :func:`as_float32_matrix` made the whole matrix (so float64 inputs score as before, and
    a row's sums run in the same order whatever the input's memory order)."""
    return np.ascontiguousarray(f[rows], dtype=np.float32).astype(np.float64)


def random_scores(n: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) scores; keeping the top fraction is a seeded random subset."""
    n = check_positive_int(n, "n")
    return np.random.default_rng(check_seeds([seed], "seed", ScoringError)[0]).random(n)


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
    computed one class at a time and within a class in blocks of :data:`CHUNK_BYTES` (of
    columns for the median, of rows for the distances), so memory stays O(block + N) even
    when one class holds most of the rows.
    """
    f = _feature_matrix(features, "features")
    lab = _labels_for(labels, f.shape[0], "features")
    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lab))])
    dist = np.empty(f.shape[0], dtype=np.float64)
    d = f.shape[1]
    for c in range(bounds.size - 1):
        rows = order[bounds[c] : bounds[c + 1]]
        if rows.size == 0:
            continue
        # the median of a column needs all the class's values of it: a block of columns at a
        # time (the whole class when it fits CHUNK_BYTES), each column's median as before
        if rows.size <= _chunk_rows(d):  # the class fits one block: read it once
            block = _rows(f, rows)
            block -= np.median(block, axis=0)
            dist[rows] = np.sqrt(np.einsum("ij,ij->i", block, block))
            continue
        med = np.empty(d, dtype=np.float64)
        step = _chunk_rows(rows.size)
        for j in range(0, d, step):
            med[j : j + step] = np.median(_rows(f, (rows, slice(j, j + step))), axis=0)
        step = _chunk_rows(d)
        for a in range(0, rows.size, step):
            block = _rows(f, rows[a : a + step])
            block -= med
            dist[rows[a : a + step]] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return dist


def moderate_scores(features: Any, labels: Any) -> np.ndarray:
    """MODERATE scores: ``-|d - median(d)|`` with ``d`` from :func:`moderate_distances`.

    The highest scores belong to samples whose distance to their class median is closest to
    the median distance over the whole dataset, so ``select_samples(scores, f)`` keeps the
    "moderate" band of samples the method prescribes.
    """
    d = moderate_distances(features, labels)
    return -np.abs(d - np.median(d))


def moderate_rank_scores(features: Any, labels: Any | None = None, *,
                         distances: Any | None = None) -> np.ndarray:
    """MODERATE as the reference code selects: a band of distance *ranks* around the median.

    With ``r`` the rank of a sample's distance (0 = nearest its class median, stable order on
    equal distances) and ``n`` samples, the score orders samples by ``|2r - (n - 1)|`` (the
    distance of the rank from the median rank), the nearer side first on a tie, so keeping
    the top ``m`` scores keeps exactly the ``m`` middle ranks. The reference
    (``get_prune_idx``) keeps ranks ``[round(n·(1-f)/2), round(n·(1+f)/2))`` for a keep
    fraction ``f``; the two agree whenever those bounds are whole numbers, otherwise the
    reference's count may differ by one from ``round(f·n)`` (which ``select_samples`` keeps).
    Pass precomputed ``distances`` instead of features/labels to rank those.
    """
    d = moderate_distances(features, labels) if distances is None else as_vector(distances, "distances")
    n = d.shape[0]
    r = np.empty(n, dtype=np.int64)
    r[np.argsort(d, kind="stable")] = np.arange(n)
    off = 2 * r - (n - 1)
    return -(2.0 * np.abs(off) + (off > 0)).astype(np.float64)


def moderate_class_band_scores(distances: Any, labels: Any) -> np.ndarray:
    """MODERATE with a band *per class*, as the authors' ImageNet script selects
    (OPTML-Group/DP4TL src/auxiliary/data_wise_moderate_selection.py: in every class, the ranks
    ``[round(n_c·(1-f)/2), round(n_c·(1+f)/2))`` of the distances to the class median).

    The score is the distance of a sample's rank from its class's median rank as a fraction of
    the class size, ``|2r - (n_c - 1)| / n_c`` (negated; the nearer side first on a tie), so
    keeping the top ``m`` scores keeps the same middle fraction of every class (up to one sample
    of rounding per class), where :func:`moderate_rank_scores`' global band may keep more of the
    classes whose distances sit near the global median."""
    d = as_vector(distances, "distances")
    lab = _labels_for(labels, d.shape[0], "distances")
    out = np.empty(d.shape[0], dtype=np.float64)
    order = np.lexsort((d, lab))  # by class, then distance (stable)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lab))])
    for c in range(bounds.size - 1):
        rows = order[bounds[c]:bounds[c + 1]]
        n = rows.size
        if n == 0:
            continue
        off = 2 * np.arange(n) - (n - 1)
        out[rows] = -(np.abs(off) + 0.5 * (off > 0)) / n
    return out


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.maximum(norms, 1e-12)[:, None]


def l2_normalised_rows(features: Any) -> np.ndarray:
    """The rows of ``features`` L2-normalised: float32 (N, D), each row normalised in float64
    and rounded once, in blocks of :data:`CHUNK_BYTES` (no float64 copy of the matrix)."""
    f = _feature_matrix(features, "features")
    out = np.empty(f.shape, dtype=np.float32)
    step = _chunk_rows(f.shape[1])
    for a in range(0, f.shape[0], step):
        out[a : a + step] = _l2_normalise(_rows(f, slice(a, a + step)))
    return out


def prototype_distances(features: Any, prototypes: Any, assignment: Any | None = None, *,
                        normalize: bool = True) -> np.ndarray:
    """Euclidean distance of every feature to a prototype: float64 (N,).

    ``assignment`` (N,) names each sample's prototype (SP: its class); ``None`` = the nearest
    prototype (SSP: the nearest k-means centroid). With ``normalize`` features and prototypes
    are L2-normalised first, so the distance is a monotone function of the cosine distance
    (Sorscher et al. cluster normalised self-supervised embeddings). The features are read,
    converted to float64 and normalised in blocks of rows (:data:`CHUNK_BYTES`).
    """
    f = _feature_matrix(features, "features")
    c = as_float32_matrix(prototypes, "prototypes").astype(np.float64)
    if f.shape[1] != c.shape[1]:
        raise ScoringError(f"features have {f.shape[1]} dims but prototypes have {c.shape[1]}")
    if normalize:
        c = _l2_normalise(c)
    out = np.empty(f.shape[0], dtype=np.float64)
    if assignment is not None:
        a = _labels_for(assignment, f.shape[0], "features")
        check_ids(a, c.shape[0], "assignment", "num_prototypes")
    cc = np.einsum("ij,ij->i", c, c)
    step = min(_GEMM_ROWS, _chunk_rows(max(f.shape[1], c.shape[0])))
    for start in range(0, f.shape[0], step):
        block = _rows(f, slice(start, start + step))
        if normalize:
            block = _l2_normalise(block)
        if assignment is None:
            d2 = np.einsum("ij,ij->i", block, block)[:, None] - 2 * block @ c.T + cc[None]
            out[start : start + block.shape[0]] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
        else:
            diff = block - c[a[start : start + block.shape[0]]]
            out[start : start + block.shape[0]] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def class_mean_prototypes(features: Any, labels: Any, num_classes: int | None = None, *,
                          normalize: bool = True) -> np.ndarray:
    """Per-class mean of the (normalised) features: float64 (C, D); a class without samples
    gets a zero row (no sample is assigned to it). The sums are taken in blocks of rows
    (:data:`CHUNK_BYTES`), each row added in order of its index as one pass over all rows adds
    them, so the means are the same to the last bit."""
    f = _feature_matrix(features, "features")
    lab = _labels_for(labels, f.shape[0], "features")
    c = int(lab.max()) + 1 if num_classes is None else int(num_classes)
    check_ids(lab, c, "labels", "num_classes")
    sums = np.zeros((c, f.shape[1]))
    step = _chunk_rows(f.shape[1])
    for a in range(0, f.shape[0], step):
        block = _rows(f, slice(a, a + step))
        np.add.at(sums, lab[a : a + step], _l2_normalise(block) if normalize else block)
    return sums / np.maximum(np.bincount(lab, minlength=c), 1)[:, None]


def forgetting_counts(correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """Forgetting events from a (presentations, N) boolean matrix of per-presentation
    correctness (row t = the t-th time each sample was seen): returns (events, ever_learned).
    An event is a correct → incorrect transition between consecutive presentations
    (Toneva et al. 2019); this is the reference for :class:`~ffcv_dp4tl.scoring.
    training_runs.ForgettingRecorder`, which counts the same online."""
    acc = np.asarray(correct, dtype=bool)
    if acc.ndim != 2:
        raise ScoringError(f"correct must be (presentations, samples), got shape {acc.shape}")
    events = (acc[:-1] & ~acc[1:]).sum(axis=0).astype(np.int64)
    return events, acc.any(axis=0)


def forgetting_scores(events: Any, learned: Any) -> np.ndarray:
    """FORGET scores (higher = keep): the number of forgetting events, and for samples never
    learned (never classified correctly) one more than the largest count, so they rank as the
    most forgettable (Toneva et al. treat them as forgotten infinitely often)."""
    ev = as_vector(events, "events")
    le = np.asarray(learned, dtype=bool)
    if le.shape != ev.shape:
        raise ScoringError(f"learned has shape {le.shape} but events has {ev.shape}")
    top = float(ev.max()) + 1.0 if ev.size else 1.0
    return np.where(le, ev, top).astype(np.float64)


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
    step = _chunk_rows(c)
    for r in range(runs):
        for start in range(0, n, step):
            block = p[r, start : start + step].astype(np.float64)
            _check_probs(block)
            block[np.arange(block.shape[0]), lab[start : start + step]] -= 1.0
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
    step = _chunk_rows(h.shape[1])
    for start in range(0, h.shape[0], step):
        block = h[start : start + step].astype(np.float64)
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
    tie = None if seed is None else np.random.default_rng(
        check_seeds([seed], "seed", ScoringError)[0]).permutation(s.shape[0])
    order = rank(s if higher_is_better else -s, None, tie)
    return np.sort(order[:m]).astype(np.int64)
