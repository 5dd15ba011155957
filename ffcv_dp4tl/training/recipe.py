"""Recipes: every training knob in one TOML file, validated before any work starts.

A recipe is a TOML file (read with stdlib ``tomllib``) with the sections below; anything not
given takes the dataclass default. A top-level ``extends = "lp"`` starts from another recipe
(a name or a path relative to this file) and overrides it key by key — how a per-target
finetuning recipe stays three lines. ``load_recipe("resnet18_tiny_cpu")`` resolves a bare name to
the shipped ``resnet18_tiny_cpu.toml`` (the repository's top-level ``recipes/`` folder, installed
as the package data ``ffcv_dp4tl.recipes``; ``dp4tl recipes`` lists them); a path to a ``.toml``
file works wherever a name does. ``overrides`` such as
``["train.epochs=3", "lr.lr=0.2"]`` are applied on top (values parsed as TOML literals; bare
words fall back to strings). Unknown sections or keys and wrongly typed values raise a
:class:`DP4TLError` naming the file, the key and the expected type — so a typo in a recipe
fails in a second, not after an epoch of training.

Learning-rate convention (ffcv-imagenet style): ``lr.lr`` is the peak learning rate *per 256
images*; the optimiser uses ``lr.lr × global_batch / 256`` when ``lr.scale_with_batch`` is true.
ffcv-imagenet's values are absolute (its ``train_imagenet.py`` never rescales them): ResNet-18's
0.5 at batch 1024 is ``lr = 0.125`` here, ResNet-50's 1.7 at its global batch 4096 (512 per GPU
× 8) is ``lr = 0.10625``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contracts.choices import MAX_SEED
from ..contracts import AdvNorm, AdvUnits, Decode, FinetuneHead, FinetuneMode, StartFrom, TargetCrop
from ..contracts.images import MAX_RESOLUTION, NORMALIZATIONS
from ..errors import DP4TLError
from .recipe_files import parse_override, read_toml, recipes_dir, resolve_recipe_path

@dataclass
class ModelCfg:
    arch: str = "resnet18"
    blurpool: bool = True
    small_input: bool = False
    stem_stride: int = 1
    width: int = 64            # ResNet first-stage width (64 = torchvision)
    image_size: int = 224      # ViT only


@dataclass
class DataCfg:
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"   # finetune targets
    num_workers: int = 2
    seed: int = 0              # data order + augmentation seed (model init uses train.seed)
    decode: str = "cpu"        # cpu | gpu (JPEG decode + augment on the device) | auto
    # ffcv path: crops/flips seeded per (seed, epoch, sample) so two runs give identical weights
    # on CPU (ffcv's own augmentations use numba's unseedable per-thread RNG). WebDataset: always.
    deterministic: bool = False


@dataclass
class OptimCfg:
    name: str = "sgd"          # sgd | adam | adamw
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-5
    wd_on_bn_bias: bool = False  # ffcv-imagenet: no weight decay on BN / bias parameters
    label_smoothing: float = 0.1
    grad_clip: float = 0.0     # 0 = off


@dataclass
class LRCfg:
    schedule: str = "triangular"  # triangular | step | cosine | multistep | constant
    lr: float = 0.5            # peak lr per 256 images (see module doc)
    scale_with_batch: bool = True
    lr_peak_epoch: float = 2.0  # triangular: linear warmup 0 → peak by this epoch
    warmup_epochs: float = 0.0  # cosine / multistep: linear warmup
    step_ratio: float = 0.1    # step: lr × step_ratio every step_length epochs
    step_length: int = 30
    milestones: list[int] = field(default_factory=list)  # multistep (epochs)
    gamma: float = 0.1         # multistep factor
    min_lr: float = 0.0        # cosine floor (absolute)
    # SGD + triangular only: cycle the momentum against the lr as torch's CyclicLR does by
    # default (the authors' released pretraining: momentum optim.momentum at lr 0, base_momentum
    # at the peak, linear in the lr in between)
    cycle_momentum: bool = False
    base_momentum: float = 0.8  # CyclicLR's default base_momentum


@dataclass
class TrainCfg:
    epochs: int = 16
    batch_size: int = 1024     # global (split evenly across DDP ranks)
    seed: int = 0
    min_res: int = 160         # progressive resizing (ffcv-imagenet)
    max_res: int = 192
    start_ramp: int = 11
    end_ramp: int = 13
    res_multiple: int = 32     # resolutions are rounded to a multiple of this
    precision: str = "bf16"    # bf16 | fp16 | fp32 (CPU runs fp32 unless cpu_autocast)
    channels_last: bool = True  # CUDA only (and CPU with cpu_autocast)
    # CPU only: honour precision (torch.autocast on CPU) and channels_last as CUDA does, to
    # exercise the mixed-precision path without a GPU (slow, changes numerics; off by default,
    # and left out of the fingerprint while off so existing checkpoints keep resuming)
    cpu_autocast: bool = False
    compile: bool = False
    drop_last: bool = True     # ffcv-imagenet drops the last partial batch
    # Deprecated (a test hook): still accepted so old recipes load and every shipped recipe keeps
    # its fingerprint; true maps to callbacks.RecordSeen with a FutureWarning. Use
    # train(..., callbacks=[RecordSeen(out_dir)]) instead.
    record_seen: bool = False
    tensorboard: bool = False  # also log each epoch's metrics to OUT/tensorboard (extra `tensorboard`)
    # also keep checkpoint_e{N}.pt after these epochs: EL2N/GraNd score early-training models
    keep_epochs: list[int] = field(default_factory=list)
    # Supervised training only: photometric jitter of the training batches, [brightness,
    # contrast, saturation, hue] as in torchvision's ColorJitter (applied batched on the device,
    # training/ssl_augment.py), each image with probability p_color_jitter. Empty = off (the
    # paper's recipes: RRC + flip only; off keeps their fingerprints). The embedded surrogates
    # use it so target domains with another brightness/contrast still map (docs/synth.md).
    color_jitter: list[float] = field(default_factory=list)
    p_color_jitter: float = 0.8
    # Supervised training only: the random-resized crop's area range [min, max] (a fraction of
    # the image). [0.08, 1] is the ImageNet recipes' (and ffcv-imagenet's); the embedded 32 px
    # surrogates use [0.35, 1], since an 8 % crop of a 32 px image often misses the object
    # (docs/synth.md, "What limits the surrogate").
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    # Supervised training only: the random-resized crop's aspect range [min, max] (w / h).
    # [3/4, 4/3] is torchvision's and ffcv's; [1, 1] with a fixed crop_scale [a, a] is a random
    # square crop of side sqrt(a) at a random position (the authors' CIFAR FF: Resize(182) +
    # RandomCrop(160), paper_code/ff_cifar10). FF reads both too.
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    # Supervised training only: white-balance jitter, every image's R, G, B scaled by
    # exp(U(-w, w)) each (0 = off, the default and out of the fingerprint). A colour temperature
    # moves hues, and a surrogate that reads classes from hue then maps a warm-toned target to
    # the wrong classes; 0.2 covers R x1.15 / B x0.8 (docs/synth.md: synth's `warm` target).
    white_balance: float = 0.0
    # also keep best.pt: the checkpoint of the evaluated epoch with the best val top-1 (the
    # authors' released trainer keeps best.ckpt, and finetunes from it; finetune.start_from)
    keep_best: bool = False
    # also write checkpoint.pt after every N-th training step of each epoch (counted from the
    # epoch's start; 0 = only at the end of each epoch). For epochs long enough that losing one to a preemption hurts (ImageNet-21K on
    # one node, a slow shared file system): a rerun resumes at the last such step, on the same
    # samples, learning rates and RNG streams, so the result does not depend on N (left out of
    # the fingerprints). Costs one checkpoint write (about a second for RN-101) per N steps.
    checkpoint_every: int = 0


@dataclass
class EvalCfg:
    every: int = 1             # evaluate every N epochs (and always after the last)
    batch_size: int = 512
    resolution: int = 256      # ffcv-imagenet val_res
    flip_tta: bool = True


@dataclass
class FinetuneCfg:
    mode: str = "lp"           # lp: linear probe on frozen features | ff: full finetune
    resolution: int = 224
    train_augment: bool = True  # ff only; lp trains on cached center-crop features
    #: LP on augmented images (RRC + flip, the paper's A.1 "all finetuning experiments"): the frozen
    #: backbone's features are recomputed every epoch (a forward pass per epoch) instead of cached
    lp_augment: bool = False
    #: how LP's cached train features read the images (lp_augment off): "center" = the eval
    #: transform's 224/256 centre crop; "none" = the whole short side (the largest centred
    #: square) at finetune.resolution — the authors' released LP loader (RRC with scale and
    #: ratio (1, 1), no flip). The test images: finetune.test_crop.
    lp_crop: str = "center"
    #: the classifier finetuning trains: "new" (a freshly initialised target-sized linear head)
    #: or "source" (the source model's own head and weights: target label c is its output c and
    #: a prediction is the argmax over all its outputs — the authors' released transfer script
    #: keeps the 1000-way ImageNet head). LP trains that head alone, FF everything.
    head: str = "new"
    #: which checkpoint of the source pretraining finetuning starts from: "final" (the last
    #: epoch) or "best" (the epoch with the best pruned-val top-1: the pretraining recipe must
    #: keep it, train.keep_best = true) — the authors' released configs load best.ckpt
    start_from: str = "final"
    #: the channel statistics the target images are normalised with (LP and FF, train and
    #: test): "imagenet" (the source's, the default) or "cifar10" (the authors' released CIFAR
    #: loader, `src/data/cifar10.py`: paper_code/*_cifar10)
    normalize: str = "imagenet"
    #: how the target's test images are read: "center" (the eval transform's 224/256 centre
    #: crop) or "none" (the whole short side at finetune.resolution: the released CIFAR loader's
    #: Resize((160, 160)), the same for CIFAR's square images)
    test_crop: str = "center"


@dataclass
class ScoringCfg:
    """How the surrogate reads the images it scores: the *target* images (LM votes, FM's target
    features) and the *source* images of the feature-based methods (``source_*``). ``target_resolution = 0`` reads them at the surrogate's ``eval.resolution``;
    ``target_crop = "center"`` takes the eval transform's 224/256 centre crop of the short side
    (the fast protocol: what the surrogate saw at validation). The paper resizes the target images
    to the source resolution (Sec. 4; the authors' code: 224, no crop): ``target_resolution = 224``
    and ``target_crop = "none"``, i.e. the whole short side (the largest centred square; ffcv's
    decoders have no aspect-changing resize, so a non-square image loses the ends of its long
    side, never any zoom) resized to 224. Source images are read with the eval transform unless
    ``source_resolution`` / ``source_crop`` say otherwise (the authors' feature_gen.py: 224, no
    crop)."""
    target_resolution: int = 0   # 0 = the surrogate's eval.resolution
    target_crop: str = "center"  # center (224/256 centre crop) | none (whole short side)
    #: how the surrogate reads the *source* images whose features FM, MODERATE, SP, SSP and
    #: INFMAX/INFSUM use (same meaning as target_*): the fast protocol keeps the surrogate's eval
    #: transform; the authors' feature_gen.py reads them at 224 with no crop, like the target
    source_resolution: int = 0
    source_crop: str = "center"
    #: scorer options this recipe's protocol sets, METHOD.NAME=VALUE (e.g. "grand.grad=full");
    #: the pipeline applies those of its method under the user's --opt
    scorer_options: list[str] = field(default_factory=list)


@dataclass
class SSLCfg:
    """Self-supervised pretraining (the FM setting's unlabeled sources). ``method = "none"``
    trains supervised; ``"moco_v2"`` trains MoCo v2 (He et al. 2020; Chen et al. 2020): two
    augmented views, a momentum key encoder, a queue of negatives and the InfoNCE loss."""
    method: str = "none"       # none | moco_v2
    dim: int = 128             # projection output (MoCo v2: 128); the MLP hidden layer = feature width
    queue_size: int = 65536    # negatives kept from earlier batches (MoCo: 65536)
    momentum: float = 0.999    # key encoder EMA
    temperature: float = 0.2
    # One process: BN statistics per sub-batch of batch/bn_splits with the keys shuffled between
    # sub-batches, standing in for MoCo's per-GPU BN + cross-GPU shuffle (which DDP runs use).
    bn_splits: int = 8
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])  # b, c, s, hue
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])


@dataclass
class AdvCfg:
    """PGD adversarial pretraining (Madry et al. 2018; the paper's Tab. 5 DENSE-ADV / LM-ADV,
    after Salman et al. 2020). ``steps = 0`` trains on clean images (the default; the section
    then stays out of the fingerprint). Each training batch is replaced by its ``steps``-step PGD
    perturbation within the ``norm`` ball of radius ``eps``, measured in **pixel units of [0, 1]**
    (the attack works on the un-normalised image and clamps it to [0, 1]: Linf 3/255 or 4/255,
    L2 3.0 as in Salman et al.). ``eps`` and ``step_size`` also accept a fraction string,
    ``"3/255"``. The attack itself: :mod:`.adversarial`."""
    steps: int = 0             # PGD steps per batch; 0 = off
    eps: float = 0.0           # radius in [0, 1] pixel units (linf: <= 1)
    step_size: float = 0.0     # 0 = 2.5 * eps / steps (Madry et al.; the robustness library)
    norm: str = "linf"         # linf | l2
    random_start: bool = True  # start from a random point of the ball (Madry et al.)
    #: units of the step and the random start: "pixel" ([0, 1] pixels, like eps) or
    #: "normalized" (the model's normalised input, i.e. x std per channel in pixels, ~0.225:
    #: the authors' released adv_imagenet_train_from_scratch.py); the projection onto the eps
    #: ball and the [0, 1] box is in pixels either way. Linf only.
    units: str = "pixel"


@dataclass
class Recipe:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    lr: LRCfg = field(default_factory=LRCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    finetune: FinetuneCfg = field(default_factory=FinetuneCfg)
    ssl: SSLCfg = field(default_factory=SSLCfg)
    scoring: ScoringCfg = field(default_factory=ScoringCfg)
    adv: AdvCfg = field(default_factory=AdvCfg)
    name: str = ""             # recipe file stem (not a TOML key)
    #: what its file is for, read from it (not a TOML key): "finetune" when the file (with its
    #: `extends`) has a [finetune] section, "train" otherwise; "" for a Recipe built in code
    kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("name"), d.pop("kind")
        if d["ssl"] == dataclasses.asdict(SSLCfg()):
            d.pop("ssl")  # supervised recipes keep the fingerprints they had before [ssl] existed
        if d["data"]["decode"] == "cpu":
            d["data"].pop("decode")  # likewise for recipes from before data.decode existed
        if not d["data"]["deterministic"]:
            d["data"].pop("deterministic")  # and from before data.deterministic existed
        if not d["train"]["cpu_autocast"]:
            d["train"].pop("cpu_autocast")  # and from before train.cpu_autocast existed
        if d["scoring"] == dataclasses.asdict(ScoringCfg()):
            d.pop("scoring")  # and from before [scoring] existed
        if d["adv"]["steps"] == 0:
            d.pop("adv")  # clean training, whatever else [adv] says: the old fingerprints
        if not d["train"]["color_jitter"]:
            d["train"].pop("color_jitter")  # and from before train.color_jitter existed
            d["train"].pop("p_color_jitter")
        if not d["finetune"]["lp_augment"]:
            d["finetune"].pop("lp_augment")  # and from before finetune.lp_augment existed
        # and from before the paper-code protocol's knobs existed (each at its default)
        for sec, key, default in (("lr", "cycle_momentum", False), ("lr", "base_momentum", 0.8),
                                  ("train", "keep_best", False), ("finetune", "lp_crop", "center"),
                                  ("finetune", "start_from", "final"), ("finetune", "head", "new"),
                                  ("scoring", "source_resolution", 0),
                                  ("scoring", "source_crop", "center"),
                                  ("scoring", "scorer_options", []), ("adv", "units", "pixel"),
                                  ("train", "crop_scale", [0.08, 1.0]),
                                  ("train", "crop_ratio", [3 / 4, 4 / 3]),
                                  ("finetune", "normalize", "imagenet"),
                                  ("finetune", "test_crop", "center"),
                                  ("train", "white_balance", 0.0),
                                  ("train", "checkpoint_every", 0)):
            if sec in d and d[sec].get(key) == default:
                d[sec].pop(key)
        return d

    def fingerprint(self) -> str:
        """Hash of every knob that can change a result (benchmark rows and VTAB settings pair
        only under it). Pure logging switches (:data:`NOT_IN_FINGERPRINT`) are left out, so
        turning TensorBoard on for a resumed run (or a cached pipeline stage) changes nothing."""
        return self._hash(drop_sections=())

    def training_fingerprint(self) -> str:
        """Hash of every knob that can change the *trained weights*: a checkpoint only resumes,
        and a pipeline's surrogate or pretraining stage is only reused, under the same one. It
        leaves out :data:`NOT_IN_TRAINING` ([scoring]: how a trained surrogate reads the images
        it scores), so moving a surrogate recipe from the fast scoring protocol to the paper's
        reuses the trained surrogate; the score stage's key and ``scores.json`` hold those
        knobs instead. Equal to :meth:`fingerprint` for a recipe at the [scoring] defaults."""
        return self._hash(drop_sections=NOT_IN_TRAINING)

    def _hash(self, drop_sections: tuple[str, ...]) -> str:
        d = fingerprinted(self.to_dict(), drop_sections)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "Recipe":
        """A recipe read back (a checkpoint's): its sizes were checked when it was loaded, and
        a finetuning run's [model] is not its model, so they are not checked again."""
        return _build(data, source, check_sizes=False)


#: (section, key) pairs that change logging or checkpointing, never a trained weight
NOT_IN_FINGERPRINT = (("train", "tensorboard"), ("train", "checkpoint_every"))
#: (section, key) pairs hashed as their default whatever their value: how many threads load the
#: data, which never changes a sample or its order (:class:`~..data.sampling.EpochPlan`, crops
#: seeded per sample). The count a run uses already follows the node's cores
#: (:func:`~..data.resources.effective_workers`), so keying the asked-for count refused a requeue
#: that lowered it (a stuck WebDataset worker, a smaller node) and checked nothing. On CPU torch's
#: thread count follows it, so weights may differ in the last bits: as on another machine.
#: Hashed as the default, not left out, so a fingerprint of a recipe at the default stays as it
#: was before 2026-12-05.
HASHED_AS_DEFAULT = (("data", "num_workers"),)
#: sections read only after training (by the score stage), never by the trainer: out of
#: :meth:`Recipe.training_fingerprint`
NOT_IN_TRAINING = ("scoring",)


def fingerprinted(d: dict[str, Any], drop_sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a fingerprint hashes of a recipe's dict form ``d`` (``Recipe.to_dict()``, or one a
    checkpoint recorded): ``d`` without :data:`NOT_IN_FINGERPRINT`'s keys and ``drop_sections``
    (:data:`NOT_IN_TRAINING` for :meth:`Recipe.training_fingerprint`), with
    :data:`HASHED_AS_DEFAULT`'s keys at their defaults. A copy; ``d`` stays."""
    out = {sec: dict(v) if isinstance(v, dict) else v for sec, v in d.items()
           if sec not in drop_sections}
    for sec, key in NOT_IN_FINGERPRINT:
        if isinstance(out.get(sec), dict):
            out[sec].pop(key, None)
    for sec, key in HASHED_AS_DEFAULT:
        if isinstance(out.get(sec), dict) and key in out[sec]:
            out[sec][key] = getattr(SECTIONS[sec](), key)
    return out


def result_overrides(overrides: typing.Iterable[str]) -> list[str]:
    """The ``section.key=value`` overrides that can change a result, in order: those of
    :data:`NOT_IN_FINGERPRINT` keys (TensorBoard, the mid-epoch checkpoint cadence) and of
    :data:`HASHED_AS_DEFAULT` keys (the loader's thread count) left out, as the fingerprints
    leave them out. What a stage key or a bench row's settings key holds of a ``--set*`` list.
    Overrides are checked when the recipe loads; one that does not parse is kept (it never
    reaches a key unchecked)."""
    return [text for text in overrides if override_key(text) not in
            (*NOT_IN_FINGERPRINT, *HASHED_AS_DEFAULT)]


def training_overrides(overrides: typing.Iterable[str]) -> list[str]:
    """:func:`result_overrides` less those of :data:`NOT_IN_TRAINING` sections (read after
    training): what a stage key of trained weights holds, like
    :meth:`Recipe.training_fingerprint`."""
    return [text for text in result_overrides(overrides)
            if override_key(text)[0] not in NOT_IN_TRAINING]


def override_key(text: str) -> tuple[str | None, str | None]:
    """``(section, key)`` of an override, ``(None, None)`` for one that does not parse (the
    recipe's loader refuses it, naming it)."""
    try:
        return tuple(parse_override(text)[:2])
    except DP4TLError:
        return None, None


SECTIONS: dict[str, type] = {k: v for k, v in typing.get_type_hints(Recipe).items() if k not in ("name", "kind")}


def _section_types(section_cls) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _check_value(source: str, key: str, value: Any, expected: Any) -> Any:
    """Return ``value`` converted to ``expected`` (int → float allowed) or raise DP4TLError."""
    origin = typing.get_origin(expected)
    name = getattr(expected, "__name__", str(expected))
    if origin is list:
        (inner,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise DP4TLError(f"{source}: {key} must be a list of {inner.__name__}, got "
                             f"{type(value).__name__} {value!r}")
        return [_check_value(source, f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise DP4TLError(f"{source}: {key} must be int, got bool {value!r}")
    if not isinstance(value, expected):
        raise DP4TLError(f"{source}: {key} must be {name}, got {type(value).__name__} {value!r}")
    return value


def _check_names(data: dict[str, Any], source: str) -> None:
    """Every section and key of ``data`` is one a recipe has (values are :func:`_build`'s)."""
    for sec, body in data.items():
        if sec not in SECTIONS and not isinstance(body, dict):  # (a key before any [section])
            raise DP4TLError(f"{source}: unknown top-level key {sec!r} (a recipe's keys live in "
                             f"sections: {', '.join(SECTIONS)}; the top level holds `extends` "
                             "only; a description goes in a # comment on the first line)")
        if sec not in SECTIONS:
            raise DP4TLError(f"{source}: unknown section [{sec}]; valid sections: "
                             f"{', '.join(SECTIONS)}")
        if not isinstance(body, dict):
            raise DP4TLError(f"{source}: [{sec}] must be a table of keys, got {body!r}")
        types = _section_types(SECTIONS[sec])
        for key in body:
            if key not in types:
                raise DP4TLError(f"{source}: unknown key {sec}.{key}; valid keys in [{sec}]: "
                                 f"{', '.join(types)}")


def _build(data: dict[str, Any], source: str, kind: str = "", check_sizes: bool = True) -> Recipe:
    """The validated :class:`Recipe` of ``data``; ``kind`` is what it is for ("finetune": its
    [model] is not what finetuning builds, the source checkpoint is; "train" or ""), and
    ``check_sizes`` whether a fixed-size model's input sizes are checked
    (:func:`_validate_input_size`)."""
    recipe = Recipe()
    _check_names(data, source)
    for sec, body in data.items():
        target = getattr(recipe, sec)
        for key, value in body.items():
            setattr(target, key, _typed(source, sec, key, value))
    _validate_choices(recipe, source)
    if check_sizes and kind != "finetune":
        _validate_input_size(recipe, source)
    return recipe


#: float keys that also accept a fraction string such as "3/255" (pixel-unit radii)
_FRACTION_KEYS = {("adv", "eps"), ("adv", "step_size")}


def _typed(source: str, sec: str, key: str, value: Any) -> Any:
    """``value`` of ``sec.key`` (a known key: :func:`_check_names`) as its field's type, a
    fraction key's "3/255" as its number: the one type rule of a recipe's values, for a file's
    and an override's (:func:`_build`, :func:`check_overrides`)."""
    if (sec, key) in _FRACTION_KEYS and isinstance(value, str):
        value = _fraction(source, f"{sec}.{key}", value)
    return _check_value(source, f"{sec}.{key}", value, _section_types(SECTIONS[sec])[key])


def check_overrides(overrides: list[str] | tuple[str, ...], where: str, kind: str = "",
                    recipe: str = "its recipe") -> None:
    """Check ``section.key=value`` overrides without a recipe: each parses, names a section and
    key a recipe has, and has a value of that key's type (the rules :func:`load_recipe` applies,
    so a bad one is wrong for every recipe). ``where`` is the option that gave them (``--set``),
    each message names it with the override; ``kind`` "train": ``recipe`` (how the message calls
    it) trains, so ``finetune.*`` is refused. What needs the recipe itself (a range, a
    combination of values) is checked when it loads (the pipeline loads each of its recipes
    before any work: ``pipeline.config.validate``)."""
    if isinstance(overrides, (str, bytes)):
        _apply_overrides({}, overrides, where)  # (refuses a string instead of a list)
    for text in overrides:
        try:
            sec, key, value = parse_override(text)
        except DP4TLError as e:
            raise DP4TLError(f"{where}: {e}") from None
        source = f"{where} {text.strip()}"
        _check_names({sec: {key: value}}, source)
        _typed(source, sec, key, value)
    _refuse_finetune_overrides(kind, overrides, recipe)


def _fraction(source: str, key: str, text: str) -> float:
    """``"3/255"`` → 3/255; any other string is a one-line error naming ``key``."""
    num, sep, den = text.partition("/")
    try:
        value = float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError):
        raise DP4TLError(f"{source}: {key} must be a number or a fraction such as \"3/255\", "
                         f"got {text!r}") from None
    return value


_CHOICES = {
    ("optim", "name"): ("sgd", "adam", "adamw"),
    ("lr", "schedule"): ("triangular", "step", "cosine", "multistep", "constant"),
    ("train", "precision"): ("bf16", "fp16", "fp32"),
    ("finetune", "mode"): FinetuneMode.values(),
    ("ssl", "method"): ("none", "moco_v2"),
    ("data", "decode"): Decode.values(),
    ("scoring", "target_crop"): TargetCrop.values(),
    ("scoring", "source_crop"): TargetCrop.values(),  # (the same two crops, for source images)
    ("finetune", "lp_crop"): TargetCrop.values(),
    ("finetune", "test_crop"): TargetCrop.values(),
    ("finetune", "normalize"): tuple(NORMALIZATIONS),
    ("finetune", "start_from"): StartFrom.values(),
    ("finetune", "head"): FinetuneHead.values(),
    ("adv", "norm"): AdvNorm.values(),
    ("adv", "units"): AdvUnits.values(),
}


def _validate_choices(r: Recipe, source: str) -> None:
    for (sec, key), allowed in _CHOICES.items():
        v = getattr(getattr(r, sec), key)
        if v not in allowed:
            raise DP4TLError(f"{source}: {sec}.{key} = {v!r} is not one of {', '.join(allowed)}")
    positive = [("train", "epochs"), ("train", "batch_size"), ("eval", "batch_size"),
                ("eval", "every"), ("train", "res_multiple"), ("train", "min_res"),
                ("train", "max_res"), ("eval", "resolution")]
    for sec, key in positive:
        if getattr(getattr(r, sec), key) <= 0:
            raise DP4TLError(f"{source}: {sec}.{key} must be > 0")
    _validate_ranges(r, source)
    ssl = r.ssl
    if ssl.method != "none":
        if ssl.dim <= 0 or ssl.queue_size <= 0 or ssl.bn_splits <= 0 or ssl.temperature <= 0:
            raise DP4TLError(f"{source}: ssl.dim, ssl.queue_size, ssl.bn_splits and "
                             "ssl.temperature must be > 0")
        if not 0.0 <= ssl.momentum < 1.0:
            raise DP4TLError(f"{source}: ssl.momentum must be in [0, 1), got {ssl.momentum}")
        if len(ssl.crop_scale) != 2 or not 0 < ssl.crop_scale[0] <= ssl.crop_scale[1] <= 1:
            raise DP4TLError(f"{source}: ssl.crop_scale must be [min, max] with 0 < min <= max <= 1")
        if len(ssl.jitter) != 4 or len(ssl.blur_sigma) != 2:
            raise DP4TLError(f"{source}: ssl.jitter needs 4 values (brightness, contrast, "
                             "saturation, hue) and ssl.blur_sigma 2 (min, max)")
        if ssl.jitter[3] > 0.5:  # (torchvision's ColorJitter: hue in [0, 0.5])
            raise DP4TLError(f"{source}: ssl.jitter's hue (the 4th value) must be <= 0.5, got "
                             f"{ssl.jitter[3]}")
        if ssl.blur_sigma[0] > ssl.blur_sigma[1]:  # (it failed at the first step, a traceback)
            raise DP4TLError(f"{source}: ssl.blur_sigma must be [min, max] with min <= max, got "
                             f"{ssl.blur_sigma}")
        if r.train.batch_size % ssl.bn_splits:
            raise DP4TLError(f"{source}: train.batch_size ({r.train.batch_size}) must be "
                             f"divisible by ssl.bn_splits ({ssl.bn_splits})")
        jitter = [k for k, on in (("train.color_jitter", r.train.color_jitter),
                                  ("train.white_balance", r.train.white_balance),
                                  ("train.crop_scale", list(r.train.crop_scale) != [0.08, 1.0]),
                                  ("train.crop_ratio", list(r.train.crop_ratio) != [3 / 4, 4 / 3]))
                  if on]
        if jitter:  # (MoCo's views take their crops and photometric augmentation from [ssl])
            raise DP4TLError(f"{source}: {' and '.join(jitter)} apply to supervised training "
                             f"only; ssl.method = {ssl.method!r} augments its views with "
                             "ssl.crop_scale, ssl.jitter, ssl.p_gray and ssl.p_blur: leave "
                             f"{'them at their defaults' if len(jitter) > 1 else 'it at its default'}")
    cs = r.train.crop_scale
    if len(cs) != 2 or not 0 < cs[0] <= cs[1] <= 1:
        raise DP4TLError(f"{source}: train.crop_scale must be [min, max] with 0 < min <= max <= 1, "
                         f"got {cs}")
    cr = r.train.crop_ratio
    if len(cr) != 2 or not 0 < cr[0] <= cr[1]:
        raise DP4TLError(f"{source}: train.crop_ratio must be [min, max] with 0 < min <= max, "
                         f"got {cr}")
    if r.train.color_jitter and (len(r.train.color_jitter) != 4 or r.train.color_jitter[3] > 0.5):
        raise DP4TLError(f"{source}: train.color_jitter needs 4 values [brightness, contrast, "
                         f"saturation, hue] with hue <= 0.5 (or [] for none), got "
                         f"{r.train.color_jitter}")
    for text in r.scoring.scorer_options:
        method, dot, rest = text.partition(".")
        if not dot or "=" not in rest or not method or rest.startswith("="):
            raise DP4TLError(f"{source}: scoring.scorer_options entry {text!r} must look like "
                             "METHOD.NAME=VALUE, e.g. \"grand.grad=full\"")
    _validate_lr(r, source)
    _validate_adv(r, source)
    if r.train.min_res > r.train.max_res:
        raise DP4TLError(f"{source}: train.min_res ({r.train.min_res}) > train.max_res "
                         f"({r.train.max_res})")
    from .schedule import resolution  # (imports this module)

    # the schedule never shrinks (min_res <= max_res, checked above), so its last epoch is its
    # largest: no loop over epochs, which hung on a huge train.epochs
    largest = resolution(r.train, r.train.epochs - 1)
    if largest > MAX_RESOLUTION:  # rounding to res_multiple can pass max_res (it failed mid-run)
        raise DP4TLError(f"{source}: the resolution schedule (train.min_res {r.train.min_res}, "
                         f"max_res {r.train.max_res}, rounded to a multiple of train.res_multiple "
                         f"{r.train.res_multiple}) reaches {largest} px, above {MAX_RESOLUTION}; "
                         "lower them")


#: Architectures that take images of exactly ``model.image_size`` px and no other size, with the
#: side ``image_size`` must be a multiple of: a ViT's position embeddings are sized for its
#: patch grid, and torchvision's VisionTransformer asserts the input's height and width at the
#: first batch (a traceback after a bench's or a pipeline's earlier runs had trained) and the
#: patch multiple when built. The shipped ones are listed here so a recipe is checked without
#: importing torch (`dp4tl recipes`); :func:`~.models.register` adds any other builder that
#: takes the ``image_size`` knob (multiple 1: unknown).
FIXED_SIZE_ARCHS: dict[str, int] = {"vit_b_16": 16}


def _validate_input_size(r: Recipe, source: str) -> None:
    """A fixed-size model (:data:`FIXED_SIZE_ARCHS`) must be fed ``model.image_size`` px by
    every reader of a training recipe: the training resolution schedule (rounded to
    ``train.res_multiple``, as the loader does), ``eval.resolution`` and the surrogate's
    ``scoring.*_resolution`` where set (0 = eval.resolution). One line naming each resolution
    that differs and what to set. (A finetuning recipe feeds the *source* model
    ``finetune.resolution``: :func:`check_fed_size` with the source's arch and image_size.)"""
    arch, size = r.model.arch, r.model.image_size
    if arch not in FIXED_SIZE_ARCHS:
        return
    from .schedule import resolution  # (imports this module)

    t = r.train
    # (key, value, the size it feeds); the schedule never shrinks (min_res <= max_res): its
    # first and last epochs bound it
    fed = [("train.min_res", t.min_res, resolution(t, 0)),
           ("train.max_res", t.max_res, resolution(t, t.epochs - 1)),
           ("eval.resolution", r.eval.resolution, r.eval.resolution)]
    for key in ("target_resolution", "source_resolution"):
        value = getattr(r.scoring, key)
        if value:
            fed.append((f"scoring.{key}", value, value))
    check_fed_size(arch, size, fed, source, res_multiple=t.res_multiple)


def check_fed_size(arch: str, image_size: int, fed: list[tuple[str, int, int]], source: str,
                   res_multiple: int | None = None, sized_here: bool = True) -> None:
    """Refuse, in one line, feeding the fixed-size model ``arch`` (:data:`FIXED_SIZE_ARCHS`)
    built at ``image_size`` images of another size: ``fed`` holds (key, its value, the side it
    feeds) for each reader; ``res_multiple`` is train.res_multiple where the training schedule
    is among them (it rounds train.min_res / max_res). Names the keys that differ, and says to
    set model.image_size to the one size they feed (where it is a valid size for ``arch``) or
    them to ``image_size``; ``sized_here=False`` (a model already trained, as finetuning's
    source) says only the latter. No-op for any other architecture."""
    multiple = FIXED_SIZE_ARCHS.get(arch)
    if multiple is None:
        return
    what = f"model.arch = {arch!r} takes images of exactly model.image_size = {image_size} px"
    if image_size % multiple:
        raise DP4TLError(f"{source}: {what}, which must be a multiple of its patch size "
                         f"{multiple}; set model.image_size to one (e.g. "
                         f"{max(multiple, round(image_size / multiple) * multiple)})")
    bad = [(key, value, got) for key, value, got in fed if got != image_size]
    if not bad:
        return
    shown = ", ".join(f"{key} = {value}" + (f" (read at {got} px: a multiple of "
                                            f"train.res_multiple = {res_multiple})"
                                            if got != value else "")
                      for key, value, got in bad)
    sizes = {got for _, _, got in fed}
    fixes = []
    if sized_here and len(sizes) == 1 and next(iter(sizes)) % multiple == 0:
        fixes.append(f"model.image_size={next(iter(sizes))}")
    keys = sorted({key for key, _, _ in bad}, key=[k for k, _, _ in fed].index)
    named = keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} and {keys[-1]}"
    to_size = f"{named} to {image_size}"
    if res_multiple and any(k.startswith("train.") for k in keys) and image_size % res_multiple:
        to_size += f" with train.res_multiple a divisor of {image_size}"
    fixes.append(to_size)
    raise DP4TLError(f"{source}: {what} (its position embeddings are sized for it), but it "
                     f"would be fed {shown}; set {' or '.join(fixes)}")


def check_source_fed(arch: str, model_kwargs: dict, recipe: "Recipe", source: str) -> None:
    """A fixed-size source model (a ViT: :data:`FIXED_SIZE_ARCHS`) is finetuned at its own
    image size only: finetuning reads the target at ``finetune.resolution``, and a ViT
    pretrained at 16 px died at the first batch with torchvision's "Wrong image height!"
    traceback, after the pretraining (review of the recipe check). ``model_kwargs``: the
    source checkpoint's (its ``image_size``, else the model's default); ``source`` names it."""
    size = model_kwargs.get("image_size", ModelCfg().image_size)
    res = recipe.finetune.resolution
    check_fed_size(arch, size, [("finetune.resolution", res, res)],
                   f"finetune recipe {recipe.name or '(given)'} with the source model {source}",
                   sized_here=False)


def _validate_lr(r: Recipe, source: str) -> None:
    """The schedule's structure: a multistep schedule needs strictly increasing, positive
    milestones (value ranges such as gamma in (0, 1] are in _RANGES). (Milestones past
    train.epochs are allowed: they never fire, which is what a shortened run — `--set
    train.epochs=1` — wants.)"""
    lr = r.lr  # (value ranges of lr, gamma, min_lr, warmup: _RANGES)
    if lr.cycle_momentum and (lr.schedule != "triangular" or r.optim.name != "sgd"):
        raise DP4TLError(f"{source}: lr.cycle_momentum cycles SGD's momentum with the triangular "
                         f"schedule (torch's CyclicLR), but optim.name = {r.optim.name!r} and "
                         f"lr.schedule = {lr.schedule!r}; set lr.cycle_momentum = false")
    if lr.cycle_momentum and lr.base_momentum > r.optim.momentum:
        raise DP4TLError(f"{source}: lr.base_momentum ({lr.base_momentum}) is the momentum at the "
                         f"lr peak and must be <= optim.momentum ({r.optim.momentum})")
    if lr.schedule == "multistep":
        ms = lr.milestones
        if not ms:
            raise DP4TLError(f"{source}: lr.schedule = \"multistep\" needs lr.milestones (epochs "
                             "at which the lr is multiplied by lr.gamma), e.g. [30, 40]")
        if ms[0] <= 0 or any(b <= a for a, b in zip(ms, ms[1:])):
            raise DP4TLError(f"{source}: lr.milestones {ms} must be strictly increasing epochs > 0")


def _validate_adv(r: Recipe, source: str) -> None:
    """[adv] as a whole (value ranges: _RANGES): an attack needs a radius, Linf radii are pixel
    fractions (a value > 1 is a 0-255 number: "4" meant 4/255), and only a supervised objective
    has labels to attack."""
    a = r.adv
    if a.steps == 0:
        return
    if a.eps <= 0:
        raise DP4TLError(f"{source}: adv.steps = {a.steps} needs adv.eps > 0 (the radius in [0, 1] "
                         "pixel units, e.g. \"3/255\" for linf or 3.0 for l2)")
    if a.norm == "linf" and a.eps > 1:
        raise DP4TLError(f"{source}: adv.eps = {a.eps} is in [0, 1] pixel units for linf; for "
                         f"{a.eps:g}/255 write adv.eps = \"{a.eps:g}/255\"")
    if a.units == "normalized" and a.norm != "linf":
        raise DP4TLError(f"{source}: adv.units = \"normalized\" reproduces the authors' Linf "
                         f"script; with adv.norm = {a.norm!r} use adv.units = \"pixel\"")
    if r.ssl.method != "none":
        raise DP4TLError(f"{source}: adv.steps = {a.steps} attacks the classification loss, but "
                         f"ssl.method = {r.ssl.method!r} has no labels; set adv.steps = 0")


#: (section, key) → (low, high, low inclusive, high inclusive); None = unbounded. Lists are
#: checked element-wise. Values outside are one-line errors at load, before any work.
_RANGES: dict[tuple[str, str], tuple[float | None, float | None, bool, bool]] = {
    ("lr", "lr"): (0, None, False, True),
    ("lr", "min_lr"): (0, None, True, True),
    ("lr", "lr_peak_epoch"): (0, None, True, True),
    ("lr", "warmup_epochs"): (0, None, True, True),
    ("lr", "step_ratio"): (0, None, False, True),
    ("lr", "step_length"): (0, None, False, True),
    ("lr", "gamma"): (0, 1, False, True),
    ("lr", "milestones"): (0, None, True, True),
    ("optim", "momentum"): (0, 1, True, False),
    ("lr", "base_momentum"): (0, 1, True, False),
    # image sides in pixels (0 = eval.resolution for scoring's): bounded like every loader's
    ("scoring", "source_resolution"): (0, MAX_RESOLUTION, True, True),
    ("scoring", "target_resolution"): (0, MAX_RESOLUTION, True, True),
    ("train", "min_res"): (0, MAX_RESOLUTION, False, True),
    ("train", "max_res"): (0, MAX_RESOLUTION, False, True),
    ("eval", "resolution"): (0, MAX_RESOLUTION, False, True),
    ("optim", "betas"): (0, 1, True, False),
    ("optim", "weight_decay"): (0, None, True, True),
    ("optim", "label_smoothing"): (0, 1, True, False),
    ("optim", "grad_clip"): (0, None, True, True),
    ("train", "seed"): (0, MAX_SEED, True, True),  # (what torch and numpy take)
    ("train", "color_jitter"): (0, None, True, True),
    ("train", "p_color_jitter"): (0, 1, True, True),
    ("train", "white_balance"): (0, 1, True, True),
    ("train", "start_ramp"): (0, None, True, True),
    ("train", "end_ramp"): (0, None, True, True),
    ("train", "keep_epochs"): (1, None, True, True),
    ("train", "checkpoint_every"): (0, None, True, True),
    ("data", "seed"): (0, MAX_SEED, True, True),  # (what torch and numpy take)
    ("data", "num_workers"): (0, None, True, True),
    ("model", "width"): (0, None, False, True),
    ("model", "stem_stride"): (0, None, False, True),
    ("model", "image_size"): (0, MAX_RESOLUTION, False, True),
    ("finetune", "resolution"): (0, MAX_RESOLUTION, False, True),
    ("adv", "steps"): (0, 100, True, True),  # PGD steps per training step: 3 in the paper; over 100 is a typo
                                           # that multiplies the pretraining cost (PGD-100 is an eval attack)
    ("adv", "eps"): (0, None, True, True),
    ("adv", "step_size"): (0, None, True, True),
    ("ssl", "p_jitter"): (0, 1, True, True),
    ("ssl", "p_gray"): (0, 1, True, True),
    ("ssl", "p_blur"): (0, 1, True, True),
    ("ssl", "jitter"): (0, None, True, True),
    ("ssl", "blur_sigma"): (0, None, False, True),
}


#: the largest magnitude a float knob may have: torch computes in float32, and an lr of 1e300
#: was a traceback at the first step ("value cannot be converted to type float without
#: overflow"; API audit)
FLOAT_KNOB_MAX = 3.4028234663852886e38  # (numpy.finfo(numpy.float32).max)


def _validate_ranges(r: Recipe, source: str) -> None:
    import math

    for sec in SECTIONS:  # every float a finite number float32 holds (no nan / inf / 1e300)
        for key, value in dataclasses.asdict(getattr(r, sec)).items():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise DP4TLError(f"{source}: {sec}.{key} = {v} is not a finite number")
                if isinstance(v, float) and abs(v) > FLOAT_KNOB_MAX:
                    raise DP4TLError(f"{source}: {sec}.{key} = {v:g} is beyond float32's range "
                                     f"(|value| <= {FLOAT_KNOB_MAX:.4g}, what torch computes in)")
    for (sec, key), (lo, hi, lo_in, hi_in) in _RANGES.items():
        value = getattr(getattr(r, sec), key)
        for v in value if isinstance(value, list) else [value]:
            bad = ((lo is not None and (v < lo if lo_in else v <= lo))
                   or (hi is not None and (v > hi if hi_in else v >= hi)))
            if bad:
                rng = (f"{'[' if lo_in else '('}{lo if lo is not None else '-inf'}, "
                       f"{hi if hi is not None else 'inf'}{']' if hi_in and hi is not None else ')'}")
                raise DP4TLError(f"{source}: {sec}.{key} = {value!r} is impossible; it must be in {rng}")
    if len(r.optim.betas) != 2:
        raise DP4TLError(f"{source}: optim.betas needs 2 values, got {r.optim.betas!r}")


#: Every knob counted in epochs, and whether it is a whole number: what
#: :func:`epoch_scaling_overrides` stretches with ``train.epochs``, so a longer or shorter
#: training keeps its schedule's shape (lr warm-up and peak, steps, milestones, resolution ramp,
#: evaluation cadence, early checkpoints) at the same fraction of the run. A new epoch-counted
#: knob goes here, or it stays fixed in epochs when ``--pretrain-length steps`` stretches a run.
EPOCH_KNOBS: dict[tuple[str, str], bool] = {
    ("lr", "lr_peak_epoch"): False, ("lr", "warmup_epochs"): False, ("lr", "step_length"): True,
    ("lr", "milestones"): True, ("train", "start_ramp"): True, ("train", "end_ramp"): True,
    ("train", "keep_epochs"): True, ("eval", "every"): True,
}


def epoch_scaling_overrides(recipe: Recipe, epochs: int) -> list[str]:
    """The ``section.key=value`` overrides that train ``recipe`` for ``epochs`` epochs with every
    epoch-counted knob (:data:`EPOCH_KNOBS`) scaled by ``epochs / train.epochs``: whole-epoch
    knobs are rounded and kept at 1 or more (``eval.every``, ``lr.step_length``, a milestone or
    kept epoch), so the stretched run evaluates at the end as the original does. Knobs at their
    value already are left out; ``[]`` when ``epochs`` is the recipe's own."""
    old = recipe.train.epochs
    if epochs < 1:
        raise DP4TLError(f"{recipe.name or '<recipe>'}: train.epochs must be >= 1, got {epochs}")
    if epochs == old:
        return []
    f = epochs / old
    out = [f"train.epochs={epochs}"]
    for (sec, key), whole in EPOCH_KNOBS.items():
        value = getattr(getattr(recipe, sec), key)
        if isinstance(value, list):  # (rounding can merge two milestones: a set)
            new: Any = sorted({max(1, round(v * f)) for v in value}) if whole else [v * f for v in value]
        elif whole:
            new = max(1, round(value * f)) if value else value  # (a 0 ramp stays off)
        else:
            new = value * f
        if new != value:
            text = json.dumps(new) if isinstance(new, list) else repr(new)
            out.append(f"{sec}.{key}={text}")
    return out


def _apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], where: str) -> str:
    """Apply ``section.key=value`` overrides to a recipe's tables; returns the source name
    errors quote."""
    if isinstance(overrides, (str, bytes)):  # iterating it would apply it letter by letter
        raise DP4TLError(f"{where}: overrides must be a list of 'section.key=value' strings, "
                         f"not the string {overrides!r}: pass [{overrides!r}]")
    for text in overrides:
        sec, key, value = parse_override(text)
        data.setdefault(sec, {})
        if not isinstance(data[sec], dict):
            raise DP4TLError(f"{where}: [{sec}] is not a table")
        data[sec][key] = value
    return where + (f" (with overrides {list(overrides)})" if overrides else "")


def as_recipe(recipe: "Recipe | str | Path", overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """What ``train``/``finetune`` take: a :class:`Recipe`, a shipped name or a .toml file, with
    ``overrides`` applied in every case (to a Recipe object too: a copy, validated again)."""
    if not isinstance(recipe, Recipe):
        return load_recipe(recipe, overrides)
    if isinstance(overrides, (str, bytes)) or overrides:
        where = recipe.name or "<recipe>"
        _refuse_finetune_overrides(recipe.kind, overrides, where)
        # every value, not the fingerprint's form (to_dict leaves out [adv] when adv.steps is
        # 0, so an adv.steps override lost the recipe's eps and norm)
        data = dataclasses.asdict(recipe)
        data.pop("name"), data.pop("kind")
        built = _build(data, _apply_overrides(data, overrides, where), recipe.kind)
        built.name, built.kind = recipe.name, recipe.kind
        return built
    return recipe


def _refuse_finetune_overrides(kind: str, overrides: list[str] | tuple[str, ...],
                               name: str) -> None:
    """A ``finetune.KEY=VALUE`` override given with a training recipe (``kind`` "train") is
    refused: training never reads [finetune], so it was dropped without a word (and `dp4tl
    recipes NAME`, which leaves that section out of a training recipe's printout, showed the
    recipe as if it had been applied). The line says where finetune settings go."""
    if kind != "train" or isinstance(overrides, (str, bytes)):  # (the latter: _apply_overrides')
        return
    for text in overrides:
        if parse_override(text)[0] == "finetune":
            key, _, value = (part.strip() for part in text.partition("="))
            given = f"{key}={value}"
            raise DP4TLError(
                f"override {given}: {name} is a training recipe, which has no [finetune] "
                "section (training never reads one); finetune settings go with a finetuning "
                f"recipe: `dp4tl recipes lp --set {given}`, `dp4tl finetune lp|ff --set ...`, "
                "or `dp4tl pipeline --set-finetune ...`")


def check_kind(recipe: Recipe, kind: str, use: str) -> None:
    """Refuse a recipe file made for the other job: a pretraining recipe given to finetuning
    ran an LP with every [finetune] default, and an LP recipe given as the surrogate trained
    the default ResNet-50 for its 50 LP epochs, both in silence. ``use`` names the job (e.g.
    "finetuning", "--surrogate-recipe (training)")."""
    if not recipe.kind or recipe.kind == kind:
        return
    if kind == "finetune":
        raise DP4TLError(f"recipe {recipe.name} is a pretraining recipe (no [finetune] section) "
                         f"and cannot be used for {use}: use lp, ff or a recipe that extends "
                         "them (`dp4tl recipes`)")
    raise DP4TLError(f"recipe {recipe.name} is a finetuning recipe (it has a [finetune] "
                     f"section) and cannot be used for {use}: use a pretraining recipe such as "
                     "resnet50_16ep (`dp4tl recipes`)")


def load_recipe(path_or_name: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem is a DP4TLError naming file and key."""
    path = resolve_recipe_path(path_or_name)
    files: list[tuple[Path, dict[str, Any]]] = []
    data = read_toml(path, files=files)
    for file, own in files:  # a misspelt key is named in the file that holds it (extends)
        _check_names(own, str(file))
    kind = "finetune" if "finetune" in data else "train"  # (before --set can add a section)
    name = path.stem
    try:  # a recipe set's member keeps its set in its name ("paper/lp")
        rel = path.resolve().relative_to(recipes_dir().resolve())
        if len(rel.parts) > 1:
            name = rel.with_suffix("").as_posix()
    except ValueError:
        pass
    _refuse_finetune_overrides(kind, overrides, name)  # (before any value of it is checked)
    recipe = _build(data, _apply_overrides(data, overrides, str(path)), kind)
    recipe.name, recipe.kind = name, kind
    return recipe
