"""GraNd: last-layer gradient norm per source sample, from an early-training surrogate checkpoint."""
from __future__ import annotations

import numpy as np

from ..baselines import grand_last_layer_norms
from ..context import ScoringContext, softmax
from ..registry import LOGITS, TRAJECTORY, Cost, PlotStyle, Scorer, ScoreResult, register_scorer


@register_scorer
class GraNd(Scorer):
    name = "grand"
    help = "last-layer gradient norm of an early-training surrogate per sample"
    unit = "sample"
    needs = frozenset({LOGITS, TRAJECTORY})
    cost = Cost(forward=("source train",), steps=("last-layer gradient norm per sample",))
    style = PlotStyle("tab:purple", "P", "GraNd")
    order = 6

    def score(self, ctx: ScoringContext) -> ScoreResult:
        p = ctx.source_predictions(features=True)
        return ScoreResult(scores=grand_last_layer_norms(p.features, softmax(p.logits.astype(np.float64)),
                                                         ctx.train_labels()))
