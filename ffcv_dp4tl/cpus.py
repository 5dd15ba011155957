"""What CPUs this process may use: its affinity mask within its cgroup CPU quota; and the
memory it may use: the machine's, within its cgroup memory limit.

One rule for every part that sizes a pool of processes or threads by the cores: the loaders
(``data.resources``, which adds the reserved cores and torchrun's ranks), ``dp4tl build``'s
encoders (``beton_builders.writer``, which sits below the data layer, hence this module at the
package's root), the benchmarks' machine line and ``dp4tl env``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

__all__ = ["available_cores", "cpu_quota", "memory_limit", "within_quota"]


def _quota_in(cgroup: Path) -> float | None:
    """The CPUs one cgroup directory's own limit allows: cgroup v2 ``cpu.max`` ("QUOTA PERIOD"
    or "max PERIOD"), else v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none).
    None when it sets none, or the files are missing, unreadable or not numbers."""
    try:
        if (cgroup / "cpu.max").is_file():
            quota, period = (cgroup / "cpu.max").read_text().split()
        else:
            quota = (cgroup / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        q, p = int(quota), int(period)
    except (OSError, ValueError):  # missing, unreadable, garbage (ValueError: also bad UTF-8)
        return None
    return q / p if q > 0 and p > 0 else None


def _up_to(base: Path, own: str) -> list[Path]:
    """``base/own`` and each of its parents up to ``base`` (just ``base`` when ``own`` is not
    an absolute path below it, e.g. "/../.." for a process outside its cgroup namespace)."""
    path = PurePosixPath(own)
    if not path.is_absolute() or ".." in path.parts:
        return [base]
    return [base / p.relative_to("/") for p in (path, *path.parents)]


def cpu_quota(root: str | Path = "/sys/fs/cgroup",
              self_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """The CPUs this process's cgroup CPU quota allows (``quota / period``: 2.0 for Docker's
    ``--cpus 2`` or a Kubernetes CPU limit of 2), or None when there is none or it cannot be read;
    never raises. Why: a container sees every core of the host in its affinity mask, so one loader
    worker per visible core would be throttled by the quota, each worker running a fraction of the
    time. (``root`` and ``self_cgroup`` are parameters for the tests; the program uses the defaults.)

    cgroup v2: ``<root>/<own path>/cpu.max``, the own path from ``self_cgroup``'s "0::/path" line,
    then each parent up to ``<root>`` (a parent's limit applies too: the smallest wins; inside a
    container the own path is usually "/" and ``<root>`` the container's cgroup). cgroup v1: the
    same walk under ``<root>/cpu,cpuacct`` and ``<root>/cpu``, from the "N:cpu,...:/path" line."""
    dirs = _cgroup_dirs(Path(root), self_cgroup, "cpu", ("cpu,cpuacct", "cpu"))
    return min((q for d in dirs if (q := _quota_in(d)) is not None), default=None)


def _cgroup_dirs(root: Path, self_cgroup: str | Path, controller: str,
                 v1_names: tuple[str, ...]) -> list[Path]:
    """The cgroup folders whose ``controller`` limits apply to this process: the v2 hierarchy's
    own path and its parents, then the same under each v1 mount in ``v1_names``."""
    own: dict[str, str] = {}  # controller -> this process's cgroup path ("": the v2 hierarchy)
    try:
        for line in Path(self_cgroup).read_text().splitlines():
            _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            for c in controllers.split(","):
                own.setdefault(c, path)
    except (OSError, ValueError):
        pass
    dirs = _up_to(root, own.get("", "/"))
    for v1 in v1_names:
        dirs += _up_to(root / v1, own.get(controller, "/"))
    return dirs


def memory_limit(root: str | Path = "/sys/fs/cgroup", self_cgroup: str | Path = "/proc/self/cgroup",
                 meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes of memory this process may use: the machine's (``MemTotal``), no more than its
    cgroup memory limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``, the smallest along
    the path, as :func:`cpu_quota` walks it: a Slurm job's ``--mem``, Docker's ``--memory``);
    None when neither can be read. Never raises."""
    sizes = []
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemTotal:"):
                sizes.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for d in _cgroup_dirs(Path(root), self_cgroup, "memory", ("memory",)):
        for name in ("memory.max", "memory.limit_in_bytes"):
            try:
                text = (d / name).read_text().strip()
            except (OSError, ValueError):
                continue
            if text.isascii() and text.isdigit() and 0 < int(text) < 1 << 62:  # ("max"; v1's "no limit" is ~2**63)
                sizes.append(int(text))
    return min(sizes, default=None)


def within_quota(cores: int) -> int:
    """``cores``, no more than the cgroup CPU quota rounded up (:func:`cpu_quota`), at least 1."""
    quota = cpu_quota()
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def available_cores(pid: int = 0) -> int:
    """CPU cores process ``pid`` (0: this one) may run on: its affinity mask (a Slurm job's or
    ``--cpuset-cpus`` set; the machine's cores where it cannot be read, e.g. no such process),
    no more than this process's cgroup CPU quota allows (Docker ``--cpus``, a Kubernetes CPU
    limit: 2.5 CPUs give 3), at least 1."""
    try:
        cores = len(os.sched_getaffinity(pid))
    except (AttributeError, OSError):  # (no affinity masks on this platform)
        cores = os.cpu_count() or 1
    return within_quota(cores)
