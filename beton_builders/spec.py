"""What a layout reader produces: a list of samples per split plus class names.

Layout readers (``beton_builders.layouts``) only *enumerate* samples; they never decode
images. The writer (``beton_builders.writer``) decodes, converts, resizes and encodes them in
parallel, so every reader gets the same bad-input handling, progress bar and resumability.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
from PIL import Image

#: A sample's image: a file path, an in-memory HWC uint8 RGB array (e.g. CIFAR), or a
#: picklable zero-argument callable returning a PIL image (e.g. the synthetic generator).
ImageRef = Union[str, Path, np.ndarray, Callable[[], Image.Image]]


#: C0 and C1 control characters and DEL: a terminal acts on them (an OSC sequence in a class
#: name retitled the window or wrote a link, even through a pipe to ``less -R``)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: the escapes ``rejects.txt`` and ``S.files.txt`` have always written for these three
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (surrogate escapes) and control characters
    as ``\\xNN`` (tab, line feed, carriage return as ``\\t``, ``\\n``, ``\\r``): how a name
    read from a file or a folder, which could hold anything, is shown and stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: _SHORT.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


#: What a split may be called: its name becomes file names in the output folder
#: (``<split>.beton``, ``wds/<split>-000000.tar``), so a name from a split file that holds ``/``
#: or ``..`` would write outside the folder the user chose
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def split_name_problem(split: object) -> str | None:
    """Why ``split`` cannot name a split (None when it can): see :data:`SPLIT_NAME`."""
    if isinstance(split, str) and SPLIT_NAME.fullmatch(split) and ".." not in split:
        return None
    return (f"split name {printable(str(split))!r} is not allowed (letters, digits, '_', '.', '-', "
            "starting with a letter or digit, no '..')")


@dataclass(frozen=True)
class Sample:
    ref: ImageRef
    label: int
    #: Human-readable origin, used in ``rejects.txt`` (defaults to the path).
    name: str = ""

    def display_name(self) -> str:
        """The sample's origin as printable text: a file name that is not valid UTF-8 (held by
        Python as lone surrogates, PEP 383) shows its odd bytes as ``\\xNN`` escapes, so the
        name can go into messages, JSON and ``rejects.txt``."""
        if self.name:
            return printable(self.name)
        if isinstance(self.ref, (str, Path)):
            return printable(str(self.ref))
        return repr(self.ref)

    def origin(self) -> str:
        """Where the sample came from, for ``S.files.txt``: :meth:`display_name`, with a file
        path made absolute (a relative one means nothing once the build's working folder is
        forgotten)."""
        if not self.name and isinstance(self.ref, (str, Path)):
            return printable(os.path.abspath(self.ref))
        return self.display_name()

    def name_bytes(self) -> bytes:
        """The exact origin (file names: their bytes on disk), for digests."""
        if self.name:
            return self.name.encode("utf-8", "surrogateescape")
        if isinstance(self.ref, (str, Path)):
            return os.fsencode(str(self.ref))
        return repr(self.ref).encode("utf-8", "surrogateescape")


@dataclass
class DatasetSpec:
    """A dataset as enumerated from its on-disk layout."""

    name: str
    classes: list[str]
    splits: dict[str, list[Sample]]
    #: Free-form metadata copied into ``manifest.json`` (e.g. the synthetic ground truth).
    extra: dict[str, Any] = field(default_factory=dict)
    #: What identifies the pixels beyond the listing (names and labels), for a generator that can
    #: give the same names other pixels (``synth``'s light source grounds); part of the build
    #: settings, so a build of other pixels is never taken for "already built". Empty = none
    #: (every folder layout, where names identify files; and the builds made before it existed).
    content: dict[str, Any] = field(default_factory=dict)
