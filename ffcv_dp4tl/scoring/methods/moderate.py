"""MODERATE: distance of a sample's surrogate feature to its class median; samples near the
median are kept."""
from __future__ import annotations

from ..baselines import moderate_scores
from ..context import ScoringContext
from ..registry import FEATURES, Cost, PlotStyle, Scorer, ScoreResult, register_scorer


@register_scorer
class Moderate(Scorer):
    name = "moderate"
    help = "samples nearest their class-median surrogate feature"
    unit = "sample"
    needs = frozenset({FEATURES})
    cost = Cost(forward=("source train",), steps=("distance to the class-median feature",))
    style = PlotStyle("tab:green", "v", "MODERATE")
    order = 4

    def score(self, ctx: ScoringContext) -> ScoreResult:
        return ScoreResult(scores=moderate_scores(ctx.source_features("train"), ctx.train_labels()))
