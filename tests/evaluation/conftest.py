"""A tiny synthetic source + target, one 2-epoch source model and its LP / FF finetunings,
built once per session (the same sizes as tests/training/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

SYNTH = ("synth:tiny,num_superclasses=4,classes_per_superclass=2,train_per_class=12,"
         "val_per_class=4,image_size=16,num_targets=1,target_classes=3,"
         "target_train_per_class=8,target_test_per_class=4")
TEST_OVERRIDES = ["model.width=8", "model.stem_stride=1", "train.epochs=2", "train.batch_size=16",
                  "train.min_res=16", "train.max_res=16", "eval.resolution=16",
                  "eval.batch_size=64", "data.num_workers=0", "eval.every=1"]
FT_OVERRIDES = ["train.epochs=2", "finetune.resolution=16", "eval.resolution=16",
                "data.num_workers=0", "eval.batch_size=64", "eval.every=1"]


@pytest.fixture(scope="session")
def eval_synth(tmp_path_factory) -> Path:
    from tiny_data import build_synth

    return build_synth(SYNTH, tmp_path_factory.mktemp("eval_synth"))


@pytest.fixture(scope="session")
def eval_target(eval_synth: Path) -> Path:
    return next(p for p in sorted((eval_synth / "targets").iterdir()) if p.is_dir())


@pytest.fixture(scope="session")
def eval_source_ckpt(eval_synth: Path, tmp_path_factory) -> Path:
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    out = tmp_path_factory.mktemp("eval_src")
    train(load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES), eval_synth / "source", out_dir=out,
          fmt="wds", device="cpu", progress=False)
    return out / "checkpoint.pt"


def _finetune(recipe: str, ckpt: Path, target: Path, out: Path, extra=()) -> Path:
    from ffcv_dp4tl.training.finetune import finetune
    from ffcv_dp4tl.training.recipe import load_recipe

    finetune(load_recipe(recipe, FT_OVERRIDES + list(extra)), ckpt, target, out, fmt="wds",
             device="cpu", progress=False)
    return out


@pytest.fixture(scope="session")
def lp_run(eval_source_ckpt, eval_target, tmp_path_factory) -> Path:
    return _finetune("lp_tiny_cpu", eval_source_ckpt, eval_target, tmp_path_factory.mktemp("lp"))


@pytest.fixture(scope="session")
def ff_run(eval_source_ckpt, eval_target, tmp_path_factory) -> Path:
    return _finetune("ff_tiny_cpu", eval_source_ckpt, eval_target, tmp_path_factory.mktemp("ff"),
                     ["train.batch_size=8"])


@pytest.fixture(scope="session")
def masked_lp_run(eval_source_ckpt, eval_target, tmp_path_factory) -> Path:
    """A VTAB-1k selection run: LP trained on train16 and scored on val4, both masks over the
    *train* split (``data.test_split=train``), as ``dp4tl evaluate vtab`` makes them."""
    from ffcv_dp4tl.evaluation.vtab import write_vtab_masks
    from ffcv_dp4tl.training.finetune import finetune
    from ffcv_dp4tl.training.recipe import load_recipe

    root = tmp_path_factory.mktemp("masked")
    masks = write_vtab_masks(eval_target, root / "masks", seed=0, train_size=16, val_size=4)
    finetune(load_recipe("lp_tiny_cpu", FT_OVERRIDES + ["data.test_split=train"]),
             eval_source_ckpt, eval_target, root / "run", fmt="wds", device="cpu",
             progress=False, train_mask=masks["train"], test_mask=masks["val"])
    return root / "run"
