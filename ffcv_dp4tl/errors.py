"""User-facing errors.

Every problem a user can fix (bad path, bad field, wrong fingerprint, ...) is raised as a
:class:`DP4TLError` whose message names the file/field and says what to do. The CLI prints
such errors as one line and exits with status 2 instead of showing a traceback.
"""
from __future__ import annotations


class DP4TLError(Exception):
    """An error caused by the user's input, with an actionable message."""


class DataError(DP4TLError):
    """Input data (images, layouts, split files, masks, manifests) is missing or malformed."""


class MaskError(DataError):
    """An index mask does not fit the dataset it is used with."""


def brief(text: object, limit: int = 120) -> str:
    """The first sentence of another library's error text (torch's run on for lines, with
    advice that does not apply here), whole words only: cut at the first sentence end, else at
    the last space before ``limit`` characters, marked with "…". For quoting inside one line."""
    import re

    lines = str(text).strip().splitlines()
    line = lines[0].strip() if lines else ""
    m = re.search(r"(?<=[^.\s]{2})[.!?](\s|$)", line)  # ("e.g." / "v1.2" are no sentence end)
    if m:
        line = line[:m.start()]
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return f"{cut} …"
