"""What this machine offers a run, as ``(what, value)`` rows: ``dp4tl env`` prints them, and the
GPU check's ``env`` stage (``benchmarks/bench_gpu.py env``) publishes them.

Why one place: on a cluster node the first questions are the same every time. Which versions
are installed? Does ffcv import? Which GPUs does torch see? How many cores may the loaders use
here (affinity, Slurm, torchrun's ranks, the cores kept free)? Where would ``decode="auto"``
decode? Do our CUDA kernels compile through NVRTC, and does nvJPEG decode? A row that fails
says why; nothing here raises.

It imports the data layer and the kernels (not the pipeline), and only when asked.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import time

#: the packages whose versions a report lists, in this order
PACKAGES = ("torch", "torchvision", "numpy", "numba", "cupy", "cv2", "ffcv", "webdataset")

Row = tuple[str, str]


def _failed(e: BaseException) -> str:
    return f"**failed**: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def versions() -> list[Row]:
    """Python, glibc and each of :data:`PACKAGES` (the installed distribution's version: ffcv
    1.0.2's ``__version__`` still says 0.0.3rc1), or why it does not import."""
    rows: list[Row] = [("python", platform.python_version()), ("glibc", " ".join(platform.libc_ver()))]
    for mod in PACKAGES:
        try:
            m = importlib.import_module(mod)
            try:
                version = importlib.metadata.version({"cv2": "opencv-python"}.get(mod, mod))
            except importlib.metadata.PackageNotFoundError:
                version = str(getattr(m, "__version__", "imported"))
            rows.append((mod, version))
        except ModuleNotFoundError as e:
            rows.append((mod, "not installed" if e.name == mod else f"**import failed**: {e}"))
        except Exception as e:  # noqa: BLE001 - the point is to report it
            rows.append((mod, f"**import failed**: {type(e).__name__}: {e}"))
    try:
        importlib.import_module("ffcv.loader")
        rows.append(("ffcv.loader", "imports"))
    except Exception as e:  # noqa: BLE001
        rows.append(("ffcv.loader", f"**import failed**: {type(e).__name__}: {e}"))
    return rows


def devices() -> list[Row]:
    """The GPUs torch sees (name, memory, SMs), its CUDA and cuDNN versions."""
    import torch

    if not torch.cuda.is_available():
        return [("gpu", "none visible to torch")]
    rows: list[Row] = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        rows.append((f"gpu {i}" if torch.cuda.device_count() > 1 else "gpu",
                     f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"))
    rows += [("torch CUDA", str(torch.version.cuda)), ("cuDNN", str(torch.backends.cudnn.version()))]
    return rows


def loading() -> list[Row]:
    """What the loaders get here: cores, workers, where ``decode="auto"`` decodes, file limits."""
    import torch

    from .data.loaders import AUTO_GPU_DECODE_MAX_CORES, resolve_decode
    from .data.resources import RESERVED_ENV, available_cores, loader_cores, reserved_cores, usable_workers

    rows: list[Row] = [("cpu cores", f"{os.cpu_count()} on the machine, {available_cores()} for this process "
                                     "(affinity: Slurm, containers)")]
    try:
        cores = loader_cores()
        free = reserved_cores(cores)
        rows.append(("loader workers", f"at most {usable_workers(cores)}: {cores} cores for this process's "
                                       f"loaders, {free} kept free for the training thread "
                                       f"(${RESERVED_ENV} sets that)"))
    except Exception as e:  # noqa: BLE001 - e.g. a bad $DP4TL_RESERVED_CORES
        rows.append(("loader workers", _failed(e)))
    if torch.cuda.is_available():
        per_gpu = available_cores() / torch.cuda.device_count()
        where = resolve_decode("auto", "cuda:0")
        rows.append(("decode=auto", f"{where} ({per_gpu:.0f} cores per GPU; the GPU decodes below "
                                    f"{AUTO_GPU_DECODE_MAX_CORES} when nvJPEG works)"))
    else:
        rows.append(("decode=auto", "cpu (no GPU)"))
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        rows.append(("open files limit", f"{soft} (hard {hard}); a loader raises it up to the hard limit"))
    except (ImportError, OSError, ValueError) as e:
        rows.append(("open files limit", _failed(e)))
    if os.path.isdir("/dev/shm"):
        free = shutil.disk_usage("/dev/shm").free
        rows.append(("/dev/shm free", f"{free / 2**30:.1f} GiB (ffcv's beton writer and data-loader workers use it)"))
    return rows


def kernels() -> list[Row]:
    """Our CUDA kernels compiled through NVRTC (the FM kernels, then the fused mma ones, which
    need sm_80+ and so have their own row), ``kernels.cuda_available()``, and a batched nvJPEG
    decode on the device (or on the CPU when no GPU is visible)."""
    import torch

    rows: list[Row] = []
    try:
        import cupy as cp

        from . import kernels as k
        from .kernels import cuda as kcuda
        from .kernels.cuda_source import KERNEL_NAMES

        rows.append(("CUDA driver / runtime (CuPy)",
                     f"{cp.cuda.runtime.driverGetVersion()} / {cp.cuda.runtime.runtimeGetVersion()}"))
        t0 = time.perf_counter()
        mod = kcuda._module()
        for name in KERNEL_NAMES:
            mod.get_function(name)
        rows.append(("FM kernels (NVRTC compile)", f"{len(KERNEL_NAMES)} kernels in {time.perf_counter() - t0:.1f} s"))
        rows.append(("kernels.cuda_available()", str(k.cuda_available())))
        try:  # own row: mma.sync needs sm_80+, and a failure must not hide the others
            from .kernels import fused as kfused

            t0 = time.perf_counter()
            fmod = kfused._module()
            for name in kfused.FUSED_KERNELS:
                fmod.get_function(name)
            rows.append(("fused BF16 mma kernels (NVRTC)",
                         f"{len(kfused.FUSED_KERNELS)} kernels in {time.perf_counter() - t0:.1f} s"))
        except Exception as e:  # noqa: BLE001
            rows.append(("fused BF16 mma kernels", _failed(e)))
    except ModuleNotFoundError as e:
        rows.append(("CuPy kernels", f"none ({e.name} not installed): FM runs on the CPU (numba)"))
    except Exception as e:  # noqa: BLE001 - no driver, no GPU: FM runs on the CPU (numba)
        rows.append(("CuPy kernels", f"{_failed(e)}; FM runs on the CPU (numba)"))
    try:
        from torchvision.io import decode_jpeg, encode_jpeg

        img = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
        out = decode_jpeg([encode_jpeg(img)], device="cuda" if torch.cuda.is_available() else "cpu")
        rows.append(("torchvision decode_jpeg (batched, device)", f"ok, {tuple(out[0].shape)} on {out[0].device}"))
    except Exception as e:  # noqa: BLE001
        rows.append(("torchvision decode_jpeg", _failed(e)))
    return rows


def report(check_kernels: bool = True) -> list[Row]:
    """Every row above, in that order; ``check_kernels=False`` skips the compiles (seconds)."""
    return [*versions(), *devices(), *loading(), *(kernels() if check_kernels else [])]


def as_text(rows: list[Row]) -> str:
    """Aligned ``what  value`` lines (the Markdown emphasis of failures dropped)."""
    width = max((len(a) for a, _ in rows), default=0)
    return "\n".join(f"{a:<{width}}  {b.replace('**', '')}" for a, b in rows)


def as_markdown(rows: list[Row]) -> str:
    return "\n".join(["| what | value |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)])


__all__ = ["PACKAGES", "as_markdown", "as_text", "devices", "kernels", "loading", "report", "versions"]
