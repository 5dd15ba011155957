"""k-means (vs a plain NumPy Lloyd), empty clusters, FM votes, supervised centroids."""
from __future__ import annotations

import re

import numpy as np
import pytest

from ffcv_dp4tl.kernels.checks import KernelInputError
from ffcv_dp4tl.scoring import (
    ScoringError,
    class_centroids,
    feature_mapping_scores,
    feature_mapping_votes,
    kept_sample_indices,
    kmeans,
    kmeans_plus_plus,
    select_classes,
)
from ffcv_dp4tl.scoring.feature_mapping import _reseed_empty

from .helpers import requires_cuda


def _blobs(rng, n=1200, k=6, d=10, spread=8.0):
    centers = rng.standard_normal((k, d)) * spread
    truth = rng.integers(0, k, size=n)
    x = (centers[truth] + rng.standard_normal((n, d))).astype(np.float32)
    return x, truth


def _numpy_lloyd(x, init, iters):
    c = init.astype(np.float64)
    x64 = x.astype(np.float64)
    for _ in range(iters):
        d = ((x64[:, None] - c[None]) ** 2).sum(-1)
        labels = d.argmin(1)
        c = np.stack([x64[labels == q].mean(0) for q in range(c.shape[0])])
    d = ((x64[:, None] - c[None]) ** 2).sum(-1)
    return c, d.argmin(1), d.min(1).sum()


def test_kmeans_matches_numpy_lloyd(rng):
    x, _ = _blobs(rng, spread=3.0)
    k, seed, iters = 6, 3, 5
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=k, replace=False))
    ref_c, ref_labels, ref_inertia = _numpy_lloyd(x, x[rows], iters)
    res = kmeans(x, k, iters=iters, init="random", seed=seed, backend="cpu")
    if res.converged:  # stopped early because labels were stable: same fixed point
        assert res.n_iter <= iters
    np.testing.assert_array_equal(res.labels, ref_labels)
    np.testing.assert_allclose(res.centroids, ref_c, rtol=1e-5, atol=1e-5)
    assert res.inertia[-1] == pytest.approx(ref_inertia, rel=1e-5)
    assert res.centroids.dtype == np.float32 and res.labels.dtype == np.int64


def test_kmeans_pp_recovers_blobs_and_inertia_decreases(rng):
    x, truth = _blobs(rng)
    res = kmeans(x, 6, iters=30, seed=0, backend="cpu")
    assert res.converged
    # every true blob maps to exactly one cluster and vice versa
    pairs = set(zip(truth.tolist(), res.labels.tolist()))
    assert len(pairs) == 6
    hist = np.asarray(res.inertia)
    assert (np.diff(hist) <= 1e-6 * hist[:-1]).all()


def test_kmeans_is_deterministic(rng):
    x, _ = _blobs(rng, spread=1.0)
    a = kmeans(x, 8, iters=4, seed=5, backend="cpu")
    b = kmeans(x, 8, iters=4, seed=5, backend="cpu")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_kmeans_stopped_by_iters_keeps_the_centroids_of_its_last_assignment(rng):
    """A run cut by ``iters`` returns the centroids its labels were assigned to (consistent:
    every label is the nearest centroid), one update short of the members' means, and says
    it did not converge; FM and SSP record that in ``scores.json`` (``run_record``)."""
    x, _ = _blobs(rng, spread=3.0)
    cut = kmeans(x, 6, iters=1, init="random", seed=3, backend="cpu")
    assert not cut.converged and cut.n_iter == 1
    assert cut.run_record() == {"kmeans_converged": False, "kmeans_updates": 1}
    d = ((x[:, None].astype(np.float64) - cut.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(cut.labels, d.argmin(1))
    means = np.stack([x[cut.labels == j].mean(0) for j in range(6)])
    assert not np.allclose(cut.centroids, means, atol=1e-3)
    done = kmeans(x, 6, iters=100, init="random", seed=3, backend="cpu")
    assert done.run_record() == {"kmeans_converged": True, "kmeans_updates": done.n_iter}
    np.testing.assert_allclose(done.centroids,
                               np.stack([x[done.labels == j].mean(0) for j in range(6)]), atol=1e-4)


def test_kmeans_tol_stops_early(rng):
    x, _ = _blobs(rng, spread=0.5)
    full = kmeans(x, 10, iters=50, seed=1, backend="cpu")
    early = kmeans(x, 10, iters=50, tol=0.5, seed=1, backend="cpu")
    assert early.converged and early.n_iter < full.n_iter


def test_kmeans_fewer_distinct_points_than_k():
    x = np.repeat(np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32), 10, axis=0)
    res = kmeans(x, 5, iters=5, seed=0, backend="cpu")
    assert np.isfinite(res.centroids).all()
    assert res.inertia[-1] == 0.0
    assert set(np.unique(res.labels)) <= set(range(5))


def test_reseed_empty_is_deterministic():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    centroids = np.zeros((4, 2), dtype=np.float32)
    counts = np.array([3, 0, 3, 0])
    d2 = np.array([1.0, 5.0, 2.0, 5.0, 9.0, 0.0], dtype=np.float32)
    assert _reseed_empty(centroids, counts, d2, x) == 2
    # farthest is row 4 (9.0), then the tie at 5.0 goes to the lower row (1)
    np.testing.assert_array_equal(centroids[1], x[4])
    np.testing.assert_array_equal(centroids[3], x[1])
    np.testing.assert_array_equal(centroids[[0, 2]], 0)


def test_reseed_empty_picks_the_same_rows_as_a_full_sort(rng):
    """The O(N) selection equals sorting every distance, ties at the cut included."""
    n, k = 5000, 40
    x = rng.standard_normal((n, 3)).astype(np.float32)
    d2 = rng.integers(0, 50, size=n).astype(np.float32)  # many exact ties
    counts = np.ones(k, dtype=np.int64)
    counts[rng.choice(k, size=17, replace=False)] = 0
    centroids = np.zeros((k, 3), dtype=np.float32)
    assert _reseed_empty(centroids, counts, d2, x) == 17
    want = np.lexsort((np.arange(n), -d2.astype(np.float64)))[:17]
    np.testing.assert_array_equal(centroids[counts == 0], x[want])


def test_kmeans_reseeds_empty_cluster(rng, monkeypatch):
    from ffcv_dp4tl.scoring import feature_mapping as fm

    x, _ = _blobs(rng, n=300, k=3)

    def far_init(x_, k, **_):
        c = np.asarray(x_[:k]).copy()
        c[-1] = 1e6  # no point will pick this centroid
        return c

    monkeypatch.setattr(fm, "kmeans_plus_plus", far_init)
    res = kmeans(x, 3, iters=10, backend="cpu")
    assert np.abs(res.centroids).max() < 1e3  # the far centroid was moved onto the data
    assert np.bincount(res.labels, minlength=3).min() > 0


def test_kmeans_plus_plus_subsample_and_seed(rng):
    x, _ = _blobs(rng, n=5000)
    a = kmeans_plus_plus(x, 6, seed=2, sample=500)
    b = kmeans_plus_plus(x, 6, seed=2, sample=500)
    np.testing.assert_array_equal(a, b)
    assert len({tuple(r) for r in a}) == 6
    # every seed is an actual row of x
    assert all((x == r).all(1).any() for r in a)


def test_kmeans_errors(rng):
    x, _ = _blobs(rng, n=20)
    with pytest.raises(ScoringError, match="k=21 clusters requested but x has only 20 rows"):
        kmeans(x, 21, backend="cpu")
    with pytest.raises(ScoringError, match="init must be"):
        kmeans(x, 2, init="kmeans||", backend="cpu")
    with pytest.raises(ScoringError, match="iters must be a positive int"):
        kmeans(x, 2, iters=0, backend="cpu")
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ScoringError, match="NaN/Inf"):
        kmeans(bad, 2, backend="cpu")
    with pytest.raises(KernelInputError, match="x must be a 2-D"):
        kmeans(x[0], 2, backend="cpu")


def test_feature_mapping_votes_hand_made():
    centroids = np.array([[0, 0], [10, 0], [0, 10], [50, 50]], dtype=np.float32)
    targets = np.array([[1, 0], [0, 1], [9, 0], [0, 9], [0, 8], [-1, 0]], dtype=np.float32)
    votes = feature_mapping_scores(targets, centroids, backend="cpu")
    assert votes.dtype == np.int64
    np.testing.assert_array_equal(votes, [3, 1, 2, 0])
    votes2, tiebreak = feature_mapping_votes(targets, centroids, backend="cpu")
    np.testing.assert_array_equal(votes2, votes)
    np.testing.assert_allclose(tiebreak, [-3.0, -1.0, -5.0, 0.0])
    # cluster 1 and the far cluster 3 both lose to the voted ones; keep 2 -> {0, 2}
    np.testing.assert_array_equal(select_classes(votes, 0.5, tiebreak=tiebreak), [0, 2])
    with pytest.raises(KernelInputError, match="centroids has D=2 but x has D=3"):
        feature_mapping_scores(np.zeros((2, 3), np.float32), centroids, backend="cpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_target_features_are_refused_not_counted_as_votes(bad):
    """A NaN target feature matched no centroid and was counted as a vote for cluster 0 (five
    NaN rows + one real row at cluster 2 gave [5 0 1]); refused like k-means refuses NaN."""
    centroids = np.eye(3, 4, dtype=np.float32)
    targets = np.full((6, 4), bad, np.float32)
    targets[5] = centroids[2]
    for votes in (feature_mapping_scores, feature_mapping_votes):
        with pytest.raises(ScoringError, match=r"^target_features contains NaN/Inf rows \(5 of 6, "
                                               r"the first at row 0\); clean the features"):
            votes(targets, centroids, backend="cpu")
    one = targets[4:].copy()
    one[0, 1] = 0.0  # one bad entry is enough: the row still has a NaN/Inf
    with pytest.raises(ScoringError, match="target_features contains NaN/Inf rows"):
        feature_mapping_scores(one, centroids, backend="cpu")
    np.testing.assert_array_equal(feature_mapping_scores(targets[5:], centroids, backend="cpu"),
                                  [0, 0, 1])
    feats = np.eye(3, 4, dtype=np.float32)
    feats[1, 2] = bad  # class 1's mean would be NaN: named here, not as a "diverged" centroid
    with pytest.raises(ScoringError, match=r"^features contains NaN/Inf rows \(1 of 3, the "
                                           r"first at row 1\)"):
        class_centroids(feats, [0, 1, 2], 3, backend="cpu")


@pytest.mark.parametrize("call,message", [
    (lambda x: kmeans(x, 2, seed=-1, backend="cpu"), "seed: -1 is negative"),
    (lambda x: kmeans(x, 2, seed=-1, init="random", backend="cpu"), "seed: -1 is negative"),
    (lambda x: kmeans(x, 2, seed=1.5, backend="cpu"), "seed: 1.5 is not an integer"),
    (lambda x: kmeans_plus_plus(x, 2, seed=-1), "seed: -1 is negative"),
    (lambda x: kmeans_plus_plus(x, 0), "k must be a positive int, got 0"),
    (lambda x: kmeans_plus_plus(x, -2), "k must be a positive int, got -2"),
    (lambda x: kmeans_plus_plus(x, 2.0), "k must be a positive int, got 2.0"),
    (lambda x: kmeans_plus_plus(x, 21), "k=21 clusters requested but x has only 20 rows"),
], ids=["kmeans-seed", "kmeans-random-init-seed", "kmeans-float-seed", "kmeans++-seed",
        "kmeans++-k0", "kmeans++-k-neg", "kmeans++-k-float", "kmeans++-k-above-n"])
def test_kmeans_arguments_are_refused_in_one_line(rng, call, message):
    """numpy's bare 'expected non-negative integer' (negative seed), an IndexError (k=0) or an
    init_sample message for a K above the rows before."""
    x, _ = _blobs(rng, n=20)
    with pytest.raises(ScoringError, match="^" + re.escape(message)):
        call(x)


def test_class_centroids(rng):
    feats = np.array([[0, 0], [2, 2], [4, 0], [1, 1]], dtype=np.float32)
    labels = np.array([0, 0, 2, 1])
    np.testing.assert_allclose(class_centroids(feats, labels, 3, backend="cpu"), [[1, 1], [1, 1], [4, 0]])
    with pytest.raises(ScoringError, match="classes without samples: 3"):
        class_centroids(feats, labels, 4, backend="cpu")
    with pytest.raises(ScoringError, match="labels has 3 entries but features has 4 rows"):
        class_centroids(feats, labels[:3], 3, backend="cpu")
    with pytest.raises(ScoringError, match=r"labels must lie in \[0, 2\)"):
        class_centroids(feats, labels, 2, backend="cpu")


@pytest.mark.gpu
@requires_cuda
def test_gpu_kmeans_matches_cpu(rng):
    x, _ = _blobs(rng, n=20000, k=16, d=64)
    cpu = kmeans(x, 16, iters=10, seed=0, backend="cpu")
    gpu = kmeans(x, 16, iters=10, seed=0, backend="cuda")
    assert gpu.backend == "cuda"
    assert isinstance(gpu.labels, np.ndarray)
    np.testing.assert_array_equal(gpu.labels, cpu.labels)
    np.testing.assert_allclose(gpu.centroids, cpu.centroids, rtol=1e-4, atol=1e-4)
    votes_gpu = feature_mapping_scores(x[:500], gpu.centroids, backend="cuda")
    np.testing.assert_array_equal(votes_gpu, feature_mapping_scores(x[:500], cpu.centroids, backend="cpu"))


def test_fm_extracts_no_source_val_features_and_val_npy_is_the_trainers_val(
        source_dir, target_dir, trained_run, tmp_path):
    """FM's clusters are k-means on the source train features, and the pruned ``val.npy`` holds
    the val samples of the classes the train mask keeps, the set the trainer validates the
    pretraining on (before 2026-12-05 it held the val samples of the kept clusters, which
    nothing read). So FM reads no source val features: it extracted them (a surrogate forward
    over the whole source val split and a feature store) to write ``val_units.npy``, which
    nothing read either."""
    from ffcv_dp4tl.data import load_manifest, load_mask
    from ffcv_dp4tl.pipeline.prune import prune
    from ffcv_dp4tl.pipeline.score import score
    from ffcv_dp4tl.pipeline.scores_io import load_scores

    out = tmp_path / "fm"
    score("fm", source_dir=source_dir, out_dir=out, target_dir=target_dir,
          checkpoint=trained_run / "checkpoint.pt", fmt="wds", num_workers=0, progress=False,
          k=4, seed=0)
    sc = load_scores(out)
    assert sc.val_units is None and not (out / "val_units.npy").exists()
    assert not (out / "source_val_features.npy").exists()
    train_f = np.load(out / "source_train_features.npy")
    # the clusters: the project's k-means on the train features, as FM ran it
    res = kmeans(train_f, 4, iters=sc.meta.meta["iters"], seed=0, backend="cpu")
    np.testing.assert_array_equal(sc.train_units, res.labels)
    summary = prune(out, source_dir, 0.5, tmp_path / "mask")
    man = load_manifest(source_dir)
    train, val = man.split("train"), man.split("val")
    mask = load_mask(tmp_path / "mask" / "val.npy", val)
    train_mask = load_mask(tmp_path / "mask" / "train.npy", train)
    kept_classes = np.unique(np.asarray(train.load_labels())[train_mask.indices])
    expect = np.flatnonzero(np.isin(val.load_labels(), kept_classes))
    np.testing.assert_array_equal(mask.indices, expect)
    assert summary["val_kept"] == len(expect) and mask.meta["kept_classes"] == kept_classes.tolist()


def test_the_finite_check_works_in_blocks_and_counts_every_bad_row(monkeypatch):
    """The check reads the features in blocks (a whole-matrix mask is 2.6 GB at 1.28M x 2048):
    the count and the first row are those of the whole matrix, across block edges."""
    from ffcv_dp4tl.scoring.feature_mapping import check_finite_rows

    x = np.zeros((10, 4), np.float32)
    x[[3, 4, 9], 1] = np.nan
    monkeypatch.setattr(np, "isfinite", _counting(np.isfinite, calls := []))
    with pytest.raises(ScoringError, match=r"\(3 of 10, the first at row 3\)"):
        check_finite_rows(x, "features")
    assert len(calls) == 1  # one block at this size
    calls.clear()
    big = np.zeros(((1 << 22) + 5, 4), np.float32)  # 2 blocks of (1 << 22) rows at 4 columns
    big[-1, 0] = np.inf
    with pytest.raises(ScoringError, match=rf"\(1 of {big.shape[0]}, the first at row {big.shape[0] - 1}\)"):
        check_finite_rows(big, "features")
    assert [c for c in calls] == [1 << 22, 5]


def _counting(fn, calls):
    def wrapped(a, *args, **kw):
        calls.append(a.shape[0])
        return fn(a, *args, **kw)
    return wrapped


def test_rescoring_into_the_same_folder_at_another_resolution_extracts_the_features_again(
        source_dir, target_dir, trained_run, tmp_path):
    """``dp4tl score`` rerun into its ``--out`` at another ``--resolution``: FM's source feature
    store records how it was extracted (resolution, crop, format, precision) and is extracted
    again, giving the features (and scores) of a fresh folder, not those of the first call."""
    from ffcv_dp4tl.pipeline.score import score
    from ffcv_dp4tl.pipeline.scores_io import load_scores
    from ffcv_dp4tl.scoring.features import read_feature_meta

    def run(out, resolution):
        score("fm", source_dir=source_dir, out_dir=out, target_dir=target_dir,
              checkpoint=trained_run / "checkpoint.pt", fmt="wds", num_workers=0,
              progress=False, k=4, seed=0, resolution=resolution)
        store = out / "source_train_features.npy"
        return np.load(store), load_scores(out).scores, read_feature_meta(store)["extra"]

    first, _, _ = run(tmp_path / "shared", 32)
    again, again_scores, settings = run(tmp_path / "shared", 16)
    fresh, fresh_scores, _ = run(tmp_path / "fresh", 16)
    assert not np.array_equal(first, fresh)  # the resolution changes the features
    np.testing.assert_array_equal(again, fresh)
    np.testing.assert_array_equal(again_scores, fresh_scores)
    assert settings == {"resolution": 16, "crop": "center", "format": "wds", "autocast": "None"}


def test_the_first_kmeans_pp_centre_depends_on_the_seed(rng):
    """k-means++ draws its first centre at random with the seed: FM's clusters (and so its
    selection) change with ``--seed``, rather than every seed starting from row 0 and all seeds
    agreeing on the first centre."""
    x, _ = _blobs(rng, n=300)
    firsts = [kmeans_plus_plus(x, 1, seed=s)[0] for s in range(8)]
    assert len({r.tobytes() for r in firsts}) > 1
    assert any(not np.array_equal(f, x[0]) for f in firsts)


def test_reciprocal_rank_votes_hand_made():
    """Each target feature gives every centroid 1 / its rank (nearest = 1)."""
    from ffcv_dp4tl.scoring.feature_mapping import reciprocal_rank_votes

    centroids = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    np.testing.assert_allclose(reciprocal_rank_votes(np.array([[1, 0]], np.float32), centroids),
                               [1, 1 / 2, 1 / 3])
    two = np.array([[1, 0], [0, 9]], dtype=np.float32)  # the second: c2, then c0, then c1
    np.testing.assert_allclose(reciprocal_rank_votes(two, centroids, rows=1),
                               [1 + 1 / 2, 1 / 2 + 1 / 3, 1 / 3 + 1])
    equal = np.array([[5, 0]], dtype=np.float32)  # c0 and c1 equally near: lower id first
    np.testing.assert_allclose(reciprocal_rank_votes(equal, centroids), [1, 1 / 2, 1 / 3])


def test_fm_breaks_equal_votes_by_nearness_to_the_target_not_cluster_size():
    """Clusters without votes (most of them with K = 2000 and a small target) are kept nearest
    to the target first. The tie-break used to be the cluster's size, which filled the kept
    slots with the largest unvoted clusters: FM kept far more samples than 1 - ratio, for
    reasons unrelated to the target (scorer audit: 0.89 kept at ratio 0.5)."""
    from types import SimpleNamespace

    from ffcv_dp4tl.scoring.methods.fm import vote_clusters

    ctx = SimpleNamespace(combine=lambda per_target: per_target[0], backend="cpu",
                          source=SimpleNamespace(split_names=("train",)))
    centroids = np.array([[0, 0], [3, 0], [100, 0]], dtype=np.float32)
    train_units = np.array([0, 0, 1] + [2] * 10)  # sizes 2, 1 (near the target), 10 (far)
    target = np.array([[0.1, 0], [0.2, 0]], dtype=np.float32)
    r = vote_clusters(ctx, [target], centroids, train_units)
    np.testing.assert_array_equal(r.scores, [2, 0, 0])
    np.testing.assert_allclose(r.tiebreak, [2, 1, 2 / 3])
    np.testing.assert_array_equal(select_classes(r.scores, 1 / 3, tiebreak=r.tiebreak), [0, 1])
    kept = kept_sample_indices(train_units, select_classes(r.scores, 1 / 3, tiebreak=r.tiebreak))
    assert len(kept) == 3  # (by size: clusters 0 and 2, 12 of 13 samples)


def test_fm_revision_enters_its_score_key_only():
    """The tie-break fix recomputes cached FM scores (revision 1 in the stage key); methods
    without a revision keep their keys."""
    from ffcv_dp4tl.scoring.registry import get_scorer

    assert get_scorer("fm").stage_key(k=64, seed=0) == {"k": 64, "seed": 0, "revision": 1}
    assert get_scorer("fm-sup").stage_key(k=64, seed=0) == {"revision": 1}
    assert get_scorer("lm").stage_key(k=64, seed=0) == {}


def test_rows_too_large_for_float32_distances_are_refused_not_labelled_as_nan_rows():
    """A finite row of entries ~1e19 has a squared norm past float32's range: every kernel took
    it for a NaN row (cluster 0 on CUDA, an arbitrary one on the BLAS path) and k-means said
    "NaN/Inf rows" of data that has none. The largest squared norm allowed still votes right."""
    from ffcv_dp4tl.scoring.feature_mapping import MAX_SQUARED_NORM, check_finite_rows

    centroids = np.eye(3, 4, dtype=np.float32)
    x = np.zeros((4, 4), np.float32)
    x[2, 0] = 2e19
    with pytest.raises(ScoringError, match=r"^target_features contains rows too large for float32 "
                                           r"distances \(squared norm above 8.5e\+37\) \(1 of 4, the "
                                           r"first at row 2\)"):
        feature_mapping_scores(x, centroids, backend="cpu")
    edge = np.zeros((1, 4), np.float32)
    edge[0, 1] = np.float32(np.sqrt(MAX_SQUARED_NORM) * 0.999)
    check_finite_rows(edge, "features")  # (below the limit: no error)
    np.testing.assert_array_equal(feature_mapping_scores(edge, centroids, backend="cpu"), [0, 1, 0])


@pytest.mark.parametrize("method", ["fm", "fm-sup"])
def test_cluster_methods_read_only_the_source_train_features(method):
    """FM and FM-sup read the source train features and the target's, nothing of the source
    val split (its cluster ids were computed for nothing: see the test above)."""
    from types import SimpleNamespace

    from ffcv_dp4tl.scoring.registry import get_scorer

    rng = np.random.default_rng(0)
    train = rng.normal(size=(12, 4)).astype(np.float32)
    labels = np.arange(12) % 3
    read = []

    def source_features(split="train"):
        read.append(split)
        return train

    def train_labels(split="train"):
        read.append(f"{split} labels")
        return labels

    ctx = SimpleNamespace(
        target_predictions=lambda features: [SimpleNamespace(features=train[:2])],
        source_features=source_features, train_labels=train_labels, k=2, iters=3, seed=0,
        backend="cpu", meta={}, combine=lambda parts: parts[0],
        source=SimpleNamespace(split_names=("train", "val"), num_classes=3))
    result = get_scorer(method).score(ctx)
    assert read and all(not r.startswith("val") for r in read), read
    assert result.train_units.shape == (12,) and not hasattr(result, "val_units")


def test_fm_warns_when_k_means_leaves_clusters_empty():
    """Features that repeat (identical or blank source images) leave k-means clusters empty:
    FM then ranks fewer units than --k, and said nothing (the report read "kept: 2 clusters"
    of a K of 8; an audit). It says so, and still scores every cluster."""
    from types import SimpleNamespace

    from ffcv_dp4tl.scoring.methods.fm import FeatureMapping

    source = np.repeat(np.eye(4, dtype=np.float32)[:2], 10, axis=0)  # 2 distinct rows
    target = SimpleNamespace(features=source[:3])
    ctx = SimpleNamespace(k=8, iters=5, seed=0, backend="cpu", meta={},
                          target_predictions=lambda features: [target],
                          source_features=lambda split: source, combine=lambda parts: parts[0])
    with pytest.warns(UserWarning, match=r"k-means left 6 of its 8 clusters empty"):
        result = FeatureMapping().score(ctx)
    assert len(result.scores) == 8 and len(np.unique(result.train_units)) == 2
