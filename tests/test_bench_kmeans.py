"""benchmarks/bench_kmeans.py helpers that run on the CPU: ``bf16_exact`` rounds float32 the way
a bf16 autocast forward pass does (the FM features whose re-check share the GPU row measures),
ties to even, so that row times the product's case and not an approximation of it."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from repo_scripts import load_script


def _bench():
    return load_script("benchmarks/bench_kmeans.py")


def test_bf16_exact_equals_torchs_bfloat16_rounding():
    x = np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32) * 30
    x[0, :4] = [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 0.0]  # ties: to even, both signs
    got = _bench().bf16_exact(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.array_equal(got, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    assert got[0, 0] == 1.0 and got[0, 1] == 1 + 2**-6 and got[0, 2] == -1.0
    assert np.array_equal(_bench().bf16_exact(got), got)  # already exact: unchanged


def test_rows_are_saved_as_they_come_so_a_cut_stage_still_returns_them(tmp_path, monkeypatch, capsys):
    """The GPU check kills the fm stage at its limit; the section was written at the end only,
    so a cut returned nothing (review). Each row is now printed and the section saved as it
    comes; the full run replaces the partial section. The full FM run comes right after the
    reference row (a fault in a kernel never run on the GPU ends the CUDA context: the FM
    timings must be saved by then), under --fm-method when given."""
    import os

    bench = _bench()
    md = tmp_path / "fm.md"
    md.write_text("")

    def killed(*a, **k):
        raise KeyboardInterrupt  # the stage's timeout

    args = ["--cpu-smoke", "--n", "400", "--k", "8", "--targets", "40", "--iters", "2",
            "--warmup", "0", "--repeats", "1", "--output", str(md)]
    monkeypatch.setattr(bench, "run_fm", killed)  # cut during the full FM run
    with pytest.raises(KeyboardInterrupt):
        bench.main(args)
    text = md.read_text()
    assert "| numba oracle (float64 accum.) |" in text and "| NumPy BLAS" not in text
    assert "_(partial: the run did not get this far yet)_" in text
    assert "[row] numba oracle (float64 accum.): median " in capsys.readouterr().out
    monkeypatch.undo()
    seen = []
    run_fm = bench.run_fm

    def spy(*a, **k):  # the FM run sees --fm-method as $DP4TL_FM_METHOD, set for it alone
        seen.append(os.environ.get("DP4TL_FM_METHOD"))
        return run_fm(*a, **k)

    monkeypatch.setattr(bench, "run_fm", spy)
    monkeypatch.setattr(bench, "torch_matmul_argmin", killed)  # cut after the full FM run
    monkeypatch.delenv("DP4TL_FM_METHOD", raising=False)
    with pytest.raises(KeyboardInterrupt):
        bench.main([*args, "--fm-method", "gemm-bf16"])
    text = md.read_text()
    assert seen == ["gemm-bf16"] and "DP4TL_FM_METHOD" not in os.environ
    assert "| numba oracle (float64 accum.) |" in text and "partial" not in text
    assert "| **total FM** (init + Lloyd + voting) |" in text and "torch addmm" not in text
    assert "[fm] | stage | seconds |" in capsys.readouterr().out
    monkeypatch.undo()
    assert bench.main(args) == 0
    text = md.read_text()
    assert "partial" not in text and text.count("| numba oracle (float64 accum.) |") == 1
    assert "| NumPy BLAS chunks (cpu backend) |" in text and text.count("| **total FM**") == 1
    assert "under `auto`" not in text  # (the full FM run voted under auto itself)
    assert bench.main([*args, "--fm-method", "gemm-bf16"]) == 0  # then auto's voting, timed last
    text = md.read_text()
    assert re.search(r"Target voting under `auto` \(40 targets, whole calls\): the first [0-9.]+ s "
                     r"\(it measures every method where N x K is large enough\), the second [0-9.]+ s", text)
    with pytest.raises(SystemExit):  # a method name auto would refuse only on the GPU
        bench.main([*args, "--fm-method", "bogus"])
