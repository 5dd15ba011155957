"""Typed, versioned file contracts shared by the writers and the readers.

Like ffcv's ``types.py`` serves its writer and reader, this module is the one place that says
what every file the project exchanges between stages looks like:

========================  ===========================  =================================
contract                  file                         written by → read by
========================  ===========================  =================================
:class:`DatasetManifest`  ``DATASET/manifest.json``    ``beton_builders`` → ``data``
:class:`MaskMeta`         ``NAME.json`` (beside .npy)  ``data.masks`` → ``data.masks``
:class:`ScoresMeta`       ``SCORES/scores.json``       ``pipeline.score`` → ``pipeline.prune``
:class:`StageResult`      ``runs/STAGE-KEY/DONE.json`` ``pipeline.stages`` → pipeline, report
========================  ===========================  =================================

Every contract is a dataclass with ``to_json()`` / ``from_json()`` and a ``format_version``.
Files written before versions existed carry no ``format_version`` and are read as version 1;
a file from a *newer* release (a version above the one this code knows) is refused with a
one-line :class:`UnsupportedFormatError` that says to upgrade. Fields a reader does not know
are kept (``extra`` / ``unknown``), so reading and writing a file back never loses data.

Import rule: this module depends on numpy and :mod:`ffcv_dp4tl.errors` only. ``beton_builders``
imports it without importing any of ffcv_dp4tl's subpackages (torch, ffcv), which is what keeps
the two top-level packages free of an import cycle (see tests/test_contracts.py).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, Mapping

import numpy as np

from .errors import DataError, DP4TLError, MaskError

__all__ = [
    "AdvNorm", "AdvUnits", "Backend", "BetonMode", "Budget", "Choice", "Criterion", "Decode", "FinetuneMode", "Format", "Order", "Protocol",
    "RecipeSet", "StartFrom", "TargetCrop", "TargetSplit", "check_k", "check_ratio", "check_stage_values",
    "DatasetManifest", "FORMAT", "INDEX_DTYPE", "ImageSettings", "MANIFEST_NAME", "MaskMeta",
    "SCORE_UNITS", "STAGE_KINDS", "STAGE_VALUES", "Scores", "ScoresMeta", "SplitEntry", "StageResult",
    "UnsupportedFormatError", "check_version", "dataset_fingerprint", "split_fingerprint",
    "stage_kind",
]


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


# ---------------------------------------------------------------------------------------------
# Choice sets: each defined once here, used by the CLI (typer takes these Enum types), the
# pipeline's config, the recipes and the files. Values travel as plain strings (``check``), so
# stage keys, fingerprints and JSON files hold exactly the strings they always held.
# ---------------------------------------------------------------------------------------------

class Choice(str, Enum):
    """A closed set of string values. ``str(member)`` / f-strings give the value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)

    @classmethod
    def check(cls, value: Any, what: str, error: type[DP4TLError] = DP4TLError) -> str:
        """``value`` (a member or its string) as the plain string; anything else is a one-line
        ``error`` naming ``what`` and the choices."""
        v = value.value if isinstance(value, cls) else value
        if v not in cls.values():
            raise error(f"{what} must be one of {', '.join(cls.values())}, got {value!r}")
        return str(v)


class Format(Choice):
    """Which on-disk copy of a built dataset the loaders read."""
    ffcv = "ffcv"
    wds = "wds"


class Decode(Choice):
    """Where JPEGs are decoded and augmented (recipe ``data.decode``); ``auto``: GPU when
    possible (``data.loaders.resolve_decode``)."""
    cpu = "cpu"
    gpu = "gpu"
    auto = "auto"


class Backend(Choice):
    """Scoring kernels (k-means, feature mapping)."""
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Protocol(Choice):
    """Recipe protocol of the pipeline: today's fast recipes, the paper's text (recipes/paper/),
    or the authors' released code (recipes/paper_code/); docs/deviations.md."""
    fast = "fast"
    paper = "paper"
    paper_code = "paper-code"


class RecipeSet(Choice):
    """Fast-protocol recipe set: tiny CPU recipes, the embedded benchmark's (bench) or the full
    ones; ``auto`` (``""`` in ``PipelineConfig.recipes``): from the data's manifest."""
    auto = "auto"
    tiny = "tiny"
    bench = "bench"
    full = "full"


class TargetCrop(Choice):
    """How the surrogate reads target images when scoring (recipe ``scoring.target_crop``): the
    eval transform's 224/256 centre crop, or the whole short side."""
    center = "center"
    none = "none"


class TargetSplit(Choice):
    """Target splits: the CoOp split JSON when found beside the data (auto), required (coop),
    or the dataset's official splits."""
    auto = "auto"
    coop = "coop"
    official = "official"


class Budget(Choice):
    """What a pruning ratio counts for class/cluster methods: units, or kept train samples."""
    units = "units"
    samples = "samples"


class Order(Choice):
    """Which end of the ranking is kept: the top-scored units (the method as published) or the
    lowest (paper Fig. A3)."""
    ordered = "ordered"
    reversed = "reversed"


class FinetuneMode(Choice):
    """Downstream protocol: linear probing or full finetuning."""
    lp = "lp"
    ff = "ff"


class AdvNorm(Choice):
    """PGD threat model of adversarial pretraining (recipe ``adv.norm``)."""
    linf = "linf"
    l2 = "l2"


class AdvUnits(Choice):
    """Units of a PGD step and random start (recipe ``adv.units``): [0, 1] pixels, or the
    normalised model input as the authors' released script (docs/deviations.md)."""
    pixel = "pixel"
    normalized = "normalized"


class StartFrom(Choice):
    """Which pretraining checkpoint finetuning starts from (recipe ``finetune.start_from``): the
    final epoch's, or the best val top-1's (the authors' best.ckpt)."""
    final = "final"
    best = "best"


class Criterion(Choice):
    """Which epoch's target test top-1 decides a winning subset (``--criterion``): the final
    epoch, or the best epoch on the test set (the authors' ``best_test_top1``)."""
    final = "final"
    best = "best"


class BetonMode(Choice):
    """How a build stores images in the beton: all JPEG, or a share raw."""
    jpg = "jpg"
    proportion = "proportion"


def check_ratio(ratio: Any, what: str = "ratio", error: type[DP4TLError] = DP4TLError) -> float:
    """A pruning ratio: the fraction of units removed, in [0, 1) (1 would keep nothing)."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise error(f"{what} must be a number in [0, 1), got {ratio!r}") from None
    if not (math.isfinite(r) and 0.0 <= r < 1.0):
        raise error(f"{what} must be in [0, 1), got {ratio}")
    return r


def check_k(k: Any, what: str = "k") -> int:
    """A number of k-means clusters: a positive integer."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise DP4TLError(f"{what} must be a positive number of clusters, got {k!r}")
    return k


# ---------------------------------------------------------------------------------------------
# Dataset manifest
# ---------------------------------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"
#: Identity tag of a manifest (kept from the first release; the version is ``format_version``).
FORMAT = "ffcv-dp4tl/1"

#: Per-sample record of the WebDataset random-access index (``wds/SPLIT.index.npy``).
#: ``shard``: shard number; ``offset``/``size``: byte range of the ``.jpg`` member's data in the
#: tar; ``label``: class id; ``key``: the sample's ``__key__`` in the shard (source ordinal).
INDEX_DTYPE = np.dtype(
    [("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i8"), ("key", "<u8")]
)


def split_fingerprint(sample_digests: bytes, labels: np.ndarray, classes: list[str]) -> str:
    """Content fingerprint of one split: hash of every sample's JPEG digest and label, in order."""
    h = hashlib.sha256()
    h.update("\n".join(classes).encode())
    h.update(sample_digests)
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def dataset_fingerprint(split_fingerprints: list[str]) -> str:
    """Fingerprint of a whole dataset: hash of its splits' fingerprints, in split order."""
    return hashlib.sha256("".join(split_fingerprints).encode()).hexdigest()


@dataclass(frozen=True)
class SplitEntry:
    """One split of a built dataset; paths are relative to the dataset directory."""

    num_samples: int
    fingerprint: str
    beton: str
    labels: str
    index: str
    shards: list[str]
    num_rejected: int = 0
    class_counts: list[int] | None = None
    #: content fingerprint of the beton: per sample its storage mode, shape and the SHA-1 of the
    #: stored bytes (beton_builders.integrity.beton_fingerprint); None in builds before it existed
    beton_fingerprint: str | None = None
    #: cheap per-file checksums checked when a loader opens the files: ``{"scheme", "beton":
    #: {"size", "digest"}, "shards": [{"size", "digest"}, ...]}``; None in older builds
    checksums: dict[str, Any] | None = None
    unknown: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        d = {"num_samples": int(self.num_samples), "num_rejected": int(self.num_rejected)}
        if self.class_counts is not None:
            d["class_counts"] = [int(c) for c in self.class_counts]
        d.update({"fingerprint": self.fingerprint, "beton": self.beton, "labels": self.labels,
                  "index": self.index, "shards": list(self.shards)})
        if self.beton_fingerprint is not None:
            d["beton_fingerprint"] = self.beton_fingerprint
        if self.checksums is not None:
            d["checksums"] = self.checksums
        return {**d, **self.unknown}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "split") -> "SplitEntry":
        missing = [k for k in ("num_samples", "fingerprint", "beton", "labels", "index", "shards")
                   if k not in d]
        if missing:
            raise DataError(f"{where} lacks field {missing[0]!r}; rebuild the dataset")
        known = _known(cls) - {"unknown"}
        cc = d.get("class_counts")
        return cls(num_samples=int(d["num_samples"]), fingerprint=str(d["fingerprint"]),
                   beton=d["beton"], labels=d["labels"], index=d["index"],
                   shards=list(d["shards"]), num_rejected=int(d.get("num_rejected", 0)),
                   class_counts=None if cc is None else [int(c) for c in cc],
                   beton_fingerprint=d.get("beton_fingerprint"),
                   checksums=dict(d["checksums"]) if isinstance(d.get("checksums"), dict) else None,
                   unknown={k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class ImageSettings:
    """How the images of a build were stored."""

    max_side: int
    quality: int
    beton_mode: str = "jpg"
    raw_fraction: float = 0.0
    color: str = "RGB"
    encoding: str = "JPEG"

    def to_json(self) -> dict[str, Any]:
        return {"max_side": self.max_side, "quality": self.quality, "beton_mode": self.beton_mode,
                "raw_fraction": self.raw_fraction, "color": self.color, "encoding": self.encoding}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ImageSettings":
        return cls(**{k: d[k] for k in _known(cls) if k in d})


@dataclass(frozen=True)
class DatasetManifest:
    """``manifest.json``: what a built dataset directory contains (written last by the builder)."""

    VERSION: ClassVar[int] = 1

    classes: list[str]
    splits: dict[str, SplitEntry]
    fingerprint: str
    name: str = ""
    image: ImageSettings | None = None
    shard_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the build's settings (source, options, listing digest): a rerun compares them
    build: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    #: hash of the splits' beton fingerprints (None for builds before they were recorded)
    beton_fingerprint: str | None = None
    format: str = FORMAT
    format_version: int = VERSION
    #: top-level fields this version does not know, kept so a rewrite loses nothing
    unknown: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": self.format, "format_version": self.format_version,
                             "name": self.name, "classes": list(self.classes),
                             "splits": {k: s.to_json() for k, s in self.splits.items()}}
        if self.image is not None:
            d["image"] = self.image.to_json()
        if self.shard_size is not None:
            d["shard_size"] = self.shard_size
        d.update({"fingerprint": self.fingerprint, "extra": self.extra, "build": self.build,
                  "created": self.created})
        if self.beton_fingerprint is not None:
            d["beton_fingerprint"] = self.beton_fingerprint
        return {**d, **self.unknown}

    @classmethod
    def from_json(cls, data: Any, source: object = MANIFEST_NAME) -> "DatasetManifest":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else None
            raise DataError(f"{source} is not an ffcv-dp4tl manifest (format {got!r}, "
                            f"expected {FORMAT!r}); rebuild the dataset")
        version = check_version(data, cls.VERSION, "dataset manifest", source)
        for key in ("classes", "splits", "fingerprint"):
            if key not in data:
                raise DataError(f"{source} lacks field {key!r}; rebuild the dataset")
        known = _known(cls) - {"unknown"}
        return cls(
            classes=[str(c) for c in data["classes"]],
            splits={k: SplitEntry.from_json(v, f"{source} split {k!r}")
                    for k, v in data["splits"].items()},
            fingerprint=str(data["fingerprint"]), name=str(data.get("name", "")),
            image=ImageSettings.from_json(data["image"]) if data.get("image") else None,
            shard_size=data.get("shard_size"), extra=dict(data.get("extra") or {}),
            build=dict(data.get("build") or {}), created=str(data.get("created", "")),
            beton_fingerprint=data.get("beton_fingerprint"),
            format=data["format"], format_version=version,
            unknown={k: v for k, v in data.items() if k not in known})


# ---------------------------------------------------------------------------------------------
# Index mask sidecar
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskMeta:
    """``NAME.json`` beside a mask's ``NAME.npy``: which split of which dataset it indexes (by
    content fingerprint) and how it was made (``provenance``: method, ratio, scores, ...)."""

    VERSION: ClassVar[int] = 1
    #: fields of the file that are not provenance
    FIELDS: ClassVar[tuple[str, ...]] = ("split", "fingerprint", "num_samples", "num_kept",
                                         "created")

    fingerprint: str | None
    split: str | None = None
    num_samples: int | None = None
    num_kept: int | None = None
    created: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        """The sidecar's flat dict (the shape ``IndexMask.meta`` has always had)."""
        d: dict[str, Any] = {"format_version": self.format_version}
        for k in self.FIELDS:
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return {**d, **self.provenance}

    @classmethod
    def from_json(cls, data: Any, source: object = "mask metadata",
                  require_fingerprint: bool = True) -> "MaskMeta":
        if not isinstance(data, dict) or (require_fingerprint and "fingerprint" not in data):
            raise MaskError(f"{source} lacks field 'fingerprint'; recompute the mask")
        version = check_version(data, cls.VERSION, "mask", source, error=MaskError)
        return cls(fingerprint=data.get("fingerprint"), split=data.get("split"),
                   num_samples=data.get("num_samples"), num_kept=data.get("num_kept"),
                   created=data.get("created"), format_version=version,
                   provenance={k: v for k, v in data.items()
                               if k not in cls.FIELDS and k != "format_version"})


# ---------------------------------------------------------------------------------------------
# Scores metadata
# ---------------------------------------------------------------------------------------------

#: What one score is about: a source class, a k-means cluster, or a source sample.
SCORE_UNITS = ("class", "cluster", "sample")


@dataclass(frozen=True)
class ScoresMeta:
    """``scores.json`` of a scores directory (``scores.npy`` + optional ``tiebreak.npy``,
    ``train_units.npy``, ``val_units.npy``): the method, its unit, the number of units, and
    everything else the method recorded (``meta``: ``source_fingerprint``, ``seed``,
    ``surrogate_hash``, ``selection_seconds``, ``higher_is_better``, ...)."""

    VERSION: ClassVar[int] = 1

    method: str
    unit: str
    num_units: int
    meta: dict[str, Any] = field(default_factory=dict)
    format_version: int = VERSION

    def __post_init__(self) -> None:
        if self.unit not in SCORE_UNITS:
            raise ValueError(f"unit must be one of {SCORE_UNITS}")

    @property
    def source_fingerprint(self) -> str | None:
        return self.meta.get("source_fingerprint")

    @property
    def selection_seconds(self) -> float | None:
        return self.meta.get("selection_seconds")

    @property
    def seed(self) -> int | None:
        """The seed the method read (None for methods that read none: ``Scorer.reads``)."""
        return self.meta.get("seed")

    @property
    def higher_is_better(self) -> bool:
        """Sample unit: keep the highest scores (``False``: the lowest); absent = ``True``."""
        return bool(self.meta.get("higher_is_better", True))

    @property
    def surrogate(self) -> str | None:
        """The surrogate checkpoint scored (None for methods without one)."""
        return self.meta.get("surrogate")

    @property
    def target_fingerprints(self) -> list[str]:
        """The fingerprints of the targets scored, in order (``[]`` for in-domain methods)."""
        fps = self.meta.get("target_fingerprints")
        if fps is None:
            one = self.meta.get("target_fingerprint")
            return [] if one is None else [one]
        return list(fps)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "method": self.method, "unit": self.unit,
                "num_units": int(self.num_units), **self.meta}

    @classmethod
    def from_json(cls, data: Any, source: object = "scores.json") -> "ScoresMeta":
        if (not isinstance(data, dict) or data.get("unit") not in SCORE_UNITS
                or "method" not in data):
            raise DataError(f"{source} is not a dp4tl scores file (field 'unit'/'method')")
        version = check_version(data, cls.VERSION, "scores file", source)
        return cls(method=data["method"], unit=data["unit"],
                   num_units=int(data.get("num_units", 0)), format_version=version,
                   meta={k: v for k, v in data.items()
                         if k not in ("method", "unit", "num_units", "format_version")})


@dataclass(frozen=True)
class Scores:
    """A whole scores directory: its :class:`ScoresMeta` and its arrays (``scores`` one per
    unit; ``tiebreak`` orders equal scores (LM/FM); ``train_units`` / ``val_units`` the cluster
    id of every source train / val sample (cluster unit)). Written by ``pipeline.scores_io``."""

    #: the arrays of a scores directory, one ``NAME.npy`` each (``scores`` is required)
    ARRAYS: ClassVar[tuple[str, ...]] = ("scores", "tiebreak", "train_units", "val_units")

    meta: ScoresMeta
    scores: np.ndarray
    tiebreak: np.ndarray | None = None
    train_units: np.ndarray | None = None
    val_units: np.ndarray | None = None

    @property
    def method(self) -> str:
        return self.meta.method

    @property
    def unit(self) -> str:
        return self.meta.unit

    def units_of(self, split: str) -> np.ndarray | None:
        """Cluster id of every sample of ``split`` (``train``/``val``), None when not stored."""
        return {"train": self.train_units, "val": self.val_units}.get(split)


# ---------------------------------------------------------------------------------------------
# Pipeline stage result
# ---------------------------------------------------------------------------------------------

#: What a stage does, and so what its result holds: train (surrogate, pretraining: top1_val or
#: an SSL objective's loss), score (selection_seconds), prune (unit, kept units, *_kept),
#: finetune (test_top1), build (a dataset).
STAGE_KINDS = ("train", "score", "prune", "finetune", "build", "other")
_KIND_OF_NAME = {"surrogate": "train", "pretrain": "train", "train": "train", "score": "score",
                 "prune": "prune", "finetune": "finetune", "build": "build", "data": "build"}


def stage_kind(name: str) -> str:
    """The kind of the pipeline's stage called ``name`` (``finetune-lp`` → ``finetune``)."""
    return _KIND_OF_NAME.get(name.split("-", 1)[0], "other")


_NUMBER = (int, float)
#: The schema of ``StageResult.values`` per kind: the fields every result of that kind holds
#: (what the reports, benches and the cost table read), with their JSON types. A stage may
#: record more (kept as they are). ``train``: the last epoch's metrics row of ``trainer.train``
#: (``epoch``, ``loss``, ``top1_train``, ``top1_val`` …), or, for brought weights,
#: ``brought = true`` with ``weights``/``arch``; ``score``: the scores' metadata
#: (:class:`ScoresMeta`: ``method``, ``unit``, ``selection_seconds`` …); ``prune``: the prune
#: summary (``unit``, ``train_kept``, ``kept_units``, ``kept_sample_fraction`` …);
#: ``finetune``: ``result.json`` of ``training.finetune`` (``test_top1``, ``best_test_top1`` …).
#: Checked when a result is made and when ``DONE.json`` is read.
STAGE_VALUES: dict[str, dict[str, tuple[type, ...]]] = {
    "train": {"epoch": (int,)},
    "score": {"method": (str,), "unit": (str,)},
    "prune": {"unit": (str,), "train_kept": (int,)},
    "finetune": {"test_top1": _NUMBER + (type(None),)},
    "build": {},
    "other": {},
}


def check_stage_values(kind: str, values: Mapping[str, Any], source: object = "stage result"
                       ) -> None:
    """A one-line :class:`DataError` naming ``source`` and the field when ``values`` do not
    follow :data:`STAGE_VALUES` for ``kind`` (brought weights: ``brought`` instead of a row)."""
    schema = STAGE_VALUES.get(kind, {})
    if kind == "train" and values.get("brought"):
        schema = {"weights": (str,), "arch": (str,)}
    for name, types in schema.items():
        if name not in values:
            raise DataError(f"{source}: a {kind} stage result lacks field {name!r}; delete its "
                            "stage folder to rerun the stage")
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, types):
            raise DataError(f"{source}: field {name!r} of a {kind} stage result is "
                            f"{type(v).__name__} {v!r}, not {' or '.join(t.__name__ for t in types)}")


@dataclass(frozen=True)
class StageResult:
    """``DONE.json`` of a finished stage: its name, explicit ``kind``, wall time, CPU time and
    the 1-min load average when it finished (both measured by ``run_stage`` around the stage's
    function; ``None`` in files from before they were recorded), and the values its function
    returned (``values``, flat in the file; their fields per kind: :data:`STAGE_VALUES`)."""

    VERSION: ClassVar[int] = 1
    RESERVED: ClassVar[tuple[str, ...]] = ("stage", "kind", "seconds", "cpu_seconds",
                                           "loadavg_1min", "format_version")

    stage: str
    kind: str
    seconds: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)
    format_version: int = VERSION
    cpu_seconds: float | None = None  # this process + its reaped children (loader workers)
    loadavg_1min: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage kind must be one of {STAGE_KINDS}, got {self.kind!r}")
        check_stage_values(self.kind, self.values, f"stage {self.stage!r}")

    def to_json(self) -> dict[str, Any]:
        measured = {k: float(v) for k, v in (("cpu_seconds", self.cpu_seconds),
                                             ("loadavg_1min", self.loadavg_1min))
                    if v is not None}
        return {**self.values, "seconds": float(self.seconds), **measured, "stage": self.stage,
                "kind": self.kind, "format_version": self.format_version}

    @classmethod
    def from_json(cls, data: Any, source: object = "stage result") -> "StageResult":
        if not isinstance(data, dict):
            raise DataError(f"{source} is not a stage result (a JSON object)")
        version = check_version(data, cls.VERSION, "stage result", source)
        name = str(data.get("stage", ""))
        kind = data.get("kind") or stage_kind(name)  # version-1 files from before 'kind'
        kind = kind if kind in STAGE_KINDS else "other"
        values = {k: v for k, v in data.items() if k not in cls.RESERVED}
        check_stage_values(kind, values, source)

        def opt(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])
        return cls(stage=name, kind=kind, seconds=float(data.get("seconds", 0.0)),
                   format_version=version, cpu_seconds=opt("cpu_seconds"),
                   loadavg_1min=opt("loadavg_1min"), values=values)
