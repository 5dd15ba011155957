"""The environment and input errors of issue 21 item 5/7 as a user meets them in `dp4tl`: one
line (exit 2) before any work, never a traceback. In-process through the console entry point."""
from __future__ import annotations

import contextlib
import errno
import importlib
import json
import sys

import numpy as np
import pytest

from cli_runner import cli, one_line


@pytest.fixture
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a folder")
    return f


def test_outputs_that_are_files_are_one_line(capsys, monkeypatch, afile, index_dataset):
    data = index_dataset.root
    one_line(*cli(capsys, monkeypatch, "build", "synth:tiny", "--out", afile)[::2],
             f"--out {afile} is a file, not a folder")
    one_line(*cli(capsys, monkeypatch, "score", "--method", "random", "--data", data, "--out", afile)[::2],
             f"--out {afile} is a file")
    one_line(*cli(capsys, monkeypatch, "prune", "--scores", afile.parent, "--data", data, "--ratio",
                  "0.5", "--out", afile)[::2], f"--out {afile} is a file")
    one_line(*cli(capsys, monkeypatch, "mask", "classes", "--data", data, "--classes", "0", "--out",
                  afile / "x.npy")[::2], f"--out's folder {afile} is a file")


@pytest.mark.parametrize("args,needle", [
    (["--batch-size", "0"], "--batch-size"),
    (["--seed", "-1"], "--seed"),
    (["--workers", "-2"], "--workers"),
])
def test_impossible_score_numbers_are_refused_before_work(capsys, monkeypatch, tmp_path,
                                                          index_dataset, args, needle):
    code, _, err = cli(capsys, monkeypatch, "score", "--method", "random", "--data",
                       index_dataset.root, "--out", tmp_path / "s", *args)
    assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_read_only_and_not_a_folder_errors_anywhere_are_one_line(capsys, monkeypatch):
    app_mod = importlib.import_module("ffcv_dp4tl.cli.app")
    for e, want in [(OSError(errno.EROFS, "Read-only file system", "/ro/ds/.build.lock"),
                     "error: cannot write /ro/ds/.build.lock (Read-only file system); choose a "
                     "writable folder or fix its permissions"),
                    (OSError(errno.ENOTDIR, "Not a directory", "afile/source"),
                     "error: cannot use afile/source (Not a directory): a file is where a folder "
                     "should be (or the reverse); choose another path")]:
        def boom(*a, _e=e, **k):
            raise _e
        monkeypatch.setattr(app_mod, "app", boom)
        with pytest.raises(SystemExit) as exc:
            app_mod.run()
        assert exc.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [want]


def test_class_ids_beyond_the_dataset_are_an_error_not_clamped(capsys, monkeypatch, tmp_path,
                                                                index_dataset):
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_dataset.root,
                       "--classes", "0-999", "--out", tmp_path / "m.npy")
    one_line(code, err, "--classes: 5-999 outside the 5 classes of", "(ids 0-4)")
    assert not (tmp_path / "m.npy").exists()


@pytest.mark.parametrize("classes,needles", [
    # checked as ranges: never a list of 10^12 ids in memory first (a MemoryError before)
    ("0-999999999999", ["--classes: 5-999999999999 outside the 5 classes of", "(ids 0-4)"]),
    ("5-2", ["--classes: '5-2' is a reversed range", "e.g. 2-5"]),  # was "mask is empty"
    ("1,,2", ["--classes: '1,,2' has an empty item between commas"]),  # was read as '1,2'
    ("1, ,2,", ["--classes: '1, ,2,' has an empty item between commas"]),
])
def test_class_ranges_are_checked_as_ranges(capsys, monkeypatch, tmp_path, index_dataset,
                                            classes, needles):
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_dataset.root,
                       "--classes", classes, "--out", tmp_path / "m.npy")
    one_line(code, err, *needles)
    assert not (tmp_path / "m.npy").exists()


def test_a_leading_or_trailing_comma_in_classes_is_no_dropped_id():
    from ffcv_dp4tl.cli.masks import _parse_ranges

    assert _parse_ranges("0,3,") == [(0, 0), (3, 3)] and _parse_ranges(",0-2") == [(0, 2)]
    assert _parse_ranges(",") == []  # (refused by the command as an empty --classes)


def test_mask_classes_refuses_permuted_labels(capsys, monkeypatch, tmp_path, index_copy):
    labels = np.load(index_copy / "train.labels.npy")
    np.save(index_copy / "train.labels.npy", np.roll(labels, 1))
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_copy, "--classes", "0",
                       "--out", tmp_path / "m.npy")
    one_line(code, err, "train.labels.npy: labels differ from the ones the build wrote", "--deep")


def test_a_pickled_mask_is_named_without_numpy_jargon(capsys, monkeypatch, tmp_path, index_dataset):
    np.save(tmp_path / "m.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "m.json").write_text('{"fingerprint": "0", "split": "train"}')
    code, _, err = cli(capsys, monkeypatch, "mask", "check", tmp_path / "m.npy", "--data",
                       index_dataset.root)
    one_line(code, err, "m.npy is not a readable .npy mask (it holds Python objects (pickled data), "
             "not sample indices)")
    assert "allow_pickle" not in err


def test_just_pretrain_passes_options_written_as_options(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    just = Path(sys.executable).parent / "just"
    if not just.exists() and shutil.which("just") is None:
        pytest.skip("just is not installed")
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([str(just if just.exists() else "just"), "--justfile", str(repo / "Justfile"),
                        "--set", "dp4tl", "echo", "pretrain", "--ratio=0.5", "method=fm", "data_root=d"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "pipeline --ratio=0.5 --method fm --data-root d"


def test_just_recipes_pass_paths_with_spaces_as_one_argument(tmp_path):
    """`just build synth:tiny "my data"` split the path in two (unquoted {{out}}); so did the
    tools' own paths (a checkout under a folder with a space) and `just test -m "not slow"`."""
    import shutil
    import subprocess
    from pathlib import Path

    just = Path(sys.executable).parent / "just"
    if not just.exists() and shutil.which("just") is None:
        pytest.skip("just is not installed")
    repo = Path(__file__).resolve().parents[2]
    argv = tmp_path / "bin dir" / "argv"  # stands in for dp4tl / python: prints [each][argument]
    argv.parent.mkdir()
    argv.write_text('#!/bin/sh\nfor a; do printf "[%s]" "$a"; done\n')
    argv.chmod(0o755)

    def run(*args):
        r = subprocess.run([str(just if just.exists() else "just"), "--justfile", str(repo / "Justfile"),
                            "--set", "dp4tl", str(argv), "--set", "py", str(argv), *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert run("build", "synth:tiny", "my data") == "[build][synth:tiny][--out][my data]"
    assert (run("build", "folder:/in put", "my data", "--workers", "1", "x y")
            == "[build][folder:/in put][--out][my data][--workers][1][x y]")
    assert (run("test", "-m", "not slow")
            == "[-m][pytest][-q][-p][no:cacheprovider][-n][2][--dist][loadfile][-m][not slow]")
    assert run("bench-data", "a b") == "[benchmarks/bench_data.py][a b]"


def test_just_list_shows_each_recipes_whole_description():
    """`just --list` shows only the comment line right above a recipe: a two-line comment listed
    `pretrain` (the README's main job) as "(key=value pairs become ...)". A recipe is described
    by one comment line or by a [doc("...")] attribute, with any further note above it."""
    import re
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[2] / "Justfile").read_text().splitlines()
    recipes = 0
    for i, line in enumerate(lines):
        if not re.match(r"[A-Za-z][\w-]*( [^:=]*)?:(?!=)", line):
            continue  # not a recipe header (indented body, assignment, setting, comment)
        recipes += 1
        j, has_doc = i - 1, False
        while j >= 0 and lines[j].startswith("["):
            has_doc |= lines[j].startswith("[doc(")
            j -= 1
        comments = 0
        while j >= 0 and lines[j].startswith("#") and not lines[j].startswith("#!"):
            comments, j = comments + 1, j - 1
        assert has_doc or comments == 1, (f"Justfile:{i + 1} `{line.split(':')[0]}`: "
                                          f"{comments} comment lines and no [doc(...)]")
    assert recipes >= 10


def test_ctrl_c_inside_a_command_says_how_to_resume(capsys, monkeypatch, index_dataset):
    """typer turns a KeyboardInterrupt inside a command into exit code 130 itself, so the
    CLI's own handler never sees it: the user must still get the one line that says a rerun
    resumes, and no traceback."""
    import ffcv_dp4tl.data.manifest as manifest_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(manifest_mod, "load_manifest", interrupted)
    code, _, err = cli(capsys, monkeypatch, "info", "--data", index_dataset.root)
    assert code == 130
    assert err.strip().splitlines() == ["interrupted: rerun the same command to resume where it stopped"]


def test_ctrl_c_while_the_cli_is_still_importing_is_one_line(capsys, monkeypatch):
    """The console script imports torch, ffcv and numba (seconds) inside its entry function, so
    a Ctrl-C during those imports is one line, not an import-machinery traceback."""
    import types

    from ffcv_dp4tl.__main__ import main as entry

    class Importing(types.ModuleType):
        def __getattr__(self, name):
            raise KeyboardInterrupt
    monkeypatch.setitem(sys.modules, "ffcv_dp4tl.cli", Importing("ffcv_dp4tl.cli"))
    with pytest.raises(SystemExit) as e:
        entry()
    assert e.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted before the command started: nothing was written"]


def test_sigterm_while_the_cli_is_still_importing_is_one_line(tmp_path):
    """Cluster audit: a SIGTERM in the first seconds of a rank (the CLI's imports; torchrun
    ending the other ranks as one fails at start) ended it by the signal with no line. A fresh
    process whose CLI import meets a SIGTERM: the one line and 143. After the import SIGTERM is
    back at its default, so the command's own handling (stopping.sigterm_raises) takes over."""
    run = _entry_point_process(
        tmp_path, ["models"],
        "import os, signal, sys, time, importlib.abc\n"
        "class Slow(importlib.abc.MetaPathFinder):\n"  # the CLI's import, interrupted
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ffcv_dp4tl.cli':\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "            time.sleep(5)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Slow())\n")
    assert run.returncode == 143, run.stderr
    assert run.stderr.strip().splitlines() == [
        "stopped by SIGTERM before the command started: nothing was written"], run.stderr
    # and a command run after the import handles SIGTERM itself (its default was restored):
    # stopping.sigterm_raises finds SIGTERM at its default on entry, at the import and at the
    # command (it installs nothing over another handler)
    run = _entry_point_process(
        tmp_path, ["models"],
        "import atexit, signal, sys\n"
        "import ffcv_dp4tl.stopping as stopping\n"
        "entries, raises = [], stopping.sigterm_raises\n"
        "def checked(*a, **k):\n"
        "    entries.append(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n"
        "    return raises(*a, **k)\n"
        "stopping.sigterm_raises = checked\n"
        "atexit.register(lambda: print('entries', entries, file=sys.stderr))\n")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "entries [True, True]" in run.stderr, run.stderr


def _entry_point_process(tmp_path, argv, setup: str):
    """``dp4tl ARGV`` through the console entry point in a fresh process, after the Python
    ``setup`` (the signal handlers under test belong to the process's real exit). It starts with
    Ctrl-C's handler, as from a terminal: a suite run as a background job (``pytest &``) passes
    SIGINT on ignored, and such a process's stop is resent as SIGTERM by design
    (``stopping.resend_signal``), exit 143, not the 130 a Ctrl-C test expects."""
    import subprocess

    script = tmp_path / "entry.py"
    terminal = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    script.write_text(f"{terminal}{setup}import sys\nsys.argv = ['dp4tl', *{list(argv)!r}]\n"
                      "from ffcv_dp4tl.__main__ import main\nmain()\n")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)


def test_a_ctrl_c_python_could_only_ignore_still_stops_the_command(tmp_path, index_dataset):
    """Ctrl-C landing where Python cannot raise it (an at-fork hook while a data loader forks
    its workers; a ``__del__`` run by the collector) printed "Exception ignored in ..." and a
    traceback, and the command ran on (a training run carried on to its next epoch). A fresh
    process whose command meets such an interrupt, then works on: exit 130, the one line."""
    run = _entry_point_process(
        tmp_path, ["info", "--data", str(index_dataset.root)],
        "import sys, time\n"
        "import ffcv_dp4tl.data.manifest as manifest\n"
        "class Dropped:\n"
        "    def __del__(self):\n"
        "        raise KeyboardInterrupt  # where no exception can propagate\n"
        "def load_manifest(*a, **k):\n"
        "    Dropped()\n"
        "    for _ in range(50):  # the command's work goes on\n"
        "        time.sleep(0.1)\n"
        "    print('ran on', file=sys.stderr)\n"
        "    raise SystemExit(0)\n"
        "manifest.load_manifest = load_manifest\n")
    assert run.returncode == 130, run.stderr
    assert run.stderr.strip().splitlines() == [
        "interrupted: rerun the same command to resume where it stopped"], run.stderr


def test_a_sigterm_in_a_failing_commands_cleanup_keeps_its_error(tmp_path):
    """A command failed, and a SIGTERM (torchrun ending a rank whose peer failed) landed in its
    cleanup (a ``finally`` its error ran through: loader threads joined, a temporary file
    removed): the stop's line and 143 replaced the error, which a rerun then met again. A fresh
    process through the console entry point, its real handler (raise_signal runs it before
    returning): the error's line, then one naming the SIGTERM; the error's status."""
    run = _entry_point_process(
        tmp_path, ["info", "--data", str(tmp_path / "data")],
        "import signal\n"
        "import ffcv_dp4tl.data.manifest as manifest\n"
        "from ffcv_dp4tl.errors import DP4TLError\n"
        "def load_manifest(*a, **k):\n"
        "    try:\n"
        "        raise DP4TLError('no dataset here')\n"
        "    finally:  # the command's cleanup\n"
        "        signal.raise_signal(signal.SIGTERM)\n"
        "        print('cleanup ran on', file=sys.stderr)\n"
        "manifest.load_manifest = load_manifest\n")
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "error: no dataset here",
        "SIGTERM arrived while exiting, after the command had failed: nothing was cut short; the "
        "exit status stays the command's own (2)"], run.stderr


@pytest.mark.parametrize("argv,sig,status,line", [
    (["models"], "SIGINT", 130,
     "interrupted while exiting, after the command had ended: nothing was cut short"),
    (["models"], "SIGTERM", 143,
     "stopped by SIGTERM while exiting, after the command had ended: nothing was cut short"),
    (["info", "--data", "/nowhere"], "SIGINT", 2,
     "Ctrl-C (SIGINT) arrived while exiting, after the command had failed: nothing was cut "
     "short; the exit status stays the command's own (2)"),
    (["info", "--data", "/nowhere"], "SIGTERM", 2,
     "SIGTERM arrived while exiting, after the command had failed: nothing was cut short; the "
     "exit status stays the command's own (2)")])
def test_a_signal_while_a_finished_command_exits_is_one_line(tmp_path, argv, sig, status, line):
    """Ctrl-C during interpreter shutdown (torch's atexit hooks run after the command's last
    line) printed "Exception ignored in atexit callback" and a traceback, or killed the
    process without a word; a SIGTERM there (torchrun ending a rank whose peer failed) ended it
    by the signal. Now one line naming the signal, and a failed command keeps its status (a
    torchrun rank's error is not turned into 130 or -15). A fresh process: the handler belongs
    to the console entry point's real exit."""
    run = _entry_point_process(
        tmp_path, argv,
        "import atexit, os, signal, time\n"
        # registered first, so it runs last: after the CLI's own exit hooks
        f"atexit.register(lambda: (os.kill(os.getpid(), signal.{sig}), time.sleep(5)))\n")
    assert run.returncode == status, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[-1] == line, run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr


def test_a_reader_that_had_enough_ends_the_command_as_sigpipe_would(tmp_path):
    """`dp4tl recipes | head -1`: the reader closed the pipe, and the command exited 1 (typer
    catches the EPIPE itself and exits 1, so the CLI's own 141 never came), which looked like
    the command's own failure (141 is what a script tells apart: `yes | head -1` gives it too).
    Through the real console entry point,
    its stdout a pipe whose reading end is closed before it writes: 141 (128 + SIGPIPE, as a
    shell reports a piped tool) and not a word on stderr."""
    import subprocess

    p = subprocess.Popen([sys.executable, "-m", "ffcv_dp4tl", "recipes"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=tmp_path)
    p.stdout.close()  # (no reader: its first write meets EPIPE)
    _, err = p.communicate(timeout=300)
    assert (p.returncode, err.decode()) == (141, "")


def test_a_broken_pipe_that_is_not_the_output_keeps_its_traceback(tmp_path):
    """Typer turns every EPIPE a command raises into a silent exit 1, one from a pipe the user
    never saw (a data-loader worker's, a socket) too. Only the output's reader having had
    enough is the quiet 141; with stdout and stderr read to the end, this one is an error
    the user is told about: its traceback, not a silent 1."""
    run = _entry_point_process(
        tmp_path, ["recipes"],
        "import ffcv_dp4tl.training.recipe_files as recipe_files\n"
        "def list_recipes(*a, **k):\n"
        "    raise BrokenPipeError(32, 'Broken pipe')  # (a worker's pipe)\n"
        "recipe_files.list_recipes = list_recipes\n")
    assert run.returncode == 1, run.stderr
    assert "Traceback" in run.stderr and "BrokenPipeError: [Errno 32] Broken pipe" in run.stderr


@pytest.mark.parametrize("damage,needle", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "unreadable (EOF"),
    (lambda p: p.write_text("garbage\n"), "unreadable (not a .npy array file)"),
    (lambda p: p.unlink(), "train.labels.npy: missing"),
])
def test_a_damaged_labels_file_is_one_line_in_every_reader(capsys, monkeypatch, tmp_path, index_copy,
                                                           damage, needle):
    """Every command that reads labels (mask classes, prune, train --mask, score) goes through
    SplitInfo.load_labels: a truncated, foreign or missing file is one line that names it and
    says to rebuild (never numpy's advice to load it with allow_pickle)."""
    damage(index_copy / "train.labels.npy")
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_copy, "--classes", "0",
                       "--out", tmp_path / "m.npy")
    one_line(code, err, "train.labels.npy", needle, "rebuild the dataset")
    assert "allow_pickle" not in err


def test_score_never_replaces_another_method_s_scores(capsys, monkeypatch, tmp_path, index_dataset):
    """Finished scores of another method in --out are kept (one line says to pick another
    folder); a rewrite of a scores folder leaves no array of the earlier method behind."""
    from ffcv_dp4tl.pipeline.scores_io import load_scores, write_scores

    out = tmp_path / "s"
    write_scores(out, method="fm", unit="cluster", scores=np.ones(3), tiebreak=np.ones(3),
                 train_units=np.zeros(70, dtype=np.int64), meta={"source_fingerprint": "x"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = cli(capsys, monkeypatch, "score", "--method", "random", "--data",
                       index_dataset.root, "--out", out)
    one_line(code, err, f"--out {out} holds fm scores", "pass another --out for random")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a method this install does not register (docs/scorers.md's small-first in another
    # checkout) is someone's work too, not damage to score over (review)
    meta = json.loads((out / "scores.json").read_text())
    (out / "scores.json").write_text(json.dumps({**meta, "method": "small-first"}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = cli(capsys, monkeypatch, "score", "--method", "random", "--data",
                       index_dataset.root, "--out", out)
    one_line(code, err, f"--out {out} holds small-first scores", "pass another --out for random")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    write_scores(out, method="random", unit="sample", scores=np.arange(70.0), meta={})
    sc = load_scores(out)
    assert sc.method == "random" and sc.tiebreak is None and sc.train_units is None
    assert not (out / "train_units.npy").exists() and not (out / "tiebreak.npy").exists()


def test_mask_classes_to_an_existing_folder_asks_for_a_file_name(capsys, monkeypatch, tmp_path,
                                                                index_dataset):
    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_dataset.root,
                       "--classes", "0", "--out", tmp_path)
    one_line(code, err, f"--out {tmp_path} is a folder", "keep.npy")
    assert not (tmp_path.parent / f"{tmp_path.name}.npy").exists()


@pytest.mark.parametrize("k,needle", [("0", "k must be a positive number of clusters, got 0"),
                                      ("99999", "k=99999 clusters requested but the source train "
                                       "split has only")])
def test_score_refuses_an_impossible_k_before_extracting_features(capsys, monkeypatch, tmp_path,
                                                                  source_dir, target_dir,
                                                                  trained_run, k, needle):
    out = tmp_path / "s"
    code, _, err = cli(capsys, monkeypatch, "score", "--method", "fm", "--k", k, "--data", source_dir,
                       "--target", target_dir, "--checkpoint", trained_run / "checkpoint.pt",
                       "--out", out, "--device", "cpu")
    one_line(code, err, needle)
    assert not out.exists()  # no feature file was extracted first


def test_a_refused_training_run_leaves_no_folder(capsys, monkeypatch, tmp_path):
    """Bad data refused before the first epoch: the run folder this command made (with its lock)
    is removed again, so a typo leaves nothing to clean up."""
    out = tmp_path / "run"
    code, _, err = cli(capsys, monkeypatch, "train", "resnet18_tiny_cpu", "--data",
                       tmp_path / "nosuch", "--out", out, "--device", "cpu")
    one_line(code, err, "is not a built dataset")
    assert not out.exists()
    code, _, err = cli(capsys, monkeypatch, "train", "resnet18_tiny_cpu", "--data",
                       tmp_path / "nosuch", "--out", out, "--stop-after", "0")
    assert code == 2 and "--stop-after" in err


@pytest.mark.parametrize("command", [["finetune", "lp", "--out", "x"], ["pipeline", "--out", "x"],
                                     ["evaluate", "vtab-splits", "--out", "x"], ["score"]])
def test_commands_that_run_in_one_process_refuse_torchrun(capsys, monkeypatch, tmp_path, command):
    """Under torchrun every rank would run the whole command into the same folder: rank 0 says
    one line naming the command, the others exit with the same status without a word, each
    handing that line to torchrun's report (its error file: the report said of them only "To
    enable traceback see: ..."; a torchrun audit)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    one_line(*cli(capsys, monkeypatch, *command)[::2], f"dp4tl {command[0]} runs in one process",
             "without torchrun", "`dp4tl train`")
    monkeypatch.setenv("RANK", "1")
    reports = tmp_path.parent / f"{tmp_path.name}-torchrun"
    reports.mkdir()
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(reports / "error.json"))
    assert cli(capsys, monkeypatch, *command)[::2] == (2, "")
    assert f"dp4tl {command[0]} runs in one process" in (reports / "error.json").read_text()
    assert list(tmp_path.iterdir()) == []
    code, out, err = cli(capsys, monkeypatch, *command[:1], "--help")  # help: rank 0's only
    assert (code, out, err) == (0, "", "")
    monkeypatch.setenv("RANK", "0")
    code, out, err = cli(capsys, monkeypatch, *command[:1], "--help")
    assert code == 0 and "Usage:" in out and not err
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: a plain process
    assert "one process" not in cli(capsys, monkeypatch, command[0], "--help")[2]


def test_a_usage_error_under_torchrun_is_printed_once(capsys, monkeypatch, tmp_path):
    """Every rank parses the same argv, so a usage error is every rank's: rank 0 prints it, the
    others only hand it to torchrun's report (8 copies of the line on an 8-GPU node before; a
    torchrun audit). `--version` likewise prints once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    bad = ("train", "resnet18_tiny_cpu", "--data", "D", "--out", "O", "--format", "zz")
    for rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        code, out, err = cli(capsys, monkeypatch, *bad)
        assert code == 2 and ("--format" in err) is printed and (err == "") is not printed
        assert "--format" in error_file.read_text()
        error_file.unlink()
        code, out, err = cli(capsys, monkeypatch, "--version")
        assert code == 0 and bool(out.strip()) is printed
    # no torchrun report to hand it to (a shell that inherited RANK): every process prints
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
        else:
            monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", unset)
        code, out, err = cli(capsys, monkeypatch, *bad)
        assert code == 2 and "--format" in err
        assert cli(capsys, monkeypatch, "--version")[1].strip()


@pytest.mark.parametrize("env,needle", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number >= 1"),
    ({"WORLD_SIZE": ""}, "WORLD_SIZE='' is not a whole number"),
    ({"WORLD_SIZE": "²"}, "WORLD_SIZE='²' is not a whole number"),  # (str.isdigit says yes)
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK is not set: launch with torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' is not a whole number >= 0"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
])
def test_a_torchrun_environment_torchrun_never_sets_is_one_line(capsys, monkeypatch, env, needle):
    """A stray WORLD_SIZE in a shell (or one without RANK, which would make every process rank
    0 and hang the process group) is one line naming the variable, for any command."""
    monkeypatch.delenv("RANK", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    one_line(*cli(capsys, monkeypatch, "recipes")[::2], needle)


@pytest.mark.parametrize("world", ["2", "1"])
def test_a_rank_whose_peer_stopped_first_prints_one_line(capsys, monkeypatch, world):
    """Under torchrun, a rank left behind when another stopped (its own one-line error) got
    gloo's 'Connection closed by peer' traceback; one process keeps the traceback (a bug)."""
    app_mod = importlib.import_module("ffcv_dp4tl.cli.app")

    def peer_gone(**kw):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection "
                           "closed by peer [127.0.0.1]:31619")
    monkeypatch.setattr(app_mod, "app", peer_gone)
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "1")
    if world == "1":
        with pytest.raises(RuntimeError, match="Connection closed by peer"):
            app_mod.run()
        return
    with pytest.raises(SystemExit) as e:
        app_mod.run()
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: rank 1: another rank stopped first ([../third_party/gloo/gloo/transport/tcp/"
        "pair.cc:561] Connection closed by peer [127.0.0.1]:31619): its error, if it printed "
        "one, is above; a rank the system killed (out of memory, node lost) prints none: check "
        "the job's log or dmesg; fix that and rerun the same command: it resumes"]

    def backend_failure(**kw):  # every rank's own problem: its traceback stays
        raise RuntimeError("NCCL error: unhandled system error")
    monkeypatch.setattr(app_mod, "app", backend_failure)
    with pytest.raises(RuntimeError, match="unhandled system error"):
        app_mod.run()


@pytest.mark.parametrize("ends", ["error", "bug", "stop", "success"])
def test_a_ranks_line_reaches_torchruns_failure_report(monkeypatch, capsys, tmp_path, ends):
    """torchrun's report ("ffcv_dp4tl FAILED ... Root Cause") said of every failed rank only
    "To enable traceback see: https://pytorch.org/docs/..." and named no reason: a line one
    rank printed among all ranks' output, or that ``--local-ranks-filter 0`` hid, was nowhere
    in it. The rank's line (a bug's traceback) now is, read by torch's own reader; a command
    that succeeds writes no error file, and none is written where torchrun gives no path."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from ffcv_dp4tl.errors import DP4TLError

    app_mod = importlib.import_module("ffcv_dp4tl.cli.app")
    raised = {"error": DP4TLError("data/x is not a built dataset; build it"),
              "bug": ValueError("an unexpected value"), "stop": KeyboardInterrupt(),
              "success": SystemExit(0)}[ends]

    def command(**kw):
        raise raised
    monkeypatch.setattr(app_mod, "app", command)
    error_file = tmp_path / "attempt_0" / "1" / "error.json"
    error_file.parent.mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    with pytest.raises((SystemExit, ValueError)) as e, _clock_held():
        app_mod.run()
    err = capsys.readouterr().err
    if ends == "success":
        assert e.value.code == 0 and not error_file.exists()
        return
    assert [p.name for p in error_file.parent.iterdir()] == ["error.json"]  # (no temporary left)
    failure = ProcessFailure(local_rank=1, pid=4321, exitcode=2, error_file=str(error_file))
    report = ChildFailedError("ffcv_dp4tl", {1: failure}).format_msg()
    assert "To enable traceback" not in report
    if ends == "bug":  # its traceback, as Python prints it (not here: pytest catches it)
        assert "traceback : Traceback (most recent call last):" in report
        assert "raise raised\n  ValueError: an unexpected value\n" in report
    else:
        said = ("error: data/x is not a built dataset; build it" if ends == "error"
                else app_mod.stopping.line())
        assert said in err and f"traceback : {said}\n" in report

    if ends == "stop":  # a stop follows another rank's failure, mostly: not the root cause
        _is_not_the_root_cause(app_mod, failure, tmp_path)

    error_file.unlink()
    for unset in ("", None):  # torchrun without a log folder sets "", a plain launch nothing
        if unset is None:
            monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
        else:
            monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", unset)
        with pytest.raises((SystemExit, ValueError)):
            app_mod.run()
        assert not error_file.exists() and list(tmp_path.iterdir()) == [tmp_path / "attempt_0"]


#: the clock both ranks' error files are written at (:func:`_clock_held`)
CLOCK = 1_800_000_000.999


@contextlib.contextmanager
def _clock_held():
    """``time.time`` held at :data:`CLOCK`: two error files written "at the same moment" are,
    whatever the machine's speed (read from the clock, two writes straddled a second's end on
    CI, and the failure's second was the follower's + 1: a tie, which the follower won)."""
    import time

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time", lambda: CLOCK)
        yield


def _is_not_the_root_cause(app_mod, follower, tmp_path) -> None:
    """``follower`` (a ProcessFailure read from a file a follower wrote at :data:`CLOCK`)
    loses the root cause to a failure written at the same moment, whichever rank torchrun
    noticed first: the follower's line is dated a second later."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    assert follower.timestamp == int(CLOCK) + 1
    first = tmp_path / "first" / "error.json"
    first.parent.mkdir()
    with pytest.MonkeyPatch.context() as mp, _clock_held():
        mp.setenv("TORCHELASTIC_ERROR_FILE", str(first))
        app_mod._tell_launcher("error: the first failure")
    failed = ProcessFailure(local_rank=0, pid=1234, exitcode=2, error_file=str(first))
    for failures in ({1: follower, 0: failed}, {0: failed, 1: follower}):
        assert ChildFailedError("ffcv_dp4tl", failures).get_first_failure()[0] == 0
    first.unlink()
    first.parent.rmdir()


def test_a_rank_stopped_by_another_ranks_failure_is_not_the_root_cause(monkeypatch, capsys,
                                                                       tmp_path):
    """A rank ends with "rank 0 stopped: ..." (a check rank 0 failed) or "another rank stopped
    first" (its collective's peer gone) in the same second as the failing rank: torchrun named
    it the root cause when it noticed that rank first (review, 2 CPU ranks)."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from ffcv_dp4tl.errors import PeerStopped

    app_mod = importlib.import_module("ffcv_dp4tl.cli.app")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for raised in (PeerStopped("rank 0 stopped: data/x is not a built dataset"),
                   RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer")):
        def command(**kw):
            raise raised
        monkeypatch.setattr(app_mod, "app", command)
        error_file = tmp_path / "attempt_0" / "1" / "error.json"
        error_file.parent.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
        with pytest.raises(SystemExit) as e, _clock_held():
            app_mod.run()
        assert e.value.code == 2 and "error: rank " in capsys.readouterr().err
        follower = ProcessFailure(local_rank=1, pid=4321, exitcode=2, error_file=str(error_file))
        assert follower.message["extraInfo"]["py_callstack"].startswith("error: rank ")
        _is_not_the_root_cause(app_mod, follower, tmp_path)


def test_a_rank_whose_peer_was_killed_is_not_told_its_error_is_above(monkeypatch):
    """A peer the system SIGKILLed (OOM killer, lost node) prints nothing: the survivor's line
    said "its error is above" anyway, and cut gloo's text mid-word ("caused by a rem")."""
    app_mod = importlib.import_module("ffcv_dp4tl.cli.app")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    said = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
            "[127.0.0.1]:45978: Connection reset by peer. This is typically caused by a remote "
            "worker crashing.")
    line = app_mod._peer_stopped_line(RuntimeError(f"some context\n{said}\nmore"))
    assert "if it printed one, is above" in line and "killed (out of memory, node lost)" in line
    assert "dmesg" in line and "\n" not in line
    quoted = line[line.index("(") + 1:line.index("): its error")]
    assert quoted.endswith("…") and len(quoted) <= 160 and said.startswith(quoted[:-1])
    assert said[len(quoted) - 1] == " "  # cut where a word ends, not inside one
    assert app_mod._clipped("short text", 160) == "short text"


def test_a_file_cut_short_is_one_line_not_aborted(capsys, monkeypatch, tmp_path):
    """click turns an EOFError (numpy or torch reading an empty file) into its Abort, which
    printed "aborted" and named nothing; a reader that does not name its file still gets one
    line saying what happened and what to do."""
    import ffcv_dp4tl.data.manifest as manifest

    def empty(path):
        raise EOFError("No data left in file")
    monkeypatch.setattr(manifest, "load_manifest", empty)
    code, _, err = cli(capsys, monkeypatch, "info", "--data", tmp_path)
    one_line(code, err, "ended early (EOFError: No data left in file)", "empty or was cut short")
    assert "aborted" not in err


def test_warnings_are_one_line_without_source_code(tmp_path):
    """A warning reads like an error line: `warning: ...`, not Python's default two lines that
    quote the package's file, line number and source (`.../cli/train.py:98: UserWarning: ...`)."""
    import subprocess

    probe = ("import sys, warnings\n"
             "from ffcv_dp4tl.cli import app, main\n"
             "@app.command('warn-probe')\n"
             "def _probe():\n"
             "    warnings.warn('eval.resolution 32 is not used')\n"
             "    warnings.warn('old spelling', DeprecationWarning)\n"
             "sys.argv = ['dp4tl', 'warn-probe']\n"
             "main()\n")
    r = subprocess.run([sys.executable, "-W", "always", "-c", probe], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["warning: eval.resolution 32 is not used",
                     "warning: old spelling (DeprecationWarning)"], r.stderr


def test_mask_files_into_a_reader_that_had_enough_ends_as_sigpipe_would(tmp_path, capsys,
                                                                         monkeypatch, index_dataset):
    """`dp4tl mask files M | head -1` exited 0 with the list cut and no sign of it (review): the
    whole list went out in one write, and a pipe whose reader leaves during a write returns
    short without an error. Written in pieces, the next piece meets EPIPE: 141, as `recipes`."""
    import subprocess

    code, _, err = cli(capsys, monkeypatch, "mask", "classes", "--data", index_dataset.root,
                       "--classes", "0-4", "--out", tmp_path / "m.npy")
    assert code in (0, None), err
    script = tmp_path / "entry.py"  # every origin 4 KB long: 70 of them fill a pipe 4 times
    script.write_text("import ffcv_dp4tl.data.manifest as manifest\n"
                      "manifest.SplitInfo.load_origins = lambda self: [f'{i:04d}' + 'x' * 4096 "
                      "for i in range(self.num_samples)]\n"
                      f"import sys\nsys.argv = ['dp4tl', 'mask', 'files', {str(tmp_path / 'm.npy')!r}, "
                      f"'--data', {str(index_dataset.root)!r}]\n"
                      "from ffcv_dp4tl.__main__ import main\nmain()\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout.readline().startswith(b"0000xxx")  # the reader takes a line, then leaves
    p.stdout.close()
    _, err = p.communicate(timeout=300)
    assert (p.returncode, err.decode()) == (141, "")


@pytest.mark.parametrize("args,needle", [
    (["pipeline", "--seeds", "0,,1"], "'--seeds': '0,,1'"),  # ran seeds 0 and 1 (audit)
    (["pipeline", "--finetune", "lp, ,ff"], "'--finetune': 'lp, ,ff'"),
    (["pipeline", "--target", "a,,b"], "--target: 'a,,b'"),
    (["pipeline", "--target", "a,b", "--target-weights", "1,,2"], "--target-weights: '1,,2'"),
    (["bench", "cost-table", "--ratios", "0,,0.6"], "'--ratios': '0,,0.6'"),
    (["bench", "cost-table", "--methods", "lm,,random"], "--methods: 'lm,,random'"),
    (["bench", "cost-table", "--methods", "fm[k=3,reversed],,lm"], "--methods:"),
    (["bench", "cost-table", "--orders", "ordered,,reversed"], "--orders: 'ordered,,reversed'"),
    (["bench", "cost-table", "--ff-methods", "lm,,fm"], "--ff-methods: 'lm,,fm'"),
    (["bench", "cost-table", "--ks", "8,,16"], "'--ks': '8,,16'"),
    (["bench", "embedded", "--targets", "paper,,warm"], "--targets: 'paper,,warm'"),
    (["bench", "embedded", "--methods", "lm,,fm"], "--methods: 'lm,,fm'"),
    (["bench", "surrogates", "--archs", "resnet18,,vgg2"], "--archs: 'resnet18,,vgg2'"),
    (["evaluate", "corruptions", "run", "--corrupt", "fog,,snow"], "--corrupt: 'fog,,snow'"),
    (["evaluate", "vtab", "lp_tiny_cpu", "--lr", "0.1,,0.01"], "--lr: '0.1,,0.01'"),
])
def test_a_list_that_lost_an_item_between_commas_is_refused(capsys, monkeypatch, tmp_path, args,
                                                            needle):
    """One list rule for every option (contracts.split_items): '0,,1' was read as '0,1' by
    every list option but --classes, so a seed or a method went missing without a word."""
    monkeypatch.chdir(tmp_path)  # (a command that went on would write data/ and runs/ here)
    extra = {"pipeline": ["--runs-root", tmp_path / "runs"],
             "evaluate": ["--out", tmp_path / "ev",
                          *(["--checkpoint", "ck.pt", "--data", "d"] if args[1] == "vtab" else [])]
             }.get(args[0], ["--out", tmp_path / "out", *(["--report", ""] if args[0] == "bench" else [])])
    code, _, err = cli(capsys, monkeypatch, *args, *extra)
    one_line(code, err, needle, "has an empty item between commas: put back the item that was "
             "dropped, or remove the extra comma")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "work began before the refusal"


@pytest.mark.parametrize("error", [
    "DP4TLError", "OSError", "BadParameter"])
def test_an_error_line_carries_no_control_character_to_the_terminal(error):
    """Error lines quote names from files others wrote (a manifest's split or class names, a
    path): an escape sequence in one reached the terminal raw, even through a pipe (review).
    Every line the CLI prints for an error is shown with control characters escaped."""
    import typer

    from ffcv_dp4tl.cli.app import _failure
    from ffcv_dp4tl.errors import DP4TLError

    evil = "no split 'train' (available: \x1b]0;PWNED\x07evil\x9b2J)"
    e = {"DP4TLError": DP4TLError(evil),
         "OSError": FileNotFoundError(2, "No such file or directory", f"/d/{evil}"),
         "BadParameter": typer.BadParameter(evil)}[error]
    line, code = _failure(e)
    assert code == 2 and not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in line), line
    assert "\\x1b]0;PWNED\\x07evil\\x9b2J" in line


def test_an_error_line_naming_a_lone_surrogate_is_still_one_line():
    """A name from JSON can hold a lone surrogate (``"\\ud800"``), which no encoding takes: the
    escaping of error lines raised on it, a traceback in place of the line (review)."""
    from ffcv_dp4tl.cli.app import _failure
    from ffcv_dp4tl.errors import DataError

    assert _failure(DataError("bad name \ud800 here")) == ("error: bad name \\ud800 here", 2)
