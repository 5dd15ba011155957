"""Array-level scoring for dataset pruning: LM, FM, sample-wise baselines, feature store; and
the scorer registry (``registry``, one module per method in ``methods/``).

Everything here works on plain arrays (predictions, logits, features); producing those from
models and datasets is the job of other packages. Selections are deterministic: every
ranking has an explicit tie rule (see :func:`select_classes`, :func:`select_samples`).
"""
from __future__ import annotations

from .baselines import (
    el2n_scores,
    grand_last_layer_norms,
    grand_scores,
    moderate_distances,
    moderate_scores,
    random_scores,
    select_samples,
)
from .feature_mapping import (
    KMeansResult,
    class_centroids,
    feature_mapping_scores,
    feature_mapping_votes,
    kmeans,
    kmeans_plus_plus,
)
from .features import FeatureWriter, is_complete, load_features, meta_path, read_feature_meta
from .label_mapping import kept_sample_indices, label_mapping_scores, select_classes, softmax_mass
from .multi_target import combine_target_scores
from .ranking import ScoringError
from .registry import (Cost, PlotStyle, Scorer, ScoreResult, get_scorer, list_scorers,
                       register_scorer, unregister_scorer)

__all__ = [
    "Cost",
    "FeatureWriter",
    "KMeansResult",
    "PlotStyle",
    "ScoreResult",
    "Scorer",
    "ScoringError",
    "class_centroids",
    "combine_target_scores",
    "el2n_scores",
    "feature_mapping_scores",
    "feature_mapping_votes",
    "get_scorer",
    "grand_last_layer_norms",
    "grand_scores",
    "is_complete",
    "kept_sample_indices",
    "kmeans",
    "kmeans_plus_plus",
    "list_scorers",
    "label_mapping_scores",
    "load_features",
    "meta_path",
    "moderate_distances",
    "moderate_scores",
    "random_scores",
    "read_feature_meta",
    "register_scorer",
    "select_classes",
    "select_samples",
    "softmax_mass",
    "unregister_scorer",
]
