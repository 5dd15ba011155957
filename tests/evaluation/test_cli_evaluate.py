"""`dp4tl evaluate ...`: tables and files written, bad input refused in one line."""
from __future__ import annotations

import json

import pytest

from cli_runner import cli, one_line


def test_corruptions_and_flatness_write_their_tables(lp_run, capsys, monkeypatch, tmp_path):
    code, out, err = cli(capsys, monkeypatch, "evaluate", "corruptions", f"LP={lp_run}",
                         "--corrupt", "impulse_noise:5", "--format", "wds", "--workers", "0",
                         "--device", "cpu", "--no-progress", "-o", tmp_path)
    assert code == 0, err
    res = json.loads((tmp_path / "corruptions.json").read_text())
    assert [(r["corruption"], r["severity"]) for r in res["LP"]["rows"]] == [("impulse_noise", 5)]
    assert "+ Impulse Noise" in (tmp_path / "corruptions.md").read_text()
    code, out, err = cli(capsys, monkeypatch, "evaluate", "flatness", f"LP={lp_run}", "--batches",
                         "1", "--batch-size", "8", "--steps", "1", "--iters", "2", "--format",
                         "wds", "--workers", "0", "--device", "cpu", "-o", tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "flatness.json").read_text())["LP"]["samples"] == 8


@pytest.mark.parametrize("cmd", ["corruptions", "flatness"])
def test_a_rerun_reuses_the_models_measured_under_the_same_settings(cmd, lp_run, ff_run, capsys,
                                                                    monkeypatch, tmp_path):
    """Ctrl-C says "rerun the same command to resume": the models an interrupted call had
    finished (its partial OUT/*.json) are reused, the rest measured; another setting, or the run
    finetuned again, measures again."""
    opts = (("--corrupt", "impulse_noise:5", "--no-progress") if cmd == "corruptions" else
            ("--batches", "1", "--batch-size", "8", "--steps", "1", "--iters", "2"))
    common = ("evaluate", cmd, *opts, "--format", "wds", "--workers", "0", "--device", "cpu",
              "-o", tmp_path)
    assert cli(capsys, monkeypatch, *common[:2], f"LP={lp_run}", *common[2:])[0] == 0  # (the part
    first = json.loads((tmp_path / f"{cmd}.json").read_text())["LP"]          # done before a ^C)
    code, out, err = cli(capsys, monkeypatch, *common[:2], f"LP={lp_run}", f"FF={ff_run}", *common[2:])
    assert code == 0, err
    assert "LP: measured already under the same settings" in out and "FF: measured" not in out
    both = json.loads((tmp_path / f"{cmd}.json").read_text())
    assert both["LP"] == first and both["FF"]["run"] == str(ff_run)
    assert both["FF"]["reuse_key"] != both["LP"]["reuse_key"]
    seed = ("--seed", "1")
    code, out, _ = cli(capsys, monkeypatch, *common[:2], f"LP={lp_run}", *common[2:], *seed)
    assert code == 0 and "measured already" not in out  # another setting: measured again


@pytest.mark.parametrize("cmd, edit, said", [
    ("corruptions", {"clean_top1": "1.0"}, "field 'clean_top1' must be a number in [0, 1], got '1.0'"),
    ("corruptions", {"clean_top1": 1.5}, "field 'clean_top1' must be a number in [0, 1], got 1.5"),
    ("corruptions", {"per_corruption": {"impulse_noise": "0.5"}},
     "per_corruption: field 'impulse_noise' must be a number in [0, 1], got '0.5'"),
    ("corruptions", {"rows": [{"corruption": "impulse_noise", "severity": "5", "top1": 0.5}]},
     "row 1: field 'severity' must be an integer, got '5'"),
    ("flatness", {"eps_sharpness": "x"}, "field 'eps_sharpness' must be a number, got 'x'"),
    ("flatness", {"converged": "yes"}, "field 'converged' must be true or false, got 'yes'"),
])
def test_a_reused_entry_of_the_wrong_type_is_measured_again(cmd, edit, said, lp_run, capsys,
                                                            monkeypatch, tmp_path):
    """Audit B2: an entry of an earlier OUT/corruptions.json / flatness.json under the same
    reuse key was taken as it was: a string top-1 crashed the table code with a traceback, a
    top-1 of 1.5 went into the table. Such an entry is measured again (the file is this
    command's cache), with one warning line naming the file and the model."""
    opts = (("--corrupt", "impulse_noise:5", "--no-progress") if cmd == "corruptions" else
            ("--batches", "1", "--batch-size", "8", "--steps", "1", "--iters", "2"))
    args = ("evaluate", cmd, f"LP={lp_run}", *opts, "--format", "wds", "--workers", "0",
            "--device", "cpu", "-o", tmp_path)
    assert cli(capsys, monkeypatch, *args)[0] == 0
    path = tmp_path / f"{cmd}.json"
    first = json.loads(path.read_text())
    path.write_text(json.dumps({"LP": {**first["LP"], **edit}}))
    code, out, err = cli(capsys, monkeypatch, *args)
    assert code == 0, err
    assert err.strip().splitlines() == [f"warning: {path} entry 'LP'"
                                        + (" " if "row" in said or "per_" in said else ": ")
                                        + f"{said}; measuring it again"], err
    assert "measured already" not in out and "Traceback" not in err
    assert json.loads(path.read_text())["LP"] == first["LP"]  # (measured again: the same numbers)


@pytest.mark.parametrize("cmd", ["corruptions", "flatness"])
def test_a_seed_past_the_seed_range_or_a_folder_that_is_no_finetune_run_is_one_line(
        cmd, lp_run, eval_source_ckpt, capsys, monkeypatch, tmp_path):
    """--seed 2**64 was a traceback in flatness (after the ε-sharpness work) and checked in
    corruptions only after the clean pass. A training run's folder is named as "not a finished
    finetune run" (the reuse check must not turn it into "not found: ...")."""
    extra = CORRUPT if cmd == "corruptions" else ("--workers", "0", "--device", "cpu")
    one_line(*cli(capsys, monkeypatch, "evaluate", cmd, lp_run, *extra, "--seed", str(2**64),
                  "-o", tmp_path / "o")[::2], "--seed", "too large")
    one_line(*cli(capsys, monkeypatch, "evaluate", cmd, eval_source_ckpt.parent, *extra, "-o",
                  tmp_path / "o")[::2], "is not a finished finetune run")


def test_bad_input_is_one_line(eval_target, capsys, monkeypatch, tmp_path):
    one_line(*cli(capsys, monkeypatch, "evaluate", "vtab-splits", "--data", eval_target, "-o",
                  tmp_path)[::2], "fewer than the 800 + 200")
    one_line(*cli(capsys, monkeypatch, "evaluate", "corruptions", tmp_path, "--corrupt", "frost",
                  "-o", tmp_path)[::2], "frost")
    one_line(*cli(capsys, monkeypatch, "evaluate", "flatness", tmp_path / "nope", "-o",
                  tmp_path)[::2], "does not exist")
    code, out, err = cli(capsys, monkeypatch, "evaluate", "vtab-splits", "--data", eval_target,
                         "--train-size", "16", "--val-size", "4", "-o", tmp_path / "m")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "train16.json", "train16.npy", "train16val4.json", "train16val4.npy", "val4.json", "val4.npy"]


def test_vtab_splits_refuse_another_draw_into_the_same_out(eval_target, capsys, monkeypatch,
                                                          tmp_path):
    """A rerun with other sizes kept the first draw's train16 next to a new val4: overlapping
    masks, and rc 0."""
    args = ("evaluate", "vtab-splits", "--data", eval_target, "--val-size", "4", "-o", tmp_path)
    assert cli(capsys, monkeypatch, *args, "--train-size", "16")[0] == 0
    one_line(*cli(capsys, monkeypatch, *args, "--train-size", "12")[::2],
             str(tmp_path), "--train-size 16 -> 12", "use another --out")
    assert not (tmp_path / "train12.npy").exists()


@pytest.mark.parametrize("cmd", ["corruptions", "flatness"])
@pytest.mark.parametrize("arg, needle", [("=RUN", "empty label"), (" =RUN", "empty label"),
                                         ("LP=", "names no directory"),
                                         ("LP= ", "names no directory"),
                                         ("", "is empty"), (" ", "is empty"),
                                         ("a|b=RUN", "cannot hold '|'")])
def test_a_run_argument_without_label_or_directory_is_one_line(lp_run, capsys, monkeypatch,
                                                               tmp_path, cmd, arg, needle):
    """``=DIR`` was accepted and wrote a column with a blank header into the table."""
    arg = arg.replace("RUN", str(lp_run))
    extra = CORRUPT if cmd == "corruptions" else ("--workers", "0", "--device", "cpu")
    one_line(*cli(capsys, monkeypatch, "evaluate", cmd, arg, *extra, "-o", tmp_path / "o")[::2],
             repr(arg), needle, "LABEL=DIR")
    assert not (tmp_path / "o").exists()


def _copy_run(run, dest, **fields):
    """A copy of a finished run whose result.json has ``fields`` changed (None: removed)."""
    import shutil

    shutil.copytree(run, dest)
    res = json.loads((dest / "result.json").read_text())
    for k, v in fields.items():
        if v is None:
            res.pop(k, None)
        else:
            res[k] = v
    (dest / "result.json").write_text(json.dumps(res))
    return dest


CORRUPT = ("--corrupt", "gaussian_noise:1", "--workers", "0", "--device", "cpu", "--no-progress")


@pytest.mark.parametrize("fields, needles", [
    ({"target_classes": "six"}, ("result.json", "'target_classes'", "'six'")),
    ({"target_classes": None}, ("result.json", "lacks field 'target_classes'")),
    ({"mode": None}, ("lacks field 'mode'",)),
    ({"mode": 5}, ("'mode'", "must be a string")),
    ({"mode": "xx"}, ("'mode'", "lp, ff")),
    ({"mode": "ff"}, ("'mode' is 'ff'", "'lp' run")),      # an LP run's weights
    ({"resolution": "abc"}, ("'resolution'", "'abc'")),
    ({"resolution": -32}, ("'resolution' must be >= 1",)),
    ({"checkpoint": 5}, ("'checkpoint'", "must be a string")),
    ({"target": None}, ("lacks field 'target'",)),
    ({"format": "tar"}, ("'format'",)),
    ({"flip_tta": "no"}, ("'flip_tta'",)),
    ({"flip_tta": 1}, ("'flip_tta' must be true or false",)),
    ({"test_precision": "fp8"}, ("'test_precision' must be one of fp32, bf16, fp16",)),
    ({"test_precision": 16}, ("'test_precision'", "must be a string")),
    ({"test_batch_size": 0}, ("'test_batch_size' must be >= 1, got 0",)),
    ({"test_batch_size": "64"}, ("'test_batch_size'", "must be")),
    ({"target_classes": 0}, ("'target_classes' must be >= 1",)),
    ({"resolution": 0}, ("'resolution' must be >= 1",)),
    # copied into corruptions.json as the reported top-1; the split the tables evaluate (audit)
    ({"test_top1": "x"}, ("'test_top1' must be a number in [0, 1], got 'x'",)),
    ({"test_split": "train"}, ("'test_split' is 'train' but the run was tested on 'test'",
                               "finetune_state.pt")),
])
def test_a_damaged_result_json_is_one_line(lp_run, capsys, monkeypatch, tmp_path, fields, needles):
    bad = _copy_run(lp_run, tmp_path / "bad", **fields)
    for cmd in ("corruptions", "flatness"):
        extra = CORRUPT if cmd == "corruptions" else ("--workers", "0", "--device", "cpu")
        one_line(*cli(capsys, monkeypatch, "evaluate", cmd, bad, *extra, "-o", tmp_path / "o")[::2],
                 *needles)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cmd", ["corruptions", "flatness"])
def test_a_run_pointed_at_another_target_is_one_line(lp_run, eval_synth, capsys, monkeypatch,
                                                     tmp_path, cmd):
    """result.json's target edited to another built dataset ran with rc 0 (corruptions blamed
    "other kernels", flatness said nothing): the recorded fingerprint is compared."""
    from ffcv_dp4tl.data import load_manifest

    other = eval_synth / "source"
    bad = _copy_run(lp_run, tmp_path / "bad", target=str(other))
    want = json.loads((lp_run / "result.json").read_text())["target_fingerprint"][:12]
    extra = CORRUPT if cmd == "corruptions" else ("--workers", "0", "--device", "cpu")
    one_line(*cli(capsys, monkeypatch, "evaluate", cmd, bad, *extra, "-o", tmp_path / "o")[::2],
             "bad/result.json", load_manifest(other).fingerprint[:12], want,
             "'target_fingerprint'", "rerun the finetuning")
    assert not (tmp_path / "o").exists()


def test_a_result_json_that_is_no_object_is_one_line(lp_run, capsys, monkeypatch, tmp_path):
    bad = _copy_run(lp_run, tmp_path / "bad")
    (bad / "result.json").write_text("[1, 2]")
    one_line(*cli(capsys, monkeypatch, "evaluate", "corruptions", bad, *CORRUPT, "-o",
                  tmp_path / "o")[::2], "result.json", "not a finetune result")


def test_advice_fits_the_command(lp_run, capsys, monkeypatch, tmp_path):
    """No --checkpoint to pass; a finished run's weights are not to be deleted; a replaced
    source is not blamed for an edited result.json."""
    bad = _copy_run(lp_run, tmp_path / "gone", checkpoint=str(tmp_path / "nope.pt"))
    code, _, err = cli(capsys, monkeypatch, "evaluate", "corruptions", bad, *CORRUPT, "-o", tmp_path)
    one_line(code, err, "nope.pt", "'checkpoint'", "put it back")
    assert "--checkpoint" not in err
    bad = _copy_run(lp_run, tmp_path / "state")
    (bad / "finetune_state.pt").write_bytes(b"not a state")
    code, _, err = cli(capsys, monkeypatch, "evaluate", "flatness", bad, "-o", tmp_path)
    one_line(code, err, "finetune_state.pt", "restore it from a backup")
    assert "delete" not in err
    bad = _copy_run(lp_run, tmp_path / "classes", target_classes=10)
    code, _, err = cli(capsys, monkeypatch, "evaluate", "flatness", bad, "-o", tmp_path)
    one_line(code, err, "does not fit", "10 classes", "'target_classes'")
    assert "replaced" not in err


def test_a_file_as_run_directory_is_named_a_file(capsys, monkeypatch, tmp_path):
    (tmp_path / "f").write_text("x")
    one_line(*cli(capsys, monkeypatch, "evaluate", "corruptions", tmp_path / "f", "-o",
                  tmp_path)[::2], "is a file, not a directory")


@pytest.mark.parametrize("cmd, args, needle", [
    ("corruptions", ("--batch-size", "0"), "--batch-size"),
    ("corruptions", ("--batch-size", "-5"), "--batch-size"),
    ("flatness", ("--batch-size", "0"), "--batch-size"),
    ("corruptions", ("--resolution", "-8"), "--resolution"),
    ("corruptions", ("--resolution", "0"), "--resolution"),
    ("flatness", ("--resolution", "0"), "--resolution"),
    ("corruptions", ("--corrupt-resolution", "0"), "--corrupt-resolution"),
    ("corruptions", ("--corrupt-resolution", "-4"), "--corrupt-resolution"),
    ("corruptions", ("--seed", "-1"), "--seed"),
    ("corruptions", ("--workers", "-1"), "--workers"),
    ("flatness", ("--workers", "-1"), "--workers"),
    ("corruptions", ("--corrupt", ""), "--corrupt"),
    ("corruptions", ("--corrupt", ","), "--corrupt"),
    ("flatness", ("--eps", "nan"), "--eps"),
    ("flatness", ("--eps", "inf"), "--eps"),
    ("flatness", ("--batches", "-1"), "--batches"),
    ("flatness", ("--tol", "-1"), "--tol"),
    ("flatness", ("--tol", "nan"), "--tol"),
    ("flatness", ("--tol", "inf"), "--tol"),
    ("corruptions", ("-o", "FILE"), "is a file"),
    ("flatness", ("-o", "FILE"), "is a file"),
])
def test_bad_options_are_refused_before_any_work(lp_run, capsys, monkeypatch, tmp_path, cmd, args,
                                                 needle):
    import ffcv_dp4tl.evaluation.corruption as corruption
    import ffcv_dp4tl.evaluation.finetuned as finetuned

    def no_load(*a, **k):
        raise AssertionError("a run was loaded before the options were checked")

    monkeypatch.setattr(finetuned, "load_finetuned", no_load)
    monkeypatch.setattr(corruption, "load_finetuned", no_load)
    (tmp_path / "FILE").write_text("a file, not a folder")
    args = tuple(str(tmp_path / "FILE") if a == "FILE" else a for a in args)
    one_line(*cli(capsys, monkeypatch, "evaluate", cmd, lp_run, "--device", "cpu", "-o",
                  tmp_path / "o", *args)[::2], needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, named, not_named", [
    (("--steps", "-1"), "'--steps'", "--eps"), (("--iters", "0"), "'--iters'", "--eps"),
    (("--iters", "-3"), "'--iters'", "--eps"), (("--eps", "0"), "--eps", "--steps"),
    (("--eps", "-1e-3"), "got -0.001", "--iters")])
def test_flatness_names_the_option_that_is_wrong(lp_run, capsys, monkeypatch, tmp_path, args,
                                                 named, not_named):
    """A bad --steps or --iters was reported as "--eps must be a finite number > 0 (got
    0.001), --steps and --iters >= 1": the wrong option blamed, with another's value."""
    code, _, err = cli(capsys, monkeypatch, "evaluate", "flatness", lp_run, "--device", "cpu",
                       "-o", tmp_path / "o", *args)
    one_line(code, err, named)
    assert not_named not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [("vtab-splits", "--data", "D", "-o", "O"),
                                  ("vtab", "lp_tiny_cpu", "--checkpoint", "C", "--data", "D",
                                   "-o", "O")])
def test_negative_seeds_are_refused(eval_target, capsys, monkeypatch, tmp_path, args):
    args = [eval_target if a == "D" else tmp_path / "o" if a == "O" else tmp_path / "c.pt"
            if a == "C" else a for a in args]
    one_line(*cli(capsys, monkeypatch, "evaluate", *args, "--seed", "-1")[::2], "--seed")
    assert not (tmp_path / "o").exists()


def test_vtab_refuses_a_repeated_lr(eval_source_ckpt, eval_target, capsys, monkeypatch, tmp_path):
    one_line(*cli(capsys, monkeypatch, "evaluate", "vtab", "lp_tiny_cpu", "--checkpoint",
                  eval_source_ckpt, "--data", eval_target, "--lr", "0.01,0.010", "-o",
                  tmp_path / "o")[::2], "--lr", "0.01 twice")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cmd", ["corruptions", "flatness"])
def test_every_run_is_checked_before_any_is_evaluated(lp_run, capsys, monkeypatch, tmp_path, cmd):
    import ffcv_dp4tl.evaluation.corruption as corruption
    import ffcv_dp4tl.evaluation.flatness as flatness

    def no_work(*a, **k):
        raise AssertionError("the good run was evaluated before the bad one was checked")

    monkeypatch.setattr(corruption, "corruption_accuracy", no_work)
    monkeypatch.setattr(flatness, "model_flatness", no_work)
    bad = _copy_run(lp_run, tmp_path / "bad", target_classes="six")
    extra = CORRUPT if cmd == "corruptions" else ("--workers", "0", "--device", "cpu")
    one_line(*cli(capsys, monkeypatch, "evaluate", cmd, f"good={lp_run}", f"bad={bad}", *extra,
                  "-o", tmp_path / "o")[::2], "bad/result.json", "'target_classes'")


def test_flatness_keeps_the_finished_models_when_a_later_one_fails(lp_run, capsys, monkeypatch,
                                                                   tmp_path):
    """flatness.json/.md are rewritten after every model: a failure in the second model (out of
    memory, a kill) leaves the first model's numbers, marked partial in the table."""
    import ffcv_dp4tl.evaluation.flatness as flatness
    from ffcv_dp4tl.errors import DP4TLError

    real, calls = flatness.model_flatness, []

    def second_fails(ft, **kw):
        calls.append(ft)
        if len(calls) == 2:
            raise DP4TLError("the second model failed")
        return real(ft, **kw)

    monkeypatch.setattr(flatness, "model_flatness", second_fails)
    one_line(*cli(capsys, monkeypatch, "evaluate", "flatness", f"first={lp_run}",
                  f"second={lp_run}", "--batches", "1", "--batch-size", "8", "--steps", "1",
                  "--iters", "1", "--workers", "0", "--device", "cpu", "-o", tmp_path)[::2],
             "the second model failed")
    assert list(json.loads((tmp_path / "flatness.json").read_text())) == ["first"]
    assert "Partial: 1 of 2 models" in (tmp_path / "flatness.md").read_text()
    monkeypatch.setattr(flatness, "model_flatness", real)
    code, _, err = cli(capsys, monkeypatch, "evaluate", "flatness", f"first={lp_run}",
                       f"second={lp_run}", "--batches", "1", "--batch-size", "8", "--steps", "1",
                       "--iters", "1", "--workers", "0", "--device", "cpu", "-o", tmp_path)
    assert code == 0, err
    assert list(json.loads((tmp_path / "flatness.json").read_text())) == ["first", "second"]
    assert "Partial" not in (tmp_path / "flatness.md").read_text()


def test_corruptions_keep_the_finished_models_when_a_later_one_fails(lp_run, capsys, monkeypatch,
                                                                     tmp_path):
    """As flatness: corruptions.json/.md are rewritten after every model, so a failure in the
    second (out of memory, a kill) keeps the first model's numbers, marked partial."""
    import ffcv_dp4tl.evaluation.corruption as corruption
    from ffcv_dp4tl.errors import DP4TLError

    real, calls = corruption.corruption_accuracy, []

    def second_fails(ft, *a, **kw):
        calls.append(ft)
        if len(calls) == 2:
            raise DP4TLError("the second model failed")
        return real(ft, *a, **kw)

    monkeypatch.setattr(corruption, "corruption_accuracy", second_fails)
    args = ("evaluate", "corruptions", f"first={lp_run}", f"second={lp_run}", "--corrupt",
            "gaussian_noise:1", "--workers", "0", "--device", "cpu", "--no-progress", "-o", tmp_path)
    one_line(*cli(capsys, monkeypatch, *args)[::2], "the second model failed")
    assert list(json.loads((tmp_path / "corruptions.json").read_text())) == ["first"]
    assert "Partial: 1 of 2 models" in (tmp_path / "corruptions.md").read_text()


def test_corruptions_name_the_split_read_and_warn_about_a_cifar_resolution(
        lp_run, eval_target, capsys, monkeypatch, tmp_path):
    """The footer names the split actually read (``--split train`` here; it used to say "on the
    test split" whatever was read), and a CIFAR target corrupted at a side other than 32 px is
    warned about on stderr (one line) and in the table."""
    import shutil

    cifar = tmp_path / "cifar10"
    shutil.copytree(eval_target, cifar)
    manifest = json.loads((cifar / "manifest.json").read_text())
    (cifar / "manifest.json").write_text(json.dumps({**manifest, "name": "cifar10"}))
    run = _copy_run(lp_run, tmp_path / "run", target=str(cifar))
    code, out, err = cli(capsys, monkeypatch, "evaluate", "corruptions", f"LP={run}", "--split",
                         "train", "--corrupt", "contrast:5", "--workers", "0", "--device", "cpu",
                         "--no-progress", "-o", tmp_path / "o")
    assert code == 0, err
    md = (tmp_path / "o" / "corruptions.md").read_text()
    assert "on split 'train' (all samples)" in md and "test split" not in md
    assert json.loads((tmp_path / "o" / "corruptions.json").read_text())["LP"]["count"] == 24
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "LP: the CIFAR target" in warned[0], err
    assert "corrupted at 16 px" in warned[0] and "--corrupt-resolution 32" in warned[0]
    assert "Warning: LP: the CIFAR target" in md


def test_a_run_under_a_tilde_is_read_from_the_home_folder(tmp_path, monkeypatch):
    """RUNS (``DIR`` or ``LABEL=DIR``) read a leading ``~`` as the home folder, as every path
    option does (``LABEL=~/run``, a quoted ``"~/run"``: the shell leaves both as typed)."""
    from ffcv_dp4tl.cli.evaluate import _runs

    (tmp_path / "lp").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "lp")  # (no `~` folder here to read by mistake)
    assert _runs(["LP=~/lp", "~/lp/"]) == {"LP": tmp_path / "lp", "lp": tmp_path / "lp"}


@pytest.mark.parametrize("cmd, module, func", [
    ("corruptions", "ffcv_dp4tl.evaluation.corruption", "evaluate_corruptions"),
    ("flatness", "ffcv_dp4tl.evaluation.flatness", "model_flatness")])
def test_an_evaluation_holds_its_targets_readers_lock_while_it_measures(
        cmd, module, func, lp_run, eval_target, capsys, monkeypatch, tmp_path):
    """``dp4tl evaluate`` read a run's target with no readers' lock, so a ``dp4tl build
    --overwrite`` of that target replaced the betons under the evaluation (audit). It now
    holds the lock that refuses such a build for as long as it measures."""
    import importlib

    from lock_probe import exclusive_is_free

    lock = eval_target / ".build.lock"
    mod, free = importlib.import_module(module), []
    real = getattr(mod, func)

    def measuring(*a, **k):  # could a build take the target now?
        free.append(exclusive_is_free(lock))
        return real(*a, **k)

    monkeypatch.setattr(mod, func, measuring)
    opts = (("--corrupt", "impulse_noise:5", "--no-progress") if cmd == "corruptions" else
            ("--batches", "1", "--batch-size", "8", "--steps", "1", "--iters", "2"))
    code, _, err = cli(capsys, monkeypatch, "evaluate", cmd, f"LP={lp_run}", *opts, "--format",
                       "wds", "--workers", "0", "--device", "cpu", "-o", tmp_path)
    assert code == 0, err
    assert free == [False]
    assert exclusive_is_free(lock)  # let go at the end
