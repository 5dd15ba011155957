"""What :func:`~ffcv_dp4tl.pipeline.run.run_pipeline` returns and its ``results.json`` holds: a
:class:`PipelineResult` — the run's stages with their place (role, seed, target, finetuning
mode), the per-seed accuracy summary per target, and the config, data and recipes it ran on.

Readers (the benches, the report) ask for a stage by its place —
``res.finetune("lp", seed=1, target="warm")`` — never by parsing a row name such as
``finetune-lp-seed1@warm`` (that name is only the row's label in the report and the file).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..contracts import StageResult, check_version
from ..contracts.choices import FinetuneMode
from ..errors import DataError, DP4TLError
from .stages import StageRun


#: the roles of a pipeline's stages (:attr:`StagePlace.role`)
ROLES = ("surrogate", "score", "prune", "pretrain", "finetune")


@dataclass(frozen=True)
class StagePlace:
    """Where a stage sits in a run: its ``role`` and, for per-seed / per-target stages, which
    seed, target (display name; ``None`` with one target) and finetuning mode. ``seed`` is
    ``None`` for a stage shared by every seed (surrogate, score, prune, a brought source)."""

    name: str  # the row's label in the report and in results.json's "stages"
    role: str
    seed: int | None = None
    target: str | None = None
    mode: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "seed": self.seed, "target": self.target,
                "mode": self.mode}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StagePlace":
        return cls(name=str(d["name"]), role=str(d["role"]), seed=d.get("seed"),
                   target=d.get("target"), mode=d.get("mode"))


def stage_label(role: str, *, first_seed: bool = True, seed: int | None = None,
                target: str | None = None, mode: str | None = None) -> str:
    """The row label of a stage: ``pretrain``, ``pretrain-seed1``, ``finetune-lp``,
    ``finetune-lp-seed1@warm`` (the first seed's stages carry no seed, one target's no
    ``@name``: the labels runs had before several seeds and targets existed)."""
    name = role if mode is None else f"{role}-{mode}"
    if not first_seed:
        name += f"-seed{seed}"
    return name + (f"@{target}" if target else "")


@dataclass
class PipelineResult:
    """One pipeline run (see the module docstring). ``summary`` holds final/best target top-1
    per finetuning mode over the seeds (:func:`~ffcv_dp4tl.pipeline.report.summarize_seeds`)
    with one target; with several, ``per_target`` holds one such summary per target name and
    ``summary`` is empty.

    Its paths (``source``, ``target``, ``targets``, the stage folders, ``selection``, the
    config's roots) are absolute since 2026-12-07 (:func:`~.config.absolute_paths`), the same
    from any working directory. A file written before may hold them as its run was given them,
    relative to that run's working directory; it reads the same (still format version 1: a
    reader of either needs nothing else)."""

    VERSION: ClassVar[int] = 1

    config: dict[str, Any]
    source: str
    target: str  # the first target's dir
    protocol: str
    recipes: dict[str, str]
    seeds: list[int] = field(default_factory=list)
    stages: dict[str, StageRun] = field(default_factory=dict)  # label → stage, in run order
    places: dict[str, StagePlace] = field(default_factory=dict)  # label → its place
    #: several targets: name → dir, in the order given (``target_weights`` follow that order)
    targets: dict[str, str] = field(default_factory=dict)
    target_weights: list[float] = field(default_factory=list)
    #: several targets: name → {mode: LP/FF recipe name} (``recipes`` holds the first target's)
    target_recipes: dict[str, dict[str, str]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    per_target: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: str = ""  # report.md's path
    #: synth data knows the answer: how right the selection is (pipeline/truth.py; None on real data)
    ground_truth: dict[str, Any] | None = None
    #: a pruned run's selection (source, target, mask, scores dirs; several targets: targets) for the gallery
    selection: dict[str, Any] | None = None
    format_version: int = VERSION

    # ------------------------------------------------------------------------- building
    def add(self, place: StagePlace, run: StageRun) -> StageRun:
        self.stages[place.name] = run
        self.places[place.name] = place
        return run

    # -------------------------------------------------------------------------- reading
    @property
    def target_names(self) -> list[str | None]:
        """The targets' display names; ``[None]`` with one target."""
        return list(self.targets) or [None]

    def find(self, role: str, *, seed: int | None = None, target: str | None = None,
             mode: str | None = None) -> StageRun | None:
        """The stage of ``role`` for that seed / target / mode (a stage shared by every seed,
        e.g. the surrogate or a brought source model, matches any seed); ``None`` if the run
        has none (e.g. no surrogate for RANDOM). A role, mode or target no run has is refused
        (a typo, "pretrian" or "LP", read as a stage the run lacks; Python API review)."""
        if role not in ROLES:
            raise DP4TLError(f"no pipeline stage has role {role!r}; the roles are "
                             f"{', '.join(ROLES)}")
        if mode is not None:
            FinetuneMode.check(mode, "mode")
        if target is not None and target not in self.targets:
            raise DP4TLError(f"target {target!r} is not one of this run's targets"
                             + (f" ({', '.join(self.targets)})" if self.targets else
                                " (it has one: leave target out)"))
        for label, p in self.places.items():
            if p.role != role or (mode is not None and p.mode != mode):
                continue
            if seed is not None and p.seed is not None and p.seed != seed:
                continue
            if p.target is not None and p.target != target:
                continue
            return self.stages[label]
        return None

    def pretrain(self, seed: int | None = None) -> StageRun | None:
        """The source model's stage of ``seed`` (default: the run's first seed)."""
        return self.find("pretrain", seed=self._seed(seed))

    def finetune(self, mode: str, seed: int | None = None,
                 target: str | None = None) -> StageRun | None:
        """The ``mode`` (lp / ff) finetuning of ``seed`` (default: the run's first seed) on
        ``target`` (several targets: its name)."""
        return self.find("finetune", seed=self._seed(seed), target=target, mode=mode)

    def _seed(self, seed: int | None) -> int | None:
        if seed is None:
            return self.seeds[0] if self.seeds else None
        if self.seeds and seed not in self.seeds:
            raise DP4TLError(f"seed {seed} is not one of this run's seeds "
                             f"({', '.join(map(str, self.seeds))})")
        return seed

    # ------------------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": self.format_version, "config": self.config,
            "source": self.source, "target": self.target, "protocol": self.protocol,
            "recipes": self.recipes,
            "stages": {k: r.result.to_json() for k, r in self.stages.items()},
            "stage_places": [p.to_json() for p in self.places.values()],
            "stage_dirs": {k: str(r.dir) for k, r in self.stages.items()}}
        if self.targets:
            # a list, not a dict: results.json is written with sorted keys, which would lose the
            # order the weights (and "the first target") refer to
            out["targets"] = [{"name": n, "dir": d} for n, d in self.targets.items()]
            out["target_weights"] = list(self.target_weights)
            if self.target_recipes:
                out["target_recipes"] = self.target_recipes
        out["seeds"] = list(self.seeds)
        out["summary"] = self.summary
        if self.targets:
            out["per_target"] = self.per_target
        if self.ground_truth is not None:
            out["ground_truth"] = self.ground_truth
        if self.selection is not None:
            out["selection"] = self.selection
        if self.report:
            out["report"] = self.report
        return out

    @classmethod
    def from_json(cls, data: Any, source: object = "pipeline results") -> "PipelineResult":
        """A ``results.json`` back as an object (its stages with ``ran=False``: read, not run)."""
        if not isinstance(data, dict) or "stages" not in data:
            raise DataError(f"{source} is not a pipeline results file")
        version = check_version(data, cls.VERSION, "pipeline results", source)
        dirs = data.get("stage_dirs") or {}
        res = cls(config=data.get("config") or {}, source=str(data.get("source", "")),
                  target=str(data.get("target", "")), protocol=str(data.get("protocol", "")),
                  recipes=dict(data.get("recipes") or {}), seeds=list(data.get("seeds") or []),
                  targets=_targets_from_json(data, source),
                  target_weights=list(data.get("target_weights") or []),
                  target_recipes=dict(data.get("target_recipes") or {}),
                  summary=data.get("summary") or {}, per_target=data.get("per_target") or {},
                  report=str(data.get("report", "")), ground_truth=data.get("ground_truth"),
                  selection=data.get("selection"), format_version=version)
        places = {p["name"]: StagePlace.from_json(p) for p in data.get("stage_places") or []}
        for label, d in data["stages"].items():
            if label not in places:
                raise DataError(f"{source}: stage {label!r} has no entry in stage_places")
            res.add(places[label], StageRun(StageResult.from_json(d, source),
                                            Path(dirs.get(label, "")), ran=False))
        return res


def _targets_from_json(data: dict[str, Any], source: object) -> dict[str, str]:
    """``targets`` in the order given: the list :meth:`PipelineResult.to_json` writes, or the
    name → dir object of files written before 2026-12-04 (its keys sorted by the writer), put
    back in run order: the order the targets' finetuning stages ran (``stage_places`` is a
    list, in run order), so ``target_weights`` attach to the right targets again."""
    raw = data.get("targets") or []
    bad = DataError(f"{source}: \"targets\" must be a list of {{name, dir}} objects; restore "
                    "the file or rerun the pipeline (its stages are cached)")
    if isinstance(raw, list):
        try:
            return {str(t["name"]): str(t["dir"]) for t in raw}
        except (TypeError, KeyError):
            raise bad from None
    if not isinstance(raw, dict):
        raise bad
    run_order = [p.get("target") for p in data.get("stage_places") or [] if isinstance(p, dict)]
    order = [n for n in dict.fromkeys(run_order) if n in raw] + [n for n in raw if n not in run_order]
    return {str(n): str(raw[n]) for n in order}
