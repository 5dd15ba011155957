"""Source training and transfer finetuning (ffcv-imagenet-style loop, recipes in ``recipes/``)."""
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
