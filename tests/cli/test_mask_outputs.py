"""What `dp4tl prune`, `dp4tl mask classes` and `dp4tl mask files` may write over: only what the
same command wrote before (an identical rerun, or the rest of a killed one). A mask made from
other inputs (the one a finished training run used), or a file of the user's, is refused in one
line that names it and says to pass another --out or delete it (user audit: a typo replaced a
trained checkpoint.pt with a list of files; a second prune replaced a mask; a class mask
replaced a prune's train.npy beside its val.npy), as `dp4tl score` refuses other scores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_runner import cli, one_line

from ffcv_dp4tl.data import load_manifest
from ffcv_dp4tl.pipeline.scores_io import write_scores


@pytest.fixture
def run(capsys, monkeypatch):
    def dp4tl(*args):
        return cli(capsys, monkeypatch, *args)
    return dp4tl


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()
            and not p.name.startswith(".")}


def _lm_scores(folder: Path, source: Path, scores) -> Path:
    write_scores(folder, method="lm", unit="class", scores=np.asarray(scores, dtype=float),
                 meta={"source_fingerprint": load_manifest(source).fingerprint})
    return folder


def test_prune_never_replaces_a_mask_made_from_other_inputs(source_dir, tmp_path, run,
                                                            monkeypatch):
    n = load_manifest(source_dir).num_classes
    s = _lm_scores(tmp_path / "lm", source_dir, np.arange(n))
    out = tmp_path / "mask"
    prune = ("prune", "--data", source_dir, "--out", out)
    assert run(*prune, "--scores", s, "--ratio", "0.5")[0] == 0
    first = _files(out)
    assert set(first) == {"train.npy", "train.json", "val.npy", "val.json"}
    for other, new in ((["--ratio", "0.25"], "the lm mask at ratio 0.25"),
                       (["--ratio", "0.5", "--budget", "samples"], "the lm mask at ratio 0.5, budget samples"),
                       (["--ratio", "0.5", "--order", "reversed"], "the lm mask at ratio 0.5, reversed order")):
        code, _, err = run(*prune, "--scores", s, *other)
        one_line(code, err, f"--out {out} holds the lm mask at ratio 0.5 (train.npy); pass "
                 f"another --out for {new} (or delete {out} to replace it)")
        assert _files(out) == first
    # other scores of the same method: the same settings select other classes
    s2 = _lm_scores(tmp_path / "lm2", source_dir, np.arange(n)[::-1].copy())
    code, _, err = run(*prune, "--scores", s2, "--ratio", "0.5")
    one_line(code, err, "holds the lm mask at ratio 0.5 selecting other samples (train.npy)")
    assert _files(out) == first
    # the same command again, and from elsewhere (the scores folder spelled otherwise): same masks
    assert run(*prune, "--scores", s, "--ratio", "0.5")[0] == 0
    monkeypatch.chdir(tmp_path)
    assert run(*prune, "--scores", "lm", "--ratio", "0.5")[0] == 0
    again = _files(out)
    assert {k: v for k, v in again.items() if k.endswith(".npy")} == \
        {k: v for k, v in first.items() if k.endswith(".npy")}
    # killed after train.npy was written, or between a mask's two files: the rerun completes
    for name in ("val.npy", "val.json", "train.json"):
        (out / name).unlink()
    assert run(*prune, "--scores", s, "--ratio", "0.5")[0] == 0
    assert _files(out).keys() == first.keys() and _files(out)["val.npy"] == first["val.npy"]


def test_mask_classes_never_replaces_a_prunes_mask_or_a_users_file(source_dir, tmp_path, run):
    n = load_manifest(source_dir).num_classes
    s = _lm_scores(tmp_path / "lm", source_dir, np.arange(n))
    out = tmp_path / "mask"
    assert run("prune", "--scores", s, "--data", source_dir, "--ratio", "0.5", "--out", out)[0] == 0
    pair = _files(out)
    code, _, err = run("mask", "classes", "--data", source_dir, "--classes", "0-3",
                       "--out", out / "train.npy")
    one_line(code, err, f"--out {out / 'train.npy'} holds the lm mask at ratio 0.5; pass another "
             f"--out for the classes mask of classes 0-3 (or delete {out / 'train.npy'} and "
             f"{out / 'train.json'} to replace it)")
    assert _files(out) == pair  # train.npy still beside its own val.npy
    cls = ("mask", "classes", "--data", source_dir, "--out", tmp_path / "keep")
    assert run(*cls, "--classes", "0-3")[0] == 0
    assert run(*cls, "--classes", "0-3")[0] == 0  # the same command again
    kept = (tmp_path / "keep.npy").read_bytes()
    code, _, err = run(*cls, "--classes", "0-4")
    one_line(code, err, f"--out {tmp_path / 'keep'}: {tmp_path / 'keep.npy'} holds the classes "
             "mask of classes 0-3; pass another --out for the classes mask of classes 0-4")
    assert (tmp_path / "keep.npy").read_bytes() == kept
    np.save(tmp_path / "feat.npy", np.linspace(0, 1, 5))  # the user's own files
    (tmp_path / "results.json").write_text('{"top1": 0.9}\n')
    for name, clash, what in (("feat.npy", "feat.npy", "a file that is not this mask"),
                              ("results", "results.json", "a file that is not a mask's sidecar")):
        before = (tmp_path / clash).read_bytes()
        code, _, err = run("mask", "classes", "--data", source_dir, "--classes", "1",
                           "--out", tmp_path / name)
        one_line(code, err, f"{tmp_path / clash} holds {what}")
        assert (tmp_path / clash).read_bytes() == before


def test_mask_files_never_replaces_a_file_it_did_not_write(source_dir, tmp_path, run):
    m = tmp_path / "m.npy"
    assert run("mask", "classes", "--data", source_dir, "--classes", "0-3", "--out", m)[0] == 0
    ckpt = tmp_path / "checkpoint.pt"
    weights = np.random.default_rng(0).bytes(100_000)
    ckpt.write_bytes(weights)
    code, _, err = run("mask", "files", m, "--data", source_dir, "--out", ckpt)
    one_line(code, err, f"--out {ckpt} already exists and holds something else than this list of "
             f"kept files; pass another --out (or delete {ckpt} to replace it)")
    assert ckpt.read_bytes() == weights
    # not a regular file: never "delete /dev/null to replace it" (review)
    code, _, err = run("mask", "files", m, "--data", source_dir, "--out", "/dev/null")
    one_line(code, err, "--out /dev/null is not a regular file; pass a file path, or leave --out "
             "out to print the list (`> FILE` to keep it)")
    kept = tmp_path / "kept.txt"
    files = ("mask", "files", m, "--data", source_dir, "--out", kept)
    assert run(*files)[0] == 0
    listed = kept.read_bytes()
    assert run(*files)[0] == 0 and kept.read_bytes() == listed  # the same command again
    code, _, err = run(*files, "--pruned")  # another list: a file this run did not write
    one_line(code, err, f"--out {kept} already exists", "list of removed files")
    assert kept.read_bytes() == listed


@pytest.mark.parametrize("terminal", [True, False])
def test_mask_files_shows_a_terminal_no_escape_sequence_but_pipes_the_paths(
        tmp_path, capsys, monkeypatch, terminal):
    """``S.files.txt`` keeps a file name as other tools open it (an ESC in it included), and
    `dp4tl mask files` printed it raw to a terminal, which acted on the sequence (review). On a
    terminal each name is shown escaped; into a pipe the paths go as stored."""
    import sys

    from PIL import Image

    from beton_builders.spec import DatasetSpec, Sample
    from beton_builders.writer import BuildOptions, build_dataset
    from ffcv_dp4tl.data.masks import make_mask, save_mask

    src = tmp_path / "in"
    src.mkdir()
    names = ["ok.png", "esc\x1b]0;PWNED\x07.png"]
    for n in names:
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(src / n)
    spec = DatasetSpec("odd", ["a"], {"train": [Sample(src / n, 0) for n in names]})
    build_dataset(spec, tmp_path / "ds", BuildOptions(max_side=32, shard_size=8, workers=1,
                                                      progress=False))
    split = load_manifest(tmp_path / "ds").split("train")
    mask = save_mask(tmp_path / "m.npy", make_mask(np.arange(2), split, method="test"))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    code, out, _ = cli(capsys, monkeypatch, "mask", "files", mask, "--data", tmp_path / "ds")
    assert code in (0, None)
    base = str(src.resolve())
    shown = "esc\\x1b]0;PWNED\\x07.png" if terminal else names[1]
    assert out.split("\n")[:-1] == [f"{base}/ok.png", f"{base}/{shown}"]
