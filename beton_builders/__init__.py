"""Converters from image datasets into FFCV betons + WebDataset shards (``dp4tl build``).

Its exports load their module on first use (:func:`ffcv_dp4tl.lazy.lazy_exports`): ``dp4tl
build --help`` lists the layouts of :data:`beton_builders.layouts.LAYOUTS`, and reading that
table must not import the writer (PIL, multiprocessing) into every command's help."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ffcv_dp4tl.lazy import lazy_exports

#: exported name -> the module that defines it (imported on first use)
_EXPORTS = {
    "BuildOptions": ".writer",
    "BuildSummary": ".writer",
    "DatasetSpec": ".spec",
    "Sample": ".spec",
    "build_dataset": ".writer",
}

if TYPE_CHECKING:  # (for type checkers and editors; at run time: __getattr__)
    from .spec import DatasetSpec, Sample
    from .writer import BuildOptions, BuildSummary, build_dataset

__all__ = ["BuildOptions", "BuildSummary", "DatasetSpec", "Sample", "build_dataset"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
