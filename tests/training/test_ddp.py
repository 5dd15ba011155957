"""Two gloo ranks on CPU (torchrun-style env vars): every rank reads as many masked samples,
none twice, takes the same steps and holds the same weights at every step, and draws its own
augmentation randomness."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ffcv_dp4tl.data import load_manifest, make_mask, save_mask
from ffcv_dp4tl.training.trainer import seed_epoch

from tiny_data import TEST_OVERRIDES

from .conftest import StopAt


@contextlib.contextmanager
def _rendezvous_port(world: int = 2):
    """The port of a TCPStore this process hosts (bound to port 0 and listening until the block
    ends) for ranks spawned in the block: torchrun's own arrangement, its agent hosting the store
    that every rank joins as a client (``TORCHELASTIC_USE_AGENT_STORE=True``, see
    :func:`_rank_env`), so the product's env:// rendezvous runs unchanged. A port found free and
    closed before the ranks bound it (the old ``_free_port``) could be taken in between."""
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=300))
    try:
        yield store.port
    finally:
        del store


def _rank_env(rank: int, world: int, port: int) -> None:
    """The variables torchrun sets for ``rank``, the store hosted by :func:`_rendezvous_port`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True")


def _spawn_ranks(worker, *args, world: int = 2) -> None:
    """``worker(rank, world, port, *args)`` on ``world`` spawned ranks, joined, around a store
    this process hosts (:func:`_rendezvous_port`)."""
    with _rendezvous_port(world) as port:
        mp.start_processes(worker, args=(world, port, *args), nprocs=world, join=True,
                           start_method="spawn")


def _worker(rank: int, world: int, port: int, data: str, mask: str, out: str) -> None:
    _rank_env(rank, world, port)
    import torch

    torch.set_num_threads(1)
    from ffcv_dp4tl.training.callbacks import Callback, RecordSeen
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    r = load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + [
        "train.drop_last=false", "train.batch_size=16"])

    class FirstDraws(Callback):  # what torch's RNG gives at each epoch's first batch
        def on_batch(self, epoch, batch):
            path = os.path.join(out, f"draws_rank{rank}_epoch{epoch}.npy")
            if not os.path.exists(path):
                np.save(path, torch.rand(8, generator=torch.Generator().set_state(
                    torch.get_rng_state())).numpy())

    class Weights(Callback):  # the weights every step starts from, and the final ones
        def on_train_begin(self, model):
            self.model, self.seen = model, []

        def _record(self):
            self.seen.append(torch.cat([p.detach().flatten() for p in self.model.parameters()]))

        def on_batch(self, epoch, batch):
            self._record()

        def on_train_end(self):
            self._record()
            torch.save(torch.stack(self.seen), os.path.join(out, f"weights_rank{rank}.pt"))

    train(r, data, mask=mask, out_dir=out, fmt="wds", device="cpu", progress=False,
          callbacks=[RecordSeen(out), FirstDraws(), Weights()])  # seen/rank{r}_epoch{e}.npy per rank


def test_ddp_ranks_read_equal_disjoint_shares_and_stay_in_step(source_dir, tmp_path):
    split = load_manifest(source_dir).split("train")
    # 33 samples, 8 per rank per batch, drop_last off: a strided split would give rank 0 17
    # samples (3 batches) and rank 1 16 (2 batches); rank 0 would step alone at its third, at
    # another lr, and its momentum would part from rank 1's. Even shares: 16 each, 2 steps each,
    # the epoch's 33rd sample (a different one each shuffled epoch) left out that epoch.
    mask = make_mask(np.arange(1, 67, 2)[:33], split, method="test")
    mpath = save_mask(tmp_path / "m.npy", mask)
    out = tmp_path / "ddp"
    _spawn_ranks(_worker, str(source_dir), str(mpath), str(out))
    for epoch in (0, 1):
        parts = [np.load(out / "seen" / f"rank{r}_epoch{epoch}.npy") for r in (0, 1)]
        assert [len(parts[0]), len(parts[1])] == [16, 16]
        both = np.concatenate(parts)
        assert len(np.unique(both)) == 32 and np.isin(both, mask.indices).all()
    # the same weights on both ranks before every step (2 epochs x 2 steps) and at the end
    w0, w1 = (torch.load(out / f"weights_rank{r}.pt") for r in (0, 1))
    assert w0.shape[0] == 2 * 2 + 1 and torch.equal(w0, w1)
    assert not torch.equal(w0[0], w0[-1])  # (it trained)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # only rank 0 writes
    # Each rank its own random stream (MoCo's jitter, PGD's starts are drawn on the device from
    # it), a new one each epoch.
    draws = {(r, e): np.load(out / f"draws_rank{r}_epoch{e}.npy") for r in (0, 1) for e in (0, 1)}
    assert not np.array_equal(draws[0, 0], draws[1, 0])
    assert not np.array_equal(draws[0, 0], draws[0, 1])


def test_epoch_seeds_differ_by_rank_and_rank_0_keeps_the_single_process_stream():
    def first(*args):
        seed_epoch(*args)
        return torch.rand(4)

    assert torch.equal(first(3, 5), first(3, 5, 0))  # one GPU: the same numbers as before ranks
    assert not torch.equal(first(3, 5, 0), first(3, 5, 1))
    assert not torch.equal(first(3, 5, 1), first(3, 6, 1))


def test_a_single_process_on_cuda_n_makes_n_current(monkeypatch):
    """``--device cuda:N`` without torchrun: N becomes the current device, so CuPy's FM
    kernels, ffcv's streams and ``torch.cuda.synchronize()`` work on N (not on GPU 0). No GPU
    here: the C call under ``torch.cuda.set_device`` is recorded (and two GPUs are visible, so
    the device rule, ``resolve_device``, lets cuda:1 through)."""
    import torch

    from ffcv_dp4tl.training import distributed

    calls = []
    monkeypatch.setattr(torch._C, "_cuda_setDevice", calls.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup("cuda:1").device == torch.device("cuda", 1) and calls == [1]
    calls.clear()
    assert distributed.setup("cuda:0").device == torch.device("cuda", 0) and calls == [0]
    calls.clear()
    assert distributed.setup("cpu").device == torch.device("cpu") and calls == []


def test_a_local_rank_torchrun_never_sets_is_one_line_before_the_process_group(monkeypatch):
    """``LOCAL_RANK`` picks each rank's GPU: a value torchrun never sets names the variable
    (``int()`` raised a traceback), before any process group is joined; unset, it is the rank."""
    import pytest
    import torch.distributed as dist

    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.training import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "gpu1")
    with pytest.raises(DP4TLError, match="^LOCAL_RANK='gpu1' is not a whole number >= 0: torchrun sets it"):
        distributed.setup("cpu")
    assert not dist.is_initialized()
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, joined) == (1, 2, 1, ["gloo"])


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "ffcv_dp4tl", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_torchrun_launches_dp4tl_train_and_a_rerun_resumes(source_dir, tmp_path):
    """The README's multi-GPU command, as a user types it (CPU ranks, gloo): it trains on both
    ranks, stops, resumes when rerun, and reports once (rank 0). WebDataset: ffcv's pipeline
    compile would cost each rank ~20 s here."""
    out = tmp_path / "rn"
    args = ["train", "resnet18_tiny_cpu", "--data", str(source_dir), "--out", str(out),
            "--device", "cpu", "--no-progress", "--format", "wds", *[a for o in TEST_OVERRIDES for a in ("--set", o)]]
    first = _torchrun(*args, "--stop-after", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    # said once (rank 0): what it trains, each epoch (with --no-progress too), the result
    start, epoch, final = first.stdout.splitlines()
    assert start.startswith("training resnet18_tiny_cpu: ") and start.endswith(
        f" on cpu x 2 ranks -> {out}")
    assert epoch.startswith("epoch 1/2: loss ")
    assert final == f"{out}: epoch 1/2, val top-1 " + " ".join(first.stdout.split()[-2:])
    second = _torchrun(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    # said once (rank 0), with --no-progress too (a requeued batch job's log)
    resumed, epoch, final = second.stdout.splitlines()
    assert resumed == f"resuming: 1 of 2 epochs done ({out / 'checkpoint.pt'})"
    assert epoch.startswith("epoch 2/2: loss ")
    assert final.startswith(f"{out}: epoch 2/2, val top-1")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert json.loads((out / "timings.json").read_text())["world_size"] == 2


def _torchrun_env(monkeypatch, rank: int = 1, **extra: str) -> None:
    for k, v in {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", **extra}.items():
        monkeypatch.setenv(k, v)


def test_a_launch_torch_cannot_join_is_one_line_before_the_process_group(monkeypatch, capsys):
    """Variables set by hand or by a scheduler: MASTER_ADDR/PORT missing was torch's
    traceback; a rank waiting for the others says so (it waited silently for 30 minutes); more
    ranks than visible GPUs was "invalid device ordinal"; ``--device cuda:N`` was silently
    replaced by cuda:LOCAL_RANK."""
    import pytest
    import torch
    import torch.distributed as dist

    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.training import distributed

    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))
    _torchrun_env(monkeypatch)
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(DP4TLError, match="^WORLD_SIZE=2 but MASTER_ADDR is not set: launch with "
                                         "torchrun"):
        distributed.setup("cpu")
    _torchrun_env(monkeypatch)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    distributed.setup("cpu")
    assert joined == ["gloo"]
    assert capsys.readouterr().err == "rank 1 of 2: waiting for the other ranks at 127.0.0.1:29500\n"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun's own launch: no line
    distributed.setup("cpu")
    assert capsys.readouterr().err == ""

    monkeypatch.setattr(torch._C, "_cuda_setDevice", lambda i: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DP4TLError, match=r"^LOCAL_RANK=1 but this process sees 1 CUDA "
                                         r"device\(s\): launch at most 1 rank\(s\) per node"):
        distributed.setup("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DP4TLError, match=r"^--device cuda:0 under torchrun: every rank uses its "
                                         r"own GPU, cuda:LOCAL_RANK \(this rank: cuda:1\)"):
        distributed.setup("cuda:0")
    assert distributed.setup("cuda").device == torch.device("cuda", 1)


def test_a_check_failed_on_one_rank_stops_every_rank_in_one_line(monkeypatch):
    """The others used to run on into the DDP constructor and die there with a gloo traceback
    (rank 0's lock refused a second run; a checkpoint only one rank could read)."""
    import pytest

    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.training import distributed

    ctx = distributed.DistContext(rank=1, world_size=2)
    monkeypatch.setattr(distributed, "all_gather", lambda c, v: ["another process holds it", v])
    with pytest.raises(DP4TLError, match="^rank 0 stopped: another process holds it$"):
        distributed.fail_together(ctx, None)
    mine = DP4TLError("my own")
    with pytest.raises(DP4TLError, match="^my own$"):
        distributed.fail_together(ctx, mine)
    monkeypatch.setattr(distributed, "all_gather", lambda c, v: [None, None])
    distributed.fail_together(ctx, None)
    # an OSError reaches the other ranks in the CLI's words: a read-only --out gave
    # "[Errno 30] Read-only file system: 'ro/run'" there beside rank 0's "cannot write ..." (review)
    import errno

    sent = []
    monkeypatch.setattr(distributed, "all_gather", lambda c, v: sent.append(v) or [v, None])
    with pytest.raises(OSError):
        distributed.fail_together(distributed.DistContext(rank=0, world_size=2),
                                  OSError(errno.EROFS, "Read-only file system", "ro/run"))
    assert sent == ["cannot write ro/run (Read-only file system); choose a writable folder or fix "
                    "its permissions"]
    monkeypatch.setattr(distributed, "all_gather", lambda c, v: [sent[0], v])
    with pytest.raises(DP4TLError, match=r"^rank 0 stopped: cannot write ro/run \(Read-only"):
        distributed.fail_together(ctx, None)


def test_ranks_that_see_other_checkpoints_never_train(monkeypatch, tmp_path):
    """``--out`` on node-local disks: rank 1 saw no checkpoint and trained epochs 0-1 while
    rank 0 trained 2-3, gradients averaged together, and rank 0 reported success."""
    import pytest

    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.training import distributed, trainer

    ctx = distributed.DistContext(rank=0, world_size=2)
    monkeypatch.setattr(distributed, "all_gather", lambda c, v: [(2, 0), (0, 0)])
    with pytest.raises(DP4TLError, match=r"the ranks see different checkpoints in .* \(rank 0: "
                                         r"2 epochs done, rank 1: 0 epochs done\): --out must be one folder "
                                         r"every rank shares"):
        trainer._check_same_start(ctx, (2, 0), tmp_path)
    # the same epoch, another step of it (a stale view of a mid-epoch checkpoint)
    monkeypatch.setattr(distributed, "all_gather", lambda c, v: [(2, 40), (2, 20)])
    with pytest.raises(DP4TLError, match=r"\(rank 0: step 40 of epoch 3, rank 1: step 20 of epoch 3\)"):
        trainer._check_same_start(ctx, (2, 40), tmp_path)
    monkeypatch.setattr(distributed, "all_gather", lambda c, v: [(2, 40), (2, 40)])
    trainer._check_same_start(ctx, (2, 40), tmp_path)


def test_torchrun_into_a_folder_another_run_holds_is_one_line_on_every_rank(source_dir, tmp_path):
    """Rank 0's lock refusal used to reach rank 1 as a ~50-line gloo traceback from the DDP
    constructor, 20 s later; now every rank stops at the lock with one line."""
    from ffcv_dp4tl.locks import directory_lock
    from ffcv_dp4tl.outputs import TRAIN_LOCK

    out = tmp_path / "held"
    with directory_lock(out / TRAIN_LOCK, "the test's run"):
        run = _torchrun("train", "resnet18_tiny_cpu", "--data", str(source_dir), "--out", str(out),
                        "--device", "cpu", "--no-progress", "--format", "wds",
                        *[a for o in TEST_OVERRIDES for a in ("--set", o)])
    assert run.returncode != 0
    # (the ranks write at once: one line may follow the other without its newline)
    # (each rank's own line; torchrun's report below quotes them again after "traceback : ")
    errors = re.findall(r"(?<!traceback : )error: .*?use another folder", run.stderr)
    holder = f"(pid {os.getpid()}) on host {socket.gethostname()}"  # (the lock file's host:pid)
    assert sorted(errors) == sorted([
        f"error: another dp4tl process {holder} is using training run {out}; wait for it "
        "to finish or use another folder",
        f"error: rank 0 stopped: another dp4tl process {holder} is using training run "
        f"{out}; wait for it to finish or use another folder"]), run.stderr[-3000:]
    # no rank printed a traceback (torchrun's launcher prints its own ChildFailedError block)
    assert "[rank" not in run.stderr and "DistributedDataParallel" not in run.stderr
    # and that block says why each rank failed (the line each wrote to torchrun's error file)
    assert "To enable traceback" not in run.stderr, run.stderr[-3000:]
    assert sorted(re.findall(r"traceback : (error: .*?use another folder)", run.stderr)) == \
        sorted(errors), run.stderr[-3000:]


def test_every_input_check_and_the_lock_go_through_fail_together(source_dir, tmp_path,
                                                                  monkeypatch):
    """The data, mask and checkpoint checks and the lock raise only after every rank has been
    told: an OSError too (a labels file one node cannot read, an unwritable --out), which used
    to leave the other ranks waiting in the next collective."""
    import pytest

    from ffcv_dp4tl.training import distributed, trainer

    told = []

    def record(ctx, error):
        told.append(type(error).__name__ if error is not None else None)
        if error is not None:
            raise error

    monkeypatch.setattr(distributed, "fail_together", record)

    def unreadable(*a, **k):
        raise PermissionError(13, "Permission denied", "train.labels.npy")

    monkeypatch.setattr(trainer, "_read_inputs", unreadable)
    with pytest.raises(PermissionError):
        trainer.train("resnet18_tiny_cpu", source_dir, out_dir=tmp_path / "r", device="cpu",
                      fmt="wds", progress=False, overrides=TEST_OVERRIDES)
    assert told == [None, "PermissionError"]  # the lock (fine), then the inputs


MID_EPOCH_OVERRIDES = ["train.drop_last=false", "train.batch_size=16", "train.checkpoint_every=1",
                       "train.white_balance=0.2"]


def _mid_epoch_worker(rank: int, world: int, port: int, data: str, mask: str, out: str,
                      stop_step: int) -> None:
    """2 epochs of 4 steps (global batch 16, 8 per rank), a checkpoint after every step; with
    ``stop_step`` > 0 every rank is stopped (Ctrl-C) as epoch 1's step ``stop_step`` begins."""
    _rank_env(rank, world, port)
    import torch

    torch.set_num_threads(1)
    from ffcv_dp4tl.training.callbacks import RecordSeen
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    r = load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + MID_EPOCH_OVERRIDES)
    try:
        train(r, data, mask=mask, out_dir=out, fmt="wds", device="cpu", progress=False,
              callbacks=[RecordSeen(out)] + ([StopAt(1, stop_step)] if stop_step else []))
    except KeyboardInterrupt:
        pass


def test_ddp_ranks_resume_mid_epoch_each_with_its_own_rng_and_on_fewer_ranks_at_the_same_sample(
        source_dir, tmp_path):
    """Killed 3 steps into epoch 1, two ranks resume from the step checkpoint to the unbroken
    run's weights: the batches they had not trained, the lr from that step, and each rank its
    own RNG stream (white balance draws from it). One rank resuming the same checkpoint reads
    the rest of the same global order: what was skipped is counted in global batches."""
    import shutil

    import pytest

    from ffcv_dp4tl.training.callbacks import RecordSeen
    from ffcv_dp4tl.training.checkpoint import Checkpoint
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    split = load_manifest(source_dir).split("train")
    mask = make_mask(np.arange(0, 65), split, method="test")  # 65: 64 read per epoch on 2 ranks
    mpath = str(save_mask(tmp_path / "m.npy", mask))

    def run(out, stop_step):
        _spawn_ranks(_mid_epoch_worker, str(source_dir), mpath, str(out), stop_step)

    run(tmp_path / "a", 0)
    run(tmp_path / "b", 3)
    mid = Checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert (mid.epoch, mid.step, len(mid.rank_rng)) == (1, 3, 2)
    assert mid.progress["sums"][2] == 3 * 16  # samples of 3 global steps, both ranks
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    run(tmp_path / "b", 0)
    a, b = (Checkpoint.load(tmp_path / d / "checkpoint.pt") for d in ("a", "b"))
    assert b.epoch == 2 and all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    row_a, row_b = (json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[-1])
                    for d in ("a", "b"))
    assert (row_a["loss"], row_a["samples"]) == (row_b["loss"], row_b["samples"]) and row_a["samples"] == 64

    # epoch 1's global order, from the unbroken run's two ranks (rank r reads positions r, r+2, ...)
    parts = [np.load(tmp_path / "a" / "seen" / f"rank{r}_epoch1.npy") for r in (0, 1)]
    order = np.stack(parts, axis=1).reshape(-1)
    r1 = load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + MID_EPOCH_OVERRIDES)
    seen = RecordSeen()
    with pytest.warns(UserWarning, match="written by 2 rank.*this run has 1"):
        train(r1, str(source_dir), mask=mpath, out_dir=tmp_path / "c", fmt="wds", device="cpu",
              progress=False, callbacks=[seen])
    # positions 48.. of the same order; one rank also reads the 65th sample that 2 ranks leave out
    np.testing.assert_array_equal(seen.seen[1][:16], order[48:64])
    assert len(seen.seen[1]) == 17 and seen.seen[1][16] not in order


def _planned(mask, epoch: int, world: int) -> list[np.ndarray]:
    """Each rank's samples of ``epoch`` on ``world`` ranks (the loaders' EpochPlan, trained with
    the mid-epoch recipe's data seed), in its step order."""
    from ffcv_dp4tl.data import EpochPlan
    from ffcv_dp4tl.training.recipe import load_recipe

    seed = load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + MID_EPOCH_OVERRIDES).data.seed
    return [EpochPlan(np.asarray(mask.indices), shuffle=True, seed=seed, rank=r, world_size=world,
                      even=True).order(epoch) for r in range(world)]


def _seen_files(out, epoch: int) -> dict[int, np.ndarray]:
    """Every rank's ``seen/rank{r}_epoch{epoch}.npy`` (RecordSeen), by rank."""
    files = sorted((out / "seen").glob(f"rank*_epoch{epoch}.npy"))
    return {int(re.match(r"rank(\d+)_", p.name).group(1)): np.load(p) for p in files}


def _train_one_rank(data, mpath, out, *callbacks):
    from ffcv_dp4tl.training.callbacks import RecordSeen
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    train(load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + MID_EPOCH_OVERRIDES), str(data),
          mask=mpath, out_dir=out, fmt="wds", device="cpu", progress=False,
          callbacks=[RecordSeen(out), *callbacks])


def test_seen_record_of_an_epoch_resumed_on_fewer_ranks_covers_the_whole_epoch(source_dir,
                                                                               tmp_path):
    """Killed 3 steps into epoch 1 on two ranks, resumed on one: the samples of those 3 steps
    were in the two ranks' parts, and the one rank's file of the epoch holds them too: exactly
    what an unbroken one-rank epoch reads (all 65 samples, in its order). No part is left."""
    import pytest

    split = load_manifest(source_dir).split("train")
    mask = make_mask(np.arange(0, 65), split, method="test")  # 65: 64 read per epoch on 2 ranks
    mpath = str(save_mask(tmp_path / "m.npy", mask))
    out = tmp_path / "run"
    _spawn_ranks(_mid_epoch_worker, str(source_dir), mpath, str(out), 3)
    with pytest.warns(UserWarning, match="written by 2 rank.*this run has 1"):
        _train_one_rank(source_dir, mpath, out)
    seen = _seen_files(out, 1)
    (plan,) = _planned(mask, 1, 1)
    assert list(seen) == [0] and len(plan) == 65
    np.testing.assert_array_equal(seen[0], plan)  # (the old record: the 17 after the resume)
    both = _seen_files(out, 0)  # epoch 0, on two ranks before the kill
    for r in (0, 1):
        np.testing.assert_array_equal(both[r], _planned(mask, 0, 2)[r])
    assert not list((out / "seen").glob("*_step*")) and not list((out / "seen").glob("*.partial"))


def test_seen_record_of_an_epoch_resumed_on_more_ranks_covers_the_whole_epoch(source_dir,
                                                                              tmp_path):
    """Killed 3 steps into epoch 1 on one rank, resumed on two: each rank's file of the epoch is
    what it reads in an unbroken two-rank epoch (its share of the first 3 steps, rebuilt from
    the one rank's part, then its own batches), so their union is the epoch's 64 planned
    samples, the 65th left out as two ranks leave it out."""
    import pytest

    split = load_manifest(source_dir).split("train")
    mask = make_mask(np.arange(0, 65), split, method="test")
    mpath = str(save_mask(tmp_path / "m.npy", mask))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _train_one_rank(source_dir, mpath, out, StopAt(1, 3))
    _spawn_ranks(_mid_epoch_worker, str(source_dir), mpath, str(out), 0)
    seen, plan = _seen_files(out, 1), _planned(mask, 1, 2)
    assert list(seen) == [0, 1]
    for r in (0, 1):  # (the old record: each rank's 8 samples after the resume)
        np.testing.assert_array_equal(seen[r], plan[r])
    union = np.concatenate([seen[0], seen[1]])
    assert len(union) == len(np.unique(union)) == 64
    assert not list((out / "seen").glob("*_step*")) and not list((out / "seen").glob("*.partial"))
