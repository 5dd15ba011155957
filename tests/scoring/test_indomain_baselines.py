"""The paper's in-domain baselines on hand-made and tiny cases: MODERATE's rank band, SP/SSP
prototype distances, forgetting counts, last-layer influence (INFMAX/INFSUM)."""
from __future__ import annotations

import numpy as np
import pytest

from ffcv_dp4tl.scoring import ScoringError, select_samples
from ffcv_dp4tl.scoring.baselines import (class_mean_prototypes, forgetting_counts,
                                          forgetting_scores, moderate_rank_scores,
                                          moderate_scores, prototype_distances)
from ffcv_dp4tl.scoring.influence import (influence_matrix, influence_scores,
                                          last_layer_hessian, per_sample_gradients)


# ------------------------------------------------------------------------------ MODERATE
def _reference_moderate_keep(distance: np.ndarray, keep_fraction: float) -> np.ndarray:
    """The moderate-coreset reference code's get_prune_idx, returning the kept indices."""
    rate = keep_fraction
    low, high = 0.5 - rate / 2, 0.5 + rate / 2
    sorted_idx = distance.argsort(kind="stable")
    low_idx, high_idx = round(distance.shape[0] * low), round(distance.shape[0] * high)
    return np.sort(sorted_idx[low_idx:high_idx])


def test_moderate_rank_band_keeps_exactly_the_middle_ranks():
    # skewed distances: the value band (old variant) and the rank band differ
    d = np.array([0, 1, 2, 3, 4, 100, 200, 300, 400, 500], dtype=np.float64)
    perm = np.random.default_rng(0).permutation(10)
    d = d[perm]
    rank_of = {v: r for r, v in enumerate(sorted(d))}
    s = moderate_rank_scores(None, distances=d)
    kept = select_samples(s, 0.4)
    assert sorted(rank_of[v] for v in d[kept]) == [3, 4, 5, 6]
    np.testing.assert_array_equal(kept, _reference_moderate_keep(d, 0.4))
    # the value band |d - median| (median 52) keeps ranks 2..5 instead
    value = -np.abs(d - np.median(d))
    assert sorted(rank_of[v] for v in d[select_samples(value, 0.4)]) == [2, 3, 4, 5]
    # every keep count: a contiguous band of ranks around the middle, nearer side first
    for m in range(1, 11):
        ranks = sorted(rank_of[v] for v in d[select_samples(s, m / 10)])
        assert ranks == list(range(ranks[0], ranks[0] + m))
        assert ranks[0] == (10 - m) // 2


def test_moderate_rank_scores_match_the_reference_on_features(rng):
    feats = rng.standard_normal((40, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    from ffcv_dp4tl.scoring.baselines import moderate_distances

    d = moderate_distances(feats, labels)
    for f in (0.2, 0.5, 0.8):
        np.testing.assert_array_equal(select_samples(moderate_rank_scores(feats, labels), f),
                                      _reference_moderate_keep(d, f))
    assert moderate_scores(feats, labels).shape == (40,)  # the value variant is still there


def _authors_class_band_keep(distance: np.ndarray, labels: np.ndarray, ratio: float) -> np.ndarray:
    """OPTML-Group/DP4TL src/auxiliary/data_wise_moderate_selection.py, kept indices: in every
    class the ranks [round(n_c·low), round(n_c·high)) of the distances (argsort)."""
    low, high = 0.5 - ratio / 2, 0.5 + ratio / 2
    kept = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order = distance[idx].argsort(kind="stable")
        kept += idx[order[round(idx.size * low):round(idx.size * high)]].tolist()
    return np.sort(np.asarray(kept))


@pytest.mark.parametrize("n, keep, kept", [(5, 0.4, [0, 2]), (4, 0.25, [2]), (4, 0.75, [0, 1, 2])])
def test_moderate_class_band_breaks_a_tie_towards_the_nearer_side(n, keep, kept):
    """When the kept band cannot sit symmetric about the class's median rank (one sample more
    on one side), the side nearer the class median wins, as in the global band. Distances
    0.5, 0.1, 0.3, 0.9, 0.7 rank the samples 2, 0, 1, 4, 3 (0 = nearest the class median)."""
    from ffcv_dp4tl.scoring.baselines import moderate_class_band_scores

    d = np.array([0.5, 0.1, 0.3, 0.9, 0.7])[:n]
    got = select_samples(moderate_class_band_scores(d, np.zeros(n, dtype=int)), keep)
    assert sorted(got.tolist()) == kept


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.8])
def test_moderate_class_band_keeps_the_middle_of_every_class_as_the_authors(rng, keep):
    """band=class (paper-code): one band per class, where the global rank band takes classes
    unevenly when their distances differ in scale."""
    from ffcv_dp4tl.scoring.baselines import moderate_class_band_scores

    labels = np.repeat([0, 1, 2], [20, 20, 20])
    d = rng.random(60) * np.repeat([1.0, 10.0, 100.0], 20)  # class scales differ 100x
    kept = select_samples(moderate_class_band_scores(d, labels), keep)
    np.testing.assert_array_equal(kept, _authors_class_band_keep(d, labels, keep))
    assert np.bincount(labels[kept]).tolist() == [round(20 * keep)] * 3
    glob = select_samples(moderate_rank_scores(None, distances=d), keep)
    assert np.bincount(labels[glob], minlength=3).tolist() != [round(20 * keep)] * 3


# ------------------------------------------------------------------------------ SP / SSP
def test_prototype_distances_match_brute_force(rng):
    f = rng.standard_normal((30, 4)) + 3
    c = rng.standard_normal((5, 4))
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    brute = np.array([[np.linalg.norm(x - y) for y in cn] for x in fn])
    np.testing.assert_allclose(prototype_distances(f, c), brute.min(1), atol=1e-6)
    assign = rng.integers(0, 5, 30)
    np.testing.assert_allclose(prototype_distances(f, c, assign), brute[np.arange(30), assign],
                               atol=1e-6)
    raw = np.array([[np.linalg.norm(x - y) for y in c] for x in f])
    np.testing.assert_allclose(prototype_distances(f, c, normalize=False), raw.min(1), atol=1e-5)
    with pytest.raises(ScoringError, match="assignment must lie"):
        prototype_distances(f, c, np.full(30, 5))


def test_class_mean_prototypes_hand_made():
    f = np.array([[3, 4], [0, 2], [1, 0], [5, 0]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    proto = class_mean_prototypes(f, y, 3)
    np.testing.assert_allclose(proto, [[0.3, 0.9], [1, 0], [0, 0]])
    d = prototype_distances(f, proto, y)  # the prototype is normalised too (cosine geometry)
    u = np.array([0.3, 0.9]) / np.hypot(0.3, 0.9)
    near = np.hypot(*(np.array([0.6, 0.8]) - u))
    np.testing.assert_allclose(d, [near, np.hypot(*(np.array([0.0, 1.0]) - u)), 0, 0], atol=1e-7)
    assert near < d[1]  # (0, 1) is farther from the class direction than (0.6, 0.8)
    np.testing.assert_allclose(prototype_distances(f, proto, y, normalize=False)[2:], [0, 4],
                               atol=1e-7)  # raw features vs the (normalised-mean) prototype


# ------------------------------------------------------------------------------ FORGET
def test_forgetting_counts_on_a_scripted_sequence():
    # presentations (rows) x samples (cols)
    acc = np.array([[0, 1, 1, 0, 1],
                    [1, 0, 1, 0, 1],
                    [0, 1, 1, 0, 0],
                    [1, 0, 1, 0, 1]], dtype=bool)
    events, learned = forgetting_counts(acc)
    np.testing.assert_array_equal(events, [1, 2, 0, 0, 1])
    np.testing.assert_array_equal(learned, [1, 1, 1, 0, 1])
    s = forgetting_scores(events, learned)
    np.testing.assert_array_equal(s, [1, 2, 0, 3, 1])  # never learned = most forgettable
    np.testing.assert_array_equal(select_samples(s, 0.4), [1, 3])


def test_forgetting_recorder_counts_online_like_the_reference():
    import torch

    from ffcv_dp4tl.scoring.training_runs import ForgettingRecorder

    rng = np.random.default_rng(0)
    n, epochs = 12, 6
    rec = ForgettingRecorder(n)
    history = np.zeros((epochs, n), dtype=bool)
    for ep in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, 5):
            idx = order[s:s + 5]
            ok = rng.random(idx.size) < 0.5
            history[ep, idx] = ok
            rec.update(torch.as_tensor(idx), torch.as_tensor(ok))
    ev, le = forgetting_counts(history)
    got_ev, got_le, seen = rec.result()
    np.testing.assert_array_equal(got_ev, ev)
    np.testing.assert_array_equal(got_le, le)
    assert (seen == epochs).all()


# ------------------------------------------------------------------------------ influence
def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _fit(h, y, lam, C, weights=None, theta0=None):
    """Newton's method on (1/n) Σ w_i ℓ_i + (λ/2)|θ|² for a linear softmax head, float64."""
    n, d = h.shape
    a = np.concatenate([h, np.ones((n, 1))], 1)
    w = np.ones(n) if weights is None else weights
    theta = np.zeros(C * (d + 1)) if theta0 is None else theta0.copy()
    Y = np.eye(C)[y]
    for _ in range(50):
        p = _softmax(a @ theta.reshape(C, d + 1).T)
        g = np.einsum("i,ic,id->cd", w, p - Y, a).reshape(-1) / n + lam * theta
        S = -np.einsum("ic,id->icd", p, p)
        S[:, np.arange(C), np.arange(C)] += p
        H = np.einsum("i,icd,ij,ik->cjdk", w, S, a, a).reshape(C * (d + 1), -1) / n
        theta -= np.linalg.solve(H + lam * np.eye(len(theta)), g)
        if np.abs(g).max() < 1e-13:
            break
    return theta


def _loss(theta, h, y, C):
    a = np.concatenate([h, np.ones((len(h), 1))], 1)
    p = _softmax(a @ theta.reshape(C, -1).T)
    return -np.log(p[np.arange(len(y)), y])


def test_influence_equals_finite_differences_on_a_tiny_linear_model():
    rng = np.random.default_rng(3)
    n, m, d, C, lam = 24, 5, 3, 3, 0.05
    h = rng.standard_normal((n, d))
    y = rng.integers(0, C, n)
    he, ye = rng.standard_normal((m, d)), rng.integers(0, C, m)
    theta = _fit(h, y, lam, C)
    probs = _softmax(np.concatenate([h, np.ones((n, 1))], 1) @ theta.reshape(C, -1).T)
    probs_e = _softmax(np.concatenate([he, np.ones((m, 1))], 1) @ theta.reshape(C, -1).T)
    inf = influence_matrix(h, probs, y, he, probs_e, ye, damping=lam, hessian="exact")
    eps = 1e-4
    for i in (0, 7, 19):
        w = np.ones(n)
        w[i] += n * eps  # + ε ℓ_i in the objective (1/n) Σ w ℓ
        up = _loss(_fit(h, y, lam, C, w, theta), he, ye, C)
        w[i] -= 2 * n * eps
        down = _loss(_fit(h, y, lam, C, w, theta), he, ye, C)
        fd = -(up - down) / (2 * eps)
        np.testing.assert_allclose(inf[i], fd, rtol=1e-4, atol=1e-8)
    # aggregation
    np.testing.assert_allclose(influence_scores(h, probs, y, he, probs_e, ye, damping=lam,
                                                hessian="exact", aggregate="max"), inf.max(1))
    np.testing.assert_allclose(influence_scores(h, probs, y, he, probs_e, ye, damping=lam,
                                                hessian="exact", aggregate="sum"), inf.sum(1))


def test_exact_and_kfac_influence_match_an_explicit_inverse(rng):
    n, m, d, C, lam = 20, 4, 2, 3, 0.1
    h, he = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    p, pe = _softmax(rng.standard_normal((n, C))), _softmax(rng.standard_normal((m, C)))
    y, ye = rng.integers(0, C, n), rng.integers(0, C, m)
    g, ge = per_sample_gradients(h, p, y), per_sample_gradients(he, pe, ye)
    H = sum(np.kron(np.diag(p[i]) - np.outer(p[i], p[i]), np.outer(*(2 * [np.r_[h[i], 1]])))
            for i in range(n)) / n
    np.testing.assert_allclose(last_layer_hessian(h, p), H, atol=1e-12)
    explicit = g @ np.linalg.inv(H + lam * np.eye(len(H))) @ ge.T
    np.testing.assert_allclose(influence_matrix(h, p, y, he, pe, ye, damping=lam,
                                                hessian="exact"), explicit, rtol=1e-8, atol=1e-10)
    a = np.c_[h, np.ones(n)]
    G = sum(np.diag(p[i]) - np.outer(p[i], p[i]) for i in range(n)) / n
    A = a.T @ a / n
    kf = np.kron(G + np.sqrt(lam) * np.eye(C), A + np.sqrt(lam) * np.eye(d + 1))
    np.testing.assert_allclose(influence_matrix(h, p, y, he, pe, ye, damping=lam, hessian="kfac"),
                               g @ np.linalg.inv(kf) @ ge.T, rtol=1e-8, atol=1e-10)
    with pytest.raises(ScoringError, match="aggregate"):
        influence_scores(h, p, y, he, pe, ye, aggregate="mean")


def test_forget_counts_a_never_presented_sample_as_never_learned(monkeypatch):
    """FORGET's run may never show a sample (drop_last, few epochs): with no evidence that it is
    easy it scores as never learned, so it is kept first, and ``scores.json`` counts it
    (``never_presented``). The run is replaced by two hand-made presentations of samples 0-3:
    0 forgotten once, 1 and 2 learned, 3 never learned, 4 never shown."""
    from types import SimpleNamespace

    import torch

    import ffcv_dp4tl.scoring.training_runs as runs
    from ffcv_dp4tl.scoring.registry import get_scorer

    def one_run(ctx, recipe, run, stop_after, callbacks, resume):
        (rec,) = callbacks
        rec.update(torch.tensor([0, 1, 2, 3]), torch.tensor([True, True, True, False]))
        rec.update(torch.tensor([0, 1, 2, 3]), torch.tensor([False, True, True, False]))

    monkeypatch.setattr(runs, "train_run", one_run)
    monkeypatch.setattr(runs, "training_recipe", lambda ctx, arch: None)
    opts = {"runs": 1, "epochs": 0, "arch": ""}
    ctx = SimpleNamespace(opt=opts.__getitem__, meta={}, source=SimpleNamespace(
        split=lambda name: SimpleNamespace(num_samples=5)))
    s = get_scorer("forget").score(ctx).scores
    assert ctx.meta["never_presented"] == [1] and ctx.meta["never_learned"] == [2]
    assert s[4] == s[3] == s.max() > s[0] > s[1] == s[2]
