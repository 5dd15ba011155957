"""Hostile values for the CLI's options (audit): an empty path, a line break in a path, '' for
an option whose default is '', a file that is no mask, a repeated class, an --opt without a
name, a `just pretrain` key without a name, and `verify` given no dataset. Each is one line
and exit status 2 before any work, leaving nothing behind."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cli_runner import cli, just_executable, one_line

REPO = Path(__file__).resolve().parents[2]

#: where the commands' work starts: a refusal "before any work" never reaches them (on the code
#: before these fixes, `pipeline --arch ''` and `bench ... --data-root ''` ran whole jobs)
WORK = [("ffcv_dp4tl.pipeline.run", "run_pipeline"), ("ffcv_dp4tl.bench.cost_table", "run_cost_table"),
        ("ffcv_dp4tl.bench.separation", "run_separation"),
        ("ffcv_dp4tl.bench.surrogates", "run_surrogate_bench"),
        ("ffcv_dp4tl.bench.adversarial", "run_adversarial"), ("beton_builders.writer", "build_dataset")]


@pytest.fixture
def no_work(monkeypatch):
    import importlib

    for module, name in WORK:
        def started(*a, _name=name, **k):
            raise AssertionError(f"{_name} started: the value was not refused before any work")
        monkeypatch.setattr(importlib.import_module(module), name, started)


def _path_params():
    """(command words, parameter) for every Path (or List[Path]) parameter of every command."""
    import typer

    from ffcv_dp4tl.cli import app
    from ffcv_dp4tl.cli.options import _is_path_annotation

    found = []

    def walk(command, words):
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, [*words, name])
        for p in command.params:
            if _is_path_annotation(p.type_descriptor.annotation):
                found.append((words, p, command))

    walk(typer.main.get_command(app), [])
    return found


def _argv_with_empty(words, param, command, empty):
    from ffcv_dp4tl.cli.options import option_name

    if param.param_type_name == "option":
        return [*words, option_name(param), empty]
    # an argument: every argument before it given ('' for a str, a name for a path)
    args = [p for p in command.params if p.param_type_name == "argument"]
    before = ["x" for p in args[:args.index(param)]]
    return [*words, *before, empty], option_name(param)


def test_every_path_option_of_every_command_refuses_an_empty_path(capsys, monkeypatch, tmp_path,
                                                                  no_work):
    """`prune --out ''` wrote train.npy, val.npy and .prune.lock into the working folder (Path('')
    is '.'), `build synth:tiny --out ''` built into ./source, `info --data ''` said ". is not a
    built dataset": an empty path is refused by name, for every Path option and argument of
    every command (the rule is the app's, so a command added later has it too)."""
    monkeypatch.chdir(tmp_path)
    params = _path_params()
    assert len(params) >= 50  # (every command's: prune, score, bench, evaluate, mask, ...)
    for words, param, command in params:
        for empty in ("", "  "):
            argv = _argv_with_empty(words, param, command, empty)
            if isinstance(argv, tuple):
                argv, name = argv
            else:
                name = argv[-2]
            code, _, err = cli(capsys, monkeypatch, *argv)
            one_line(code, err, f"{name} is empty: give a path")
    assert list(tmp_path.iterdir()) == []


def test_prune_and_score_with_an_empty_out_write_nothing_into_the_working_folder(
        capsys, monkeypatch, tmp_path, index_dataset):
    scores = tmp_path / "s"
    code, _, err = cli(capsys, monkeypatch, "score", "--method", "random", "--data",
                       index_dataset.root, "--out", scores)
    assert code == 0, err
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    one_line(*cli(capsys, monkeypatch, "prune", "--scores", scores, "--data", index_dataset.root,
                  "--out", "", "--ratio", "0.3")[::2], "--out is empty: give a path")
    one_line(*cli(capsys, monkeypatch, "score", "--method", "random", "--data",
                  index_dataset.root, "--out", "")[::2], "--out is empty: give a path")
    one_line(*cli(capsys, monkeypatch, "score", "--method", "random", "--data",
                  index_dataset.root, "--target", " ", "--out", tmp_path / "s2")[::2],
             "--target is empty: give a path")
    assert list(here.iterdir()) == [] and not (tmp_path / "s2").exists()


@pytest.mark.parametrize("out", ["o/nl\nx.npy", "o/tab\tx.npy", "o/cr\rx.npy"])
def test_a_control_character_in_an_out_path_is_refused(capsys, monkeypatch, tmp_path,
                                                       index_dataset, out):
    """`mask classes --out $'o/nl\\nx.npy'` wrote a file with a line break in its name and split
    its own output line in two."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o").mkdir()
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_dataset.root,
                       "--classes", "0", "--out", out)
    one_line(code, err, "--out", "holds a control character")
    assert list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize("args,name", [
    (["pipeline", "--target", ""], "--target"),
    (["pipeline", "--target", "warm", "--target", " "], "--target"),
    (["pipeline", "--surrogate-recipe", ""], "--surrogate-recipe"),
    (["pipeline", "--recipe", ""], "--recipe"),
    (["pipeline", "--lp-recipe", ""], "--lp-recipe"),
    (["pipeline", "--arch", ""], "--arch"),
    (["pipeline", "--data", ""], "--data"),
    (["finetune", "lp", "--arch", ""], "--arch"),
    (["bench", "cost-table", "--arch", ""], "--arch"),
    (["mask", "check", "m.npy", "--split", ""], "--split"),
    (["mask", "files", "m.npy", "--split", ""], "--split"),
])
def test_an_empty_value_is_not_taken_for_the_default(capsys, monkeypatch, tmp_path, no_work, args,
                                                     name):
    """`pipeline --arch ''`, `--recipe ''`, `--target ''` ran with the defaults and `mask check
    --split ''` with the mask's split, exit 0; now refused as `--method ''` is."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, monkeypatch, *args)
    one_line(code, err, f"{name} is empty: give a value, or leave {name} out for its default")
    assert list(tmp_path.iterdir()) == []


def test_an_options_default_empty_value_still_means_the_default(capsys, monkeypatch, tmp_path,
                                                               index_dataset):
    """Left out, the same options keep their defaults (the callback is not the default's)."""
    code, _, err = cli(capsys, monkeypatch, "mask", "check", tmp_path / "m.npy", "--data",
                       index_dataset.root)
    one_line(code, err, "mask file not found")


def _afile(tmp_path) -> Path:
    f = tmp_path / "afile.txt"
    f.write_text("not a mask")
    return f


@pytest.mark.parametrize("command", ["check", "files", "overlap"])
def test_a_file_that_is_no_mask_is_named_as_such(capsys, monkeypatch, tmp_path, index_dataset,
                                                 command):
    """`mask check afile.txt` said "mask file not found: afile.txt.npy" though afile.txt exists."""
    f = _afile(tmp_path)
    args = [f, f] if command == "overlap" else [f, "--data", index_dataset.root]
    code, _, err = cli(capsys, monkeypatch, "mask", command, *args)
    one_line(code, err, f"{f} is a file but not a mask", ".npy")
    assert "not found" not in err


def test_train_mask_that_is_no_mask_is_named_as_such(capsys, monkeypatch, tmp_path, index_dataset):
    f = _afile(tmp_path)
    code, _, err = cli(capsys, monkeypatch, "train", "resnet18_tiny_cpu", "--data",
                       index_dataset.root, "--out", tmp_path / "run", "--mask", f,
                       "--device", "cpu", "--set", "data.val_split=train")
    one_line(code, err, f"{f} is a file but not a mask")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["m.txt", "m.json", "m.pt"])
def test_mask_classes_refuses_an_out_that_is_no_npy(capsys, monkeypatch, tmp_path, index_dataset,
                                                    name):
    """`mask classes --out o/m.txt` wrote m.txt.npy and m.txt.json, silently."""
    out = tmp_path / "o"
    out.mkdir()
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_dataset.root,
                       "--classes", "0", "--out", out / name)
    one_line(code, err, f"--out {out / name}: a mask is written as a .npy file")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["m.npy", "m", "lm_0.2", "flowers.top10"])  # (review: dotted names)
def test_mask_classes_still_writes_npy_or_suffixless_names(capsys, monkeypatch, tmp_path,
                                                          index_dataset, name):
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_dataset.root,
                       "--classes", "0", "--out", tmp_path / name)
    assert code == 0, err
    npy = name if name.endswith(".npy") else f"{name}.npy"
    assert (tmp_path / npy).is_file()


@pytest.mark.parametrize("classes,twice", [("0,0", 0), ("0-3,2", 2), ("1,3,1-1", 1)])
def test_mask_classes_refuses_a_repeated_class(capsys, monkeypatch, tmp_path, index_dataset,
                                               classes, twice):
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_dataset.root,
                       "--classes", classes, "--out", tmp_path / "m.npy")
    one_line(code, err, f"--classes {classes!r} lists class {twice} twice")
    assert not (tmp_path / "m.npy").exists()


@pytest.mark.parametrize("args,opt", [
    (["pipeline", "--opt", "=1"], "=1"),
    (["score", "--method", "random", "--data", "D", "--out", "o", "--opt", "="], "="),
    (["score", "--method", "lm", "--data", "D", "--out", "o", "--opt", " =3"], " =3"),
])
def test_an_opt_without_a_name_is_refused(capsys, monkeypatch, tmp_path, no_work, args, opt):
    """`pipeline --opt '=1'` said "lm has no option  (its options: none)": an empty name."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, monkeypatch, *args)
    one_line(code, err, f"--opt {opt!r}: no option name before '='")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arg", ["=0.5", " =0.5"])
def test_just_pretrain_refuses_a_key_without_a_name(arg):
    """`just pretrain =0.5` became `--` `0.5`: "Got unexpected extra argument(s)"."""
    r = subprocess.run([just_executable(), "--justfile", str(REPO / "Justfile"), "--set", "dp4tl", "echo",
                        "pretrain", "ratio=0.6", arg], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"error: just pretrain: {arg!r} has no name before '='; write key=value, e.g. ratio=0.6"]


def test_verify_of_no_dataset_is_a_usage_error(capsys, monkeypatch, tmp_path, index_dataset):
    """`verify /nonexist`, `verify FILE`, `verify FOLDER_OF_DATASETS` exited 1 ("problems found")
    while `info --data` exits 2 for the same paths: no dataset to verify is a usage error."""
    f = _afile(tmp_path)
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a", "b"):
        shutil.copytree(index_dataset.root, several / name)
    for path, needle in [(tmp_path / "nonexist", "is not a built dataset (it does not exist)"),
                         (f, "is a file, but a built dataset is a directory"),
                         (several, "holds several built datasets")]:
        code, out, err = cli(capsys, monkeypatch, "verify", path)
        one_line(code, err, f"{path} {needle}")
        assert out == ""
    one_line(*cli(capsys, monkeypatch, "verify", "")[::2], "DATA is empty: give a path")
    code, out, err = cli(capsys, monkeypatch, "verify", several / "a")  # a dataset: 0 (or 1)
    assert code == 0 and "OK" in out, err
