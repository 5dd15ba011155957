"""The selection gallery (Fig. A7): kept source classes beside the target, in ranked order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

@pytest.fixture(scope="module")
def synth(small_synth) -> Path:
    return small_synth


def _class_selection(synth: Path, root: Path, scores: np.ndarray, keep: list[int], name: str):
    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.data.masks import mask_from_classes, save_mask
    from ffcv_dp4tl.pipeline.scores_io import write_scores

    write_scores(root / name, method="lm", unit="class", scores=scores, meta={})
    split = load_manifest(synth / "source").split("train")
    return save_mask(root / name / "train.npy", mask_from_classes(split, keep))


def test_class_units_are_ranked_by_score_and_drawn(synth, tmp_path):
    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.pipeline.gallery import kept_class_ranking, selection_gallery

    scores = np.array([0, 5, 1, 9, 0, 0, 3, 0], float)
    mask = _class_selection(synth, tmp_path, scores, [1, 3, 6], "sel")
    labels = np.asarray(load_manifest(synth / "source").split("train").load_labels())
    from ffcv_dp4tl.data.masks import load_mask

    kept = load_mask(mask).indices
    assert kept_class_ranking(labels, kept, tmp_path / "sel") == [3, 1, 6]
    png = selection_gallery(synth / "source", synth / "targets" / "paper", mask,
                            tmp_path / "g.png", scores_dir=tmp_path / "sel", top=3, per_class=2)
    im = Image.open(png)
    assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100


def test_other_units_are_ranked_by_kept_samples(synth):
    from ffcv_dp4tl.pipeline.gallery import kept_class_ranking

    labels = np.repeat(np.arange(4), 5)
    kept = np.r_[np.flatnonzero(labels == 2), np.flatnonzero(labels == 0)[:2],
                 np.flatnonzero(labels == 3)[:4]]
    assert kept_class_ranking(labels, np.sort(kept)) == [2, 3, 0]


def test_no_ground_truth_still_draws(synth, tmp_path):
    from ffcv_dp4tl.pipeline.gallery import selection_gallery

    mask = _class_selection(synth, tmp_path, np.arange(8, dtype=float), [6, 7], "sel2")
    png = selection_gallery(synth / "source", synth / "targets" / "paper", mask, tmp_path / "n.png",
                            ground_truth=None, top=2, per_class=1)
    assert png.exists() and png.stat().st_size > 1000
