from __future__ import annotations

import pytest
import torch

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.training.models import (Backbone, BlurPoolConv2d, create_model, feature_dim,
                                        features, get_head, list_models, replace_head)


@pytest.mark.parametrize("kw", [{}, {"blurpool": True, "small_input": True, "width": 8}])
def test_resnet18_features_match_forward(kw):
    torch.manual_seed(0)
    m = create_model("resnet18", 7, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    f = features(m, x)
    assert f.shape == (2, feature_dim(m))
    torch.testing.assert_close(get_head(m)(f), m(x))
    assert any(isinstance(mod, BlurPoolConv2d) for mod in m.modules()) == bool(kw.get("blurpool"))
    if kw.get("small_input"):
        assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
        assert isinstance(m.maxpool, torch.nn.Identity)


def test_default_resnet50_is_torchvision_shaped():
    m = create_model("resnet50", 10)
    assert feature_dim(m) == 2048 and m.fc.out_features == 10


def test_replace_head_and_unknown():
    m = create_model("resnet18", 5, width=8, small_input=True)
    replace_head(m, 3)
    assert m(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    with pytest.raises(DP4TLError, match="unknown model"):
        create_model("resnet19", 3)
    with pytest.raises(DP4TLError, match="resnet18"):
        create_model("resnet18", 3, bogus=1)


def test_vit_small_image():
    m = create_model("vit_b_16", 4, image_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert features(m, x).shape == (1, 768)
        torch.testing.assert_close(get_head(m)(features(m, x)), m(x))


@pytest.mark.parametrize("name,kw", [("resnet18", {"width": 8, "small_input": True}),
                                     ("vit_b_16", {"image_size": 32})])
def test_every_model_speaks_the_backbone_interface(name, kw):
    """timm's names, no isinstance switches: forward = forward_head ∘ forward_features, and
    reset_classifier swaps in a fresh head of the new width on the same features."""
    torch.manual_seed(0)
    m = create_model(name, 6, **kw).eval()
    assert isinstance(m, Backbone)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, m.num_features)
        torch.testing.assert_close(m.forward_head(f), m(x))
        old = m.get_classifier()
        new = m.reset_classifier(4)
        assert new is m.get_classifier() and new is not old and new.in_features == old.in_features
        assert m(x).shape == (2, 4)
        torch.testing.assert_close(m.forward_features(x), f)  # features untouched
    # the wrappers' helpers are the same methods
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = m
    assert get_head(compiled_like) is new and feature_dim(compiled_like) == m.num_features


def test_every_registered_model_is_a_backbone():
    for name in list_models():
        if name.startswith("vit"):
            continue  # (covered above at 32 px; the default 224 px ViT-B is slow to build)
        assert isinstance(create_model(name, 3, width=8), Backbone), name


def test_a_model_without_the_interface_is_named():
    with pytest.raises(DP4TLError, match="Sequential does not implement the backbone interface"):
        features(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.randn(1, 2))
