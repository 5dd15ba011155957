"""MoCo v2 self-supervised pretraining: the two-view loader, batched augmentations, the queue
and momentum encoder, and the run a user makes — train on a masked source, resume, then LP on
the target and FM-score with the self-supervised surrogate."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ffcv_dp4tl.data import AugSpec, load_manifest, make_loader, make_mask
from ffcv_dp4tl.errors import DataError, DP4TLError
from ffcv_dp4tl.training.checkpoint import Checkpoint
from ffcv_dp4tl.training.distributed import DistContext
from ffcv_dp4tl.training.finetune import finetune, load_pretrained
from ffcv_dp4tl.training.models import create_model
from ffcv_dp4tl.training.moco import MoCoObjective, ProjectionNet
from ffcv_dp4tl.training.recipe import load_recipe
from ffcv_dp4tl.training.ssl_augment import MoCoAugment
from ffcv_dp4tl.training.trainer import train

from tiny_data import TEST_OVERRIDES

from .conftest import StopAt

#: the tiny MoCo recipe shrunk like TEST_OVERRIDES shrinks the supervised one
MOCO_OVERRIDES = [o for o in TEST_OVERRIDES if not o.startswith("eval.every")] + [
    "ssl.queue_size=40", "ssl.dim=16", "ssl.bn_splits=2"]


def _whole_share(top1: float, n: int) -> bool:
    """``top1`` is (hits / n) for a whole number of hits in 0..n."""
    hits = top1 * n
    return n > 0 and 0 <= round(hits) <= n and abs(hits - round(hits)) < 1e-6


def moco_recipe(*extra: str):
    return load_recipe("moco_v2_tiny_cpu", MOCO_OVERRIDES + list(extra))


# ----------------------------------------------------------------------------- loader views
def test_two_view_loader_gives_two_different_crops_of_each_sample(source_dir):
    loader = make_loader(source_dir, "train", fmt="wds",
                         aug=AugSpec.for_train(views=2, crop_scale=(0.2, 1.0)), batch_size=8,
                         resolution=16, num_workers=0)
    batch = next(iter(loader))
    assert batch.images2 is not None and batch.images2.shape == batch.images.shape
    # independent crops: the two views of a sample differ (the same crop twice would not)
    diff = (batch.images - batch.images2).abs().flatten(1).amax(1)
    assert (diff > 1e-3).float().mean() >= 0.75
    single = next(iter(make_loader(source_dir, "train", fmt="wds", aug=AugSpec.for_train(),
                                   batch_size=8,
                                   resolution=16, num_workers=0)))
    assert single.images2 is None


def test_views_need_a_train_loader(source_dir):
    with pytest.raises(DataError, match="views"):
        make_loader(source_dir, "val", fmt="wds", aug=AugSpec(views=2), batch_size=8, resolution=16)
    with pytest.raises(DataError, match="crop_scale"):
        make_loader(source_dir, "train", fmt="wds", aug=AugSpec.for_train(crop_scale=(0.5, 0.2)),
                    batch_size=8, resolution=16)


# ----------------------------------------------------------------------------- augmentations
def test_augment_keeps_shape_and_is_identity_when_switched_off():
    off = MoCoAugment(p_jitter=0.0, p_gray=0.0, p_blur=0.0)
    x = (torch.rand(6, 3, 16, 16) - off.mean) / off.std  # a normalised batch of real images
    torch.testing.assert_close(off(x), x, atol=1e-5, rtol=1e-5)
    x = MoCoAugment()(torch.zeros(6, 3, 16, 16))
    assert x.shape == (6, 3, 16, 16) and torch.isfinite(x).all()


def test_augment_grayscale_and_seeded():
    aug = MoCoAugment(p_jitter=0.0, p_gray=1.0, p_blur=0.0)
    y = aug(torch.randn(4, 3, 8, 8) * 0.3) * aug.std + aug.mean  # back to [0, 1]
    torch.testing.assert_close(y[:, 0], y[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, 1], y[:, 2], atol=1e-5, rtol=0)
    full, x = MoCoAugment(), torch.randn(4, 3, 16, 16) * 0.3
    torch.manual_seed(3)
    a = full(x)
    torch.manual_seed(3)
    torch.testing.assert_close(a, full(x))


# ----------------------------------------------------------------------------- queue + encoder
def _objective(**cfg):
    r = moco_recipe(*[f"ssl.{k}={v}" for k, v in cfg.items()])
    q = ProjectionNet(create_model("resnet18", r.ssl.dim, small_input=True, width=8))
    return MoCoObjective(q, r.ssl, DistContext()), q


def test_queue_is_a_ring_buffer():
    obj, _ = _objective(queue_size=10, dim=16)
    keys = torch.arange(7 * 16, dtype=torch.float32).view(7, 16)
    obj._enqueue(keys)
    obj._enqueue(keys + 1000)  # wraps: 3 at the end, 4 at the front
    assert obj.ptr == 4
    torch.testing.assert_close(obj.queue[:4], (keys + 1000)[3:])  # overwrote the oldest
    torch.testing.assert_close(obj.queue[4:7], keys[4:])
    torch.testing.assert_close(obj.queue[7:], (keys + 1000)[:3])


def test_key_encoder_is_a_moving_average_of_the_query():
    obj, q = _objective(momentum=0.5)
    k0 = [p.clone() for p in obj.key.parameters()]
    with torch.no_grad():
        for p in q.parameters():
            p.add_(1.0)
    obj._momentum_update()
    for pk, pk0, pq in zip(obj.key.parameters(), k0, q.parameters()):
        torch.testing.assert_close(pk, 0.5 * pk0 + 0.5 * pq)
        assert not pk.requires_grad


def test_each_query_s_positive_is_the_key_of_its_own_sample():
    """InfoNCE's positive for sample i must be the key of sample i's other view: the keys are
    computed on a shuffled batch (shuffle-BN) and must be put back in order. With one BN group
    batch statistics do not depend on the order, so the keys must equal the key encoder on the
    unshuffled batch row for row, and the loss must equal InfoNCE computed here from scratch
    (positive q_i·k_i, negatives against the queue as it was before the step)."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    torch.manual_seed(0)
    obj, q = _objective(bn_splits=1, p_jitter=0.0, p_gray=0.0, p_blur=0.0)
    aug = obj.augment  # switched off: identity on normalised images of real pixels
    im_q, im_k = [(torch.rand(8, 3, 16, 16) - aug.mean) / aug.std for _ in range(2)]
    keys, _ = obj._keys(im_k)
    with torch.no_grad():
        torch.testing.assert_close(keys, obj.key(im_k), atol=1e-5, rtol=1e-5)
    queue = obj.queue.clone()
    loss, correct, n = obj(q, SimpleNamespace(images=im_q, images2=im_k))
    with torch.no_grad():
        qv = q(im_q)
        kv = obj.key(im_k)  # after the step's momentum update, as the step used it
        logits = torch.cat([(qv * kv).sum(1, keepdim=True), qv @ queue.T], 1) / obj.cfg.temperature
        want = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(loss.detach(), want, atol=1e-5, rtol=1e-5)
    assert int(correct) == int((logits.argmax(1) == 0).sum()) and n == 8


def test_ssl_recipe_errors():
    with pytest.raises(DP4TLError, match="ssl.method"):
        load_recipe("moco_v2_tiny_cpu", ["ssl.method=simclr"])
    with pytest.raises(DP4TLError, match="bn_splits"):
        load_recipe("moco_v2_tiny_cpu", ["ssl.bn_splits=3"])  # batch 128
    with pytest.raises(DP4TLError, match="unknown key ssl.queue"):
        load_recipe("moco_v2_tiny_cpu", ["ssl.queue=5"])


# ----------------------------------------------------------------------------- the user's run
@pytest.fixture(scope="module")
def moco_run(source_dir, tmp_path_factory):
    """MoCo on a mask of the source: 2 epochs (of 3 steps) straight, and resumed twice: after
    epoch 0, then from a checkpoint 2 steps into epoch 1 (train.checkpoint_every=1; the run is
    stopped as its third step begins)."""
    split = load_manifest(source_dir).split("train")
    mask = make_mask(np.arange(0, split.num_samples, 2), split, method="test")
    tmp = tmp_path_factory.mktemp("moco")
    full = train(moco_recipe(), source_dir, mask=mask, out_dir=tmp / "full", fmt="wds",
                 device="cpu", progress=False)
    kw = dict(mask=mask, out_dir=tmp / "resumed", fmt="wds", device="cpu", progress=False)
    train(moco_recipe(), source_dir, stop_after=1, **kw)
    with pytest.raises(KeyboardInterrupt):
        train(moco_recipe("train.checkpoint_every=1"), source_dir,
              callbacks=[StopAt(1, 2)], **kw)
    mid = Checkpoint.load(tmp / "resumed" / "checkpoint.pt")
    assert (mid.epoch, mid.step) == (1, 2)  # (the queue and key encoder of that step)
    train(moco_recipe("train.checkpoint_every=1"), source_dir, **kw)
    return tmp, full, mask


def test_moco_trains_on_the_mask_without_labels_or_val(moco_run):
    tmp, row, mask = moco_run
    assert row["objective"] == "moco_v2" and row["top1_val"] is None
    # instance-discrimination top-1: a count of the trained samples (not a mean of batch means)
    assert np.isfinite(row["loss"]) and _whole_share(row["top1_train"], row["samples"])
    # epoch cost follows the mask: batches of 16 over half the split, last partial one dropped
    assert row["samples"] == (len(mask) // 16) * 16
    ckpt = Checkpoint.load(tmp / "full" / "checkpoint.pt")
    assert ckpt.self_supervised == "moco_v2" and ckpt.num_classes == 16
    assert ckpt.objective["queue"].shape == (40, 16)


def test_moco_resume_is_bit_identical(moco_run):
    tmp, _, _ = moco_run
    a = Checkpoint.load(tmp / "full" / "checkpoint.pt")
    b = Checkpoint.load(tmp / "resumed" / "checkpoint.pt")
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    assert torch.equal(a.objective["queue"], b.objective["queue"])
    for key in a.objective["key"]:
        assert torch.equal(a.objective["key"][key], b.objective["key"][key]), key


def test_lp_and_fm_scoring_read_the_moco_checkpoint(moco_run, source_dir, target_dir, tmp_path):
    from ffcv_dp4tl.pipeline.score import score

    tmp, _, _ = moco_run
    ckpt = tmp / "full" / "checkpoint.pt"
    model, _ = load_pretrained(ckpt, torch.device("cpu"))  # a plain backbone
    res = finetune("lp_tiny_cpu", ckpt, target_dir, tmp_path / "lp", fmt="wds", device="cpu",
                   progress=False, overrides=["train.epochs=3", "finetune.resolution=16",
                                              "eval.resolution=16", "data.num_workers=0"])
    assert _whole_share(res["test_top1"], res["test_samples"]) and res["source_arch"] == "resnet18"
    meta = score("fm", source_dir=source_dir, target_dir=target_dir, out_dir=tmp_path / "fm",
                 checkpoint=ckpt, fmt="wds", device="cpu", k=4, num_workers=0, progress=False)
    assert meta["unit"] == "cluster"
    with pytest.raises(DP4TLError, match="self-supervised"):
        score("lm", source_dir=source_dir, target_dir=target_dir, out_dir=tmp_path / "lm",
              checkpoint=ckpt, fmt="wds", device="cpu", num_workers=0, progress=False)


# ----------------------------------------------------------------------------- torchrun (gloo)
def _ddp_worker(rank: int, world: int, port: int, data: str, mask: str, out: str) -> None:
    from .test_ddp import _rank_env

    _rank_env(rank, world, port)
    torch.set_num_threads(1)
    train(moco_recipe("train.epochs=1"), data, mask=mask, out_dir=out, fmt="wds", device="cpu",
          progress=False)


def test_moco_under_ddp_shuffles_keys_across_ranks_and_keeps_ranks_in_step(source_dir, tmp_path):
    """2 gloo ranks, 47 masked samples, 8 per rank per step: each rank reads 23 (even shares),
    2 full batches, so both take the 2 steps whose keys they gather together."""
    from ffcv_dp4tl.data import save_mask

    from .test_ddp import _spawn_ranks

    split = load_manifest(source_dir).split("train")
    mask = make_mask(np.arange(47), split, method="test")
    mpath = save_mask(tmp_path / "m.npy", mask)
    out = tmp_path / "ddp"
    _spawn_ranks(_ddp_worker, str(source_dir), str(mpath), str(out))
    row = [r for r in (out / "metrics.jsonl").read_text().splitlines() if r]
    assert len(row) == 1
    assert json.loads(row[0])["samples"] == 2 * 16
    ckpt = Checkpoint.load(out / "checkpoint.pt")
    assert ckpt.world_size == 2 and ckpt.objective["ptr"] == (2 * 16) % 40
