"""EL2N: ||softmax − onehot|| per source sample, from an early-training surrogate checkpoint."""
from __future__ import annotations

import numpy as np

from ..baselines import el2n_scores
from ..context import ScoringContext, softmax
from ..registry import LOGITS, TRAJECTORY, Cost, PlotStyle, Scorer, ScoreResult, register_scorer


@register_scorer
class EL2N(Scorer):
    name = "el2n"
    help = "error L2 norm of an early-training surrogate per sample"
    unit = "sample"
    needs = frozenset({LOGITS, TRAJECTORY})
    cost = Cost(forward=("source train",), steps=("L2 norm of softmax − onehot per sample",))
    style = PlotStyle("tab:orange", "X", "EL2N")
    order = 5

    def score(self, ctx: ScoringContext) -> ScoreResult:
        p = ctx.source_predictions(features=False)
        return ScoreResult(scores=el2n_scores(softmax(p.logits.astype(np.float64)),
                                              ctx.train_labels()))
