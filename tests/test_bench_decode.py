"""benchmarks/bench_decode.py's table on hand-made timings: the prediction for the GPU host
scales its measured per-worker rate by this machine's ratio (never this machine's absolute
rate), and the decode share is decode time over the loader's time per image."""
from __future__ import annotations

import argparse

import pytest

from repo_scripts import load_script


def _bench():
    return load_script("benchmarks/bench_decode.py")


def test_prediction_scales_the_hosts_per_worker_rate_by_this_machines_ratio():
    bd = _bench()
    n = 1000
    best = {("decode", "full"): 0.25, ("decode", "half"): 0.2,  # 4,000 and 5,000 img/s
            ("loader", 0.0, 1): 0.5, ("loader", 0.5, 1): 0.4, ("normalised", 0.0, 1): 0.6,
            ("loader", 0.0, 2): 0.3}  # 2,000 / 2,500 / ... img/s
    r = {"best": best, "images": dict.fromkeys(best, n), "sizes": {0.0: 30 * 1024, 0.5: 115 * 1024},
         "cores": 2, "fractions": [0.0, 0.5], "jpeg_bytes": 20 * 1024, "px": (256, 256),
         "machine": {"cpu": "Test CPU"}, "versions": {"python": "3.x", "ffcv": "1.0.2"}}
    args = argparse.Namespace(synth="synth:x", resolution=160, batch_size=128, rounds=3)
    text = bd.markdown(args, r)
    rows = {ln.split("|")[1].strip() + "/" + ln.split("|")[2].strip(): ln for ln in text.splitlines()
            if ln.startswith("| ffcv loader")}
    per_worker = bd.H200_PER_WORKER
    assert rows["ffcv loader, JPEG only/1"].rstrip(" |").endswith(f"{per_worker * 16:,.0f}")
    assert "| 1.25× |" in rows["ffcv loader, 50% stored raw/1"]
    assert rows["ffcv loader, 50% stored raw/1"].rstrip(" |").endswith(f"{per_worker * 1.25 * 16:,.0f}")
    assert "| 2,000 |" in rows["ffcv loader, JPEG only/1"] and "| 115 |" in rows["ffcv loader, 50% stored raw/1"]
    assert "The decode alone is 50% of the JPEG-only loader's time per image" in text
    assert text.startswith(f"## {bd.SECTION}\n")
    assert "Machine: Test CPU, 2 cores" in text and "Versions: python 3.x, ffcv 1.0.2." in text


@pytest.mark.parametrize("text, ok", [("0.5,0.9", [0.5, 0.9]), ("0.25", [0.25]), ("1", None), ("0", None),
                                      ("x", None), ("0.5,", None)])
def test_raw_fractions_are_checked_where_they_are_parsed(text, ok):
    parse = _bench().raw_fractions
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    else:
        assert parse(text) == ok
