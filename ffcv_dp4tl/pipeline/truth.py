"""Ground truth of one pipeline run's selection (synth data): what report.md and the benches show.

:func:`selection_truth` reads the run's scores directory and train mask and returns the measures
of :mod:`ffcv_dp4tl.scoring.ground_truth` as one flat dict (``None`` when the data carries no
ground truth, e.g. real datasets, or when nothing was selected):

* ``recall`` — class units only: the recall of the mapped source classes in the top-k classes
  of the scores' ranking (k = the number of mapped classes), ``recall_chance`` = k / C (a random
  ranking). It measures the *ranking*, whichever end the prune kept: under ``order=reversed``
  the selection is the other end, measured by the columns below;
* ``mapped_kept`` — share of mapped classes with >= 1 kept sample (every unit);
* ``related_samples`` / ``related_classes`` — share of kept samples / kept classes from the
  target's related superclasses; ``chance`` — the related share of the whole source (RANDOM's
  expectation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..contracts.fields import REQUIRED, typed
from ..scoring.ground_truth import load_ground_truth, mask_quality, random_topk_recall, topk_recall
from .scores_io import load_scores

#: the columns reports show, in order, with their headers
TRUTH_COLUMNS = (("recall", "ranking top-k recall"), ("related_samples", "related samples"),
                 ("related_classes", "related classes"), ("mapped_kept", "mapped kept"))

#: what :func:`selection_truth` writes, with each field's kind (:data:`~ffcv_dp4tl.contracts.
#: fields.KINDS`): a rows file's ``truth`` is read against it, so an edited or damaged measure is
#: refused where the row is read, not met as a ``TypeError`` in a table's mean
TRUTH_FIELDS = {"related_samples": "fraction", "related_classes": "fraction",
                "mapped_kept": "fraction", "kept_classes": "count", "chance": "fraction",
                "mapped_classes": "count", "recall": "fraction", "recall_chance": "fraction"}
#: the fields a truth record cannot do without: every table prints ``chance`` beside the columns
#: (the others may be null: ``recall`` of a sample-unit ranking, or absent in older rows)
TRUTH_REQUIRED = ("chance",)


def check_truth(t: Mapping[str, Any], where: object, fix: str) -> Mapping[str, Any]:
    """``t`` (a recorded :func:`selection_truth`) with every field of :data:`TRUTH_FIELDS`
    typed by the contracts' rule (:func:`~ffcv_dp4tl.contracts.fields.typed`): a
    :class:`~ffcv_dp4tl.errors.DataError` of one line naming ``where`` and the field otherwise."""
    for key, kind in TRUTH_FIELDS.items():
        typed(t, key, kind, where, fix, default=REQUIRED if key in TRUTH_REQUIRED else None)
    return t


def selection_truth(source_dir: str | Path, target_dirs: Sequence[str | Path],
                    scores_dir: str | Path | None, mask: str | Path | None) -> dict[str, Any] | None:
    """Ground-truth measures of a selection (see the module doc), or None without ground truth."""
    gt = load_ground_truth(source_dir, list(target_dirs))
    if gt is None:
        return None
    q = mask_quality(gt, source_dir, mask)
    out: dict[str, Any] = {"related_samples": q["related_samples"],
                           "related_classes": q["related_classes"],
                           "mapped_kept": q["mapped_recall"], "kept_classes": q["kept_classes"],
                           "chance": q["chance"], "mapped_classes": len(gt.mapped_classes),
                           "recall": None, "recall_chance": random_topk_recall(gt)}
    if scores_dir is not None and (Path(scores_dir) / "scores.json").exists():
        sc = load_scores(scores_dir)
        if sc.meta.unit == "class" and len(sc.scores) == gt.num_classes:
            out["recall"] = topk_recall(sc.scores, gt, sc.tiebreak)
    return out


#: what the truth tables' readers must know to read them against chance (both benches)
CHANCE_NOTE = ("Read each column against its chance level: a random ranking's top-k recall is "
               "k / C (recall by chance), ties across the k-th place count at their expectation "
               "(recalls recorded since 2026-12-06; before, by lower id); "
               "mapped kept is near 1.00 for any sample-unit method (RANDOM included), which "
               "keeps a few samples of nearly every class, so it ranks class and cluster "
               "selections only (at most kept classes / mapped classes).")


def truth_cells(t: dict[str, Any] | None) -> list[str]:
    """The report cells of :data:`TRUTH_COLUMNS` ("–" where a measure does not apply)."""
    if not t:
        return ["–"] * len(TRUTH_COLUMNS)
    return ["–" if t.get(k) is None else f"{t[k]:.2f}" for k, _ in TRUTH_COLUMNS]


def truth_lines(t: dict[str, Any] | None, order: str = "ordered") -> list[str]:
    """report.md lines for one run's ground truth (none without it). ``order``: the run's
    pruning order; a reversed run says that the recall is of the ranking, not of its selection."""
    if not t:
        return []
    rec = ("–" if t.get("recall") is None else
           f"{t['recall']:.2f} (random ranking: {t['recall_chance']:.2f})")
    note = ([] if order == "ordered" or t.get("recall") is None else
            ["", f"(order {order}: the ranking's top-k recall is of the scores' best end; this run "
             "kept the other end, which the kept columns measure)"])
    return ["", "Selection against the ground truth (synth data: the target's classes were drawn "
            f"from {t['mapped_classes']} known source classes):", "",
            "| ranking's top-k recall of the mapped classes | mapped classes kept | related samples kept "
            "| related classes kept | related share of the source (RANDOM) |",
            "|---:|---:|---:|---:|---:|",
            f"| {rec} | {t['mapped_kept']:.2f} | {t['related_samples']:.2f} | "
            f"{t['related_classes']:.2f} ({t['kept_classes']} classes) | {t['chance']:.2f} |",
            *note]


def truth_table(rows: Sequence[dict[str, Any]], labels: Sequence[str], methods: Sequence[str],
                ratios: Sequence[float]) -> list[str]:
    """The cost table's "Selection against the ground truth" section: per method and ratio, the
    mean over seeds of :data:`TRUTH_COLUMNS` (rows carry ``truth``; none without ground truth)."""
    cells = []
    for label, m in zip(labels, methods):
        for r in ratios:
            ts = [x["truth"] for x in rows if x.get("method") == m and x.get("ratio") == r
                  and x.get("truth")]
            if ts:
                mean = {k: (None if any(t.get(k) is None for t in ts)
                            else sum(t[k] for t in ts) / len(ts)) for k, _ in TRUTH_COLUMNS}
                cells.append((label, r, mean, ts[0].get("chance"), len(ts),
                              ts[0].get("recall_chance")))
    if not cells:
        return []
    out = ["", "### Selection against the ground truth (synth data)", "",
           "Mean over seeds. ranking top-k recall: the target's mapped source classes among the "
           "k best-scored (class units; of the ranking, also for a reversed order, which keeps "
           "the other end); related samples / classes: share of the kept ones from the "
           "target's related superclasses (RANDOM keeps them at the source's share). "
           + CHANCE_NOTE, "",
           "| method | ratio | " + " | ".join(h for _, h in TRUTH_COLUMNS)
           + " | source share | recall by chance | seeds |",
           "|---|---:|" + "---:|" * (len(TRUTH_COLUMNS) + 3)]
    for label, r, mean, chance, n, rc in cells:
        out.append(f"| {label} | {100 * r:.0f} % | " + " | ".join(truth_cells(mean))
                   + f" | {'–' if chance is None else f'{chance:.2f}'} | "
                   f"{'–' if rc is None else f'{rc:.2f}'} | {n} |")
    return out
