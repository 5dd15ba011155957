"""How the cost table runs its pipelines: the untimed warm-up before the first timed run, and
the config of each seed (its stage keys, its report's seed) — figures audit."""
from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

import ffcv_dp4tl.bench.cost_table as ct
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.resolve import seed_overrides
from tiny_data import FINETUNE, SYNTH, TRAIN


class Stop(Exception):
    pass


def test_the_warm_up_comes_before_the_first_timed_run(monkeypatch, tmp_path):
    """The first timed stage, seed 0's 0 % pretraining, paid the process's one-time costs
    (27.7 s vs 3.4 s for seed 1's; cost.png then showed pruned pretraining above the ideal): an
    untimed warm-up now runs after the checks, inside the first run, before its first stage
    that runs (``run_pipeline``'s ``before_first_run``), given that run's resolved inputs."""
    calls = []
    monkeypatch.setattr(ct, "preflight", lambda cfgs, log: calls.append("checks"))
    monkeypatch.setattr(ct, "warm_up", lambda cfg, r, log: calls.append(("warm", cfg.ratio,
                                                                         cfg.method, r)))

    def first_run(cfg, log, before_first_run):
        calls.append("run")
        before_first_run(cfg, "resolved")  # (as the run's first stage to run calls it)
        raise Stop

    monkeypatch.setattr(ct, "run_pipeline", first_run)
    with pytest.raises(Stop):
        ct.run_cost_table(PipelineConfig(source=SYNTH), tmp_path / "out", ratios=[0.0, 0.6],
                          methods=["random"], seeds=[0, 1], finetune=("lp",), log=lambda _: None)
    assert calls == ["checks", "run", ("warm", 0.0, "random", "resolved")]


def test_the_warm_up_reads_the_source_under_the_runs_readers_lock(data_root, source_dir,
                                                                   tmp_path, monkeypatch):
    """The warm-up resolved the reference's config again and read the built source (its
    labels) holding no readers' lock, so a `dp4tl build --overwrite` of the folder could
    rewrite it under the read. It now runs inside the run whose stage runs first, while that
    run holds the source's readers' lock (as every reader of a built folder does)."""
    from lock_probe import exclusive_is_free

    from beton_builders.out_dir import LOCK_NAME

    held = []

    def probe(*args, **kwargs):  # (the warm-up has read the source's labels)
        lock = source_dir / LOCK_NAME
        held.append(lock.exists() and not exclusive_is_free(lock))
        raise Stop

    monkeypatch.setattr(ct, "warm_up_indices", probe)
    cfg = PipelineConfig(source=SYNTH, target="", fmt="wds", device="cpu", k=4,
                         data_root=data_root, runs_root=tmp_path / "runs", overrides=TRAIN,
                         finetune_overrides=FINETUNE)
    with pytest.raises(Stop):
        ct.run_cost_table(cfg, None, ratios=[0.0, 0.5], methods=["random"], finetune=("lp",),
                          log=lambda _: None)
    assert held == [True]


def _warmed_table(out) -> None:
    """A one-seed table with a warm-up record, written into ``out`` as a run writes it."""
    from ffcv_dp4tl.bench.stats import REFERENCE, summarize
    from ffcv_dp4tl.reporting import machine_info

    def row(method, ratio, pre, lp):
        return {"method": method, "ratio": ratio, "seed": 0, "surrogate_s": 0.0, "score_s": 0.0,
                "prune_s": 0.0, "pretrain_s": pre, "total_s": pre, "selection_s": 0.0,
                "lp_top1": lp}

    rows = [row(REFERENCE, 0.0, 10.0, 80.0), row("random", 0.6, 4.0, 70.0)]
    t = summarize(rows, methods=["random"], ratios=[0.0, 0.6], seeds=[0], finetune=["lp"])
    t.update(config={"source": "s", "target": "warm", "fmt": "ffcv", "recipes": "", "k": 8,
                     "overrides": []}, surrogate_s=None, command="c", recipes={},
             machine=machine_info(), date="today",
             warmup={"ran": True, "seconds": 9.5, "what": "256 samples (2 batches) of x"})
    ct.write_outputs(t, out)


def test_the_warm_up_is_recorded_and_said_in_the_report_header(tmp_path):
    """results.json records that a warm-up ran and how long it took, the report's header says
    it, and `bench render` keeps it."""
    out = tmp_path / "out"
    _warmed_table(out)
    assert json.loads((out / "results.json").read_text())["warmup"]["seconds"] == 9.5
    line = "- warm-up: 256 samples (2 batches) of x (9.5 s)"
    assert line in (out / "report.md").read_text()
    assert ct.rerender(out)["warmup"]["ran"] is True
    assert line in (out / "report.md").read_text()


def test_the_report_says_a_cached_table_needed_no_warm_up():
    """A table whose every stage was cached ran no warm-up and no timed stage: its header says
    that, not that the first timed stage paid the one-time costs (what a skipped warm-up
    otherwise means)."""
    line = ct.warmup_line({"warmup": {"ran": False, "why": ct.ALL_CACHED}})
    assert line == f"- no warm-up: {ct.ALL_CACHED}, so no timed stage paid one-time costs"
    assert "first timed stage paid" in ct.warmup_line({"warmup": {"ran": False, "why": "x"}})


@pytest.mark.parametrize("warmup,field", [({"ran": True, "seconds": -1.0, "what": "x"}, "seconds"),
                                          ({"ran": "yes"}, "ran"), ([], "warmup")])
def test_render_refuses_a_damaged_warm_up_record_in_one_line(tmp_path, warmup, field):
    """The warm-up record is checked where results.json is read back, as its rows are."""
    from ffcv_dp4tl.errors import DataError

    out = tmp_path / "out"
    _warmed_table(out)
    t = json.loads((out / "results.json").read_text())
    t["warmup"] = warmup
    (out / "results.json").write_text(json.dumps(t))
    with pytest.raises(DataError, match=f"results.json.*'{field}'"):
        ct.rerender(out)


def test_the_warm_up_takes_whole_classes_up_to_a_batch_of_each_pass():
    """Training and evaluation both run at the timed runs' batch shapes: whole classes until
    two training batches and one evaluation batch (on the mask's classes) are full."""
    train = np.repeat(np.arange(6), 10)  # 6 classes of 10 train samples
    val = np.repeat(np.arange(6), 3)  # ... and 3 val samples each
    keep = ct.warm_up_indices(train, val, batch_size=8, eval_batch_size=9)
    assert list(np.unique(train[keep])) == [0, 1, 2]  # 30 train (>= 16), 9 val (>= 9)
    assert len(keep) == 30 and list(keep) == sorted(keep)
    everything = ct.warm_up_indices(train, val, batch_size=64, eval_batch_size=9)
    assert len(everything) == len(train)


def test_the_warm_up_trains_untimed_and_leaves_nothing(data_root, tmp_path, monkeypatch):
    """A real warm-up of a 1-epoch width-8 recipe: it reports its seconds, writes no stage
    into the runs folder and removes its temporary folder."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    runs = tmp_path / "runs"
    cfg = PipelineConfig(source=SYNTH, target="", fmt="ffcv", device="cpu", k=4, ratio=0.0,
                         method="random", finetune=("lp",), data_root=data_root, runs_root=runs,
                         overrides=TRAIN, finetune_overrides=FINETUNE)
    from ffcv_dp4tl.pipeline.config import validate
    from ffcv_dp4tl.pipeline.resolve import resolve

    said: list[str] = []
    w = ct.warm_up(cfg, resolve(cfg, validate(cfg), lambda _: None), said.append)
    assert w["ran"] is True and w["seconds"] > 0 and "pretraining" in w["what"]
    assert said[0].startswith("[cost-table] warm-up: ")
    assert not runs.exists() or not any(runs.iterdir())
    assert not list((tmp_path / "tmp").glob("dp4tl-warm-up-*"))  # (torch keeps its own there)


def _old_seed_config(base: PipelineConfig, seed: int) -> PipelineConfig:
    """How run_cost_table made trial ``seed``'s config until 2026-12-08 (seed overrides)."""
    over = tuple(seed_overrides(seed))
    return replace(base, seed=seed, overrides=tuple(base.overrides) + over,
                   finetune_overrides=tuple(base.finetune_overrides) + over)


def _stage_folders(cfg: PipelineConfig, monkeypatch) -> tuple[list[str], list[int]]:
    """The stage folders a pipeline run of ``cfg`` asks for (its keys), and its seeds: score and
    prune run (the pretraining's key holds the mask's content), training stages are skipped."""
    import ffcv_dp4tl.pipeline.run as run
    from ffcv_dp4tl.pipeline.stages import run_stage as real

    asked: list[str] = []

    def record(st, fn, log=print, upstream=()):
        asked.append(st.dir.name)
        if st.kind in ("score", "prune"):
            return real(st, fn, log, upstream)
        return SimpleNamespace(result=None, dir=st.dir, ran=False)

    monkeypatch.setattr(run, "run_stage", record)
    monkeypatch.setattr(run, "report_step", lambda cfg, ok, r, res, log: res)
    res = run.run_pipeline(cfg, log=lambda _: None)
    return asked, list(res.seeds)


@pytest.mark.parametrize("arch", ["", "resnet18"])
def test_each_seeds_config_keeps_the_stage_keys_and_its_report_names_the_seed(
        data_root, tmp_path, monkeypatch, arch):
    """A seed was passed as ``--set train.seed=S data.seed=S`` overrides with the pipeline at
    seed 0, so every seed's report said "s0" (figures audit). The pipeline's own ``seeds`` gives
    the same stage folders (cached cost-table runs are reused), seed 0 included; with --arch the
    seed's overrides would move behind model.arch in the pretraining's key, so that case keeps
    the overrides (and its folders)."""
    base = PipelineConfig(source=SYNTH, target="", fmt="ffcv", device="cpu", method="random",
                          ratio=0.5, finetune=("lp", "ff"), data_root=data_root,
                          runs_root=tmp_path / "runs", overrides=TRAIN,
                          finetune_overrides=FINETUNE, arch=arch)
    for seed in (0, 1):
        before, old_seeds = _stage_folders(_old_seed_config(base, seed), monkeypatch)
        assert old_seeds == [0]  # (the fault: the report said "s0" for every seed)
        after, seeds = _stage_folders(ct.seeded(base, seed), monkeypatch)
        assert [x.split("-")[0] for x in after] == ["score", "prune", "pretrain", "finetune",
                                                    "finetune"]
        assert after == before, seed
        assert seeds == ([0] if seed and arch else [seed])
