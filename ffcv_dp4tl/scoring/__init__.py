"""Array-level scoring for dataset pruning: LM, FM, sample-wise baselines, feature store; and
the scorer registry (``registry``, one module per method in ``methods/``).

Everything here works on plain arrays (predictions, logits, features); producing those from
models and datasets is the job of other packages. Selections are deterministic: every
ranking has an explicit tie rule (see :func:`select_classes`, :func:`select_samples`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

#: exported name -> the module that defines it (imported on first use: ffcv_dp4tl.lazy)
_EXPORTS = {
    "class_centroids": ".feature_mapping",
    "combine_target_scores": ".multi_target",
    "Cost": ".registry",
    "el2n_scores": ".baselines",
    "feature_mapping_scores": ".feature_mapping",
    "feature_mapping_votes": ".feature_mapping",
    "FeatureWriter": ".features",
    "get_scorer": ".registry",
    "grand_last_layer_norms": ".baselines",
    "grand_scores": ".baselines",
    "is_complete": ".features",
    "kept_sample_indices": ".label_mapping",
    "kmeans": ".feature_mapping",
    "kmeans_plus_plus": ".feature_mapping",
    "KMeansResult": ".feature_mapping",
    "label_mapping_scores": ".label_mapping",
    "list_scorers": ".registry",
    "load_features": ".features",
    "meta_path": ".features",
    "moderate_distances": ".baselines",
    "moderate_scores": ".baselines",
    "PlotStyle": ".registry",
    "random_scores": ".baselines",
    "read_feature_meta": ".features",
    "register_scorer": ".registry",
    "Scorer": ".registry",
    "ScoreResult": ".registry",
    "ScoringError": ".ranking",
    "select_classes": ".label_mapping",
    "select_samples": ".baselines",
    "softmax_mass": ".label_mapping",
    "unregister_scorer": ".registry",
}

if TYPE_CHECKING:  # (for type checkers and editors; at run time: __getattr__)
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

__all__ = ["Cost", "FeatureWriter", "KMeansResult", "PlotStyle", "ScoreResult", "Scorer",
           "ScoringError", "class_centroids", "combine_target_scores", "el2n_scores",
           "feature_mapping_scores", "feature_mapping_votes", "get_scorer",
           "grand_last_layer_norms", "grand_scores", "is_complete", "kept_sample_indices", "kmeans",
           "kmeans_plus_plus", "label_mapping_scores", "list_scorers", "load_features", "meta_path",
           "moderate_distances", "moderate_scores", "random_scores", "read_feature_meta",
           "register_scorer", "select_classes", "select_samples", "softmax_mass",
           "unregister_scorer"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
