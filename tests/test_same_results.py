"""scripts/same_results.py: the before/after check of a refactoring ignores times and run
folders, and catches any other change."""
from __future__ import annotations

import json
from pathlib import Path

from repo_scripts import load_script


def _main():
    return load_script("scripts/same_results.py").main


BEFORE = {"config": {"runs_root": "/tmp/a/runs", "ratio": 0.6},
          "rows": [{"method": "lm", "top1": 55.6, "score_s": 0.5, "total_cpu_s": 30.0,
                    "mask": "/tmp/a/runs/prune-1/train.npy"}],
          "date": "2026-11-27"}


def _write(tmp_path: Path, name: str, data) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_times_dates_and_run_folders_are_not_differences(tmp_path, capsys):
    after = json.loads(json.dumps(BEFORE))
    after["config"]["runs_root"] = "/tmp/b/runs"
    after["rows"][0].update(score_s=14.8, total_cpu_s=46.0, mask="/tmp/b/runs/prune-1/train.npy",
                            truth={"recall": 0.5})
    after["date"] = "2026-12-02"
    after["config"]["progress"] = False  # (`--no-progress`: bars off, the same results)
    before = {**BEFORE, "config": {**BEFORE["config"], "progress": True}}
    assert _main()([str(_write(tmp_path, "a.json", before)), str(_write(tmp_path, "b.json", after))]) == 0
    out = capsys.readouterr().out
    assert "added: /rows[0]/truth" in out and "same apart from times" in out


def test_a_changed_accuracy_or_a_lost_field_is_a_difference(tmp_path, capsys):
    after = json.loads(json.dumps(BEFORE))
    after["rows"][0]["top1"] = 55.5
    after["config"]["runs_root"] = "/tmp/b/runs"
    after["rows"][0]["mask"] = "/tmp/b/runs/prune-2/train.npy"  # another stage key: another mask
    del after["config"]["ratio"]
    assert _main()([str(_write(tmp_path, "a.json", BEFORE)), str(_write(tmp_path, "b.json", after))]) == 1
    out = capsys.readouterr().out
    assert "changed: /rows[0]/top1: 55.6 -> 55.5" in out and "removed: /config/ratio" in out
    assert "changed: /rows[0]/mask" in out
    assert _main()([str(tmp_path / "missing.json"), str(tmp_path / "b.json")]) == 2


def test_a_difference_of_file_hashes_only_says_why(tmp_path, capsys):
    """Two deterministic runs that each trained their surrogate differ only in its checkpoint's
    sha256 (the file records wall times): still a difference, with the reason and the fix."""
    a = {**BEFORE, "stages": {"score": {"surrogate_hash": "aa"}}}
    b = {**BEFORE, "stages": {"score": {"surrogate_hash": "bb"}}}
    assert _main()([str(_write(tmp_path, "a.json", a)), str(_write(tmp_path, "b.json", b))]) == 1
    out = capsys.readouterr().out
    assert "changed: /stages/score/surrogate_hash" in out and "only file hashes differ" in out
    c = {**b, "rows": [{**BEFORE["rows"][0], "top1": 50.0}]}
    assert _main()([str(_write(tmp_path, "a.json", a)), str(_write(tmp_path, "c.json", c))]) == 1
    assert "only file hashes differ" not in capsys.readouterr().out
