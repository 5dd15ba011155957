"""What ``bench cost-table`` runs when not told otherwise: one place for the CLI's option
defaults and :func:`~.cost_table.run_cost_table`'s (no imports: the CLI reads it at start-up,
before any heavy module loads)."""
from __future__ import annotations

#: the pruning ratios of the paper's Tab. 3 (0 = the shared unpruned reference)
RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)
#: LM and FM, and the in-domain baselines cheap enough for the 2-core CPU machine
METHODS = ("lm", "fm", "random", "moderate", "grand", "el2n")
#: LP and FF, the paper's two finetuning protocols
FINETUNE = ("lp", "ff")
#: the paper's 3 trials (the CLI's default; a Python caller of run_cost_table gets one seed
#: unless it asks, which keeps scripted and test runs short)
PAPER_SEEDS = (0, 1, 2)


def joined(values) -> str:
    """A default as the CLI spells it: ``0,0.2,0.4``."""
    return ",".join(str(v) for v in values)
