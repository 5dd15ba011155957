"""ffcv_dp4tl.cpus: the cores a process may use, its affinity mask within its cgroup CPU quota."""
from __future__ import annotations

import os

import pytest

from ffcv_dp4tl import cpus


def _cgroup(tmp_path, own: str, files: dict[str, str]):
    """A cgroup tree under ``tmp_path/cg`` (``files``: path below it -> contents) and a
    /proc/self/cgroup naming ``own``; returns ``cpu_quota`` reading them."""
    root = tmp_path / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "self_cgroup").write_text(own)
    return lambda: cpus.cpu_quota(root, tmp_path / "self_cgroup")


def test_the_cgroup_v2_quota_is_read_from_the_own_cgroup_and_its_parents(tmp_path):
    """Docker ``--cpus`` / a Kubernetes CPU limit: cpu.max "QUOTA PERIOD" in the process's own
    cgroup (/proc/self/cgroup's "0::/path"); a parent's smaller limit applies too; "max" is none."""
    own = "0::/kubepods/pod1/ctr\n"
    assert _cgroup(tmp_path / "a", own, {"kubepods/pod1/ctr/cpu.max": "250000 100000\n"})() == 2.5
    assert _cgroup(tmp_path / "b", own, {"kubepods/pod1/ctr/cpu.max": "800000 100000\n",
                                         "kubepods/pod1/cpu.max": "max 100000\n",
                                         "kubepods/cpu.max": "300000 100000\n"})() == 3.0
    assert _cgroup(tmp_path / "c", own, {"kubepods/pod1/ctr/cpu.max": "200000 100000",
                                         "kubepods/cpu.max": "1600000 100000"})() == 2.0  # own smaller
    assert _cgroup(tmp_path / "d", "0::/\n", {"cpu.max": "50000 100000\n"})() == 0.5  # in a container
    assert _cgroup(tmp_path / "e", own, {"kubepods/pod1/ctr/cpu.max": "max 100000\n"})() is None
    assert _cgroup(tmp_path / "f", "0::/../../elsewhere\n", {"cpu.max": "400000 100000"})() == 4.0


@pytest.mark.parametrize("text", ["banana", "", "200000", "1.5 100000", "200000 0", "-5 100000",
                                  "200000 100000 7", "\xff\xfe"])
def test_a_cgroup_v2_file_that_is_not_a_quota_is_none(tmp_path, text):
    assert _cgroup(tmp_path, "0::/ctr\n", {"ctr/cpu.max": text})() is None


@pytest.mark.parametrize("quota,period", [("banana", "100000"), ("", "100000"), ("1.5", "100000"),
                                          ("200000", "0"), ("200000", "x"), ("-5", "100000")])
def test_a_cgroup_v1_file_that_is_not_a_quota_is_none(tmp_path, quota, period):
    assert _cgroup(tmp_path, "4:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": quota,
                                                    "cpu/cpu.cfs_period_us": period})() is None


def test_the_cgroup_v1_quota_is_read_from_the_cpu_controller(tmp_path):
    """cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us under cpu,cpuacct/ or cpu/; -1 is none."""
    v1 = "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n0::/\n"
    assert _cgroup(tmp_path / "a", v1, {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
                                        "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})() == 2.0
    assert _cgroup(tmp_path / "b", v1, {"cpu/docker/abc/cpu.cfs_quota_us": "150000\n",
                                        "cpu/docker/abc/cpu.cfs_period_us": "100000\n"})() == 1.5
    assert _cgroup(tmp_path / "c", v1, {"cpu/cpu.cfs_quota_us": "-1\n",
                                        "cpu/cpu.cfs_period_us": "100000\n"})() is None


def test_no_cgroup_files_is_no_quota(tmp_path):
    assert cpus.cpu_quota(tmp_path / "nothing", tmp_path / "no_self_cgroup") is None
    assert isinstance(cpus.cpu_quota(), (float, type(None)))  # this machine's: never raises


@pytest.mark.parametrize("affinity,quota,expected", [
    (16, None, 16), (16, 8.0, 8), (16, 2.5, 3), (16, 0.5, 1), (4, 8.0, 4), (16, 16.0, 16)])
def test_available_cores_are_the_affinity_mask_within_the_cpu_quota(monkeypatch, affinity, quota, expected):
    """A container sees every host core in its affinity mask; its CPU quota (rounded up) caps
    the loader's workers, or they run throttled."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(cpus, "cpu_quota", lambda: quota)
    assert cpus.available_cores() == expected


def test_a_process_whose_affinity_cannot_be_read_counts_the_machines_cores(monkeypatch):
    """(torchrun's agent gone, or no affinity masks on this platform): the machine's cores,
    still within the quota."""
    def gone(pid):
        raise ProcessLookupError(pid)

    monkeypatch.setattr(os, "sched_getaffinity", gone, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    monkeypatch.setattr(cpus, "cpu_quota", lambda: None)
    assert cpus.available_cores(4242) == 12
    monkeypatch.setattr(cpus, "cpu_quota", lambda: 3.0)
    assert cpus.available_cores(4242) == 3


def _memory_limit_of(where, own, files, meminfo):
    """``cpus.memory_limit`` of a fake cgroup tree in ``where``: ``files`` (paths under its
    root: their text), ``own`` (the process's /proc/self/cgroup text) and ``meminfo``."""
    root = where / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (where / "self").write_text(own)
    return cpus.memory_limit(root, where / "self", meminfo)


def test_the_memory_limit_is_the_machines_within_the_cgroup_limit(tmp_path):
    """A Slurm job's --mem or Docker's --memory is a cgroup limit below the machine's MemTotal:
    the smallest along the own path wins (v2 memory.max, v1 memory.limit_in_bytes); "max" and
    v1's "no limit" (about 2**63) are none; without a cgroup file, MemTotal."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\nMemFree:  1 kB\n")  # 16 MiB

    def limit(name, own, files):
        return _memory_limit_of(tmp_path / name, own, files, meminfo)

    own = "0::/job/step\n"
    assert limit("a", own, {"job/step/memory.max": "4194304\n"}) == 4 << 20
    assert limit("b", own, {"job/step/memory.max": "max\n", "job/memory.max": "2097152"}) == 2 << 20
    assert limit("c", own, {"job/step/memory.max": "max"}) == 16 << 20  # (MemTotal)
    assert limit("d", own, {"job/step/memory.max": str(1 << 40)}) == 16 << 20  # above the RAM
    assert limit("e", "9:memory:/job\n", {"memory/job/memory.limit_in_bytes": "3145728"}) == 3 << 20
    assert limit("f", "9:memory:/job\n",
                 {"memory/job/memory.limit_in_bytes": "9223372036854771712"}) == 16 << 20
    assert limit("g", own, {"job/step/memory.max": "banana"}) == 16 << 20
    assert limit("h", own, {"job/step/memory.max": "0\n"}) == 16 << 20  # (not a 0-byte limit)
    assert cpus.memory_limit(tmp_path / "none", tmp_path / "none", tmp_path / "none") is None


def test_no_cgroup_limit_without_meminfo_is_no_limit(tmp_path):
    """Where /proc/meminfo cannot be read, cgroup v1's "no limit" (about 2**63) or v2's "max"
    is no limit (None, as with no files at all), not a limit of 8 EiB; a real limit is one."""
    def limit(name, own, files):
        return _memory_limit_of(tmp_path / name, own, files, tmp_path / "no-meminfo")

    v1 = "9:memory:/job\n"
    assert limit("a", v1, {"memory/job/memory.limit_in_bytes": "9223372036854771712\n"}) is None
    assert limit("b", "0::/job\n", {"job/memory.max": "max\n"}) is None
    assert limit("c", v1, {"memory/job/memory.limit_in_bytes": "3145728"}) == 3 << 20
