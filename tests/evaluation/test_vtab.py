"""Tab. A5: VTAB-1k masks over a target's train split, and finetuning on them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ffcv_dp4tl.data import load_manifest, load_mask
from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.evaluation.vtab import mask_names, vtab_masks, write_vtab_masks


def test_masks_are_disjoint_sized_subsets_reproducible_per_seed(eval_target, tmp_path):
    info = load_manifest(eval_target).split("train")  # 24 samples: a 16 / 4 split
    m = vtab_masks(eval_target, seed=3, train_size=16, val_size=4)
    tr, va, tv = (m[k].indices for k in ("train", "val", "trainval"))
    assert (len(tr), len(va), len(tv)) == (16, 4, 20)
    assert not set(tr) & set(va)
    np.testing.assert_array_equal(tv, np.union1d(tr, va))
    assert tv.min() >= 0 and tv.max() < info.num_samples
    again = vtab_masks(eval_target, seed=3, train_size=16, val_size=4)
    for k in m:
        np.testing.assert_array_equal(again[k].indices, m[k].indices)
    other = vtab_masks(eval_target, seed=4, train_size=16, val_size=4)
    assert not np.array_equal(other["train"].indices, tr)
    paths = write_vtab_masks(eval_target, tmp_path, seed=3, train_size=16, val_size=4)
    assert {p.stem for p in paths.values()} == set(mask_names(16, 4).values()) \
        == {"train16", "val4", "train16val4"}
    loaded = load_mask(paths["val"], info)  # validated against the split's fingerprint
    np.testing.assert_array_equal(loaded.indices, va)
    meta = json.loads(paths["val"].with_suffix(".json").read_text())
    assert meta["method"] == "vtab1k" and meta["seed"] == 3 and meta["part"] == "val"
    assert meta["fingerprint"] == info.fingerprint and meta["num_kept"] == 4


def test_masks_of_another_draw_are_refused_in_the_same_folder(eval_synth, eval_target, tmp_path):
    """The masks are named by their sizes only: a 12/4 draw into a folder holding a 16/4 one
    would replace val4 and keep train16, which then overlap (a leaked, perfect score). Another
    size, seed, split or dataset is refused before any file changes; the same draw is kept."""
    out, same = tmp_path / "m", {"seed": 0, "train_size": 16, "val_size": 4}
    paths = write_vtab_masks(eval_target, out, **same)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for data, change, needle in (
            (eval_target, {"train_size": 12}, "--train-size 16 -> 12"),
            (eval_target, {"seed": 1}, "--seed 0 -> 1"),
            (eval_target, {"split": "test", "train_size": 8}, "--split 'train' -> 'test'"),
            (eval_synth / "source", {}, "--data differs")):
        with pytest.raises(DataError, match=f"^{out} holds VTAB masks drawn with other settings "
                           f"\\({needle}.*train16.*json records\\).*use another --out"):
            write_vtab_masks(data, out, **{**same, **change})
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert write_vtab_masks(eval_target, out, **same) == paths
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_vtab_defaults_are_800_200_and_too_small_a_split_is_refused(eval_target):
    with pytest.raises(DataError, match=r"24 samples, fewer than the 800 \+ 200"):
        vtab_masks(eval_target)


def test_finetune_reads_only_the_masks(eval_source_ckpt, eval_target, tmp_path):
    """LP on train16, evaluated on val4 of the *train* split: counts follow the masks."""
    from ffcv_dp4tl.training.finetune import finetune
    from ffcv_dp4tl.training.recipe import load_recipe

    from .conftest import FT_OVERRIDES

    paths = write_vtab_masks(eval_target, tmp_path / "m", seed=0, train_size=16, val_size=4)
    r = load_recipe("lp_tiny_cpu", FT_OVERRIDES + ["data.test_split=train"])
    res = finetune(r, eval_source_ckpt, eval_target, tmp_path / "sel", fmt="wds", device="cpu",
                   progress=False, train_mask=paths["train"], test_mask=paths["val"])
    assert res["train_samples"] == 16 and res["test_samples"] == 4
    assert res["test_split"] == "train" and res["test_mask"] == str(paths["val"])
    assert res["test_top1"] in {k / 4 for k in range(5)}  # 4 evaluated images
    # another mask is another run: its state is refused, not silently resumed
    from ffcv_dp4tl.data import make_mask, save_mask
    from ffcv_dp4tl.errors import DP4TLError

    split = load_manifest(eval_target).split("train")
    fewer = save_mask(tmp_path / "m" / "train8.npy",
                      make_mask(load_mask(paths["train"], split).indices[:8], split))
    import warnings

    with pytest.raises(DP4TLError, match="train_mask"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (8 images may miss a class: said, not the point here)
        finetune(r, eval_source_ckpt, eval_target, tmp_path / "sel", fmt="wds", device="cpu",
                 progress=False, train_mask=fewer, test_mask=paths["val"], stop_after=1)
    # masks that share images (trainval holds val; no mask is the whole split) are refused
    # before any work: the test top-1 would count trained-on images
    for train_mask, test_mask, shared in ((paths["trainval"], paths["val"], 4),
                                          (None, paths["val"], 4), (paths["train"], None, 16)):
        with pytest.raises(DP4TLError, match=rf"trains and tests on split 'train', and it trains "
                                             rf"on .*: {shared} samples are in both"):
            finetune(r, eval_source_ckpt, eval_target, tmp_path / "leak", fmt="wds",
                     device="cpu", progress=False, train_mask=train_mask, test_mask=test_mask)
        assert not (tmp_path / "leak").exists()


def test_vtab_protocol_selects_on_val_and_reports_test(eval_source_ckpt, eval_target, tmp_path):
    from ffcv_dp4tl.evaluation.vtab import vtab_protocol

    from .conftest import FT_OVERRIDES

    res = vtab_protocol("lp_tiny_cpu", eval_source_ckpt, eval_target, tmp_path, lrs=[1e-4, 0.05],
                        train_size=16, val_size=4, overrides=FT_OVERRIDES, fmt="wds",
                        device="cpu", progress=False)
    vals = {r["lr"]: r["val_top1"] for r in res["sweep"]}
    assert res["selected_lr"] == max(vals, key=lambda k: (vals[k], -[1e-4, 0.05].index(k)))
    final = json.loads((tmp_path / f"final-lr{res['selected_lr']:g}" / "result.json").read_text())
    assert final["train_samples"] == 20 and final["test_split"] == "test"
    assert res["test_top1"] == final["test_top1"]
    assert json.loads((tmp_path / "vtab.json").read_text())["selected_lr"] == res["selected_lr"]


def test_vtab_rerun_resumes_with_the_same_settings_and_refuses_others(eval_source_ckpt, eval_target,
                                                                       tmp_path, monkeypatch):
    """A finished folder is reused only under the settings its runs were made with: another seed,
    size or --set is refused before any mask is rewritten, also in a folder from before
    vtab_settings.json (its runs' recorded identities are compared)."""
    import importlib
    import shutil

    from ffcv_dp4tl.evaluation.vtab import SETTINGS_NAME, vtab_protocol

    from .conftest import FT_OVERRIDES

    kw = dict(lrs=[0.05], train_size=16, val_size=4, overrides=FT_OVERRIDES, fmt="wds",
              device="cpu", progress=False)
    first = vtab_protocol("lp_tiny_cpu", eval_source_ckpt, eval_target, tmp_path / "v", **kw)
    masks = {p.name: p.read_bytes() for p in (tmp_path / "v" / "masks").iterdir()}

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    # (the package re-exports the function under the module's name)
    monkeypatch.setattr(importlib.import_module("ffcv_dp4tl.training.finetune"), "finetune",
                        no_training)
    assert vtab_protocol("lp_tiny_cpu", eval_source_ckpt, eval_target, tmp_path / "v", **kw) == first
    legacy = tmp_path / "legacy"
    shutil.copytree(tmp_path / "v", legacy)
    (legacy / SETTINGS_NAME).unlink()
    (legacy / "vtab.json").unlink()
    for out in (tmp_path / "v", legacy):
        for change, needle in (({"seed": 1}, "--seed"), ({"train_size": 12}, "--train-size"),
                               ({"overrides": FT_OVERRIDES + ["train.epochs=3"]}, "--set")):
            with pytest.raises(DataError, match=f"--out {out} holds VTAB runs made with other "
                               f"settings.*{needle}.*use another --out"):
                vtab_protocol("lp_tiny_cpu", eval_source_ckpt, eval_target, out, **{**kw, **change})
        assert {p.name: p.read_bytes() for p in (out / "masks").iterdir()} == masks
    vtab = json.loads((tmp_path / "v" / "vtab.json").read_text())
    assert (vtab["seed"], vtab["train_size"]) == (0, 16)  # never claims the refused settings
    # the same settings on the legacy folder: resumed (no training) and recorded from now on
    assert vtab_protocol("lp_tiny_cpu", eval_source_ckpt, eval_target, legacy, **kw) == {
        **first, "masks": {k: v.replace(str(tmp_path / "v"), str(legacy))
                           for k, v in first["masks"].items()}}
    assert (legacy / SETTINGS_NAME).exists()
    # a finished run's result.json damaged since: named, with the way to redo that run
    res = next((tmp_path / "v").glob("select-lr*")) / "result.json"
    res.write_text(json.dumps({**json.loads(res.read_text()), "test_top1": "x"}))
    with pytest.raises(DataError, match=r"select-lr.*result.json: field 'test_top1' must be a number"
                                        r".*delete .*select-lr.* to rerun"):
        vtab_protocol("lp_tiny_cpu", eval_source_ckpt, eval_target, tmp_path / "v", **kw)


@pytest.mark.parametrize("lrs, needle", [([0.01, 0.01], "0.01 twice"),
                                         ([0.001, 0.0010000001], "0.0010000001 and 0.001 both name the run folder select-lr0.001"),
                                         ([float("nan")], "positive number"), ([0.0], "positive")])
def test_vtab_lrs_are_checked_before_any_work(eval_source_ckpt, eval_target, tmp_path, lrs, needle):
    from ffcv_dp4tl.evaluation.vtab import vtab_protocol

    with pytest.raises(DataError, match=needle):
        vtab_protocol("lp_tiny_cpu", eval_source_ckpt, eval_target, tmp_path / "v", lrs=lrs,
                      train_size=16, val_size=4)
    assert not (tmp_path / "v").exists()


def test_a_target_without_the_recipes_test_split_is_refused_before_any_work(eval_source_ckpt,
                                                                           eval_synth, tmp_path):
    """The selection runs read only the train split; the final run was the first to open the
    recipe's test split, so a target without one failed after every selection run had
    trained (here: the source, which has train and val)."""
    from ffcv_dp4tl.evaluation.vtab import vtab_protocol

    with pytest.raises(DataError, match="has no split 'test'"):
        vtab_protocol("lp_tiny_cpu", eval_source_ckpt, eval_synth / "source", tmp_path / "v",
                      lrs=[0.01], train_size=16, val_size=4)
    assert not (tmp_path / "v").exists()


def test_every_lrs_recipe_is_checked_before_the_first_finetuning(eval_source_ckpt, eval_target,
                                                                tmp_path, monkeypatch):
    """Each learning rate's run recipe (the recipe, --set, that lr.lr and the select runs'
    test split) is loaded and validated before any mask or settings file is written and before
    the first finetuning: a recipe that refuses the second lr fails the protocol at once, not
    after the first lr's finetuning. (No positive finite lr is refused by today's validation,
    so a stand-in validator refuses one; finetune records any call.)"""
    import importlib

    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.evaluation.vtab import vtab_protocol

    from .conftest import FT_OVERRIDES

    recipe_mod = importlib.import_module("ffcv_dp4tl.training.recipe")
    real_load = recipe_mod.load_recipe

    def load_recipe(name, overrides=()):
        if "lr.lr=0.07" in overrides:
            raise DP4TLError("lp_tiny_cpu: lr.lr = 0.07 is impossible (stand-in validator)")
        return real_load(name, overrides)

    started = []
    monkeypatch.setattr(recipe_mod, "load_recipe", load_recipe)
    monkeypatch.setattr(importlib.import_module("ffcv_dp4tl.training.finetune"), "finetune",
                        lambda *a, **k: started.append(k) or pytest.fail("a finetuning started"))
    with pytest.raises(DP4TLError, match="lr.lr = 0.07 is impossible"):
        vtab_protocol("lp_tiny_cpu", eval_source_ckpt, eval_target, tmp_path / "v", lrs=[0.05, 0.07],
                      train_size=16, val_size=4, overrides=FT_OVERRIDES, fmt="wds", device="cpu",
                      progress=False)
    assert started == []
    assert not (tmp_path / "v").exists()  # no masks, no vtab_settings.json


def test_vtab_masks_refuse_a_seed_that_is_not_one(eval_target):
    for seed, why in ((-1, "-1 is negative"), (True, "True is not an integer"), (0.5, "0.5 is not an integer")):
        with pytest.raises(DataError, match=f"^--seed: {why}; seeds are integers >= 0"):
            vtab_masks(eval_target, seed=seed, train_size=16, val_size=4)


@pytest.mark.parametrize("name", ["true", "1", "2024-01-01", "inf", "[x]", 'a "b" \\c', "x\x7fy",
                                  " pad "])
def test_the_split_override_keeps_any_split_name_a_string(name):
    """An override's value is TOML: a bare ``data.test_split=true`` was the bool True (refused
    as 'must be str'), ``2024-01-01`` a date."""
    from ffcv_dp4tl.evaluation.vtab import split_override
    from ffcv_dp4tl.training.recipe import load_recipe

    assert load_recipe("lp_tiny_cpu", [split_override(name)]).data.test_split == name


def test_vtab_on_a_split_named_like_a_toml_date(eval_source_ckpt, eval_target, tmp_path):
    """A target whose train split is named ``2024-01-01`` (the built target with its split
    renamed in manifest.json): the protocol selects on it (its val part) and reports test."""
    import shutil

    from ffcv_dp4tl.evaluation.vtab import vtab_protocol

    from .conftest import FT_OVERRIDES

    target = tmp_path / "target"
    shutil.copytree(eval_target, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["splits"]["2024-01-01"] = manifest["splits"].pop("train")
    (target / "manifest.json").write_text(json.dumps(manifest))
    res = vtab_protocol("lp_tiny_cpu", eval_source_ckpt, target, tmp_path / "v", lrs=[0.05],
                        train_size=16, val_size=4, fmt="wds", device="cpu", progress=False,
                        overrides=FT_OVERRIDES + ['data.train_split="2024-01-01"'])
    select = json.loads((tmp_path / "v" / "select-lr0.05" / "result.json").read_text())
    assert select["test_split"] == "2024-01-01" and select["test_samples"] == 4
    assert res["test_samples"] == 12 and res["selected_lr"] == 0.05


def test_vtab_refuses_its_runs_for_a_checkpoint_trained_again_in_place(eval_source_ckpt, eval_target,
                                                                      tmp_path):
    """The checkpoint at the same path trained again (other weights, same identity): the
    finished runs belong to the old model and are refused, not reported for the new one; a
    settings file from before the weights were recorded is accepted and completed."""
    from ffcv_dp4tl.evaluation.vtab import SETTINGS_NAME, vtab_protocol
    from ffcv_dp4tl.training.checkpoint import Checkpoint

    from .conftest import FT_OVERRIDES

    kw = dict(lrs=[0.05], train_size=16, val_size=4, overrides=FT_OVERRIDES, fmt="wds",
              device="cpu", progress=False)
    src, out = tmp_path / "source.pt", tmp_path / "v"
    ckpt = Checkpoint.load(eval_source_ckpt)
    ckpt.save(src)
    vtab_protocol("lp_tiny_cpu", src, eval_target, out, **kw)
    settings = json.loads((out / SETTINGS_NAME).read_text())
    del settings["source_weights"]  # as written before the field
    (out / SETTINGS_NAME).write_text(json.dumps(settings))
    vtab_protocol("lp_tiny_cpu", src, eval_target, out, **kw)
    assert "source_weights" in json.loads((out / SETTINGS_NAME).read_text())
    name = next(k for k, v in ckpt.model.items() if v.is_floating_point())
    ckpt.model[name] = ckpt.model[name] * 1.01
    ckpt.save(src)
    with pytest.raises(DataError, match="made with other settings \\(--checkpoint's weights differs\\)"):
        vtab_protocol("lp_tiny_cpu", src, eval_target, out, **kw)


@pytest.mark.parametrize("text, needle", [
    ("{}", "is damaged (it lacks recipe, recipe_fingerprint, checkpoint_identity"),
    ("not json", "use another --out, or delete"),
])
def test_a_damaged_settings_file_is_named_damaged(tmp_path, text, needle):
    """`{}` in vtab_settings.json was reported as nine settings that differ, and invalid JSON
    said only "rebuild or replace it" (audit): each names the file as damaged and the folder's
    fix."""
    from ffcv_dp4tl.evaluation.vtab import SETTINGS_NAME, _check_settings

    out = tmp_path / "v"
    out.mkdir()
    (out / SETTINGS_NAME).write_text(text)
    with pytest.raises(DataError) as e:
        _check_settings(out, {"recipe": "lp_tiny_cpu"})
    assert str(out / SETTINGS_NAME) in str(e.value) and needle in str(e.value)
    assert "differ" not in str(e.value) and "rebuild or replace" not in str(e.value)
