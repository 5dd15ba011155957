"""Two gloo ranks on CPU (torchrun-style env vars): together they cover each masked sample
exactly once per epoch, and ranks with one batch more/less finish thanks to Join."""
from __future__ import annotations

import os
import socket

import numpy as np
import torch.multiprocessing as mp

from ffcv_dp4tl.data import load_manifest, make_mask, save_mask

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
    from ffcv_dp4tl.training.callbacks import RecordSeen
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    r = load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + [
        "train.drop_last=false", "train.batch_size=16"])
    train(r, data, mask=mask, out_dir=out, fmt="wds", device="cpu", progress=False,
          callbacks=[RecordSeen(out)])  # each rank writes seen/rank{r}_epoch{e}.npy


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


def test_a_single_process_on_cuda_n_makes_n_current(monkeypatch):
    """``--device cuda:N`` without torchrun: N becomes the current device, so CuPy's FM
    kernels, ffcv's streams and ``torch.cuda.synchronize()`` work on N (not on GPU 0). No GPU
    here: the C call under ``torch.cuda.set_device`` is recorded."""
    import torch

    from ffcv_dp4tl.training import distributed

    calls = []
    monkeypatch.setattr(torch._C, "_cuda_setDevice", calls.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup("cuda:1").device == torch.device("cuda", 1) and calls == [1]
    calls.clear()
    assert distributed.setup("cuda:0").device == torch.device("cuda", 0) and calls == [0]
    calls.clear()
    assert distributed.setup("cpu").device == torch.device("cpu") and calls == []
