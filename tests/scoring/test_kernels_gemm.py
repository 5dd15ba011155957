"""Tensor-core FM assignment: rounding, the exact near-tie re-check, sorted centroid sums.

The CUDA kernels run on the CPU under tests/scoring/cuda_emu.h; the cuBLAS GEMM between them is
replaced by a NumPy FP32 matmul of the rounded inputs (what tensor cores compute: exact products,
FP32 sums). The GPU tests at the end run the real path (cuBLAS) when CuPy sees a device.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from ffcv_dp4tl import kernels
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.kernels import cuda

from .helpers import compile_emulator, reference_assign, requires_cuda


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    return compile_emulator("cuda_emu_gemm_main.cpp", tmp_path_factory.mktemp("cuda_emu_gemm"))


def round_tf32(a: np.ndarray) -> np.ndarray:
    u = a.astype(np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def round_bf16_bits(a: np.ndarray) -> np.ndarray:
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_float(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def prep(emu, workdir, a: np.ndarray, precision: str):
    """Run prep_rows_<precision>: (rounded values as float32, ||a||^2, ||a - rounded||)."""
    n, d = a.shape
    a.astype(np.float32).tofile(workdir / "a.bin")
    subprocess.run([str(emu), "prep", precision, str(workdir), str(n), str(d)], check=True, timeout=900)
    raw = np.fromfile(workdir / "out.bin", dtype=np.float32 if precision == "tf32" else np.uint16).reshape(n, d)
    rounded = raw if precision == "tf32" else bf16_to_float(raw)
    return raw, rounded, np.fromfile(workdir / "norm2.bin", np.float32), np.fromfile(workdir / "dnorm.bin", np.float32)


def assign_emulated(emu, workdir, x, c, precision: str, bound_scale: float = 1.0):
    """The whole gemm path as cuda.assign_nearest_gemm runs it, one chunk, GEMM in NumPy."""
    _, cr, c_norm2, c_dnorm = prep(emu, workdir, c, precision)
    _, xr, x_norm2, x_dnorm = prep(emu, workdir, x, precision)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = (xr @ cr.T).astype(np.float32)  # FP32 accumulation of exact products
    cmax, dcmax, cnmax = cuda.bound_scalars(c_norm2, c_dnorm)
    rows, d = x.shape
    k = c.shape[0]
    for name, arr in (("scores", scores), ("cn", c_norm2), ("x", x), ("c", c), ("xn2", x_norm2), ("xdn", x_dnorm)):
        np.ascontiguousarray(arr, dtype=np.float32).tofile(workdir / f"{name}.bin")
    args = [rows, k, d, repr(cmax), repr(dcmax), repr(cnmax), repr(cuda.accumulation_bound(d)), bound_scale]
    subprocess.run([str(emu), "epi", str(workdir), *map(str, args)], check=True, timeout=900)
    out = {name: np.fromfile(workdir / f"out_{name}.bin", dtype)
           for name, dtype in (("labels", np.int64), ("d2", np.float32), ("ncand", np.int32), ("votes", np.uint64))}
    return out


def near_tie_data(rng, n=190, d=45, k=70):
    """Rows sitting among a tight group of centroids (distance gaps far below BF16/TF32
    resolution), a duplicate centroid (exact tie) and plain random rows."""
    c = rng.standard_normal((k, d)).astype(np.float32)
    c[10:30] = c[10] + 1e-3 * rng.standard_normal((20, d)).astype(np.float32)
    c[41] = c[40]  # exact duplicate: the lower index must win
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[: n // 2] = c[10] + 0.02 * rng.standard_normal((n // 2, d)).astype(np.float32)
    x[n // 2 : n // 2 + 10] = c[40] + 0.01 * rng.standard_normal((10, d)).astype(np.float32)
    return x, c


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_prep_rows_round_to_nearest(emu, tmp_path, rng, precision):
    a = (rng.standard_normal((50, 37)) * 10).astype(np.float32)
    a[0, :4] = [1.0 + 2**-11, 1.0 + 3 * 2**-11, 1.0 + 2**-8, 1.0 + 3 * 2**-8]  # exact halfway cases
    raw, rounded, norm2, dnorm = prep(emu, tmp_path, a, precision)
    if precision == "tf32":
        np.testing.assert_array_equal(raw.view(np.uint32), round_tf32(a).view(np.uint32))
        assert (raw.view(np.uint32) & 0x1FFF == 0).all()  # nothing left below TF32 precision
    else:
        np.testing.assert_array_equal(raw, round_bf16_bits(a))
        np.testing.assert_array_equal(raw[0, 2:4], round_bf16_bits(np.float32([1.0, 1.0 + 2**-6])))  # ties to even
    assert np.abs(rounded - a).max() <= np.abs(a).max() * (2**-11 if precision == "tf32" else 2**-8)
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(norm2, (a64**2).sum(1), rtol=1e-6)
    np.testing.assert_allclose(dnorm, np.sqrt(((a64 - rounded) ** 2).sum(1)), rtol=1e-5)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_gemm_epilogue_labels_equal_float64_reference(emu, tmp_path, rng, precision):
    x, c = near_tie_data(rng)
    x[5, 7] = np.nan
    out = assign_emulated(emu, tmp_path, x, c, precision)
    ok = np.arange(x.shape[0]) != 5
    ref_labels, ref_d2, _ = reference_assign(x[ok], c)
    np.testing.assert_array_equal(out["labels"][ok], ref_labels)  # not "up to near-ties": equal
    np.testing.assert_allclose(out["d2"][ok], ref_d2, rtol=1e-6)
    assert np.isnan(out["d2"][5]) and out["labels"][5] == 0 and out["ncand"][5] == 0
    assert 41 not in out["labels"] and (out["labels"] == 40).sum() >= 10
    np.testing.assert_array_equal(out["votes"], np.bincount(out["labels"][ok], minlength=c.shape[0]))
    assert (out["ncand"][ok] >= 1).all()
    # the near-tie rows really were decided by the exact re-check, the far ones mostly not
    assert (out["ncand"][: x.shape[0] // 2] > 1).mean() > 0.9
    assert (out["ncand"][x.shape[0] // 2 + 10 :] == 1).mean() > 0.5


def test_gemm_epilogue_without_recheck_would_be_wrong(emu, tmp_path, rng):
    """With the error bound switched off, BF16 scores alone mislabel near-tie rows: the
    re-check is what makes the labels exact (guards against a bound that is silently 0)."""
    x, c = near_tie_data(rng)
    out = assign_emulated(emu, tmp_path, x, c, "bf16", bound_scale=0.0)
    ref_labels, _, _ = reference_assign(x, c)
    assert (out["labels"] != ref_labels).sum() > 5


def test_gemm_epilogue_exact_small_integer_ties(emu, tmp_path):
    c = np.array([[0, 0], [2, 0], [0, 0], [2, 0], [1, 5]], dtype=np.float32)
    x = np.array([[0, 0], [2, 0], [1, 0], [1, 4], [0, 1]], dtype=np.float32)
    out = assign_emulated(emu, tmp_path, x, c, "bf16")
    np.testing.assert_array_equal(out["labels"], [0, 1, 0, 4, 0])
    np.testing.assert_array_equal(out["d2"], [0, 0, 1, 1, 1])


def test_segment_sum_sorted_emulated_exact(emu, tmp_path, rng):
    n, d, k = 1000, 13, 9
    x = rng.integers(-50, 50, size=(n, d)).astype(np.float32)
    labels = rng.integers(0, k - 1, size=n)  # cluster k-1 stays empty
    order = np.argsort(labels, kind="stable").astype(np.int64)
    x.tofile(tmp_path / "x.bin")
    order.tofile(tmp_path / "order.bin")
    labels[order].astype(np.int64).tofile(tmp_path / "slabels.bin")
    subprocess.run([str(emu), "segsorted", str(tmp_path), str(n), str(d), str(k), "64"], check=True, timeout=900)
    sums = np.fromfile(tmp_path / "out_sums.bin", np.float64).reshape(k, d)
    ref = np.zeros((k, d))
    np.add.at(ref, labels, x.astype(np.float64))
    np.testing.assert_array_equal(sums, ref)


def test_gemm_chunk_rows_fit_the_chunk_budget():
    assert cuda.gemm_chunk_rows(1_280_000, 2000) * 2000 * 4 <= cuda.GEMM_CHUNK_BYTES
    assert cuda.gemm_chunk_rows(1_280_000, 2000) % 256 == 0
    assert cuda.gemm_chunk_rows(100, 2000) == 100
    assert cuda.gemm_chunk_rows(10**6, 10**6) == 256  # never below one 256-row tile


# -- real GPU ------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_gpu_gemm_assign_equals_float64(rng, precision):
    import cupy as cp

    x, c = near_tie_data(rng, n=5000, d=96, k=300)
    votes = cp.zeros(c.shape[0], dtype=cp.uint64)
    labels, d2, ncand = cuda.assign_nearest_gemm(cp.asarray(x), cp.asarray(c), precision=precision,
                                                 chunk_rows=768, votes=votes, return_candidates=True)
    ref_labels, ref_d2, _ = reference_assign(x, c)
    np.testing.assert_array_equal(labels.get(), ref_labels)
    np.testing.assert_allclose(d2.get(), ref_d2, rtol=1e-6)
    np.testing.assert_array_equal(votes.get(), np.bincount(ref_labels, minlength=c.shape[0]))
    assert int(ncand.max().get()) > 1


@pytest.mark.gpu
@requires_cuda
def test_gpu_auto_method_and_sorted_update(rng):
    import cupy as cp

    x = rng.standard_normal((200_000, 64)).astype(np.float32)
    c = x[:256].copy()
    method = cuda.choose_method(cp.asarray(x), cp.asarray(c))
    assert method in cuda.ASSIGN_METHODS[1:]
    labels, _ = kernels.assign_nearest(x, c, backend="cuda")  # auto method inside
    ref, _ = kernels.assign_nearest_reference(x[:4096], c)
    np.testing.assert_array_equal(labels[:4096], ref)
    xi = rng.integers(-50, 50, size=(50_000, 33)).astype(np.float32)
    li = rng.integers(0, 20, size=50_000)
    sums, counts = cuda.update_centroids_sorted(cp.asarray(xi), cp.asarray(li), 21)
    ref_sums, ref_counts = kernels.update_centroids(xi, li, 21, backend="cpu")
    np.testing.assert_array_equal(sums.get(), ref_sums)
    np.testing.assert_array_equal(counts.get(), ref_counts)


class _FakeCudaError(RuntimeError):
    """Stands in for CuPy's driver/runtime errors (the module is what ``is_fault`` reads)."""


_FakeCudaError.__module__ = "cupy_backends.cuda.api.driver"


def _fake_cupy():
    from types import SimpleNamespace

    event = SimpleNamespace(record=lambda: None, synchronize=lambda: None)
    return SimpleNamespace(cuda=SimpleNamespace(Device=lambda: SimpleNamespace(id=0), Event=lambda: event,
                                                get_elapsed_time=lambda a, b: 1.0))


def test_auto_skips_an_unavailable_method_but_stops_at_a_kernel_fault(monkeypatch):
    """``auto`` measures every method: one that is merely unavailable is skipped, but a kernel
    fault (after which the CUDA context is unusable) ends the run with one line naming the
    method and the way round it, instead of a later, unrelated error. No GPU: CuPy and the
    methods are stand-ins."""
    monkeypatch.setattr(cuda, "_cupy", _fake_cupy)
    monkeypatch.setattr(cuda, "_METHOD_CACHE", {})
    monkeypatch.delenv(cuda.METHOD_ENV, raising=False)
    x, c = np.zeros((cuda.AUTO_MIN_WORK // 64, 8), np.float32), np.zeros((64, 8), np.float32)

    def run(method, *a, **k):
        if method == "gemm-tf32":
            raise _FakeCudaError("CUBLAS_STATUS_NOT_SUPPORTED: no GemmEx here")
        if method == "fused-bf16":
            raise _FakeCudaError("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered")

    monkeypatch.setattr(cuda, "_run_method", run)
    with pytest.raises(DP4TLError, match=r"'fused-bf16' faulted on this GPU \(CUDA_ERROR_ILLEGAL_ADDRESS.*"
                                         r"DP4TL_FM_METHOD=simt"):
        cuda.choose_method(x, c)
    # unavailable gemm-* (which would be fastest) are skipped; the fastest of the rest is taken
    ms = {"simt": 3.0, "gemm-tf32": 0.5, "gemm-bf16": 0.5, "fused-bf16": 2.0, "fused-bf16-tiled": 1.0,
          "fused-bf16-tiled3": 1.5, "fused-bf16-tiled64": 1.25}
    last = []

    probe_labels = np.arange(cuda.AUTO_PROBE_ROWS) % 64

    def run_ok(method, *a, **k):
        if method.startswith("gemm"):
            raise _FakeCudaError("CUBLAS_STATUS_NOT_SUPPORTED")
        last.append(method)
        return probe_labels, None

    fake = _fake_cupy()
    fake.cuda.get_elapsed_time = lambda a, b: ms[last[-1]]
    monkeypatch.setattr(cuda, "_cupy", lambda: fake)
    monkeypatch.setattr(cuda, "_run_method", run_ok)
    assert cuda.choose_method(x, c) == "fused-bf16-tiled"
    assert set(last) == {"simt", "fused-bf16", "fused-bf16-tiled", "fused-bf16-tiled3", "fused-bf16-tiled64"}
    assert not cuda.is_fault(RuntimeError("illegal memory access"))  # not CuPy's: not a CUDA fault


def test_auto_never_takes_a_method_whose_labels_are_wrong_on_this_gpu(monkeypatch):
    """A kernel that is fast but wrong on this GPU (a bug the CPU emulator could not show) gives
    labels that differ from simt's on most probe rows: auto warns, naming it, and takes the
    fastest method that agrees. A difference on a few near-tie rows (FP32 simt vs the exact
    methods) is allowed. No GPU: CuPy and the methods are stand-ins."""
    monkeypatch.setattr(cuda, "_METHOD_CACHE", {})
    monkeypatch.delenv(cuda.METHOD_ENV, raising=False)
    x, c = np.zeros((cuda.AUTO_MIN_WORK // 64, 8), np.float32), np.zeros((64, 8), np.float32)
    ref = np.arange(cuda.AUTO_PROBE_ROWS) % 64
    near_tie = ref.copy()
    near_tie[:10] += 1  # 10 of 131,072 rows: under AUTO_MAX_DISAGREEMENT
    broken = (ref + 1) % 64
    labels = {"simt": ref, "fused-bf16-tiled64": broken, "fused-bf16-tiled": near_tie}
    ms = {"simt": 3.0, "fused-bf16": 2.0, "fused-bf16-tiled": 1.0, "fused-bf16-tiled3": 1.5, "fused-bf16-tiled64": 0.2}
    last = []

    def run(method, *a, **k):
        if method.startswith("gemm"):
            raise _FakeCudaError("CUBLAS_STATUS_NOT_SUPPORTED")
        last.append(method)
        return labels.get(method, ref), None

    fake = _fake_cupy()
    fake.cuda.get_elapsed_time = lambda a, b: ms[last[-1]]
    monkeypatch.setattr(cuda, "_cupy", lambda: fake)
    monkeypatch.setattr(cuda, "_run_method", run)
    with pytest.warns(RuntimeWarning, match=r"^FM assignment method 'fused-bf16-tiled64' gave labels that differ "
                                            r"from 'simt' on 100.0% of 131,072 rows on this GPU; auto will not use it"):
        assert cuda.choose_method(x, c) == "fused-bf16-tiled"


def test_the_environment_fixes_autos_choice(monkeypatch):
    """``DP4TL_FM_METHOD`` makes ``auto`` take that method without measuring (no CuPy call);
    a name that is not a method is a one-line error listing them."""
    monkeypatch.setattr(cuda, "_cupy", lambda: pytest.fail("auto measured despite DP4TL_FM_METHOD"))
    monkeypatch.setenv(cuda.METHOD_ENV, "simt")
    assert cuda.choose_method(np.zeros((10, 4)), np.zeros((3, 4))) == "simt"
    monkeypatch.setenv(cuda.METHOD_ENV, "auto")  # a method, not the measurement again
    with pytest.raises(DP4TLError, match="DP4TL_FM_METHOD='auto' is not an FM assignment method"):
        cuda.choose_method(np.zeros((10, 4)), np.zeros((3, 4)))
    monkeypatch.setenv(cuda.METHOD_ENV, "fastest")
    with pytest.raises(DP4TLError, match="DP4TL_FM_METHOD='fastest' is not an FM assignment method; "
                                         "choose one of simt, gemm-tf32"):
        cuda.choose_method(np.zeros((10, 4)), np.zeros((3, 4)))
