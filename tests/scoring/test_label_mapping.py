"""LM scores, softmax tie-breaker, class selection (ties, reverse), multi-target sums."""
from __future__ import annotations

import numpy as np
import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.scoring import (
    ScoringError,
    combine_target_scores,
    kept_sample_indices,
    label_mapping_scores,
    select_classes,
    softmax_mass,
)


def test_label_mapping_scores_histogram():
    preds = [2, 0, 2, 5, 2, 0]
    s = label_mapping_scores(preds, 6)
    assert s.dtype == np.int64
    np.testing.assert_array_equal(s, [2, 0, 3, 0, 0, 1])
    np.testing.assert_array_equal(label_mapping_scores(np.array([], dtype=np.int64), 3), [0, 0, 0])


def test_label_mapping_scores_errors():
    with pytest.raises(ScoringError, match=r"predictions must lie in \[0, 6\) \(num_classes=6\)"):
        label_mapping_scores([0, 6], 6)
    with pytest.raises(ScoringError, match="integer ids"):
        label_mapping_scores(np.array([0.0, 1.0]), 6)
    with pytest.raises(ScoringError, match="num_classes must be a positive int"):
        label_mapping_scores([0], 0)
    assert issubclass(ScoringError, DP4TLError)


def test_softmax_mass_from_logits_and_probs():
    logits = np.array([[0.0, 0.0, np.log(2.0)], [10.0, -10.0, 0.0]])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(softmax_mass(logits), p.sum(0), rtol=1e-12)
    np.testing.assert_allclose(softmax_mass(logits, chunk_rows=1), p.sum(0), rtol=1e-12)
    np.testing.assert_allclose(softmax_mass(p, kind="probs"), p.sum(0), rtol=1e-12)
    # huge logits stay finite thanks to max subtraction
    assert np.isfinite(softmax_mass(np.array([[1e4, 0.0]]))).all()
    with pytest.raises(ScoringError, match="pass kind='logits'"):
        softmax_mass(logits, kind="probs")
    with pytest.raises(ScoringError, match="2-D"):
        softmax_mass(np.zeros(3))


def test_select_classes_basic_and_count():
    scores = np.array([5, 1, 9, 3, 7, 0, 2, 8, 6, 4])
    np.testing.assert_array_equal(select_classes(scores, 0.7), [2, 4, 7])  # round(0.3*10) = 3
    np.testing.assert_array_equal(select_classes(scores, 0.0), np.arange(10))
    np.testing.assert_array_equal(select_classes(scores, 0.9), [2])
    out = select_classes(scores, 0.5)
    assert out.dtype == np.int64 and np.all(np.diff(out) > 0)


def test_select_classes_ties_by_tiebreak_then_class_id():
    scores = np.array([3, 5, 3, 3, 5, 0])
    # keep 4: both 5s, then two of the three 3s (ids 0, 2, 3)
    np.testing.assert_array_equal(select_classes(scores, 1 / 3), [0, 1, 2, 4])  # lower ids win
    tb = np.array([0.1, 0.0, 0.9, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(select_classes(scores, 1 / 3, tiebreak=tb), [1, 2, 3, 4])
    # equal tiebreak too: class id decides
    tb2 = np.array([0.5, 0.0, 0.5, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(select_classes(scores, 1 / 3, tiebreak=tb2), [0, 1, 2, 4])


def test_select_classes_reverse():
    scores = np.array([3, 5, 3, 3, 5, 0])
    # lowest first: 0 (id 5), then the 3s by lower id
    np.testing.assert_array_equal(select_classes(scores, 0.5, reverse=True), [0, 2, 5])
    tb = np.array([0.1, 0.0, 0.9, 0.5, 0.0, 0.0])
    # reversed key: lower tiebreak first among equal scores -> ids 0 (0.1), 3 (0.5)
    np.testing.assert_array_equal(select_classes(scores, 0.5, tiebreak=tb, reverse=True), [0, 3, 5])


def test_select_classes_is_deterministic_on_random_ties(rng):
    scores = rng.integers(0, 4, size=1000)
    a = select_classes(scores, 0.9)
    b = select_classes(scores.copy(), 0.9)
    np.testing.assert_array_equal(a, b)
    assert a.size == 100
    threshold = np.sort(scores)[::-1][99]
    assert (scores[a] >= threshold).all()


def test_select_classes_errors():
    with pytest.raises(ScoringError, match=r"ratio must be in \[0, 1\), got 1"):
        select_classes([1, 2, 3], 1)
    with pytest.raises(ScoringError, match=r"ratio must be in \[0, 1\), got -0.1"):
        select_classes([1, 2, 3], -0.1)
    with pytest.raises(ScoringError, match=r"ratio must be in \[0, 1\)"):
        select_classes([1, 2, 3], float("nan"))
    with pytest.raises(ScoringError, match="tiebreak has 2 entries but scores has 3"):
        select_classes([1, 2, 3], 0.5, tiebreak=[1, 2])
    with pytest.raises(ScoringError, match="keeps none of them"):
        select_classes(np.arange(10), 0.96)
    with pytest.raises(ScoringError, match="NaN"):
        select_classes([1.0, np.nan], 0.5)


def test_kept_sample_indices():
    labels = np.array([3, 0, 1, 3, 2, 1])
    np.testing.assert_array_equal(kept_sample_indices(labels, [1, 3]), [0, 2, 3, 5])
    np.testing.assert_array_equal(kept_sample_indices(labels, [7]), [])
    np.testing.assert_array_equal(kept_sample_indices(labels, np.array([], dtype=np.int64)), [])


def test_combine_target_scores_normalised_sum():
    a = np.array([2, 2, 0, 0])  # small target
    b = np.array([0, 100, 100, 200])  # large target
    out = combine_target_scores([a, b])
    np.testing.assert_allclose(out, [0.5, 0.75, 0.25, 0.5])
    np.testing.assert_allclose(out.sum(), 2.0)
    np.testing.assert_allclose(combine_target_scores([a, b], weights=[2, 0]), [1, 1, 0, 0])
    with pytest.raises(ScoringError, match="scores of flowers has 3 entries but the first target has 4"):
        combine_target_scores([a, b[:3]], names=["cars", "flowers"])
    with pytest.raises(ScoringError, match="target 1 sum to 0"):
        combine_target_scores([a, np.zeros(4)])
    with pytest.raises(ScoringError, match="negative"):
        combine_target_scores([a, -b])
    with pytest.raises(ScoringError, match="no target scores"):
        combine_target_scores([])


def test_equal_vote_shares_of_several_targets_tie_exactly_for_the_tie_break():
    """Class 0 gets 6 of target A's 144 votes; class 1 gets 1 of A's and 5 of B's: both hold
    6/144 of the votes, so the ranking must reach the tie-break, not let the last bit of two
    float sums decide (they put class 1 first whatever the tie-break said)."""
    from ffcv_dp4tl.scoring.ranking import rank

    a = np.array([6, 1, 137, 0])
    b = np.array([0, 5, 0, 139])
    combined = combine_target_scores([a, b])
    assert combined[0] == combined[1]
    order = rank(combined, np.array([2.0, 1.0, 0.0, 0.0]))  # the tie-break favours class 0
    assert list(order).index(0) < list(order).index(1)


def test_lm_breaks_vote_ties_by_softmax_mass_when_pruning(source_dir, target_dir, trained_run,
                                                          tmp_path):
    """Source classes with the same number of target votes (on the tiny target several get
    none) are ranked by the target's summed softmax mass on them, so the class that is the
    runner-up for more target images is kept: LM's tie-break equals that mass, recomputed here
    from the surrogate's target logits, and prune keeps the classes in (votes, mass) order at a
    ratio whose cut falls inside a tie where the mass order is not the class-id order."""
    from ffcv_dp4tl.data import load_manifest, load_mask
    from ffcv_dp4tl.pipeline.prune import prune
    from ffcv_dp4tl.pipeline.score import score
    from ffcv_dp4tl.pipeline.scores_io import load_scores

    from .helpers import surrogate_context

    out = tmp_path / "lm"
    ckpt = trained_run / "checkpoint.pt"
    score("lm", source_dir=source_dir, out_dir=out, target_dir=target_dir, checkpoint=ckpt,
          fmt="wds", num_workers=0, progress=False)
    sc = load_scores(out)
    ctx = surrogate_context("lm", source_dir, tmp_path / "ref", ckpt, targets=(target_dir,))
    logits = ctx.target_predictions()[0].logits.astype(np.float64)
    c = logits.shape[1]
    votes = np.bincount(logits.argmax(1), minlength=c)
    e = np.exp(logits - logits.max(1, keepdims=True))
    mass = (e / e.sum(1, keepdims=True)).sum(0)
    np.testing.assert_array_equal(sc.scores, votes)
    assert sc.tiebreak is not None
    np.testing.assert_allclose(sc.tiebreak, mass, rtol=1e-6)
    by_mass = np.lexsort((np.arange(c), -mass, -votes))  # votes, then mass, then id
    by_id = np.lexsort((np.arange(c), -votes))  # votes, then id
    m = next((m for m in range(1, c) if set(by_mass[:m]) != set(by_id[:m])), None)
    assert m is not None, f"no cut where the tie-break matters: votes {votes}, mass {mass}"
    summary = prune(out, source_dir, (c - m) / c, tmp_path / "mask")
    assert summary["kept_units"] == sorted(by_mass[:m].tolist())
    train = load_manifest(source_dir).split("train")
    mask = load_mask(tmp_path / "mask" / "train.npy", train)
    labels = np.asarray(train.load_labels())
    np.testing.assert_array_equal(mask.indices, np.flatnonzero(np.isin(labels, by_mass[:m])))


def test_an_exact_half_keeps_the_even_count():
    """The kept count is Python's ``round(fraction * n)``, as select_classes and select_samples
    promise: an exact half goes to the even count (2.5 -> 2, 3.5 -> 4, 7.5 -> 8), not always up,
    so a ratio that lands on a half keeps the same number of units on every machine and in the
    paper's tables."""
    from ffcv_dp4tl.scoring import select_samples

    scores = np.arange(10)
    assert select_classes(scores, 0.75).size == 2  # (1 - 0.75) * 10 = 2.5
    assert select_classes(scores, 0.25).size == 8  # 7.5
    assert select_classes(np.arange(7), 0.5).size == 4  # 3.5
    np.testing.assert_array_equal(select_samples(np.arange(10.0), 0.25), [8, 9])  # 2.5 -> 2


def test_the_kept_count_of_a_decimal_half_is_the_float_products_rounding():
    """keep_count's documented rule: round() of the float product, whose error decides a decimal
    half (15 classes: 0.3 * 15 = 4.500000000000001 keeps 5, 0.1 * 15 = 1.4999999999999996
    keeps 1); not half-to-even, as the docstring used to say."""
    from ffcv_dp4tl.scoring.label_mapping import select_classes

    assert len(select_classes(np.arange(15.0), 0.7)) == 5
    assert len(select_classes(np.arange(15.0), 0.9)) == 1
    assert len(select_classes(np.arange(10.0), 0.25)) == 8  # 7.5 exactly: Python's round, to 8
