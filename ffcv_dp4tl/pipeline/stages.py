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
import contextvars
import hashlib
import json
import os
import resource
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from ..contracts import STAGE_FIELDS, STAGE_KINDS, Scores, StageResult, stage_kind
from ..contracts.stage import RESULT_DIGEST
from ..contracts.fields import typed
from ..errors import DataError, DP4TLError
from ..fsutil import BAD_JSON, atomic_write_json, file_sha256, read_json, remove_orphan_temps
from ..locks import directory_lock
from ..progress import now

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
        ``DONE.json`` has none). Its values are checked by the contract
        (:func:`~ffcv_dp4tl.contracts.check_stage_values`); a finetune stage's top-1 values must
        also be those of the ``result.json`` beside it (:func:`_check_finetune_result`). Either
        refused in one line naming the file and the stage folder to delete."""
        fix = f"delete the stage folder {self.dir} and rerun"
        res = StageResult.from_json(read_json(self.dir / DONE, f"stage {self.name} result", fix),
                                    self.dir / DONE, fix)
        if res.kind == "finetune":
            _check_finetune_result(self.dir, res, fix)
        elif res.kind == "prune":
            _check_prune_result(self.dir, res, fix)
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


def _check_finetune_result(stage_dir: Path, res: StageResult, fix: str) -> None:
    """A finetune stage's ``DONE.json`` holds its ``result.json``'s values (the stage returns
    them): a value of one that the other does not hold (a hand edit; the audit's
    ``final_test_top1`` of 0.99 reported while result.json said 0.1667) is refused in one line.
    Compared: every field of the contract's finetune schema (``STAGE_FIELDS``) that both hold,
    each typed by its rule there. A folder without result.json (a stage function of another
    kind) has nothing to compare."""
    from ..training.checkpoint import FINETUNE_RESULT_NAME

    path = stage_dir / FINETUNE_RESULT_NAME
    if not path.is_file():
        return
    theirs = read_json(path, "finetune result", fix)
    if not isinstance(theirs, dict):
        raise DataError(f"{path} is not a finetune result (a JSON object); {fix}")
    for name, what in STAGE_FIELDS["finetune"].items():
        if name not in res.values or name not in theirs:
            continue
        # (DONE.json's value is typed by the contract already; result.json's by the same rule)
        mine, other = res.values[name], typed(theirs, name, what, path, fix, None)
        if (mine is None) != (other is None) or (mine is not None and abs(mine - other) > 1e-12):
            raise DataError(f"{stage_dir / DONE}: field {name!r} is {mine!r}, but the stage's "
                            f"{FINETUNE_RESULT_NAME} says {other!r}; {fix}")


def _check_prune_result(stage_dir: Path, res: StageResult, fix: str) -> None:
    """A prune stage's ``train_kept`` is the length of the ``train.npy`` beside it (the report
    and the cost table print it: an edited 999 read "kept 999 train samples"; audit). Only the
    array's header is read."""
    import numpy as np

    path, kept = stage_dir / "train.npy", res.values.get("train_kept")
    if kept is None or not path.is_file():
        return
    try:
        n = int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError, EOFError, IndexError):
        return  # (a damaged mask: load_mask names it where the mask is read)
    if n != kept:
        raise DataError(f"{stage_dir / DONE}: field 'train_kept' is {kept}, but the stage's "
                        f"train.npy keeps {n} samples; {fix}")


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


#: the pipeline's report folder, ``RUNS_ROOT/report-<key>`` (:mod:`.run`): named as a stage
#: folder, but without a ``DONE.json``
REPORT_STAGE = "report"


def stage_folder_around(path: str | Path) -> Path | None:
    """The pipeline stage folder ``path`` lies in (at any depth), or None: a folder named as
    :func:`stage` names one (``NAME-KEY``) that holds the stage's ``DONE.json`` or lock, or the
    pipeline's report folder (:data:`REPORT_STAGE`, with its results.json). A folder of that
    shape the pipeline did not make is the user's. ``--report runs/report-KEY/report.md`` was
    written into, and the pipeline's next run of it replaced the section (audit)."""
    import re

    named = re.compile(rf"([a-z][a-z0-9_]*(?:-[a-z0-9_]+)*)-[0-9a-f]{{{len(key_of({}))}}}")
    for folder in Path(path).resolve().parents:
        m = named.fullmatch(folder.name)
        if m and ((folder / DONE).is_file() or (folder / LOCK).exists()
                  or (m.group(1) == REPORT_STAGE and (folder / "results.json").is_file())):
            return folder
    return None


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
#: :data:`HEARTBEAT_S` seconds; see :func:`segment_totals` for the segments without a record).
SEGMENT_GLOB = ".segment-*"
HEARTBEAT_S = 2.0
#: What a rerun of a stage reuses of its earlier segments' work: per kind (or ``kind:method``
#: for a score method that differs from its kind), glob patterns in the stage folder. When none
#: matches, the stage starts over, so the time of its earlier segments went to work that is
#: thrown away: it is not counted (:func:`resumes_from`). A kind not listed (build, other) keeps
#: every segment.
#:
#: * train / finetune: the checkpoint the run resumes from (absent: killed before its first one,
#:   or deleted as a refusal advises).
#: * score: a *complete* source feature store (``score.py`` → ``ScoringContext.source_features``;
#:   its sidecar ``.npy.json`` is written last, and an interrupted extraction starts again from
#:   the first sample, so ``.partial`` files are no state), or the checkpoint of a training run
#:   the scorer trains itself (EL2N/GraNd's early runs, ``runs/run<r>[-e<epoch>]``, resumed).
#:   FORGET trains its runs from scratch on every call (``resume=False``: forgetting events need
#:   every epoch in one process) and reads no features, so it reuses nothing.
#: * prune: nothing; the masks are computed again from the scores (and written as a pair).
RESUMES_FROM: dict[str, tuple[str, ...]] = {
    "train": ("checkpoint.pt",),
    "finetune": ("finetune_state.pt",),
    "score": ("source_*_features.npy.json", "runs/*/checkpoint.pt"),
    "score:forget": (),
    "prune": (),
}


#: what a stage was computed from: ``{upstream folder name: that stage's result id}``
#: (:func:`result_id`)
UPSTREAM = "upstream.json"

#: The files that *are* a finished stage's result, per kind: what a later stage reads from it
#: (a surrogate's or source model's weights, kept epochs included; a score folder's arrays; a
#: mask). Their digest is recorded in ``DONE.json`` (:data:`RESULT_DIGEST`) and is the stage's
#: :func:`result_id`. A kind without a rule is identified by its whole ``DONE.json``.
RESULT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("checkpoint.pt", "best.pt", "checkpoint_e*.pt"),  # (training.trainer's names)
    "score": tuple(f"{a}.npy" for a in Scores.ARRAYS),
    "prune": ("*.npy",),
}

def result_digest(stage_dir: Path, kind: str) -> str | None:
    """SHA-256 over the name and bytes digest of every :data:`RESULT_FILES` file of ``kind`` in
    ``stage_dir`` (None: the kind has no rule, or none of its files is there). Computed once, when
    the stage finishes (a checkpoint is read once more, about a second per GB)."""
    names = sorted({p.name for pat in RESULT_FILES.get(kind, ()) for p in stage_dir.glob(pat)
                    if p.is_file()})
    if not names:
        return None
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{file_sha256(stage_dir / name)}\n".encode())
    return h.hexdigest()


def result_id(st: Stage) -> str:
    """What :data:`UPSTREAM` records of a finished stage ``st``: the digest of its result files
    when its ``DONE.json`` holds one, else the sha256 of the ``DONE.json`` bytes (stages of other
    kinds; folders finished before the digest, whose records still match). Keys hold upstream
    *keys*, not contents: an upstream folder deleted and computed again (the advice of
    :meth:`Stage.output`; most recipes are not bit-deterministic) has the same key but another
    result, which this tells apart. Only its result files count, not its times: a finished
    stage whose ``DONE.json`` was deleted runs again, writes the same files (a finished training
    resumes with nothing to train) and the stages after it are kept (audit: LP and FF ran
    again)."""
    return _ids(st)[0]


def _ids(st: Stage) -> tuple[str, str]:
    """``(result_id(st), the sha256 of its DONE.json bytes)``, from one read of the file. The
    second is how versions before 2026-12-06 recorded every upstream stage; it names the same
    finished stage (its very ``DONE.json``), so a folder one of those versions wrote is not
    stale (audit: an old and a new version taking turns on one runs folder each emptied the
    other's score, prune and finetune folders and ran them again)."""
    raw = (st.dir / DONE).read_bytes()
    done_sha = hashlib.sha256(raw).hexdigest()
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        done = json.loads(raw)
        if isinstance(done, dict) and isinstance(done.get(RESULT_DIGEST), str):
            return f"{RESULT_DIGEST}:{done[RESULT_DIGEST]}", done_sha
    return done_sha, done_sha


def _stale(st: Stage, record: dict[str, str], also: dict[str, str] | None = None) -> list[str]:
    """The upstream stages that were computed again since the stage folder was computed from
    them (its content is then stale). A folder without the record (a stage run before it
    existed) is trusted, and adopts ``record``. ``also``: another id an upstream stage may be
    recorded by (the older form, :func:`_ids`); the folder's record is left in its form, so the
    version that wrote it still reads it."""
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
    also = also or {}
    return sorted(k for k in record if not isinstance(old, dict) or (
        old.get(k) != record[k] and (also.get(k) is None or old.get(k) != also.get(k))))


def _clear(stage_dir: Path) -> None:
    """Empty a stale stage folder (all of it is the stage's own output) but its lock."""
    for p in stage_dir.iterdir():
        if p.name != LOCK:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


#: what :func:`run_stage` calls before the first stage it runs in a :func:`before_first_run`
#: block (a list of at most one function, emptied by the call); None outside one
_FIRST_RUN: contextvars.ContextVar[list[Callable[[], Any]] | None] = contextvars.ContextVar(
    "dp4tl_before_first_run", default=None)


@contextlib.contextmanager
def before_first_run(fn: Callable[[], Any] | None):
    """Call ``fn()`` once in the block, just before the first stage that :func:`run_stage` runs
    (by its own rule: not done, or stale), before that stage's times start; a block whose
    stages are all done (cached) never calls it. ``None``: nothing to call. The cost table's
    untimed warm-up runs so (:func:`~ffcv_dp4tl.pipeline.run.run_pipeline`'s
    ``before_first_run``): only when a timed stage will run."""
    token = _FIRST_RUN.set([fn] if fn is not None else None)
    try:
        yield
    finally:
        _FIRST_RUN.reset(token)


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
    a killed segment's CPU time is lost). Segments without an exact record count as a lower
    bound, and the result says how many seconds (``values[ESTIMATED]``, :class:`_Segment`). A
    stage that starts over drops its earlier segments (:func:`resumes_from`).

    **Upstream.** ``upstream``: the finished stages ``fn`` reads. A stage folder computed from
    other results of them (one was deleted and computed again since) is stale: emptied and
    run again, finished or not: :data:`UPSTREAM` records each by :func:`result_id`.

    **First run.** In a :func:`before_first_run` block, the first stage this decides to run
    calls the block's function first (untimed, under the stage's lock, in its new folder: a run
    waiting for that stage waits through it too, and if it raises the empty folder stays, as an
    interrupted stage's does, for the next run to take over)."""
    ids = {u.dir.name: _ids(u) for u in upstream}
    record = {name: new for name, (new, _) in ids.items()}  # (what UPSTREAM records)
    legacy = {name: old for name, (_, old) in ids.items()}
    if st.done and not _stale(st, record, legacy):
        return _skipped(st, log)
    st.dir.mkdir(parents=True, exist_ok=True)
    with directory_lock(st.dir / LOCK, f"stage {st.dir}", wait=True,
                        on_wait=lambda m: log(f"[{st.name}] {m}")) as waited:
        changed = _stale(st, record, legacy)
        if changed:
            log(f"[{st.name}] {', '.join(changed)} was computed again since this stage ran "
                f"from it: running the stage again")
            _clear(st.dir)
        elif st.done:  # finished earlier, or by the run we waited for
            return _skipped(st, log)
        if waited.holder is not None and not changed:  # (the run it waited for was killed:
            # without this line the log read "waiting for it", then the stage running again)
            log(f"[{st.name}] the run {waited.holder} ended without finishing it (after "
                f"{waited.seconds:.0f}s of waiting); this run takes over")
        pending = _FIRST_RUN.get()
        if pending:  # (before_first_run: e.g. the cost table's warm-up, before this stage's times)
            pending.pop()()
        remove_orphan_temps(st.dir)
        _forget_thrown_away_segments(st, log)
        atomic_write_json(st.dir / "inputs.json", st.inputs)
        if record:
            atomic_write_json(st.dir / UPSTREAM, record)
        log(f"[{st.name}] running in {st.dir} ({now()})")
        with _Segment(st.dir) as seg:
            values = {k: v for k, v in dict(fn(st.dir) or {}).items()
                      if k not in StageResult.RESERVED}
        earlier, earlier_cpu, bound = segment_totals(st.dir, exclude=seg.path)
        if bound:  # said in the result (and the report's line): part of its time is a bound
            values[ESTIMATED] = bound
        digest = result_digest(st.dir, st.kind)
        if digest:  # what identifies this result to the stages after it (result_id)
            values[RESULT_DIGEST] = digest
        res = StageResult(stage=st.name, kind=st.kind, seconds=earlier + seg.seconds,
                          cpu_seconds=earlier_cpu + seg.cpu_seconds, loadavg_1min=_loadavg(),
                          values=values)
        atomic_write_json(st.dir / DONE, res.to_json())
    note = (f", {bound:.1f}s of it from runs without an exact record (killed, or a full disk) "
            "timed from their start to their file's last touch: a lower bound, CPU time not "
            "counted" if bound else "")
    resumed = f" (+{earlier:.1f}s in earlier runs{note})" if earlier else ""
    log(f"[{st.name}] finished in {seg.seconds:.1f}s{resumed} ({now()})")
    return StageRun(res, st.dir, ran=True)


def resumes_from(st: Stage) -> tuple[tuple[str, ...] | None, list[Path]]:
    """``(patterns, found)``: the :data:`RESUMES_FROM` patterns of ``st`` (None: its kind has no
    rule, every segment counts) and the files in its folder that match them, i.e. what a rerun
    of the stage resumes from (none: it starts over). The one rule for every kind."""
    method = st.inputs.get("method")
    patterns = RESUMES_FROM.get(f"{st.kind}:{method}", RESUMES_FROM.get(st.kind))
    if patterns is None:
        return None, []
    return patterns, [p for pat in patterns for p in sorted(st.dir.glob(pat))]


def _forget_thrown_away_segments(st: Stage, log: Callable[[str], None]) -> None:
    """A stage that starts over (nothing :func:`resumes_from` names is in its folder) drops the
    records of its earlier segments: their work is redone, and the stage's wall time (the cost
    table's measure) is that of the work its result came from."""
    patterns, found = resumes_from(st)
    if patterns is None or found:
        return
    wall = segment_totals(st.dir).wall
    for p in st.dir.glob(SEGMENT_GLOB):
        with contextlib.suppress(OSError):
            p.unlink()
    if wall:
        why = (f"no {' or '.join(patterns)} to resume from" if patterns
               else f"a {st.kind} stage reuses nothing of an earlier run")
        log(f"[{st.name}] starting over ({why}): the {wall:.1f}s of its earlier runs are not "
            "counted")


def _skipped(st: Stage, log: Callable[[str], None]) -> StageRun:
    res = st.result()
    log(f"[{st.name}] done already ({st.dir.name}, {res.seconds:.1f}s) — skipped")
    return StageRun(res, st.dir, ran=False)


def cpu_now() -> float:
    """CPU seconds used so far by this process and its reaped children (user + system)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


#: the ``values`` key of a stage result whose wall time includes segments without an exact
#: record (:class:`SegmentTotals`): those seconds, so ``seconds`` is a lower bound
ESTIMATED = "estimated_seconds"


def _loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


class _Segment:
    """One run segment of a stage: a ``.segment-*`` file touched every :data:`HEARTBEAT_S`
    seconds by a daemon thread, holding its exact wall and CPU seconds when the segment ends
    (also by an exception or Ctrl-C).

    When that record cannot be written (a full disk, ENOSPC, or any other OSError) the file is
    emptied (a torn record read as no time at all) and touched, and is then read as a killed
    segment's: from its start to its modification time, which is now its end rather than its
    last heartbeat (up to :data:`HEARTBEAT_S` earlier). Emptying and touching a file need no
    free block, where a sidecar would need one. Its CPU time is lost, as a killed segment's, and
    the stage's result says how much of its wall time came from such records
    (:data:`ESTIMATED`)."""

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
        try:
            self.path.write_text(json.dumps({"start": self.start, "seconds": self.seconds,
                                             "cpu_seconds": self.cpu_seconds}))
        except OSError:
            with contextlib.suppress(OSError):
                os.truncate(self.path, 0)
            with contextlib.suppress(OSError):
                os.utime(self.path)


def _segment_times(stage_dir: Path, exclude: Path | None) -> list[tuple[float, float | None]]:
    """``(wall, cpu)`` of each run segment recorded in ``stage_dir``; ``cpu`` None for a segment
    without an exact record (killed, or its record not written: see :class:`_Segment`), whose
    wall time is its start (in the file name) to the file's modification time."""
    out: list[tuple[float, float | None]] = []
    for p in Path(stage_dir).glob(SEGMENT_GLOB):
        if p == exclude:
            continue
        try:
            text = p.read_text().strip()
        except OSError:
            continue
        if text:
            try:
                rec = json.loads(text)
                out.append((float(rec["seconds"]), float(rec.get("cpu_seconds") or 0.0)))
                continue
            except (*BAD_JSON, KeyError, AttributeError, TypeError):
                pass  # torn (a write cut short by a full disk): read as the empty file it was
        try:
            start_ns = int(p.name.split("-")[1])
            out.append((max(0.0, p.stat().st_mtime - start_ns / 1e9), None))
        except (OSError, ValueError, IndexError):
            continue
    return out


class SegmentTotals(NamedTuple):
    """Seconds of a stage's recorded run segments (:func:`segment_totals`)."""

    wall: float
    cpu: float
    #: the part of ``wall`` from segments without an exact record: start to last modification,
    #: a lower bound (by up to :data:`HEARTBEAT_S` for each killed one), CPU time not counted
    estimated: float


def segment_totals(stage_dir: Path, exclude: Path | None = None) -> SegmentTotals:
    """Wall, CPU and estimated seconds of the recorded run segments in ``stage_dir`` (see
    :class:`_Segment`), read once: the exact times of segments that ended; for a segment
    without an exact record (killed; or its record not written, e.g. on a full disk), its start
    (in the name) to the file's modification time (the last heartbeat, or the end when
    :class:`_Segment` could touch it) as wall time, a lower bound (``estimated``), and no CPU
    time (unknown)."""
    times = _segment_times(stage_dir, exclude)
    return SegmentTotals(sum(w for w, _ in times), sum(c or 0.0 for _, c in times),
                         sum(w for w, c in times if c is None))


def stage_seconds(stage_dir: Path, exclude: Path | None = None) -> float:
    """Wall seconds of the recorded run segments in ``stage_dir`` (:func:`segment_totals`)."""
    return segment_totals(stage_dir, exclude).wall


def describe(result: dict[str, Any] | StageResult) -> str:
    """One-line headline of a stage result for reports, chosen by the result's ``kind``."""
    r = result if isinstance(result, StageResult) else StageResult.from_json(dict(result))
    line = _headline(r)
    if r.values.get(ESTIMATED):  # (the report's seconds column is then a lower bound)
        bound = (f"wall time a lower bound: {r.values[ESTIMATED]:.1f}s of it from runs without "
                 "an exact record")
        line = f"{line}; {bound}" if line else bound
    return line


def pct(top1: float) -> str:
    """An accuracy (a fraction) as report.md's tables give it: ``98.61 %`` (the stage table
    printed ``0.9861`` above a table of ``99.31 ± 0.98``; figures audit), and as the lines of
    ``dp4tl train`` and ``finetune`` end (they printed ``0.5795``; docs audit)."""
    return f"{100 * top1:.2f} %"


def _headline(r: StageResult) -> str:
    v = r.values
    if r.kind == "finetune":
        if "test_top1" in v:
            best = (f" (best {pct(v['best_test_top1'])} at epoch {v['best_epoch']})"
                    if v.get("best_test_top1") is not None else "")
            return f"target test top-1 {pct(v['test_top1'])}{best}"
        if v.get("top1_val") is not None:
            return f"val top-1 {pct(v['top1_val'])}"
    if r.kind == "score" and "selection_seconds" in v:
        return f"selection {v['selection_seconds']:.1f}s"
    if r.kind == "train":
        if v.get("brought"):
            return f"brought weights {Path(str(v.get('weights', '?'))).name} (imported, not trained)"
        if v.get("top1_val") is not None:
            return f"val top-1 {pct(v['top1_val'])}"
        if v.get("objective", "supervised") != "supervised":
            return (f"{v['objective']} loss {v['loss']:.3f}, instance top-1 "
                    f"{pct(v['top1_train'])}")
    return ""
