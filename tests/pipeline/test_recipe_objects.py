"""The pipeline reads each recipe file once and hands the loaded Recipe (and mask) objects to the
stages, so what trains is exactly what the stage key hashed, even if a file is edited mid-run."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import ffcv_dp4tl.pipeline.run as run_mod
from ffcv_dp4tl.data.masks import IndexMask
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.training import recipe as recipe_mod
from ffcv_dp4tl.training.recipe import Recipe


def test_each_recipe_loaded_once_and_passed_as_an_object(tmp_path, monkeypatch, data_root):
    loads, got, masks = [], [], []
    real_load = recipe_mod.load_recipe

    def counting_load(name, overrides=()):
        loads.append(str(name))
        return real_load(name, overrides)

    monkeypatch.setattr(recipe_mod, "load_recipe", counting_load)

    def fake_train(recipe, *a, **k):
        got.append(recipe)
        masks.append(k.get("mask"))
        (k["out_dir"] / "checkpoint.pt").write_bytes(b"ckpt")  # what finetuning reads next
        return {"epoch": 0}

    def fake_finetune(recipe, *a, **k):
        got.append(recipe)
        return {"test_top1": 0.5}

    ft_mod = importlib.import_module("ffcv_dp4tl.training.finetune")  # (the package exports a function too)
    tr_mod = importlib.import_module("ffcv_dp4tl.training.trainer")

    monkeypatch.setattr(tr_mod, "train", fake_train)
    monkeypatch.setattr(ft_mod, "finetune", fake_finetune)
    monkeypatch.setattr(run_mod, "score", lambda *a, **k: {"method": "random", "unit": "sample",
                                                         "selection_seconds": 0.0})
    def fake_prune(scores, source, ratio, out, **k):
        (out / "train.npy").write_bytes(b"mask")  # the pretrain key hashes the mask file
        return {"unit": "class", "kept_units": [0], "train_kept": 1}

    monkeypatch.setattr(run_mod, "prune", fake_prune)
    monkeypatch.setattr(run_mod, "load_mask", lambda path: IndexMask(np.arange(3), {}))
    # the fake stages write no real scores/mask: the ground-truth table and gallery are not under test here
    monkeypatch.setattr(run_mod, "selection_truth", lambda *a, **k: None)
    monkeypatch.setattr(run_mod, "selection_gallery", lambda *a, **k: None)
    cfg = PipelineConfig(ratio=0.6, source="synth:tiny", target="warm", method="random",
                         finetune=("lp", "ff"), data_root=data_root,
                         runs_root=tmp_path / "runs", device="cpu", fmt="wds")
    run_mod.run_pipeline(cfg, log=lambda s: None)
    assert sorted(loads) == sorted(set(loads)) and len(loads) == 4  # surrogate, pretrain, lp, ff
    assert len(got) == 3 and all(isinstance(r, Recipe) for r in got)  # pretrain, lp, ff (random: no surrogate)
    assert isinstance(masks[0], IndexMask)  # the mask, too, is an object by the time it reaches train()


@pytest.mark.parametrize("name", ["resnet18_tiny_cpu", "lp_tiny_cpu", "paper/ff"])
def test_a_trial_seed_sets_init_and_data_order_like_its_overrides(name):
    """A trial seed (``--seeds``, ``bench embedded``, ``bench cost-table``) varies the model's
    initialisation and the data order: ``with_seed`` equals loading with ``seed_overrides``
    (same values, same fingerprint: the bench's overrides and the pipeline's object agree), and
    seed 0 leaves the recipe as it is (its stages keep their keys)."""
    from ffcv_dp4tl.pipeline.resolve import seed_overrides, with_seed
    from ffcv_dp4tl.training.recipe import load_recipe

    base = load_recipe(name)
    seeded = with_seed(base, 3)
    assert (seeded.train.seed, seeded.data.seed) == (3, 3)
    assert seeded.fingerprint() == load_recipe(name, seed_overrides(3)).fingerprint()
    assert with_seed(base, 0) is base and seed_overrides(0) == []
