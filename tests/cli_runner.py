"""Run the ``dp4tl`` CLI in-process and check its one-line errors (shared by the CLI-facing tests).

Tests import it as ``from cli_runner import cli, one_line`` (``tests/`` is on ``sys.path`` through the
rootdir ``conftest.py``, as for ``tiny_data``).
"""

from __future__ import annotations

import sys

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
