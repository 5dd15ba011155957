"""MODERATE (Xia et al. 2023, moderate coreset): distance of each sample's surrogate feature to
its class-median feature; keep the band of distance *ranks* around the median rank, as Xia et
al.'s reference code does (``--opt band=rank``, default: one band over all samples).
``band=class`` keeps that band in every class, as the DP4TL authors' ImageNet script does
(OPTML-Group/DP4TL src/auxiliary/data_wise_moderate_selection.py; the ``paper-code`` protocol).
``band=value`` is the older variant: the band symmetric in distance *value* ``|d − median(d)|``,
which on a skewed distance distribution shifts the kept band towards the dense side."""
from __future__ import annotations

import numpy as np

from ..baselines import moderate_class_band_scores, moderate_distances, moderate_rank_scores
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
    options = {"band": Option("rank", "rank: band of distance ranks around the median (Xia et "
                                      "al.'s code); class: that band in every class (the DP4TL "
                                      "authors' script); value: band in |d − median(d)| (older)",
                              ("rank", "class", "value"))}

    def score(self, ctx: ScoringContext) -> ScoreResult:
        labels = ctx.train_labels()
        d = moderate_distances(ctx.source_features("train"), labels)
        if ctx.opt("band") == "value":
            return ScoreResult(scores=-np.abs(d - np.median(d)))
        if ctx.opt("band") == "class":
            return ScoreResult(scores=moderate_class_band_scores(d, labels))
        return ScoreResult(scores=moderate_rank_scores(None, distances=d))
