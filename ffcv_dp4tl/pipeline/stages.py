"""Run directories keyed by their inputs, and stages that are skipped once finished.

A stage's directory name ends with a short hash of everything that determines its output
(upstream stage keys, recipe, ratio, seed...). A stage is finished when its ``DONE.json``
exists; that file is written atomically as the stage's very last step, so a killed run
restarts exactly the unfinished stages, and changing an input makes a new directory instead
of silently reusing stale output.

``DONE.json`` holds a :class:`~ffcv_dp4tl.contracts.StageResult`: the values the stage's
function returned, plus its name, explicit ``kind`` (train / score / prune / finetune / ...;
readers such as the report dispatch on it instead of guessing from which keys exist), wall
time and format version.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..contracts import STAGE_KINDS, StageResult, stage_kind
from ..fsutil import atomic_write_json, read_json

DONE = "DONE.json"


def key_of(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class Stage:
    name: str
    dir: Path
    key: str
    inputs: dict[str, Any]
    kind: str = "other"

    @property
    def done(self) -> bool:
        return (self.dir / DONE).exists()

    def result(self) -> dict[str, Any]:
        """The stage's result as its JSON dict (``kind`` filled in for files from before it)."""
        return self.typed_result().to_json()

    def typed_result(self) -> StageResult:
        return StageResult.from_json(read_json(self.dir / DONE, f"stage {self.name} result"),
                                     self.dir / DONE)


def stage(root: Path, name: str, inputs: dict[str, Any], kind: str | None = None) -> Stage:
    """A stage of ``kind`` (default: from its name, e.g. ``finetune-lp`` → ``finetune``).
    The kind is not part of the key: it describes the result, it does not change it."""
    kind = kind or stage_kind(name)
    if kind not in STAGE_KINDS:
        raise ValueError(f"stage kind must be one of {STAGE_KINDS}, got {kind!r}")
    key = key_of({"stage": name, **inputs})
    return Stage(name, Path(root) / f"{name}-{key}", key, inputs, kind)


class StageRun(dict):
    """A stage's result dict (what ``DONE.json`` holds) plus ``ran``: True when this call ran
    the stage, False when it was skipped as already done. ``ran`` is not part of the result
    (not saved, not compared): a skipped stage returns the result its run recorded."""

    ran: bool = False

    def __init__(self, result: dict[str, Any], ran: bool):
        super().__init__(result)
        self.ran = ran


def run_stage(st: Stage, fn: Callable[[Path], dict[str, Any]], log: Callable[[str], None] = print
              ) -> StageRun:
    """Run ``fn(stage_dir)`` unless the stage is done; record its result and wall time.
    The returned dict's ``.ran`` says which happened."""
    if st.done:
        res = st.result()
        log(f"[{st.name}] done already ({st.dir.name}, {res.get('seconds', 0):.1f}s) — skipped")
        return StageRun(res, ran=False)
    st.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(st.dir / "inputs.json", st.inputs)
    log(f"[{st.name}] running in {st.dir}")
    t0 = time.perf_counter()
    values = {k: v for k, v in dict(fn(st.dir) or {}).items() if k not in StageResult.RESERVED}
    res = StageResult(stage=st.name, kind=st.kind, seconds=time.perf_counter() - t0,
                      values=values).to_json()
    atomic_write_json(st.dir / DONE, res)
    log(f"[{st.name}] finished in {res['seconds']:.1f}s")
    return StageRun(res, ran=True)


def describe(result: dict[str, Any] | StageResult) -> str:
    """One-line headline of a stage result for reports, chosen by the result's ``kind``."""
    r = result if isinstance(result, StageResult) else StageResult.from_json(dict(result))
    v = r.values
    if r.kind == "finetune":
        if "test_top1" in v:
            best = (f" (best {v['best_test_top1']:.4f} at epoch {v['best_epoch']})"
                    if v.get("best_test_top1") is not None else "")
            return f"target test top-1 {v['test_top1']:.4f}{best}"
        if v.get("top1_val") is not None:
            return f"val top-1 {v['top1_val']:.4f}"
    if r.kind == "score" and "selection_seconds" in v:
        return f"selection {v['selection_seconds']:.1f}s"
    if r.kind == "train":
        if v.get("brought"):
            return f"brought weights {Path(str(v.get('weights', '?'))).name} (imported, not trained)"
        if v.get("top1_val") is not None:
            return f"val top-1 {v['top1_val']:.4f}"
        if v.get("objective", "supervised") != "supervised":
            return (f"{v['objective']} loss {v['loss']:.3f}, instance top-1 "
                    f"{v['top1_train']:.3f}")
    return ""
