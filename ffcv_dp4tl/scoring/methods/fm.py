"""FM, feature mapping (the paper's self-supervised method): k-means (K clusters) on surrogate
features of the source train split; every target train image votes for its nearest centroid;
score = votes per cluster, tie-break = how near the cluster lies to the target
(:func:`~ffcv_dp4tl.scoring.feature_mapping.reciprocal_rank_votes`), then cluster id."""
from __future__ import annotations

import warnings

import numpy as np

from ..context import ScoringContext
from ..feature_mapping import feature_mapping_scores, kmeans, reciprocal_rank_votes
from ..registry import BACKEND, FEATURES, ITERS, K, SEED, TARGET, Cost, PlotStyle, Scorer, ScoreResult, register_scorer


def vote_clusters(ctx: ScoringContext, target_feats: list[np.ndarray], centroids: np.ndarray,
                  train_units: np.ndarray) -> ScoreResult:
    """Target votes per centroid; tie-break = the target's reciprocal-rank votes (not the
    cluster's size, which filled the kept slots of unvoted clusters with the largest); the
    cluster id of every source train sample.

    No cluster ids of the source val split: pruning's val mask holds the val samples of the
    classes the train mask keeps (:func:`~ffcv_dp4tl.data.masks.val_mask_of`, the set the
    trainer validates with), so they were read by nothing, and computing them cost a
    surrogate forward over the whole source val split (50k images on ImageNet) and its
    feature store."""
    scores = ctx.combine([feature_mapping_scores(f, centroids, backend=ctx.backend)
                          for f in target_feats])
    return ScoreResult(scores=scores,
                       tiebreak=ctx.combine([reciprocal_rank_votes(f, centroids) for f in target_feats]),
                       train_units=train_units)


@register_scorer
class FeatureMapping(Scorer):
    name = "fm"
    help = "feature mapping: target votes for k-means clusters of surrogate features (--k)"
    unit = "cluster"
    needs = frozenset({FEATURES, TARGET})
    cost = Cost(forward=("target train", "source train"),
                steps=("k-means on source train features", "nearest-centroid votes"))
    style = PlotStyle("tab:blue", "s", "FM")
    order = 1
    reads = frozenset({K, SEED})  # k-means: K clusters, seeded
    kernels = frozenset({ITERS, BACKEND})  # Lloyd iterations; votes and k-means kernels
    revision = 1  # 1: ties by the target's reciprocal-rank votes (0: by cluster size)

    def score(self, ctx: ScoringContext) -> ScoreResult:
        target_feats = [p.features for p in ctx.target_predictions(features=True)]
        feats = ctx.source_features("train")
        result = kmeans(np.asarray(feats, dtype=np.float32), ctx.k, iters=ctx.iters,
                        seed=ctx.seed, backend=ctx.backend)
        centroids = result.centroids
        ctx.meta.update({"k": ctx.k, "iters": ctx.iters, **result.run_record()})
        empty = ctx.k - len(np.unique(result.labels))
        if empty:  # (the selection is still right; the units are fewer than asked for)
            warnings.warn(f"k-means left {empty} of its {ctx.k} clusters empty: the source's "
                          "features repeat (identical or blank images?), so FM ranks "
                          f"{ctx.k - empty} clusters, not --k {ctx.k}", stacklevel=2)
        return vote_clusters(ctx, target_feats, centroids, np.asarray(result.labels, dtype=np.int64))
