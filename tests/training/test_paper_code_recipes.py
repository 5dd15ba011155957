"""recipes/paper_code/ (``--protocol paper-code``) against the authors' released configs, and
against recipes/paper/ (the paper's text) wherever the two sources differ — per target.

The expected values are copied from OPTML-Group/DP4TL: configs/imagenet_transfer_to_downstream/
<target>_rn101{,_ff}.json, configs/imagenet_train_from_scratch/rn101_16.json and the scripts
named in docs/deviations.md."""
from __future__ import annotations

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.recipes import (PAPER_CODE_TARGET_RECIPES, recipe_scorer_options,
                                     recipe_set)
from ffcv_dp4tl.scoring.registry import get_scorer
from ffcv_dp4tl.training.recipe import load_recipe
from ffcv_dp4tl.training.recipe_files import SOURCE_RECIPES_DIR, list_recipes, recipe_description

#: the released FF optimiser per target: (optimizer, lr, weight decay)
RELEASED_FF = {"oxfordpets": ("adam", 1e-4, 0.0), "flowers102": ("adam", 1e-4, 0.0),
               "dtd": ("adam", 1e-4, 0.0), "ucf101": ("adam", 1e-4, 0.0),
               "cifar10": ("adam", 1e-4, 0.0), "food101": ("sgd", 0.1, 5e-4),
               "stanfordcars": ("sgd", 0.1, 5e-4), "sun397": ("sgd", 0.1, 5e-4)}
TARGETS = sorted(RELEASED_FF)


def _ft(protocol: str, target: str, mode: str):
    return load_recipe(recipe_set(protocol, "full", target)[mode])


def test_every_released_target_has_its_recipes():
    assert sorted(PAPER_CODE_TARGET_RECIPES) == TARGETS
    names = [n for n in list_recipes(sets=True) if n.startswith("paper_code/")]
    assert sorted(names) == sorted(f"paper_code/{p.stem}"
                                   for p in (SOURCE_RECIPES_DIR / "paper_code").glob("*.toml"))
    for n in names:
        assert load_recipe(n).name == n and recipe_description(n)


@pytest.mark.parametrize("target", TARGETS)
def test_ff_per_target_as_released_and_unlike_the_text(target):
    code, text = _ft("paper-code", target, "ff"), _ft("paper", target, "ff")
    name, lr, wd = RELEASED_FF[target]
    assert (code.optim.name, code.lr.lr, code.optim.weight_decay) == (name, lr, wd)
    assert (code.train.batch_size, code.train.epochs, code.lr.schedule) == (128, 200, "cosine")
    assert code.optim.wd_on_bn_bias and code.train.precision == "fp16"
    assert code.finetune.start_from == "best" and code.finetune.train_augment
    if name == "sgd":
        assert code.optim.momentum == 0.9 and not code.optim.nesterov
    # the text: Adam, lr 0.01, wd 5e-4, batch 256 for every target
    assert (text.optim.name, text.lr.lr, text.optim.weight_decay, text.train.batch_size) == \
        ("adam", 0.01, 5e-4, 256)
    assert code.lr.lr != text.lr.lr and code.train.batch_size != text.train.batch_size
    assert (code.optim.name != text.optim.name) == (name == "sgd")
    assert (code.optim.weight_decay != text.optim.weight_decay) == (wd == 0.0)
    assert text.finetune.start_from == "final"
    res = 160 if target == "cifar10" else 224
    assert code.finetune.resolution == text.finetune.resolution == res


@pytest.mark.parametrize("target", TARGETS)
def test_lp_as_released_and_unlike_the_text(target):
    code, text = _ft("paper-code", target, "lp"), _ft("paper", target, "lp")
    assert (code.optim.name, code.lr.lr, code.lr.schedule, code.optim.weight_decay,
            code.train.batch_size, code.train.epochs) == ("adam", 0.01, "cosine", 0.0, 128, 50)
    assert not code.finetune.lp_augment and code.finetune.lp_crop == "none"
    assert code.finetune.start_from == "best"
    assert (text.lr.lr, text.lr.schedule, text.train.batch_size, text.finetune.lp_augment) == \
        (0.1, "multistep", 256, True)
    assert code.finetune.resolution == (160 if target == "cifar10" else 224)


def test_unreleased_target_gets_the_majority_ff_recipe():
    rs = recipe_set("paper-code", "tiny", "warm")  # an embedded synth target
    assert (rs["lp"], rs["ff"]) == ("paper_code/lp", "paper_code/ff")


def test_pretraining_as_released_and_unlike_the_text():
    code, text = load_recipe("paper_code/resnet101_16ep"), load_recipe("paper/resnet101_16ep")
    assert (code.train.batch_size, code.optim.weight_decay) == (256, 5e-5)  # rn101_16.json
    assert (text.train.batch_size, text.optim.weight_decay) == (1024, 5e-4)  # A.1
    assert code.optim.wd_on_bn_bias and not text.optim.wd_on_bn_bias
    assert code.lr.cycle_momentum and code.lr.base_momentum == 0.8 and not text.lr.cycle_momentum
    assert (code.train.precision, text.train.precision) == ("fp16", "bf16")
    assert code.train.keep_best and not text.train.keep_best and code.eval.every == 1
    for r in (code, text):
        assert (r.lr.lr, r.lr.lr_peak_epoch, r.train.epochs, r.model.arch) == \
            (0.5, 2.0, 16, "resnet101")
    assert not code.train.drop_last  # src/data/imagenet.py: drop_last=False


def test_the_released_surrogate_trains_at_its_own_batch_size():
    """rn18_16.json is rn101_16.json but the architecture *and* the batch sizes (train 1024,
    validation 512) at the same unscaled lr 0.5; the surrogate trained at 256 (4x the steps)."""
    s, pre = load_recipe("paper_code/resnet18_surrogate"), load_recipe("paper_code/resnet101_16ep")
    assert (s.model.arch, s.train.batch_size, s.eval.batch_size) == ("resnet18", 1024, 512)
    assert (s.lr.lr, s.lr.scale_with_batch) == (pre.lr.lr, False) == (0.5, False)


def test_adversarial_steps_in_normalised_units_only_in_the_released_variant():
    code, text = load_recipe("paper_code/resnet101_16ep_adv"), load_recipe("paper/resnet101_16ep_adv")
    assert (code.adv.units, text.adv.units) == ("normalized", "pixel")
    for r in (code, text):
        assert (r.adv.steps, r.adv.eps, r.adv.step_size) == pytest.approx((3, 3 / 255, 2 / 255))


@pytest.mark.parametrize("protocol", ["paper", "paper-code"])
def test_surrogates_score_like_the_authors(protocol):
    """Both paper protocols: GraNd over every parameter, 5 runs after one epoch; source features
    read at 224 without crop like the target. MODERATE per class: the released script only."""
    s = load_recipe(recipe_set(protocol, "full")["surrogate"])
    assert (s.scoring.source_resolution, s.scoring.source_crop) == (224, "none")
    assert (s.scoring.target_resolution, s.scoring.target_crop) == (224, "none")
    grand = get_scorer("grand").parse_options(recipe_scorer_options(s.scoring.scorer_options, "grand"))
    assert (grand["grad"], int(grand["runs"]), int(grand["epoch"])) == ("full", 5, 1)
    band = recipe_scorer_options(s.scoring.scorer_options, "moderate").get("band", "rank")
    assert band == ("class" if protocol == "paper-code" else "rank")
    fast = load_recipe(recipe_set("fast", "tiny")["surrogate"])
    assert fast.scoring.scorer_options == [] and fast.scoring.source_crop == "center"


def test_every_shipped_scorer_option_names_a_real_option():
    for name in list_recipes(sets=True):
        for entry in load_recipe(name).scoring.scorer_options:
            method = entry.split(".", 1)[0]
            get_scorer(method).parse_options(recipe_scorer_options([entry], method))


@pytest.mark.parametrize("over, msg", [
    (["lr.cycle_momentum=true", "optim.name=adam"], "lr.cycle_momentum"),
    (["lr.cycle_momentum=true", "lr.schedule=cosine"], "lr.cycle_momentum"),
    (["lr.cycle_momentum=true", "lr.base_momentum=0.95"], "lr.base_momentum"),
    (["finetune.start_from=middle"], "finetune.start_from"),
    (["finetune.lp_crop=squash"], "finetune.lp_crop"),
    (["scoring.source_crop=squash"], "scoring.source_crop"),
    (["scoring.scorer_options=[\"grad=full\"]"], "METHOD.NAME=VALUE"),
    (["adv.steps=3", "adv.eps=0.5", "adv.norm=l2", "adv.units=normalized"], "adv.units"),
    (["finetune.normalize=svhn"], "finetune.normalize"),
    (["finetune.test_crop=squash"], "finetune.test_crop"),
    (["train.crop_ratio=[2.0,1.0]"], "train.crop_ratio"),
])
def test_new_knobs_are_validated(over, msg):
    with pytest.raises(DP4TLError) as e:
        load_recipe("paper_code/resnet101_16ep", over)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_only_the_released_finetuning_keeps_the_source_head():
    """imagenet_transfer_to_downstream.py finetunes the 1000-way ImageNet head it loads; the
    paper's text and the fast protocol train a new target-sized head."""
    for name in ("paper_code/lp", "paper_code/ff", "paper_code/ff_sgd", "paper_code/lp_cifar10",
                 "paper_code/ff_cifar10"):
        assert load_recipe(name).finetune.head == "source", name
    for name in ("paper/lp", "paper/ff", "paper/lp_moco", "lp", "ff"):
        assert load_recipe(name).finetune.head == "new", name


@pytest.mark.parametrize("mode", ["lp", "ff"])
def test_cifar10_images_are_read_as_the_released_loader_reads_them(mode):
    """src/data/cifar10.py (docs/deviations.md #15): CIFAR-10's mean/std; test Resize((160, 160))
    = the whole (square) image; LP train Resize((160, 160)) = lp_crop none without augmentation;
    FF train Resize(182) + RandomCrop(160) + flip = a random square of side 160/182 of the image.
    Every other target keeps ImageNet's statistics and the 224/256 centre crop."""
    from ffcv_dp4tl.data.transforms import CENTER_CROP_RATIO, NORMALIZATIONS
    from ffcv_dp4tl.data import AugSpec
    from ffcv_dp4tl.training.finetune import target_train_aug

    r = _ft("paper-code", "cifar10", mode)
    assert NORMALIZATIONS[r.finetune.normalize] == (
        tuple(v * 255 for v in (0.4914, 0.4822, 0.4465)), tuple(v * 255 for v in (0.247, 0.243, 0.261)))
    test = AugSpec.for_crop(r.finetune.test_crop, r.finetune.normalize)
    assert (test.train, test.center_crop_ratio, test.normalize) == (False, 1.0, "cifar10")
    if mode == "lp":
        assert r.finetune.lp_crop == "none" and not r.finetune.lp_augment
    else:
        train = target_train_aug(r)
        assert train.train and train.flip and train.normalize == "cifar10"
        side = int(160 * 256 / 224)  # cifar10.py: bigger_resolution
        assert side == 182 and train.crop_scale == pytest.approx(((160 / side) ** 2,) * 2)
        assert train.crop_ratio == (1.0, 1.0)
    other = _ft("paper-code", "oxfordpets", mode)
    assert AugSpec.for_crop(other.finetune.test_crop).center_crop_ratio == CENTER_CROP_RATIO
    assert (other.finetune.normalize, other.finetune.test_crop) == ("imagenet", "center")
    assert target_train_aug(other).crop_ratio == (3 / 4, 4 / 3)
