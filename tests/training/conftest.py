"""The training tests use the session fixtures of ``tests/conftest.py`` (``source_dir``,
``target_dir``, ``test_recipe``, ``trained_run``) and the constants of ``tests/tiny_data.py``."""

from __future__ import annotations

import pytest
import torch

from ffcv_dp4tl.training.callbacks import Callback


class StopAt(Callback):
    """Ctrl-C as (``epoch``, ``step``)'s batch comes in: ``step`` steps of that epoch are done
    (an interruption between two steps, for the mid-epoch resume tests)."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step, self.calls = epoch, step, 0

    def on_batch(self, epoch, batch):
        if epoch == self.epoch:
            if self.calls == self.step:
                raise KeyboardInterrupt
            self.calls += 1


@pytest.fixture
def lock_taken_first(monkeypatch):
    """``lock_taken_first(module, out)``: a context in which another run takes ``module``'s run
    folder lock (and writes an empty metrics.jsonl in ``out``) just before this process asks for
    it, as a run started at the same moment into the same new ``--out`` would; the other run
    holds the lock until the block ends."""
    import contextlib

    from ffcv_dp4tl.locks import directory_lock

    @contextlib.contextmanager
    def taken(module, out):
        winner = contextlib.ExitStack()
        real = module.directory_lock

        def winner_first(path, what, **kw):  # between this run's check and its lock
            winner.enter_context(directory_lock(path, what))
            (out / "metrics.jsonl").write_text("")
            return real(path, what, **kw)

        monkeypatch.setattr(module, "directory_lock", winner_first)
        with winner:
            yield

    return taken


@pytest.fixture
def step_spy(monkeypatch):
    """Records every ``engine.train_step`` the trainer or finetune() runs: per step (the lr of
    each param group, the loss it returned, the cross-entropy of the same forward pass with
    label smoothing 0.3, and without). The forward is rerun in train mode, as the step's (BN on
    batch statistics), so a test can tell which loss was backpropagated."""
    import importlib

    from torch.nn import functional as F

    engine = importlib.import_module("ffcv_dp4tl.training.engine")
    real_step = engine.train_step
    steps: list = []

    def spy(model, batch, opt, objective, **kw):
        with torch.no_grad():
            out = model(batch.images)
        loss = real_step(model, batch, opt, objective, **kw)
        steps.append(([g["lr"] for g in opt.param_groups], float(loss),
                      float(F.cross_entropy(out, batch.labels, label_smoothing=0.3)),
                      float(F.cross_entropy(out, batch.labels))))
        return loss

    monkeypatch.setattr(engine, "train_step", spy)
    return steps
