"""MODERATE (Xia et al. 2023, moderate coreset): distance of each sample's surrogate feature to
its class-median feature; keep the band of distance *ranks* around the median rank, as the
reference code does (``--opt band=rank``, default). ``band=value`` is the older variant: the
band symmetric in distance *value* ``|d − median(d)|``, which on a skewed distance distribution
shifts the kept band towards the dense side."""
from __future__ import annotations

import numpy as np

from ..baselines import moderate_distances, moderate_rank_scores
from ..context import ScoringContext
from ..registry import FEATURES, Cost, Option, PlotStyle, Scorer, ScoreResult, register_scorer


@register_scorer
class Moderate(Scorer):
    name = "moderate"
    help = "samples nearest the median distance to their class-median surrogate feature"
    unit = "sample"
    needs = frozenset({FEATURES})
    cost = Cost(forward=("source train",), steps=("distance to the class-median feature",))
    style = PlotStyle("tab:green", "v", "MODERATE")
    order = 4
    options = {"band": Option("rank", "rank: band of distance ranks around the median (the "
                                      "reference code); value: band in |d − median(d)| (older)",
                              ("rank", "value"))}

    def score(self, ctx: ScoringContext) -> ScoreResult:
        d = moderate_distances(ctx.source_features("train"), ctx.train_labels())
        if ctx.opt("band") == "value":
            return ScoreResult(scores=-np.abs(d - np.median(d)))
        return ScoreResult(scores=moderate_rank_scores(None, distances=d))
