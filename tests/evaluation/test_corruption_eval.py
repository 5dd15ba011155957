"""Tab. A4 end to end: a finished LP/FF run rebuilt, evaluated clean and corrupted."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ffcv_dp4tl.data import AugSpec
from ffcv_dp4tl.evaluation.corruption import corruption_accuracy, corruption_table
from ffcv_dp4tl.evaluation.finetuned import load_finetuned


@pytest.mark.parametrize("run", ["lp_run", "ff_run"])
def test_clean_accuracy_is_the_runs_own_and_corruptions_are_evaluated(run, request):
    ft = load_finetuned(request.getfixturevalue(run), "cpu")
    assert ft.resolution == 16  # the run's own (a --set override), from result.json
    assert ft.fmt == "wds"  # the format the run read its target from, also from result.json
    # no format given: the run's own, so the pixels are the ones the run was scored on
    res = corruption_accuracy(ft, [("gaussian_noise", 1), ("gaussian_noise", 5), ("contrast", 5)],
                              batch_size=5, num_workers=0, progress=False)
    assert res["format"] == "wds"
    # the rebuilt model scores exactly what the finetuning reported on the clean test split
    assert res["clean_top1"] == pytest.approx(ft.result["test_top1"], abs=1e-9)
    assert res["count"] == ft.result["test_samples"] == 12
    assert [(r["corruption"], r["severity"]) for r in res["rows"]] == \
        [("gaussian_noise", 1), ("gaussian_noise", 5), ("contrast", 5)]
    assert res["per_corruption"]["gaussian_noise"] == pytest.approx(
        (res["rows"][0]["top1"] + res["rows"][1]["top1"]) / 2)
    assert res["mean_corruption_top1"] == pytest.approx(sum(r["top1"] for r in res["rows"]) / 3)
    # the corruption really reaches the model: contrast 0.15 changes its loss
    assert res["rows"][2]["loss"] != pytest.approx(res["clean_loss"])
    again = corruption_accuracy(ft, [("gaussian_noise", 5)], fmt="wds", batch_size=12,
                                num_workers=0, progress=False)
    assert again["rows"][0]["top1"] == res["rows"][1]["top1"]  # batching does not matter
    # by default the run's own test batch size (recorded in result.json), as the run evaluated
    assert ft.result["test_batch_size"] == ft.test_batch_size == 64
    default = corruption_accuracy(ft, [("contrast", 5)], num_workers=0, progress=False)
    assert default["batch_size"] == 64 and default["clean_top1"] == res["clean_top1"]
    table = corruption_table({"0%": res})
    assert "+ Gaussian Noise" in table and "mean corruption top-1" in table


def test_a_directory_that_is_no_run_is_refused(tmp_path):
    from ffcv_dp4tl.errors import DP4TLError

    with pytest.raises(DP4TLError, match="not a finished finetune run"):
        load_finetuned(tmp_path)


def test_impossible_resolutions_are_refused_not_replaced_by_the_recipes(lp_run):
    from ffcv_dp4tl.errors import DP4TLError

    for bad in (0, -8, 100000):  # 100000: terabytes of batch buffers
        with pytest.raises(DP4TLError, match="--resolution must be an integer number of pixels "
                                             "from 1 to 2048"):
            load_finetuned(lp_run, resolution=bad)


def test_a_replaced_source_checkpoint_of_the_same_arch_is_refused(lp_run, tmp_path):
    """The run's finetune_state.pt records the source checkpoint's whole identity. A checkpoint
    put at the recorded path after finetuning is refused when that identity differs, even with
    the same arch, class count and weight shapes (the run's head would load into it and report
    numbers of a network it was never trained on): here the same network retrained under other
    recipe settings on other data. A byte copy of the original at another path is accepted."""
    import dataclasses
    import json
    import re
    import shutil

    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.training.checkpoint import Checkpoint

    run = tmp_path / "run"
    shutil.copytree(lp_run, run)
    res = json.loads((run / "result.json").read_text())
    ckpt = tmp_path / "source.pt"
    shutil.copyfile(res["checkpoint"], ckpt)
    (run / "result.json").write_text(json.dumps({**res, "checkpoint": str(ckpt)}))
    assert load_finetuned(run).mode == "lp"  # the original, moved: accepted
    other = Checkpoint.load(ckpt)
    other.identity = {**other.identity, "recipe_fingerprint": "0" * 16, "dataset_fingerprint": "1" * 16}
    other.save(ckpt)  # same arch, classes and weights; another run's identity
    assert Checkpoint.load(ckpt).arch == Checkpoint.load(res["checkpoint"]).arch
    with pytest.raises(DataError, match=rf"source checkpoint {re.escape(str(ckpt))} is not the one "
                                        rf"{re.escape(str(run))} was finetuned from \(its identity "
                                        r"differs.*replaced after"):
        load_finetuned(run)
    # The same identity, other weights: the same run's checkpoint of another epoch, and one
    # trained again (review: evaluated in silence, the gap blamed on "other kernels").
    original = Checkpoint.load(res["checkpoint"])
    for what, changed in (("epoch", dict(epoch=original.epoch - 1)),
                          ("weights digest", dict(model={k: v + 1 if v.is_floating_point() else v
                                                         for k, v in original.model.items()}))):
        dataclasses.replace(original, **changed).save(ckpt)
        with pytest.raises(DataError, match=rf"was finetuned from \(its {what}"):
            load_finetuned(run)


def test_corruption_op_and_parse_refuse_bad_values():
    from ffcv_dp4tl.data.corruptions import CorruptionOp, parse_corruptions
    from ffcv_dp4tl.errors import DataError

    for seed, why in ((-1, "-1 is negative"), (True, "True is not an integer"), (1.5, "1.5 is not an integer")):
        with pytest.raises(DataError, match=f"^corruption seed: {why}; seeds are integers >= 0"):
            CorruptionOp("gaussian_noise", 1, seed=seed)  # (contracts.check_seeds: the one rule)
    assert CorruptionOp("gaussian_noise", 1, seed=np.int64(3)).seed == 3
    for bad in (0, -4):
        with pytest.raises(DataError, match="resolution"):
            CorruptionOp("gaussian_noise", 1, resolution=bad)
    for specs in ([""], [","], [" , "]):
        with pytest.raises(DataError, match="names no corruption"):
            parse_corruptions(specs)


def test_evaluate_corruptions_refuses_an_empty_list(lp_run):
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.evaluation.corruption import evaluate_corruptions

    with pytest.raises(DataError, match="no corruption"):
        evaluate_corruptions({"lp": lp_run}, [])


def test_a_bf16_evaluated_run_is_reevaluated_in_bf16(eval_source_ckpt, eval_target, tmp_path,
                                                     monkeypatch):
    """FF under autocast (``train.cpu_autocast``: the CPU takes the CUDA path, bf16 as with the
    paper's FF recipe on a GPU): result.json records the precision of the test evaluation and
    the evaluation repeats it, so the clean top-1 is the run's test_top1 and even the loss is
    the run's own, bit for bit (fp32 would give another loss)."""
    import importlib

    from ffcv_dp4tl.training.distributed import DistContext
    from ffcv_dp4tl.training.engine import evaluate
    from ffcv_dp4tl.training.recipe import load_recipe

    # (the package exports a function of the same name)
    finetune_module = importlib.import_module("ffcv_dp4tl.training.finetune")
    measured, real = [], finetune_module.evaluate

    def spy(*a, **k):
        measured.append(real(*a, **k))
        return measured[-1]

    monkeypatch.setattr(finetune_module, "evaluate", spy)
    recipe = load_recipe("ff_tiny_cpu", [
        "train.epochs=1", "train.batch_size=8", "finetune.resolution=16", "eval.resolution=16",
        "data.num_workers=0", "eval.batch_size=64", "train.precision=bf16",
        "train.cpu_autocast=true"])
    finetune_module.finetune(recipe, eval_source_ckpt, eval_target, tmp_path / "bf16", fmt="wds",
                             device="cpu", progress=False)
    ft = load_finetuned(tmp_path / "bf16", "cpu")
    assert ft.result["test_precision"] == ft.precision == "bf16"
    res = corruption_accuracy(ft, [("contrast", 5)], batch_size=64, num_workers=0,
                              progress=False)
    assert res["precision"] == "bf16"
    assert res["clean_top1"] == ft.result["test_top1"]
    assert res["clean_loss"] == measured[-1]["loss"]
    from ffcv_dp4tl.data import AugSpec, make_loader

    loader = make_loader(ft.target, "test", fmt="wds", aug=AugSpec.for_eval(), batch_size=64,
                         resolution=16, device="cpu", num_workers=0)
    fp32 = evaluate(ft.model, loader, DistContext(), None, ft.flip_tta)
    assert fp32["loss"] != res["clean_loss"]  # (so the precision is what made them equal)
    assert "Note" not in corruption_table({"bf16": res})
    elsewhere = {**res, "clean_top1": res["clean_top1"] + 1 / 12, "device": "cuda:0"}
    assert "Note: bf16's clean top-1" in corruption_table({"bf16": elsewhere})  # said, not hidden


def test_a_result_json_without_test_precision_is_read_as_fp32(lp_run, tmp_path):
    """Runs from before result.json recorded ``test_precision`` were evaluated without
    autocast on CPU and LP; they load as fp32. A value that is no precision is refused."""
    import json
    import shutil

    from ffcv_dp4tl.errors import DataError

    assert load_finetuned(lp_run).precision == "fp32"
    run = tmp_path / "old"
    shutil.copytree(lp_run, run)
    res = json.loads((run / "result.json").read_text())
    assert res.pop("test_precision") == "fp32"
    (run / "result.json").write_text(json.dumps(res))
    ft = load_finetuned(run)
    assert ft.precision == "fp32" and ft.amp is None
    (run / "result.json").write_text(json.dumps({**res, "test_precision": "fp8"}))
    with pytest.raises(DataError, match="'test_precision' must be one of fp32, bf16, fp16"):
        load_finetuned(run)


def test_a_target_that_is_not_the_runs_data_is_refused(lp_run, eval_synth, tmp_path):
    """result.json's ``target`` pointed at another built dataset was evaluated with rc 0 (a
    model on data it never saw; the table blamed "other kernels"). Its fingerprint is compared
    with the recorded one: result.json's, else (a result.json without it) finetune_state.pt's.
    A run that recorded none still loads (its class count is checked), and the table's note
    says its target went unchecked."""
    import json
    import re
    import shutil

    from ffcv_dp4tl.data import load_manifest
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.training.checkpoint import FinetuneState

    other = eval_synth / "source"
    run = tmp_path / "run"
    shutil.copytree(lp_run, run)
    res = json.loads((run / "result.json").read_text())
    want, have = res["target_fingerprint"][:12], load_manifest(other).fingerprint[:12]
    refused = (rf"{re.escape(str(run / 'result.json'))}: the target {re.escape(str(other))} "
               rf"\(fingerprint {have}…\) is not the data this run was finetuned on \(fingerprint "
               rf"{want}….*rerun the finetuning")
    (run / "result.json").write_text(json.dumps({**res, "target": str(other)}))
    with pytest.raises(DataError, match=refused):
        load_finetuned(run)
    old = {k: v for k, v in res.items() if k != "target_fingerprint"}
    (run / "result.json").write_text(json.dumps({**old, "target": str(other)}))
    with pytest.raises(DataError, match=refused):  # finetune_state.pt's fingerprint
        load_finetuned(run)
    state = FinetuneState.load(run / "finetune_state.pt")
    del state.identity["target_fingerprint"]
    state.save(run / "finetune_state.pt")
    with pytest.raises(DataError, match=r"has 8 classes, not the 3 this run was finetuned on"):
        load_finetuned(run)
    (run / "result.json").write_text(json.dumps(old))
    ft = load_finetuned(run)  # an older run: loads, unchecked
    assert ft.target_fingerprint is None
    r = corruption_accuracy(ft, [("contrast", 5)], num_workers=0, progress=False)
    note = "the run recorded no target fingerprint"
    assert note in corruption_table({"old": {**r, "reported_test_top1": r["clean_top1"] + 0.25}})
    checked = corruption_accuracy(load_finetuned(lp_run), [("contrast", 5)], num_workers=0,
                                  progress=False)
    assert note not in corruption_table({"new": {**checked,
                                                 "reported_test_top1": r["clean_top1"] + 0.25}})


class _OnCuda1(torch.nn.Module):
    """A model that says it lives on cuda:1 (no GPU here)."""

    def parameters(self, recurse=True):
        yield SimpleNamespace(device=torch.device("cuda", 1))


class _FirstLoader(Exception):
    pass


@pytest.mark.parametrize("what", ["corruptions", "flatness"])
def test_evaluating_on_cuda_n_makes_n_current_before_the_loader(lp_run, monkeypatch, what):
    """``dp4tl evaluate --device cuda:N``: the model is on N, and N is the current CUDA device
    before the loader is made, so ffcv's streams and epoch buffers live on N, not on GPU 0. No
    GPU here: the C call under ``torch.cuda.set_device`` is recorded, the first loader stops."""
    import dataclasses

    import ffcv_dp4tl.data
    import ffcv_dp4tl.evaluation.corruption as corruption
    from ffcv_dp4tl.evaluation.flatness import model_flatness

    calls = []
    monkeypatch.setattr(torch._C, "_cuda_setDevice", calls.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def first_loader(*a, **k):
        raise _FirstLoader(list(calls), k["device"])

    monkeypatch.setattr(corruption, "make_loader", first_loader)
    monkeypatch.setattr(ffcv_dp4tl.data, "make_loader", first_loader)
    ft = dataclasses.replace(load_finetuned(lp_run), model=_OnCuda1())
    with pytest.raises(_FirstLoader) as e:
        if what == "corruptions":
            corruption_accuracy(ft, [("contrast", 5)], num_workers=0, progress=False)
        else:
            model_flatness(ft, num_workers=0)
    assert e.value.args == ([1], torch.device("cuda", 1))


def test_the_evaluation_api_takes_the_device_rule(lp_run):
    """``load_finetuned(run, "gpu")`` (and so ``evaluate_corruptions(..., device=)``) gave torch's
    'Expected one of cpu, cuda, ipu, ...'; ``auto`` was not understood."""
    from ffcv_dp4tl.errors import DP4TLError

    with pytest.raises(DP4TLError, match=r"device 'gpu' is not a device; use auto, cpu, cuda or cuda:N"):
        load_finetuned(lp_run, "gpu")
    assert next(load_finetuned(lp_run, "auto").model.parameters()).device.type == "cpu"


def test_a_masked_run_is_evaluated_on_the_images_its_test_top1_was_measured_on(masked_lp_run):
    """A VTAB-1k selection run is scored on val4 of the *train* split. The evaluation reads the
    run's own test split and mask by default (not the whole test split), so its clean top-1 is
    the run's; the footer names that split and mask; a split given explicitly is read whole,
    and the note then names the difference instead of blaming kernels."""
    ft = load_finetuned(masked_lp_run, "cpu")
    assert ft.test_split == "train" and len(ft.test_mask) == 4 and len(ft.train_mask) == 16
    assert str(ft.test_mask_path) == ft.result["test_mask"]
    res = corruption_accuracy(ft, [("contrast", 5)], num_workers=0, progress=False)
    assert (res["split"], res["mask"]) == ("train", ft.result["test_mask"])
    assert res["count"] == ft.result["test_samples"] == 4
    assert res["clean_top1"] == ft.result["test_top1"]
    table = corruption_table({"sel": res})
    assert f"on split 'train' under mask {ft.result['test_mask']};" in table
    assert "test split" not in table and "Note" not in table
    whole = corruption_accuracy(ft, [("contrast", 5)], split="test", num_workers=0,
                                progress=False)
    assert (whole["split"], whole["mask"], whole["count"]) == ("test", None, 12)
    off = {**whole, "clean_top1": ft.result["test_top1"] + 0.25}  # (however the numbers fall)
    note = corruption_table({"sel": off}).splitlines()[-1]
    assert note.startswith("Note: sel's clean top-1") and "other kernels" not in note
    assert ("measured on split 'test' (all samples) (12 images), the run's test top-1 on split "
            f"'train' under mask {ft.result['test_mask']} (4 images)") in note


def test_a_result_without_the_split_and_mask_fields_reads_as_before(masked_lp_run, tmp_path):
    """result.json from before ``test_split``/``test_mask``/``train_mask`` were read: the whole
    ``test`` split, as evaluations always read it then."""
    import json
    import shutil

    run = tmp_path / "old"
    shutil.copytree(masked_lp_run, run)
    res = json.loads((run / "result.json").read_text())
    for k in ("test_split", "test_mask", "train_mask"):
        res.pop(k)
    (run / "result.json").write_text(json.dumps(res))
    ft = load_finetuned(run)
    assert (ft.test_split, ft.test_mask, ft.train_split, ft.train_mask) == ("test", None,
                                                                           "train", None)
    assert corruption_accuracy(ft, [("contrast", 5)], num_workers=0, progress=False)["count"] == 12


def test_a_missing_or_replaced_mask_is_refused(masked_lp_run, tmp_path):
    """The run's masks are checked when it is loaded: a replaced mask file (other indices than
    the digest finetune_state.pt recorded) would silently score other images."""
    import json
    import re
    import shutil

    from ffcv_dp4tl.data import load_manifest, make_mask, save_mask
    from ffcv_dp4tl.errors import DataError

    run = tmp_path / "run"
    shutil.copytree(masked_lp_run, run)
    res = json.loads((run / "result.json").read_text())
    mask = tmp_path / "val.npy"
    (run / "result.json").write_text(json.dumps({**res, "test_mask": str(mask)}))
    with pytest.raises(DataError, match=rf"test mask {re.escape(str(mask))} .*'test_mask'.* is "
                                        "missing; put it back"):
        load_finetuned(run)
    info = load_manifest(res["target"]).split("train")
    save_mask(mask, make_mask(np.arange(4), info))  # a valid mask, but not the run's val4
    with pytest.raises(DataError, match="not the one .* was finetuned with .*replaced after"):
        load_finetuned(run)
    shutil.copyfile(res["test_mask"], mask)
    shutil.copyfile(res["test_mask"].removesuffix(".npy") + ".json", mask.with_suffix(".json"))
    assert len(load_finetuned(run).test_mask) == 4  # the original, moved: accepted


def test_the_footer_names_each_corruptions_severities():
    """``--corrupt gaussian_noise:5,defocus_blur:1`` ran each corruption at one severity: the
    footer says which (it used to say "mean over severities [1, 5]" for both)."""
    def result(rows):
        return {"clean_top1": 0.5, "count": 12, "split": "test", "mask": None, "rows": rows,
                "per_corruption": {r["corruption"]: r["top1"] for r in rows},
                "mean_corruption_top1": 0.5}

    rows = [{"corruption": "gaussian_noise", "severity": 5, "top1": 0.4},
            {"corruption": "defocus_blur", "severity": 1, "top1": 0.6}]
    footer = corruption_table({"a": result(rows)}).splitlines()[-1]
    assert "over its severities (Gaussian Noise 5; Defocus Blur 1)" in footer
    assert "[1, 5]" not in footer and "on split 'test' (all samples)" in footer
    every = [{"corruption": n, "severity": s, "top1": 0.5} for n in ("fog", "contrast")
             for s in range(1, 6)]
    assert "mean over severities 1-5;" in corruption_table({"a": result(every)})
    assert "each corruption at severity 5;" in corruption_table({"a": result(rows[:1])})


def test_a_cifar_target_corrupted_at_another_side_is_warned_about(eval_target, tmp_path):
    """CIFAR-10-C's parameters are for 32 px: a CIFAR target read at another resolution and
    corrupted there is not CIFAR-10-C, which is said (not silently done)."""
    import json
    import shutil

    from ffcv_dp4tl.evaluation.corruption import resolution_warning

    cifar = tmp_path / "cifar10"
    shutil.copytree(eval_target, cifar)
    manifest = json.loads((cifar / "manifest.json").read_text())
    (cifar / "manifest.json").write_text(json.dumps({**manifest, "name": "cifar10"}))
    ft = SimpleNamespace(target=cifar, resolution=160, name="run")
    line = resolution_warning(ft, None)
    assert "corrupted at 160 px" in line and "pass --corrupt-resolution 32" in line
    assert "\n" not in line
    assert resolution_warning(ft, 32) is None
    assert "at 64 px" in resolution_warning(ft, 64)
    assert resolution_warning(SimpleNamespace(target=eval_target, resolution=160, name="r"),
                              None) is None  # (not CIFAR: no CIFAR-10-C resolution to keep)


@pytest.mark.parametrize("recipe", ["lp_tiny_cpu", "ff_tiny_cpu"])
def test_a_run_that_finetuned_the_source_head_is_rebuilt_with_it(eval_source_ckpt, eval_target,
                                                                tmp_path, recipe):
    """``finetune.head = "source"`` (paper_code LP/FF) trains the source's own classifier: an
    evaluation must rebuild that head, not a target-sized one (the weights would not load, or
    would score other logits), and measure exactly the run's reported test top-1."""
    from ffcv_dp4tl.training.finetune import finetune
    from ffcv_dp4tl.training.recipe import load_recipe

    over = ["train.epochs=1", "finetune.resolution=16", "eval.resolution=16",
            "data.num_workers=0", "eval.batch_size=64", "finetune.head=source"]
    finetune(load_recipe(recipe, over + (["train.batch_size=8"] if recipe.startswith("ff") else [])),
             eval_source_ckpt, eval_target, tmp_path / "run", fmt="wds", device="cpu",
             progress=False)
    ft = load_finetuned(tmp_path / "run", "cpu")
    assert ft.result["head"] == "source"
    res = corruption_accuracy(ft, [("contrast", 5)], num_workers=0, progress=False)
    assert res["clean_top1"] == pytest.approx(ft.result["test_top1"], abs=1e-9)


@pytest.mark.parametrize("recipe", ["lp_tiny_cpu", "ff_tiny_cpu"])
def test_a_run_that_read_its_images_as_the_cifar_loader_is_evaluated_the_same_way(
        eval_source_ckpt, eval_target, tmp_path, recipe):
    """``finetune.normalize`` / ``test_crop`` (paper_code/*_cifar10: CIFAR-10's mean/std, the
    whole image at test): result.json records them and an evaluation reads the test images the
    same way, so its clean top-1 is the run's exactly; the corruptions are applied to the
    pixels the CIFAR statistics decode back to."""
    from ffcv_dp4tl.training.finetune import finetune
    from ffcv_dp4tl.training.recipe import load_recipe

    over = ["train.epochs=1", "finetune.resolution=16", "eval.resolution=16",
            "data.num_workers=0", "eval.batch_size=64", "finetune.normalize=cifar10",
            "finetune.test_crop=none"]
    finetune(load_recipe(recipe, over + (["train.batch_size=8", "train.crop_ratio=[1.0,1.0]"]
                                         if recipe.startswith("ff") else [])),
             eval_source_ckpt, eval_target, tmp_path / "run", fmt="wds", device="cpu",
             progress=False)
    ft = load_finetuned(tmp_path / "run", "cpu")
    assert (ft.result["normalize"], ft.result["test_crop"]) == ("cifar10", "none")
    aug = ft.eval_aug()
    assert (aug.normalize, aug.center_crop_ratio, aug.train) == ("cifar10", 1.0, False)
    res = corruption_accuracy(ft, [("contrast", 5)], num_workers=0, progress=False)
    assert res["clean_top1"] == pytest.approx(ft.result["test_top1"], abs=1e-9)
    # a run with the defaults records neither field and reads as before
    finetune(load_recipe(recipe, over[:5] + (["train.batch_size=8"] if recipe.startswith("ff")
                                             else [])),
             eval_source_ckpt, eval_target, tmp_path / "plain", fmt="wds", device="cpu",
             progress=False)
    plain = load_finetuned(tmp_path / "plain", "cpu")
    assert "normalize" not in plain.result and "test_crop" not in plain.result
    assert plain.eval_aug() == AugSpec.for_eval()


def test_corrupted_loader_inverts_the_wrapped_loaders_statistics():
    """CorruptedLoader maps a batch back to uint8 pixels with the statistics the wrapped loader
    normalised with (CIFAR-10's here; it used ImageNet's for every loader), exactly for every
    level, and a loader without an AugSpec keeps ImageNet's."""
    from ffcv_dp4tl.data.corruptions import CorruptedLoader
    from ffcv_dp4tl.data.transforms import Normalize

    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    op = object()
    loader = CorruptedLoader(SimpleNamespace(aug=AugSpec.for_eval(normalize="cifar10"), views=1), op)
    norm = Normalize(stats="cifar10")
    torch.testing.assert_close(loader.mean, norm.mean)
    torch.testing.assert_close(loader.std, norm.std)
    back = (norm(levels) * loader.std + loader.mean).round().to(torch.uint8)
    assert torch.equal(back, levels)
    plain = CorruptedLoader(SimpleNamespace(views=1), op)
    torch.testing.assert_close(plain.mean, Normalize().mean)


def test_a_run_that_decoded_its_test_images_on_the_gpu_is_named_in_the_note(
        eval_source_ckpt, eval_target, lp_run, tmp_path):
    """data.decode=gpu reads the test JPEGs with another decoder than the CPU one the
    corruption evaluation must use: result.json records it, and a clean top-1 off the reported
    one names it instead of "other kernels" (the GPU decoder runs on the CPU here)."""
    import json

    from .conftest import _finetune

    run = _finetune("lp_tiny_cpu", eval_source_ckpt, eval_target, tmp_path / "g", ["data.decode=gpu"])
    assert json.loads((run / "result.json").read_text())["test_decode"] == "gpu"
    assert "test_decode" not in json.loads((lp_run / "result.json").read_text())  # (CPU: as before)
    res = corruption_accuracy(load_finetuned(run), [("contrast", 1)], num_workers=0, progress=False)
    off = {**res, "clean_top1": res["reported_test_top1"] + 0.25}
    note = corruption_table({"g": off}).splitlines()[-1]
    assert "the run decoded its test JPEGs on the GPU, this evaluation on the CPU" in note
    assert "other kernels" not in note


def test_a_failed_evaluation_leaves_no_loader_workers_behind(lp_run, monkeypatch):
    """The evaluation closes its loader as it unwinds: a failed call kept by a notebook's
    traceback held the WebDataset loader's worker processes (a review of the leak fixes)."""
    import multiprocessing

    from ffcv_dp4tl.evaluation import corruption

    ft = load_finetuned(lp_run, "cpu")
    evaluate = corruption.evaluate

    def fails_on_the_corrupted_pass(model, loader, *args, **kw):
        if isinstance(loader, corruption.CorruptedLoader):
            raise ValueError("a corrupted pass failed")
        return evaluate(model, loader, *args, **kw)

    monkeypatch.setattr(corruption, "evaluate", fails_on_the_corrupted_pass)
    before = set(multiprocessing.active_children())
    with pytest.raises(ValueError) as failed:
        corruption_accuracy(ft, [("contrast", 5)], batch_size=5, num_workers=2, progress=False)
    assert failed.traceback  # (kept: its frames hold the loader)
    assert set(multiprocessing.active_children()) <= before
