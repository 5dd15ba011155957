"""CUDA implementations of the FM kernels (CuPy ``RawModule``), same signatures as ``cpu.py``.

This module imports CuPy only inside functions, so it can be imported (and its CUDA source
inspected or compiled by tests) on machines without CuPy or a GPU.

Nearest-centroid assignment is one fused kernel, ``assign_partial``: every 256-thread block
owns 64 rows of ``x`` and a range of centroids. It walks that range in 64-centroid tiles,
computing the 64 x 64 tile of ``x . c`` as a small shared-memory GEMM (16-wide slices of D;
each thread a 4 x 4 register micro-tile), turns it into the partial distance
``||c||^2 - 2 x.c`` and keeps a running (min, argmin) per row in registers. The 16 threads
that share rows reduce with warp shuffles, and one ``atomicMin`` per row publishes the result
as a packed 64-bit key ``(order-preserving bits of the float distance) << 32 | centroid id``.
Comparing packed keys orders by distance first and centroid id second, so exact ties go to
the lowest centroid index on every path (within a thread, across threads, across blocks),
independent of scheduling: the same rule as the CPU oracle. Splitting the centroids over
``gridDim.y`` keeps the GPU busy when N is small (e.g. a few thousand target images).
``assign_finalize`` unpacks keys and adds ``||x||^2``. The N x K matrix is never stored.

**Tensor-core path** (``assign_nearest_gemm``, methods ``gemm-tf32`` / ``gemm-bf16``): the FP32
SIMT kernel above cannot reach tensor-core speed, so rows are processed in chunks whose FP32
score block (rows x K) stays in L2: ``prep_rows_*`` rounds x and the centroids to TF32/BF16 and
measures each row's rounding error exactly, cuBLAS ``GemmEx`` computes ``x~ . c~`` on tensor
cores, and ``gemm_epilogue`` (one warp per row) adds the norms, takes the approximate argmin,
and re-decides every centroid within twice a rigorous per-row error bound of it with exact
distances (FP64 sums of ``(x - c)^2``). Labels are then those of a float64 reference (exact
ties: lowest index) and distances exact, at GEMM speed; only rows with near-ties pay for the
re-check (tests/scoring/test_kernels_gemm.py shows the bound is needed and sufficient).
``assign(method="auto")`` times each method once per problem size and keeps the fastest.

``segment_sum`` (centroid update) and ``hist_*`` use float64 / uint64 ``atomicAdd``: counts
are exact, float64 sums differ from a sequential sum only by float64 rounding (the order of
atomics is not deterministic). ``segment_sum_sorted`` (the default update) sums rows sorted by
label in registers and issues one atomic per label change instead of one per element.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Any

import numpy as np

from ..errors import DP4TLError
from .checks import (
    array_module,
    as_float32_matrix,
    as_labels,
    as_weights,
    check_finite_centroids,
    check_k,
    check_same_dims,
)
from .cuda_source import BM, BN, KEY_NONE, SOURCE, THREADS


def _cupy():
    import cupy

    return cupy


@functools.lru_cache(maxsize=None)
def _module():
    # RawModule compiles lazily (NVRTC) and caches per device and on disk.
    return _cupy().RawModule(code=SOURCE)


def _kernel(name: str):
    return _module().get_function(name)


def _sm_count() -> int:
    return _sm_count_of(_cupy().cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _sm_count_of(device_id: int) -> int:
    cp = _cupy()
    return int(cp.cuda.Device(device_id).attributes.get("MultiProcessorCount", 100))


def assign_launch_config(n: int, k: int, sm_count: int, blocks_per_sm: int = 4) -> tuple[int, int, int]:
    """Grid for ``assign_partial``: ``(grid_x, splits, k_per_split)``.

    Rows give ``ceil(n / 64)`` blocks; when that is fewer than ``blocks_per_sm`` blocks per
    SM, the centroids are split over ``gridDim.y`` (whole 64-centroid tiles per split, no
    empty split) so small target sets still fill the GPU.
    """
    grid_x = math.ceil(n / BM)
    tiles = math.ceil(k / BN)
    want = sm_count * blocks_per_sm
    splits = min(tiles, max(1, math.ceil(want / grid_x)))
    tiles_per_split = math.ceil(tiles / splits)
    splits = math.ceil(tiles / tiles_per_split)
    return grid_x, splits, tiles_per_split * BN


def _row_sq_norms(a):
    cp = _cupy()
    n, d = a.shape
    out = cp.empty(n, dtype=cp.float32)
    warps = THREADS // 32
    _kernel("row_sq_norms")((math.ceil(n / warps),), (THREADS,), (a, out, _i32(n), _i32(d)))
    return out


def _i32(v: int) -> np.int32:
    return np.int32(v)


def _i64(v: int) -> np.int64:
    return np.int64(v)


def _to_device_matrix(a: Any, name: str):
    cp = _cupy()
    return cp.asarray(as_float32_matrix(a, name))


def _assign_inputs(x: Any, centroids: Any) -> tuple[Any, Any]:
    """Both assignment paths' inputs: C-contiguous float32 on the device, same D, finite centroids."""
    x = _to_device_matrix(x, "x")
    centroids = _to_device_matrix(centroids, "centroids")
    check_same_dims(x, centroids)
    check_finite_centroids(centroids)
    return x, centroids


def assign_nearest(x: Any, centroids: Any) -> tuple[Any, Any]:
    """Nearest centroid per row on the GPU: ``(labels int64 (N,), min_dist2 float32 (N,))``.

    Inputs may be NumPy (copied to the device) or CuPy arrays; outputs are CuPy arrays.
    Exact ties go to the lowest centroid index. Distances use float32 products with float32
    accumulation over D (fmaf), so near-ties within float32 rounding may differ from the
    float64 CPU oracle.
    """
    cp = _cupy()
    x, centroids = _assign_inputs(x, centroids)
    n, d = x.shape
    k = centroids.shape[0]
    c_norm = _row_sq_norms(centroids)
    x_norm = _row_sq_norms(x)
    keys = cp.full(n, np.uint64(KEY_NONE), dtype=cp.uint64)
    grid_x, splits, k_per_split = assign_launch_config(n, k, _sm_count())
    _kernel("assign_partial")(
        (grid_x, splits),
        (THREADS,),
        (x, centroids, c_norm, keys, _i32(n), _i32(k), _i32(d), _i32(k_per_split)),
    )
    labels = cp.empty(n, dtype=cp.int64)
    min_d2 = cp.empty(n, dtype=cp.float32)
    _kernel("assign_finalize")((math.ceil(n / THREADS),), (THREADS,), (keys, x_norm, labels, min_d2, _i32(n)))
    return labels, min_d2


def update_centroids(x: Any, labels: Any, k: int) -> tuple[Any, Any]:
    """Per-cluster sums (float64 (K, D)) and counts (int64 (K,)) on the GPU, via atomics."""
    cp = _cupy()
    x = _to_device_matrix(x, "x")
    k = check_k(k)
    labels = cp.asarray(as_labels(labels, k, n=x.shape[0]))
    n, d = x.shape
    sums = cp.zeros((k, d), dtype=cp.float64)
    counts = cp.zeros(k, dtype=cp.uint64)
    block = 128 if d <= 128 else 256
    grid = min(n, _sm_count() * 32)
    _kernel("segment_sum")((grid,), (block,), (x, labels, sums, counts, _i32(n), _i32(d)))
    return sums, counts.view(cp.int64)


def histogram(labels: Any, k: int, weights: Any = None) -> Any:
    """Count (int64) or weight-sum (float64) of each id in ``[0, k)`` on the GPU."""
    cp = _cupy()
    k = check_k(k)
    labels = cp.asarray(as_labels(labels, k))
    n = labels.shape[0]
    grid = (max(1, min(math.ceil(n / THREADS), _sm_count() * 8)),)
    if weights is None:
        out = cp.zeros(k, dtype=cp.uint64)
        if n:
            _kernel("hist_count")(grid, (THREADS,), (labels, out, _i64(n)))
        return out.view(cp.int64)
    weights = cp.asarray(as_weights(weights, n))
    out = cp.zeros(k, dtype=cp.float64)
    if n:
        _kernel("hist_weighted")(grid, (THREADS,), (labels, weights, out, _i64(n)))
    return out


# ---------------------------------------------------------------------------------------------
# Tensor-core assignment: row-chunked cuBLAS GEMM + gemm_epilogue, and the method chooser.
# ---------------------------------------------------------------------------------------------
#: Assignment methods on CUDA. ``simt`` is the fused kernel above; ``gemm-*`` round the inputs to
#: TF32/BF16, run cuBLAS on tensor cores and decide near-ties exactly in ``gemm_epilogue``;
#: ``fused-bf16`` (:mod:`.fused`) is one mma.sync GEMM whose epilogue keeps each row's best
#: candidates (no N x K matrix) and re-decides only the flagged rows with ``gemm-bf16``;
#: ``fused-bf16-tiled`` / ``-tiled3`` / ``-tiled64`` are the same decision with operands staged
#: through shared memory (:data:`.fused.TILED_KERNELS`: 2 / 3 cp.async stages, 128 / 64 rows a block).
FUSED_METHODS = {"fused-bf16": "direct", "fused-bf16-tiled": "tiled", "fused-bf16-tiled3": "tiled3",
                 "fused-bf16-tiled64": "tiled64"}
ASSIGN_METHODS = ("auto", "simt", "gemm-tf32", "gemm-bf16", *FUSED_METHODS)
#: Bytes of the (rows x K) FP32 score block per GEMM chunk. Measured on an H100 (BENCHMARKS.md,
#: GPU check; 1.28M x 512, K=2000): 8 / 32 / 128 MiB chunks took 112 / 33 / 21 ms (BF16), so the
#: per-chunk launch cost outweighs keeping the block in L2; 128 MiB is the fastest size measured.
GEMM_CHUNK_BYTES = 128 * 2**20
#: Rows used to time each method once when ``method="auto"`` (see :func:`choose_method`).
AUTO_PROBE_ROWS = 131_072
#: Below this many row x centroid pairs ``auto`` takes ``simt`` without measuring.
AUTO_MIN_WORK = 2**22
#: ``auto`` never takes a method whose labels differ from ``simt``'s on more than this fraction of
#: the probe rows. The tensor-core methods equal a float64 reference and ``simt`` (FP32) may differ
#: from it only on near-ties, a tiny fraction; a kernel that is wrong on this GPU (a layout or
#: synchronisation bug the CPU emulator could not show) differs on most rows, and is skipped.
AUTO_MAX_DISAGREEMENT = 1e-3

_CUDA_R_32F, _CUDA_R_16BF = 0, 14
_COMPUTE_32F_FAST_16BF, _COMPUTE_32F_FAST_TF32 = 75, 77
_GEMM_DEFAULT = -1
_OP_N, _OP_T = 0, 1
_WARPS = THREADS // 32


def _cublas():
    """CuPy's thin cuBLAS binding (its module moved between CuPy releases)."""
    try:
        from cupy_backends.cuda.libs import cublas
    except ImportError:  # pragma: no cover - depends on the CuPy release
        from cupy.cuda import cublas
    return cublas


def gemm_chunk_rows(n: int, k: int, chunk_bytes: int | None = None) -> int:
    """Rows per GEMM chunk so one FP32 (rows x k) score block is about ``chunk_bytes``."""
    b = GEMM_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    rows = max(256, (b // (4 * k)) // 256 * 256)
    return max(1, min(n, rows))


def accumulation_bound(d: int) -> float:
    """Relative bound on FP32 accumulation of ``d`` exact products (``d * 2^-23``: the textbook
    ``d * u`` with ``u = 2^-24``, doubled to cover tensor cores that truncate instead of round)."""
    return d * 2.0**-23


def bound_scalars(c_norm2: Any, c_dnorm: Any) -> tuple[float, float, float]:
    """``(max ||c~||, max ||c - c~||, max ||c||^2)`` over the centroids: the centroid side of the
    epilogue's error bound (``||c~|| <= ||c|| + ||c - c~||``). One host sync (K values, not N)."""
    xp = array_module(c_norm2)
    c_abs = xp.sqrt(c_norm2.astype(xp.float64)) + c_dnorm
    vals = xp.stack([c_abs.max(), c_dnorm.astype(xp.float64).max(), c_norm2.astype(xp.float64).max()])
    return tuple(float(v) for v in (vals.get() if hasattr(vals, "get") else vals))


def _prep_rows(a, precision: str):
    """(rounded copy for the GEMM, ||a||^2 float32, ||a - rounded|| float32) of every row."""
    cp = _cupy()
    n, d = a.shape
    out = cp.empty((n, d), dtype=cp.float32 if precision == "tf32" else cp.uint16)
    norm2 = cp.empty(n, dtype=cp.float32)
    dnorm = cp.empty(n, dtype=cp.float32)
    _kernel(f"prep_rows_{precision}")((math.ceil(n / _WARPS),), (THREADS,), (a, out, norm2, dnorm, _i32(n), _i32(d)))
    return out, norm2, dnorm


def _gemm_into(scores, xr, cr, precision: str) -> None:
    """``scores (rows, K) = xr (rows, D) @ cr (K, D)^T`` in FP32 on tensor cores (cuBLAS GemmEx).

    Row-major trick: cuBLAS is column-major, so it computes ``scores^T = cr . xr^T`` with
    ``cr`` read transposed; no copy of either operand is made.
    """
    cp = _cupy()
    cublas = _cublas()
    rows, d = xr.shape
    k = cr.shape[0]
    handle = cp.cuda.device.get_cublas_handle()
    dtype = _CUDA_R_32F if precision == "tf32" else _CUDA_R_16BF
    compute = _COMPUTE_32F_FAST_TF32 if precision == "tf32" else _COMPUTE_32F_FAST_16BF
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    mode = cublas.getPointerMode(handle)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    try:
        cublas.gemmEx(handle, _OP_T, _OP_N, k, rows, d, one.ctypes.data, cr.data.ptr, dtype, d,
                      xr.data.ptr, dtype, d, zero.ctypes.data, scores.data.ptr, _CUDA_R_32F, k,
                      compute, _GEMM_DEFAULT)
    finally:
        cublas.setPointerMode(handle, mode)


def assign_nearest_gemm(x: Any, centroids: Any, *, precision: str = "tf32", chunk_rows: int | None = None,
                        votes: Any = None, bound_scale: float = 1.0, return_candidates: bool = False):
    """Nearest centroid per row via tensor-core GEMM + exact re-check of near-ties.

    Same contract as :func:`assign_nearest` (int64 labels, float32 squared distances, exact ties
    to the lowest index, NaN distance for non-finite rows) and *tighter* results: labels equal a
    float64 reference except exact float64 ties, and distances are exact (FP64 sums of
    ``(x - c)^2``), whatever ``precision`` the GEMM ran in. ``votes`` (CuPy uint64/int64 (K,),
    optional) is incremented once per finite row at its label. ``bound_scale`` multiplies the
    error bound; anything but 1.0 is for tests that show the re-check is needed.
    ``return_candidates`` adds the per-row count of centroids decided exactly.
    """
    if precision not in ("tf32", "bf16"):
        raise ValueError(f"precision must be 'tf32' or 'bf16', got {precision!r}")
    cp = _cupy()
    x, centroids = _assign_inputs(x, centroids)
    n, d = x.shape
    k = centroids.shape[0]
    cr, c_norm2, c_dnorm = _prep_rows(centroids, precision)
    cmax, dcmax, cnmax = bound_scalars(c_norm2, c_dnorm)
    xr, x_norm2, x_dnorm = _prep_rows(x, precision)
    labels = cp.empty(n, dtype=cp.int64)
    min_d2 = cp.empty(n, dtype=cp.float32)
    ncand = cp.empty(n, dtype=cp.int32)
    vote_ptr = 0 if votes is None else votes
    rows = chunk_rows or gemm_chunk_rows(n, k)
    scores = cp.empty((min(rows, n), k), dtype=cp.float32)
    gamma = accumulation_bound(d)
    epilogue = _kernel("gemm_epilogue")
    for start in range(0, n, rows):
        m = min(rows, n - start)
        sc = scores[:m]
        _gemm_into(sc, xr[start:start + m], cr, precision)
        epilogue((math.ceil(m / _WARPS),), (THREADS,),
                 (sc, _i32(k), c_norm2, x[start:], centroids, x_norm2[start:], x_dnorm[start:],
                  labels[start:], min_d2[start:], ncand[start:], vote_ptr, _i32(m), _i32(k), _i32(d),
                  np.float32(cmax), np.float32(dcmax), np.float32(cnmax), np.float32(gamma),
                  np.float32(bound_scale)))
    if return_candidates:
        return labels, min_d2, ncand
    return labels, min_d2


def update_centroids_sorted(x: Any, labels: Any, k: int, rows_per_block: int = 256) -> tuple[Any, Any]:
    """Per-cluster sums/counts from rows sorted by label (few atomics; see ``segment_sum_sorted``)."""
    cp = _cupy()
    x = _to_device_matrix(x, "x")
    k = check_k(k)
    labels = cp.asarray(as_labels(labels, k, n=x.shape[0]))
    n, d = x.shape
    order = cp.argsort(labels)
    sorted_labels = labels[order]
    sums = cp.zeros((k, d), dtype=cp.float64)
    grid = math.ceil(n / rows_per_block)
    block = 128 if d <= 128 else 256
    _kernel("segment_sum_sorted")((grid,), (block,), (x, order, sorted_labels, sums, _i64(n), _i32(d),
                                                      _i32(rows_per_block)))
    return sums, histogram(labels, k)


_METHOD_CACHE: dict[tuple[int, int, int, int], str] = {}


def _n_bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _run_method(method: str, x, centroids, prepared=None):
    if method == "simt":
        return assign_nearest(x, centroids)
    if method in FUSED_METHODS:
        from .fused import assign_nearest_fused

        return assign_nearest_fused(x, centroids, prepared=prepared, kernel=FUSED_METHODS[method])
    return assign_nearest_gemm(x, centroids, precision=method.split("-")[1])


def assigner(x: Any, method: str = "auto"):
    """``centroids -> (labels, min_d2)`` for a fixed ``x`` (k-means: one ``x``, many centroid
    sets). The method is chosen on the first call (``auto``: measured, as :func:`assign`); the
    fused method then rounds ``x`` to BF16 once (:func:`.fused.prepare_rows`) for every call."""
    if method not in ASSIGN_METHODS:
        raise ValueError(f"method must be one of {', '.join(ASSIGN_METHODS)}, got {method!r}")
    x = _to_device_matrix(x, "x")
    state: dict[str, Any] = {}

    def run(centroids):
        xx, c = _assign_inputs(x, centroids)
        if "method" not in state:
            state["method"] = choose_method(xx, c) if method == "auto" else method
            if state["method"] in FUSED_METHODS:
                from .fused import prepare_rows

                state["prepared"] = prepare_rows(xx)
        return _run_method(state["method"], xx, c, state.get("prepared"))

    run.x = x  # the device copy (callers keep using it instead of copying x again)
    return run


#: Environment variable that fixes the method ``auto`` takes (no measurement), e.g. ``simt``
#: after a fused kernel faulted on a GPU it was never run on.
METHOD_ENV = "DP4TL_FM_METHOD"

#: Words of CUDA errors after which the process's CUDA context is unusable (a kernel fault:
#: every later call fails too, with unrelated messages), as CuPy's driver/runtime errors spell them.
_FAULTS = ("illegal", "misaligned", "launch_failed", "launch failure", "unspecified launch",
           "hardware_stack", "hardware stack", "invalid_pc", "invalid program counter",
           "address_space", "address space", "assert")


def is_fault(error: BaseException) -> bool:
    """Whether ``error`` is a CUDA kernel fault that leaves the context unusable."""
    return (type(error).__module__.startswith("cupy")
            and any(w in str(error).lower() for w in _FAULTS))


def forced_method() -> str | None:
    """The method ``$DP4TL_FM_METHOD`` names (checked), or None when it is unset."""
    name = os.environ.get(METHOD_ENV, "").strip()
    if not name:
        return None
    if name not in ASSIGN_METHODS[1:]:
        raise DP4TLError(f"{METHOD_ENV}={name!r} is not an FM assignment method; choose one of "
                         f"{', '.join(ASSIGN_METHODS[1:])} (or unset it to measure)")
    return name


def choose_method(x: Any, centroids: Any) -> str:
    """The fastest assignment method for this problem size on this GPU, measured once.

    Times every method on the first ``AUTO_PROBE_ROWS`` rows (one warm-up, then the best of
    two CUDA-event timings) and caches the winner per (device, power-of-two N, K, D). Tiny
    problems take ``simt`` unmeasured; ``$DP4TL_FM_METHOD`` fixes the choice. A method that
    fails (e.g. no cuBLAS GemmEx in this CuPy) is skipped, so ``auto`` returns a working
    method; one that faults (illegal address, ...) ends the run with a one-line error naming
    it, since nothing else can run on that CUDA context afterwards. One whose labels differ from
    ``simt``'s on more than ``AUTO_MAX_DISAGREEMENT`` of the probe rows is skipped with a warning
    naming it: a kernel that is wrong on this GPU is never chosen for being fast.
    """
    forced = forced_method()
    if forced is not None:
        return forced
    cp = _cupy()
    n, d = x.shape
    k = centroids.shape[0]
    if n * k < AUTO_MIN_WORK:
        return "simt"
    key = (cp.cuda.Device().id, _n_bucket(n), k, d)
    if key in _METHOD_CACHE:
        return _METHOD_CACHE[key]
    probe = x[: min(n, AUTO_PROBE_ROWS)]
    best, best_t = "simt", float("inf")
    reference = None  # simt's labels on the probe (simt is measured first)
    for method in ASSIGN_METHODS[1:]:
        try:
            labels = _run_method(method, probe, centroids)[0]
            if method == "simt":
                reference = labels
            elif reference is not None and (wrong := float((labels != reference).mean())) > AUTO_MAX_DISAGREEMENT:
                warnings.warn(f"FM assignment method {method!r} gave labels that differ from 'simt' on "
                              f"{wrong:.1%} of {len(labels):,} rows on this GPU; auto will not use it "
                              f"(please report it, with `dp4tl env`)", RuntimeWarning, stacklevel=2)
                continue
            times = []
            for _ in range(2):
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                _run_method(method, probe, centroids)
                end.record()
                end.synchronize()
                times.append(cp.cuda.get_elapsed_time(start, end))
        except Exception as e:  # noqa: BLE001 - a method unavailable here is simply not chosen
            if is_fault(e):
                raise DP4TLError(
                    f"FM assignment method {method!r} faulted on this GPU "
                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); the CUDA context "
                    f"cannot be used after a fault: rerun with {METHOD_ENV}=simt (or another of "
                    f"{', '.join(ASSIGN_METHODS[1:])}) and report it") from None
            continue
        if min(times) < best_t:
            best, best_t = method, min(times)
    _METHOD_CACHE[key] = best
    return best


def assign(x: Any, centroids: Any, method: str = "auto") -> tuple[Any, Any]:
    """Dispatch :func:`assign_nearest` (``simt``) or :func:`assign_nearest_gemm` by ``method``."""
    if method not in ASSIGN_METHODS:
        raise ValueError(f"method must be one of {', '.join(ASSIGN_METHODS)}, got {method!r}")
    x, centroids = _assign_inputs(x, centroids)
    if method == "auto":
        method = choose_method(x, centroids)
    return _run_method(method, x, centroids)
