"""The pipeline as a library: what ``dp4tl pipeline`` runs, one call per step, for a script or a
notebook (README, "From Python").

- :func:`ensure_built`: a built dataset folder for a SOURCE (``synth:tiny``, ``imagefolder:DIR``,
  ...), building it once under ``data_root``;
- ``score`` (``from ffcv_dp4tl.pipeline.score import score``): score the source for a target
  with a registered method (``lm``, ``fm``, ...): ``scores.npy`` + ``scores.json`` in
  ``out_dir``, read back with :func:`load_scores`;
- ``prune`` (``from ffcv_dp4tl.pipeline.prune import prune``): the index masks (``train.npy``,
  ``val.npy``) keeping the top-scored units;
- :func:`run_pipeline` with a :class:`PipelineConfig`: every step, cached by content (returns a
  :class:`PipelineResult`).

The names load their modules on first use (``import ffcv_dp4tl.pipeline`` stays light:
``ffcv_dp4tl.lazy``).
``score`` and ``prune`` are not re-exported: they share their modules' names, and a package
attribute of that name is the module once anything has imported it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

#: exported name -> the module that defines it
_EXPORTS = {"ensure_built": ".resolve", "load_scores": ".scores_io", "run_pipeline": ".run",
            "PipelineConfig": ".config", "PipelineResult": ".result"}

if TYPE_CHECKING:  # (for type checkers and editors; at run time: __getattr__)
    from .config import PipelineConfig
    from .resolve import ensure_built
    from .result import PipelineResult
    from .run import run_pipeline
    from .scores_io import load_scores


__all__ = ["PipelineConfig", "PipelineResult", "ensure_built", "load_scores", "run_pipeline"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
