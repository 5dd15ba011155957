"""The fused tensor-core assignment (kernels/fused.py): one BF16 mma.sync GEMM whose epilogue
keeps each row's best candidates, exact distances for unique winners, exact re-check of the
flagged rows. The real CUDA source runs on the CPU under tests/scoring/cuda_emu.h, whose
``mma_bf16_16816`` emulates the PTX instruction warp-collectively with its fragment layout; the
flagged rows go through the emulated GEMM + re-check path, as ``assign_nearest_fused`` sends
them to ``assign_nearest_gemm`` on the GPU."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from ffcv_dp4tl.kernels import cuda, fused

from .helpers import compile_emulator, reference_assign, requires_cuda
from .test_kernels_gemm import assign_emulated, near_tie_data, round_bf16_bits


@pytest.fixture(scope="module")
def emu_fused(tmp_path_factory):
    return compile_emulator("cuda_emu_fused_main.cpp", tmp_path_factory.mktemp("cuda_emu_fused"),
                            source=fused.FUSED_SOURCE, name="fused.cu")


@pytest.fixture(scope="module")
def emu_gemm(tmp_path_factory):
    return compile_emulator("cuda_emu_gemm_main.cpp", tmp_path_factory.mktemp("cuda_emu_gemm_f"))


def run(emu, *args):
    subprocess.run([str(emu), *map(str, args)], check=True, timeout=900)


def prep(emu, wd, a: np.ndarray, rows_pad: int, ld: int):
    n, d = a.shape
    a.astype(np.float32).tofile(wd / "a.bin")
    run(emu, "prep", wd, n, d, ld, rows_pad)
    return (np.fromfile(wd / "out.bin", np.uint16).reshape(rows_pad, ld),
            np.fromfile(wd / "norm2.bin", np.float32), np.fromfile(wd / "dnorm.bin", np.float32))


def kernel_args(kernel: str, ld: int) -> tuple:
    """The driver's kernel choice: a tiled kernel by name, with the shared memory and rows per block
    its launcher gives it (none: the direct kernel)."""
    if kernel not in fused.TILED_KERNELS:
        return ()
    t = fused.TILED_KERNELS[kernel]
    return t.name, fused.tiled_smem_bytes(kernel, ld), t.rows


def fused_emulated(emu, emu_gemm, wd, x, c, bound_scale=1.0, kernel="direct"):
    """assign_nearest_fused step by step: prep x and c, the fused kernel, finalize, re-check."""
    n, d = x.shape
    k = c.shape[0]
    ld, rows_pad = fused.padded(d, fused.FBK), fused.padded(n, fused.ROWS_MULTIPLE)
    k_pad = fused.padded(k, fused.centroid_multiple(kernel))
    xr, xn2, xdn = prep(emu, wd, x, rows_pad, ld)
    cr, cn2, cdn = prep(emu, wd, c, k_pad, ld)
    cabs = fused.centroid_terms(cn2, cdn)
    for name, arr in (("xr", xr), ("cr", cr), ("xn2", xn2), ("xdn", xdn), ("cn2", cn2), ("cabs", cabs), ("cdn", cdn),
                      ("x", x.astype(np.float32)), ("c", c.astype(np.float32))):
        np.ascontiguousarray(arr).tofile(wd / f"{name}.bin")
    scale = np.float32(bound_scale * fused.BOUND_SLACK)
    run(emu, "assign", wd, n, k, ld, d, repr(cuda.accumulation_bound(d)), repr(float(scale)), rows_pad, *kernel_args(kernel, ld))
    run(emu, "final", wd, n, d, k)
    out = {"guess": np.fromfile(wd / "guess.bin", np.int32), "tie": np.fromfile(wd / "tie.bin", np.int32),
           "labels": np.fromfile(wd / "labels.bin", np.int64), "d2": np.fromfile(wd / "d2.bin", np.float32),
           "votes": np.fromfile(wd / "votes.bin", np.uint64), "xr": xr, "cr": cr}
    redo = np.flatnonzero(out["labels"] < 0)
    out["redo"] = redo
    if redo.size:  # assign_nearest_gemm(x[redo], c, "bf16") on the GPU
        sub = assign_emulated(emu_gemm, wd, x[redo], c, "bf16")
        out["labels"][redo], out["d2"][redo] = sub["labels"], sub["d2"]
        out["votes"] = out["votes"] + sub["votes"]
    return out


def test_prep_pad_rounds_once_and_zero_pads(emu_fused, tmp_path, rng):
    a = (rng.standard_normal((70, 37)) * 5).astype(np.float32)
    out, norm2, dnorm = prep(emu_fused, tmp_path, a, 128, 48)
    np.testing.assert_array_equal(out[:70, :37], round_bf16_bits(a))
    assert not out[:70, 37:].any() and not out[70:].any()  # padding is zero: adds nothing to a dot
    np.testing.assert_allclose(norm2, (a.astype(np.float64) ** 2).sum(1), rtol=1e-6)


@pytest.mark.parametrize("kernel", fused.FUSED_KERNEL_KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_labels_equal_float64_with_near_ties(emu_fused, emu_gemm, tmp_path, seed, kernel):
    rng = np.random.default_rng(seed)
    x, c = near_tie_data(rng, n=150, d=45, k=70)  # D, K, N not multiples of the tiles
    x[5, 7] = np.nan
    out = fused_emulated(emu_fused, emu_gemm, tmp_path, x, c, kernel=kernel)
    ok = np.arange(x.shape[0]) != 5
    ref_labels, ref_d2, _ = reference_assign(x[ok], c)
    np.testing.assert_array_equal(out["labels"][ok], ref_labels)  # equal, near-ties included
    np.testing.assert_allclose(out["d2"][ok], ref_d2, rtol=1e-6)
    assert out["labels"][5] == 0 and np.isnan(out["d2"][5])
    assert 41 not in out["labels"] and (out["labels"] == 40).sum() >= 10  # exact duplicate: lower index
    np.testing.assert_array_equal(out["votes"], np.bincount(out["labels"][ok], minlength=c.shape[0]))
    # the crafted near-tie rows were flagged and re-decided; most plain rows were not
    half = x.shape[0] // 2
    assert out["tie"][:half].mean() > 0.9
    assert out["tie"][half + 10:].mean() < 0.5
    # the unflagged rows' winners came from the fused epilogue alone, and are right
    plain = np.flatnonzero(out["tie"] == 0)
    assert plain.size > 30
    np.testing.assert_array_equal(out["guess"][plain], reference_assign(x[plain], c)[0])


@pytest.mark.parametrize(("kernel", "n", "d", "k"), [
    ("direct", 64, 32, 80),
    ("tiled", 64, 32, 80),
    # several D stages (TBK = 32) with a partial last one, and several centroid tiles and row blocks
    ("tiled", 300, 176, 300),
    # the 3-stage ring: fewer stages than the ring (1), exactly 2, and many with a partial last one
    ("tiled3", 64, 32, 80),
    ("tiled3", 64, 48, 80),
    ("tiled3", 300, 176, 300),
    # 64 rows a block (one m16 tile per row warp): several row blocks, tiles and D stages
    ("tiled64", 64, 32, 80),
    ("tiled64", 300, 176, 300),
])
def test_fused_mma_fragment_layout_gives_the_gemm(emu_fused, tmp_path, kernel, n, d, k):
    """Exact small integers: BF16 and FP32 are exact, so the bound is only the accumulation term
    and every row whose best is unique is decided by the GEMM alone, with the right label; a
    fragment element in the wrong lane/register (or, tiled, a shared-memory stage read before it
    landed) would pick wrong centroids here."""
    rng = np.random.default_rng(3)
    c = rng.integers(-8, 9, size=(k, d)).astype(np.float32)
    x = rng.integers(-8, 9, size=(n, d)).astype(np.float32)
    ld, k_pad = fused.padded(d, fused.FBK), fused.padded(k, fused.centroid_multiple(kernel))
    rows_pad = fused.padded(n, fused.ROWS_MULTIPLE)
    xr, xn2, xdn = prep(emu_fused, tmp_path, x, rows_pad, ld)
    cr, cn2, cdn = prep(emu_fused, tmp_path, c, k_pad, ld)
    assert not xdn.any() and not cdn.any()  # stored exactly in the GEMM format
    for name, arr in (("xr", xr), ("cr", cr), ("xn2", xn2), ("xdn", xdn), ("cn2", cn2),
                      ("cabs", fused.centroid_terms(cn2, cdn)), ("cdn", cdn)):
        np.ascontiguousarray(arr).tofile(tmp_path / f"{name}.bin")
    run(emu_fused, "assign", tmp_path, n, k, ld, d, repr(cuda.accumulation_bound(d)), "1.001", rows_pad, *kernel_args(kernel, ld))
    guess, tie = np.fromfile(tmp_path / "guess.bin", np.int32), np.fromfile(tmp_path / "tie.bin", np.int32)
    _, _, dist = reference_assign(x, c)
    srt = np.sort(dist, axis=1)
    unique = srt[:, 1] - srt[:, 0] >= 1  # integer distances: a gap of >= 1 is far above the bound
    assert unique.mean() > 0.8 and not tie[unique].any()
    np.testing.assert_array_equal(guess[unique], dist.argmin(1)[unique])
    assert tie[~unique].all()  # exact ties are always flagged


@pytest.mark.parametrize("kernel", fused.FUSED_KERNEL_KINDS)
def test_fused_bound_is_needed(emu_fused, emu_gemm, tmp_path, rng, kernel):
    """With the bound switched off, BF16 scores alone mislabel near-tie rows."""
    x, c = near_tie_data(rng, n=150, d=45, k=70)
    out = fused_emulated(emu_fused, emu_gemm, tmp_path, x, c, bound_scale=0.0, kernel=kernel)
    ref_labels, _, _ = reference_assign(x, c)
    assert (out["labels"] != ref_labels).sum() > 5


def test_per_centroid_bound_flags_fewer_rows_than_the_max_bound(emu_fused, emu_gemm, tmp_path):
    """Centroids of very different norms: the fused kernel's per-centroid bound re-checks fewer
    rows than the GEMM epilogue's bound built from the largest centroid."""
    rng = np.random.default_rng(5)
    c = rng.standard_normal((64, 48)).astype(np.float32)
    c[:8] *= 30.0  # a few far, large centroids inflate max ||c||
    c[9::2] = c[8::2] + 0.3 * rng.standard_normal((28, 48)).astype(np.float32)  # close pairs
    x = c[8::2][rng.integers(0, 28, size=128)] + 0.05 * rng.standard_normal((128, 48)).astype(np.float32)
    out = fused_emulated(emu_fused, emu_gemm, tmp_path, x, c)
    old = assign_emulated(emu_gemm, tmp_path, x, c, "bf16")
    np.testing.assert_array_equal(out["labels"], reference_assign(x, c)[0])
    assert out["tie"].sum() < 0.25 * (old["ncand"] > 1).sum()


def test_fused_kernel_choice_is_checked_and_methods_name_every_kernel():
    with pytest.raises(ValueError, match="kernel must be one of direct, tiled"):
        fused.assign_nearest_fused(np.zeros((2, 2), np.float32), np.zeros((1, 2), np.float32), kernel="smem")
    assert set(cuda.FUSED_METHODS.values()) == set(fused.FUSED_KERNEL_KINDS)
    assert set(cuda.FUSED_METHODS) <= set(cuda.ASSIGN_METHODS)
    # 128 rows of x~ (D = 512 padded by 8) + two (three) 128 x 40 centroid stages, BF16: fits the
    # opt-in shared memory of sm_80 (166,912 bytes) as well as sm_90 (232,448)
    assert fused.tiled_smem_bytes("tiled", 512) == 2 * (128 * 520 + 2 * 128 * 40) <= 166_912
    assert fused.tiled_smem_bytes("tiled3", 512) == 2 * (128 * 520 + 3 * 128 * 40) <= 166_912
    assert fused.tiled_smem_bytes("tiled64", 512) == 2 * (64 * 520 + 3 * 128 * 40)
    # two tiled64 blocks fit an sm_90 SM (233,472 bytes, 1 KiB reserved per block)
    assert 2 * (fused.tiled_smem_bytes("tiled64", 512) + 1024) <= 233_472
    assert set(fused.TILED_KERNELS) == set(fused.FUSED_KERNEL_KINDS) - {"direct"}
    assert {t.name for t in fused.TILED_KERNELS.values()} < set(fused.FUSED_KERNELS)
    for t in fused.TILED_KERNELS.values():  # every instance is in the source, as the table says
        assert f"TILED_KERNEL({t.name}, {t.stages}, {t.rows // 64}, {t.min_blocks})" in fused.FUSED_SOURCE


# -- real GPU ------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("kernel", fused.FUSED_KERNEL_KINDS)
def test_gpu_fused_assign_equals_float64(rng, kernel):
    import cupy as cp

    x, c = near_tie_data(rng, n=5000, d=96, k=300)
    votes = cp.zeros(c.shape[0], dtype=cp.uint64)
    xd = cp.asarray(x)
    prepared = fused.prepare_rows(xd)
    labels, d2, ties = fused.assign_nearest_fused(xd, cp.asarray(c), prepared=prepared, votes=votes,
                                                  return_ties=True, kernel=kernel)
    ref_labels, ref_d2, _ = reference_assign(x, c)
    np.testing.assert_array_equal(labels.get(), ref_labels)
    np.testing.assert_allclose(d2.get(), ref_d2, rtol=1e-6)
    np.testing.assert_array_equal(votes.get(), np.bincount(ref_labels, minlength=c.shape[0]))
    assert 0 < ties < x.shape[0]


@pytest.mark.parametrize(("kernel", "sm80", "sm90", "two_per_sm90", "sm86"), [
    # (the 128-row kernels' shared memory would let two blocks share an SM for small D; their
    # registers, ~170 a thread, do not: they are compiled for one)
    ("tiled", 560, 816, 352, 304), ("tiled3", 512, 768, 320, 256), ("tiled64", 1056, 1568, 656, 544)])
def test_the_documented_d_limits_of_the_tiled_kernels(kernel, sm80, sm90, two_per_sm90, sm86):
    """The largest D (a multiple of 16) whose block fits the opt-in shared memory of sm_80
    (166,912 bytes) and sm_90 (232,448), and for which two blocks fit an sm_90 SM (233,472, 1 KiB
    reserved each): the numbers fused.py's docstrings and docs/gpu.md give."""
    def largest(fits):
        return max((d for d in range(16, 4096, 16) if fits(fused.tiled_smem_bytes(kernel, d))), default=0)

    assert largest(lambda b: b <= 166_912) == sm80
    assert largest(lambda b: b <= 232_448) == sm90
    assert largest(lambda b: 2 * (b + 1024) <= 233_472) == two_per_sm90
    assert largest(lambda b: b <= 101_376) == sm86  # sm_86/89: RTX 30xx/40xx, A40, L4, L40


class _RecordingKernel:
    """A stand-in for CuPy's RawKernel: records the attributes set and the launch."""

    def __init__(self):
        self.set: dict = {}
        self.launch = None

    def __setattr__(self, name, value):
        if name in ("set", "launch"):
            object.__setattr__(self, name, value)
        else:
            self.set[name] = value

    def __call__(self, grid, block, args, shared_mem=0):
        self.launch = (grid, block, shared_mem)


@pytest.mark.parametrize("kernel", sorted(fused.TILED_KERNELS))
def test_a_tiled_kernel_is_launched_as_its_table_says(monkeypatch, kernel):
    """No GPU (CuPy and the kernel are stand-ins): one block per ``rows`` rows of x~, 256 threads,
    the shared memory its stages and rows need (opted in above 48 KiB), the largest shared-memory
    carve-out where two blocks must share an SM, and a one-line error naming the kernel when the
    GPU allows less shared memory than D needs."""
    from types import SimpleNamespace

    from ffcv_dp4tl.kernels.checks import KernelInputError

    t = fused.TILED_KERNELS[kernel]
    made: dict = {}
    monkeypatch.setattr(fused, "_cupy", lambda: SimpleNamespace(cuda=SimpleNamespace(Device=lambda: SimpleNamespace(id=0))))
    monkeypatch.setattr(fused, "_kernel", lambda name: made.setdefault(name, _RecordingKernel()))
    monkeypatch.setattr(fused, "_smem_optin", lambda device: 232_448)  # sm_90
    fused._launch_tiled(kernel, ("args",), 1024, 512)
    k = made[t.name]
    smem = fused.tiled_smem_bytes(kernel, 512)
    assert k.launch == ((1024 // t.rows,), (fused.TILED_THREADS,), smem)
    assert k.set.get("max_dynamic_shared_size_bytes") == smem
    assert k.set.get("preferred_shared_memory_carveout") == (100 if t.min_blocks > 1 else None)
    monkeypatch.setattr(fused, "_smem_optin", lambda device: 101_376)  # sm_86/89
    if smem > 101_376:
        with pytest.raises(KernelInputError, match=rf"^the {kernel} fused kernel keeps {t.rows} rows of x in shared "
                                                    rf"memory: D = 512 needs {smem} bytes, this GPU allows 101376; "
                                                    "use method 'fused-bf16'"):
            fused._launch_tiled(kernel, ("args",), 1024, 512)
