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
