"""``ffcv_dp4tl.environment`` and ``dp4tl env``: what this machine offers a run, as rows that
never raise. Checked on the CPU machine: its facts (no GPU, its cores, the reserved-cores rule)
are known here, so each row is compared with what it must say."""
from __future__ import annotations

import os

import pytest
from cli_runner import cli

from ffcv_dp4tl import environment
from ffcv_dp4tl.data.resources import RESERVED_ENV, available_cores, loader_cores, reserved_cores


def _rows(**kw) -> dict[str, str]:
    return dict(environment.report(**kw))


def test_the_rows_say_what_this_machine_offers(monkeypatch):
    monkeypatch.delenv(RESERVED_ENV, raising=False)
    rows = _rows(check_kernels=False)
    for name in ("python", "glibc", *environment.PACKAGES, "ffcv.loader", "gpu", "cpu", "cpu cores",
                 "loader workers", "numba threading layer", "decode=auto", "open files limit"):
        assert name in rows, name
    assert rows["ffcv"] == "1.0.2" and rows["ffcv.loader"] == "imports"  # not ffcv's own "0.0.3rc1"
    assert rows["gpu"] == "none visible to torch" and rows["decode=auto"] == "cpu (no GPU)"
    assert rows["cpu cores"].startswith(f"{os.cpu_count()} on the machine, {available_cores()} for this process")
    cores = loader_cores()
    assert rows["loader workers"].startswith(f"at most {max(1, cores - reserved_cores(cores))}: {cores} cores")
    assert "FM kernels (NVRTC compile)" not in rows  # no compiles asked for
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(8 * available_cores()))  # (one core a rank)
    assert _rows(check_kernels=False)["loader workers"].startswith("at most 1: 1 core for ")


def test_the_cpu_and_numba_rows_say_what_runs_the_loaders_here(monkeypatch):
    """The CPU row (model, SMT, clock, cgroup quota) and numba's threading layer: what explains
    one loader worker decoding at a third of another machine's rate."""
    import numba

    from ffcv_dp4tl.cpus import cpu_quota

    rows = dict(environment.loading())
    cpu = rows["cpu"]
    assert "**" not in cpu and " logical CPUs" in cpu and " MHz now (median over CPUs)" in cpu
    quota = cpu_quota()
    assert cpu.endswith("no CPU quota" if quota is None else f"CPU quota: {quota:.1f} CPUs (cgroup)")
    layer = rows["numba threading layer"]
    assert layer.startswith(numba.threading_layer()) and numba.threading_layer() in ("tbb", "omp", "workqueue")
    assert f"setting {numba.config.THREADING_LAYER!r}" in layer
    assert list(rows).index("cpu") < list(rows).index("cpu cores")


def test_the_cpu_row_counts_smt_threads(tmp_path, monkeypatch):
    """Two logical CPUs per core (hyperthreads, or a VM's vCPU pairs) read "SMT: 2 threads per
    core"; sysfs topology first, /proc/cpuinfo's (physical id, core id) pairs without it."""
    monkeypatch.setattr("ffcv_dp4tl.cpus.cpu_quota", lambda: 8.0)
    sysfs = tmp_path / "sys"
    for cpu in range(8):  # cpu0/cpu4 share a core, ...
        (sysfs / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(f"{cpu % 4},{cpu % 4 + 4}\n")
    info = tmp_path / "cpuinfo"
    info.write_text("\n\n".join(f"processor\t: {i}\nmodel name\t: Test CPU 9000\ncpu MHz\t\t: {mhz}\n"
                                 f"physical id\t: 0\ncore id\t\t: {i}" for i, mhz in enumerate(
                                     [1000.0, 3000.5, 2000.0, 2000.0, 1500.0, 2500.0, 2000.0, 2000.0])))
    assert environment._cpu(info, sysfs) == ("Test CPU 9000: 8 logical CPUs on 4 cores (SMT: 2 threads per "
                                             "core), 2000 MHz now (median over CPUs), CPU quota: 8.0 CPUs (cgroup)")
    # no sysfs topology: 8 (physical id, core id) pairs, one thread each; then 2 per core id
    assert environment._cpu(info, tmp_path / "none").startswith("Test CPU 9000: 8 logical CPUs on 8 cores (no SMT), ")
    info.write_text("\n\n".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i % 4}" for i in range(8)))
    row = environment._cpu(info, tmp_path / "none")
    assert ": 8 logical CPUs on 4 cores (SMT: 2 threads per core), CPU quota: 8.0 CPUs (cgroup)" in row


def test_a_bad_setting_or_a_missing_package_is_a_row_not_an_error(monkeypatch):
    monkeypatch.setenv(RESERVED_ENV, "lots")
    monkeypatch.setattr(environment, "PACKAGES", ("numpy", "no_such_package_dp4tl"))
    rows = _rows(check_kernels=False)
    assert rows["no_such_package_dp4tl"] == "not installed" and rows["numpy"][0].isdigit()
    assert rows["loader workers"].startswith("**failed**: DataError:") and RESERVED_ENV in rows["loader workers"]
    monkeypatch.setattr(environment, "_topology", lambda *a: 1 / 0)
    assert dict(environment.loading())["cpu"] == "**failed**: ZeroDivisionError: division by zero"


def test_kernels_rows_without_cupy_say_fm_runs_on_the_cpu():
    pytest.importorskip("torchvision")
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here: the row then reports the NVRTC compile")
    except ImportError:
        pass
    rows = dict(environment.kernels())
    assert rows["CuPy kernels"] == "none (cupy not installed): FM runs on the CPU (numba)"
    assert rows["torchvision decode_jpeg (batched, device)"] == "ok, (3, 64, 64) on cpu"


def test_dp4tl_env_prints_aligned_rows(capsys, monkeypatch):
    monkeypatch.delenv(RESERVED_ENV, raising=False)
    code, out, err = cli(capsys, monkeypatch, "env", "--no-kernels")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines[:2]] == ["python", "glibc"]
    col = lines[0].index(lines[0].split()[1], len("python"))
    assert all(len(ln) > col and ln[col - 2:col] == "  " for ln in lines)  # one value column
    assert "**" not in out  # Markdown emphasis is for the published table only
    assert any(ln.startswith("cpu  ") and "logical CPUs" in ln for ln in lines)
    assert any(ln.startswith("numba threading layer  ") for ln in lines)


def test_the_cpu_kernels_row_says_what_cpu_results_repeat_on(tmp_path):
    """Two 2-core machines whose `cpu` row both read "AMD EPYC" gave different numbers for the
    same deterministic pipeline (review): the row names torch's dispatch (AVX2, AVX512, ...)
    and the CPU's family/model/stepping, what bit-for-bit CPU results depend on."""
    import torch

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 23\nmodel\t\t: 1\n"
                    "stepping\t: 2\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\ncpu family\t: 23\n")
    cap = torch.backends.cpu.get_cpu_capability()
    tail = " (CPU results repeat where these agree, with the same torch and thread counts)"
    assert environment._cpu_kernels(info) == (f"torch dispatches to {cap}; cpu family 23, model 1, "
                                               f"stepping 2{tail}")
    assert environment._cpu_kernels(tmp_path / "none") == f"torch dispatches to {cap}{tail}"
    assert list(dict(environment.loading()))[:2] == ["cpu", "cpu kernels"]
