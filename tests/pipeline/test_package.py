"""ffcv_dp4tl.pipeline as a library: it stays light to import (every export resolves:
tests/test_lazy.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import ffcv_dp4tl.pipeline as pipeline


def test_the_package_loads_no_step_until_one_is_asked_for():
    """`import ffcv_dp4tl.pipeline` names the steps without importing them (torch, ffcv): a
    script that only reads a results.json pays for what it uses."""
    code = ("import sys, ffcv_dp4tl.pipeline as p\n"
            "assert 'ffcv_dp4tl.pipeline.run' not in sys.modules\n"
            "p.PipelineResult\n"
            "assert 'ffcv_dp4tl.pipeline.result' in sys.modules\n"
            "assert 'ffcv_dp4tl.pipeline.run' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        pipeline.nope  # noqa: B018
