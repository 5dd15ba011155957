"""Shared by EL2N and GraNd: average a per-sample score over N early-training runs."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..context import ScoringContext
from ..registry import Option

#: Paul et al. (2021) average EL2N/GraNd over 10 independent runs, scored early in training
RUN_OPTIONS = {
    "runs": Option(10, "early-training runs averaged (Paul et al.: 10); run 0 is the "
                       "surrogate's early checkpoint when it matches; runs=1 scores only that",
                   minimum=1),
    "epoch": Option(0, "epochs into training the runs stop (0: the surrogate recipe's "
                       "train.keep_epochs, else 10 % of its epochs)", minimum=0),
    "arch": Option("", "architecture of the runs ('' = the surrogate's; see `dp4tl models`)"),
}

RUN_TRAINING = ("N−1 early-training runs of the surrogate recipe (--opt runs, epoch, arch)",)


def average_over_runs(ctx: ScoringContext, per_run: Callable[[object, object, str], np.ndarray]
                      ) -> np.ndarray:
    """``per_run(model, head, desc)`` for every early-training checkpoint, averaged."""
    from ...training.finetune import load_pretrained
    from ...training.models import get_head
    from ..training_runs import early_training_checkpoints  # (torch: imported when a run is scored)

    paths = early_training_checkpoints(ctx, int(ctx.opt("runs")), int(ctx.opt("epoch")),
                                       str(ctx.opt("arch")))
    total = None
    for i, p in enumerate(paths):
        if ctx.checkpoint is not None and Path(p) == Path(ctx.checkpoint):
            model, head = ctx.surrogate.model, ctx.surrogate.head
        else:
            model, _ = load_pretrained(p, ctx.surrogate.device)
            head = get_head(model)
        s = np.asarray(per_run(model, head, f"source train, run {i}"), dtype=np.float64)
        total = s if total is None else total + s
    ctx.meta["runs_scored"] = [str(p) for p in paths]
    return total / len(paths)
