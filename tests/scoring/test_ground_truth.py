"""Ground truth of the synth data: an oracle selection scores 1.0, RANDOM its expectation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.scoring.baselines import random_scores, select_samples
from ffcv_dp4tl.scoring.ground_truth import (GroundTruth, ground_truth_from_extra, load_ground_truth,
                                             mask_quality, random_topk_recall, selection_quality,
                                             topk_recall)

SYNTH = ("synth:tiny,num_superclasses=6,classes_per_superclass=3,train_per_class=8,val_per_class=0,"
         "image_size=16,num_targets=2,target_classes=4,target_train_per_class=2,"
         "target_test_per_class=1")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from tiny_data import build_synth

    return build_synth(SYNTH, tmp_path_factory.mktemp("gt"))


@pytest.fixture(scope="module")
def gt(synth) -> GroundTruth:
    g = load_ground_truth(synth / "source", synth / "targets" / "paper")
    assert g is not None
    return g


def test_loads_the_generators_answer(synth, gt):
    from beton_builders.synth import parse_synth, synth_targets

    cfg = parse_synth(SYNTH)
    extra = synth_targets(cfg)["paper"].extra
    assert gt.related_superclasses == tuple(extra["related_superclasses"])
    assert gt.mapped_classes == tuple(sorted(k for g in extra["source_classes_of_class"] for k in g))
    assert gt.num_classes == cfg.num_classes
    # by name works too, and several targets give the union
    assert load_ground_truth(synth / "source", "paper") == gt
    both = load_ground_truth(synth / "source", ["paper", "warm"])
    assert set(both.related_superclasses) == set(gt.related_superclasses) | set(
        load_ground_truth(synth / "source", "warm").related_superclasses)


def test_no_ground_truth_is_none(tmp_path, synth):
    assert load_ground_truth(tmp_path, "paper") is None          # not a dataset
    assert load_ground_truth(synth / "source", "nosuch") is None  # not one of its targets
    assert ground_truth_from_extra({}, ["paper"]) is None          # real data: no extra


def test_oracle_scores_one(synth, gt):
    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.data.masks import mask_from_classes, save_mask

    oracle = np.zeros(gt.num_classes)
    oracle[list(gt.mapped_classes)] = 1.0
    assert topk_recall(oracle, gt) == 1.0
    assert topk_recall(-oracle, gt) == 0.0           # the worst ranking finds none
    split = load_manifest(synth / "source").split("train")
    mask = save_mask(synth / "oracle.npy", mask_from_classes(split, gt.mapped_classes))
    q = mask_quality(gt, synth / "source", mask)
    assert q["related_samples"] == q["related_classes"] == q["mapped_recall"] == 1.0
    assert q["kept_classes"] == len(gt.mapped_classes)
    # the whole split keeps every class, related at chance
    full = mask_quality(gt, synth / "source", None)
    assert full["related_samples"] == pytest.approx(full["chance"])
    assert full["chance"] == pytest.approx(len(gt.related_classes) / gt.num_classes)


def test_selection_quality_counts_samples_and_classes_separately(gt):
    """``related_samples`` weighs each kept sample, ``related_classes`` each kept class once:
    a selection of many samples of one related class and one sample each of two unrelated
    classes is mostly related by samples but a third related by classes. Hand-counted values,
    so swapping the two measures (or counting a class per sample) fails."""
    related = [int(c) for c in gt.related_classes]
    unrelated = [c for c in range(gt.num_classes) if c not in set(related)]
    mapped = set(gt.mapped_classes)
    kept = [related[0]] * 8 + unrelated[:2]
    q = selection_quality(gt, kept)
    assert q["related_samples"] == pytest.approx(8 / 10)
    assert q["related_classes"] == pytest.approx(1 / 3)
    assert q["kept_classes"] == 3
    assert q["mapped_recall"] == pytest.approx(len(mapped & set(kept)) / len(mapped))


def test_random_class_ranking_recall_is_k_over_c(gt):
    recalls = [topk_recall(random_scores(gt.num_classes, s), gt) for s in range(2000)]
    expect = random_topk_recall(gt)
    assert expect == pytest.approx(len(gt.mapped_classes) / gt.num_classes)
    assert np.mean(recalls) == pytest.approx(expect, abs=0.02)


def test_scores_that_say_nothing_recall_at_chance_whatever_the_ids():
    """A scorer that learned nothing (every class scored alike) read recall 1.0 on the synth
    `paper` target, whose answer is source classes 0..19, because the ranking broke ties by
    lower id (review). A tie across the cut now counts at its expectation under a random
    order: all-equal scores give k / C on any layout of the answer; a tie of two classes for
    the last place, one of them mapped, counts half of it."""
    from ffcv_dp4tl.scoring.ground_truth import GroundTruth

    C = 12
    head = GroundTruth(targets=("t",), superclass_of_class=tuple(range(C)),
                       related_superclasses=(0, 1, 2), mapped_classes=(0, 1, 2))
    tail = GroundTruth(targets=("t",), superclass_of_class=tuple(range(C)),
                       related_superclasses=(9, 10, 11), mapped_classes=(9, 10, 11))
    for g in (head, tail):
        assert topk_recall(np.zeros(C), g) == pytest.approx(3 / C)
        assert topk_recall(np.zeros(C), g, np.ones(C)) == pytest.approx(3 / C)
    s = np.zeros(C)
    s[[0, 1]] = 2.0
    s[[2, 7]] = 1.0  # mapped 2 and unmapped 7 tie for the third place
    assert topk_recall(s, head) == pytest.approx((2 + 0.5) / 3)
    tb = np.zeros(C)
    tb[2] = 1.0  # the tie-break settles it: no longer a tie
    assert topk_recall(s, head, tb) == 1.0


def test_random_samples_keep_related_at_chance(synth, gt):
    from ffcv_dp4tl.data.manifest import load_manifest

    labels = np.asarray(load_manifest(synth / "source").split("train").load_labels())
    shares = []
    for s in range(300):
        idx = select_samples(random_scores(len(labels), s), 0.4)
        shares.append(selection_quality(gt, labels[idx])["related_samples"])
    assert np.mean(shares) == pytest.approx(gt.chance(labels), abs=0.01)


def test_bad_scores_are_refused(gt):
    with pytest.raises(DataError, match="class scores"):
        topk_recall(np.zeros(gt.num_classes + 1), gt)
    with pytest.raises(DataError, match="outside"):
        selection_quality(gt, [gt.num_classes])
    assert selection_quality(gt, [])["kept_classes"] == 0
