"""What this machine offers a run, as ``(what, value)`` rows: ``dp4tl env`` prints them, and the
GPU check's ``env`` stage (``benchmarks/bench_gpu.py env``) publishes them.

Why one place: on a cluster node the first questions are the same every time. Which versions
are installed? Does ffcv import? Which GPUs does torch see? What CPU is it (SMT, clock)? How
many cores may the loaders use here (affinity, Slurm, a container's CPU quota, torchrun's ranks,
the cores kept free), and which numba threading layer runs ffcv's loops? Where would
``decode="auto"`` decode? Do our CUDA kernels compile through NVRTC, and does nvJPEG decode? A
row that fails says why; nothing here raises.

It imports the data layer and the kernels (not the pipeline), and only when asked.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

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


def _cpuinfo(path: str | Path = "/proc/cpuinfo") -> list[dict[str, str]]:
    """``/proc/cpuinfo``, one ``{field: value}`` per logical CPU; [] where it cannot be read."""
    try:
        text = Path(path).read_text()
    except (OSError, ValueError):
        return []
    cpus = []
    for block in text.split("\n\n"):
        fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in block.splitlines())}
        if "processor" in fields:  # (ARM adds a block about the board)
            cpus.append(fields)
    return cpus


def _topology(cpus: list[dict[str, str]],
              sysfs: str | Path = "/sys/devices/system/cpu") -> tuple[int, int, int] | None:
    """(logical CPUs, physical cores, most threads on one core) as the kernel shows them: the CPUs
    that list the same ``thread_siblings_list`` share a core; else /proc/cpuinfo's
    ``(physical id, core id)`` pairs. None where neither is there (a VM shows its vCPUs' topology)."""
    siblings = []
    for f in Path(sysfs).glob("cpu[0-9]*/topology/thread_siblings_list"):
        try:
            siblings.append(f.read_text().strip())
        except OSError:
            pass
    if not siblings and cpus and all("core id" in c for c in cpus):
        siblings = [f"{c.get('physical id')}/{c['core id']}" for c in cpus]
    if not siblings:
        return None
    per_core = Counter(siblings)
    return len(siblings), len(per_core), max(per_core.values())


def _cpu(cpuinfo: str | Path = "/proc/cpuinfo", sysfs: str | Path = "/sys/devices/system/cpu") -> str:
    """The CPU model, logical CPUs against physical cores (two SMT threads of a core decode at
    well under twice one thread's rate), the current clock (median over CPUs) and the cgroup CPU
    quota: what makes one loader worker decode slower here than on another machine."""
    from .cpus import cpu_quota

    cpus = _cpuinfo(cpuinfo)
    model = next((c["model name"] for c in cpus if c.get("model name")), "") \
        or platform.processor() or platform.machine()
    topo = _topology(cpus, sysfs)
    if topo is None:
        parts = [f"{model}: {os.cpu_count()} logical CPUs (cores unknown)"]
    else:
        logical, cores, threads = topo
        smt = f"SMT: {threads} threads per core" if threads > 1 else "no SMT"
        parts = [f"{model}: {logical} logical CPUs on {cores} cores ({smt})"]
    mhz = [float(c["cpu MHz"]) for c in cpus if c.get("cpu MHz", "").replace(".", "", 1).isdigit()]
    if mhz:
        parts.append(f"{statistics.median(mhz):.0f} MHz now (median over CPUs)")
    quota = cpu_quota()
    parts.append("no CPU quota" if quota is None else f"CPU quota: {quota:.1f} CPUs (cgroup)")
    return ", ".join(parts)


def _cpu_kernels(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The instruction set torch's CPU kernels dispatch to (AVX2, AVX512, ...) and the CPU's
    family and model: CPU training repeats bit for bit only where these agree (the same tiny
    pipeline gave LP 98.6 % on one 2-core machine and 100 % on another whose `cpu` row read the
    same "AMD EPYC"; README, Determinism)."""
    import torch

    cpus = _cpuinfo(cpuinfo)
    first = cpus[0] if cpus else {}
    ident = ", ".join(f"{key} {first[key]}" for key in ("cpu family", "model", "stepping")
                      if first.get(key))
    return (f"torch dispatches to {torch.backends.cpu.get_cpu_capability()}"
            + (f"; {ident}" if ident else "")
            + " (CPU results repeat where these agree, with the same torch and thread counts)")


def _numba_threading() -> str:
    """The threading layer numba runs ffcv's parallel loops on (its workers are numba threads):
    the ``THREADING_LAYER`` setting, and the layer a trivial parallel function then loads (numba
    picks one once per process: TBB, OpenMP, or its own ``workqueue`` when neither loads)."""
    import numba

    @numba.njit(parallel=True)
    def total(n):  # pragma: no cover - compiled
        s = 0
        for i in numba.prange(n):
            s += i
        return s

    setting = numba.config.THREADING_LAYER
    total(8)
    layer = numba.threading_layer()
    fallback = ""
    if layer == "workqueue" and setting != "workqueue":
        fallback = " (numba's own pool: neither TBB nor OpenMP loaded)"
    return (f"{layer}{fallback}; setting {setting!r} ($NUMBA_THREADING_LAYER), "
            f"{numba.config.NUMBA_NUM_THREADS} threads at most ($NUMBA_NUM_THREADS)")


def loading() -> list[Row]:
    """What the loaders get here: the CPU, cores, workers, numba's threading layer, where
    ``decode="auto"`` decodes, file limits."""
    import torch

    from .data.loaders import AUTO_GPU_DECODE_MAX_CORES, resolve_decode
    from .data.resources import RESERVED_ENV, available_cores, loader_cores, reserved_cores, usable_workers
    from .errors import count

    rows: list[Row] = []
    try:
        rows.append(("cpu", _cpu()))
    except Exception as e:  # noqa: BLE001 - the point is to report it
        rows.append(("cpu", _failed(e)))
    try:
        rows.append(("cpu kernels", _cpu_kernels()))
    except Exception as e:  # noqa: BLE001 - the point is to report it
        rows.append(("cpu kernels", _failed(e)))
    rows.append(("cpu cores", f"{os.cpu_count()} on the machine, {available_cores()} for this process "
                              "(affinity and cgroup CPU quota: Slurm, containers)"))
    try:
        cores = loader_cores()
        free = reserved_cores(cores)
        rows.append(("loader workers", f"at most {usable_workers(cores)}: {count(cores, 'core')} for this "
                                       f"process's loaders, {free} kept free for the training thread "
                                       f"(${RESERVED_ENV} sets that)"))
    except Exception as e:  # noqa: BLE001 - e.g. a bad $DP4TL_RESERVED_CORES
        rows.append(("loader workers", _failed(e)))
    try:
        rows.append(("numba threading layer", _numba_threading()))
    except Exception as e:  # noqa: BLE001 - e.g. $NUMBA_THREADING_LAYER names a layer that does not load
        rows.append(("numba threading layer", _failed(e)))
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
