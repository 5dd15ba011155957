"""Shared fixtures: one very small synthetic source + target dataset, built once per session,
and a recipe small enough that an epoch takes well under a second on 2 CPU cores."""
from __future__ import annotations

from pathlib import Path

import pytest

SYNTH = ("synth:tiny,num_superclasses=4,classes_per_superclass=2,train_per_class=12,"
         "val_per_class=4,image_size=16,num_targets=1,target_classes=3,"
         "target_train_per_class=8,target_test_per_class=4")

#: Overrides turning the tiny CPU recipe into a unit-test-sized one (width-8 ResNet-18, 16 px).
TEST_OVERRIDES = ["model.width=8", "model.stem_stride=1", "train.epochs=2", "train.batch_size=16",
                  "train.min_res=16", "train.max_res=16", "eval.resolution=16",
                  "eval.batch_size=64", "data.num_workers=0", "eval.every=1"]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from beton_builders.sources import resolve_source
    from beton_builders.writer import BuildOptions, build_dataset

    root = tmp_path_factory.mktemp("synth")
    for sub, spec in resolve_source(SYNTH).items():
        opts = BuildOptions(max_side=16, shard_size=64, workers=1, progress=False)
        build_dataset(spec, root / sub if sub else root, opts, source=SYNTH)
    return root


@pytest.fixture(scope="session")
def source_dir(synth_root: Path) -> Path:
    return synth_root / "source"


@pytest.fixture(scope="session")
def target_dir(synth_root: Path) -> Path:
    return next(p for p in sorted((synth_root / "targets").iterdir()) if p.is_dir())


@pytest.fixture
def test_recipe():
    """A factory: ``test_recipe("train.epochs=3")`` → validated small Recipe."""
    from ffcv_dp4tl.training.recipe import load_recipe

    def make(*extra: str, base: str = "resnet18_tiny_cpu"):
        return load_recipe(base, TEST_OVERRIDES + list(extra))
    return make


@pytest.fixture(scope="session")
def trained_run(source_dir: Path, tmp_path_factory) -> Path:
    """One finished 2-epoch training run (shared by finetune tests)."""
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    out = tmp_path_factory.mktemp("run")
    train(load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES), source_dir, out_dir=out, fmt="wds",
          device="cpu", progress=False)
    return out
