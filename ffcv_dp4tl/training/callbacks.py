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
* ``on_epoch_saved(epoch)`` — the checkpoint at the end of ``epoch`` is on disk (every rank,
  once the main rank has saved it): what was kept only to resume within the epoch can go.
* ``on_train_end()`` — once, also when the run stops early or fails.

Callbacks passed to :func:`~ffcv_dp4tl.training.trainer.train` run on every DDP rank; the
trainer's own outputs are callbacks too, on the main rank only: :class:`MetricsWriter`
(``metrics.jsonl``), :class:`TensorBoardLogger` (``train.tensorboard``) and
:class:`ConsoleLogger` (with or without progress bars). :class:`RecordSeen` audits which samples every rank
trained on (a mask or DDP sharding check).
"""
from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DP4TLError
from ..fsutil import atomic_save_npy, load_npy, os_error_line
from ..progress import say

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

    def on_epoch_saved(self, epoch: int) -> None:
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
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
                f.flush()
        except FileNotFoundError as e:  # (appending creates the file: its folder is gone)
            raise DP4TLError(os_error_line(e, writing=True)) from None


#: the TensorBoard event files' folder in a run's --out
TB_DIR = "tensorboard"


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
        self.writer = SummaryWriter(str(Path(out_dir) / TB_DIR), purge_step=start_epoch + 1)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        for key in TB_SCALARS:
            if isinstance(row.get(key), (int, float)):
                self.writer.add_scalar(key, row[key], row["epoch"] + 1)
        self.writer.flush()

    def on_train_end(self) -> None:
        self.writer.close()


class ConsoleLogger(Callback):
    """One line per epoch: loss, train and held-out top-1, then throughput and seconds where the
    row has them. Epochs are counted from 1 out of ``epochs`` (when given), as the progress bars
    and the final line count them (``metrics.jsonl``'s ``epoch`` field is the 0-based index).
    The trainer prints it with or without progress bars: in a batch job's log it is the run's
    record. A finetuning prints it too, named by its mode and reading its test split
    (``label="lp", held_out="test"``: ``lp epoch 3/50: loss ... test ...``)."""

    def __init__(self, epochs: int | None = None, label: str = "", held_out: str = "val") -> None:
        self.epochs, self.label, self.held_out = epochs, label, held_out

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        score = row.get(f"top1_{self.held_out}")
        of = f"/{self.epochs}" if self.epochs else ""
        line = (f"{self.label + ' ' if self.label else ''}epoch {row['epoch'] + 1}{of}: loss "
                f"{row['loss']:.3f} train {row['top1_train']:.3f} {self.held_out} "
                + ("-" if score is None else f"{score:.3f}"))
        if "img_per_s" in row:
            line += f" {row['img_per_s']:.0f} img/s {row['epoch_seconds']:.1f}s"
        say(line)


class RecordSeen(Callback):
    """Saves the sample indices this rank trained on, per epoch, to
    ``out_dir/seen/rank{rank}_epoch{epoch}.npy`` (in step order): the ground truth for checking
    that a mask, a resumed run or DDP sharding trained on exactly the samples it should. Also
    keeps them in memory (``self.seen[epoch]``) for in-process use. :func:`read_seen` reads an
    epoch back (every rank's file).

    **Resumed mid-epoch.** At each mid-epoch checkpoint every rank saves the epoch's part so far
    (``..._step{k}.npy``), and the trainer waits for every rank before the main rank saves the
    checkpoint, which so never names a step whose parts are not all on disk; the main rank
    records how many ranks wrote them (``epoch{e}_step{k}.ranks``) and removes the step's parts
    of ranks this run does not have (left by a run on more ranks).
    A run resumed at step k rebuilds the epoch's global order of those k steps from the parts
    (rank q of W read positions q, q + W, ... of it: ``shard_for_rank``), and each of its W'
    ranks takes its own share of that order (positions r, r + W', ...: on as many ranks, its
    own part). The steps skipped are counted in global batches on any number of ranks
    (``EpochPlan.start_at_batch``), so each rank's file then holds what it would have read had
    the whole epoch run on W' ranks, and the files of all ranks cover the resumed epoch's plan.
    At the epoch's end the main rank removes the epoch files of ranks it does not have (a run of
    the epoch on more ranks). The step parts stay until the epoch's checkpoint is saved (a kill
    before it resumes from the last mid-epoch one): they go then (``on_epoch_saved``), and any
    an earlier run left go as a later epoch starts.

    **Partial records.** When the first k steps cannot be rebuilt (no ``out_dir``: in memory
    only; parts missing, or of unequal lengths), the resumed epoch holds only the batches
    trained after the resume, and says so in one line: a warning, ``self.partial[epoch]``, and
    with ``out_dir`` the marker ``seen/epoch{epoch}.partial`` (which :func:`read_seen` refuses;
    it is removed when the epoch is trained again from its start).

    ``rank`` / ``world_size``: this process's (default: torch.distributed's, else 0 and 1)."""

    def __init__(self, out_dir: str | Path | None = None, rank: int | None = None,
                 world_size: int | None = None):
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.rank = rank
        self.world_size = world_size
        self.seen: dict[int, np.ndarray] = {}
        #: epoch -> why its record lacks samples (a resume that could not rebuild its start)
        self.partial: dict[int, str] = {}
        self._parts: list[torch.Tensor] = []
        self._epoch: int | None = None
        self._resumed: int | None = None

    def _dist(self) -> tuple[int, int]:
        on = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = self.rank if self.rank is not None else (torch.distributed.get_rank() if on else 0)
        world = (self.world_size if self.world_size is not None
                 else torch.distributed.get_world_size() if on else 1)
        return rank, world

    def _path(self, epoch: int, step: int | None = None) -> Path:
        return self.out_dir / "seen" / (f"rank{self._dist()[0]}_epoch{epoch}"
                                        + ("" if step is None else f"_step{step}") + ".npy")

    def _step_parts(self, epoch: int) -> list[tuple[int, int, Path]]:
        """``(rank, step, path)`` of every rank's saved parts of ``epoch``."""
        return [(q, k, p) for q, e, k, p in _seen_files(self.out_dir / "seen")
                if e == epoch and k is not None]

    def _ranks_file(self, epoch: int, step: int) -> Path:
        """How many ranks wrote the parts of ``epoch`` at ``step`` (the main rank's record)."""
        return self.out_dir / "seen" / f"epoch{epoch}_step{step}.ranks"

    def _so_far(self) -> np.ndarray:
        return (torch.cat(self._parts).numpy().astype(np.int64) if self._parts
                else np.zeros(0, np.int64))

    def on_batch(self, epoch: int, batch: Any) -> None:
        if epoch != self._epoch:
            if self.out_dir is not None:  # (parts an earlier run left: those epochs are saved)
                self._drop_parts(lambda e: e < epoch)
            self._epoch = epoch
            if self._resumed != epoch:  # trained from its start: a record from before is gone
                self.partial.pop(epoch, None)
                if self.out_dir is not None and self._dist()[0] == 0:
                    (self.out_dir / "seen" / PARTIAL.format(epoch=epoch)).unlink(missing_ok=True)
        self._parts.append(batch.indices.detach().to("cpu", non_blocking=True))

    def on_checkpoint(self, epoch: int, step: int) -> None:
        if self.out_dir is None:
            return
        from ..fsutil import atomic_path, atomic_write_text

        rank, world = self._dist()
        self._path(epoch).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(epoch, step), suffix=".npy") as tmp:
            np.save(tmp, self._so_far())
        if rank == 0:  # (no rank of this run writes these: no race)
            for q, k, path in self._step_parts(epoch):
                if k == step and q >= world:
                    path.unlink(missing_ok=True)
            atomic_write_text(self._ranks_file(epoch, step), f"{world}\n")
        # (the trainer then waits for every rank before the main rank saves the checkpoint)

    def on_resume(self, epoch: int, step: int) -> None:
        self._resumed = epoch
        rank, world = self._dist()
        if self.out_dir is None:
            # in memory, this process: its own batches of the epoch, if it trained them, one
            # entry a step (those past the checkpoint's step are trained again after it)
            if self._epoch == epoch and len(self._parts) >= step:
                self._parts = self._parts[:step]
            else:
                self._parts = []
                self._mark_partial(epoch, f"RecordSeen without out_dir: the {step} steps of "
                                          f"epoch {epoch} before the resume are not recorded")
            return
        parts = {q: path for q, k, path in self._step_parts(epoch) if k == step}
        try:  # how many ranks wrote the step (parts from before this record: the parts found)
            old_world = int(self._ranks_file(epoch, step).read_text())
        except (OSError, ValueError):
            old_world = max(parts) + 1 if parts else 0
        damaged: list[str] = []
        if old_world == world and rank in parts:  # as many ranks: this rank's own part
            own = _read_part(parts[rank], damaged)
            if own is not None:
                self._parts = [torch.from_numpy(own)]
                return
            loaded = []  # (damaged: the epoch is partial, the others need not be read)
        else:
            loaded = [a for q in range(old_world) if q in parts
                      if (a := _read_part(parts[q], damaged)) is not None]
        if (not parts or damaged or len(loaded) != old_world or len({len(a) for a in loaded}) != 1
                or (len(loaded[0]) * old_world) % world):
            self._parts = []
            found = f"ranks {sorted(parts)} found" if parts else "none found"
            if damaged:
                found += f"; unreadable: {damaged[0]}"
            self._mark_partial(epoch, f"the parts of its {step} steps before the resume "
                                      f"(seen/rank*_epoch{epoch}_step{step}.npy) are missing, "
                                      f"unreadable or of unequal lengths ({found}): only the "
                                      "batches after the resume are recorded")
            return
        order = np.stack(loaded, axis=1).reshape(-1)  # the epoch's global order of k steps
        self._parts = [torch.from_numpy(np.ascontiguousarray(order[rank::world]))]

    def _mark_partial(self, epoch: int, why: str) -> None:
        self.partial[epoch] = why
        if self.out_dir is not None:
            from ..fsutil import atomic_write_text

            atomic_write_text(self.out_dir / "seen" / PARTIAL.format(epoch=epoch), why + "\n")
        warnings.warn(f"seen/ record of epoch {epoch} is partial: {why}", stacklevel=3)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        epoch = row["epoch"]
        idx = self._so_far()
        self._parts = []
        self.seen[epoch] = idx
        if self.out_dir is not None:
            rank, world = self._dist()
            self._path(epoch).parent.mkdir(parents=True, exist_ok=True)
            atomic_save_npy(self._path(epoch), idx)
            if rank == 0:  # a run of this epoch on more ranks, trained again: not this one's
                for q, path in _epoch_files(self.out_dir / "seen", epoch).items():
                    if q >= world:
                        path.unlink(missing_ok=True)
            # The epoch's step parts stay until its checkpoint is saved (after this call): a
            # kill before that resumes from its last mid-epoch checkpoint, which needs them.

    def on_epoch_saved(self, epoch: int) -> None:
        if self.out_dir is not None:
            self._drop_parts(lambda e: e <= epoch)

    def _drop_parts(self, which: Callable[[int], bool]) -> None:
        """Remove the step parts of the epochs ``which`` accepts (whose checkpoints are saved):
        this rank's own; the main rank also those of ranks this run does not have and the
        ``.ranks`` records. (Every rank read the parts it resumes from before its first step,
        whose gradient all-reduce no rank passes alone.)"""
        seen = self.out_dir / "seen"
        if not seen.is_dir():
            return
        rank, world = self._dist()
        for q, e, k, p in _seen_files(seen):
            if k is not None and which(e) and (q == rank or (rank == 0 and q >= world)):
                p.unlink(missing_ok=True)
        if rank == 0:
            for p in seen.glob("epoch*_step*.ranks"):
                m = re.fullmatch(r"epoch(\d+)_step\d+\.ranks", p.name)
                if m and which(int(m.group(1))):
                    p.unlink(missing_ok=True)


def _read_part(path: Path, damaged: list[str]) -> np.ndarray | None:
    """A step part's indices; None, with ``"NAME (why)"`` appended to ``damaged``, for a file
    numpy cannot read (cut short by a kill or a full disk, or edited): the resume then marks
    the epoch partial, as for a missing part, instead of a traceback from ``np.load``."""
    try:
        return load_npy(path)  # (a header declaring more than the file holds is a ValueError)
    except (OSError, ValueError, EOFError) as e:
        why = " ".join(str(e).split())[:80] or type(e).__name__
        damaged.append(f"{path.name} ({why})")
        return None


#: the marker of an epoch whose ``seen/`` record lacks samples (:class:`RecordSeen`), one line
PARTIAL = "epoch{epoch}.partial"


def read_seen(out_dir: str | Path, epoch: int) -> dict[int, np.ndarray]:
    """``{rank: indices}`` that :class:`RecordSeen` recorded for ``epoch`` in ``out_dir/seen``
    (their union: what the epoch trained on). Refused, with the marker's line, when the record
    is partial (a resume that could not rebuild the epoch's start)."""
    seen = Path(out_dir) / "seen"
    marker = seen / PARTIAL.format(epoch=epoch)
    if marker.exists():
        raise DP4TLError(f"{marker}: {marker.read_text().strip()}")
    files = _epoch_files(seen, epoch)
    if not files:
        raise DP4TLError(f"{seen} holds no record of epoch {epoch}")
    out, damaged = {}, []
    for q in sorted(files):
        part = _read_part(files[q], damaged)  # (the resume's rule: a one-line reason, no traceback)
        if part is None:
            raise DP4TLError(f"{seen}: the record of epoch {epoch} cannot be read "
                             f"({damaged[0]}); train the epoch again to record it")
        out[q] = part
    return out


def _epoch_files(seen: Path, epoch: int) -> dict[int, Path]:
    """``{rank: path}`` of the ``rank{r}_epoch{epoch}.npy`` files in ``seen``."""
    return {q: p for q, e, k, p in _seen_files(seen) if e == epoch and k is None}


#: a :class:`RecordSeen` file's name (``RecordSeen._path``): an epoch's, or a step part of it
_SEEN_NAME = re.compile(r"rank(\d+)_epoch(\d+)(?:_step(\d+))?\.npy")


def _seen_files(seen: Path) -> list[tuple[int, int, int | None, Path]]:
    """``(rank, epoch, step, path)`` of every :class:`RecordSeen` file in ``seen``; ``step``
    None for an epoch's file, else its step part's step. The one reader of those names."""
    out = []
    for p in seen.glob("rank*_epoch*.npy"):
        m = _SEEN_NAME.fullmatch(p.name)
        if m:
            out.append((int(m[1]), int(m[2]), None if m[3] is None else int(m[3]), p))
    return out
