"""Helpers shared by the scoring tests (reference implementations, skip markers, the surrogate
as a scorer sees it)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def cuda_ok() -> bool:
    from ffcv_dp4tl.kernels import cuda_available

    return cuda_available()


requires_cuda = pytest.mark.skipif(not cuda_ok(), reason="CuPy / CUDA device not available")


def reference_assign(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 brute force: (labels, min_dist2, full distance matrix), small inputs only."""
    d = ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None, :, :]) ** 2).sum(-1)
    return d.argmin(axis=1), d.min(axis=1), d


def assert_assignment_matches(labels, min_d2, x, c, rel_tol=1e-5) -> None:
    """Labels equal the float64 reference except where the two best distances are within
    float rounding (then either answer is right); distances close."""
    ref_labels, ref_d2, d = reference_assign(x, c)
    labels = np.asarray(labels)
    scale = (x.astype(np.float64) ** 2).sum(1) + (c.astype(np.float64) ** 2).sum(1).max() + 1.0
    mismatch = np.flatnonzero(labels != ref_labels)
    for i in mismatch:
        gap = d[i, labels[i]] - ref_d2[i]
        assert gap <= rel_tol * scale[i], f"row {i}: label {labels[i]} is {gap} worse than {ref_labels[i]}"
    np.testing.assert_allclose(np.asarray(min_d2, dtype=np.float64), ref_d2, rtol=0, atol=rel_tol * scale.max())


def compile_emulator(main_cpp: str, workdir: Path, source: str | None = None, name: str = "kernels.cu") -> Path:
    """Compile a kernel source (default ``ffcv_dp4tl.kernels.cuda_source.SOURCE``; the driver includes
    it as ``name``) for the CPU against cuda_emu.h with the host driver ``main_cpp`` (a file
    beside this one); skips when g++ or C++20 <barrier> is missing."""
    from ffcv_dp4tl.kernels import cuda_source

    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    (workdir / name).write_text(cuda_source.SOURCE if source is None else source)
    exe = workdir / "emu"
    res = subprocess.run(
        ["g++", "-std=c++20", "-O1", "-pthread", f"-I{HERE}", f"-I{workdir}", str(HERE / main_cpp), "-o", str(exe)],
        capture_output=True, text=True, timeout=180,
    )
    if res.returncode != 0 and "barrier" in res.stderr:
        pytest.skip("compiler lacks C++20 <barrier>")
    assert res.returncode == 0, res.stderr
    return exe


def surrogate_context(method: str, source_dir: Path, out_dir: Path, checkpoint: Path, **kw):
    """A test's own :class:`~ffcv_dp4tl.scoring.context.ScoringContext` over ``source_dir`` with
    ``checkpoint`` loaded the way ``pipeline.score`` loads it (CPU, wds, no workers): what the
    scorer saw, so a test can recompute its result independently."""
    from ffcv_dp4tl.pipeline.score import _load_surrogate
    from ffcv_dp4tl.scoring.context import ScoringContext
    from ffcv_dp4tl.scoring.registry import get_scorer

    ctx = ScoringContext(method=method, source_dir=source_dir, out_dir=out_dir, fmt="wds",
                         num_workers=0, progress=False, **kw)
    ctx.surrogate = _load_surrogate(get_scorer(method), ctx, Path(checkpoint), "cpu", None)
    return ctx


#: the features of the memory tests: 51 MB of float32, one float64 copy of them is 102 MB
BIG_N, BIG_D = 200_000, 64


def write_big_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A (BIG_N, BIG_D) float32 feature store at ``path``, opened memory-mapped as
    scoring/features.py opens one (its pages cost no traced memory), and labels: 10 % in class
    1, the rest in class 0, so one class is most of the matrix."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(BIG_N, BIG_D))
    rng = np.random.default_rng(5)
    for a in range(0, BIG_N, 50_000):
        mm[a:a + 50_000] = rng.standard_normal((50_000, BIG_D), dtype=np.float32) + 0.5
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r"), (np.arange(BIG_N) % 10 == 0).astype(np.int64)


def traced_peak(fn) -> int:
    """Peak bytes tracemalloc saw allocated while ``fn()`` ran (numpy reports its buffers)."""
    import gc
    import tracemalloc

    gc.collect()
    outer = tracemalloc.is_tracing()  # (PYTHONTRACEMALLOC, -X tracemalloc: measure from here
    if outer:                          #  on, and leave the user's tracing running)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    else:
        tracemalloc.start()
        base = 0
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        if not outer:
            tracemalloc.stop()
