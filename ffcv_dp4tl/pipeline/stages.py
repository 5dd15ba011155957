"""Run directories keyed by their inputs, and stages that are skipped once finished.

A stage's directory name ends with a short hash of everything that determines its output
(upstream stage keys, recipe, ratio, seed...). A stage is finished when its ``DONE.json``
exists; that file is written atomically as the stage's very last step, so a killed run
restarts exactly the unfinished stages, and changing an input makes a new directory instead
of silently reusing stale output.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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

    @property
    def done(self) -> bool:
        return (self.dir / DONE).exists()

    def result(self) -> dict[str, Any]:
        return read_json(self.dir / DONE, f"stage {self.name} result")


def stage(root: Path, name: str, inputs: dict[str, Any]) -> Stage:
    key = key_of({"stage": name, **inputs})
    return Stage(name, Path(root) / f"{name}-{key}", key, inputs)


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
    res = dict(fn(st.dir) or {})
    res["seconds"] = time.perf_counter() - t0
    res["stage"] = st.name
    atomic_write_json(st.dir / DONE, res)
    log(f"[{st.name}] finished in {res['seconds']:.1f}s")
    return StageRun(res, ran=True)
