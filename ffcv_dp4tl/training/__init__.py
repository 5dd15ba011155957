"""Source training and transfer finetuning (ffcv-imagenet-style loop, recipes in ``recipes/``)."""
from .finetune import finetune
from .models import create_model, feature_dim, features, list_models
from .recipe import Recipe, list_recipes, load_recipe
from .trainer import train

__all__ = ["Recipe", "create_model", "feature_dim", "features", "finetune", "list_models",
           "list_recipes", "load_recipe", "train"]
