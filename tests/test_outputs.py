"""Whose output folder this is (ffcv_dp4tl/outputs.py): every command takes a new folder or its
own (a rerun) and refuses another command's, before any work and without touching a file.

Audits found folders half replaced (a finetuning over a training run's metrics.jsonl, a cost
table over a surrogates report's results.json) and folders of two kinds (`train --out` a
scores folder, `score --out` a training run, `bench cost-table -o` a finetune run)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_runner import cli, one_line

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.outputs import BENCH_KINDS, KINDS, claim_out_dir, folder_kind


def _fill(folder: Path, kind: str) -> Path:
    """A folder as ``kind`` leaves it (the file that tells its kind)."""
    folder.mkdir(parents=True)
    if kind in BENCH_KINDS and not KINDS[kind].signatures or kind in ("cost-table", "surrogates"):
        (folder / "results.json").write_text(json.dumps({"bench": kind}))
    elif kind == "vtab-splits":
        (folder / "train8val2.npy").write_bytes(b"mask")
    elif kind == "dataset":
        (folder / "manifest.json").write_text(json.dumps({"format": "ffcv-dp4tl/1"}))
    else:
        (folder / KINDS[kind].signatures[0]).write_text("theirs")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_takes_its_own_folder_and_refuses_every_other_kinds(tmp_path, kind):
    folder = _fill(tmp_path / kind, kind)
    before = _files(folder)
    assert folder_kind(folder) == kind
    claim_out_dir(folder, kind)  # a rerun
    claim_out_dir(tmp_path / "new", kind)  # a new folder
    (tmp_path / "empty").mkdir()
    claim_out_dir(tmp_path / "empty", kind)
    for other, spec in KINDS.items():
        if other == kind:
            continue
        if kind in spec.shares:  # corruptions and flatness: one evaluations folder
            claim_out_dir(folder, other)
            continue
        with pytest.raises(DP4TLError, match=rf"^--out {folder} holds {KINDS[kind].what} \(written "
                                             rf"by `{KINDS[kind].command}`\); `{spec.command}` "
                                             rf"would .*: pass another --out \(e.g. "):
            claim_out_dir(folder, other)
    assert _files(folder) == before


def test_kinds_share_a_folder_both_ways_and_no_two_kinds_claim_a_signature():
    for kind, spec in KINDS.items():
        for other in spec.shares:
            assert kind in KINDS[other].shares
    names = [n for spec in KINDS.values() for n in spec.signatures]
    assert len(names) == len(set(names))


def test_a_refusal_names_the_files_the_command_would_replace(tmp_path, monkeypatch):
    run = _fill(tmp_path / "run", "train")
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(DP4TLError, match=r"`dp4tl finetune` would replace its metrics.jsonl"):
        claim_out_dir(run, "finetune")
    with pytest.raises(DP4TLError, match=r"`dp4tl score` would mix its files with them: pass "
                                         rf"another --out \(e.g. {tmp_path / 'run-scores'}\)$"):
        claim_out_dir(run, "scores")
    monkeypatch.chdir(run)  # `--out .`: a folder beside it by name, never "-scores"
    with pytest.raises(DP4TLError, match=rf"\(e.g. {tmp_path.resolve() / 'run-scores'}\)$"):
        claim_out_dir(Path("."), "scores")


def test_the_kinds_name_the_files_their_commands_write():
    from ffcv_dp4tl.contracts import MANIFEST_NAME
    from ffcv_dp4tl.training.checkpoint import (CHECKPOINT_NAME, FINETUNE_RESULT_NAME,
                                                FINETUNE_STATE_NAME)
    from ffcv_dp4tl.training.trainer import METRICS_NAME

    assert KINDS["dataset"].signatures == (MANIFEST_NAME,)
    assert KINDS["train"].signatures == (CHECKPOINT_NAME,)
    assert METRICS_NAME in KINDS["train"].writes
    assert KINDS["finetune"].signatures == (FINETUNE_STATE_NAME, FINETUNE_RESULT_NAME)


def test_another_programs_manifest_json_is_no_dataset(tmp_path, monkeypatch):
    """Review: a project holding a web app's manifest.json refused every command's --out below
    it as "inside the built dataset", and its own folder as a dataset's."""
    from ffcv_dp4tl.outputs import dataset_around

    (tmp_path / "manifest.json").write_text(json.dumps({"name": "web app", "version": "1"}))
    assert folder_kind(tmp_path) is None and dataset_around(tmp_path / "runs" / "a") is None
    claim_out_dir(tmp_path / "runs" / "a", "train")
    (tmp_path / "manifest.json").write_text("not json")
    assert folder_kind(tmp_path) is None and dataset_around(tmp_path / "runs") is None


@pytest.mark.parametrize("kind, name", [(k, n) for k in KINDS for n in KINDS[k].guards])
def test_a_folder_of_no_kind_holding_a_file_a_command_writes_is_refused(tmp_path, kind, name):
    """`--out .` in a project (or docs/) replaced the user's README.md / report.md /
    results.json without a word (review), and `dp4tl train --out` a folder holding another
    tool's metrics.jsonl replaced it (audit); other files in the folder are no reason to
    refuse."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    claim_out_dir(mine, kind)  # nothing a bench writes: taken
    (mine / name).write_text("# My project\n")
    # (a bench's report.md, or a results.json that is no JSON object: whose is not told, so
    # the message says what is there: test_a_bench_folder_whose_results_json_is_lost_...)
    said = (f"holds {name}, not written by `{KINDS[kind].command}`, which would replace it"
            if name not in ("report.md", "results.json") else
            f"would replace {name}: pass another --out")
    with pytest.raises(DP4TLError, match=rf"--out {mine} .*{re.escape(said)}"):
        claim_out_dir(mine, kind)
    assert (mine / name).read_text() == "# My project\n"


@pytest.mark.parametrize("files,kind", [
    (("results.json", "surrogates.png"), "surrogates"), (("results.json", "cost.png"), "cost-table"),
    (("rows.jsonl", "summary.json"), "embedded"), (("results.json",), None),
])
def test_bench_folders_written_before_the_bench_field_are_told_apart_by_their_files(
        tmp_path, files, kind):
    for name in files:
        (tmp_path / name).write_text("{}")
    assert folder_kind(tmp_path) == kind


def test_a_finetune_run_is_told_by_its_state_not_as_a_training_run(tmp_path):
    """A finetune run's folder holds finetune_state.pt (and result.json); a training run's
    holds checkpoint.pt; a pipeline stage's DONE.json and inputs.json belong to no kind."""
    ft = tmp_path / "ft"
    ft.mkdir()
    for name in ("DONE.json", "inputs.json", "metrics.jsonl"):
        (ft / name).write_text("{}")
    assert folder_kind(ft) is None
    (ft / "finetune_state.pt").write_bytes(b"x")
    assert folder_kind(ft) == "finetune"


# ------------------------------------------------------------------ every command claims
@pytest.fixture
def training_run(tmp_path) -> Path:
    run = _fill(tmp_path / "run", "train")
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    return run


def _commands(source: Path, target: Path, scores: Path, tmp: Path) -> dict[str, list]:
    return {
        "score": ["score", "--method", "random", "--data", source],
        "prune": ["prune", "--scores", scores, "--data", source, "--ratio", "0.5"],
        "evaluate corruptions": ["evaluate", "corruptions", f"0%={tmp / 'ft'}"],
        "evaluate flatness": ["evaluate", "flatness", f"0%={tmp / 'ft'}"],
        "evaluate vtab-splits": ["evaluate", "vtab-splits", "--data", target, "--train-size", "8",
                                 "--val-size", "2"],
        "evaluate vtab": ["evaluate", "vtab", "lp_tiny_cpu", "--checkpoint", tmp / "c.pt",
                          "--data", target],
        "bench cost-table": ["bench", "cost-table", "--methods", "random", "--ratios", "0,0.5",
                             "--runs-root", tmp / "runs", "--data-root", tmp / "data",
                             "--report", ""],
    }


@pytest.mark.parametrize("command", list(_commands(Path(), Path(), Path(), Path())))
def test_no_command_writes_into_a_training_run(command, training_run, source_dir, target_dir,
                                               tmp_path, capsys, monkeypatch):
    from ffcv_dp4tl.data import load_manifest
    from ffcv_dp4tl.pipeline.scores_io import write_scores

    scores = tmp_path / "lm"
    write_scores(scores, method="lm", unit="class",
                 scores=np.arange(load_manifest(source_dir).num_classes, dtype=float),
                 meta={"source_fingerprint": load_manifest(source_dir).fingerprint})
    before = _files(training_run)
    args = _commands(source_dir, target_dir, scores, tmp_path)[command]
    code, _, err = cli(capsys, monkeypatch, *args, "--out", training_run)
    one_line(code, err, f"--out {training_run} holds a training run (written by `dp4tl train`)",
             "pass another --out")
    assert _files(training_run) == before
    assert sorted(p.name for p in training_run.iterdir()) == sorted(before)


def test_train_refuses_a_scores_folder_and_build_a_training_run(source_dir, tmp_path, capsys,
                                                                monkeypatch):
    from ffcv_dp4tl.pipeline.scores_io import write_scores

    scores = tmp_path / "scores"
    write_scores(scores, method="random", unit="class", scores=np.zeros(3),
                 meta={"source_fingerprint": "x"})
    before = _files(scores)
    code, _, err = cli(capsys, monkeypatch, "train", "resnet18_tiny_cpu", "--data", source_dir,
                       "--out", scores, "--format", "wds", "--device", "cpu")
    one_line(code, err, f"--out {scores} holds scores (written by `dp4tl score`); `dp4tl train` "
             "would mix its files with them")
    assert _files(scores) == before
    run = _fill(tmp_path / "d" / "source", "train")
    code, _, err = cli(capsys, monkeypatch, "build", "synth:tiny", "--out", tmp_path / "d")
    one_line(code, err, f"--out {run} holds a training run (written by `dp4tl train`); "
             "`dp4tl build` would mix its files with them")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


def test_no_command_writes_inside_a_built_dataset(source_dir, tmp_path, capsys, monkeypatch):
    """Audit: `train --out data/source/wds` (or `.build`) trained there, and a later `dp4tl build
    --overwrite` deleted its checkpoint and metrics without a word. Every folder inside a built
    dataset is refused, for every kind; the dataset's own folder is its kind, and a folder
    beside it is free."""
    from ffcv_dp4tl.outputs import dataset_around

    for inside in (source_dir / "wds", source_dir / ".build", source_dir / "new" / "deeper"):
        assert dataset_around(inside) == source_dir.resolve()
        for kind in KINDS:
            with pytest.raises(DP4TLError, match=rf"^--out {inside} lies inside the built dataset "
                                                 rf"{source_dir.resolve()}: keep outputs outside "
                                                 r"datasets .*: pass another --out$"):
                claim_out_dir(inside, kind)
    assert dataset_around(source_dir) is None and dataset_around(tmp_path / "runs") is None
    claim_out_dir(source_dir, "dataset")
    before = sorted(p.name for p in (source_dir / "wds").iterdir())
    code, _, err = cli(capsys, monkeypatch, "train", "resnet18_tiny_cpu", "--data", source_dir,
                       "--out", source_dir / "wds", "--format", "wds", "--device", "cpu")
    one_line(code, err, f"lies inside the built dataset {source_dir.resolve()}")
    assert sorted(p.name for p in (source_dir / "wds").iterdir()) == before
    # a mask file of `mask classes` into another built dataset than the one it reads, too
    other = _fill(tmp_path / "other", "dataset")
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", source_dir, "--classes",
                       "0", "--out", other / "keep.npy")
    one_line(code, err, f"lies inside the dataset {other.resolve()}")
    assert sorted(p.name for p in other.iterdir()) == ["manifest.json"]


def test_another_commands_folder_given_as_data_is_named_not_offered_a_build(tmp_path, capsys,
                                                                          monkeypatch):
    """Audit: `dp4tl verify runs/ref` (a training run) advised `dp4tl build SOURCE --out
    runs/ref`, as for a missing path."""
    from ffcv_dp4tl.data import load_manifest

    run = _fill(tmp_path / "run", "train")
    with pytest.raises(DP4TLError, match=rf"^{run} holds a training run \(written by `dp4tl "
                                         r"train`\), not a built dataset: pass the folder `dp4tl "
                                         r"build --out` wrote$"):
        load_manifest(run)
    code, out, err = cli(capsys, monkeypatch, "verify", run)  # (no dataset: a usage error)
    assert code == 2 and f"error: {run} holds a training run (written by `dp4tl train`)" in err
    assert "dp4tl build SOURCE" not in err
    with pytest.raises(DP4TLError, match=rf"^{tmp_path / 'nosuch'} is not a built dataset \(it "
                                         r"does not exist\); pass the folder"):
        load_manifest(tmp_path / "nosuch")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


def test_a_training_run_killed_in_its_first_epoch_is_still_its_folder(tmp_path):
    """The lock a training run leaves tells its metrics.jsonl from another tool's: killed
    before its first checkpoint, the folder holds both and is resumed. The lock alone (a run
    refused before it began, in a user's folder) makes no training run of the folder: every
    other command still takes it (review)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".train.lock").write_text("")
    assert folder_kind(run) is None
    for kind in ("finetune", "scores", "masks", "cost-table"):
        claim_out_dir(run, kind)
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    claim_out_dir(run, "train")


@pytest.mark.parametrize("kind", BENCH_KINDS)
def test_a_bench_out_that_is_a_data_root_is_refused(tmp_path, kind):
    """Audit: `--out data/synth-tiny` wrote a bench's results, report and plots in among the
    built datasets. A folder of no kind holding built datasets one or two folders down is
    refused in one line. A runs root is taken: a bench's --out X --runs-root X holds stage
    folders, and so does its first run killed before its results (review); other kinds' rules
    are unchanged."""
    from ffcv_dp4tl.pipeline.stages import stage

    for data, built in ((tmp_path / "data", "data/src/source"), (tmp_path / "data" / "src", "data/src/source"),
                        (tmp_path / "flat", "flat/cifar")):
        if not (tmp_path / built).exists():
            _fill(tmp_path / built, "dataset")
        with pytest.raises(DP4TLError, match=rf"^--out {data} holds the built dataset "
                                             rf"{tmp_path / built}: it is a --data-root or a build"):
            claim_out_dir(data, kind)
    runs = tmp_path / "runs"
    stage(runs, "surrogate", {"recipe": "r"}).dir.mkdir(parents=True)
    claim_out_dir(runs, kind)  # (a killed first run of --out runs --runs-root runs: resumed)
    both = _fill(tmp_path / "both", kind)
    stage(both, "pretrain", {"recipe": "r"}).dir.mkdir()
    claim_out_dir(both, kind)  # (--out X --runs-root X: a rerun)


@pytest.mark.parametrize("kind", ["adversarial", "surrogates", "cost-table"])
@pytest.mark.parametrize("results", ["deleted", "truncated"])
def test_a_bench_folder_whose_results_json_is_lost_is_refused_without_blaming_another_command(
        tmp_path, kind, results):
    """A rerun of `bench adversarial` into its own --out, its results.json deleted or truncated,
    was told the folder held files "not written by `dp4tl bench adversarial`" (audit): nothing
    tells whose they are, so the one line says what is there and what to do either way
    (restore results.json, or delete the files, or another --out). Still refused, nothing
    touched: the same files may be a user's own."""
    folder = tmp_path / "e1"
    folder.mkdir()
    full = json.dumps({"bench": "adversarial", "adv": {}, "rows": []})
    (folder / "report.md").write_text("# Adversarial\n")
    if results == "truncated":
        (folder / "results.json").write_text(full[:20])
    before = _files(folder)
    assert folder_kind(folder) is None
    with pytest.raises(DP4TLError) as e:
        claim_out_dir(folder, kind)
    line = str(e.value)
    files = "report.md" if results == "deleted" else "results.json, report.md"
    state = ("report.md and no results.json" if results == "deleted" else
             "a results.json that is no JSON object (torn?)")
    assert line == (f"--out {folder} holds {state}: if a bench wrote it, restore its results.json, "
                    f"or delete {files} to rerun into this folder; if not, `{KINDS[kind].command}` "
                    f"would replace {files}: pass another --out (an empty or new folder)")
    assert "not written by" not in line and _files(folder) == before
    (folder / "results.json").write_text(full)  # restored: the adversarial bench's again
    claim_out_dir(folder, "adversarial")
