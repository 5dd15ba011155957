"""What a layout reader produces: a list of samples per split plus class names.

Layout readers (``beton_builders.layouts``) only *enumerate* samples; they never decode
images. The writer (``beton_builders.writer``) decodes, converts, resizes and encodes them in
parallel, so every reader gets the same bad-input handling, progress bar and resumability.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

if TYPE_CHECKING:  # (PIL only names the type: the layouts' table is read by every --help)
    from PIL import Image

# the naming rules live with the manifest contract, which reads the names back (one place
# each); imported from here by the layouts, the writer and the CLI
from ffcv_dp4tl.contracts.names import (SPLIT_NAME, name_text, one_line,  # noqa: F401
                                        printable, split_name_problem)

#: A sample's image: a file path, an in-memory HWC uint8 RGB array (e.g. CIFAR), or a
#: picklable zero-argument callable returning a PIL image (e.g. the synthetic generator).
ImageRef = Union[str, Path, np.ndarray, Callable[[], "Image.Image"]]


@dataclass(frozen=True)
class Sample:
    ref: ImageRef
    label: int
    #: Human-readable origin, used in ``rejects.txt`` (defaults to the path).
    name: str = ""

    def display_name(self) -> str:
        """The sample's origin as printable text: a file name that is not valid UTF-8 (held by
        Python as lone surrogates, PEP 383) shows its odd bytes as ``\\xNN`` escapes, so the
        name can go into messages, JSON and ``rejects.txt``. A file path is made absolute, as
        in ``S.files.txt`` (:meth:`origin`): ``rejects.txt`` listed the paths as typed, which
        mean nothing once the build's working folder is forgotten."""
        if self.name:
            return printable(self.name)
        if isinstance(self.ref, (str, Path)):
            return printable(os.path.abspath(self.ref))
        return repr(self.ref)

    def origin(self) -> str:
        """Where the sample came from, for ``S.files.txt``: its name or file path as stored text
        (:func:`~ffcv_dp4tl.contracts.names.name_text`: only undecodable bytes as ``\\xNN``,
        so each line is the path other tools open; not :meth:`display_name`, which escapes
        every control character for a terminal), a file path made absolute (a relative one
        means nothing once the build's working folder is forgotten)."""
        if self.name:
            return name_text(self.name)
        if isinstance(self.ref, (str, Path)):
            return name_text(os.path.abspath(self.ref))
        return repr(self.ref)

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
