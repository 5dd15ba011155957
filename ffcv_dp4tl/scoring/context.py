"""What a scorer is given: datasets, surrogate, settings, and the shared glue to run the surrogate.

The pipeline (``pipeline/score.py``) builds one :class:`ScoringContext` per scoring run, loads
the surrogate when the scorer needs one (``ctx.surrogate``), calls ``scorer.score(ctx)`` and
writes the result. Scorers record extra metadata for ``scores.json`` in ``ctx.meta``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts import PAPER_K
from ..errors import DP4TLError


@dataclass
class Surrogate:
    """A loaded surrogate checkpoint (set by the pipeline for scorers that need one)."""
    path: Path
    model: Any  # torch.nn.Module, on ``device``
    head: Any  # its classification layer (its inputs are the features)
    checkpoint: Any  # training.checkpoint.Checkpoint
    resolution: int  # inference resolution of the source images (eval transform)
    device: Any  # torch.device
    autocast_dtype: Any = None  # torch.bfloat16 on CUDA
    # how the target images are read (recipe [scoring]): at this resolution (None = resolution),
    # with the eval transform's 224/256 centre crop ("center") or the whole short side ("none",
    # the paper's resize to the source resolution)
    target_resolution: int | None = None
    target_crop: str = "center"
    # how the source images behind source *features* are read (FM, MODERATE, SP, SSP, INF*;
    # recipe scoring.source_resolution / source_crop): None / "center" = the eval transform as
    # above; the paper protocols: 224 and "none", like the target (the authors' feature_gen.py)
    source_resolution: int | None = None
    source_crop: str = "center"

    @property
    def self_supervised(self) -> str | None:
        return self.checkpoint.self_supervised


@dataclass
class ScoringContext:
    method: str
    source_dir: Path
    out_dir: Path  # the scores directory (feature stores are cached here too)
    targets: tuple[Path, ...] = ()
    checkpoint: Path | None = None  # the surrogate checkpoint scored
    trajectory: tuple[Path, ...] = ()  # kept early-training checkpoints, in epoch order
    fmt: str = "ffcv"
    device: str = "cpu"
    batch_size: int = 256
    num_workers: int = 2
    resolution: int | None = None
    k: int | None = PAPER_K  # k-means clusters (None: the scorer does not read it, Scorer.reads)
    iters: int = 20
    seed: int | None = 0  # (None: the scorer does not read it)
    backend: str = "auto"
    progress: bool = True
    meta: dict[str, Any] = field(default_factory=dict)  # → scores.json
    surrogate: Surrogate | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the scorer's knobs (all filled in)
    train_recipe: str | None = None  # the recipe of runs a scorer trains (default: surrogate's)
    train_overrides: tuple[str, ...] = ()
    #: one weight per target for :meth:`combine` (``()`` = equal weights)
    target_weights: tuple[float, ...] = ()

    def opt(self, name: str) -> Any:
        """The value of the scorer's option ``name`` (``--opt name=value`` or its default)."""
        if name not in self.options:
            from .registry import get_scorer

            return get_scorer(self.method).options[name].default
        return self.options[name]

    # ------------------------------------------------------------------ datasets
    @cached_property
    def source(self):
        from ..data.manifest import load_manifest

        return load_manifest(self.source_dir)

    def train_labels(self, split: str = "train") -> np.ndarray:
        return np.asarray(self.source.split(split).load_labels())

    def _need_surrogate(self) -> Surrogate:
        if self.surrogate is None:
            raise DP4TLError(f"{self.method}: no surrogate loaded (the scorer's `needs` must "
                             "name logits, features or trajectory)")
        return self.surrogate

    def loader(self, dataset_dir: str | Path, split: str, target: bool = False,
               features: bool = False):
        """Eval-transform loader (no shuffle, no drop) at the surrogate's resolution; for a
        ``target`` at the surrogate's target resolution and crop, for source ``features`` at its
        source-feature resolution and crop (see :class:`Surrogate`)."""
        from ..data.loaders import make_loader
        from ..data.transforms import AugSpec

        s = self._need_surrogate()
        res, crop = self._input(target, features)
        aug = AugSpec.for_crop(crop)
        return make_loader(dataset_dir, split, fmt=self.fmt, aug=aug, shuffle=False,
                           drop_last=False, batch_size=self.batch_size, resolution=res,
                           device=s.device, num_workers=self.num_workers, rank=0, world_size=1)

    def _input(self, target: bool = False, features: bool = False) -> tuple[int, str]:
        """(resolution, crop) at which :meth:`loader` reads images: the surrogate's eval
        transform, or its target / source-feature resolution and crop."""
        s = self._need_surrogate()
        if not (target or features):
            return s.resolution, "center"
        res = (s.target_resolution if target else s.source_resolution) or s.resolution
        return res, (s.target_crop if target else s.source_crop)

    # ------------------------------------------------------------------ surrogate passes
    def target_predictions(self, features: bool = False) -> list:
        """One :class:`~ffcv_dp4tl.scoring.inference.Predictions` per target train split:
        logits (``features=False``) or penultimate features. Records the targets' fingerprints."""
        from .inference import predict

        return self._over_targets(predict, want_logits=not features, want_features=features)

    def target_reductions(self, fn, features: bool = False) -> list:
        """:meth:`target_predictions` keeping of each batch only what ``fn(indices, logits,
        features)`` returns: one :class:`~ffcv_dp4tl.scoring.inference.Reduced` per target
        (:func:`~ffcv_dp4tl.scoring.inference.predict_reduce`; no target's N × C logits are held)."""
        from functools import partial

        from .inference import predict_reduce

        return self._over_targets(partial(predict_reduce, fn=fn), want_logits=True,
                                  want_features=features)

    def _over_targets(self, run, **kw) -> list:
        """``run(model, loader, ...)`` over every target's train split; records their fingerprints."""
        from ..data.manifest import load_manifest

        if not self.targets:
            raise DP4TLError(f"--target is needed for {self.method}")
        s = self._need_surrogate()
        out = []
        self.meta["target_fingerprints"] = []
        for t in self.targets:
            tm = load_manifest(t)
            self.meta["target_fingerprints"].append(tm.fingerprint)
            out.append(run(s.model, self.loader(t, "train", target=True), head=s.head,
                           num_samples=tm.split("train").num_samples, desc=f"target {tm.name}",
                           progress=self.progress, autocast_dtype=s.autocast_dtype, **kw))
        self.meta["target_fingerprint"] = self.meta["target_fingerprints"][0] if len(out) == 1 else None
        return out

    def source_features(self, split: str = "train") -> np.ndarray:
        """Surrogate features of a source split, through a feature store in out_dir (reused when
        complete and extracted the same way; an interrupted extraction starts again)."""
        from .inference import extract_to_store

        s = self._need_surrogate()
        info = self.source.split(split)
        return extract_to_store(s.model, s.head, self.loader(self.source_dir, split, features=True),
                                Path(self.out_dir) / f"source_{split}_features.npy",
                                info.num_samples, dataset_fingerprint=info.fingerprint,
                                surrogate_hash=self.meta.get("surrogate_hash"),
                                settings=self._feature_settings(),
                                desc=f"source {split}", progress=self.progress,
                                autocast_dtype=s.autocast_dtype)

    def _feature_settings(self) -> dict[str, Any]:
        """How source features are read (:meth:`loader` with ``features=True``), recorded in
        the feature store: a store extracted at another resolution, crop, format or precision
        into the same folder (``dp4tl score`` rerun into its ``--out``) is recomputed."""
        s = self._need_surrogate()
        res, crop = self._input(features=True)
        return {"resolution": int(res), "crop": str(crop), "format": self.fmt,
                "autocast": str(s.autocast_dtype)}

    def source_predictions(self, features: bool = False, split: str = "train"):
        """Surrogate logits (and features if asked: then read like :meth:`source_features`) of
        every sample of a source split."""
        from .inference import predict

        s = self._need_surrogate()
        return predict(s.model, self.loader(self.source_dir, split, features=features), head=s.head,
                       want_logits=True, want_features=features,
                       num_samples=self.source.split(split).num_samples, desc=f"source {split}",
                       progress=self.progress, autocast_dtype=s.autocast_dtype)

    def model_predictions(self, model, head, split: str = "train", features: bool = False,
                          desc: str = ""):
        """Logits (and features) of another model — e.g. a run the scorer trained — over a
        source split, with the surrogate's loader settings (resolution, device)."""
        from .inference import predict

        return self._over_source(predict, model, head, split, features, desc)

    def model_reduction(self, model, head, fn, split: str = "train", features: bool = False,
                        desc: str = ""):
        """:meth:`model_predictions` keeping of each batch only what ``fn(indices, logits,
        features)`` returns: a :class:`~ffcv_dp4tl.scoring.inference.Reduced`
        (:func:`~ffcv_dp4tl.scoring.inference.predict_reduce`; the split's N × C logits and
        N × D features are never held)."""
        from functools import partial

        from .inference import predict_reduce

        return self._over_source(partial(predict_reduce, fn=fn), model, head, split, features, desc)

    def _over_source(self, run, model, head, split: str, features: bool, desc: str):
        s = self._need_surrogate()
        return run(model, self.loader(self.source_dir, split), head=head, want_logits=True,
                   want_features=features, num_samples=self.source.split(split).num_samples,
                   desc=desc or f"source {split}", progress=self.progress,
                   autocast_dtype=s.autocast_dtype)

    def combine(self, per_target: list[np.ndarray]) -> np.ndarray:
        """One target's scores as they are; several: each normalised to sum 1, times its
        weight (``target_weights``; equal by default), then added."""
        from .multi_target import combine_target_scores

        if len(per_target) == 1:
            return per_target[0]
        names = [str(t) for t in self.targets] if len(self.targets) == len(per_target) else None
        return combine_target_scores(per_target, names=names,
                                     weights=list(self.target_weights) or None)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """The scorers' softmax: taken in float64 (rows of logits, whole or one batch's)."""
    return softmax(logits.astype(np.float64))
