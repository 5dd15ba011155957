"""The ``dp4tl`` command as a user runs it: clear one-line errors (exit 2), never a traceback."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from PIL import Image


def dp4tl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, in this process (``cli_runner.run_cli``: exit code, stdout,
    stderr, and a traceback on stderr if an exception escapes)."""
    return run_cli(*args, cwd=cwd)


def _assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "in" / "train" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                root / "in" / "train" / c / f"{i}.png")
    (root / "in" / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = dp4tl("build", f"folder:{root / 'in'}", "--out", str(root / "ds"), "--workers", "1",
              "--shard-size", "4", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "10 samples, 1 rejected" in r.stdout and "rejects.txt" in r.stdout
    return root


def test_build_info_and_class_mask(built):
    r = dp4tl("info", "--data", str(built / "ds"))
    assert r.returncode == 0 and "2 classes" in r.stdout and "train: 10 samples" in r.stdout
    assert "train: 10 samples (1 rejected), 3 shards, fingerprint" in r.stdout  # (4 per shard)
    r = dp4tl("mask", "classes", "--data", str(built / "ds"), "--classes", "1", "--out", str(built / "m.npy"))
    assert r.returncode == 0 and "5 of 10 samples" in r.stdout, r.stderr
    r = dp4tl("mask", "check", str(built / "m.npy"), "--data", str(built / "ds"))
    assert r.returncode == 0 and "OK" in r.stdout
    r = dp4tl("build", f"folder:{built / 'in'}", "--out", str(built / "ds"), "--workers", "1",
              "--shard-size", "4", "--no-progress")
    assert r.returncode == 0 and "already built" in r.stdout


def test_info_classes_lists_the_ids_mask_classes_takes(built):
    """`dp4tl mask classes` takes class ids, and its refusal of an id sent the user to `dp4tl
    info`, which printed only a count (review): ``--classes`` lists id, name and samples per
    split (the rejected input counts in no class: cat keeps its 5 images)."""
    ds = built / "ds"
    r = dp4tl("info", "--data", str(ds), "--classes")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-3:] == ["id\tclass\ttrain", "0\tcat\t5", "1\tdog\t5"]
    assert "\tcat\t" not in dp4tl("info", "--data", str(ds)).stdout
    r = dp4tl("mask", "classes", "--data", str(ds), "--classes", "2", "--out", str(built / "x.npy"))
    _assert_user_error(r, f"`dp4tl info --data {ds} --classes` lists them")


def test_mask_files_lists_the_inputs_a_mask_keeps_or_removes(built, tmp_path):
    """``dp4tl mask files``: the kept (or removed) samples' input files, one per line in sample
    order, for tools that read file lists; the rejected input is no sample, so never listed."""
    ds, m = built / "ds", tmp_path / "dog.npy"
    assert dp4tl("mask", "classes", "--data", str(ds), "--classes", "1", "--out", str(m)).returncode == 0
    r = dp4tl("mask", "files", str(m), "--data", str(ds))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(built / "in" / "train" / "dog" / f"{i}.png") for i in range(5)]
    r = dp4tl("mask", "files", str(m), "--data", str(ds), "--pruned", "--out", str(tmp_path / "cat.txt"))
    assert r.returncode == 0 and "the 5 removed of 10 samples" in r.stderr, r.stderr
    assert (tmp_path / "cat.txt").read_text().splitlines() == \
        [str(built / "in" / "train" / "cat" / f"{i}.png") for i in range(5)]
    _assert_user_error(dp4tl("mask", "files", str(m), "--data", str(ds), "--out", str(tmp_path)),
                       "is a folder")
    np.save(tmp_path / "bad.npy", np.array([0, 99], dtype=np.int64))
    (tmp_path / "bad.json").write_text('{"fingerprint": "0000", "split": "train"}')
    _assert_user_error(dp4tl("mask", "files", str(tmp_path / "bad.npy"), "--data", str(ds)),
                       "another dataset")


@pytest.mark.parametrize("cmd, name", [("classes", "train.labels.npy"), ("classes", "manifest.npy"),
                                       ("files", "train.files.txt"), ("files", "sub/kept.txt")])
def test_mask_output_inside_the_dataset_it_reads_is_refused(built, tmp_path, cmd, name):
    """--out DATA/train.labels.npy replaced the build's labels, DATA/manifest.npy its manifest
    (the sidecar), DATA/train.files.txt its files list, each with exit 0 (review)."""
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(built / "ds", ds)
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    (ds / "sub").mkdir()
    if cmd == "classes":
        r = dp4tl("mask", "classes", "--data", str(ds), "--classes", "1", "--out", str(ds / name))
    else:
        assert dp4tl("mask", "classes", "--data", str(ds), "--classes", "1",
                     "--out", str(tmp_path / "m.npy")).returncode == 0
        r = dp4tl("mask", "files", str(tmp_path / "m.npy"), "--data", str(ds), "--out", str(ds / name))
    _assert_user_error(r, f"--out {ds / name} lies inside the dataset {ds}")
    assert {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before


def test_user_errors_are_one_line(built, tmp_path):
    _assert_user_error(dp4tl("build", f"folder:{tmp_path / 'missing'}", "--out", str(tmp_path / "o")),
                       "error:", "missing")
    _assert_user_error(dp4tl("build", "nosuchlayout:/x", "--out", str(tmp_path / "o")),
                       "unknown SOURCE kind")
    _assert_user_error(dp4tl("info", "--data", str(tmp_path)), "not a built dataset")
    np.save(tmp_path / "bad.npy", np.array([0, 99], dtype=np.int64))
    (tmp_path / "bad.json").write_text('{"fingerprint": "0000", "split": "train"}')
    _assert_user_error(dp4tl("mask", "check", str(tmp_path / "bad.npy"), "--data", str(built / "ds")),
                       "another dataset")
    _assert_user_error(dp4tl("prune", "--scores", str(tmp_path), "--data", str(built / "ds"),
                             "--ratio", "1.5", "--out", str(tmp_path / "m")), "ratio")
    _assert_user_error(dp4tl("train", "resnet18_tiny_cpu", "--data", str(built / "ds"), "--out",
                             str(tmp_path / "r"), "--set", "train.epochz=3"), "epochz")


def _all_commands():
    """Every ``dp4tl`` command and sub-command as its argument path, with its help texts."""
    import typer.main

    from ffcv_dp4tl.cli import app

    def walk(command, path):
        yield path, command
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


@pytest.mark.parametrize("path,command", _all_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_help_shows_bracketed_spellings_as_written(path, command, monkeypatch):
    """`--help` prints every ``[...]`` a help text holds: rich markup reads ``[reversed]`` as a
    style tag and drops it, so ``lm[reversed]`` (a variant's spelling) would read ``lm``."""
    import re

    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    wanted = {" ".join(t.replace("\\[", "[").split())
              for text in texts for t in re.findall(r"\\?\[[^\]]*\]", text)}
    monkeypatch.setenv("COLUMNS", "400")  # (rich folds a long word such as build's SOURCE spelling)
    r = dp4tl(*path, "--help")
    assert r.returncode == 0, r.stderr
    shown = " ".join(r.stdout.replace("│", " ").split())
    for token in wanted:
        assert token in shown, f"`{' '.join(['dp4tl', *path])} --help` lost {token!r}"


@pytest.mark.parametrize("path,command", _all_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_help_paragraphs_have_no_hard_line_breaks(path, command):
    """A help text's wrapped source lines are joined (``cli.app.reflow_help``): typer keeps a
    docstring's line breaks in the command lists and later paragraphs, so ``dp4tl --help``
    showed "run on --device" and "(auto | cpu …" on lines of their own at 80 columns. Lists and
    indented blocks keep theirs."""
    texts = [command.help or "", getattr(command, "short_help", None) or ""]
    for text in texts:
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if "\b" in para or any(ln.startswith((" ", "-", "*", "•", "|")) for ln in lines[1:]):
                continue
            assert len(lines) <= 1, f"`{' '.join(['dp4tl', *path])} --help`: {para!r}"
    assert path or "run on --device (auto | cpu" in command.help  # (the top level is reflowed)


@pytest.mark.parametrize("path,command", _all_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_help_shows_no_value_after_a_flag(path, command, monkeypatch):
    """A flag takes no value: typer printed its type where a value goes (``--classes <bool>``),
    and ``--classes true`` is refused (docs audit). Every command, and the groups' own help."""
    monkeypatch.setenv("COLUMNS", "400")
    r = dp4tl(*path, "--help")
    assert r.returncode == 0, r.stderr
    assert "<bool>" not in r.stdout, f"`{' '.join(['dp4tl', *path])} --help`"
    assert "--help " in r.stdout  # (the flags are still listed)


@pytest.mark.parametrize("classes", ["", " , "])
def test_mask_classes_refuses_empty_classes_naming_the_option(classes, tmp_path):
    """``--classes ""`` reached the dataset and was refused as "mask is empty: it keeps no
    sample of split 'train'", naming neither the option nor the fix; now before any work (the
    dataset is not even read: it does not exist here)."""
    r = dp4tl("mask", "classes", "--data", str(tmp_path / "no_data"), "--classes", classes,
              "--out", str(tmp_path / "m.npy"))
    _assert_user_error(r, "--classes is empty", "give the class ids to keep")
    assert r.stderr.count("\n") == 1 and not (tmp_path / "m.npy").exists()


def test_info_says_shard_in_the_singular_for_one(built, tmp_path):
    """"1 shards" in `dp4tl info` (a split smaller than one shard)."""
    r = dp4tl("build", f"folder:{built / 'in'}", "--out", str(tmp_path / "ds"), "--workers", "1",
              "--shard-size", "64", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = dp4tl("info", "--data", str(tmp_path / "ds"))
    assert r.returncode == 0 and "train: 10 samples (1 rejected), 1 shard, fingerprint" in r.stdout


def test_info_on_a_folder_of_datasets_lists_them_instead_of_saying_build_it(built, tmp_path):
    """`dp4tl info --data tiny/targets` (one built dataset per sub-folder) said "build it with
    `dp4tl build SOURCE --out tiny/targets`", which would not help."""
    import shutil

    for name in ("warm", "blur"):
        shutil.copytree(built / "ds", tmp_path / "targets" / name)
    (tmp_path / "targets" / "notes").mkdir()  # not a dataset: not listed
    r = dp4tl("info", "--data", str(tmp_path / "targets"))
    _assert_user_error(r)
    assert r.stderr == (f"error: {tmp_path / 'targets'} holds several built datasets, not one: pass "
                        f"{tmp_path / 'targets'}/NAME (NAME: blur, warm)\n")
    shutil.rmtree(tmp_path / "targets" / "blur")
    r = dp4tl("info", "--data", str(tmp_path / "targets"))
    assert r.stderr == (f"error: {tmp_path / 'targets'} is not a built dataset but holds one: pass "
                        f"{tmp_path / 'targets' / 'warm'}\n")
    r = dp4tl("info", "--data", str(tmp_path / "targets" / "notes"))  # nothing inside: build it
    _assert_user_error(r, "is not a built dataset (no manifest.json); build it with")


def test_info_escapes_control_characters_in_names(tmp_path):
    """A class folder (or a manifest's dataset name) holding an OSC sequence: `dp4tl info`
    printed it raw, and a terminal acted on it (window title, hyperlink) even through a pipe.
    Names are shown with their control characters as ``\\xNN``."""
    import json

    osc = "\x1b]0;pwned\x07"
    rng = np.random.default_rng(0)
    for c in ("cat", f"dog{osc}"):
        (tmp_path / "in" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "in" / c / f"{i}.png")
    ds = tmp_path / "ds"
    r = dp4tl("build", f"folder:{tmp_path / 'in'}", "--out", str(ds), "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((ds / "manifest.json").read_text())
    m["name"] = f"x{osc}"
    (ds / "manifest.json").write_text(json.dumps(m))
    r = dp4tl("info", "--data", str(ds), "--classes")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout, r.stdout
    assert "x\\x1b]0;pwned\\x07 — 2 classes" in r.stdout and "1\tdog\\x1b]0;pwned\\x07\t2" in r.stdout


def test_train_and_finetune_end_with_top1_in_percent_as_the_pipeline(tmp_path, capsys,
                                                                     monkeypatch):
    """`dp4tl train` and `dp4tl finetune` ended with a fraction ("val top-1 0.5795") where the
    pipeline's stage table and `[result]` line give % (docs audit): one unit, their results'
    JSON unchanged (fractions)."""
    import importlib

    from cli_runner import cli

    trainer = importlib.import_module("ffcv_dp4tl.training.trainer")
    finetune = importlib.import_module("ffcv_dp4tl.training.finetune")  # (the module)
    monkeypatch.setattr(trainer, "train", lambda *a, **k: {"epoch": 1, "top1_val": 0.5795})
    monkeypatch.setattr(finetune, "finetune", lambda *a, **k: {"mode": "lp", "test_top1": 0.98612})
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, monkeypatch, "train", "resnet18_tiny_cpu", "--data",
                            tmp_path, "--out", out)
    assert code in (0, None), err
    assert stdout.splitlines()[-1] == f"{out}: epoch 2/30, val top-1 57.95 %"
    code, stdout, err = cli(capsys, monkeypatch, "finetune", "lp_tiny_cpu", "--checkpoint",
                            tmp_path / "checkpoint.pt", "--data", tmp_path, "--out", out)
    assert code in (0, None), err
    assert stdout.splitlines()[-1] == f"{out}: lp test top-1 98.61 %"
