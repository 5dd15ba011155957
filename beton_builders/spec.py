"""What a layout reader produces: a list of samples per split plus class names.

Layout readers (``beton_builders.layouts``) only *enumerate* samples; they never decode
images. The writer (``beton_builders.writer``) decodes, converts, resizes and encodes them in
parallel, so every reader gets the same bad-input handling, progress bar and resumability.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
from PIL import Image

#: A sample's image: a file path, an in-memory HWC uint8 RGB array (e.g. CIFAR), or a
#: picklable zero-argument callable returning a PIL image (e.g. the synthetic generator).
ImageRef = Union[str, Path, np.ndarray, Callable[[], Image.Image]]


@dataclass(frozen=True)
class Sample:
    ref: ImageRef
    label: int
    #: Human-readable origin, used in ``rejects.txt`` (defaults to the path).
    name: str = ""

    def display_name(self) -> str:
        if self.name:
            return self.name
        if isinstance(self.ref, (str, Path)):
            return str(self.ref)
        return repr(self.ref)


@dataclass
class DatasetSpec:
    """A dataset as enumerated from its on-disk layout."""

    name: str
    classes: list[str]
    splits: dict[str, list[Sample]]
    #: Free-form metadata copied into ``manifest.json`` (e.g. the synthetic ground truth).
    extra: dict[str, Any] = field(default_factory=dict)
