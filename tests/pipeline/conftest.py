"""Pipeline-test fixtures: one very small synthetic source + target, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

#: 4 superclasses x 2 classes, 6 images each, one target (`paper`) of 3 classes, 16 px
SMALL_SYNTH = ("synth:tiny,num_superclasses=4,classes_per_superclass=2,train_per_class=6,"
               "val_per_class=1,image_size=16,num_targets=1,target_classes=3,"
               "target_train_per_class=3,target_test_per_class=1")


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    """Built ``SMALL_SYNTH``: ``ROOT/source`` and ``ROOT/targets/paper``."""
    from tiny_data import build_synth

    return build_synth(SMALL_SYNTH, tmp_path_factory.mktemp("small_synth"))
