"""FM kernels: CPU paths vs float64 NumPy references, input checks, CUDA source checks."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl import kernels
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.kernels import cpu, cuda, cuda_source
from ffcv_dp4tl.kernels.checks import KernelInputError

from .helpers import assert_assignment_matches, compile_emulator, reference_assign, requires_cuda

HERE = Path(__file__).parent


def _data(rng, n=1500, d=40, k=37):
    x = rng.standard_normal((n, d), dtype=np.float32) * 3
    c = rng.standard_normal((k, d), dtype=np.float32) * 3
    return x, c


# -- assign_nearest ----------------------------------------------------------------------
@pytest.mark.parametrize("fn", [cpu.assign_nearest, cpu.assign_nearest_numba], ids=["blas", "numba"])
def test_assign_matches_float64_reference(rng, fn):
    x, c = _data(rng)
    labels, d2 = fn(x, c)
    assert labels.dtype == np.int64 and d2.dtype == np.float32
    assert labels.shape == d2.shape == (x.shape[0],)
    assert_assignment_matches(labels, d2, x, c)


def test_numba_oracle_is_tight(rng):
    x, c = _data(rng, n=400)
    labels, d2 = cpu.assign_nearest_numba(x, c)
    ref_labels, ref_d2, _ = reference_assign(x, c)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(d2, ref_d2, rtol=1e-6)


@pytest.mark.parametrize("fn", [cpu.assign_nearest, cpu.assign_nearest_numba], ids=["blas", "numba"])
def test_assign_exact_ties_go_to_lowest_index(fn):
    # Small integers: every product and sum is exact in float32, so ties are exact.
    c = np.array([[0, 0], [2, 0], [0, 0], [2, 0], [1, 5]], dtype=np.float32)
    x = np.array([[0, 0], [2, 0], [1, 0], [1, 4], [0, 1]], dtype=np.float32)
    labels, d2 = fn(x, c)
    np.testing.assert_array_equal(labels, [0, 1, 0, 4, 0])
    np.testing.assert_array_equal(d2, [0, 0, 1, 1, 1])


@pytest.mark.parametrize("fn", [cpu.assign_nearest, cpu.assign_nearest_numba], ids=["blas", "numba"])
def test_assign_nan_rows_get_nan_distance(rng, fn):
    x, c = _data(rng, n=20, d=8, k=3)
    x[5, 2] = np.nan
    x[7, 0] = np.inf
    _, d2 = fn(x, c)
    assert np.isnan(d2[5]) and np.isnan(d2[7])
    assert np.isfinite(np.delete(d2, [5, 7])).all()


def test_assign_blas_chunks_cover_all_rows(rng, monkeypatch):
    monkeypatch.setattr(cpu, "_BLAS_BLOCK_ELEMS", 37 * 7)  # 7 rows per chunk, ragged tail
    x, c = _data(rng, n=101)
    labels, d2 = cpu.assign_nearest(x, c)
    assert_assignment_matches(labels, d2, x, c)


def test_dispatch_cpu_returns_numpy_and_converts_dtype(rng):
    x, c = _data(rng, n=50)
    labels, d2 = kernels.assign_nearest(x.astype(np.float64), c, backend="cpu")
    assert isinstance(labels, np.ndarray) and d2.dtype == np.float32
    assert_assignment_matches(labels, d2, x, c)


def test_assign_errors(rng):
    x, c = _data(rng, n=10, d=8, k=3)
    with pytest.raises(KernelInputError, match="centroids has D=4 but x has D=8"):
        kernels.assign_nearest(x, c[:, :4], backend="cpu")
    with pytest.raises(KernelInputError, match="x must be a 2-D"):
        kernels.assign_nearest(x[0], c, backend="cpu")
    with pytest.raises(KernelInputError, match="floating-point"):
        kernels.assign_nearest(x.astype(np.int32), c, backend="cpu")
    with pytest.raises(KernelInputError, match="centroids is empty"):
        kernels.assign_nearest(x, c[:0], backend="cpu")
    bad = c.copy()
    bad[1, 1] = np.nan
    with pytest.raises(KernelInputError, match="centroids contain NaN"):
        kernels.assign_nearest(x, bad, backend="cpu")
    with pytest.raises(DP4TLError, match="backend must be"):
        kernels.assign_nearest(x, c, backend="gpu")


@pytest.mark.skipif(kernels.cuda_available(), reason="CUDA is available here")
def test_cuda_backend_unavailable_is_a_clear_error(rng):
    x, c = _data(rng, n=10, d=8, k=3)
    with pytest.raises(DP4TLError, match="backend='cuda' needs CuPy"):
        kernels.assign_nearest(x, c, backend="cuda")
    assert kernels.resolve_backend("auto") == "cpu"


# -- update_centroids / histogram ---------------------------------------------------------
def test_update_centroids_exact_on_integer_data(rng):
    n, d, k = 3001, 13, 11
    x = rng.integers(-50, 50, size=(n, d)).astype(np.float32)
    labels = rng.integers(0, k - 1, size=n)  # cluster k-1 stays empty
    sums, counts = kernels.update_centroids(x, labels, k, backend="cpu")
    ref_sums = np.zeros((k, d))
    np.add.at(ref_sums, labels, x.astype(np.float64))
    assert sums.dtype == np.float64 and counts.dtype == np.int64
    np.testing.assert_array_equal(sums, ref_sums)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=k))
    assert counts[-1] == 0


def test_update_centroids_random_floats(rng):
    x, _ = _data(rng, n=2000, d=17)
    labels = rng.integers(0, 5, size=2000)
    sums, counts = cpu.update_centroids(x, labels, 5)
    ref = np.stack([x[labels == q].astype(np.float64).sum(0) for q in range(5)])
    np.testing.assert_allclose(sums, ref, rtol=1e-12, atol=1e-9)


def test_update_centroids_errors(rng):
    x, _ = _data(rng, n=10, d=4)
    with pytest.raises(KernelInputError, match=r"labels must lie in \[0, 3\), found values in \[0, 3\]"):
        cpu.update_centroids(x, np.arange(10) % 4, 3)
    with pytest.raises(KernelInputError, match="labels has 9 entries but x has 10 rows"):
        cpu.update_centroids(x, np.zeros(9, dtype=np.int64), 3)
    with pytest.raises(KernelInputError, match="integer ids"):
        cpu.update_centroids(x, np.zeros(10), 3)
    with pytest.raises(KernelInputError, match="k must be >= 1"):
        cpu.update_centroids(x, np.zeros(10, dtype=np.int64), 0)


def test_histogram_exact_and_weighted(rng):
    labels = rng.integers(0, 9, size=5000)
    h = kernels.histogram(labels, 12, backend="cpu")
    assert h.dtype == np.int64
    np.testing.assert_array_equal(h, np.bincount(labels, minlength=12))
    w = rng.random(5000)
    hw = kernels.histogram(labels, 12, weights=w, backend="cpu")
    assert hw.dtype == np.float64
    np.testing.assert_allclose(hw, np.bincount(labels, weights=w, minlength=12), rtol=1e-12)
    np.testing.assert_array_equal(kernels.histogram(np.array([], dtype=np.int64), 3, backend="cpu"), [0, 0, 0])
    with pytest.raises(KernelInputError, match="weights must be 1-D with one entry per label"):
        kernels.histogram(labels, 12, weights=w[:-1], backend="cpu")
    with pytest.raises(KernelInputError, match=r"must lie in \[0, 5\)"):
        kernels.histogram(labels, 5, backend="cpu")


# -- CUDA source, checked without a GPU ----------------------------------------------------
def test_cuda_launch_config():
    # many rows: one split; few rows: centroids split so >= 4 blocks per SM where possible
    assert cuda.assign_launch_config(1_280_000, 2000, 132) == (20000, 1, 2048)
    gx, splits, kps = cuda.assign_launch_config(5000, 2000, 132)
    assert gx == 79 and splits > 1 and kps % cuda_source.BN == 0 and (splits - 1) * kps < 2000 <= splits * kps
    assert cuda.assign_launch_config(10, 3, 132) == (1, 1, 64)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_source_compiles_for_hopper(tmp_path):
    src = tmp_path / "kernels.cu"
    src.write_text(cuda_source.SOURCE)
    res = subprocess.run(
        ["nvcc", "-cubin", "-arch=sm_90", "-Xptxas", "-v", str(src), "-o", str(tmp_path / "k.cubin")],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for name in cuda_source.KERNEL_NAMES:
        assert f"Function properties for {name}" in res.stderr
    spill_lines = [line for line in res.stderr.splitlines() if "spill" in line]
    assert spill_lines and all("0 bytes spill stores, 0 bytes spill loads" in line for line in spill_lines)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The CUDA source compiled for the CPU against tests/scoring/cuda_emu.h."""
    return compile_emulator("cuda_emu_main.cpp", tmp_path_factory.mktemp("cuda_emu"))


def _run_emulated(exe, workdir, x, c, labels, w, sm_count):
    n, d = x.shape
    k = c.shape[0]
    x.tofile(workdir / "x.bin")
    c.tofile(workdir / "c.bin")
    labels.astype(np.int64).tofile(workdir / "labels.bin")
    w.astype(np.float64).tofile(workdir / "w.bin")
    gx, splits, kps = cuda.assign_launch_config(n, k, sm_count)
    seg_grid, hist_grid = min(n, sm_count * 32), max(1, min(-(-n // 256), sm_count * 8))
    args = [str(exe), str(workdir), *map(str, (n, k, d, gx, splits, kps, seg_grid, 128, hist_grid))]
    subprocess.run(args, check=True, timeout=120)

    def read(name, dtype):
        return np.fromfile(workdir / f"out_{name}.bin", dtype=dtype)

    return {
        "labels": read("labels", np.int64),
        "d2": read("d2", np.float32),
        "sums": read("sums", np.float64).reshape(k, d),
        "counts": read("counts", np.uint64).astype(np.int64),
        "hist": read("hist", np.uint64).astype(np.int64),
        "whist": read("whist", np.float64),
        "splits": splits,
    }


@pytest.mark.parametrize(
    "n,k,d,sm_count",
    [(300, 70, 37, 8), (130, 5, 16, 100)],
    ids=["split-centroids", "ragged-tiles"],
)
def test_cuda_kernels_emulated_match_cpu(emulator, tmp_path, rng, n, k, d, sm_count):
    x = rng.standard_normal((n, d), dtype=np.float32)
    c = rng.standard_normal((k, d), dtype=np.float32)
    c[3] = c[1]  # duplicate centroid: exact ties must resolve to the lower index
    x[7, 3] = np.nan
    labels = rng.integers(0, k, size=n)
    w = rng.random(n)
    out = _run_emulated(emulator, tmp_path, x, c, labels, w, sm_count)
    if (n, k) == (300, 70):
        assert out["splits"] > 1  # exercises the cross-block atomicMin path
    assert np.isnan(out["d2"][7])
    keep = np.arange(n) != 7
    assert 3 not in out["labels"][keep]
    assert_assignment_matches(out["labels"][keep], out["d2"][keep], x[keep], c)
    ref_sums, ref_counts = cpu.update_centroids(x, labels, k)
    np.testing.assert_allclose(out["sums"], ref_sums, rtol=1e-12, atol=1e-9)  # NaN row -> NaN in both
    np.testing.assert_array_equal(out["counts"], ref_counts)
    np.testing.assert_array_equal(out["hist"], np.bincount(labels, minlength=k))
    np.testing.assert_allclose(out["whist"], np.bincount(labels, weights=w, minlength=k), rtol=1e-12)


def test_cuda_kernels_emulated_exact_ties(emulator, tmp_path):
    c = np.array([[0, 0], [2, 0], [0, 0], [2, 0], [1, 5]], dtype=np.float32)
    x = np.array([[0, 0], [2, 0], [1, 0], [1, 4], [0, 1]], dtype=np.float32)
    out = _run_emulated(emulator, tmp_path, x, c, np.zeros(5, dtype=np.int64), np.ones(5), sm_count=4)
    np.testing.assert_array_equal(out["labels"], [0, 1, 0, 4, 0])
    np.testing.assert_array_equal(out["d2"], [0, 0, 1, 1, 1])


# -- real GPU ------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
def test_gpu_assign_matches_cpu(rng):
    import cupy as cp

    x, c = _data(rng, n=5000, d=96, k=300)
    labels, d2 = kernels.assign_nearest(cp.asarray(x), cp.asarray(c), backend="cuda")
    assert isinstance(labels, cp.ndarray) and labels.dtype == cp.int64 and d2.dtype == cp.float32
    assert_assignment_matches(labels.get(), d2.get(), x, c)
    labels_np, _ = kernels.assign_nearest(x, c, backend="cuda")  # NumPy in -> NumPy out
    assert isinstance(labels_np, np.ndarray)
    np.testing.assert_array_equal(labels_np, labels.get())


@pytest.mark.gpu
@requires_cuda
def test_gpu_assign_exact_ties():
    c = np.array([[0, 0], [2, 0], [0, 0], [2, 0], [1, 5]], dtype=np.float32)
    x = np.array([[0, 0], [2, 0], [1, 0], [1, 4], [0, 1]], dtype=np.float32)
    labels, d2 = kernels.assign_nearest(x, c, backend="cuda")
    np.testing.assert_array_equal(labels, [0, 1, 0, 4, 0])
    np.testing.assert_array_equal(d2, [0, 0, 1, 1, 1])


@pytest.mark.gpu
@requires_cuda
def test_gpu_update_and_histogram_match_cpu(rng):
    x = rng.integers(-50, 50, size=(4000, 33)).astype(np.float32)
    labels = rng.integers(0, 20, size=4000)
    sums, counts = kernels.update_centroids(x, labels, 21, backend="cuda")
    ref_sums, ref_counts = kernels.update_centroids(x, labels, 21, backend="cpu")
    np.testing.assert_array_equal(sums, ref_sums)  # integer data: exact in any order
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(kernels.histogram(labels, 21, backend="cuda"), np.bincount(labels, minlength=21))
    w = rng.random(4000)
    np.testing.assert_allclose(
        kernels.histogram(labels, 21, weights=w, backend="cuda"), np.bincount(labels, w, minlength=21), rtol=1e-12
    )
    with pytest.raises(KernelInputError, match=r"must lie in \[0, 5\)"):
        kernels.histogram(labels, 5, backend="cuda")


def test_cpu_kernels_work_where_numba_has_no_cache_folder(tmp_path):
    """A read-only install used with a read-only home (a container run as another user, a
    cluster job over its home quota) leaves numba no place for its disk cache: it refused
    ``cache=True`` when ``kernels.cpu`` was imported, and FM ended in a traceback. The kernels
    now compile without the cache there, with the same labels. (numba's list of cache places
    is emptied in a fresh interpreter, which is what numba meets in that setting.)"""
    import os
    import sys
    import textwrap

    code = textwrap.dedent("""
        import numba.core.caching as caching
        caching.CacheImpl._locator_classes = []  # no place for a disk cache
        import numpy as np
        from ffcv_dp4tl.kernels import cpu
        x = np.array([[0, 0], [10, 0], [0, 9], [1, 1]], np.float32)
        c = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
        labels, _ = cpu.assign_nearest_numba(x, c)
        assert cpu._assign_numba._cache.__class__.__name__ == "NullCache"
        print(labels.tolist())
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(cpu.__file__).parents[2])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["[0,", "1,", "2,", "0]"]


@pytest.mark.skipif(__import__("numba").config.NUMBA_NUM_THREADS < 2,
                    reason="needs 2 numba threads")
def test_float_sums_do_not_depend_on_the_thread_count(rng):
    """update_centroids' and the weighted histogram's float64 sums come out bit-identical
    whatever numba's thread count (ffcv's import and each loader change it as a side effect):
    their partial buffers follow the data's shape, so FM's k-means and votes do not depend on
    what the process ran before."""
    import numba

    n, d, k = 40_000, 7, 5  # (several partial buffers: rounding differs between split points)
    x = (rng.standard_normal((n, d)) * 1e3).astype(np.float32)
    labels = rng.integers(0, k, size=n)
    w = rng.random(n) * 1e3
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        got = (cpu.update_centroids(x, labels, k)[0], cpu.histogram(labels, k, weights=w))
        numba.set_num_threads(1)
        one = (cpu.update_centroids(x, labels, k)[0], cpu.histogram(labels, k, weights=w))
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(got[0], one[0]) and np.array_equal(got[1], one[1])
    # and the same as a sum split at the fixed row count, whichever thread takes each slice
    step = cpu._ROWS_PER_PARTIAL
    ref = sum(np.stack([np.bincount(labels[i:i + step], weights=x[i:i + step, j].astype(np.float64),
                                    minlength=k) for j in range(d)], axis=1)
              for i in range(0, n, step))
    np.testing.assert_allclose(got[0], ref, rtol=1e-12)
