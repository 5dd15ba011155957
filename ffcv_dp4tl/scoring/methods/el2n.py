"""EL2N (Paul et al. 2021): ||softmax − onehot|| per source sample, averaged over N early-training
runs (``--opt runs=N``; run 0 = the surrogate's early checkpoint, so ``runs=1`` is the single
surrogate checkpoint scored before)."""
from __future__ import annotations

import numpy as np

from ..baselines import el2n_scores
from ..context import ScoringContext, probabilities
from ..registry import LOGITS, TRAJECTORY, Cost, PlotStyle, Scorer, ScoreResult, register_scorer
from ._dynamics import RUN_OPTIONS, RUN_TRAINING, average_over_runs


@register_scorer
class EL2N(Scorer):
    name = "el2n"
    help = "error L2 norm per sample, averaged over early-training runs (--opt runs=N)"
    unit = "sample"
    needs = frozenset({LOGITS, TRAJECTORY})
    cost = Cost(training=RUN_TRAINING, forward=("source train (each run)",),
                steps=("L2 norm of softmax − onehot per sample",))
    style = PlotStyle("tab:orange", "X", "EL2N")
    order = 5
    options = dict(RUN_OPTIONS)
    trains = True

    def score(self, ctx: ScoringContext) -> ScoreResult:
        labels = ctx.train_labels()

        def one(model, head, desc):
            return ctx.model_reduction(model, head, el2n_batch(labels), desc=desc).rows["el2n"]

        return ScoreResult(scores=average_over_runs(ctx, one))


def el2n_batch(labels: np.ndarray):
    """The per-batch function of :func:`~ffcv_dp4tl.scoring.inference.predict_reduce` giving
    each sample's EL2N (``rows["el2n"]``): only one batch's softmax is held at a time."""
    from ..inference import BatchResult  # (torch: imported when a run is scored)

    def fn(indices: np.ndarray, logits: np.ndarray, _features) -> BatchResult:
        return BatchResult(rows={"el2n": el2n_scores(probabilities(logits), labels[indices])})

    return fn
