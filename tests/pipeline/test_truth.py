"""A run's selection against the synth ground truth (report.md, the benches)."""
from __future__ import annotations

import numpy as np

from ffcv_dp4tl.pipeline.truth import selection_truth, truth_cells, truth_lines


def _select(root, out, scores, keep, unit="class"):
    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.data.masks import mask_from_classes, save_mask
    from ffcv_dp4tl.pipeline.scores_io import write_scores

    write_scores(out, method="lm", unit=unit, scores=np.asarray(scores, float), meta={})
    split = load_manifest(root / "source").split("train")
    return save_mask(out / "train.npy", mask_from_classes(split, keep))


def test_oracle_selection_is_perfect_and_reported(small_synth, tmp_path):
    from ffcv_dp4tl.scoring.ground_truth import load_ground_truth

    gt = load_ground_truth(small_synth / "source", small_synth / "targets" / "paper")
    scores = np.zeros(gt.num_classes)
    scores[list(gt.mapped_classes)] = 1
    mask = _select(small_synth, tmp_path / "o", scores, gt.mapped_classes)
    t = selection_truth(small_synth / "source", [small_synth / "targets" / "paper"], tmp_path / "o", mask)
    assert t["recall"] == t["related_samples"] == t["related_classes"] == t["mapped_kept"] == 1.0
    assert t["recall_chance"] == len(gt.mapped_classes) / gt.num_classes
    assert truth_cells(t) == ["1.00"] * 4
    assert "| 1.00 (random ranking:" in "\n".join(truth_lines(t))


def test_unrelated_selection_scores_zero_and_no_truth_is_none(small_synth, tmp_path):
    from ffcv_dp4tl.scoring.ground_truth import load_ground_truth

    gt = load_ground_truth(small_synth / "source", "paper")
    unrelated = [k for k in range(gt.num_classes) if not gt.related[k]]
    mask = _select(small_synth, tmp_path / "u", np.isin(np.arange(gt.num_classes), unrelated).astype(float),
                   unrelated)
    t = selection_truth(small_synth / "source", ["paper"], tmp_path / "u", mask)
    assert t["recall"] == 0.0 and t["related_samples"] == 0.0 and t["mapped_kept"] == 0.0
    # the full split (the 0 % reference) keeps related samples at the source's share
    full = selection_truth(small_synth / "source", ["paper"], None, None)
    assert full["recall"] is None and full["related_samples"] == full["chance"]
    assert selection_truth(tmp_path, ["paper"], None, None) is None  # no ground truth
    assert truth_cells(None) == ["–"] * 4 and truth_lines(None) == []


def test_cost_table_section_averages_over_seeds():
    from ffcv_dp4tl.pipeline.truth import truth_table

    t = lambda rec, rel: {"recall": rec, "related_samples": rel, "related_classes": rel,  # noqa: E731
                          "mapped_kept": 1.0, "chance": 0.25, "recall_chance": 0.4}
    rows = [{"method": "lm", "ratio": 0.6, "seed": 0, "truth": t(1.0, 0.9)},
            {"method": "lm", "ratio": 0.6, "seed": 1, "truth": t(0.5, 0.7)},
            {"method": "random", "ratio": 0.6, "seed": 0, "truth": t(None, 0.25)},
            {"method": "0 %", "ratio": 0.0, "seed": 0, "truth": None}]
    lines = truth_table(rows, ["LM", "RANDOM"], ["lm", "random"], [0.6])
    # each measure beside its chance level (review: RANDOM's trivial 1.00 read as the best)
    assert "| LM | 60 % | 0.75 | 0.80 | 0.80 | 1.00 | 0.25 | 0.40 | 2 |" in lines
    assert "| RANDOM | 60 % | – | 0.25 | 0.25 | 1.00 | 0.25 | 0.40 | 1 |" in lines
    assert any("mapped kept is near 1.00 for any sample-unit method" in x for x in lines)
    assert truth_table([r for r in rows if r["truth"] is None], ["LM"], ["lm"], [0.6]) == []
