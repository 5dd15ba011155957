"""Scores directory (``SCORES/scores.json`` + arrays): written by ``pipeline.score``, read by ``pipeline.prune``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError
from .fields import REQUIRED, typed
from .versions import check_version

#: what a damaged scores.json says to do (the reader that knows the folder passes a better one)
RESCORE = "rerun `dp4tl score` into that folder"

#: What one score is about: a source class, a k-means cluster, or a source sample.
SCORE_UNITS = ("class", "cluster", "sample")


#: the optional fields of ``scores.json`` its readers use: (key, kind of
#: :data:`~ffcv_dp4tl.contracts.fields.KINDS`, default when null: ``REQUIRED`` = null refused
#: where null would read as another value, e.g. ``bool(None)`` is a false ``higher_is_better``)
_KNOWN_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("source_fingerprint", "str", REQUIRED), ("options", "object", REQUIRED),
    ("array_sha256", "object", REQUIRED), ("higher_is_better", "bool", REQUIRED),
    ("seed", "count", REQUIRED), ("selection_seconds", "nonneg", None),  # (times, as a
    ("training_seconds", "nonneg", None), ("surrogate", "str", None),   # stage's: >= 0)
    ("surrogate_hash", "str", None), ("target_fingerprint", "str", None),
    ("target_fingerprints", "strs", None), ("revision", "count", None))

#: the fields of :data:`_KNOWN_FIELDS` a ``scores.json`` of format version 2 on must hold: the
#: source's fingerprint (scores of another dataset are refused) and the arrays' digests (a
#: replaced array is refused). Version 1 (or no ``format_version``: files from before 2026-12-05)
#: may lack them and is read as before; deleting one from a newer file must not switch its check
#: off (it did), so there it is one line naming the field.
_REQUIRED_FROM_V2: tuple[str, ...] = ("source_fingerprint", "array_sha256")


@dataclass(frozen=True)
class ScoresMeta:
    """``scores.json`` of a scores directory (``scores.npy`` + optional ``tiebreak.npy``,
    ``train_units.npy``; ``val_units.npy`` in an older folder): the method, its unit, the
    number of units, and everything else the method recorded (``meta``:
    ``source_fingerprint``, ``seed``, ``surrogate_hash``, ``selection_seconds``,
    ``higher_is_better``, ...)."""

    #: 2 (2026-12-05): ``source_fingerprint`` and ``array_sha256`` are required
    #: (:data:`_REQUIRED_FROM_V2`)
    VERSION: ClassVar[int] = 2

    method: str
    unit: str
    num_units: int
    meta: dict[str, Any] = field(default_factory=dict)
    format_version: int = VERSION

    def __post_init__(self) -> None:
        if self.unit not in SCORE_UNITS:
            raise ValueError(f"unit must be one of {SCORE_UNITS}")
        lacking = [k for k in _REQUIRED_FROM_V2 if self.meta.get(k) is None]
        if self.format_version >= 2 and lacking:  # (a file its own reader would refuse)
            raise ValueError(f"a scores.json of format version {self.format_version} must hold "
                             f"{lacking[0]!r} (format 1 may lack it: version_for)")

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

    @classmethod
    def version_for(cls, meta: dict[str, Any]) -> int:
        """The format version a writer records for ``meta``: the current one when ``meta``
        holds every field it requires (``dp4tl score`` always records them), else 1, the
        format that may lack them (a caller that knows no source, e.g. a test's scores)."""
        return cls.VERSION if all(meta.get(k) is not None for k in _REQUIRED_FROM_V2) else 1

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "method": self.method, "unit": self.unit,
                "num_units": int(self.num_units), **self.meta}

    @classmethod
    def from_json(cls, data: Any, source: object = "scores.json", fix: str = RESCORE) -> "ScoresMeta":
        if (not isinstance(data, dict) or data.get("unit") not in SCORE_UNITS
                or "method" not in data):
            raise DataError(f"{source} is not a dp4tl scores file (field 'unit' must be one of "
                            f"{', '.join(SCORE_UNITS)}, and 'method' present); {fix}")
        version = check_version(data, cls.VERSION, "scores file", source)
        method = typed(data, "method", "str", source, fix, REQUIRED)
        num_units = typed(data, "num_units", "count", source, fix, REQUIRED)
        # read by prune, the cost table and the rescoring check: a damaged value must neither
        # skip its check nor be read as something else ("false" was a true higher_is_better)
        required = _REQUIRED_FROM_V2 if version >= 2 else ()
        for key, kind, default in _KNOWN_FIELDS:
            if key in data or key in required:
                typed(data, key, kind, source, fix, REQUIRED if key in required else default)
        return cls(method=method, unit=data["unit"], num_units=num_units, format_version=version,
                   meta={k: v for k, v in data.items()
                         if k not in ("method", "unit", "num_units", "format_version")})


def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Both None, or equal shapes and values (NaN equal to NaN in float arrays)."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    nan = a.dtype.kind in "fc" and b.dtype.kind in "fc"
    return bool(np.array_equal(a, b, equal_nan=nan))


@dataclass(frozen=True, eq=False)
class Scores:
    """A whole scores directory: its :class:`ScoresMeta` and its arrays (``scores`` one per
    unit; ``tiebreak`` orders equal scores (LM/FM); ``train_units`` the cluster id of every
    source train sample (cluster unit); ``val_units``, the val samples' ids, only in a folder
    written before 2026-12-05: FM wrote them and nothing read them, since a pruned val split
    follows the train mask's classes). Written by ``pipeline.scores_io``."""

    #: the arrays of a scores directory, one ``NAME.npy`` each (``scores`` is required)
    ARRAYS: ClassVar[tuple[str, ...]] = ("scores", "tiebreak", "train_units", "val_units")

    meta: ScoresMeta
    scores: np.ndarray
    tiebreak: np.ndarray | None = None
    train_units: np.ndarray | None = None
    val_units: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:
        """The same meta and arrays by value (the dataclass's ``==`` compared the arrays
        themselves: "truth value of an array is ambiguous"; API audit)."""
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.meta == other.meta and all(_same_array(getattr(self, n), getattr(other, n))
                                               for n in self.ARRAYS)

    __hash__ = None  # type: ignore[assignment]  # (arrays: mutable, unhashable)

    @property
    def method(self) -> str:
        return self.meta.method

    @property
    def unit(self) -> str:
        return self.meta.unit

    def units_of(self, split: str) -> np.ndarray | None:
        """Cluster id of every sample of ``split`` (``train``/``val``), None when not stored."""
        return {"train": self.train_units, "val": self.val_units}.get(split)
