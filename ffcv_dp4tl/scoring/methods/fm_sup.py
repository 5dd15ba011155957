"""FM-sup: feature mapping with the source labels as clusters (class-mean centroids)."""
from __future__ import annotations

import numpy as np

from ..context import ScoringContext
from ..feature_mapping import class_centroids
from ..registry import BACKEND, FEATURES, TARGET, Cost, PlotStyle, Scorer, ScoreResult, register_scorer
from .fm import vote_clusters


@register_scorer
class FeatureMappingSupervised(Scorer):
    name = "fm-sup"
    help = "feature mapping with source classes as clusters (class-mean centroids)"
    unit = "cluster"
    needs = frozenset({FEATURES, TARGET})
    kernels = frozenset({BACKEND})  # the class centroids' and votes' kernels
    cost = Cost(forward=("target train", "source train"),
                steps=("class-mean centroids", "nearest-centroid votes"))
    style = PlotStyle("tab:cyan", "D", "FM-sup")
    order = 2
    revision = 1  # 1: ties by the target's reciprocal-rank votes (0: by class size)

    def score(self, ctx: ScoringContext) -> ScoreResult:
        target_feats = [p.features for p in ctx.target_predictions(features=True)]
        feats = ctx.source_features("train")
        labels = ctx.train_labels()
        centroids = class_centroids(feats, labels, ctx.source.num_classes, backend=ctx.backend)
        return vote_clusters(ctx, target_feats, centroids, labels.astype(np.int64))
