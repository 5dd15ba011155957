"""recipes/paper/: every value the paper (App. A.1, Tab. A1) states, the recipe-set names, and the
schedule / [scoring] validation the paper recipes rely on."""
from __future__ import annotations

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.training.recipe import Recipe, load_recipe
from ffcv_dp4tl.training.recipe_files import SOURCE_RECIPES_DIR, list_recipes, recipe_description


def test_paper_set_is_listed_by_set_name_and_loads():
    top = list_recipes()
    assert not any("/" in n for n in top)  # the top-level list is unchanged
    paper = [n for n in list_recipes(sets=True) if n.startswith("paper/")]
    assert sorted(paper) == sorted(f"paper/{p.stem}"
                                   for p in (SOURCE_RECIPES_DIR / "paper").glob("*.toml"))
    for name in paper:
        r = load_recipe(name)
        assert r.name == name and recipe_description(name)


def test_paper_pretraining_matches_appendix_a1():
    r = load_recipe("paper/resnet101_16ep")
    assert r.model.arch == "resnet101" and not r.model.blurpool
    assert (r.optim.name, r.optim.momentum, r.optim.weight_decay) == ("sgd", 0.9, 5e-4)
    assert r.optim.label_smoothing == 0.0 and not r.eval.flip_tta
    assert (r.lr.schedule, r.lr.lr, r.lr.scale_with_batch, r.lr.lr_peak_epoch) == \
        ("triangular", 0.5, False, 2.0)
    assert (r.train.epochs, r.train.batch_size) == (16, 1024)
    assert load_recipe("paper/resnet101_16ep_wd5e-5").optim.weight_decay == 5e-5  # released config
    for name, arch in (("paper/resnet18_surrogate", "resnet18"), ("paper/resnet50_16ep", "resnet50"),
                       ("paper/resnet18_16ep", "resnet18")):
        s = load_recipe(name)
        assert s.model.arch == arch and s.optim.weight_decay == 5e-4 and s.lr.lr == 0.5
    s = load_recipe("paper/resnet18_surrogate")
    assert (s.scoring.target_resolution, s.scoring.target_crop) == (224, "none")
    v = load_recipe("paper/vit_b16")
    assert (v.model.arch, v.train.batch_size, v.lr.lr, v.optim.weight_decay, v.train.epochs) == \
        ("vit_b_16", 4096, 3e-3, 0.3, 300)


def test_paper_finetuning_matches_appendix_a1_and_table_a1():
    lp, ff = load_recipe("paper/lp"), load_recipe("paper/ff")
    assert (lp.optim.name, lp.lr.lr, lp.lr.schedule, lp.train.epochs, lp.train.batch_size) == \
        ("adam", 0.1, "multistep", 50, 256)
    assert (ff.optim.name, ff.lr.lr, ff.lr.schedule, ff.optim.weight_decay, ff.train.epochs,
            ff.train.batch_size) == ("adam", 0.01, "cosine", 5e-4, 200, 256)
    for r in (lp, ff):
        assert r.finetune.resolution == 224 and not r.eval.flip_tta and r.eval.every == 1
    for name in ("paper/lp_cifar10", "paper/ff_cifar10"):
        assert load_recipe(name).finetune.resolution == 160  # Tab. A1
    m = load_recipe("paper/lp_moco")  # MoCo's linear classification protocol
    assert (m.optim.name, m.lr.lr, m.optim.weight_decay, m.train.epochs, m.lr.milestones) == \
        ("sgd", 30.0, 0.0, 100, [60, 80])
    assert load_recipe("paper/moco_v2_resnet101").model.arch == "resnet101"
    assert load_recipe("paper/moco_v2_resnet18_surrogate").ssl.method == "moco_v2"


def _surrogates() -> list[str]:
    from ffcv_dp4tl.training.recipe_files import recipes_dir

    root = recipes_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for d in ("paper", "paper_code")
                  for p in (root / d).glob("*surrogate*.toml"))


@pytest.mark.parametrize("name", _surrogates())
def test_paper_surrogates_read_source_and_target_alike(name):
    """Sec. 3 resizes the target to the source resolution; FM's votes compare target features
    with centroids of source features, so both are read at 224 with no crop (the authors'
    feature_gen.py). The MoCo surrogate read the source with the 256-px 224/256 eval crop."""
    sc = load_recipe(name).scoring
    assert (sc.target_resolution, sc.target_crop) == (sc.source_resolution, sc.source_crop) \
        == (224, "none")


def test_scoring_section_defaults_keep_fingerprints_and_validate(tmp_path):
    r = load_recipe("resnet18_tiny_cpu")
    assert "scoring" not in r.to_dict()  # default [scoring]: the fingerprint is unchanged
    changed = load_recipe("resnet18_tiny_cpu", ["scoring.target_crop=none"])
    assert changed.to_dict()["scoring"]["target_crop"] == "none"
    assert changed.fingerprint() != r.fingerprint()
    # the trained weights do not depend on it: a surrogate trained under one resumes and is
    # reused under the other (the score stage's key holds [scoring])
    assert changed.training_fingerprint() == r.training_fingerprint() == r.fingerprint()
    assert load_recipe("resnet18_tiny_cpu", ["scoring.target_crop=none", "train.epochs=2"]) \
        .training_fingerprint() != r.training_fingerprint()
    with pytest.raises(DP4TLError, match="scoring.target_crop"):
        load_recipe("resnet18_tiny_cpu", ["scoring.target_crop=squash"])
    with pytest.raises(DP4TLError, match="scoring.target_resolution"):
        load_recipe("resnet18_tiny_cpu", ["scoring.target_resolution=-1"])


@pytest.mark.parametrize("over, msg", [
    (["lr.milestones=[]"], "needs lr.milestones"),
    (["lr.milestones=[40, 25]"], "strictly increasing"),
    (["lr.milestones=[0, 25]"], "strictly increasing"),
    (["lr.gamma=0"], r"lr\.gamma = 0\.0 is impossible; it must be in \(0, 1\]"),
    (["lr.gamma=1.5"], r"lr\.gamma = 1\.5 is impossible; it must be in \(0, 1\]"),
    (["lr.lr=0"], r"lr\.lr = 0\.0 is impossible"),
    (["lr.schedule=cosine", "lr.min_lr=-1"], "lr.min_lr"),
])
def test_schedule_knobs_are_validated(over, msg):
    with pytest.raises(DP4TLError, match=msg):
        load_recipe("paper/lp", over)


def test_shortened_runs_keep_later_milestones():
    r = load_recipe("paper/lp", ["train.epochs=1"])  # milestones [25, 40] simply never fire
    assert isinstance(r, Recipe) and r.lr.milestones == [25, 40]


def test_unknown_set_member_is_a_clear_error():
    with pytest.raises(DP4TLError, match="recipe file not found"):
        load_recipe("paper/nope")
