"""Run directories keyed by their inputs, and stages that are skipped once finished.

A stage's directory name ends with a short hash of everything that determines its output
(upstream stage keys, recipe, ratio, seed...). A stage is finished when its ``DONE.json``
exists; that file is written atomically as the stage's very last step, so a killed run
restarts exactly the unfinished stages, and changing an input makes a new directory instead
of silently reusing stale output.

``DONE.json`` holds a :class:`~ffcv_dp4tl.contracts.StageResult`: the values the stage's
function returned, plus its name, explicit ``kind`` (train / score / prune / finetune / ...;
readers such as the report dispatch on it instead of guessing from which keys exist), wall
time, CPU time, load average and format version. :func:`run_stage` measures the times itself
and returns a :class:`StageRun` (the result, its folder, and whether this call ran it): the
benches read these fields, never the log.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

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

    def result(self) -> StageResult:
        """The recorded result (``kind`` filled in for files from before it; the CPU seconds a
        stage of an older version recorded beside it, in ``cpu_seconds.json``, when its
        ``DONE.json`` has none)."""
        res = StageResult.from_json(read_json(self.dir / DONE, f"stage {self.name} result",
                                              f"delete the stage folder {self.dir} and rerun"),
                                    self.dir / DONE)
        legacy = self.dir / LEGACY_CPU_FILE
        if res.cpu_seconds is None and legacy.exists():
            old = read_json(legacy, "cpu seconds")
            res = replace(res, cpu_seconds=old.get("cpu_seconds"),
                          loadavg_1min=old.get("loadavg_1min"))
        return res

    def output(self, name: str) -> Path:
        """``dir / name``, a file this finished stage wrote and a later stage reads; missing (deleted
        by hand) it is a one-line error saying how to recompute it, not a traceback or a silent
        substitute."""
        path = self.dir / name
        if not path.exists():
            raise DP4TLError(f"{path} is missing from the {self.name} stage's folder, which a later "
                             f"stage reads; delete the stage folder {self.dir} and rerun to recompute it")
        return path


#: where the cost table's CPU meter kept a stage's CPU seconds before ``DONE.json`` held them
LEGACY_CPU_FILE = "cpu_seconds.json"


def stage(root: Path, name: str, inputs: dict[str, Any], kind: str | None = None) -> Stage:
    """A stage of ``kind`` (default: from its name, e.g. ``finetune-lp`` → ``finetune``).
    The kind is not part of the key: it describes the result, it does not change it."""
    kind = kind or stage_kind(name)
    if kind not in STAGE_KINDS:
        raise ValueError(f"stage kind must be one of {STAGE_KINDS}, got {kind!r}")
    key = key_of({"stage": name, **inputs})
    return Stage(name, Path(root) / f"{name}-{key}", key, inputs, kind)


@dataclass(frozen=True)
class StageRun:
    """A stage as one pipeline call met it: its recorded :class:`StageResult`, its folder, and
    ``ran`` — True when this call ran the stage, False when it was skipped as already done (a
    skipped stage has the result, times included, that its run recorded)."""

    result: StageResult
    dir: Path
    ran: bool

    @property
    def name(self) -> str:
        return self.result.stage

    @property
    def kind(self) -> str:
        return self.result.kind

    @property
    def values(self) -> dict[str, Any]:
        return self.result.values

    @property
    def seconds(self) -> float:
        return self.result.seconds

    @property
    def cpu_seconds(self) -> float | None:
        return self.result.cpu_seconds

    @property
    def loadavg_1min(self) -> float | None:
        return self.result.loadavg_1min


LOCK = ".stage.lock"
#: one file per run segment of a stage (``.segment-<start ns>-<pid>``): its modification time is
#: refreshed while the segment runs, and it holds the exact seconds once the segment ends, so a
#: stage killed and resumed reports the wall time of all its segments (a kill -9 loses at most
#: :data:`HEARTBEAT_S` seconds).
SEGMENT_GLOB = ".segment-*"
HEARTBEAT_S = 2.0
#: The file a stage of each kind resumes from. When it is not there the stage starts over (a run
#: killed before its first checkpoint, or the checkpoint deleted as a refusal advises), so the
#: time of its earlier segments went to work that is thrown away: it is not counted.
RESUMES_FROM = {"train": "checkpoint.pt", "finetune": "finetune_state.pt"}


#: what a stage was computed from: ``{upstream folder name: sha256 of its DONE.json}``
UPSTREAM = "upstream.json"


def upstream_record(upstream: Iterable[Stage]) -> dict[str, str]:
    """How a stage records the finished stages it reads (:data:`UPSTREAM`). Keys hold upstream
    *keys*, not contents; an upstream folder deleted and computed again (the advice of
    :meth:`Stage.output`; most recipes are not bit-deterministic) has the same key but another
    result, and its ``DONE.json`` (times included) differs, so this record tells them apart."""
    return {u.dir.name: hashlib.sha256((u.dir / DONE).read_bytes()).hexdigest() for u in upstream}


def _stale(st: Stage, record: dict[str, str]) -> list[str]:
    """The upstream stages that were computed again since the stage folder was computed from
    them (its content is then stale). A folder without the record (a stage run before it
    existed) is trusted, and adopts ``record``."""
    path = st.dir / UPSTREAM
    if not record:
        return []
    if not path.exists():
        if st.done:  # best effort: a later recomputation upstream is then noticed
            with contextlib.suppress(OSError):
                atomic_write_json(path, record)
        return []
    try:
        old = read_json(path, f"stage {st.name} upstream record")
    except DP4TLError:  # damaged: nothing tells what the stage was computed from
        old = None
    return sorted(k for k in record if not isinstance(old, dict) or old.get(k) != record[k])


def _clear(stage_dir: Path) -> None:
    """Empty a stale stage folder (all of it is the stage's own output) but its lock."""
    for p in stage_dir.iterdir():
        if p.name != LOCK:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def run_stage(st: Stage, fn: Callable[[Path], dict[str, Any]], log: Callable[[str], None] = print,
              upstream: Iterable[Stage] = ()) -> StageRun:
    """Run ``fn(stage_dir)`` unless the stage is done; record its result, wall time, CPU time
    and load average. The returned :class:`StageRun`'s ``ran`` says which happened.

    **Concurrency.** The stage runs under an ``fcntl`` lock on ``DIR/.stage.lock``. A second
    process reaching the same stage (two pipelines on one runs/ folder, e.g. two ratios sharing
    the surrogate and scores) *waits* for the first, then finds ``DONE.json`` and reuses its
    result; different stages run in parallel. Temporary files a killed run left in the stage
    folder are removed under the lock before the stage (re)starts.

    **Wall time** (``seconds``) sums every segment of a resumed stage, not only the last; so
    does the **CPU time** (``cpu_seconds``: this process and its reaped children, i.e. finished
    data-loader workers — far less sensitive than wall time to other jobs on a shared machine;
    a killed segment's CPU time is lost).

    **Upstream.** ``upstream``: the finished stages ``fn`` reads. A stage folder computed from
    other results of them (one was deleted and computed again since) is stale: emptied and
    run again, finished or not (see :func:`upstream_record`)."""
    record = upstream_record(upstream)
    if st.done and not _stale(st, record):
        return _skipped(st, log)
    st.dir.mkdir(parents=True, exist_ok=True)
    with directory_lock(st.dir / LOCK, f"stage {st.dir}", wait=True,
                        on_wait=lambda m: log(f"[{st.name}] {m}")):
        changed = _stale(st, record)
        if changed:
            log(f"[{st.name}] {', '.join(changed)} was computed again since this stage ran "
                f"from it: running the stage again")
            _clear(st.dir)
        elif st.done:  # finished earlier, or by the run we waited for
            return _skipped(st, log)
        remove_orphan_temps(st.dir)
        _forget_thrown_away_segments(st, log)
        atomic_write_json(st.dir / "inputs.json", st.inputs)
        if record:
            atomic_write_json(st.dir / UPSTREAM, record)
        log(f"[{st.name}] running in {st.dir}")
        with _Segment(st.dir) as seg:
            values = {k: v for k, v in dict(fn(st.dir) or {}).items()
                      if k not in StageResult.RESERVED}
        earlier, earlier_cpu = segment_totals(st.dir, exclude=seg.path)
        res = StageResult(stage=st.name, kind=st.kind, seconds=earlier + seg.seconds,
                          cpu_seconds=earlier_cpu + seg.cpu_seconds, loadavg_1min=_loadavg(),
                          values=values)
        atomic_write_json(st.dir / DONE, res.to_json())
    resumed = f" (+{earlier:.1f}s in earlier runs)" if earlier else ""
    log(f"[{st.name}] finished in {seg.seconds:.1f}s{resumed}")
    return StageRun(res, st.dir, ran=True)


def _forget_thrown_away_segments(st: Stage, log: Callable[[str], None]) -> None:
    """A stage that starts over (:data:`RESUMES_FROM`'s file absent) drops the records of its
    earlier segments: their work is redone, and the stage's wall time (the cost table's
    measure) is that of the work its result came from."""
    state = RESUMES_FROM.get(st.kind)
    if state is None or (st.dir / state).exists():
        return
    wall, _ = segment_totals(st.dir)
    for p in st.dir.glob(SEGMENT_GLOB):
        with contextlib.suppress(OSError):
            p.unlink()
    if wall:
        log(f"[{st.name}] starting over (no {state} to resume from): the {wall:.1f}s of its "
            "earlier runs are not counted")


def _skipped(st: Stage, log: Callable[[str], None]) -> StageRun:
    res = st.result()
    log(f"[{st.name}] done already ({st.dir.name}, {res.seconds:.1f}s) — skipped")
    return StageRun(res, st.dir, ran=False)


def cpu_now() -> float:
    """CPU seconds used so far by this process and its reaped children (user + system)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


class _Segment:
    """One run segment of a stage: a ``.segment-*`` file touched every :data:`HEARTBEAT_S`
    seconds by a daemon thread, holding its exact wall and CPU seconds when the segment ends
    (also by an exception or Ctrl-C)."""

    def __init__(self, stage_dir: Path):
        self.t0 = time.perf_counter()
        self.cpu0 = cpu_now()
        self.cpu_seconds = 0.0
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
        self.cpu_seconds = cpu_now() - self.cpu0
        with contextlib.suppress(OSError):
            self.path.write_text(json.dumps({"start": self.start, "seconds": self.seconds,
                                             "cpu_seconds": self.cpu_seconds}))


def segment_totals(stage_dir: Path, exclude: Path | None = None) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of the recorded run segments in ``stage_dir`` (see
    :class:`_Segment`): the exact times of segments that ended; for a killed segment, its start
    (in the name) to its last heartbeat as wall time and no CPU time (unknown)."""
    wall = cpu = 0.0
    for p in Path(stage_dir).glob(SEGMENT_GLOB):
        if p == exclude:
            continue
        try:
            text = p.read_text().strip()
            if text:
                rec = json.loads(text)
                wall += float(rec["seconds"])
                cpu += float(rec.get("cpu_seconds") or 0.0)
            else:
                start_ns = int(p.name.split("-")[1])
                wall += max(0.0, p.stat().st_mtime - start_ns / 1e9)
        except (OSError, ValueError, KeyError, IndexError, AttributeError, TypeError):
            continue
    return wall, cpu


def stage_seconds(stage_dir: Path, exclude: Path | None = None) -> float:
    """Wall seconds of the recorded run segments in ``stage_dir`` (:func:`segment_totals`)."""
    return segment_totals(stage_dir, exclude)[0]


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
