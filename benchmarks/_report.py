"""Shared helper of the benchmark scripts: replace one ``## `` section of a Markdown report.

The implementation lives in :mod:`ffcv_dp4tl.reporting` (``dp4tl bench`` uses it too); this
module puts the repository on ``sys.path`` and re-exports it for the scripts here.
"""
from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from ffcv_dp4tl.reporting import DEFAULT_HEADER, write_section  # noqa: E402,F401

__all__ = ["DEFAULT_HEADER", "write_section"]
