"""Evaluations of finetuned models from the paper's appendix (docs/evaluations.md).

Layering: imports ``data`` and ``training`` only; ``cli/evaluate.py`` calls it.

* :mod:`.corruption` — Tab. A4, test top-1 under CIFAR-10-C corruptions
  (the transforms: :mod:`ffcv_dp4tl.data.corruptions`);
* :mod:`.flatness` — Fig. A4, ε-sharpness and the top Hessian eigenvalue;
* :mod:`.vtab` — Tab. A5, VTAB-1k 800/200 masks and the selection protocol;
* :mod:`.finetuned` — the model a finished LP/FF run ended with.
"""
from .corruption import (corruption_accuracy, corruption_table, evaluate_corruptions,
                         resolution_warning)
from .finetuned import Finetuned, load_finetuned
from .flatness import (epsilon_sharpness, flatness_table, hessian_top_eigenvalue, model_flatness,
                       relative_flatness)
from .vtab import vtab_masks, vtab_protocol, write_vtab_masks

__all__ = ["Finetuned", "corruption_accuracy", "corruption_table", "epsilon_sharpness",
           "evaluate_corruptions", "flatness_table", "hessian_top_eigenvalue", "load_finetuned",
           "model_flatness", "relative_flatness", "resolution_warning", "vtab_masks",
           "vtab_protocol", "write_vtab_masks"]
