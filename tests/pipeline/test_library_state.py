"""The pipeline's entry points used as a library (API audit): ensure_built leaves torch's and
numba's thread counts as it found them (importing ffcv set both to 1), and ``log`` may be None
(say nothing) as in train and finetune."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tiny_data import SYNTH

ROOT = Path(__file__).resolve().parents[2]


def test_ensure_built_on_a_fresh_root_keeps_the_thread_counts(tmp_path):
    # (a fresh interpreter: the first import of ffcv is what changed them)
    code = (
        "import sys, torch, numba\n"
        "from pathlib import Path\n"
        "torch.set_num_threads(2); before = torch.get_num_threads(), numba.get_num_threads()\n"
        "from ffcv_dp4tl.pipeline import ensure_built\n"
        f"ensure_built({SYNTH!r}, Path(sys.argv[1]))\n"
        "print(before == (torch.get_num_threads(), numba.get_num_threads()), before,"
        " torch.get_num_threads(), numba.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1].split()[0] == "True", out.stdout


def test_ensure_built_takes_no_log_or_none(data_root, synth_root, capsys):
    from ffcv_dp4tl.pipeline import ensure_built

    assert ensure_built(SYNTH, data_root) == synth_root  # (default: where the caller's go)
    said = capsys.readouterr().out
    assert "reusing" in said
    assert ensure_built(SYNTH, data_root, None) == synth_root
    assert capsys.readouterr().out == ""
