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


class PeerStopped(DP4TLError):
    """This rank stops because another rank failed a check first (its message names that rank
    and quotes its error): under torchrun the other rank's error is the root cause, not this."""


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


def count(n: int, noun: str, plural: str | None = None) -> str:
    """A count with its noun in the right number, for messages: "1 class", "6 classes",
    "0 shards" (one rule, so that no message says "1 classes"). ``plural``: for a noun that
    takes neither -s nor, after s or x, -es ("batch" → "batches")."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {plural or noun + ('es' if noun.endswith(('s', 'x')) else 's')}"


def class_ids(num_classes: int) -> str:
    """The class ids of a dataset of ``num_classes`` classes, for messages: "ids 0-31", "id 0"
    (not "ids 0-0"), "no class ids"."""
    return {0: "no class ids", 1: "id 0"}.get(num_classes, f"ids 0-{num_classes - 1}")
