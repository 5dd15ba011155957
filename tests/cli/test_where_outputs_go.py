"""Where a user's outputs go (audit): `dp4tl pipeline --out X` (and so `just pretrain out=X`)
was "No such option: --out (Possible options: --budget, --format, --opt)", which named nothing
that helps."""
from __future__ import annotations

import pytest

from cli_runner import cli, one_line


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
