"""Where a user's outputs go (audit): `dp4tl pipeline --out X` (and so `just pretrain out=X`)
was "No such option: --out (Possible options: --budget, --format, --opt)", which named nothing
that helps; `just build` and `just pretrain` ran in the Justfile's folder, so a relative path
typed in a subfolder of the checkout was not the one the user meant."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cli_runner import cli, just_executable, one_line

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [["--out", "x"], ["--out=x"], ["--out", "y", "--out", "x"],
                                  ["-o", "x"], ["--ratio", "0.6", "--out", "x"]])
def test_pipeline_out_says_where_the_pipeline_writes(args, capsys, monkeypatch, tmp_path):
    import ffcv_dp4tl.pipeline.run as run_mod

    def started(*a, **k):
        raise AssertionError("the pipeline started: --out was not refused before any work")

    monkeypatch.setattr(run_mod, "run_pipeline", started)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, monkeypatch, "pipeline", *args)
    one_line(code, err, "dp4tl pipeline has no --out: its stages go under --runs-root (default "
             "runs) and its built data under --data-root (default data); pass `--runs-root x` "
             "(`just pretrain runs_root=x`)")
    assert list(tmp_path.iterdir()) == []
    code, out, _ = cli(capsys, monkeypatch, "pipeline", "--help")
    assert code == 0 and "--runs-root" in out and "--out" not in out  # (no option to offer)


@pytest.mark.parametrize("typo", ["--output", "--outt"])
def test_a_typo_is_not_pointed_at_the_refused_out(typo, capsys, monkeypatch):
    """click's "Possible options" for an unknown option listed the hidden --out too
    (`pipeline --output x`: "(Possible options: --opt, --out)"), which is then refused: the
    hint names only options the pipeline takes."""
    code, _, err = cli(capsys, monkeypatch, "pipeline", typo, "x")
    assert code == 2 and f"No such option: {typo}" in err, err
    assert "--out," not in err and "--out)" not in err, err


@pytest.mark.parametrize("args,words", [
    (["build", "folder:../imgs", "my out"], "[build][folder:../imgs][--out][my out]"),
    (["build"], "[build][synth][--out][data/synth]"),
    (["pretrain", "data=../d", "ratio=0.6"], "[pipeline][--data][../d][--ratio][0.6]"),
])
def test_just_build_and_pretrain_read_paths_from_the_callers_folder(args, words, tmp_path):
    """`cd docs && just build folder:../../imgs "my out"` said "../../imgs: dataset folder not
    found" and built an absolute SOURCE into <checkout>/my out: just runs a recipe in the
    Justfile's folder unless it is [no-cd]. dp4tl then runs in the caller's folder, so its
    relative paths and the defaults (data/synth; the pipeline's data/ and runs/) are its."""
    here = tmp_path / "sub"
    here.mkdir()
    argv = tmp_path / "argv"  # stands in for dp4tl: prints its folder, then [each][argument]
    argv.write_text('#!/bin/sh\npwd -P\nfor a; do printf "[%s]" "$a"; done\n')
    argv.chmod(0o755)
    r = subprocess.run([just_executable(), "--justfile", str(REPO / "Justfile"), "--set", "dp4tl", str(argv),
                        *args], cwd=here, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(here.resolve()), words]
