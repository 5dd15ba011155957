"""Typed, versioned file contracts shared by the writers and the readers.

Like ffcv's ``types.py`` serves its writer and reader, this module is the one place that says
what every file the project exchanges between stages looks like:

========================  ===========================  =================================
contract                  file                         written by → read by
========================  ===========================  =================================
:class:`DatasetManifest`  ``DATASET/manifest.json``    ``beton_builders`` → ``data``
:class:`MaskMeta`         ``NAME.json`` (beside .npy)  ``data.masks`` → ``data.masks``
:class:`ScoresMeta`       ``SCORES/scores.json``       ``pipeline.score`` → ``pipeline.prune``
:class:`StageResult`      ``runs/STAGE-KEY/DONE.json`` ``pipeline.stages`` → pipeline, report
========================  ===========================  =================================

Every contract is a dataclass with ``to_json()`` / ``from_json()`` and a ``format_version``.
Files written before versions existed carry no ``format_version`` and are read as version 1;
a file from a *newer* release (a version above the one this code knows) is refused with a
one-line :class:`UnsupportedFormatError` that says to upgrade. Fields a reader does not know
are kept (``extra`` / ``unknown``), so reading and writing a file back never loses data.

Import rule: this module depends on numpy and :mod:`ffcv_dp4tl.errors` only. ``beton_builders``
imports it without importing any of ffcv_dp4tl's subpackages (torch, ffcv), which is what keeps
the two top-level packages free of an import cycle (see tests/test_contracts.py).
"""
from __future__ import annotations

from .choices import (AdvNorm, AdvUnits, Backend, BetonMode, Budget, Choice, Criterion, Decode, FinetuneMode,
                      FinetuneHead, Format, Order, PretrainLength, Protocol, RecipeSet, StartFrom, TargetCrop, TargetSplit, check_device, check_k,
                      check_k_fits, check_items, split_items, default_k, PAPER_K, SYNTH_K, check_pruned_ratios, RATIO_DECIMALS, check_ratio, check_seeds, check_tol)
from .manifest import (FORMAT, INDEX_DTYPE, MANIFEST_NAME, MAX_SIDE_RANGE, ORIGINS_SUFFIX, DatasetManifest, ImageSettings, SplitEntry,
                       dataset_fingerprint, side_limit, split_fingerprint)
from .masks import MaskMeta
from .scores import SCORE_UNITS, Scores, ScoresMeta
from .stage import STAGE_FIELDS, STAGE_KINDS, STAGE_VALUES, StageResult, check_stage_values, stage_kind
from .versions import UnsupportedFormatError, check_version

__all__ = [
    "AdvNorm", "AdvUnits", "Backend", "BetonMode", "Budget", "Choice", "Criterion", "Decode", "FinetuneHead", "FinetuneMode", "Format", "Order", "PretrainLength", "Protocol",
    "RecipeSet", "StartFrom", "TargetCrop", "TargetSplit", "check_device", "check_items", "split_items", "check_k", "check_k_fits", "default_k", "PAPER_K", "SYNTH_K", "check_pruned_ratios", "RATIO_DECIMALS", "check_ratio", "check_seeds", "check_stage_values", "check_tol",
    "DatasetManifest", "FORMAT", "INDEX_DTYPE", "ImageSettings", "MANIFEST_NAME", "MAX_SIDE_RANGE", "MaskMeta", "ORIGINS_SUFFIX",
    "SCORE_UNITS", "STAGE_FIELDS", "STAGE_KINDS", "STAGE_VALUES", "Scores", "ScoresMeta", "SplitEntry", "StageResult",
    "UnsupportedFormatError", "check_version", "dataset_fingerprint", "side_limit", "split_fingerprint",
    "stage_kind",
]
