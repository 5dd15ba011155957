"""The tiny synthetic data and the recipe overrides the end-to-end tests share, defined once.

Tests import these constants (``from tiny_data import SYNTH, TRAIN``; ``tests/`` is on
``sys.path`` through its conftest) and get the built data and a trained surrogate from the
session fixtures of ``tests/conftest.py`` (``data_root``, ``runs_root``, ``synth_root``,
``trained_run``): one build and one surrogate per session instead of one per module. Sharing is
safe because every pipeline stage is keyed by the content of its inputs (``pipeline/stages.py``):
tests with the same inputs reuse a stage, tests with other inputs never see it.
"""
from __future__ import annotations

from pathlib import Path

#: 8 source classes (4 superclasses × 2), 12 train + 4 val images each at 16 px; one target
#: (the first target, "paper", whose light background this small surrogate handles worst) of
#: 3 classes with 8 train + 4 test images each
SYNTH = ("synth:tiny,num_superclasses=4,classes_per_superclass=2,train_per_class=12,"
         "val_per_class=4,image_size=16,num_targets=1,target_classes=3,"
         "target_train_per_class=8,target_test_per_class=4")
#: the same source with two targets ("warm", "paper"): multi-target tests
SYNTH_TWO_TARGETS = SYNTH.replace("num_targets=1", "num_targets=2")
TWO_TARGETS = ("warm", "paper")

#: pipeline overrides of a training recipe (surrogate, pretraining) sized to seconds:
#: a width-8 ResNet at 16 px for one epoch
TRAIN = ("model.width=8", "model.stem_stride=1", "train.epochs=1", "train.batch_size=16",
         "train.min_res=16", "train.max_res=16", "eval.resolution=16", "eval.batch_size=64",
         "data.num_workers=0", "eval.every=1")
#: pipeline overrides of the LP/FF recipes: one epoch at 16 px
FINETUNE = ("train.epochs=1", "finetune.resolution=16", "eval.resolution=16",
            "data.num_workers=0", "eval.every=1")

#: overrides turning the tiny CPU recipe into a unit-test-sized one (width-8 ResNet-18, 16 px,
#: 2 epochs) for the training tests' ``test_recipe`` factory
TEST_OVERRIDES = ["model.width=8", "model.stem_stride=1", "train.epochs=2", "train.batch_size=16",
                  "train.min_res=16", "train.max_res=16", "eval.resolution=16",
                  "eval.batch_size=64", "data.num_workers=0", "eval.every=1"]
#: the session's trained surrogate (``trained_run``): TEST_OVERRIDES, keeping the early
#: checkpoint after epoch 1 (what trajectory scorers such as EL2N/GraNd score)
SURROGATE_OVERRIDES = [*TEST_OVERRIDES, "train.keep_epochs=[1]"]


def build_synth(spec: str, root: Path, max_side: int = 16) -> Path:
    """Build the synth SOURCE ``spec`` (every part: ``ROOT/source``, ``ROOT/targets/NAME``) into
    ``root`` with one worker and no progress bars: the data of tests that need their own (a size
    or a target the session's :data:`SYNTH` does not have). Returns ``root``."""
    from beton_builders.sources import resolve_source
    from beton_builders.writer import BuildOptions, build_dataset

    for sub, s in resolve_source(spec).items():
        build_dataset(s, root / sub if sub else root,
                      BuildOptions(max_side=max_side, shard_size=64, workers=1, progress=False),
                      source=spec)
    return root
