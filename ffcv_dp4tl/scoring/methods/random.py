"""RANDOM: a seeded random score per source sample (no surrogate)."""
from __future__ import annotations

from ..baselines import random_scores
from ..context import ScoringContext
from ..registry import SEED, Cost, PlotStyle, Scorer, ScoreResult, register_scorer


@register_scorer
class Random(Scorer):
    name = "random"
    help = "random samples (seeded; no surrogate)"
    unit = "sample"
    cost = Cost(steps=("seeded permutation",))
    style = PlotStyle("tab:gray", "^", "RANDOM")
    order = 3
    reads = frozenset({SEED})

    def score(self, ctx: ScoringContext) -> ScoreResult:
        return ScoreResult(scores=random_scores(ctx.source.split("train").num_samples, ctx.seed))
