"""The cost table's Markdown (benchmarks/bench_gpu_user.py ``_costtable_md``) on hand-made runs:
the extrapolation to ImageNet-1K x 16 epochs uses each run's steady-state rate (the epochs after
a fresh loader's first), and the "surrogate reused" total is pretraining + LM selection only.
"""
from __future__ import annotations

import re
import types

import pytest

from repo_scripts import load_script


def _user():
    return load_script("benchmarks/bench_gpu_user.py")


def _run(epoch_s: list[float], epoch_samples: list[int], **extra) -> dict:
    """A run dict as ``costtable``'s ``run_train`` returns it."""
    later = slice(1, None) if len(epoch_s) >= 2 else slice(None)
    return {"wall": sum(epoch_s) + 1, "train_s": sum(epoch_s), "samples": sum(epoch_samples),
            "epochs": len(epoch_s), "epoch_s": epoch_s, "epoch_samples": epoch_samples,
            "img_per_s": sum(epoch_samples) / sum(epoch_s),
            "steady_img_per_s": sum(epoch_samples[later]) / sum(epoch_s[later]), "steady": len(epoch_s) >= 2,
            "arch": "resnet18", "res": 160, "precision": "bf16", "cl": True, "data_s": 0.0, "top1": None, **extra}


def _ext_rows(md: str) -> dict[int, list[str]]:
    """The extrapolation table's rows by pruning percentage, cells as strings."""
    body = md.split("**Extrapolation, not a measurement:**")[1]
    rows = [ln for ln in body.splitlines() if re.match(r"^\| \d+% \|", ln)]
    return {int(ln.split("|")[1].strip().rstrip("%")): [c.strip() for c in ln.strip("|").split("|")]
            for ln in rows}


def test_costtable_md_extrapolates_at_the_steady_rate_and_totals_the_reused_surrogate():
    user = _user()
    args = types.SimpleNamespace(data="src", target="tgt", surrogate_recipe="paper/resnet18_surrogate",
                                 recipe="paper/resnet101_16ep", epochs=2)
    # surrogate: cold first epoch 6,000 img/s, steady 10,000 img/s (the H200's 5,998 vs 9,781)
    sur = _run([10.0, 6.0], [60_000, 60_000], arch="resnet18")
    # source model, 2 epochs per ratio: cold first epoch at half its steady rate
    base = _run([60.0, 30.0], [60_000, 60_000], arch="resnet101", ratio=0.0, kept=1.0, prune_s=0.0)
    half = _run([30.0, 15.0], [30_000, 30_000], arch="resnet101", ratio=0.5, kept=0.5, prune_s=1.0)
    t_score = 36.0
    md = user._costtable_md(args, types.SimpleNamespace(type="cuda"), 60_000, sur, t_score, [base, half])

    # the measured table is unchanged in shape (tests/test_gpu_check.py's regex) and counts the
    # surrogate's first 2 epochs as measured (as many as the source model's): 16 + 36 + 1 s
    cost = re.findall(r"^\| (\d+)% \| [0-9.]+ \| [\d,]+ \| [0-9.]+ \|", md, re.M)
    assert cost[:2] == ["0", "50"]
    row50 = next(ln for ln in md.splitlines() if ln.startswith("| 50% | 0.500 |"))
    assert [c.strip() for c in row50.strip("|").split("|")][6] == "53.0"

    n = 1_281_167 * 16
    pre0, pre50 = n / 2000, n * 0.5 / 2000  # steady 2,000 img/s (the all-epoch rate is 1,333)
    sur_h = n / 10_000  # steady 10,000 img/s (the all-epoch rate is 7,500)
    rows = _ext_rows(md)
    assert rows[0][1] == "2,000" and rows[50][1] == "2,000"  # img/s used: steady
    assert float(rows[0][2]) == pytest.approx(pre0 / 3600, abs=0.006)
    assert float(rows[50][2]) == pytest.approx(pre50 / 3600, abs=0.006)
    # paper accounting (Tab. 3): surrogate's 16 epochs at its steady rate included
    assert float(rows[50][3]) == pytest.approx((pre50 + sur_h + t_score) / 3600, abs=0.006)
    assert rows[50][4] == f"{100 * (1 - (pre50 + sur_h + t_score) / pre0):.0f} %"
    # surrogate reused: pretrain + LM selection only
    assert float(rows[50][5]) == pytest.approx((pre50 + t_score) / 3600, abs=0.006)
    assert float(rows[50][5]) == pytest.approx(float(rows[50][2]) + t_score / 3600, abs=0.011)
    assert rows[50][6] == f"{100 * (1 - (pre50 + t_score) / pre0):.0f} %"
    assert rows[0][4] == rows[0][6] == "–"
    # the headers say which total is which, and the text which rate was used
    assert "total h, surrogate trained (Tab. 3)" in md and "total h, surrogate reused" in md
    assert "10,000 img/s steady state, over epoch 2" in md and f"= {sur_h / 3600:.2f} h" in md


def test_costtable_md_marks_a_single_epoch_rate_as_not_steady():
    user = _user()
    args = types.SimpleNamespace(data="src", target="tgt", surrogate_recipe="s", recipe="r", epochs=1)
    sur = _run([10.0, 6.0], [60_000, 60_000])
    base = _run([60.0], [60_000], ratio=0.0, kept=1.0, prune_s=0.0)
    half = _run([30.0], [30_000], ratio=0.5, kept=0.5, prune_s=1.0)
    md = user._costtable_md(args, types.SimpleNamespace(type="cpu"), 60_000, sur, 2.0, [base, half])
    assert "over the only epoch, not steady state" in md and "--epochs 2 measures the steady rate" in md
    # selection counts the surrogate's first epoch only (as many as the source model ran): 10 + 2 + 1
    row50 = next(ln for ln in md.splitlines() if ln.startswith("| 50% | 0.500 |"))
    assert [c.strip() for c in row50.strip("|").split("|")][6] == "13.0"
    assert _ext_rows(md)[0][1] == "1,000"
