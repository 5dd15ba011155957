"""CLI of the paper protocol: --protocol, --seeds, brought weights, --split, recipe listing."""
from __future__ import annotations

import sys

import pytest

from cli_runner import cli as _cli
from ffcv_dp4tl.cli import main


@pytest.fixture
def recorded(monkeypatch):
    """Replace run_pipeline / run_cost_table by a recorder of their arguments."""
    from importlib import import_module

    seen: dict = {}

    class Stop(Exception):
        pass

    def fake(name):
        def f(*a, **kw):
            seen[name] = (a, kw)
            raise Stop
        return f
    monkeypatch.setattr(import_module("ffcv_dp4tl.pipeline.run"), "run_pipeline", fake("pipeline"))
    monkeypatch.setattr(import_module("ffcv_dp4tl.bench.cost_table"), "run_cost_table",
                        fake("bench"))

    def call(capsys, *args):
        seen.clear()
        monkeypatch.setattr(sys, "argv", ["dp4tl", *map(str, args)])
        monkeypatch.setattr(sys, "excepthook", sys.excepthook)
        with pytest.raises(Stop):
            main()
        capsys.readouterr()
        return seen
    return call


def test_pipeline_protocol_seeds_weights_split_reach_the_config(recorded, capsys, tmp_path):
    seen = recorded(capsys, "pipeline")
    (cfg,), _ = seen["pipeline"]
    assert (cfg.protocol, cfg.seeds, cfg.surrogate_weights, cfg.split) == ("fast", (0,), "", "auto")
    seen = recorded(capsys, "pipeline", "--protocol", "paper", "--seeds", "0,1,2",
                    "--surrogate-weights", tmp_path / "r18.pth", "--split", "official",
                    "--set-finetune", "train.epochs=3")
    (cfg,), _ = seen["pipeline"]
    assert (cfg.protocol, cfg.seeds, cfg.surrogate_weights, cfg.split, cfg.finetune_overrides) == \
        ("paper", (0, 1, 2), str(tmp_path / "r18.pth"), "official", ("train.epochs=3",))


def test_bench_defaults_three_seeds_tolerance_zero_and_passes_protocol(recorded, capsys, tmp_path):
    seen = recorded(capsys, "bench", "cost-table", "-o", tmp_path / "o", "--protocol", "paper")
    (base, _), kw = seen["bench"]
    assert kw["seeds"] == [0, 1, 2] and kw["tol"] == 0.0 and base.protocol == "paper"
    assert "--protocol paper" in kw["command"] and "--seeds 0,1,2" in kw["command"]


@pytest.mark.parametrize("args, field", [
    (("pipeline", "--protocol", "slow"), "--protocol"),
    (("pipeline", "--seeds", "0,x"), "--seeds"),
    (("pipeline", "--split", "zhou"), "--split"),
    (("score", "--data", "D", "--out", "O", "--target-crop", "squash"), "--target-crop"),
])
def test_bad_values_are_one_line_errors(args, field, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, monkeypatch, *args)
    assert code == 2 and field in err, err
    assert not any(tmp_path.iterdir())


def test_recipes_lists_the_paper_set(capsys, monkeypatch):
    code, out, _ = _cli(capsys, monkeypatch, "recipes")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if line.strip() and not line.startswith("(")]
    for n in ("paper/lp", "paper/ff", "paper/resnet101_16ep", "paper/resnet18_surrogate",
              "paper/lp_moco", "lp", "resnet18_tiny_cpu"):
        assert n in names, out
    code, out, _ = _cli(capsys, monkeypatch, "recipes", "paper/lp")
    assert code == 0 and "lr = 0.1" in out and 'schedule = "multistep"' in out


def test_finetune_source_weights_needs_arch_and_excludes_checkpoint(capsys, monkeypatch, tmp_path):
    code, _, err = _cli(capsys, monkeypatch, "finetune", "lp", "--data", tmp_path, "--out",
                        tmp_path / "o", "--source-weights", tmp_path / "w.pth")
    assert code == 2 and "--arch" in err
    code, _, err = _cli(capsys, monkeypatch, "finetune", "lp", "--data", tmp_path, "--out",
                        tmp_path / "o")
    assert code == 2 and "--checkpoint" in err and "--source-weights" in err
