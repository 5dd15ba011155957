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
    for name in ("python", "glibc", *environment.PACKAGES, "ffcv.loader", "gpu", "cpu cores", "loader workers",
                 "decode=auto", "open files limit"):
        assert name in rows, name
    assert rows["ffcv"] == "1.0.2" and rows["ffcv.loader"] == "imports"  # not ffcv's own "0.0.3rc1"
    assert rows["gpu"] == "none visible to torch" and rows["decode=auto"] == "cpu (no GPU)"
    assert rows["cpu cores"].startswith(f"{os.cpu_count()} on the machine, {available_cores()} for this process")
    cores = loader_cores()
    assert rows["loader workers"].startswith(f"at most {max(1, cores - reserved_cores(cores))}: {cores} cores")
    assert "FM kernels (NVRTC compile)" not in rows  # no compiles asked for


def test_a_bad_setting_or_a_missing_package_is_a_row_not_an_error(monkeypatch):
    monkeypatch.setenv(RESERVED_ENV, "lots")
    monkeypatch.setattr(environment, "PACKAGES", ("numpy", "no_such_package_dp4tl"))
    rows = _rows(check_kernels=False)
    assert rows["no_such_package_dp4tl"] == "not installed" and rows["numpy"][0].isdigit()
    assert rows["loader workers"].startswith("**failed**: DataError:") and RESERVED_ENV in rows["loader workers"]


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
