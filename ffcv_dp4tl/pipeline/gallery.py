"""A picture of the selection (the paper's Fig. A7): what was kept, beside the target.

``selection_gallery`` draws one PNG: on the left a few images of each target class (the target
train split), on the right the top kept source classes, a few kept images each, in the order the
method ranked them. Class units (LM) are ranked by their scores; cluster and sample units (FM,
RANDOM, the baselines) by how many train samples of the class the mask kept, and the gallery
says so: its heading reads "source classes with the most kept samples" and each row gives its
count (the method's unit is the scorer registry's). Rows carry the
class name from the manifest (the wnid on ImageNet, with its description when the build recorded
one); on data with ground truth (``synth``) a row is marked **related** (green) or not (red), and
the title gives the recall of the mapped classes, so a wrong selection is visible at a glance
(for a sample method, which keeps a few samples of nearly every class, that recall is near
100 % whatever it chose: the title says so, and the related share is the measure).
With several targets the left side shows each target's classes in turn, and related / mapped
means to any of them: the union of their ground truths that report.md measures.

Images are read straight from the WebDataset shards (one JPEG per image, by index), so the
gallery costs a few dozen decodes whatever the dataset's size.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..data.manifest import load_manifest
from ..errors import DataError, DP4TLError
from ..data.masks import load_mask
from ..figures import save, subplots
from ..reporting import literal_text
from ..scoring.ground_truth import GroundTruth, load_ground_truth, selection_quality
from ..scoring.ranking import rank
from ..scoring.registry import get_scorer
from .scores_io import load_scores, load_scores_meta
from .targets import display_names

__all__ = ["GALLERY", "GalleryPlan", "gallery_plan", "kept_class_ranking", "selection_gallery"]

#: the gallery's file name in a run's report folder (linked from report.md)
GALLERY = "selection.png"


#: the longest side an image is decoded to (a gallery cell is about 100 px at its dpi)
THUMB = 128


def _thumbnail(data: bytes, where: str) -> np.ndarray:
    """One image at gallery size. A JPEG is decoded at a reduced scale (``draft``) and every
    image shrunk before it is drawn: a shard's 12000 x 12000 JPEG was decoded whole and
    upscaled by the plot (12.6 GB for one row, the run's last step; audit)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (THUMB, THUMB))
        img = img.convert("RGB")
        img.thumbnail((THUMB, THUMB))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: the image does not decode ({type(e).__name__}: {e}); check "
                        "the dataset with `dp4tl verify --deep`") from None
    return np.asarray(img)


def _read_images(split, indices: Sequence[int]) -> list[np.ndarray]:
    from ..data.wds_loader import ShardReader

    reader = ShardReader(split)
    return [_thumbnail(reader.read(int(i))[0], f"{split.root} split {split.name!r} sample {int(i)}")
            for i in indices]


#: a cell of the gallery's mosaic (:func:`_mosaic`): its side, the frame drawn in a row's
#: colour around each image, and the white space between cells
_CELL, _FRAME, _SPACE = THUMB, 5, 20
_PITCH = _CELL + 2 * _FRAME + _SPACE


def _mosaic(rows: list[list[np.ndarray]], colours: list[str | None], nrows: int,
            per_class: int) -> np.ndarray:
    """One RGB image of ``nrows`` x ``per_class`` cells on white: each image of ``rows`` scaled
    to fit its cell (small ones blown up pixel by pixel, as the plot's nearest interpolation
    did), centred, framed in its row's colour (None: no frame)."""
    from matplotlib.colors import to_rgb

    canvas = np.full((nrows * _PITCH, per_class * _PITCH, 3), 255, np.uint8)
    for r, (imgs, colour) in enumerate(zip(rows, colours)):
        for j, im in enumerate(imgs[:per_class]):
            y0, x0 = r * _PITCH + _SPACE // 2, j * _PITCH + _SPACE // 2
            if colour is not None:
                canvas[y0:y0 + _CELL + 2 * _FRAME, x0:x0 + _CELL + 2 * _FRAME] = \
                    np.round(np.array(to_rgb(colour)) * 255).astype(np.uint8)
            h, w = im.shape[:2]
            scale = _CELL / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            fitted = np.asarray(Image.fromarray(im).resize(
                size, Image.NEAREST if scale >= 1 else Image.BILINEAR))
            y, x = y0 + _FRAME + (_CELL - size[1]) // 2, x0 + _FRAME + (_CELL - size[0]) // 2
            canvas[y0 + _FRAME:y0 + _FRAME + _CELL, x0 + _FRAME:x0 + _FRAME + _CELL] = 255
            canvas[y:y + size[1], x:x + size[0]] = fitted[..., :3]
    return canvas


def kept_class_ranking(labels: np.ndarray, kept: np.ndarray, scores_dir: str | Path | None = None
                       ) -> list[int]:
    """Source classes with >= 1 kept train sample, best first: by the class scores when the
    scores are class-unit, else by kept sample count (then class id)."""
    kept_labels = labels[kept]
    counts = np.bincount(kept_labels, minlength=int(labels.max()) + 1 if labels.size else 0)
    present = np.flatnonzero(counts)
    if scores_dir is not None:
        sc = load_scores(scores_dir)
        if sc.unit == "class" and len(sc.scores) == len(counts):
            order = rank(np.asarray(sc.scores, float),
                         None if sc.tiebreak is None else np.asarray(sc.tiebreak, float))
            return [int(c) for c in order if counts[c]]
    order = np.lexsort((present, -counts[present]))
    return [int(c) for c in present[order]]


def _unit(scores_dir: str | Path | None) -> str | None:
    """The unit of the method whose scores are in ``scores_dir`` (the scorer registry's; its
    scores.json's for a method no longer registered); None without scores."""
    if scores_dir is None:
        return None
    meta = load_scores_meta(scores_dir, check_method=False)
    try:
        return get_scorer(meta.method).unit
    except DP4TLError:
        return meta.unit


def _class_label(manifest, k: int) -> str:
    name = manifest.classes[k]
    desc = manifest.contract.extra.get("class_descriptions")
    if isinstance(desc, list) and k < len(desc) and desc[k] and desc[k] != name:
        name = f"{name} {str(desc[k]).split(',')[0]}"
    return name if len(name) <= 30 else name[:29] + "…"


@dataclass
class GalleryPlan:
    """What :func:`selection_gallery` draws, before any image is read: the headings, one row per
    target class (label, that target's train split, image indices) and one per kept source
    class (label, mark, colour, image indices). ``colour``/``mark`` come from the ground truth
    of *all* targets (None without one)."""

    title: str
    target_heading: str
    source_heading: str
    target_rows: list[tuple[str, Any, np.ndarray]]
    source_rows: list[tuple[str, str, str | None, np.ndarray]]
    source_split: Any


def gallery_plan(source_dir: str | Path, target_dir: str | Path | Sequence[str | Path],
                 mask: str | Path, *, scores_dir: str | Path | None = None, top: int = 8,
                 per_class: int = 4, title: str = "",
                 ground_truth: GroundTruth | None | bool = True) -> GalleryPlan:
    """The :class:`GalleryPlan` of :func:`selection_gallery` (same arguments)."""
    target_dirs = ([target_dir] if isinstance(target_dir, (str, Path)) else list(target_dir))
    src = load_manifest(source_dir)
    tgts = [load_manifest(d) for d in target_dirs]
    split = src.split("train")
    labels = np.asarray(split.load_labels(), dtype=np.int64)
    kept = load_mask(mask, split).indices
    # every target's truth: the union report.md's ground truth measures (truth.selection_truth)
    gt = (load_ground_truth(source_dir, target_dirs) if ground_truth is True
          else (ground_truth or None))
    ranked = kept_class_ranking(labels, kept, scores_dir)
    unit = _unit(scores_dir)
    by_score = unit == "class"  # (kept_class_ranking's rule: else by kept sample count)
    kept_labels = labels[kept]
    counts = np.bincount(kept_labels, minlength=len(src.classes))
    mapped = set(gt.mapped_classes) if gt is not None else set()
    related = gt.related if gt is not None else None
    source_rows = []
    for r, k in enumerate(ranked[:top]):
        mark = "" if gt is None else ("  ✓ mapped" if k in mapped else
                                      ("  related" if related[k] else "  unrelated"))
        colour = None if gt is None else ("tab:green" if related[k] else "tab:red")
        rank_part = f"#{r + 1} " if by_score else f"{counts[k]} kept: "
        source_rows.append((f"{rank_part}{_class_label(src, k)}{mark}", mark, colour,
                            kept[kept_labels == k][:per_class]))
    # the targets' classes, one of each target in turn (a single target: its first ``top``)
    multi = len(tgts) > 1
    names = display_names([Path(d) for d in target_dirs]) if multi else [
        tgts[0].name or Path(target_dirs[0]).name]
    tsplits = [t.split("train") for t in tgts]
    tlabels = [np.asarray(ts.load_labels(), dtype=np.int64) for ts in tsplits]
    target_rows = []
    for c in range(max(t.num_classes for t in tgts)):
        for name, t, ts, tl in zip(names, tgts, tsplits, tlabels):
            if c < t.num_classes and len(target_rows) < top:
                label = _class_label(t, c)
                target_rows.append((f"{name}: {label}" if multi else label, ts,
                                    np.flatnonzero(tl == c)[:per_class]))
    head = title or "Selection"
    if multi:
        head += f" — targets {', '.join(names)}"
    if gt is not None:
        q = selection_quality(gt, kept_labels)
        recall = f"mapped classes kept {100 * q['mapped_recall']:.0f} %"
        if unit == "sample":  # (a few samples of nearly every class: no measure of the choice)
            recall = (f"mapped classes with a kept sample {100 * q['mapped_recall']:.0f} % "
                      "(near 100 % for any sample method)")
        head += (f" — {recall}, related samples {100 * q['related_samples']:.0f} % "
                 f"(chance {100 * gt.chance(labels):.0f} %)")
    source_heading = (f"top kept source classes by score ({len(ranked)} kept)" if by_score else
                      f"source classes with the most kept samples ({len(ranked)} with any)")
    return GalleryPlan(title=head,
                       target_heading=f"target{'s' if multi else ''} {', '.join(names)}",
                       source_heading=source_heading,
                       target_rows=target_rows, source_rows=source_rows, source_split=split)


@literal_text
def selection_gallery(source_dir: str | Path, target_dir: str | Path | Sequence[str | Path],
                      mask: str | Path, out_png: str | Path, *,
                      scores_dir: str | Path | None = None, top: int = 8, per_class: int = 4,
                      title: str = "", ground_truth: GroundTruth | None | bool = True) -> Path:
    """Write ``out_png``: the target's classes (left) beside the ``top`` best kept source
    classes (right), ``per_class`` images each. ``target_dir``: one target, or the several a
    run selected for (their classes in turn on the left; related / mapped then means to any of
    them, as in report.md). ``mask``: the train mask of the selection; ``scores_dir``: its
    scores (ranks class-unit selections). ``ground_truth``: True = load it from the manifests
    when the data has it, None/False = none, or a :class:`GroundTruth`."""
    plan = gallery_plan(source_dir, target_dir, mask, scores_dir=scores_dir, top=top,
                        per_class=per_class, title=title, ground_truth=ground_truth)
    src_imgs = [_read_images(plan.source_split, idx) for *_, idx in plan.source_rows]
    tgt_imgs = [_read_images(ts, idx) for _, ts, idx in plan.target_rows]

    # each side is one image (a mosaic of its cells) in one axes: 72 axes of one image each
    # took most of the drawing's ~1.2 s (audit: 1.8 s on a busier machine)
    nrows = max(len(plan.source_rows), len(plan.target_rows), 1)
    # (a Figure of its own, outside pyplot: the user's backend and pyplot's figures untouched)
    fig, axes = subplots(1, 3, figsize=(0.95 * (2 * per_class + 1) + 3.2, 0.95 * nrows + 1.0),
                             gridspec_kw={"wspace": 0.05, "width_ratios": [per_class, 0.25,
                                                                           per_class]})
    left, gap, right = axes
    gap.set_axis_off()
    left.set_anchor("E"), right.set_anchor("W")  # (each mosaic beside the gap, not centred)
    rows_at = [(r + 0.5) * _PITCH for r in range(nrows)]
    left.imshow(_mosaic(tgt_imgs, [None] * len(tgt_imgs), nrows, per_class),
                interpolation="antialiased")
    left.set_yticks(rows_at[:len(plan.target_rows)],
                    [label for label, _, _ in plan.target_rows], fontsize=7)
    colours = [colour for _, _, colour, _ in plan.source_rows]
    right.imshow(_mosaic(src_imgs, colours, nrows, per_class), interpolation="antialiased")
    right.yaxis.tick_right()
    right.set_yticks(rows_at[:len(plan.source_rows)],
                     [label for label, *_ in plan.source_rows], fontsize=7)
    for tick, colour in zip(right.get_yticklabels(), colours):
        tick.set_color(colour or "black")
    for ax in (left, right):
        ax.set_xticks([])
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
    left.set_title(plan.target_heading, loc="left", fontsize=8)
    right.set_title(plan.source_heading, loc="left", fontsize=8)
    fig.suptitle(plan.title, fontsize=9)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    save(fig, out_png, dpi=110, bbox_inches="tight")
    return out_png
