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


def _small_kw(name: str) -> dict:
    """Cheap settings for a registered architecture, passed as training passes a recipe's: only
    the ``[model]`` knobs it takes (``model_kwargs``). A newcomer's builder taking ``width``
    alone failed here with "unexpected keyword argument 'small_input'" (docs audit)."""
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import model_kwargs

    # resnet18_tiny_cpu: width 8, small_input; image_size 32 for a fixed-size model (a ViT)
    return model_kwargs(load_recipe("resnet18_tiny_cpu", [f"model.arch={name}",
                                                          "model.image_size=32"]))


def _check_backbone_interface(name: str) -> None:
    """timm's names, no isinstance switches: forward = forward_head ∘ forward_features, and
    reset_classifier swaps in a fresh head of the new width on the same features."""
    torch.manual_seed(0)
    m = create_model(name, 6, **_small_kw(name)).eval()
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


@pytest.mark.parametrize("name", list_models())
def test_every_model_speaks_the_backbone_interface(name):
    """Every registered model, so a newly registered one is checked without touching this
    file."""
    _check_backbone_interface(name)


def test_the_interface_check_passes_a_new_model_only_the_knobs_it_takes():
    """ARCHITECTURE.md's "add a model" recipe, followed literally: a builder taking ``width``
    alone (no ResNet ``small_input``) passes the interface check every registered model gets."""
    from torch import nn

    from ffcv_dp4tl.training import models

    class TinyCNN(models._ClassifierMixin, nn.Module):
        def __init__(self, num_classes: int, width: int):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(width, num_classes)

        def forward_features(self, x):
            return self.body(x)

        def get_classifier(self):
            return self.fc

        def _set_classifier(self, head):
            self.fc = head

    @models.register("tinycnn_probe")
    def tinycnn_probe(num_classes: int, *, width: int = 64) -> nn.Module:
        return TinyCNN(num_classes, width)

    try:
        assert _small_kw("tinycnn_probe") == {"width": 8}
        _check_backbone_interface("tinycnn_probe")
    finally:
        models.unregister("tinycnn_probe")
    assert "tinycnn_probe" not in list_models()


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_resnets_at_width_64_are_torchvision_s_architectures(depth):
    """The pretraining models of the paper (RN-18/50/101; RN-34 for the CPU recipes) as published:
    every parameter and buffer of torchvision's resnetN, same names and shapes, so torchvision's
    ImageNet weights load (``--weights``) and a "ResNet-101" is 101 layers deep, not a
    ResNet-50 under its name. Parameter counts as torchvision documents them (1000 classes)."""
    import torchvision.models as tvm

    published = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}
    ours = create_model(f"resnet{depth}", 1000)
    ref = getattr(tvm, f"resnet{depth}")(weights=None)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == published[depth]
    ours.load_state_dict(ref.state_dict())  # strict: the weights drop in


def test_a_model_without_the_interface_is_named():
    with pytest.raises(DP4TLError, match="Sequential does not implement the backbone interface"):
        features(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.randn(1, 2))


def test_a_new_model_takes_the_knobs_it_declares_and_the_others_are_named_not_passed():
    """A newcomer's builder without the ResNet knobs failed with "unexpected keyword argument
    'blurpool'" (model_kwargs passed four knobs to every non-ViT), and a ViT recipe's
    model.width was ignored without a word (review). A builder now gets the knobs it declares
    (its keyword parameters, or register's ``knobs``); the others, set away from their
    defaults, are named in a note (not refused: ``--arch vit_b_16`` over a ResNet recipe is a
    legitimate run); a name is never silently taken over."""
    from torch import nn

    from ffcv_dp4tl.training import models
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import ignored_model_knobs, model_kwargs

    @models.register("tiny_probe")
    def tiny_probe(num_classes: int, *, width: int = 64) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(width, num_classes))

    try:
        assert models.model_knobs("tiny_probe") == {"width"}
        # MODEL_KNOBS is ModelCfg's fields but arch, in their order
        import dataclasses

        from ffcv_dp4tl.training.recipe import ModelCfg
        assert models.MODEL_KNOBS == ("blurpool", "small_input", "stem_stride", "width", "image_size")
        assert set(models.MODEL_KNOBS) == {f.name for f in dataclasses.fields(ModelCfg)} - {"arch"}
        r = load_recipe("resnet18_tiny_cpu", ["model.arch=tiny_probe"])
        assert model_kwargs(r) == {"width": 8}  # (resnet18_tiny_cpu's width)
        assert models.create_model("tiny_probe", 3, **model_kwargs(r))(torch.randn(1, 3, 8, 8)).shape == (1, 3)
        assert ignored_model_knobs(r) == (
            "resnet18_tiny_cpu: model 'tiny_probe' does not read model.blurpool = False, "
            "model.small_input = True, model.stem_stride = 2 (it takes width); they are ignored")
        vit = load_recipe("vit_b16", ["model.width=8"])
        assert model_kwargs(vit) == {"image_size": 224}
        assert "model 'vit_b_16' does not read model.width = 8 (it takes image_size)" in \
            ignored_model_knobs(vit)
        assert ignored_model_knobs(load_recipe("vit_b16")) is None
        assert ignored_model_knobs(load_recipe("resnet18_tiny_cpu")) is None

        def other(num_classes: int) -> nn.Module:
            return nn.Linear(4, num_classes)

        with pytest.raises(ValueError, match=r"^model 'resnet18' is registered already \(by "
                                             r"ffcv_dp4tl\.training\.models\.resnet18\); choose another name"):
            models.register("resnet18")(other)
        assert models._REGISTRY["resnet18"] is models.resnet18
        with pytest.raises(ValueError, match=r"takes \*\*kw, so say which recipe knobs it takes"):
            models.register("kw_probe")(lambda num_classes, **kw: nn.Linear(4, num_classes))
        assert "kw_probe" not in models.list_models()
        # the seven small models share one builder function's name: still told apart
        with pytest.raises(ValueError, match=r"^model 'resnet20s' is registered already"):
            models.register("resnet20s")(models._small(models.SmallVGG, 2))
        vgg2 = models._REGISTRY["vgg2"]
        models.register("vgg2")(models._small(models.SmallVGG, 2))  # (the same one: a reload)
        models._REGISTRY["vgg2"] = vgg2
    finally:
        models.unregister("tiny_probe")
    assert "tiny_probe" not in models.list_models()


def test_every_model_taking_image_size_is_a_fixed_size_arch_recipes_check():
    """A recipe is checked without importing torch, so recipe.FIXED_SIZE_ARCHS lists the
    shipped fixed-size models (a ViT takes exactly model.image_size px) with their patch size;
    every registered builder taking ``image_size`` is in it, and one registered later (a toy
    ViT) joins it while registered, so a recipe naming it is checked too."""
    from torch import nn

    from ffcv_dp4tl.training import models
    from ffcv_dp4tl.training.recipe import FIXED_SIZE_ARCHS, load_recipe

    takes = {n for n in list_models() if "image_size" in models.model_knobs(n)}
    assert takes and takes <= set(FIXED_SIZE_ARCHS)
    for name in takes:
        assert create_model(name, 2, image_size=32).patch_size == FIXED_SIZE_ARCHS[name]

    @models.register("toy_vit")
    def toy_vit(num_classes: int, *, image_size: int = 8) -> nn.Module:
        return nn.Linear(image_size, num_classes)

    try:
        with pytest.raises(DP4TLError, match=r"model\.arch = 'toy_vit' takes images of exactly "
                                             r"model\.image_size = 224 px .* set model\.image_size=32"):
            load_recipe("resnet18_tiny_cpu", ["model.arch=toy_vit"])
    finally:
        models.unregister("toy_vit")
    assert "toy_vit" not in FIXED_SIZE_ARCHS and "vit_b_16" in FIXED_SIZE_ARCHS


def test_a_model_registered_with_its_size_rule_is_checked_by_it():
    """Every builder taking ``image_size`` was made a fixed-size model of patch 1, with no way
    to say otherwise (review): ``fixed_size=False`` (a model that interpolates, or a CNN with an
    ``image_size`` default) takes any size, and an int is the patch the size must be a multiple
    of."""
    from torch import nn

    from ffcv_dp4tl.training import models
    from ffcv_dp4tl.training.recipe import FIXED_SIZE_ARCHS, load_recipe

    @models.register("toy_any", fixed_size=False)
    def toy_any(num_classes: int, *, image_size: int = 8) -> nn.Module:
        return nn.Linear(image_size, num_classes)

    @models.register("toy_patch4", fixed_size=4)
    def toy_patch4(num_classes: int, *, image_size: int = 8) -> nn.Module:
        return nn.Linear(image_size, num_classes)

    try:
        assert "toy_any" not in FIXED_SIZE_ARCHS and FIXED_SIZE_ARCHS["toy_patch4"] == 4
        load_recipe("resnet18_tiny_cpu", ["model.arch=toy_any"])  # (fed 32 px, sized 224)
        with pytest.raises(DP4TLError, match="must be a multiple of its patch size 4"):
            load_recipe("resnet18_tiny_cpu", ["model.arch=toy_patch4", "model.image_size=30"])
    finally:
        models.unregister("toy_any")
        models.unregister("toy_patch4")
    assert "toy_patch4" not in FIXED_SIZE_ARCHS
