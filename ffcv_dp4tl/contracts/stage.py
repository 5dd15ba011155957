"""Pipeline stage result (``runs/STAGE-KEY/DONE.json``): written by ``pipeline.stages``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from ..errors import DataError
from .fields import typed
from .versions import check_version

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


#: the ``values`` key of a stage result holding the digest of its result files (what the stages
#: after it record of it: ``pipeline.stages.RESULT_FILES``, ``result_id``)
RESULT_DIGEST = "result_sha256"

#: The typed fields a stage result *may* hold, per kind, checked when present (``null`` passes):
#: the values ``DONE.json`` gives to what reads it — the report's stage lines
#: (:func:`~ffcv_dp4tl.pipeline.stages.describe`), its seed table and ``[result]`` line, the
#: benches — so a hand-edited ``"top1_val": "0.08"`` is refused where the file is read, not a
#: ``ValueError`` at the report's ``:.4f`` after the whole pipeline ran, nor a wrong number in
#: it. Kinds are :data:`~ffcv_dp4tl.contracts.fields.KINDS` (``fraction``: a number in [0, 1]).
#: ``"*"``: every kind (the seconds of runs without an exact record, ``stages.ESTIMATED``; the
#: digest of the stage's result files, :data:`RESULT_DIGEST`). A listed time is ``nonneg``,
#: as the result's own ``seconds``/``cpu_seconds``/``loadavg_1min`` are (:data:`STAGE_TIMES`):
#: a hand-edited ``-5.0`` or ``NaN`` was printed as a pretraining time and summed into a total
#: (audit). Only listed values are typed: a score stage's values hold its scorer's own
#: metadata (docs/scorers.md), whose ``*_seconds`` may be anything it chose (review).
#: ``kept_units`` is a set (``nameset``): a unit listed twice made a class overlap of 0 %.
STAGE_FIELDS: dict[str, dict[str, str]] = {
    "*": {"estimated_seconds": "nonneg", RESULT_DIGEST: "str"},
    "train": {"top1_val": "fraction", "top1_train": "fraction", "loss": "number",
              "objective": "str", "brought": "bool", "weights": "str", "arch": "str",
              "epoch_seconds": "nonneg", "train_seconds": "nonneg"},
    "score": {"selection_seconds": "nonneg", "training_seconds": "nonneg"},
    "prune": {"train_kept": "count", "kept_sample_fraction": "fraction", "ratio": "number",
              "budget": "str", "kept_units": "nameset"},
    "finetune": {"test_top1": "fraction", "final_test_top1": "fraction",
                 "best_test_top1": "fraction", "best_epoch": "count", "top1_val": "fraction",
                 "train_top1": "fraction"},
    "build": {},
    "other": {},
}

#: The measured fields of every result (beside ``values``), typed when ``DONE.json`` is read:
#: wall and CPU seconds and the 1-min load average, each a finite number >= 0.
STAGE_TIMES: dict[str, str] = {"seconds": "nonneg", "cpu_seconds": "nonneg",
                               "loadavg_1min": "nonneg"}

#: What to do about a stage result that breaks its schema, when the caller names no folder.
STAGE_FIX = "delete its stage folder to rerun the stage"


def check_stage_values(kind: str, values: Mapping[str, Any], source: object = "stage result",
                       fix: str = STAGE_FIX) -> None:
    """A one-line :class:`DataError` naming ``source``, the field and ``fix`` when ``values``
    do not follow :data:`STAGE_VALUES` (required fields) and :data:`STAGE_FIELDS` (typed when
    present) for ``kind`` (brought weights: ``brought`` instead of a row)."""
    schema = STAGE_VALUES.get(kind, {})
    if kind == "train" and values.get("brought"):
        schema = {"weights": (str,), "arch": (str,)}
    for name, types in schema.items():
        if name not in values:
            raise DataError(f"{source}: a {kind} stage result lacks field {name!r}; {fix}")
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, types):
            raise DataError(f"{source}: field {name!r} of a {kind} stage result is "
                            f"{type(v).__name__} {v!r}, not {' or '.join(t.__name__ for t in types)}"
                            f"; {fix}")
    for name, what in {**STAGE_FIELDS["*"], **STAGE_FIELDS.get(kind, {})}.items():
        typed(values, name, what, source, fix, None)


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
    def from_json(cls, data: Any, source: object = "stage result", fix: str = STAGE_FIX
                  ) -> "StageResult":
        """The result ``data`` holds, checked (:func:`check_stage_values`, the times:
        :data:`STAGE_TIMES`); an error names ``source`` and says ``fix`` (a reader that knows the
        stage folder names it)."""
        if not isinstance(data, dict):
            raise DataError(f"{source} is not a stage result (a JSON object); {fix}")
        version = check_version(data, cls.VERSION, "stage result", source)
        name = str(data.get("stage", ""))
        kind = data.get("kind") or stage_kind(name)  # version-1 files from before 'kind'
        kind = kind if kind in STAGE_KINDS else "other"
        values = {k: v for k, v in data.items() if k not in cls.RESERVED}
        check_stage_values(kind, values, source, fix)

        def opt(key: str) -> float | None:
            value = typed(data, key, STAGE_TIMES[key], source, fix, None)
            return None if value is None else float(value)
        return cls(stage=name, kind=kind, seconds=opt("seconds") or 0.0,
                   format_version=version, cpu_seconds=opt("cpu_seconds"),
                   loadavg_1min=opt("loadavg_1min"), values=values)
