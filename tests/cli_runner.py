"""Run the ``dp4tl`` CLI in-process and check its one-line errors (shared by the CLI-facing tests).

Tests import it as ``from cli_runner import cli, one_line`` (``tests/`` is on ``sys.path`` through the
rootdir ``conftest.py``, as for ``tiny_data``).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from ffcv_dp4tl.cli import main


def cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """``dp4tl ARGS...`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dp4tl", *map(str, args)])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_line(code, err, *needles) -> None:
    """A user error: exit 2 and exactly one ``error: ...`` line naming every needle."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in err, err


def run_cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``dp4tl ARGS...`` in this process, as ``subprocess.run(..., capture_output=True)`` would
    report it: returncode, stdout, stderr. An exception the CLI lets through (a bug) becomes
    returncode 1 with its traceback on stderr, as the console entry point would print it, so
    "no traceback" assertions keep their meaning. In-process because starting a fresh
    interpreter (torch, numba, ffcv imports) costs seconds per call on a 2-core machine; the
    tests that need a fresh process (registration at import, signals) keep using one."""
    argv, old_cwd = [str(a) for a in args], os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, sys.excepthook, sys.unraisablehook
    code: int
    try:
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = ["dp4tl", *argv]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - reported as the interpreter would
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.excepthook, sys.unraisablehook = saved
        os.chdir(old_cwd)
    return subprocess.CompletedProcess(["dp4tl", *argv], code, out.getvalue(), err.getvalue())


def just_executable() -> str:
    """The venv's ``just`` (scripts/setup.sh installs it there), else one on PATH; the test is
    skipped where there is none."""
    import shutil

    just = Path(sys.executable).parent / "just"
    if just.exists():
        return str(just)
    if shutil.which("just") is None:
        pytest.skip("just is not installed")
    return "just"
