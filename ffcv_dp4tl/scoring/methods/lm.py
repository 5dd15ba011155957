"""LM, label mapping (the paper's supervised method): the surrogate's argmax over source classes
on the target train images (eval transform); score = votes per source class, tie-break = summed
softmax mass per class, then class id."""
from __future__ import annotations

from ..context import ScoringContext
from ..label_mapping import label_mapping_scores, softmax_mass
from ..registry import LOGITS, TARGET, Cost, PlotStyle, Scorer, ScoreResult, register_scorer


@register_scorer
class LabelMapping(Scorer):
    name = "lm"
    help = "label mapping: target votes for the surrogate's source classes"
    unit = "class"
    needs = frozenset({LOGITS, TARGET})
    cost = Cost(forward=("target train",), steps=("argmax votes per source class",))
    style = PlotStyle("tab:red", "o", "LM")
    order = 0

    def score(self, ctx: ScoringContext) -> ScoreResult:
        preds = ctx.target_predictions(features=False)
        n = ctx.source.num_classes
        return ScoreResult(
            scores=ctx.combine([label_mapping_scores(p.logits.argmax(1), n) for p in preds]),
            tiebreak=ctx.combine([softmax_mass(p.logits) for p in preds]))
