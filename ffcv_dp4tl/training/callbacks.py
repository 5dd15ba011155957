"""Observers of a training run: ``train(..., callbacks=[...])``.

A callback is any object with some of these methods (all optional; :class:`Callback` has them
as no-ops):

* ``on_train_begin(model)`` — once, before the first epoch, with the model being trained (the
  backbone with its classifier; e.g. to hook its forward pass).
* ``on_batch(epoch, batch)`` — each batch the rank trains on, before its step (``batch.indices``
  are the dataset sample indices). Runs in the step loop: keep it cheap and never read device
  tensors (that would synchronise every step).
* ``on_epoch_end(row)`` — the epoch's metrics row (what ``metrics.jsonl`` gets), after
  validation and before the checkpoint is written.
* ``on_checkpoint(epoch, step)`` — before a mid-epoch checkpoint (``train.checkpoint_every``)
  is written, ``step`` steps into ``epoch``; ``on_resume(epoch, step)`` — a run resumed from
  one, before the epoch's next batch. A callback that accumulates over an epoch saves its part
  at the first and takes it back at the second (:class:`RecordSeen` does).
* ``on_train_end()`` — once, also when the run stops early or fails.

Callbacks passed to :func:`~ffcv_dp4tl.training.trainer.train` run on every DDP rank; the
trainer's own outputs are callbacks too, on the main rank only: :class:`MetricsWriter`
(``metrics.jsonl``), :class:`TensorBoardLogger` (``train.tensorboard``) and
:class:`ConsoleLogger` (``progress``). :class:`RecordSeen` audits which samples every rank
trained on (a mask or DDP sharding check).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DP4TLError

#: metrics.jsonl keys mirrored to TensorBoard (step = completed epochs)
TB_SCALARS = ("loss", "top1_train", "top1_val", "loss_val", "img_per_s", "lr", "resolution",
              "epoch_seconds")


class Callback:
    """No-op base: subclass and override what you need."""

    def on_train_begin(self, model: Any) -> None:
        pass

    def on_batch(self, epoch: int, batch: Any) -> None:
        pass

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        pass

    def on_checkpoint(self, epoch: int, step: int) -> None:
        pass

    def on_resume(self, epoch: int, step: int) -> None:
        pass

    def on_train_end(self) -> None:
        pass


def call(callbacks, method: str, *args: Any) -> None:
    """``cb.method(*args)`` for every callback that has it."""
    for cb in callbacks:
        fn = getattr(cb, method, None)
        if fn is not None:
            fn(*args)


class MetricsWriter(Callback):
    """Appends each epoch's row to ``path`` (JSON lines, flushed per epoch)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()


class TensorBoardLogger(Callback):
    """Mirrors :data:`TB_SCALARS` of each row to ``out_dir/tensorboard`` at step epoch + 1.
    ``purge_step`` drops events a killed run wrote past its last checkpoint, so a resumed run's
    curves have no doubled epochs."""

    def __init__(self, out_dir: str | Path, start_epoch: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DP4TLError("train.tensorboard = true needs the tensorboard package: "
                             "pip install 'ffcv-dp4tl[tensorboard]' (or tensorboard)") from None
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_epoch + 1)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        for key in TB_SCALARS:
            if isinstance(row.get(key), (int, float)):
                self.writer.add_scalar(key, row[key], row["epoch"] + 1)
        self.writer.flush()

    def on_train_end(self) -> None:
        self.writer.close()


class ConsoleLogger(Callback):
    """One line per epoch: loss, train/val top-1, throughput, seconds. Epochs are counted from
    1, as the progress bars and the final line count them (``metrics.jsonl``'s ``epoch`` field
    is the 0-based index)."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        val = "-" if row.get("top1_val") is None else f"{row['top1_val']:.3f}"
        print(f"epoch {row['epoch'] + 1}: loss {row['loss']:.3f} train {row['top1_train']:.3f} "
              f"val {val} {row['img_per_s']:.0f} img/s {row['epoch_seconds']:.1f}s", flush=True)


class RecordSeen(Callback):
    """Saves the sample indices this rank trained on, per epoch, to
    ``out_dir/seen/rank{rank}_epoch{epoch}.npy`` (in step order): the ground truth for checking
    that a mask, a resumed run or DDP sharding trained on exactly the samples it should. Also
    keeps them in memory (``self.seen[epoch]``) for in-process use.

    With mid-epoch checkpoints it saves the epoch's part at each (``..._step{k}.npy``) and a
    run resumed at step k on as many ranks starts from that part, so the epoch's file covers
    the whole epoch across the interruption. Without ``out_dir`` (in memory only), or resumed
    on another number of ranks (each rank's part is its own), a resumed epoch holds the
    batches trained after the resume."""

    def __init__(self, out_dir: str | Path | None = None, rank: int | None = None):
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.rank = rank
        self.seen: dict[int, np.ndarray] = {}
        self._parts: list[torch.Tensor] = []
        self._epoch: int | None = None

    def _path(self, epoch: int, step: int | str | None = None) -> Path:
        rank = self.rank
        if rank is None:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return self.out_dir / "seen" / (f"rank{rank}_epoch{epoch}"
                                        + ("" if step is None else f"_step{step}") + ".npy")

    def _so_far(self) -> np.ndarray:
        return (torch.cat(self._parts).numpy().astype(np.int64) if self._parts
                else np.zeros(0, np.int64))

    def on_batch(self, epoch: int, batch: Any) -> None:
        self._epoch = epoch
        self._parts.append(batch.indices.detach().to("cpu", non_blocking=True))

    def on_checkpoint(self, epoch: int, step: int) -> None:
        if self.out_dir is not None:
            from ..fsutil import atomic_path

            self._path(epoch).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self._path(epoch, step), suffix=".npy") as tmp:
                np.save(tmp, self._so_far())

    def on_resume(self, epoch: int, step: int) -> None:
        if self.out_dir is not None and self._path(epoch, step).exists():
            self._parts = [torch.from_numpy(np.load(self._path(epoch, step)))]

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        epoch = row["epoch"]
        idx = self._so_far()
        self._parts = []
        self.seen[epoch] = idx
        if self.out_dir is not None:
            self._path(epoch).parent.mkdir(parents=True, exist_ok=True)
            np.save(self._path(epoch), idx)
            for part in self._path(epoch).parent.glob(self._path(epoch, "*").name):
                part.unlink(missing_ok=True)
