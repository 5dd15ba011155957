"""Per-stage wall-clock timer; its totals feed ``timings.json`` and the cost-table benchmark."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


class StageTimer:
    """Accumulate seconds per named stage. ``sync_cuda`` makes GPU stages honest at a small cost."""

    def __init__(self, totals: dict[str, float] | None = None, sync_cuda: bool = False):
        self.totals: dict[str, float] = dict(totals or {})
        self.sync_cuda = sync_cuda and torch.cuda.is_available()

    def add(self, stage: str, seconds: float) -> None:
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync_cuda:
                torch.cuda.synchronize()
            self.add(stage, time.perf_counter() - t0)
