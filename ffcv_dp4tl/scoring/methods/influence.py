"""INFMAX and INFSUM: influence of each source train sample on the source val samples through the
surrogate's last layer, in closed form (``scoring/influence.py``: influence functions on the
linear head with a damped exact or Kronecker-factored Hessian), aggregated per train sample by
its max (INFMAX) or sum (INFSUM) over val samples. The paper cites Feldman & Zhang (2020) for
both; their subsampled-retraining estimator needs thousands of models, which this closed form
stands in for. Higher = more helpful; the least helpful samples are pruned first."""
from __future__ import annotations

import numpy as np

from ..context import ScoringContext, softmax
from ..influence import influence_scores
from ..registry import (FEATURES, LOGITS, SEED, Cost, Option, PlotStyle, Scorer, ScoreResult,
                        register_scorer)

OPTIONS = {
    "damping": Option(0.01, "λ added to the last-layer Hessian (K-FAC: √λ on each factor)",
                      minimum=0),
    "hessian": Option("auto", "exact | kfac | auto (exact up to 4096 head parameters)",
                      ("auto", "exact", "kfac")),
    "eval_samples": Option(0, "val samples the influence is measured on (0: all; else a "
                              "seeded subset)", minimum=0),
}
COST = Cost(forward=("source train", "source val"),
            steps=("last-layer Hessian (exact or K-FAC)", "influence of every train sample on "
                   "every val sample"))


class _Influence(Scorer):
    unit = "sample"
    needs = frozenset({LOGITS, FEATURES})
    cost = COST
    options = OPTIONS
    aggregate = "max"
    reads = frozenset({SEED})  # the seeded val subset (--opt eval_samples)

    def memory_bytes(self, source) -> int:
        """A lower bound: every source train and val sample's float32 logits and one float64
        softmax (the Hessian and the influence read them all). The softmax's temporaries, the
        features and K-FAC's C x C factor come on top (about 3x this at its peak)."""
        n = sum(source.split(s).num_samples for s in ("train", "val") if s in source.split_names)
        return n * source.num_classes * (4 + 8)

    def score(self, ctx: ScoringContext) -> ScoreResult:
        if "val" not in ctx.source.split_names:
            from ...errors import DP4TLError

            raise DP4TLError(f"{self.name} measures influence on the source val split, which "
                             f"{ctx.source_dir} does not have")
        tr = ctx.source_predictions(features=True)
        ev = ctx.source_predictions(features=True, split="val")
        ev_labels = ctx.train_labels("val")
        ef, el, elab = ev.features, ev.logits, ev_labels
        m = int(ctx.opt("eval_samples"))
        if 0 < m < len(elab):
            pick = np.sort(np.random.default_rng(ctx.seed).choice(len(elab), m, replace=False))
            ef, el, elab = ef[pick], el[pick], elab[pick]
        scores = influence_scores(tr.features, softmax(tr.logits.astype(np.float64)),
                                  ctx.train_labels(), ef, softmax(el.astype(np.float64)), elab,
                                  damping=float(ctx.opt("damping")),
                                  hessian=str(ctx.opt("hessian")), aggregate=self.aggregate)
        ctx.meta.update({"influence_eval_samples": int(len(elab))})
        return ScoreResult(scores=scores)


@register_scorer
class InfMax(_Influence):
    name = "infmax"
    help = "max last-layer influence of a sample on any source val sample (closed form)"
    style = PlotStyle("darkgoldenrod", "*", "INFMAX")
    order = 10
    aggregate = "max"


@register_scorer
class InfSum(_Influence):
    name = "infsum"
    help = "summed last-layer influence of a sample on the source val samples (closed form)"
    style = PlotStyle("teal", "p", "INFSUM")
    order = 11
    aggregate = "sum"
