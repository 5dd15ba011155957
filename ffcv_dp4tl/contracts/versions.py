"""Format versions of the contract files: the one rule for reading a file's ``format_version``."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from ..errors import DataError


class UnsupportedFormatError(DataError):
    """A file was written by a newer ffcv-dp4tl than the one reading it."""


def check_version(data: Mapping[str, Any], current: int, what: str, source: object = None,
                  error: type[DataError] = UnsupportedFormatError) -> int:
    """The file's ``format_version`` (1 when absent: files from before versions existed).

    Raises ``error`` (one line, naming the file and the fix) for a version above ``current``
    or a value that is not a positive integer.
    """
    where = f"{source}" if source is not None else what
    v = data.get("format_version", 1)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise error(f"{where}: format_version must be a positive integer, got {v!r}")
    if v > current:
        raise UnsupportedFormatError(
            f"{where} is a {what} of format version {v}, but this ffcv-dp4tl reads versions up "
            f"to {current}; upgrade ffcv-dp4tl (pip install -U ffcv-dp4tl) to read it")
    return v


def _known(cls) -> set[str]:
    return {f.name for f in fields(cls)}
