"""Model registry: ``create_model(name, num_classes, **kw)``, plus feature helpers for scoring.

Every architecture is built with random init (torchvision's ResNets and ViT, and the small
CIFAR ResNets and VGGs below): nothing is ever downloaded, all runs start from random init
(the paper trains its own source models).

**The backbone interface** (timm's method names; see :class:`Backbone`). Every registered model
exposes ``num_features``, ``forward_features(x)`` (the pooled penultimate features, what timm's
``forward_head(forward_features(x), pre_logits=True)`` returns), ``forward_head(features)``,
``get_classifier()`` and ``reset_classifier(num_classes)``. Training (LP/FF/MoCo) and scoring
use only these, never the architecture's attribute names (``fc``, ``heads.head``), so adding
a model means registering a constructor whose module implements them; the subclasses below
add them to torchvision's ResNet and ViT without changing their state_dicts.

Knobs (all keyword arguments, all settable from a recipe's ``[model]`` section, :data:`MODEL_KNOBS`).
A builder takes the ones it declares (:func:`register`'s ``knobs``, or its keyword parameters of
those names); another one a recipe sets away from its default is not passed, and training names
it in a warning (:func:`~ffcv_dp4tl.training.trainer.ignored_model_knobs`):

* ``blurpool`` — anti-aliased downsampling as in ffcv-imagenet: every strided conv with at least
  16 input channels is preceded by a fixed 3×3 binomial blur (``BlurPoolConv2d``). ffcv-imagenet
  reports it is worth ~0.5–1 % top-1 for ResNets at no parameter cost.
* ``small_input`` — for 32–64 px CPU recipes the ImageNet stem (7×7/2 conv + max-pool, i.e. 4×
  downsampling before the first block) throws away most of a 32 px image; this replaces it with a
  3×3 conv with stride ``stem_stride`` (default 1) and no max-pool, as CIFAR ResNets do.
* ``width`` — channels of the first stage (torchvision: 64). Smaller widths make ResNets cheap
  enough for unit tests and 2-core CPU recipes; with 64 the state_dict is torchvision's.
* ``image_size`` (ViT only) — input resolution the position embeddings are sized for; the
  model takes no other size, so a recipe feeding it another one is refused when loaded
  (:data:`~ffcv_dp4tl.training.recipe.FIXED_SIZE_ARCHS`, which a builder taking this knob joins).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from ..errors import DP4TLError
from .recipe import FIXED_SIZE_ARCHS, ModelCfg

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_KNOBS: dict[str, frozenset[str]] = {}
_ADDED_FIXED: set[str] = set()  # names register added to recipe.FIXED_SIZE_ARCHS

#: the recipe's ``[model]`` knobs (``ModelCfg``'s fields but ``arch``) a builder may take
MODEL_KNOBS = tuple(f.name for f in dataclasses.fields(ModelCfg) if f.name != "arch")
_RESNET_KNOBS = ("blurpool", "small_input", "stem_stride", "width")


def register(name: str, knobs: Iterable[str] | None = None, fixed_size: int | bool | None = None):
    """Decorator adding a constructor ``fn(num_classes, **kw) -> nn.Module`` to the registry.

    ``knobs``: the :data:`MODEL_KNOBS` it takes (default: its keyword parameters of those names;
    a builder taking ``**kw`` lists them). ``fixed_size``: whether the model takes images of
    exactly ``model.image_size`` only (recipes feeding it another size are refused:
    ``recipe.FIXED_SIZE_ARCHS``): an int is the multiple that size must be (a ViT's patch),
    False a model that takes any size (one that interpolates its position embeddings, a CNN
    with an ``image_size`` default), None (default) infers it from the ``image_size`` knob
    (multiple 1). A second, different constructor under a registered name is refused: it would
    silently replace the first for every recipe."""
    def deco(fn):
        if knobs is not None:
            taken = frozenset(knobs)
        else:
            params = inspect.signature(fn).parameters.values()
            if any(p.kind is p.VAR_KEYWORD for p in params):
                raise ValueError(f"model {name!r}: its builder takes **kw, so say which recipe "
                                 f"knobs it takes: register({name!r}, knobs=...) with some of "
                                 f"{', '.join(MODEL_KNOBS)}")
            taken = frozenset(p.name for p in params if p.name in MODEL_KNOBS)
        if taken - set(MODEL_KNOBS):
            raise ValueError(f"model {name!r}: unknown knobs {sorted(taken - set(MODEL_KNOBS))}; "
                             f"choose from {', '.join(MODEL_KNOBS)}")
        old = _REGISTRY.get(name)
        same = lambda f: (f.__module__, f.__qualname__, f.__doc__)  # noqa: E731 (a module
        if old is not None and same(old) != same(fn):  # reloaded; _small's builders differ by doc)
            raise ValueError(f"model {name!r} is registered already (by {old.__module__}."
                             f"{old.__qualname__}); choose another name")
        _REGISTRY[name], _KNOBS[name] = fn, taken
        fixed = ("image_size" in taken) if fixed_size is None else fixed_size
        if fixed and name not in FIXED_SIZE_ARCHS:
            # fed images of exactly that size: recipes using it are checked for it
            FIXED_SIZE_ARCHS[name] = 1 if fixed is True else int(fixed)
            _ADDED_FIXED.add(name)
        return fn
    return deco


def unregister(name: str) -> None:
    """Remove a model (tests register toy models and remove them again)."""
    _REGISTRY.pop(name, None)
    _KNOBS.pop(name, None)
    if name in _ADDED_FIXED:
        _ADDED_FIXED.discard(name)
        FIXED_SIZE_ARCHS.pop(name, None)


def list_models() -> list[str]:
    """The registered model names, sorted: what a recipe's ``model.arch`` and
    ``create_model(name, num_classes)`` take (``dp4tl models`` lists them, each with the shipped
    recipes that name it; :func:`model_knobs` gives a model's knobs)."""
    return sorted(_REGISTRY)


def _check_known(name: str) -> None:
    if name not in _REGISTRY:
        raise DP4TLError(f"unknown model {name!r}; available: {', '.join(list_models())}")


def model_knobs(name: str) -> frozenset[str]:
    """The recipe ``[model]`` knobs model ``name``'s builder takes (:func:`register`)."""
    _check_known(name)
    return _KNOBS[name]


def create_model(name: str, num_classes: int, **kw: Any) -> nn.Module:
    """Build a randomly initialised model by registry name; unknown names/knobs → DP4TLError."""
    _check_known(name)
    try:
        return _REGISTRY[name](num_classes, **kw)
    except TypeError as e:  # unexpected keyword from a recipe
        raise DP4TLError(f"model {name!r}: {e}") from None


# --------------------------------------------------------------------------- blurpool
class BlurPoolConv2d(nn.Module):
    """A strided conv preceded by a depthwise 3×3 binomial blur (ffcv-imagenet's wrapper).

    The blur is a non-persistent buffer so state_dicts stay compatible with plain models apart
    from the ``.conv`` prefix.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        filt = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
        self.conv = conv
        self.register_buffer("blur_filter", filt.expand(conv.in_channels, 1, 3, 3).clone(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur_filter.to(x.dtype), stride=1, padding=1,
                           groups=self.conv.in_channels)
        return self.conv(blurred)


def apply_blurpool(module: nn.Module) -> nn.Module:
    """Wrap every strided conv with ≥16 input channels in :class:`BlurPoolConv2d` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(module, name, BlurPoolConv2d(child))
        else:
            apply_blurpool(child)
    return module


# --------------------------------------------------------------------------- the interface
@runtime_checkable
class Backbone(Protocol):
    """What training and scoring need from a model (timm's names)."""
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...
    def forward_head(self, features: torch.Tensor) -> torch.Tensor: ...
    def get_classifier(self) -> nn.Linear: ...
    def reset_classifier(self, num_classes: int) -> nn.Linear: ...


class _ClassifierMixin:
    """``forward_head`` / ``reset_classifier`` / ``num_features`` on top of ``get_classifier`` and
    ``_set_classifier``; ``forward(x) == forward_head(forward_features(x))``."""

    @property
    def num_features(self) -> int:
        return self.get_classifier().in_features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.get_classifier()(features)

    def reset_classifier(self, num_classes: int) -> nn.Linear:
        """Swap in a freshly initialised ``num_classes``-way linear head (on the old head's
        device); returns it. (timm returns None; the new head is handy for LP.)"""
        old = self.get_classifier()
        new = nn.Linear(old.in_features, num_classes).to(old.weight.device)
        self._set_classifier(new)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ResNet(_ClassifierMixin, tvm.ResNet):
    """torchvision's ResNet (same modules, same state_dict) with the :class:`Backbone` methods."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def _set_classifier(self, head: nn.Linear) -> None:
        self.fc = head


class VisionTransformer(_ClassifierMixin, tvm.VisionTransformer):
    """torchvision's ViT with the :class:`Backbone` methods (features = the class token after
    the encoder; the classifier = ``heads.head``)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._process_input(x)
        cls = self.class_token.expand(x.shape[0], -1, -1)
        return self.encoder(torch.cat([cls, x], dim=1))[:, 0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.heads(features)  # heads = (pre_logits, act,) head

    def get_classifier(self) -> nn.Linear:
        return self.heads.head

    def _set_classifier(self, head: nn.Linear) -> None:
        self.heads.head = head


# --------------------------------------------------------------------------- resnets
#: torchvision's (block, stage depths) per depth
_RESNETS = {18: (tvm.resnet.BasicBlock, [2, 2, 2, 2]), 34: (tvm.resnet.BasicBlock, [3, 4, 6, 3]),
            50: (tvm.resnet.Bottleneck, [3, 4, 6, 3]), 101: (tvm.resnet.Bottleneck, [3, 4, 23, 3])}


def _resnet(depth: int, num_classes: int, *, blurpool: bool = False,
            small_input: bool = False, stem_stride: int = 1, width: int = 64,
            zero_init_residual: bool = False) -> ResNet:
    block, layers = _RESNETS[depth]
    model = ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
    if width != 64:
        # Rebuild the stages at another width with torchvision's own _make_layer, then re-init.
        block = type(model.layer1[0])
        depths = [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)]
        model.inplanes, model.dilation = width, 1
        model.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        model.bn1 = nn.BatchNorm2d(width)
        model.layer1 = model._make_layer(block, width, depths[0])
        model.layer2 = model._make_layer(block, width * 2, depths[1], stride=2)
        model.layer3 = model._make_layer(block, width * 4, depths[2], stride=2)
        model.layer4 = model._make_layer(block, width * 8, depths[3], stride=2)
        model.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        _init_convnet(model)
    if small_input:
        model.conv1, model.maxpool = _stem(width, True, stem_stride)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if blurpool:
        apply_blurpool(model)
    return model


@register("resnet18", knobs=_RESNET_KNOBS)
def resnet18(num_classes: int, **kw: Any) -> nn.Module:
    return _resnet(18, num_classes, **kw)


@register("resnet34", knobs=_RESNET_KNOBS)
def resnet34(num_classes: int, **kw: Any) -> nn.Module:
    return _resnet(34, num_classes, **kw)


@register("resnet50", knobs=_RESNET_KNOBS)
def resnet50(num_classes: int, **kw: Any) -> nn.Module:
    return _resnet(50, num_classes, **kw)


@register("resnet101", knobs=_RESNET_KNOBS)
def resnet101(num_classes: int, **kw: Any) -> nn.Module:
    return _resnet(101, num_classes, **kw)


@register("vit_b_16", knobs=("image_size",))
def vit_b_16(num_classes: int, *, image_size: int = 224, **kw: Any) -> nn.Module:
    return VisionTransformer(image_size=image_size, patch_size=16, num_layers=12, num_heads=12,
                             hidden_dim=768, mlp_dim=3072, num_classes=num_classes, **kw)


# --------------------------------------------------------------------------- small surrogates
# Paper Tab. A6 / Fig. 5: LM with surrogates far smaller than ResNet-18. ``resnet{20,32,44,56}s``
# are He et al. 2016's CIFAR ResNets (Sec. 4.2): a 3×3 stem, three stages of n basic blocks at
# 16/32/64 channels (strides 1/2/2), 6n+2 weighted layers, global average pooling, one linear
# head. The shortcut is **option A** (identity; where the shape changes, stride-2 subsampling and
# zero-padded channels), the one He et al. use for their CIFAR numbers (0.27M params for RN-20 at
# 10 classes): it adds no parameters. At 1000 classes this gives 0.334M / 0.529M / 0.723M /
# 0.917M parameters; the paper's Tab. A6 lists 0.236 / 0.516 / 0.706 / 0.896 "M", i.e. exactly our
# counts divided by 1.024e6 (0.326 for RN-20s, digits swapped in the paper) — see docs/surrogates.md.
#
# ``vgg{2,4,8}`` are small VGGs (Simonyan & Zisserman 2015 style: 3×3 conv-BN-ReLU layers, 2×2
# max-pools between stages, channels doubling) with n conv layers, global average pooling and a
# single linear head (no 4096-wide FC layers: the paper's counts, 0.417M / 0.698M / 5.53M, leave no
# room for them). The paper does not give their layout; :data:`VGG_PLANS` are ours, chosen so the
# counts at 1000 classes are in the same ballpark (0.407M / 0.665M / 5.20M; 5–8 % under the
# paper's figures read in the same 1.024e6 unit).
#
# Knobs as for the ResNets, so ``model.arch=resnet20s`` drops into any recipe:
# ``width`` scales every channel count by width/64 (64 = the architecture as published, so recipes
# that keep torchvision's default get the paper's models; the tiny CPU recipes' width 8 gives 1/8
# of it); ``small_input=True`` (the builders' default: these are CIFAR models, 32–64 px input): the
# first conv has stride ``stem_stride`` and no max-pool follows; ``small_input=False`` (ImageNet-
# sized input, the recipes' default): the first conv has stride 2 and a 3×3/2 max-pool follows (4×
# downsampling like torchvision's ResNet stem, no extra parameter); ``blurpool`` wraps the strided
# convs as for the ResNets (the VGGs have none past the stem).

def _scaled(channels: int, width: int) -> int:
    """``channels`` at ``width`` (64 = as published), at least 1."""
    if width <= 0:
        raise DP4TLError(f"model.width must be a positive number of channels, got {width}")
    return max(1, round(channels * width / 64))


def _stem(out_ch: int, small_input: bool, stem_stride: int) -> tuple[nn.Conv2d, nn.Module]:
    """The first conv and what follows it (see the knobs above)."""
    if small_input:
        return nn.Conv2d(3, out_ch, 3, stem_stride, 1, bias=False), nn.Identity()
    return nn.Conv2d(3, out_ch, 3, 2, 1, bias=False), nn.MaxPool2d(3, 2, 1)


def _init_convnet(model: nn.Module) -> nn.Module:
    """He (kaiming) init of convs, BN at identity, as torchvision's ResNet."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride`` and zero-pad to ``out_ch``
    channels (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class CifarBasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or option-A) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = (PadShortcut(in_ch, out_ch, stride)
                                    if stride != 1 or in_ch != out_ch else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(_ClassifierMixin, nn.Module):
    """He et al. 2016's CIFAR ResNet (6n+2 layers, option-A shortcuts) with the
    :class:`Backbone` methods; the head is ``fc`` as in torchvision's ResNet (so brought weights
    are read the same way)."""

    def __init__(self, n: int, num_classes: int, *, width: int = 64, small_input: bool = True,
                 stem_stride: int = 1):
        super().__init__()
        chans = [_scaled(c, width) for c in (16, 32, 64)]
        self.conv1, self.maxpool = _stem(chans[0], small_input, stem_stride)
        self.bn1 = nn.BatchNorm2d(chans[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_ch = [], chans[0]
        for i, ch in enumerate(chans):
            blocks = []
            for j in range(n):
                blocks.append(CifarBasicBlock(in_ch, ch, 2 if i > 0 and j == 0 else 1))
                in_ch = ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_convnet(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def _set_classifier(self, head: nn.Linear) -> None:
        self.fc = head


#: conv widths per VGG-n ("M" = 2×2 max-pool), at width 64 (as published)
VGG_PLANS: dict[int, list[Any]] = {
    2: [64, "M", 256, "M"],
    4: [64, "M", 64, "M", 128, "M", 256, "M"],
    8: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M"],
}


class SmallVGG(_ClassifierMixin, nn.Module):
    """A VGG with ``n`` 3×3 conv-BN-ReLU layers (:data:`VGG_PLANS`), global average pooling and
    one linear head ``fc``; the :class:`Backbone` methods as for the ResNets."""

    def __init__(self, n: int, num_classes: int, *, width: int = 64, small_input: bool = True,
                 stem_stride: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, first = 3, True
        for v in VGG_PLANS[n]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # ceil: 1×1 maps stay 1×1
                continue
            ch = _scaled(int(v), width)
            if first:
                conv, pool = _stem(ch, small_input, stem_stride)
                layers += [conv, nn.BatchNorm2d(ch), nn.ReLU(inplace=True), pool]
                first = False
            else:
                layers += [nn.Conv2d(in_ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch),
                           nn.ReLU(inplace=True)]
            in_ch = ch
        self.features = nn.Sequential(*(m for m in layers if not isinstance(m, nn.Identity)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_convnet(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def _set_classifier(self, head: nn.Linear) -> None:
        self.fc = head


def _small(cls: type, n: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, *, blurpool: bool = False, small_input: bool = True,
              stem_stride: int = 1, width: int = 64) -> nn.Module:
        model = cls(n, num_classes, width=width, small_input=small_input, stem_stride=stem_stride)
        return apply_blurpool(model) if blurpool else model
    build.__doc__ = f"{cls.__name__} with n={n} (see the 'small surrogates' notes above)."
    return build


#: registry name → (family, n); depth = 6n+2 for the ResNets, n conv layers for the VGGs
SMALL_SURROGATES = {"resnet20s": (CifarResNet, 3), "resnet32s": (CifarResNet, 5),
                    "resnet44s": (CifarResNet, 7), "resnet56s": (CifarResNet, 9),
                    "vgg2": (SmallVGG, 2), "vgg4": (SmallVGG, 4), "vgg8": (SmallVGG, 8)}
for _name, (_cls, _n) in SMALL_SURROGATES.items():
    register(_name)(_small(_cls, _n))


def num_params(model: nn.Module) -> int:
    """Trainable parameters (what papers count as "Param. #")."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- helpers
def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def backbone(model: nn.Module) -> Backbone:
    """The plain model under wrappers, checked to implement :class:`Backbone`."""
    m = unwrap(model)
    if not isinstance(m, Backbone):
        raise DP4TLError(f"{type(m).__name__} does not implement the backbone interface "
                         "(forward_features / get_classifier / reset_classifier): register "
                         "models that do (see ffcv_dp4tl.training.models.Backbone)")
    return m


def get_head(model: nn.Module) -> nn.Linear:
    """The final classification layer (``get_classifier()``)."""
    return backbone(model).get_classifier()


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap in a freshly initialised head with ``num_classes`` outputs; returns it."""
    return backbone(model).reset_classifier(num_classes)


def feature_dim(model: nn.Module) -> int:
    """Width of the penultimate features (input of the classification head)."""
    return backbone(model).num_features


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features (``forward_features``) of the plain model under any wrapper, so
    ``get_head(m)(features(m, x)) == m(x)``."""
    return backbone(model).forward_features(x)
