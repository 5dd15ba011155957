"""torchrun integration: process group setup, rank-0-only file writes, metric reduction.

Launching ``torchrun --nproc_per_node=K -m ffcv_dp4tl train ...`` (or ``dp4tl train`` under
torchrun) sets RANK/WORLD_SIZE/LOCAL_RANK; :func:`setup` then initialises the process group
(NCCL on CUDA, gloo on CPU). The data loaders read the rank from ``torch.distributed`` and give
each rank a disjoint stride of the mask (train loaders: as many samples on every rank, so every
rank takes the same steps; :func:`check_same_steps` refuses an epoch where they would not), so
nothing here touches sampling.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..contracts import check_device
from ..data.resources import env_int
from ..errors import DP4TLError, PeerStopped


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device | None, what: str = "device") -> torch.device:
    """The device to run on: ``auto`` (or None) → ``cuda`` when available, else ``cpu``; a bad
    value or CUDA without a visible CUDA device is a one-line error naming ``what``
    (``contracts.check_device``, the rule of the CLI's ``--device`` too)."""
    return torch.device(check_device("auto" if device is None else device, what))


#: the commands that run one process per GPU under torchrun (the others refuse it: see the CLI)
DDP_COMMANDS = ("train",)


_TORCHRUN_SETS_IT = "torchrun sets it; unset it to run one process"


def launch_env() -> tuple[int, int]:
    """(rank, world size) as torchrun set them in the environment; (0, 1) without torchrun.
    Values torchrun would never set are one line naming the variable (a rank missing under
    WORLD_SIZE > 1 would make every process rank 0 and hang the process group)."""
    world = env_int("WORLD_SIZE", 1, 1, _TORCHRUN_SETS_IT)
    if world <= 1:
        return 0, world
    if "RANK" not in os.environ:
        raise DP4TLError(f"WORLD_SIZE={world} but RANK is not set: launch with torchrun (it sets "
                         "both), or unset WORLD_SIZE for one process")
    rank = env_int("RANK", 0, 0, _TORCHRUN_SETS_IT)
    if rank >= world:
        raise DP4TLError(f"RANK={rank} is not below WORLD_SIZE={world}: launch with torchrun")
    return rank, world


def setup(device: str | torch.device | None = "auto") -> DistContext:
    """Initialise DDP when launched by torchrun (WORLD_SIZE > 1), else a single-process context."""
    dev = resolve_device(device)
    rank, world = launch_env()
    if world <= 1:
        if dev.type == "cuda" and dev.index is not None:
            # `--device cuda:N`: make N current, so what uses the current device (CuPy's FM
            # kernels, ffcv's streams, torch.cuda.synchronize()) works on N, not on GPU 0
            torch.cuda.set_device(dev)
        return DistContext(device=dev)
    local_rank = env_int("LOCAL_RANK", rank, 0, _TORCHRUN_SETS_IT)
    if dev.type == "cuda":
        if dev.index is not None and dev.index != local_rank:
            raise DP4TLError(f"--device {dev} under torchrun: every rank uses its own GPU, "
                             f"cuda:LOCAL_RANK (this rank: cuda:{local_rank}); pass --device "
                             "cuda or auto, and choose GPUs with CUDA_VISIBLE_DEVICES")
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise DP4TLError(f"LOCAL_RANK={local_rank} but this process sees {visible} CUDA "
                             f"device(s): launch at most {visible} rank(s) per node "
                             "(--nproc_per_node), each seeing every GPU of the node (a scheduler "
                             "that binds one GPU per task hides the others: start one torchrun "
                             "per node instead)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    here = False
    if not dist.is_initialized():
        _check_rendezvous(rank, world)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        here = True
    return DistContext(rank, world, local_rank, dev, here)


def _check_rendezvous(rank: int, world: int) -> None:
    """torch's env:// rendezvous needs MASTER_ADDR and MASTER_PORT (a traceback without them);
    a process not started by torchrun (variables set by hand or by a scheduler) says what it
    waits for, since it waits silently for up to 30 minutes for ranks that may never come."""
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise DP4TLError(f"WORLD_SIZE={world} but {name} is not set: launch with torchrun "
                             "(it sets it), or unset WORLD_SIZE for one process")
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        print(f"rank {rank} of {world}: waiting for the other ranks at "
              f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}", file=sys.stderr,
              flush=True)


def single_process_context(dev: str | torch.device) -> DistContext:
    """The context of a one-process run on ``dev`` (finetuning, evaluations): :func:`setup`'s
    single-process rule, so ``cuda:N`` becomes the current CUDA device and what uses the current
    device (ffcv's streams, the loaders' epoch buffers) works on N, not on GPU 0. Under a
    torchrun environment only the context (these never join a process group)."""
    dev = torch.device(dev)
    return DistContext(device=dev) if launch_env()[1] > 1 else setup(dev)


def teardown(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks (no-op single-process). gloo reduces on CPU, NCCL on GPU."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def check_same_steps(steps: int, ctx: DistContext) -> None:
    """Refuse, on every rank at once, an epoch in which the ranks would take different numbers
    of steps. DDP needs them equal: a rank out of batches leaves the others waiting in their
    gradient all-reduce (or, under ``Join``, lets them step without it, so momentum and the lr
    schedule part between ranks). Train loaders make them equal (``make_loader``'s ``even``);
    this one small all-reduce per epoch turns a loader that does not into an error, not a hang."""
    if not ctx.enabled:
        return
    t = torch.tensor([steps, -steps], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    most, fewest = int(t[0]), -int(t[1])
    if most != fewest:
        raise DP4TLError(f"the ranks' train loaders hold {fewest} to {most} batches this epoch: every "
                         "DDP rank must take the same steps; make the loader with even=True "
                         "(make_loader's default for a train AugSpec)")


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_gather(ctx: DistContext, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` single-process."""
    if not ctx.enabled:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def fail_together(ctx: DistContext, error: BaseException | None) -> None:
    """Raise on every rank when any rank failed a check (``error``: this rank's, or None).

    A check that fails on one rank only (rank 0's run-folder lock, a checkpoint one rank cannot
    read) used to leave the other ranks running into the DDP constructor, where they died with
    a gloo/NCCL "connection closed by peer" traceback, or waited there. Every rank calls this at
    the same point; the failing rank raises its own error, the others a one-line DP4TLError
    naming it."""
    from ..fsutil import environment_error_line

    # an OSError in the CLI's words on every rank (a read-only --out: rank 0 said "cannot write
    # … choose a writable folder", the others "[Errno 30] Read-only file system"; review)
    said = None if error is None else environment_error_line(error) or str(error)
    errors = all_gather(ctx, said)
    if error is not None:
        raise error
    for rank, message in enumerate(errors):
        if message is not None:
            raise PeerStopped(f"rank {rank} stopped: {message}")
