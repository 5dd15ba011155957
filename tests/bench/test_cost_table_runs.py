"""How the cost table runs its pipelines: the config of each seed (its stage keys, its
report's seed) — figures audit."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

import ffcv_dp4tl.bench.cost_table as ct
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.resolve import seed_overrides
from tiny_data import FINETUNE, SYNTH, TRAIN


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
