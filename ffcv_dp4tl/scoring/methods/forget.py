"""FORGET (Toneva et al. 2019): forgetting events — a sample classified correctly at one
presentation during training and incorrectly at the next — counted over a full training run of
the surrogate recipe on the source train split (``ForgettingRecorder``, a training callback fed
the per-batch sample indices); samples never learned count as the most forgettable, and so
does a sample the run never presented (possible with ``train.drop_last`` and few epochs): with
no evidence that it is easy, it is kept first rather than pruned (``scores.json``
``never_presented`` counts them per run).
Unforgettable samples are pruned first. No surrogate is needed: the method trains its own runs
(``--opt runs``, ``epochs``, ``arch``), charged to its selection cost."""
from __future__ import annotations

import numpy as np

from ..baselines import forgetting_scores
from ..context import ScoringContext
from ..registry import Cost, Option, PlotStyle, Scorer, ScoreResult, register_scorer


@register_scorer
class Forget(Scorer):
    name = "forget"
    help = "forgetting events per sample during a training run (unforgettable pruned first)"
    unit = "sample"
    cost = Cost(training=("training run(s) of the surrogate recipe recording forgetting events "
                          "(--opt runs, epochs, arch)",),
                steps=("count correct → incorrect transitions per sample",))
    style = PlotStyle("tab:pink", "d", "FORGET")
    order = 9
    options = {"runs": Option(1, "training runs (seeds) averaged", minimum=1),
               "epochs": Option(0, "epochs per run (0: the recipe's train.epochs)", minimum=0),
               "arch": Option("", "architecture of the runs ('' = the recipe's)")}
    trains = True

    def score(self, ctx: ScoringContext) -> ScoreResult:
        from ..training_runs import ForgettingRecorder, train_run, training_recipe  # (torch)

        recipe = training_recipe(ctx, str(ctx.opt("arch")))
        n = ctx.source.split("train").num_samples
        epochs = int(ctx.opt("epochs")) or None
        total = np.zeros(n)
        never, unseen, events = [], [], []
        runs = int(ctx.opt("runs"))
        for run in range(runs):
            rec = ForgettingRecorder(n)
            # from scratch: forgetting counts need every epoch of the run in this process
            train_run(ctx, recipe, run, stop_after=epochs, callbacks=[rec], resume=False)
            ev, learned, seen = rec.result()
            total += forgetting_scores(ev, learned)
            never.append(int((~learned).sum()))
            unseen.append(int((seen == 0).sum()))
            events.append(float(ev.mean()))
        ctx.meta.update({"never_learned": never, "never_presented": unseen,
                         "mean_forgetting_events": events})
        return ScoreResult(scores=total / runs)
