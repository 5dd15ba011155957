"""SP, supervised prototypes (Sorscher et al. 2022, "Beyond neural scaling laws"): distance of
each source sample's L2-normalised surrogate feature to its class prototype (the class-mean
normalised feature). Far = hard; keeps hard samples by default (the paper's rule when data is
abundant), ``--opt keep=easy`` the nearest ones."""
from __future__ import annotations

from ..baselines import class_mean_prototypes, prototype_distances
from ..context import ScoringContext
from ..registry import (FEATURES, LOGITS, Cost, Option, PlotStyle, Scorer, ScoreResult,
                        register_scorer)

KEEP = Option("hard", "hard: keep samples far from their prototype (abundant data); easy: near",
              ("hard", "easy"))
NORMALIZE = Option(True, "L2-normalise features and prototypes (cosine geometry)")


@register_scorer
class SupervisedPrototypes(Scorer):
    name = "sp"
    help = "distance to the class-mean feature of a supervised surrogate (hard first)"
    unit = "sample"
    # LOGITS: a supervised surrogate (its features are shaped by the source labels)
    needs = frozenset({LOGITS, FEATURES})
    cost = Cost(forward=("source train",), steps=("class-mean prototypes", "distance per sample"))
    style = PlotStyle("tab:olive", "<", "SP")
    order = 7
    options = {"keep": KEEP, "normalize": NORMALIZE}

    def score(self, ctx: ScoringContext) -> ScoreResult:
        feats, labels = ctx.source_features("train"), ctx.train_labels()
        norm = bool(ctx.opt("normalize"))
        proto = class_mean_prototypes(feats, labels, ctx.source.num_classes, normalize=norm)
        d = prototype_distances(feats, proto, labels, normalize=norm)
        return ScoreResult(scores=d if ctx.opt("keep") == "hard" else -d)
