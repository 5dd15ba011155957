"""Sample-wise baselines (random, MODERATE, EL2N, GraNd) and select_samples."""
from __future__ import annotations

import numpy as np
import pytest

from ffcv_dp4tl.scoring import (
    ScoringError,
    el2n_scores,
    grand_last_layer_norms,
    grand_scores,
    moderate_distances,
    moderate_scores,
    random_scores,
    select_samples,
)

from .helpers import BIG_D, BIG_N, traced_peak, write_big_features


def test_random_scores_seeded():
    a, b = random_scores(100, seed=3), random_scores(100, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, random_scores(100, seed=4))
    assert select_samples(a, 0.25).size == 25


def test_moderate_hand_made():
    # class 0: median feature (1, 0); class 1: median feature (10, 10)
    feats = np.array([[0, 0], [1, 0], [4, 0], [10, 10], [10, 13], [10, 9]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    d = moderate_distances(feats, labels)
    np.testing.assert_allclose(d, [1, 0, 3, 0, 3, 1])
    s = moderate_scores(feats, labels)  # median distance is 1
    np.testing.assert_allclose(s, [0, -1, -2, -1, -2, 0])
    np.testing.assert_array_equal(select_samples(s, 0.5), [0, 1, 5])  # tie at -1: lower index
    with pytest.raises(ScoringError, match="labels has 5 entries but features has 6 rows"):
        moderate_distances(feats, labels[:5])


def test_moderate_uses_coordinatewise_median(rng):
    feats = rng.standard_normal((9, 3)).astype(np.float32)
    labels = np.zeros(9, dtype=np.int64)
    med = np.median(feats.astype(np.float64), axis=0)
    np.testing.assert_allclose(moderate_distances(feats, labels), np.linalg.norm(feats - med, axis=1), rtol=1e-6)


def test_el2n_hand_made_and_runs():
    p = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    y = np.array([0, 2])
    expect = np.array([np.sqrt(0.09 + 0.04 + 0.01), np.sqrt(2.0)])
    np.testing.assert_allclose(el2n_scores(p, y), expect)
    p2 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(el2n_scores(np.stack([p, p2]), y), expect / 2)
    with pytest.raises(ScoringError, match="apply softmax"):
        el2n_scores(np.array([[2.0, -1.0, 0.0]]), [0])
    with pytest.raises(ScoringError, match="labels has 1 entries but probs has 2 rows"):
        el2n_scores(p, [0])
    with pytest.raises(ScoringError, match=r"labels must lie in \[0, 3\)"):
        el2n_scores(p, [0, 3])


def test_grand_scores_and_last_layer_closed_form(rng):
    g = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(grand_scores(g), [2.0, 3.0])
    np.testing.assert_allclose(grand_scores(g[0]), [1.0, 2.0])
    with pytest.raises(ScoringError, match=">= 0"):
        grand_scores([-1.0])

    # closed form vs an explicit gradient of cross-entropy w.r.t. (W, b)
    n, h_dim, c = 5, 4, 3
    h = rng.standard_normal((n, h_dim)).astype(np.float32)
    logits = rng.standard_normal((n, c))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, c, size=n)
    onehot = np.eye(c)[y]
    explicit = np.array(
        [np.sqrt((np.outer(p[i] - onehot[i], h[i]) ** 2).sum() + ((p[i] - onehot[i]) ** 2).sum()) for i in range(n)]
    )
    np.testing.assert_allclose(grand_last_layer_norms(h, p, y), explicit, rtol=1e-6)
    no_bias = np.array([np.linalg.norm(np.outer(p[i] - onehot[i], h[i])) for i in range(n)])
    np.testing.assert_allclose(grand_last_layer_norms(h, p, y, bias=False), no_bias, rtol=1e-6)
    with pytest.raises(ScoringError, match="probs has 4 rows but features has 5"):
        grand_last_layer_norms(h, p[:4], y)


def test_select_samples_fraction_direction_and_ties():
    s = np.array([0.5, 0.9, 0.1, 0.9, 0.3, 0.7])
    np.testing.assert_array_equal(select_samples(s, 0.5), [1, 3, 5])
    np.testing.assert_array_equal(select_samples(s, 0.5, higher_is_better=False), [0, 2, 4])
    np.testing.assert_array_equal(select_samples(s, 1 / 6), [1])  # tie 0.9: lower index
    np.testing.assert_array_equal(select_samples(s, 1.0), np.arange(6))
    out = select_samples(np.zeros(1000), 0.3, seed=7)
    assert out.size == 300 and out.dtype == np.int64
    np.testing.assert_array_equal(out, select_samples(np.zeros(1000), 0.3, seed=7))
    assert not np.array_equal(out, np.arange(300))  # seeded tie-break differs from index order
    np.testing.assert_array_equal(select_samples(np.zeros(10), 0.3), [0, 1, 2])


@pytest.mark.parametrize("call,message", [
    (lambda: random_scores(5, -1), "seed: -1 is negative; seeds are integers >= 0"),
    (lambda: random_scores(5, 1.5), "seed: 1.5 is not an integer"),
    (lambda: random_scores(5, None), "seed: None is not an integer"),  # drew unseeded scores
    (lambda: select_samples(np.arange(5.0), 0.4, seed=-1), "seed: -1 is negative"),
], ids=["random-negative", "random-float", "random-none", "select-negative"])
def test_seeds_are_checked_by_the_seed_rule(call, message):
    """numpy's bare 'expected non-negative integer' before (and random_scores(n, None) drew an
    unseeded, unreproducible selection)."""
    with pytest.raises(ScoringError, match="^" + message.replace("(", r"\(")):
        call()
    np.testing.assert_array_equal(select_samples(np.zeros(5), 0.4, seed=np.int64(1)),
                                  select_samples(np.zeros(5), 0.4, seed=1))


def test_select_samples_errors():
    with pytest.raises(ScoringError, match=r"keep_fraction must be in \(0, 1\], got 0"):
        select_samples([1.0, 2.0], 0)
    with pytest.raises(ScoringError, match=r"keep_fraction must be in \(0, 1\], got 1.5"):
        select_samples([1.0, 2.0], 1.5)
    with pytest.raises(ScoringError, match="keeps none"):
        select_samples([1.0, 2.0], 0.1)
    with pytest.raises(ScoringError, match="scores must be 1-D"):
        select_samples(np.zeros((2, 2)), 0.5)


# ------------------------------------------------------------------ blocks of rows (memory)
# The formulas as they were before the features were read in blocks (one float64 copy of the
# whole matrix, and another for its normalised rows): the blocked code must agree with them.
def _old_l2_normalise(x):
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.maximum(norms, 1e-12)[:, None]


def _old_moderate_distances(features, labels):
    f = np.ascontiguousarray(features, dtype=np.float32)
    lab = np.asarray(labels)
    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lab))])
    dist = np.empty(f.shape[0], dtype=np.float64)
    for c in range(bounds.size - 1):
        rows = order[bounds[c]: bounds[c + 1]]
        if rows.size == 0:
            continue
        block = f[rows].astype(np.float64)
        block -= np.median(block, axis=0)
        dist[rows] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return dist


def _old_prototype_distances(features, prototypes, assignment=None, normalize=True):
    f = np.ascontiguousarray(features, dtype=np.float32).astype(np.float64)
    c = np.ascontiguousarray(prototypes, dtype=np.float32).astype(np.float64)
    if normalize:
        f, c = _old_l2_normalise(f), _old_l2_normalise(c)
    out = np.empty(f.shape[0], dtype=np.float64)
    cc = np.einsum("ij,ij->i", c, c)
    for start in range(0, f.shape[0], 4096):
        block = f[start: start + 4096]
        if assignment is None:
            d2 = np.einsum("ij,ij->i", block, block)[:, None] - 2 * block @ c.T + cc[None]
            out[start: start + block.shape[0]] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
        else:
            diff = block - c[assignment[start: start + block.shape[0]]]
            out[start: start + block.shape[0]] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _old_class_mean_prototypes(features, labels, num_classes, normalize=True):
    f = np.ascontiguousarray(features, dtype=np.float32).astype(np.float64)
    if normalize:
        f = _old_l2_normalise(f)
    sums = np.zeros((num_classes, f.shape[1]))
    np.add.at(sums, labels, f)
    return sums / np.maximum(np.bincount(labels, minlength=num_classes), 1)[:, None]


def _old_ssp_rows(features):
    """SSP's k-means input as it was: ``_l2_normalise(feats.astype(np.float64)).astype(np.float32)``."""
    return _old_l2_normalise(np.asarray(features, dtype=np.float32).astype(np.float64)).astype(np.float32)


_N, _D, _C = 1003, 37, 12  # 1003 rows: no block size below divides it


def _blocked_inputs(tmp_path, rng, kind):
    f = (rng.standard_normal((_N, _D)) + 0.5).astype(np.float64 if kind == "float64" else np.float32)
    y = rng.integers(0, 9, _N)
    y[17] = 9  # class 9: one sample; classes 10 and 11: none
    if kind == "memmap":
        np.save(tmp_path / "f.npy", f)
        f = np.load(tmp_path / "f.npy", mmap_mode="r")
    elif kind == "fortran":
        f = np.asfortranarray(f)
    return f, y


@pytest.mark.parametrize("chunk", [None, 8 * _D * 7, 1], ids=["default", "7-rows", "1-row"])
@pytest.mark.parametrize("kind", ["float32", "memmap", "float64", "fortran"])
def test_blocked_features_match_the_whole_matrix_formulas(tmp_path, rng, monkeypatch, chunk, kind):
    """Every per-row quantity (normalised rows, distances) and the class means (rows added in
    index order either way) are the old values to the last bit; the distances to the nearest of
    all prototypes go through BLAS, whose rounding can depend on the rows per call, so they are
    exact at the default block (4096 rows, as before) and within 1e-12 below it; the samples
    kept are the same."""
    from ffcv_dp4tl.scoring import baselines

    if chunk is not None:
        monkeypatch.setattr(baselines, "CHUNK_BYTES", chunk)
    f, y = _blocked_inputs(tmp_path, rng, kind)
    np.testing.assert_array_equal(moderate_distances(f, y), _old_moderate_distances(f, y))
    for norm in (True, False):
        proto = baselines.class_mean_prototypes(f, y, _C, normalize=norm)
        np.testing.assert_array_equal(proto, _old_class_mean_prototypes(f, y, _C, normalize=norm))
        np.testing.assert_array_equal(baselines.prototype_distances(f, proto, y, normalize=norm),
                                      _old_prototype_distances(f, proto, y, normalize=norm))
        cent = rng.standard_normal((13, _D)).astype(np.float32)
        new = baselines.prototype_distances(f, cent, normalize=norm)
        old = _old_prototype_distances(f, cent, normalize=norm)
        if chunk is None:
            np.testing.assert_array_equal(new, old)
        np.testing.assert_allclose(new, old, rtol=1e-12, atol=0)
        for keep in (0.1, 0.5, 0.9):
            np.testing.assert_array_equal(select_samples(new, keep), select_samples(old, keep))
    np.testing.assert_array_equal(baselines.l2_normalised_rows(f), _old_ssp_rows(f))


@pytest.mark.parametrize("chunk", [8 * 3 * 7, 1], ids=["7-rows", "1-row"])
def test_el2n_and_grand_blocks_change_no_bit(rng, monkeypatch, chunk):
    from ffcv_dp4tl.scoring import baselines

    n, c, h_dim = 1003, 3, 5
    logits = rng.standard_normal((2, n, c))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = rng.integers(0, c, n)
    h = rng.standard_normal((n, h_dim)).astype(np.float32)
    whole = el2n_scores(p, y), grand_last_layer_norms(h, p[0], y)
    monkeypatch.setattr(baselines, "CHUNK_BYTES", chunk)
    np.testing.assert_array_equal(el2n_scores(p, y), whole[0])
    np.testing.assert_array_equal(grand_last_layer_norms(h, p[0], y), whole[1])


@pytest.fixture(scope="module")
def big_features(tmp_path_factory):
    return write_big_features(tmp_path_factory.mktemp("big") / "features.npy")


@pytest.mark.parametrize("what", ["moderate", "class-means", "to-class-mean", "to-nearest",
                                  "normalised-rows"])
def test_feature_functions_never_copy_the_matrix_to_float64(big_features, monkeypatch, what):
    """Each function that reads all source features stays below the size of one float64 copy
    of them (it took two or more: 16 bytes per value per step, 116 GB at ImageNet-21K)."""
    from ffcv_dp4tl.scoring import baselines

    # 1 MiB blocks; a missing constant would leave 64 MiB ones, over the bound here too
    monkeypatch.setattr(baselines, "CHUNK_BYTES", 1 << 20, raising=False)
    f, y = big_features
    proto = np.random.default_rng(0).standard_normal((100, BIG_D)).astype(np.float32)
    calls = {
        "moderate": lambda: baselines.moderate_distances(f, y),
        "class-means": lambda: baselines.class_mean_prototypes(f, y, 2),
        "to-class-mean": lambda: baselines.prototype_distances(f, proto[:2], y),
        "to-nearest": lambda: baselines.prototype_distances(f, proto),
        "normalised-rows": lambda: baselines.l2_normalised_rows(f),  # its float32 output: 51 MB
    }
    peak = traced_peak(calls[what])
    assert peak < BIG_N * BIG_D * 8, f"{what}: peak {peak / 1e6:.0f} MB"
