"""SSP, self-supervised prototypes (Sorscher et al. 2022, "Beyond neural scaling laws"): k-means
on the L2-normalised surrogate features of the source train split (any surrogate, also a
self-supervised one: no labels are read); the nearest centroid and the order of samples are
those of the *cosine* distance, as Sorscher et al. define SSP: features and centroids are both
L2-normalised, and the score is their Euclidean distance sqrt(2 - 2 cos), monotone in it
(``--opt normalize=false``: raw features and centroids, Euclidean). Far =
hard; keeps hard samples by default (the paper's rule when data is abundant), ``--opt keep=easy``
the prototypical ones. ``--opt k`` = number of clusters (0: the number of source classes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...fsutil import atomic_save_npy
from ..baselines import l2_normalised_rows, prototype_distances
from ..context import ScoringContext
from ..feature_mapping import kmeans
from ..registry import BACKEND, FEATURES, ITERS, SEED, Cost, Option, PlotStyle, Scorer, ScoreResult, register_scorer
from .sp import KEEP, NORMALIZE


@register_scorer
class SelfSupervisedPrototypes(Scorer):
    name = "ssp"
    help = "distance to the nearest k-means centroid of surrogate features (hard first; no labels)"
    unit = "sample"
    needs = frozenset({FEATURES})
    cost = Cost(forward=("source train",), steps=("k-means on source train features",
                                                  "distance to the nearest centroid"))
    style = PlotStyle("tab:brown", ">", "SSP")
    order = 8
    # 1: the distance to the normalised centroids, monotone in the cosine distance (0: to the raw
    # centroids, means of unit vectors with norms < 1, which could invert two samples' order)
    revision = 1
    reads = frozenset({SEED})  # k-means seed (its K is --opt k)
    kernels = frozenset({ITERS, BACKEND})  # its k-means
    options = {"k": Option(0, "k-means clusters (0: the number of source classes)", minimum=0),
               "keep": KEEP, "normalize": NORMALIZE}

    def score(self, ctx: ScoringContext) -> ScoreResult:
        feats = ctx.source_features("train")
        norm = bool(ctx.opt("normalize"))
        # normalised in blocks of rows: one float32 copy for k-means, no float64 one
        x = l2_normalised_rows(feats) if norm else np.asarray(feats, dtype=np.float32)
        k = int(ctx.opt("k")) or ctx.source.num_classes
        result = kmeans(x, k, iters=ctx.iters, seed=ctx.seed, backend=ctx.backend)
        ctx.meta.update({"ssp_k": k, "iters": ctx.iters, **result.run_record()})
        atomic_save_npy(Path(ctx.out_dir) / "ssp_centroids.npy", result.centroids)  # to inspect
        d = prototype_distances(x, result.centroids, normalize=norm)
        return ScoreResult(scores=d if ctx.opt("keep") == "hard" else -d)
