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


def test_names_with_dollar_signs_are_drawn_as_written(synth, tmp_path, monkeypatch):
    """Class and dataset names come from manifests, and matplotlib read a "$" in one as math:
    ``cost_$5_to_$10`` or a name holding ``$\\foo$`` failed to parse when the PNG was saved, the
    run's last step (after every training; report.md never written; audit)."""
    from ffcv_dp4tl.pipeline import gallery

    names = iter(["cost_$5_to_$10", "a $\\foo$ b", "$$ now"] * 20)
    monkeypatch.setattr(gallery, "_class_label", lambda manifest, k: next(names))
    mask = _class_selection(synth, tmp_path, np.arange(8, dtype=float), [6, 7], "sel3")
    png = gallery.selection_gallery(synth / "source", synth / "targets" / "paper", mask,
                                    tmp_path / "d.png", top=2, per_class=1,
                                    title="run $\\bar$ at 60 %")
    assert Image.open(png).format == "PNG"


def test_an_image_is_decoded_at_gallery_size_and_a_bad_one_named(monkeypatch):
    """A shard's 12000 x 12000 JPEG was decoded whole (12.6 GB for one gallery row; audit): a
    JPEG decodes at a reduced scale and every image is shrunk to the cell's size; bytes that do
    not decode are refused in one line naming the sample."""
    import io

    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.pipeline.gallery import THUMB, _thumbnail

    buf = io.BytesIO()
    Image.new("RGB", (3000, 1000), (200, 10, 10)).save(buf, format="JPEG")
    opened, real_open = [], Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    im = _thumbnail(buf.getvalue(), "s")
    assert im.shape[1] == THUMB and im.shape[0] in (42, 43) and abs(int(im[0, 0, 0]) - 200) < 8
    assert opened[0].size[0] <= 3000 // 4  # decoded at a reduced scale (draft), not 3000 px
    with pytest.raises(DataError, match=r"^where: the image does not decode \(.*\); check the "
                                        r"dataset with `dp4tl verify --deep`$"):
        _thumbnail(b"not a jpeg", "where")


def test_the_mosaic_frames_each_row_in_its_colour_and_fits_every_image_to_its_cell():
    """Each side of the gallery is one image of cells (72 axes of one image each took most of
    its drawing time): a row of related classes framed green, one without ground truth not
    framed, a small image blown up to its cell pixel by pixel and a wide one fitted, centred."""
    from ffcv_dp4tl.pipeline import gallery as g

    blue = np.zeros((16, 16, 3), np.uint8)
    blue[..., 2] = 255
    wide = np.full((64, 256, 3), 7, np.uint8)
    canvas = g._mosaic([[blue, wide], [blue]], ["tab:green", None], nrows=3, per_class=2)
    assert canvas.shape == (3 * g._PITCH, 2 * g._PITCH, 3) and canvas.dtype == np.uint8
    y0 = x0 = g._SPACE // 2
    inner = g._FRAME + g._CELL // 2
    assert tuple(canvas[y0 + 1, x0 + inner]) == (44, 160, 44)  # tab:green's frame
    assert tuple(canvas[y0 + inner, x0 + inner]) == (0, 0, 255)  # the image, centred
    assert tuple(canvas[y0 + g._FRAME, x0 + g._FRAME]) == (0, 0, 255)  # blown up to the cell
    x1 = g._PITCH + x0 + g._FRAME  # the wide image: fitted to the cell's width, centred
    assert tuple(canvas[y0 + inner, x1]) == (7, 7, 7)
    assert tuple(canvas[y0 + g._FRAME, x1 + g._CELL // 2]) == (255, 255, 255)
    y1 = g._PITCH + y0  # the row without ground truth: no frame
    assert tuple(canvas[y1 + 1, x0 + inner]) == (255, 255, 255)
    assert tuple(canvas[y1 + inner, x0 + inner]) == (0, 0, 255)
    assert (canvas[2 * g._PITCH:] == 255).all()  # (rows beyond the images: white)


def test_drawing_the_gallery_leaves_the_users_matplotlib_as_it_was(synth, tmp_path):
    """The gallery called ``matplotlib.use("Agg")``: a notebook that ran the pipeline (which
    draws it) had its backend switched and lost its inline plots (figures audit). The backend
    set before is the one after, and pyplot's figure list is unchanged (no leaked figure)."""
    import matplotlib
    import matplotlib.pyplot as plt

    from ffcv_dp4tl.pipeline.gallery import selection_gallery

    mask = _class_selection(synth, tmp_path, np.arange(8, dtype=float), [6, 7], "sel4")
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        figures = plt.get_fignums()
        png = selection_gallery(synth / "source", synth / "targets" / "paper", mask,
                                tmp_path / "b.png", top=2, per_class=1)
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == figures
        assert Image.open(png).format == "PNG"
    finally:
        matplotlib.use(before)


def test_a_figure_of_the_figures_helper_is_outside_pyplot(tmp_path):
    """:mod:`ffcv_dp4tl.figures` (what the gallery draws on, and the benches' plots can):
    a grid of axes, saved atomically, with the backend and pyplot's figures untouched."""
    import matplotlib
    import matplotlib.pyplot as plt

    from ffcv_dp4tl import figures

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        figures_before = plt.get_fignums()
        fig, axes = figures.subplots(2, 3, figsize=(6, 4), squeeze=False,
                                     gridspec_kw={"wspace": 0.1})
        assert axes.shape == (2, 3) and fig.get_size_inches().tolist() == [6, 4]
        axes[1, 2].plot([0, 1], [1, 0], color=figures.colormap("tab10")(1))
        png = figures.save(fig, tmp_path / "grid.png", dpi=50, bbox_inches="tight")
        assert Image.open(png).format == "PNG"
        one, ax = figures.subplots(figsize=(2, 2))
        assert ax.figure is one and figures.figure((1, 1)).canvas.get_renderer() is not None
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures_before
    finally:
        matplotlib.use(before)


def test_a_sample_methods_gallery_says_its_rows_are_ranked_by_kept_samples(synth, tmp_path):
    """RANDOM's gallery read "top kept source classes #1…#8" (ranked only by how many samples
    each kept) under a title "mapped classes kept 100 %" that any sample method reaches (figures
    audit): for a sample unit (the registry's) the heading and rows say what ranks them and the
    title says the recall is near 100 % for any sample method; LM's stay ranked by score."""
    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.data.masks import make_mask, save_mask
    from ffcv_dp4tl.pipeline.gallery import gallery_plan
    from ffcv_dp4tl.pipeline.scores_io import write_scores

    split = load_manifest(synth / "source").split("train")
    scores = np.random.default_rng(0).random(split.num_samples)
    write_scores(tmp_path / "rnd", method="random", unit="sample", scores=scores, meta={})
    mask = save_mask(tmp_path / "rnd" / "train.npy",
                     make_mask(np.flatnonzero(scores >= np.quantile(scores, 0.6)), split))
    plan = gallery_plan(synth / "source", synth / "targets" / "paper", mask,
                        scores_dir=tmp_path / "rnd", top=3, per_class=1, title="RANDOM at 0.6")
    assert plan.source_heading.startswith("source classes with the most kept samples (")
    assert "mapped classes with a kept sample" in plan.title
    assert "(near 100 % for any sample method)" in plan.title
    labels = np.asarray(split.load_labels())[np.load(mask)]
    counts = [int(label.split(" kept: ")[0]) for label, *_ in plan.source_rows]
    assert counts == sorted(counts, reverse=True) and counts[0] == np.bincount(labels).max()
    assert not any(label.startswith("#") for label, *_ in plan.source_rows)
    lm_mask = _class_selection(synth, tmp_path, np.arange(8, dtype=float), [6, 7], "sel5")
    lm = gallery_plan(synth / "source", synth / "targets" / "paper", lm_mask,
                      scores_dir=tmp_path / "sel5", top=2, per_class=1)
    assert lm.source_heading == "top kept source classes by score (2 kept)"
    assert [label[:3] for label, *_ in lm.source_rows] == ["#1 ", "#2 "]
    assert "mapped classes kept " in lm.title and "sample method" not in lm.title
