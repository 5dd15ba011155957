"""Pipelines that share a runs/ folder, stage keys made of content, checks before any work and
the wall time of resumed stages. Everything at the smallest scale (16 px, 1-epoch width-8 models,
WebDataset input, no loader workers)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl.data import load_manifest
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.recipes import recipe_scale
from ffcv_dp4tl.pipeline.resolve import check_data
from ffcv_dp4tl.pipeline.run import run_pipeline
from ffcv_dp4tl.pipeline.stages import run_stage, stage, stage_seconds
from ffcv_dp4tl.scoring.registry import get_scorer
from tiny_data import SYNTH, TRAIN

FT = ("finetune.resolution=16", "eval.resolution=16", "data.num_workers=0", "train.epochs=3")


def _cfg(tmp: Path, **kw) -> PipelineConfig:
    base = dict(ratio=0.5, source=SYNTH, target="", method="lm", fmt="wds", finetune=("lp",),
                data_root=tmp / "data", runs_root=tmp / "runs", device="cpu", k=4,
                overrides=TRAIN, surrogate_overrides=TRAIN, finetune_overrides=FT)
    base.update(kw)
    return PipelineConfig(**base)


def _values(res: dict) -> dict:
    """Stage results (of a results.json dict) without timings, load, paths and file digests
    (a checkpoint holds its run's timings): what must be identical between runs."""
    return {name: {k: v for k, v in st.items()
                   if "second" not in k and "per_s" not in k and not k.endswith(("_hash", "_sha256"))
                   and k != "loadavg_1min" and not (isinstance(v, str) and "/" in v)}
            for name, st in json.loads(json.dumps(res["stages"], default=str)).items()}


_CHILD = """
import json, sys
from pathlib import Path
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.run import run_pipeline
cfg = PipelineConfig(**{**json.loads(sys.argv[1]), "data_root": Path(sys.argv[2]),
                        "runs_root": Path(sys.argv[3])})
res = run_pipeline(cfg, log=lambda s: print(s, flush=True))
Path(sys.argv[4]).write_text(json.dumps({"result": res.to_json(),
                                         "ran": {n: st.ran for n, st in res.stages.items()}},
                                        default=str))
"""


@pytest.mark.slow
def test_two_concurrent_pipelines_on_one_runs_folder_match_a_lone_run(tmp_path):
    """Two real processes start together on one runs/ (and data/) folder: the second waits
    at each stage the first is running, then reuses it; both finish with the lone run's results
    and every stage ran exactly once."""
    lone = run_pipeline(_cfg(tmp_path / "lone"), log=lambda s: None)
    cfg = _cfg(tmp_path)
    args = json.dumps({k: v for k, v in vars(cfg).items() if k not in ("data_root", "runs_root")})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, args, str(tmp_path / "data"),
                               str(tmp_path / "runs"), str(tmp_path / f"res{i}.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads((tmp_path / f"res{i}.json").read_text()) for i in range(2)]
    for res in results:
        got, want = _values(res["result"]), _values(lone.to_json())
        assert got == want, {n: {k: (got[n].get(k), v) for k, v in want[n].items()
                                 if got[n].get(k) != v} for n in want}
    for name in lone.stages:
        (d,) = (tmp_path / "runs").glob(f"{name}-*")
        assert len(list(d.glob(".segment-*"))) == 1, (name, outs)  # ran once, by one process
    ran = [n for res in results for n, r in res["ran"].items() if r]
    assert sorted(ran) == sorted(lone.stages), outs  # each stage run by one of the two
    for name in ("score", "prune"):
        (d,) = (tmp_path / "runs").glob(f"{name}-*")
        (ld,) = (tmp_path / "lone" / "runs").glob(f"{name}-*")
        assert d.name == ld.name
    (m,) = (tmp_path / "runs").glob("prune-*/train.npy")
    (lm,) = (tmp_path / "lone" / "runs").glob("prune-*/train.npy")
    assert m.read_bytes() == lm.read_bytes()


@pytest.mark.slow
def test_random_scores_of_another_source_are_never_reused(tmp_path, data_root):
    """The score key holds the source's content fingerprint: `method=random` (no surrogate) on
    a second source scores it anew, and pretraining on it succeeds."""
    other = SYNTH.replace("synth:tiny,", "synth:tiny,seed=1,")
    first = run_pipeline(_cfg(tmp_path, method="random", finetune=(), data_root=data_root),
                         log=lambda s: None)
    second = run_pipeline(_cfg(tmp_path, method="random", source=other, finetune=(),
                               data_root=data_root), log=lambda s: None)
    assert load_manifest(first.source).fingerprint != load_manifest(second.source).fingerprint
    assert all(st.ran for st in second.stages.values())
    assert len(list((tmp_path / "runs").glob("score-*"))) == 2
    again = run_pipeline(_cfg(tmp_path, method="random", source=other, finetune=(),
                              data_root=data_root), log=lambda s: None)
    assert not any(st.ran for st in again.stages.values())


def test_recipes_follow_the_manifest_not_the_source_text(tmp_path, index_dataset):
    """A built folder of the embedded data (any name) gets the tiny recipes; real data the full."""
    from tiny_data import build_synth

    built = build_synth(SYNTH, tmp_path / "my-data")
    assert recipe_scale(load_manifest(built / "source")) == "tiny"
    assert recipe_scale(load_manifest(index_dataset.root)) == "full"
    logs: list[str] = []
    with pytest.raises(DP4TLError, match="clusters requested"):  # refused after the choice
        run_pipeline(_cfg(tmp_path, source=str(built / "source"), method="fm", k=100_000,
                          target=str(next((built / "targets").iterdir()))), log=logs.append)
    assert any(line.startswith("[recipes] tiny") for line in logs), logs
    from ffcv_dp4tl.cli.options import default_k
    from ffcv_dp4tl.contracts import PAPER_K, SYNTH_K
    from ffcv_dp4tl.pipeline.config import validate
    from ffcv_dp4tl.pipeline.resolve import resolve

    assert default_k(None, str(built)) == SYNTH_K  # the CLI's default K reads the manifest too
    # ... and so does the API's: PipelineConfig(k=None) ran k-means with the paper's K on the
    # embedded data, refused there with "pass a smaller --k" (review); one rule now
    target = str(next((built / "targets").iterdir()))
    for source, k in ((str(built / "source"), SYNTH_K), (str(index_dataset.root), PAPER_K)):
        val = ("data.val_split=train",)  # (index_dataset has a train split only)
        cfg = _cfg(tmp_path, source=source, method="random", target=target, k=None,
                   overrides=TRAIN + val, surrogate_overrides=TRAIN + val)
        assert resolve(cfg, validate(cfg), lambda m: None).k == k


def test_bad_k_is_refused_before_the_surrogate_trains(tmp_path, data_root):
    with pytest.raises(DP4TLError, match="k must be a positive"):
        run_pipeline(_cfg(tmp_path, k=0))
    with pytest.raises(DP4TLError, match=r"k=100000 clusters requested but the source train split "
                                         r"has only \d+ samples"):
        run_pipeline(_cfg(tmp_path, method="fm", k=100_000, data_root=data_root))
    assert not (tmp_path / "runs").exists()


def test_target_with_fewer_images_than_classes_warns(tmp_path):
    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    img = np.full((16, 16, 3), 128, np.uint8)
    spec = DatasetSpec("few", ["a", "b", "c", "d"], {
        "train": [Sample(img, 0, name="t0"), Sample(img, 1, name="t1")],
        "test": [Sample(img, k, name=f"s{k}") for k in range(4)]})
    build_dataset(spec, tmp_path / "few", BuildOptions(max_side=16, workers=1, progress=False))
    tgt = load_manifest(tmp_path / "few")
    logs: list[str] = []
    with pytest.warns(UserWarning, match="2 train images for 4 classes"):
        check_data(_cfg(tmp_path), get_scorer("lm"), tgt, tgt, logs.append)
    assert any("2 train images for 4 classes" in line for line in logs)


def _burn_cpu(seconds: float) -> None:
    """Use ``seconds`` of this process's CPU time (however long that takes on a loaded machine)."""
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        pass


def test_resumed_stage_reports_the_wall_and_cpu_time_of_every_segment(tmp_path):
    """Wall and CPU seconds are the stage's own record, summed over its segments: a segment
    interrupted by an exception (exact time kept), one killed with -9 (start to last heartbeat)
    and the one that finishes. Bounds only from below or from the recorded files, so a loaded
    machine cannot make it flake."""
    st = stage(tmp_path, "work", {"x": 1})

    def killed(d):
        time.sleep(0.3)
        _burn_cpu(0.05)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(st, killed, log=lambda s: None)
    (first,) = st.dir.glob(".segment-*")
    first_rec = json.loads(first.read_text())
    assert first_rec["seconds"] >= 0.3 and first_rec["cpu_seconds"] >= 0.05
    # and a segment killed with -9: no exact time, its last heartbeat 0.5 s after its start
    start = time.time_ns() - 10**10
    dead = st.dir / f".segment-{start}-99999"
    dead.write_text("")
    os.utime(dead, (start / 1e9 + 0.5, start / 1e9 + 0.5))
    assert stage_seconds(st.dir) == pytest.approx(first_rec["seconds"] + 0.5, abs=1e-3)
    res = run_stage(st, lambda d: (_burn_cpu(0.05), {"ok": 1})[1], log=lambda s: None)
    # the killed segment's 0.5 s are a lower bound, and the result says so
    assert res.ran and res.values == {"ok": 1, "estimated_seconds": pytest.approx(0.5, abs=1e-3)}
    assert res.seconds == pytest.approx(stage_seconds(st.dir), abs=1e-6)  # all three segments
    assert res.seconds >= first_rec["seconds"] + 0.5 + 0.05
    assert res.cpu_seconds >= first_rec["cpu_seconds"] + 0.05  # the killed one's CPU is lost
    done = json.loads((st.dir / "DONE.json").read_text())
    if hasattr(os, "getloadavg"):  # the machine's load when the stage finished, recorded
        assert isinstance(res.loadavg_1min, float) and res.loadavg_1min >= 0
        assert done["loadavg_1min"] == res.loadavg_1min
    assert done["cpu_seconds"] == pytest.approx(res.cpu_seconds)  # recorded, not parsed from logs
    again = run_stage(st, lambda d: pytest.fail("finished: must not rerun"), log=lambda s: None)
    assert not again.ran and again.result == res.result


def test_a_stage_says_when_it_started_and_finished(tmp_path):
    """A job's log tells when each stage ran: its start and finish lines carry the date and
    time (only progress lines did; log review)."""

    said: list[str] = []
    before = time.strftime("%Y-%m-%d %H:%M:%S")
    run_stage(stage(tmp_path, "work", {"x": 1}), lambda d: {"ok": 1}, log=said.append)
    after = time.strftime("%Y-%m-%d %H:%M:%S")
    stamp = r" \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\)$"
    start = re.fullmatch(rf"\[work\] running in {re.escape(str(tmp_path))}/work-\w+{stamp}", said[0])
    end = re.fullmatch(rf"\[work\] finished in \d+\.\ds{stamp}", said[-1])
    assert start and end, said
    assert before <= start.group(1) <= end.group(1) <= after


def test_before_first_run_is_called_once_before_the_first_stage_that_runs_only(tmp_path):
    """The cost table's untimed warm-up (``run_pipeline(before_first_run=)``) is called by the
    first stage that runs, before its times start, once; stages found done (cached, by
    run_stage's own rule) call nothing, so a fully cached run warms nothing up."""
    from ffcv_dp4tl.pipeline.stages import before_first_run

    quiet, calls = (lambda s: None), []
    done = stage(tmp_path, "work", {"x": 0})
    run_stage(done, lambda d: {"ok": 1}, log=quiet)
    with before_first_run(lambda: calls.append("hook")):
        run_stage(done, lambda d: pytest.fail("done: not run"), log=quiet)
        assert calls == []  # (cached: nothing runs, no warm-up)
        for x in (1, 2):
            res = run_stage(stage(tmp_path, "work", {"x": x}),
                            lambda d, x=x: calls.append(x) or {"ok": 1}, log=quiet)
            assert res.ran
    assert calls == ["hook", 1, 2]
    run_stage(stage(tmp_path, "work", {"x": 3}), lambda d: {"ok": 1}, log=quiet)
    assert calls == ["hook", 1, 2]  # (outside the block: nothing to call)


@pytest.mark.parametrize("kind", ["train", "finetune"])
def test_a_stage_that_starts_over_counts_no_time_of_the_runs_it_threw_away(tmp_path, kind):
    """A training stage killed before its first checkpoint (or whose checkpoint was deleted, as
    a refusal advises) trains from scratch on the rerun: the earlier segment's time went to work
    that is thrown away, and counting it inflated the cost table's pretraining time. With the
    file it resumes from in place, the earlier segments count as before."""
    from ffcv_dp4tl.pipeline.stages import RESUMES_FROM
    from ffcv_dp4tl.training.checkpoint import CHECKPOINT_NAME, FINETUNE_STATE_NAME

    assert RESUMES_FROM["train"] == (CHECKPOINT_NAME,)
    assert RESUMES_FROM["finetune"] == (FINETUNE_STATE_NAME,)
    st = stage(tmp_path / "a", "work", {"x": 1}, kind=kind)

    def killed(d):
        time.sleep(0.3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(st, killed, log=lambda s: None)
    lines = []
    res = run_stage(st, lambda d: {"epoch": 0} if kind == "train" else {"test_top1": 1.0},
                    log=lines.append)
    assert res.seconds < 0.3 and len(list(st.dir.glob(".segment-*"))) == 1
    assert any("starting over (no " + RESUMES_FROM[kind][0] in ln and "not counted" in ln
               for ln in lines), lines
    # the file it resumes from is there: the killed segment's time is part of the result's
    st = stage(tmp_path / "b", "work", {"x": 1}, kind=kind)
    with pytest.raises(KeyboardInterrupt):
        run_stage(st, lambda d: ((d / RESUMES_FROM[kind][0]).write_bytes(b"state"), killed(d)),
                  log=lambda s: None)
    res = run_stage(st, lambda d: {"epoch": 0} if kind == "train" else {"test_top1": 1.0},
                    log=lambda s: None)
    assert res.seconds >= 0.3 and len(list(st.dir.glob(".segment-*"))) == 2


def _features(path: Path, complete: bool) -> None:
    """A source feature store as ``ScoringContext.source_features`` leaves it: finalised, or
    cut off mid-extraction (``.partial`` files, which a rerun does not resume)."""
    from ffcv_dp4tl.scoring.features import FeatureWriter

    w = FeatureWriter(path, 4, 2, resume=False)
    w.write(0, np.ones((2, 2), np.float32))
    if complete:
        w.write(2, np.ones((2, 2), np.float32))
        w.finalize()
    else:
        w.close()


def _early_run(d: Path) -> None:
    """The checkpoint of a training run the scorer trains itself (``training_runs.train_run``)."""
    from ffcv_dp4tl.training.checkpoint import CHECKPOINT_NAME

    (d / "runs" / "run1-e1").mkdir(parents=True)
    (d / "runs" / "run1-e1" / CHECKPOINT_NAME).write_bytes(b"state")


@pytest.mark.parametrize("kind, method, left, kept", [
    ("prune", None, None, False),  # masks are computed again from the scores: nothing reused
    ("score", "lm", None, False),  # killed before anything it could reuse
    ("score", "fm", "partial features", False),  # an interrupted extraction starts again
    ("score", "fm", "features", True),  # a complete store is reused
    ("score", "el2n", "early run", True),  # its runs resume from their checkpoints
    ("score", "forget", "early run", False),  # FORGET retrains its runs from scratch
])
def test_a_killed_score_or_prune_stage_counts_its_earlier_time_only_when_it_reuses_its_work(
        tmp_path, kind, method, left, kept):
    """The rule of training stages (a stage that starts over drops the time of the segments
    whose work it throws away) for scoring and pruning: scoring resumes from the complete
    source feature stores and the training runs' checkpoints it wrote (RESUMES_FROM), pruning
    from nothing. The killed segment's time counts only when the rerun reuses its work; when
    dropped, the log says so."""
    st = stage(tmp_path, kind, {"x": 1, **({"method": method} if method else {})})
    assert st.kind == kind

    def killed(d):
        if left in ("features", "partial features"):
            _features(d / "source_train_features.npy", complete=left == "features")
        elif left == "early run":
            _early_run(d)
        time.sleep(0.3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(st, killed, log=lambda s: None)
    lines: list[str] = []
    res = run_stage(st, lambda d: {"unit": "class", "train_kept": 1, "kept_units": [0],
                                   "kept_sample_fraction": 0.5} if kind == "prune"
                    else {"method": method, "unit": "class", "selection_seconds": 0.0},
                    log=lines.append)
    said = [ln for ln in lines if "starting over (" in ln and "not counted" in ln]
    if kept:
        assert res.seconds >= 0.3 and len(list(st.dir.glob(".segment-*"))) == 2 and not said
    else:
        assert res.seconds < 0.3 and len(list(st.dir.glob(".segment-*"))) == 1
        assert said, lines
        if kind == "prune" or method == "forget":
            assert f"a {kind} stage reuses nothing of an earlier run" in said[0]
        else:
            assert "no source_*_features.npy.json or runs/*/checkpoint.pt to resume" in said[0]
    from ffcv_dp4tl.pipeline.stages import RESUMES_FROM

    assert RESUMES_FROM["prune"] == () and RESUMES_FROM["score:forget"] == ()


def test_a_segment_whose_record_cannot_be_written_counts_to_its_end_as_a_stated_bound(
        tmp_path, monkeypatch):
    """A full disk as a segment ends (its exact record cut short): the file is emptied and
    touched, so it counts from its start to its end (not its last heartbeat, and not nothing for
    a torn record), and the stage's result, log line and report line say that its wall time is
    a lower bound (how many seconds of it were estimated)."""
    import errno

    from ffcv_dp4tl.pipeline import stages

    monkeypatch.setattr(stages, "HEARTBEAT_S", 3600.0)  # no heartbeat: mtime is the start's
    real = Path.write_text

    def full_disk(self, text, *a, **k):
        if self.name.startswith(".segment-") and text:
            real(self, text[:9])  # the part that fitted
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, text, *a, **k)

    st = stage(tmp_path, "work", {"x": 1})

    def killed(d):
        time.sleep(0.3)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", full_disk)
        with pytest.raises(KeyboardInterrupt):
            run_stage(st, killed, log=lambda s: None)
    (seg,) = st.dir.glob(".segment-*")
    assert seg.read_text() == ""  # not a torn record
    # start to end (the old count: nothing), by file times: the kernel stamps them from a
    # coarse clock (a tick of up to ~10 ms), so 0.3 s of sleep read 0.298 s once in CI
    assert stage_seconds(st.dir) >= 0.25
    assert stages.segment_totals(st.dir).estimated == stage_seconds(st.dir)
    lines: list[str] = []
    res = run_stage(st, lambda d: {"ok": 1}, log=lines.append)
    assert res.seconds >= 0.25 and res.values["estimated_seconds"] >= 0.25  # (file times)
    assert res.seconds == pytest.approx(stage_seconds(st.dir), abs=1e-6)
    assert any("a lower bound" in ln for ln in lines), lines
    assert "wall time a lower bound" in stages.describe(res.result)
    # a record torn by an older version (no truncation) reads as the file it was: start to mtime
    start = time.time_ns() - 10**10
    torn = st.dir / f".segment-{start}-99999"
    torn.write_text('{"start": 1')
    os.utime(torn, (start / 1e9 + 0.5, start / 1e9 + 0.5))
    assert stage_seconds(st.dir) == pytest.approx(res.seconds + 0.5, abs=1e-3)


def test_a_stage_whose_holder_was_killed_is_taken_over_and_said(tmp_path):
    """Two runs of one stage: the second waits for the first. When the first was killed
    (SIGKILL, a cluster's SIGTERM) the second took over without a word after its "waiting for
    it" line, which read as if it had reused a result. It now says so."""
    import signal
    import threading

    st = stage(tmp_path, "work", {"x": 1})
    st.dir.mkdir(parents=True)
    from lock_probe import holding

    holder = holding(st.dir / ".stage.lock")
    said: list[str] = []

    def log(m: str) -> None:
        said.append(m)
        if "waiting for it" in m:  # the holder killed while this run waits
            threading.Timer(0.3, holder.send_signal, (signal.SIGKILL,)).start()

    try:
        res = run_stage(st, lambda d: {"ok": 1}, log=log)
    finally:
        holder.kill()
        holder.wait(30)
    assert res.ran
    assert said[0].startswith(f"[work] another dp4tl run (pid {holder.pid})"), said
    host = re.escape(socket.gethostname())
    assert re.fullmatch(rf"\[work\] the run \(pid {holder.pid}\) on host {host} ended without "
                        r"finishing it \(after \d+s of waiting\); this run takes over", said[1]), said
    assert said[2].startswith("[work] running in "), said
