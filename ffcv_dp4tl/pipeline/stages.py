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

import contextlib
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..contracts import STAGE_KINDS, StageResult, stage_kind
from ..errors import DP4TLError
from ..fsutil import atomic_write_json, directory_lock, read_json, remove_orphan_temps

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

    def output(self, name: str) -> Path:
        """``dir / name``, a file this finished stage wrote and a later stage reads; missing (deleted
        by hand) it is a one-line error saying how to recompute it, not a traceback or a silent
        substitute."""
        path = self.dir / name
        if not path.exists():
            raise DP4TLError(f"{path} is missing from the {self.name} stage's folder, which a later "
                             f"stage reads; delete the stage folder {self.dir} and rerun to recompute it")
        return path


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


LOCK = ".stage.lock"
#: one file per run segment of a stage (``.segment-<start ns>-<pid>``): its modification time is
#: refreshed while the segment runs, and it holds the exact seconds once the segment ends, so a
#: stage killed and resumed reports the wall time of all its segments (a kill -9 loses at most
#: :data:`HEARTBEAT_S` seconds).
SEGMENT_GLOB = ".segment-*"
HEARTBEAT_S = 2.0


def run_stage(st: Stage, fn: Callable[[Path], dict[str, Any]], log: Callable[[str], None] = print
              ) -> StageRun:
    """Run ``fn(stage_dir)`` unless the stage is done; record its result and wall time.
    The returned dict's ``.ran`` says which happened.

    **Concurrency.** The stage runs under an ``fcntl`` lock on ``DIR/.stage.lock``. A second
    process reaching the same stage (two pipelines on one runs/ folder, e.g. two ratios sharing
    the surrogate and scores) *waits* for the first, then finds ``DONE.json`` and reuses its
    result; different stages run in parallel. Temporary files a killed run left in the stage
    folder are removed under the lock before the stage (re)starts.

    **Wall time** (``seconds``) sums every segment of a resumed stage, not only the last."""
    if st.done:
        return _skipped(st, log)
    st.dir.mkdir(parents=True, exist_ok=True)
    with directory_lock(st.dir / LOCK, f"stage {st.dir}", wait=True,
                        on_wait=lambda m: log(f"[{st.name}] {m}")):
        if st.done:  # finished by the run we waited for
            return _skipped(st, log)
        remove_orphan_temps(st.dir)
        atomic_write_json(st.dir / "inputs.json", st.inputs)
        log(f"[{st.name}] running in {st.dir}")
        with _Segment(st.dir) as seg:
            values = {k: v for k, v in dict(fn(st.dir) or {}).items()
                      if k not in StageResult.RESERVED}
        earlier = stage_seconds(st.dir, exclude=seg.path)
        res = StageResult(stage=st.name, kind=st.kind, seconds=earlier + seg.seconds,
                          values=values).to_json()
        atomic_write_json(st.dir / DONE, res)
    resumed = f" (+{earlier:.1f}s in earlier runs)" if earlier else ""
    log(f"[{st.name}] finished in {seg.seconds:.1f}s{resumed}")
    return StageRun(res, ran=True)


def _skipped(st: Stage, log: Callable[[str], None]) -> StageRun:
    res = st.result()
    log(f"[{st.name}] done already ({st.dir.name}, {res.get('seconds', 0):.1f}s) — skipped")
    return StageRun(res, ran=False)


class _Segment:
    """One run segment of a stage: a ``.segment-*`` file touched every :data:`HEARTBEAT_S`
    seconds by a daemon thread, holding its exact seconds when the segment ends (also by an
    exception or Ctrl-C)."""

    def __init__(self, stage_dir: Path):
        self.t0 = time.perf_counter()
        self.start = time.time()
        self.path = stage_dir / f".segment-{time.time_ns()}-{os.getpid()}"
        self.seconds = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "_Segment":
        self.path.write_text("")
        threading.Thread(target=self._beat, daemon=True).start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.seconds = time.perf_counter() - self.t0
        with contextlib.suppress(OSError):
            self.path.write_text(json.dumps({"start": self.start, "seconds": self.seconds}))


def stage_seconds(stage_dir: Path, exclude: Path | None = None) -> float:
    """Wall seconds of the recorded run segments in ``stage_dir`` (see :class:`_Segment`): the
    exact time of segments that ended, start → last heartbeat of segments that were killed."""
    total = 0.0
    for p in Path(stage_dir).glob(SEGMENT_GLOB):
        if p == exclude:
            continue
        try:
            text = p.read_text().strip()
            if text:
                total += float(json.loads(text)["seconds"])
            else:  # killed: from its start (in the name) to its last heartbeat
                start_ns = int(p.name.split("-")[1])
                total += max(0.0, p.stat().st_mtime - start_ns / 1e9)
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return total


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
