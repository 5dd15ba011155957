"""The environment and input errors of issue 21 item 5/7 as a user meets them in `dp4tl`: one
line (exit 2) before any work, never a traceback. In-process through the console entry point."""
from __future__ import annotations

import errno
import importlib
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
