"""PGD adversarial pretraining (paper Tab. 5): the attack's ball and box, that it attacks, BN
statistics during the attack, the recipe section ([adv]) and a trainer epoch with it."""
from __future__ import annotations

import contextlib
import copy
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ffcv_dp4tl.data import Batch
from ffcv_dp4tl.data.transforms import Normalize
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.training import trainer
from ffcv_dp4tl.training.adversarial import AdversarialObjective, PGDAttack, default_step_size
from ffcv_dp4tl.training.distributed import DistContext
from ffcv_dp4tl.training.engine import CrossEntropyObjective, metric_sums, train_step
from ffcv_dp4tl.training.recipe import load_recipe
from ffcv_dp4tl.training.schedule import lr_for_iteration

from tiny_data import TEST_OVERRIDES
from .test_gpu import DEVICES, GPU_PATH, _batches, _no_host_sync

ADV = ["adv.steps=3", "adv.eps=8/255"]


def _net(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def _batch(n: int = 12, res: int = 8, seed: int = 0, channels_last: bool = False):
    """A normalised batch made the loaders' way (uint8 pixels through ``Normalize``)."""
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (n, 3, res, res), generator=g, dtype=torch.uint8)
    u8[0] = 0  # an all-black and an all-white image: the box clamps must hold at the edges
    u8[1] = 255
    return Normalize(channels_last=channels_last)(u8), torch.randint(0, 4, (n,), generator=g), u8


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("random_start", [True, False])
def test_perturbation_stays_in_the_ball_and_the_pixel_box(norm, eps, random_start):
    """Adversarial examples are valid images (Tab. 5 ADV models): the attacked batch, taken back
    to [0, 1] pixels with plain arithmetic (the loaders' ImageNet mean/std, written out here;
    not the attack's own ``to_pixels``, which clamps), lies in the pixel box and within eps of
    the clean pixels, also for an all-black and an all-white image."""
    x, y, u8 = _batch()
    attack = PGDAttack(steps=4, eps=eps, norm=norm, random_start=random_start)
    adv = attack.perturb(_net(), x, y)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels, clean = adv * std + mean, u8.float() / 255  # (adv is (255 p - 255 mean) / (255 std))
    delta = (pixels - clean).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all(), size
    assert size.max() > 0.5 * eps  # it did move (not a no-op passing the bound trivially)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert (delta[0] >= -1e-6).all() and (delta[1] <= 1e-6).all()  # black/white images
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert attack.step_size == pytest.approx(default_step_size(eps, 4)) == pytest.approx(2.5 * eps / 4)


def test_normalized_units_step_and_start_by_the_channel_std_as_the_authors():
    """adv.units = normalized (paper-code): the sign step and the random start are taken on the
    normalised input (x each channel's std in pixels, ~0.225), the ball and box stay in pixels:
    the released script's 2/255 step moves a pixel by ~0.45/255, a quarter of ours."""
    from ffcv_dp4tl.data.transforms import IMAGENET_STD

    x, y, _ = _batch()
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) / 255.0
    moved = {}
    for units in ("pixel", "normalized"):
        atk = PGDAttack(steps=1, eps=0.5, step_size=2 / 255, random_start=False, units=units)
        pix = atk.to_pixels(x)
        d = (atk.to_pixels(atk.perturb(_net(), x, y)) - pix).abs()
        free = (pix > 0.02) & (pix < 0.98) & (d > 1e-7)  # no box clamp, a nonzero gradient
        moved[units] = torch.where(free, d, torch.nan)
    assert torch.allclose(moved["pixel"].nan_to_num(2 / 255), torch.tensor(2 / 255), atol=1e-5)
    expect = (2 / 255) * std.expand_as(moved["normalized"])
    got = moved["normalized"]
    assert torch.allclose(got.nan_to_num(0.0), torch.where(got.isnan(), 0.0, expect), atol=1e-5)
    start = PGDAttack(steps=0, eps=3 / 255, units="normalized")._start(torch.full((64, 3, 8, 8), 0.5))
    assert (start.abs() <= 3 / 255 * std + 1e-7).all()  # uniform in [-eps, eps] x std
    assert (start.abs().amax(dim=(0, 2, 3)) > 0.9 * 3 / 255 * std.flatten()).all()
    with pytest.raises(ValueError, match="linf only"):
        PGDAttack(steps=1, eps=0.5, norm="l2", units="normalized")


def test_attack_raises_the_loss_over_clean_and_random_noise():
    x, y, _ = _batch(n=32)
    net = _net().eval()
    attack = PGDAttack(steps=5, eps=4 / 255, norm="linf", random_start=False)
    adv = attack.perturb(net, x, y)
    pixels = attack.to_pixels(x)
    torch.manual_seed(1)
    noise = attack.from_pixels((pixels + (torch.rand_like(pixels) * 2 - 1) * 4 / 255).clamp(0, 1), x)
    with torch.no_grad():
        clean_l, adv_l, noise_l = (F.cross_entropy(net(t), y).item() for t in (x, adv, noise))
    assert adv_l > clean_l + 0.01 and adv_l > noise_l + 0.01, (clean_l, noise_l, adv_l)


def test_attack_leaves_bn_stats_mode_and_grads_alone_and_the_step_updates_bn_once():
    x, y, _ = _batch()
    net = _net().train()
    bn = net[1]
    twin = copy.deepcopy(net)
    attack = PGDAttack(steps=3, eps=8 / 255)
    torch.manual_seed(5)
    adv = attack.perturb(net, x, y)
    assert net.training and all(m.training for m in net.modules())
    assert bn.num_batches_tracked.item() == 0 and torch.equal(bn.running_mean, twin[1].running_mean)
    assert all(p.grad is None for p in net.parameters())
    # one adversarial training step = one clean train-mode forward on the attacked batch
    twin(adv)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    torch.manual_seed(5)  # the same random start
    train_step(net, Batch(x, y, torch.arange(len(y))), opt, AdversarialObjective(net, attack))
    assert bn.num_batches_tracked.item() == 1
    assert torch.allclose(bn.running_mean, twin[1].running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, twin[1].running_var, atol=1e-6)


def test_channels_last_and_bf16_autocast_pass_through():
    x, y, u8 = _batch(channels_last=True)
    net = _net().to(memory_format=torch.channels_last)
    attack = PGDAttack(steps=2, eps=8 / 255)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adv = attack.perturb(net, x, y)
        loss, correct, n = AdversarialObjective(net, attack)(net, Batch(x, y, torch.arange(len(y))))
    assert adv.is_contiguous(memory_format=torch.channels_last) and adv.dtype == torch.float32
    assert (attack.to_pixels(adv) - u8.float() / 255).abs().max() <= 8 / 255 + 1e-5
    assert torch.isfinite(loss) and n == len(y) and 0 <= int(correct) <= n


# ------------------------------------------------------------------------------ the recipe
def test_fingerprint_changes_with_adv_only_when_it_is_on(test_recipe):
    base = test_recipe().fingerprint()
    assert test_recipe("adv.eps=0.1", "adv.norm=l2").fingerprint() == base  # steps 0: off
    on = test_recipe(*ADV)
    assert on.adv.eps == pytest.approx(8 / 255) and on.fingerprint() != base
    assert test_recipe("adv.steps=3", "adv.eps=4/255").fingerprint() != on.fingerprint()
    assert test_recipe(*ADV, "adv.random_start=false").fingerprint() != on.fingerprint()
    assert "adv" not in test_recipe().to_dict() and on.to_dict()["adv"]["steps"] == 3


@pytest.mark.parametrize("over,msg", [
    (["adv.steps=-1"], "adv.steps"),
    (["adv.steps=3"], "needs adv.eps > 0"),
    (["adv.steps=3", "adv.eps=4"], '"4/255"'),
    (["adv.steps=3", "adv.eps=0.03", "adv.norm=l1"], "adv.norm"),
    (["adv.steps=3", "adv.eps=1/0"], "fraction"),
    (["adv.steps=3", "adv.eps=-0.1"], "adv.eps"),
    (["adv.steps=3", "adv.eps=0.03", "adv.step_size=-1"], "adv.step_size"),
    (["adv.steps=3", "adv.eps=0.03", "adv.random_start=1"], "adv.random_start"),
    (["adv.iters=3"], "unknown key adv.iters"),
])
def test_bad_adv_values_are_one_line_errors(over, msg, test_recipe):
    with pytest.raises(DP4TLError) as e:
        test_recipe(*over)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_adv_refuses_ssl_and_finetuning(trained_run, target_dir, tmp_path):
    with pytest.raises(DP4TLError, match="no labels"):
        load_recipe("moco_v2_tiny_cpu", ADV)
    from ffcv_dp4tl.training.finetune import finetune

    with pytest.raises(DP4TLError, match="applies to pretraining"):
        finetune(load_recipe("lp_tiny_cpu", ADV), trained_run / "checkpoint.pt", target_dir,
                 tmp_path / "ft", mode="lp", fmt="wds", device="cpu", progress=False)


# ------------------------------------------------------------------------------ the trainer
def test_adversarial_epoch_through_the_trainer(source_dir, tmp_path, test_recipe):
    clean = test_recipe("train.epochs=1")
    adv = test_recipe("train.epochs=1", "adv.steps=2", "adv.eps=16/255")
    rows = {}
    for name, r in (("clean", clean), ("adv", adv)):
        rows[name] = trainer.train(r, source_dir, out_dir=tmp_path / name, fmt="wds", device="cpu",
                                   progress=False)
    assert rows["adv"]["objective"] == "adversarial" and rows["clean"]["objective"] == "supervised"
    # same init, data and seed: the attacked batches are harder than the clean ones
    assert rows["adv"]["loss"] > rows["clean"]["loss"]
    assert rows["adv"]["train_seconds"] > 0 and rows["adv"]["top1_val"] is not None
    timings = json.loads((tmp_path / "adv" / trainer.TIMINGS_NAME).read_text())
    assert timings["epochs_done"] == 1 and timings["stages"]["step"] > 0
    ck = torch.load(tmp_path / "adv" / "checkpoint.pt", weights_only=False)
    assert ck["identity"]["recipe_fingerprint"] == adv.fingerprint() != clean.fingerprint()
    assert ck["recipe"]["adv"]["steps"] == 2


@pytest.mark.parametrize("device", DEVICES)
def test_adversarial_step_never_syncs(device):
    """The adversarial step (attack + update) under CUDA's sync debug mode after warm-up, on the
    GPU path (bf16 autocast, channels_last; on CPU via train.cpu_autocast)."""
    dev = torch.device(device)
    r = load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + GPU_PATH + ADV)
    parts = trainer.build_step_parts(r, 8, DistContext(device=dev))
    assert isinstance(parts.objective, AdversarialObjective) and parts.objective.attack_model is parts.net
    assert not isinstance(parts.objective, CrossEntropyObjective)
    batches = _batches(parts, device, 4)
    sums = metric_sums(dev)
    with trainer.cudnn_benchmark(dev):
        for it, batch in enumerate(batches):
            with _no_host_sync(device) if it >= 2 else contextlib.nullcontext():
                for g in parts.opt.param_groups:
                    g["lr"] = lr_for_iteration(r.lr, 0, it, 4, r.train.epochs, parts.peak)
                parts.step(batch, sums)
    assert torch.isfinite(sums).all() and sums[2].item() == 4 * len(batches[0].labels)


def test_dp4tl_train_cli_reaches_adv_through_set(source_dir, tmp_path):
    from typer.testing import CliRunner

    from ffcv_dp4tl.cli import app

    args = ["train", "resnet18_tiny_cpu", "--data", str(source_dir), "--format", "wds",
            "--device", "cpu", "--no-progress"]
    for o in TEST_OVERRIDES + ["train.epochs=1", "adv.steps=1", "adv.eps=4/255", "adv.norm=l2"]:
        args += ["--set", o]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "run" / trainer.METRICS_NAME).read_text().splitlines()[-1])
    assert row["objective"] == "adversarial"
    bad = CliRunner().invoke(app, args + ["--set", "adv.norm=l3", "--out", str(tmp_path / "bad")])
    # a DP4TLError (the console entry point prints it as one line, exit 2) before any work
    assert isinstance(bad.exception, DP4TLError) and "adv.norm = 'l3'" in str(bad.exception)
    assert not (tmp_path / "bad").exists()


def test_the_adversarial_objective_attacks_the_photometrically_augmented_batch():
    """train.color_jitter / white_balance reach adversarial training too (they were silently
    dropped): the batch is augmented first, as a loader would, then attacked; the attack sees
    the augmented images and the clean objective's images are the same ones."""
    seen = {}

    class Tint(nn.Module):
        def forward(self, x):
            return x + 0.5

    class Spy(PGDAttack):
        def perturb(self, model, images, labels):
            seen["images"] = images.clone()
            return images

    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    obj = AdversarialObjective(net, Spy(steps=1, eps=0.01, step_size=0.01, norm="linf",
                                        random_start=False), augment=Tint())
    images, labels = torch.zeros(2, 3, 2, 2), torch.tensor([0, 1])
    obj(net, Batch(images, labels, torch.arange(2)))
    torch.testing.assert_close(seen["images"], images + 0.5)
    # the trainer builds it with the recipe's augmentation, as the clean objective
    r = load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + ["adv.steps=2", "adv.eps=8/255"])
    assert r.train.white_balance > 0
    parts = trainer.build_step_parts(r, 8, DistContext(device=torch.device("cpu")))
    assert isinstance(parts.objective, AdversarialObjective) and parts.objective.augment is not None


def test_a_self_supervised_recipe_refuses_the_supervised_jitters():
    """MoCo augments its views from [ssl]; train.color_jitter / white_balance / crop_scale
    would be ignored."""
    with pytest.raises(DP4TLError, match="apply to supervised training only"):
        load_recipe("moco_v2_tiny_cpu", ["train.white_balance=0.2"])
    with pytest.raises(DP4TLError, match=r"train.crop_scale apply to supervised training only; "
                                         r".*ssl.crop_scale"):
        load_recipe("moco_v2_tiny_cpu", ["train.crop_scale=[0.35,1.0]"])
    assert load_recipe("moco_v2_tiny_cpu").ssl.crop_scale == [0.2, 1.0]
    with pytest.raises(DP4TLError, match=r"train.crop_ratio apply to supervised training only"):
        load_recipe("moco_v2_tiny_cpu", ["train.crop_ratio=[1.0,1.0]"])


@pytest.mark.parametrize("adv", [[], ["adv.steps=2", "adv.eps=8/255"]], ids=["clean", "adversarial"])
def test_the_train_crop_of_a_recipe_reaches_the_objective(adv):
    """train.crop_scale and train.crop_ratio (a fixed-area square crop: the released CIFAR FF's
    RandomCrop) set the train loader's AugSpec, in clean and adversarial pretraining alike."""
    r = load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + adv + ["train.crop_scale=[0.5,0.5]",
                                                                 "train.crop_ratio=[1.0,1.0]"])
    parts = trainer.build_step_parts(r, 8, DistContext(device=torch.device("cpu")))
    aug = parts.objective.train_aug
    assert (aug.crop_scale, aug.crop_ratio, aug.train) == ((0.5, 0.5), (1.0, 1.0), True)
    default = trainer.build_step_parts(load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES + adv), 8,
                                       DistContext(device=torch.device("cpu"))).objective.train_aug
    assert default.crop_ratio == (3 / 4, 4 / 3)
