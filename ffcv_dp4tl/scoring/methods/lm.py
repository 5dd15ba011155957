"""LM, label mapping (the paper's supervised method): the surrogate's argmax over source classes
on the target train images (eval transform); score = votes per source class, tie-break = summed
softmax mass per class, then class id."""
from __future__ import annotations

import numpy as np

from ..context import ScoringContext
from ..label_mapping import label_mapping_scores, softmax_mass
from ..registry import LOGITS, TARGET, Cost, PlotStyle, Scorer, ScoreResult, register_scorer


@register_scorer
class LabelMapping(Scorer):
    name = "lm"
    help = "label mapping: target votes for the surrogate's source classes"
    unit = "class"
    needs = frozenset({LOGITS, TARGET})
    cost = Cost(forward=("target train",), steps=("argmax votes per source class",))
    style = PlotStyle("tab:red", "o", "LM")
    order = 0

    def score(self, ctx: ScoringContext) -> ScoreResult:
        n = ctx.source.num_classes
        per_target = ctx.target_reductions(lm_batch(n))
        return ScoreResult(scores=ctx.combine([r.sums["votes"] for r in per_target]),
                           tiebreak=ctx.combine([r.sums["mass"] for r in per_target]))


def lm_batch(num_classes: int):
    """The per-batch function of :func:`~ffcv_dp4tl.scoring.inference.predict_reduce` summing
    over the target's batches its votes per source class (``sums["votes"]``, int64) and its
    softmax mass per class (``sums["mass"]``, float64): a target's logits are never all held."""
    from ..inference import BatchResult  # (torch: imported when a run is scored)

    def fn(_indices: np.ndarray, logits: np.ndarray, _features) -> BatchResult:
        return BatchResult(sums={"votes": label_mapping_scores(logits.argmax(1), num_classes),
                                 "mass": softmax_mass(logits)})

    return fn
