"""The small surrogates of paper Tab. A6 (RN-20s/32s/44s/56s, VGG-2/4/8): sizes, the backbone
interface, and one real training step + LM scoring on the tiny synthetic data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ffcv_dp4tl.training.models import (SMALL_SURROGATES, Backbone, CifarResNet, PadShortcut,
                                        SmallVGG, create_model, feature_dim, features, get_head,
                                        list_models, num_params, replace_head)

#: Tab. A6's "Param. # (M)" (RN-20s: the paper prints 0.236, the digits of 0.326 swapped)
PAPER_M = {"resnet20s": 0.326, "resnet32s": 0.516, "resnet44s": 0.706, "resnet56s": 0.896,
           "vgg2": 0.417, "vgg4": 0.698, "vgg8": 5.53}
#: the unit the paper's ResNet-s counts are in: our exact counts / 1.024e6 give its figures
PAPER_UNIT = 1.024e6


def test_registered_and_listed():
    assert set(SMALL_SURROGATES) <= set(list_models())


@pytest.mark.parametrize("name", ["resnet20s", "resnet32s", "resnet44s", "resnet56s"])
def test_cifar_resnet_counts_match_the_paper(name):
    """He et al.'s option-A ResNets at 1000 classes: the paper's figures to their 3 digits in
    its unit, and within 2.5 % read as plain millions."""
    n = num_params(create_model(name, 1000))
    assert round(n / PAPER_UNIT, 3) == pytest.approx(PAPER_M[name], abs=0.0011)
    assert n / 1e6 == pytest.approx(PAPER_M[name] * 1.024, rel=0.002)
    # exact: stem + 3 stages of n blocks (2 convs + 2 BNs each) + fc, option A adds nothing
    depth = int(name[6:8])
    nb = (depth - 2) // 6
    conv = 3 * 16 * 9 + sum(9 * (cin * c + (nb * 2 - 1) * c * c)
                            for cin, c in ((16, 16), (16, 32), (32, 64)))
    bn = 2 * 16 + nb * 2 * 2 * (16 + 32 + 64)
    assert n == conv + bn + 64 * 1000 + 1000


def test_cifar_resnet_depth_is_6n_plus_2():
    for name, (cls, nb) in SMALL_SURROGATES.items():
        m = create_model(name, 10)
        convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
        if cls is CifarResNet:
            assert len(convs) + 1 == 6 * nb + 2 == int(name[6:8]), name  # + the fc layer
            assert sum(isinstance(s, PadShortcut) for s in m.modules()) == 2  # option A, 2 stages
        else:
            assert isinstance(m, SmallVGG) and len(convs) == nb == int(name[3:]), name


@pytest.mark.parametrize("name", ["vgg2", "vgg4", "vgg8"])
def test_vgg_counts_are_in_the_papers_ballpark(name):
    n = num_params(create_model(name, 1000))
    assert 0.9 < n / (PAPER_M[name] * PAPER_UNIT) < 1.0  # ours are 5–8 % smaller (docs)


def test_sizes_order_like_the_paper():
    order = ["resnet20s", "vgg2", "resnet32s", "vgg4", "resnet44s", "resnet56s", "vgg8", "resnet18"]
    counts = [num_params(create_model(a, 1000)) for a in order]
    assert counts == sorted(counts)


@pytest.mark.parametrize("name", sorted(SMALL_SURROGATES))
@pytest.mark.parametrize("kw", [{}, {"width": 16, "small_input": False, "blurpool": True},
                                {"width": 32, "stem_stride": 2}])
def test_backbone_interface(name, kw):
    torch.manual_seed(0)
    m = create_model(name, 5, **kw).eval()
    assert isinstance(m, Backbone)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = features(m, x)
        assert f.shape == (2, feature_dim(m))
        torch.testing.assert_close(get_head(m)(f), m(x))
        replace_head(m, 3)
        assert m(x).shape == (2, 3)
        torch.testing.assert_close(features(m, x), f)


def test_width_scales_channels_and_64_is_as_published():
    assert feature_dim(create_model("resnet20s", 4)) == 64
    assert feature_dim(create_model("resnet20s", 4, width=32)) == 32
    assert feature_dim(create_model("vgg8", 4, width=8)) == 64
    # stem knobs cost no parameter: the count depends on width only
    assert num_params(create_model("resnet32s", 7, small_input=False)) == \
        num_params(create_model("resnet32s", 7, stem_stride=2))


def test_stem_downsampling():
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for kw, side in (({}, 8), ({"stem_stride": 2}, 4), ({"small_input": False}, 2)):
            m = create_model("resnet20s", 3, **kw).eval()
            h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            assert m.layer3(m.layer2(m.layer1(h))).shape[-1] == side, kw


def test_bad_width_is_one_line():
    from ffcv_dp4tl.errors import DP4TLError

    with pytest.raises(DP4TLError, match="model.width"):
        create_model("vgg2", 3, width=0)


@pytest.mark.parametrize("arch", sorted(SMALL_SURROGATES))
def test_trains_one_step_and_scores_lm(arch, source_dir, target_dir, test_recipe, tmp_path):
    """Through the trainer (recipe ``model.arch=...``, the checkpoint's model_kwargs) and the
    LM scorer (surrogate inference on the target): what the pipeline does with a surrogate."""
    from ffcv_dp4tl.pipeline.score import score
    from ffcv_dp4tl.pipeline.scores_io import load_scores
    from ffcv_dp4tl.training.checkpoint import Checkpoint
    from ffcv_dp4tl.training.trainer import train

    recipe = test_recipe(f"model.arch={arch}", "train.epochs=1", "model.width=16")
    run = tmp_path / "run"
    row = train(recipe, source_dir, out_dir=run, fmt="wds", device="cpu", progress=False)
    assert np.isfinite(row["loss"])
    ckpt = Checkpoint.load(run / "checkpoint.pt")
    assert ckpt.arch == arch
    m = create_model(arch, 8, **ckpt.model_kwargs)
    m.load_state_dict(ckpt.model)  # the checkpoint rebuilds the same architecture
    meta = score("lm", source_dir=source_dir, target_dir=target_dir, out_dir=tmp_path / "sc",
                 checkpoint=run / "checkpoint.pt", fmt="wds", device="cpu", num_workers=0,
                 progress=False)
    s = np.asarray(load_scores(tmp_path / "sc").scores)
    assert s.shape == (8,) and meta["unit"] == "class"
    # LM: one vote (the surrogate's argmax source class) per target train image
    from ffcv_dp4tl.data import load_manifest

    assert s.sum() == pytest.approx(load_manifest(target_dir).split("train").num_samples)
