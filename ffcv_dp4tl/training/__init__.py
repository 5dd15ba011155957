"""Source training and transfer finetuning (ffcv-imagenet-style loop, recipes in ``recipes/``).

The names load their modules on first use (``ffcv_dp4tl.lazy``): reading a recipe
(``from ffcv_dp4tl.training.recipe import load_recipe``, ``dp4tl recipes``) imports no torch.
``finetune`` is the function, as it always was, though ``training/finetune.py`` is a module of
that name (``ffcv_dp4tl.lazy`` keeps the export)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

#: exported name -> the module that defines it
_EXPORTS = {
    "Backbone": ".models", "Callback": ".callbacks", "Checkpoint": ".checkpoint",
    "CrossEntropyObjective": ".engine", "Recipe": ".recipe", "RecordSeen": ".callbacks",
    "create_model": ".models", "evaluate": ".engine", "feature_dim": ".models",
    "features": ".models", "finetune": ".finetune", "list_models": ".models",
    "list_recipes": ".recipe_files", "load_recipe": ".recipe", "train": ".trainer",
    "train_one_epoch": ".engine",
}

if TYPE_CHECKING:  # (for type checkers and editors; at run time: __getattr__)
    from .callbacks import Callback, RecordSeen
    from .checkpoint import Checkpoint
    from .engine import CrossEntropyObjective, evaluate, train_one_epoch
    from .finetune import finetune
    from .models import Backbone, create_model, feature_dim, features, list_models
    from .recipe import Recipe, load_recipe
    from .recipe_files import list_recipes
    from .trainer import train

__all__ = ["Backbone", "Callback", "Checkpoint", "CrossEntropyObjective", "Recipe", "RecordSeen",
           "create_model", "evaluate", "feature_dim", "features", "finetune", "list_models",
           "list_recipes", "load_recipe", "train", "train_one_epoch"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
