"""`dp4tl evaluate ...`: tables and files written, bad input refused in one line."""
from __future__ import annotations

import json

from cli_runner import cli, one_line


def test_corruptions_and_flatness_write_their_tables(lp_run, capsys, monkeypatch, tmp_path):
    code, out, err = cli(capsys, monkeypatch, "evaluate", "corruptions", f"LP={lp_run}",
                         "--corrupt", "impulse_noise:5", "--format", "wds", "--workers", "0",
                         "--device", "cpu", "--no-progress", "-o", tmp_path)
    assert code == 0, err
    res = json.loads((tmp_path / "corruptions.json").read_text())
    assert [(r["corruption"], r["severity"]) for r in res["LP"]["rows"]] == [("impulse_noise", 5)]
    assert "+ Impulse Noise" in (tmp_path / "corruptions.md").read_text()
    code, out, err = cli(capsys, monkeypatch, "evaluate", "flatness", f"LP={lp_run}", "--batches",
                         "1", "--batch-size", "8", "--steps", "1", "--iters", "2", "--format",
                         "wds", "--workers", "0", "--device", "cpu", "-o", tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "flatness.json").read_text())["LP"]["samples"] == 8


def test_bad_input_is_one_line(eval_target, capsys, monkeypatch, tmp_path):
    one_line(*cli(capsys, monkeypatch, "evaluate", "vtab-splits", "--data", eval_target, "-o",
                  tmp_path)[::2], "fewer than the 800 + 200")
    one_line(*cli(capsys, monkeypatch, "evaluate", "corruptions", tmp_path, "--corrupt", "frost",
                  "-o", tmp_path)[::2], "frost")
    one_line(*cli(capsys, monkeypatch, "evaluate", "flatness", tmp_path / "nope", "-o",
                  tmp_path)[::2], "does not exist")
    code, out, err = cli(capsys, monkeypatch, "evaluate", "vtab-splits", "--data", eval_target,
                         "--train-size", "16", "--val-size", "4", "-o", tmp_path / "m")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "train16.json", "train16.npy", "train16val4.json", "train16val4.npy", "val4.json", "val4.npy"]
