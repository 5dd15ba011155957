"""MoCo v2 (momentum contrast with an MLP head) as a training objective for :func:`train`.

What it keeps, and why it fits the rest of the code:

* The **backbone** is an ordinary registry model built with ``num_classes = ssl.dim``; its ``fc``
  is the *last* layer of MoCo v2's 2-layer projection MLP, and the hidden layer (feature width →
  feature width, ReLU) lives beside it. The checkpoint's ``model`` entry is therefore a plain
  backbone state_dict that :func:`~ffcv_dp4tl.training.finetune.load_pretrained` rebuilds like
  any supervised one; LP/FF and FM scoring use the pooled features under the projection, as MoCo's
  linear-probe protocol does, and replace ``fc``.
* The **key encoder** (backbone + hidden layer) is an exponential moving average of the query
  encoder, never trained by gradients; the **queue** holds the last ``queue_size`` keys as
  negatives. Both are saved in the checkpoint (``objective``), so a resumed run continues exactly.
* **Shuffling BN.** BN statistics shared by a query and its own key leak the answer ("cheating"
  in the MoCo paper). Under DDP keys are gathered, shuffled across ranks and split back, as in
  the reference implementation (per-GPU BN does the rest). In one process the batch is split
  into ``ssl.bn_splits`` sub-batches with their own BN statistics, and keys are shuffled between
  sub-batches before the key encoder sees them.
* The loss is InfoNCE over (1 positive + queue) logits at temperature ``ssl.temperature``; the
  "top-1" this objective reports is instance discrimination accuracy (positive logit largest).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data.transforms import AugSpec
from .distributed import DistContext
from .models import backbone as as_backbone
from .recipe import SSLCfg
from .ssl_augment import MoCoAugment


class ProjectionNet(nn.Module):
    """backbone features → Linear(d, d) → ReLU → the backbone's classifier (d → dim) → L2-normalised."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = as_backbone(backbone)
        d = self.backbone.num_features
        self.hidden = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        z = b.forward_head(F.relu(self.hidden(b.forward_features(x))))
        return F.normalize(z.float(), dim=1)


def _gather(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """All ranks' rows, rank order (no gradient: only keys are gathered)."""
    if not ctx.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _split_forward(net: nn.Module, x: torch.Tensor, splits: int) -> torch.Tensor:
    if splits <= 1 or x.shape[0] % splits:
        return net(x)
    return torch.cat([net(c) for c in x.chunk(splits)])


class MoCoObjective:
    """Per-batch loss of MoCo v2, an objective of :mod:`.engine` (same call signature as
    :class:`~.engine.CrossEntropyObjective`). ``query`` is the plain :class:`ProjectionNet` (the
    key encoder follows it); the step runs the query through ``train_model``, its DDP/compiled
    wrapper."""

    name = "moco_v2"
    supervised = False   # no classifier: no labels read, no validation
    drop_last = True     # full batches: bn_splits sub-batches, equal key counts per rank

    def __init__(self, query: ProjectionNet, cfg: SSLCfg, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx
        self.query = query
        self.key = copy.deepcopy(query)
        for p in self.key.parameters():
            p.requires_grad_(False)
        self.queue = F.normalize(torch.randn(cfg.queue_size, cfg.dim, device=ctx.device), dim=1)
        self.ptr = 0
        self.augment = MoCoAugment(cfg.jitter, cfg.p_jitter, cfg.p_gray, cfg.p_blur,
                                   cfg.blur_sigma).to(ctx.device)
        # per-GPU BN under DDP; sub-batch BN in one process (see module doc)
        self.splits = 1 if ctx.enabled else cfg.bn_splits

    # -- loader settings the objective needs ----------------------------------------------
    loader_views = 2

    @property
    def crop_scale(self) -> tuple[float, float]:
        return float(self.cfg.crop_scale[0]), float(self.cfg.crop_scale[1])

    @property
    def train_aug(self) -> AugSpec:
        """What :func:`~ffcv_dp4tl.data.make_loader` must deliver: two views, MoCo's crop."""
        return AugSpec.for_train(views=self.loader_views, crop_scale=self.crop_scale)

    # -- one step -----------------------------------------------------------------------------
    @torch.no_grad()
    def _momentum_update(self) -> None:
        # Multi-tensor (foreach) ops: a few kernel launches per step instead of two per tensor;
        # same arithmetic (k·m, then + (1 − m)·q) as the per-tensor loop. No host sync.
        m = self.cfg.momentum
        pk, pq = list(self.key.parameters()), [p.detach() for p in self.query.parameters()]
        torch._foreach_mul_(pk, m)
        torch._foreach_add_(pk, pq, alpha=1 - m)
        # BN running stats follow the query
        torch._foreach_copy_(list(self.key.buffers()), list(self.query.buffers()))

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's keys, every rank's keys in rank order — what the queue takes)."""
        ctx = self.ctx
        if ctx.enabled:  # the reference implementation's batch shuffle across GPUs
            allx = _gather(x, ctx)
            perm = torch.randperm(allx.shape[0], device=x.device)
            dist.broadcast(perm, src=0)
            k = self.key(allx[perm.view(ctx.world_size, -1)[ctx.rank]])
            all_k = _gather(k, ctx)[torch.argsort(perm)]  # unshuffled: row i = sample i
            return all_k.view(ctx.world_size, -1, all_k.shape[1])[ctx.rank], all_k
        perm = torch.randperm(x.shape[0], device=x.device)
        k = _split_forward(self.key, x[perm], self.splits)[torch.argsort(perm)]
        return k, k

    def __call__(self, train_model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss, number of samples whose positive logit was the largest, batch size)."""
        if batch.images2 is None:
            raise RuntimeError("MoCo needs a two-view loader (make_loader(aug=AugSpec.for_train(views=2)))")
        im_q, im_k = self.augment(batch.images), self.augment(batch.images2)
        q = _split_forward(train_model, im_q, self.splits)
        self._momentum_update()
        k, all_k = self._keys(im_k)
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ self.queue.clone().T  # a copy: the queue is updated before backward
        logits = torch.cat([pos, neg], 1) / self.cfg.temperature
        labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, labels)
        self._enqueue(all_k)
        correct = (logits.detach().argmax(1) == 0).sum()
        return loss, correct, len(q)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        n, size = keys.shape[0], self.queue.shape[0]
        if n >= size:
            self.queue.copy_(keys[-size:])
            self.ptr = 0
            return
        end = self.ptr + n
        if end <= size:
            self.queue[self.ptr:end] = keys
        else:  # wrap around
            first = size - self.ptr
            self.queue[self.ptr:] = keys[:first]
            self.queue[:n - first] = keys[first:]
        self.ptr = end % size

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hidden": self.query.hidden.state_dict(), "key": self.key.state_dict(),
                "queue": self.queue.cpu(), "ptr": self.ptr}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.query.hidden.load_state_dict(st["hidden"])
        self.key.load_state_dict(st["key"])
        self.queue.copy_(st["queue"].to(self.queue.device))
        self.ptr = int(st["ptr"])
