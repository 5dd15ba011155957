"""Two gloo ranks on CPU (torchrun-style env vars): together they cover each masked sample
exactly once per epoch, ranks with one batch more/less finish thanks to Join, and each rank
draws its own augmentation randomness."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import torch
import torch.multiprocessing as mp

from ffcv_dp4tl.data import load_manifest, make_mask, save_mask
from ffcv_dp4tl.training.trainer import seed_epoch

from tiny_data import TEST_OVERRIDES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, mask: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
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

    train(r, data, mask=mask, out_dir=out, fmt="wds", device="cpu", progress=False,
          callbacks=[RecordSeen(out), FirstDraws()])  # seen/rank{r}_epoch{e}.npy per rank


def test_ddp_ranks_cover_mask_once(source_dir, tmp_path):
    split = load_manifest(source_dir).split("train")
    # 33 samples, 8 per rank per batch: rank 0 gets 17 (3 batches), rank 1 gets 16 (2 batches).
    mask = make_mask(np.arange(1, 67, 2)[:33], split, method="test")
    mpath = save_mask(tmp_path / "m.npy", mask)
    out = tmp_path / "ddp"
    mp.start_processes(_worker, args=(2, _free_port(), str(source_dir), str(mpath), str(out)),
                       nprocs=2, join=True, start_method="spawn")
    for epoch in (0, 1):
        parts = [np.load(out / "seen" / f"rank{r}_epoch{epoch}.npy") for r in (0, 1)]
        assert {len(parts[0]), len(parts[1])} == {17, 16}
        both = np.concatenate(parts)
        assert len(both) == len(mask) and np.array_equal(np.sort(both), mask.indices)
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
    assert first.stdout.splitlines() == [f"{out}: epoch 1/2, val top-1 " + first.stdout.split()[-1]]
    second = _torchrun(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(second.stdout.splitlines()) == 1 and f"{out}: epoch 2/2, val top-1" in second.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert json.loads((out / "timings.json").read_text())["world_size"] == 2
