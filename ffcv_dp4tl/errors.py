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
