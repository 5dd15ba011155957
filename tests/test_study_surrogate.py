"""benchmarks/study_surrogate.py --table: the surrogate study that docs/synth.md tabulates.

Why a test: docs/synth.md prints the table of its raw rows (docs/synth-surrogate-study.jsonl);
the table had drifted from what the command prints (rows of the recommended config missing, a
seed rerun counted twice as "4 (1,0,2,0)" runs), and nobody reruns a study's table by hand."""
from __future__ import annotations

import json
from pathlib import Path

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _study():
    return load_script("benchmarks/study_surrogate.py")


def test_a_seed_run_twice_counts_once_by_its_later_row():
    study = _study()
    base = {"preset": "bench", "data": "", "config": "3x-scale35-lr0.25-bs64", "val_top1": 0.5,
            "targets": {t: {c: {"lm_recall": 0.5, "fm_related_samples": 0.1} for c in ("center", "none")}
                        for t in ("paper", "warm", "blur")}}
    rows = [dict(base, seed=0), dict(base, seed=1), dict(base, seed=0, val_top1=0.9)]
    kept = study.latest_per_seed(rows)
    assert sorted(r["seed"] for r in kept) == [0, 1]
    assert next(r for r in kept if r["seed"] == 0)["val_top1"] == 0.9
    line = study.table(rows).splitlines()[2]
    assert line.endswith("| 2 (0,1) |") and "| 0.70 |" in line  # mean of 0.9 and 0.5


def test_docs_synth_shows_the_table_the_command_prints():
    rows = [json.loads(ln) for ln in
            (ROOT / "docs" / "synth-surrogate-study.jsonl").read_text().splitlines() if ln.strip()]
    assert _study().table(rows) in (ROOT / "docs" / "synth.md").read_text()
