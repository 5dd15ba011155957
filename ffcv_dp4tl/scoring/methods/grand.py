"""GraNd (Paul et al. 2021): per-sample gradient norm, averaged over N early-training runs
(``--opt runs=N``; run 0 = the surrogate's early checkpoint). ``--opt grad=last`` (default) is
the last layer's norm in closed form from features and softmax; ``grad=full`` the norm over all
parameters (``torch.func`` per-sample gradients, as the paper's GraNd)."""
from __future__ import annotations

import numpy as np

from ..baselines import grand_last_layer_norms, grand_scores
from ..context import ScoringContext, probabilities
from ..registry import (LOGITS, TRAJECTORY, Cost, Option, PlotStyle, Scorer, ScoreResult,
                        register_scorer)
from ._dynamics import RUN_OPTIONS, RUN_TRAINING, average_over_runs


@register_scorer
class GraNd(Scorer):
    name = "grand"
    help = ("gradient norm per sample (last layer or full), averaged over early-training runs "
            "(--opt runs=N, grad=last|full)")
    unit = "sample"
    needs = frozenset({LOGITS, TRAJECTORY})
    cost = Cost(training=RUN_TRAINING, forward=("source train (each run)",),
                steps=("per-sample gradient norm (last layer closed form, or full backward)",))
    style = PlotStyle("tab:purple", "P", "GraNd")
    order = 6
    options = {**RUN_OPTIONS,
               "grad": Option("last", "last: last-layer gradient norm (closed form); full: "
                                      "all parameters (per-sample backward)", ("last", "full"))}
    trains = True

    def score(self, ctx: ScoringContext) -> ScoreResult:
        labels = ctx.train_labels()
        full = ctx.opt("grad") == "full"

        def one(model, head, desc):
            if full:
                from ..training_runs import per_sample_grad_norms

                return per_sample_grad_norms(model, ctx.loader(ctx.source_dir, "train"),
                                             len(labels), progress=ctx.progress, desc=desc)
            return ctx.model_reduction(model, head, grand_last_batch(labels), features=True,
                                       desc=desc).rows["grand"]

        return ScoreResult(scores=grand_scores(average_over_runs(ctx, one)))


def grand_last_batch(labels: np.ndarray):
    """The per-batch function of :func:`~ffcv_dp4tl.scoring.inference.predict_reduce` giving
    each sample's last-layer gradient norm (``rows["grand"]``) from one batch's features and
    softmax at a time."""
    from ..inference import BatchResult  # (torch: imported when a run is scored)

    def fn(indices: np.ndarray, logits: np.ndarray, features: np.ndarray) -> BatchResult:
        return BatchResult(rows={"grand": grand_last_layer_norms(features, probabilities(logits),
                                                                 labels[indices])})

    return fn
