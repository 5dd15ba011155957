"""Tests for the synthetic dataset generator (beton_builders.synth)."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import operator
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from PIL import Image

from beton_builders.spec import DatasetSpec, Sample
from beton_builders.synth import (
    FAMILIES,
    MAX_SUPERCLASSES,
    PRESETS,
    VALID_KEYS,
    SynthConfig,
    SynthImage,
    parse_synth,
    superclass_name,
    synth_all,
    synth_source,
    synth_targets,
)
from ffcv_dp4tl.errors import DataError

TINY = PRESETS["tiny"]
#: A very small config for structural tests.
MICRO = dataclasses.replace(TINY, train_per_class=3, val_per_class=2, target_classes=4,
                            target_train_per_class=2, target_test_per_class=2)


@pytest.fixture(scope="module")
def tiny():
    return synth_source(TINY), synth_targets(TINY)


def _pixels(samples) -> list[bytes]:
    return [s.ref().tobytes() for s in samples]


# ---------------------------------------------------------------------------------------------
# Determinism and pickling
# ---------------------------------------------------------------------------------------------

def test_same_config_identical_pixels():
    a, b = synth_all(MICRO), synth_all(MICRO)
    assert a.keys() == b.keys()
    for key in a:
        for split in a[key].splits:
            sa, sb = a[key].splits[split], b[key].splits[split]
            assert [s.name for s in sa] == [s.name for s in sb]
            assert _pixels(sa[::5]) == _pixels(sb[::5])


def test_identical_pixels_in_other_process():
    """Refs pickled to a spawned process (different PYTHONHASHSEED) render the same pixels."""
    spec = synth_source(MICRO)
    refs = [s.ref for s in spec.splits["train"][::7]] + [
        s.ref for t in synth_targets(MICRO).values() for s in t.splits["test"][::5]]
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        remote = [img.tobytes() for img in ex.map(operator.call, refs, timeout=60)]
    assert remote == [r().tobytes() for r in refs]


def test_different_seed_or_index_differs():
    a = synth_source(MICRO).splits["train"]
    b = synth_source(dataclasses.replace(MICRO, seed=1)).splits["train"]
    assert sum(x != y for x, y in zip(_pixels(a), _pixels(b))) == len(a)
    px = _pixels(a[:3])  # same class, different index
    assert len(set(px)) == 3


def test_pickle_round_trip():
    spec = synth_source(MICRO)
    sample = spec.splits["val"][5]
    ref2 = pickle.loads(pickle.dumps(sample.ref))
    assert isinstance(ref2, SynthImage) and ref2 == sample.ref
    assert ref2().tobytes() == sample.ref().tobytes()
    s2 = pickle.loads(pickle.dumps(sample))
    assert isinstance(s2, Sample) and s2.label == sample.label and s2.name == sample.name


def test_image_format():
    for key, spec in synth_all(MICRO).items():
        img = spec.splits["train"][0].ref()
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert img.size == (MICRO.image_size, MICRO.image_size), key
    big = synth_source(dataclasses.replace(MICRO, image_size=256, num_superclasses=40,
                                           classes_per_superclass=1, train_per_class=1,
                                           val_per_class=0))
    for s in big.splits["train"][::13]:  # single / pair / quad layouts, all details
        arr = np.asarray(s.ref())
        assert arr.shape == (256, 256, 3) and arr.dtype == np.uint8 and arr.std() > 5


# ---------------------------------------------------------------------------------------------
# Structure and ground truth
# ---------------------------------------------------------------------------------------------

def _check_counts(cfg: SynthConfig):
    out = synth_all(cfg)
    assert set(out) == {"source"} | {f"targets/{n}" for n in cfg.target_names()}
    src = out["source"]
    assert isinstance(src, DatasetSpec)
    assert len(src.classes) == len(set(src.classes)) == cfg.num_classes
    expect = {"train": cfg.train_per_class, "val": cfg.val_per_class}
    assert set(src.splits) == {k for k, v in expect.items() if v}
    for split, samples in src.splits.items():
        assert np.bincount([s.label for s in samples], minlength=cfg.num_classes).tolist() == \
            [expect[split]] * cfg.num_classes
    for name in cfg.target_names():
        t = out[f"targets/{name}"]
        nc = len(t.classes)
        assert nc == len(set(t.classes)) >= 1
        expect = {"train": cfg.target_train_per_class, "val": cfg.target_val_per_class,
                  "test": cfg.target_test_per_class}
        assert set(t.splits) == {k for k, v in expect.items() if v}
        for split, samples in t.splits.items():
            assert np.bincount([s.label for s in samples], minlength=nc).tolist() == [expect[split]] * nc
    names = [s.name for spec in out.values() for ss in spec.splits.values() for s in ss]
    assert len(names) == len(set(names))
    return out


def test_counts_tiny():
    out = _check_counts(TINY)
    assert len(out["source"].splits["train"]) == 8 * 4 * 60
    assert all(len(out[f"targets/{n}"].classes) == 6 for n in TINY.target_names())


def test_counts_custom():
    cfg = parse_synth("synth:tiny,num_superclasses=13,classes_per_superclass=12,train_per_class=2,"
                      "val_per_class=0,target_val_per_class=1,target_classes=50,num_targets=4")
    out = _check_counts(cfg)
    # target_classes is capped by the classes of the related superclasses
    for name, rel in zip(cfg.target_names(), cfg.related_superclasses()):
        assert len(out[f"targets/{name}"].classes) == min(50, 12 * len(rel))


def test_ground_truth_consistency():
    for cfg in (TINY, PRESETS["default"], dataclasses.replace(MICRO, num_superclasses=30),
                dataclasses.replace(MICRO, num_superclasses=30, target_classes=1)):
        src = synth_source(cfg)
        sup = src.extra["superclass_of_class"]
        assert sup == [k // cfg.classes_per_superclass for k in range(cfg.num_classes)]
        assert len(src.extra["superclass_names"]) == cfg.num_superclasses
        assert len(set(src.extra["superclass_names"])) == cfg.num_superclasses
        targets = synth_targets(cfg)
        related_sets = []
        for name, t in targets.items():
            rel = t.extra["related_superclasses"]
            related_sets.append(set(rel))
            assert src.extra["targets"][name]["related_superclasses"] == rel
            mapping = t.extra["source_classes_of_class"]
            assert len(mapping) == len(t.classes)
            flat = [k for g in mapping for k in g]
            assert len(flat) == len(set(flat))  # distinct source classes
            assert all(sup[k] in rel for k in flat)
            assert {sup[k] for k in flat} == set(rel)  # every related superclass is used
            assert t.extra["source_superclass_of_class"] == [sup[g[0]] for g in mapping]
            # target class shares family + hue with its source class
            for tc, g in zip(t.classes, mapping):
                assert tc.split("_", 1)[1] == src.classes[g[0]].split("_", 1)[1]
            json.dumps(t.extra)
        json.dumps(src.extra)
        # automatic blocks are disjoint and leave some superclasses unrelated
        assert all(not (a & b) for i, a in enumerate(related_sets) for b in related_sets[i + 1:])
        assert set().union(*related_sets) != set(range(cfg.num_superclasses))


def test_documented_relation():
    """The relation stated in docs/synth.md for the tiny and default presets."""
    for cfg in (TINY, PRESETS["default"]):
        assert cfg.target_names() == ["paper", "warm", "blur"]
        assert cfg.related_superclasses() == [(0, 1), (2, 3, 4), (5, 6)]
    assert [superclass_name(s) for s in range(8)] == [
        "disk", "square", "hstripes", "ring", "checker", "triangle", "cross", "vstripes"]
    assert superclass_name(12) == "disk-pair" and superclass_name(12 * 8 + 1) == "square-quad-outline"
    im = PRESETS["imagenet"]
    assert im.num_classes == 1000 and im.train_per_class == 1280 and im.val_per_class == 50
    assert im.image_size == 256
    assert im.related_superclasses() == [tuple(range(0, 20)), tuple(range(20, 50)),
                                         tuple(range(50, 70))]
    assert PRESETS["default"].num_classes == 100 and PRESETS["default"].image_size == 64


def test_explicit_target_superclasses():
    cfg = parse_synth("synth:tiny,target_superclasses=7/1+3")
    assert cfg.num_targets == 2 and cfg.related_superclasses() == [(7,), (1, 3)]
    t = synth_targets(cfg)
    assert list(t) == ["paper", "warm"]
    assert t["warm"].extra["related_superclasses"] == [1, 3]


def test_classes_differ_and_targets_are_not_copies(tiny):
    src, targets = tiny
    per = TINY.train_per_class
    arr = np.stack([np.asarray(s.ref(), dtype=np.float32) for s in src.splits["train"][:: per // 10]])
    labels = np.repeat(np.arange(TINY.num_classes), 10)
    means = np.stack([arr[labels == k].mean(0) for k in range(TINY.num_classes)])
    d = np.abs(means[:, None] - means[None]).mean((2, 3, 4))
    off = d[~np.eye(len(d), dtype=bool)]
    assert off.min() > 1.0
    src_px = set(_pixels(src.splits["train"]))
    for t in targets.values():
        assert not (set(_pixels(t.splits["train"])) & src_px)


# ---------------------------------------------------------------------------------------------
# Learnability (cheap): nearest class mean on translation-invariant pixel features
# ---------------------------------------------------------------------------------------------

def _features(img) -> np.ndarray:
    """16x16 downsample -> hue moments of saturated pixels + |FFT| of the chroma map."""
    x = np.asarray(img, dtype=np.float32) / 255.0
    f = x.shape[0] // 16
    x = x.reshape(16, f, 16, f, 3).mean((1, 3))
    chroma = x.max(-1) - x.min(-1)
    a = x[..., 0] - 0.5 * (x[..., 1] + x[..., 2])
    b = 0.8660254 * (x[..., 1] - x[..., 2])
    th, w = np.arctan2(b, a), chroma ** 2
    hue = np.array([np.sum(w * fn(k * th)) for k in (1, 2) for fn in (np.cos, np.sin)])
    hue /= w.sum() + 1e-6
    spec = np.abs(np.fft.rfft2(chroma - chroma.mean())).ravel()
    spec /= np.linalg.norm(spec) + 1e-6
    return np.concatenate([2.0 * hue, spec])


def test_learnability_nearest_class_mean(tiny):
    src, targets = tiny
    sup = np.array(src.extra["superclass_of_class"])

    def feats(samples):
        return (np.stack([_features(s.ref()) for s in samples]),
                np.array([s.label for s in samples]))

    Xtr, ytr = feats(src.splits["train"][::2])
    Xva, yva = feats(src.splits["val"])
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-3
    M = np.stack([((Xtr[ytr == k] - mu) / sd).mean(0) for k in range(TINY.num_classes)])

    def predict(X):
        return np.argmin(((((X - mu) / sd)[:, None] - M[None]) ** 2).sum(-1), 1)

    p = predict(Xva)
    acc, sup_acc = (p == yva).mean(), (sup[p] == sup[yva]).mean()
    print(f"source val: class acc {acc:.2f} (chance {1 / TINY.num_classes:.2f}), "
          f"superclass acc {sup_acc:.2f}")
    assert acc > 8 / TINY.num_classes
    assert sup_acc > 0.8
    for name, t in targets.items():
        X, _ = feats(t.splits["test"])
        rel = set(t.extra["related_superclasses"])
        frac = np.mean([sup[k] in rel for k in predict(X)])
        chance = len(rel) / TINY.num_superclasses
        print(f"target {name}: {frac:.2f} of test images land in related superclasses "
              f"(chance {chance:.2f})")
        assert frac > min(0.9, 2 * chance), name


# ---------------------------------------------------------------------------------------------
# parse_synth
# ---------------------------------------------------------------------------------------------

def test_parse_presets():
    assert parse_synth("synth") == PRESETS["default"]
    assert parse_synth(" synth: ") == PRESETS["default"]
    for name, cfg in PRESETS.items():
        assert parse_synth(f"synth:{name}") == cfg
        assert parse_synth(f"synth:preset={name}") == cfg
    assert TINY.num_superclasses == 8 and TINY.classes_per_superclass == 4
    assert TINY.image_size == 32


def test_parse_overrides():
    cfg = parse_synth("synth:tiny,seed=3,image_size=48")
    assert cfg == dataclasses.replace(TINY, seed=3, image_size=48)
    cfg = parse_synth("synth:classes_per_superclass=5,train_per_class=100")
    assert cfg == dataclasses.replace(PRESETS["default"], classes_per_superclass=5, train_per_class=100)
    cfg = parse_synth("synth:seed = 2 , tiny")
    assert cfg.preset == "tiny" and cfg.seed == 2


def test_to_text_round_trip():
    for text in ("synth:tiny", "synth:default,seed=4,val_per_class=0",
                 "synth:imagenet,target_superclasses=0+1/5", "synth:tiny,num_targets=5"):
        cfg = parse_synth(text)
        assert parse_synth(cfg.to_text()) == cfg
    assert parse_synth("synth:tiny,seed=3").to_text() == "synth:tiny,seed=3"


@pytest.mark.parametrize("text, key", [
    ("synth:tiny,colour=3", "colour"),
    ("synth:bogus", "preset"),
    ("synth:seed=abc", "seed"),
    ("synth:seed=-1", "seed"),
    ("synth:image_size=8", "image_size"),
    ("synth:num_superclasses=0", "num_superclasses"),
    (f"synth:num_superclasses={MAX_SUPERCLASSES + 1}", "num_superclasses"),
    ("synth:classes_per_superclass=41", "classes_per_superclass"),
    ("synth:train_per_class=1.5", "train_per_class"),
    ("synth:target_superclasses=0+x", "target_superclasses"),
    ("synth:tiny,target_superclasses=0+8", "target_superclasses"),
    ("synth:tiny,target_superclasses=0+1,num_targets=2", "target_superclasses"),
    ("synth:seed=1,seed=2", "seed"),
    ("synth:tiny,target_classes=2,target_superclasses=0+1+2", "target_superclasses"),
])
def test_parse_errors(text, key):
    with pytest.raises(DataError) as ei:
        parse_synth(text)
    msg = str(ei.value)
    assert f"'{key}'" in msg
    assert "valid keys" in msg and all(k in msg for k in VALID_KEYS)


def test_parse_not_synth():
    with pytest.raises(DataError, match="not a synth spec"):
        parse_synth("imagenet:tiny")
    with pytest.raises(DataError):
        parse_synth("synth:tiny,default")  # two presets


def test_families_cover_max_superclasses():
    assert MAX_SUPERCLASSES == len(FAMILIES) * 9
    names = [superclass_name(s) for s in range(MAX_SUPERCLASSES)]
    assert len(set(names)) == MAX_SUPERCLASSES


def test_light_background_puts_a_share_of_source_images_on_light_grounds():
    """light_background=P: about P % of source images on a light ground (the `paper` target's
    shift); 0 leaves every pixel as it was, targets never change."""
    from beton_builders.synth import synth_all

    base = parse_synth("synth:tiny,train_per_class=10,val_per_class=0,light_background=0")
    light = parse_synth("synth:tiny,train_per_class=10,val_per_class=0,light_background=50")
    assert parse_synth(light.to_text()) == light and "light_background=50" in light.to_text()
    a, b = synth_all(base), synth_all(light)

    def corner(sample) -> float:  # background grey level: the mean of a 3x3 corner
        return float(np.asarray(sample.ref())[:3, :3].mean())

    src_a = [corner(s) for s in a["source"].splits["train"][:120]]
    src_b = [corner(s) for s in b["source"].splits["train"][:120]]
    assert max(src_a) < 0.62 * 255  # the original source: dark grounds only
    share = np.mean([v > 0.62 * 255 for v in src_b])
    assert 0.35 < share < 0.65
    ta = np.asarray(a["targets/paper"].splits["train"][0].ref())
    tb = np.asarray(b["targets/paper"].splits["train"][0].ref())
    assert np.array_equal(ta, tb)
    with pytest.raises(DataError, match="light_background"):
        parse_synth("synth:tiny,light_background=101")


def _object_hue(img) -> float:
    """Circular mean hue (degrees) of an image's most saturated pixels (the object)."""
    hsv = np.asarray(img.convert("HSV"), dtype=np.float64)
    sat = hsv[..., 1]
    sel = sat >= np.quantile(sat, 0.9)
    ang = hsv[..., 0][sel] / 255.0 * 2 * np.pi
    return float(np.degrees(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())) % 360.0)


def test_target_hue_jitter_widens_target_hues_only():
    """target_hue_jitter (the `hard` preset's knob that moves a target's LP reference off the
    ceiling): per target or for all, target images of one class spread over a wider hue range,
    the source keeps every pixel, and the changed targets declare it (DatasetSpec.content)."""
    from beton_builders.synth import synth_all

    text = "synth:tiny,train_per_class=4,val_per_class=0,target_train_per_class=24,light_background=0"
    base = parse_synth(text + ",target_hue_jitter=none")
    wide = parse_synth(text + ",target_hue_jitter=40/0/0")
    assert parse_synth(wide.to_text()) == wide and "target_hue_jitter=40/0/0" in wide.to_text()
    assert [wide.target_domain(t).hue_jitter for t in range(3)] == [40.0, 4.0, 4.0]
    assert parse_synth(text + ",target_hue_jitter=12").hue_jitter_of_target(2) == 12
    a, b = synth_all(base), synth_all(wide)
    for x, y in zip(a["source"].splits["train"], b["source"].splits["train"]):
        assert np.array_equal(np.asarray(x.ref()), np.asarray(y.ref()))
    assert a["targets/paper"].content == {} and b["targets/paper"].content == {"hue_jitter": 40}
    assert b["targets/warm"].content == {} and b["targets/paper"].extra["domain"]["hue_jitter"] == 40

    def spread(spec) -> float:  # circular spread of one class's object hues
        hues = [_object_hue(s.ref()) for s in spec.splits["train"] if s.label == 0]
        ang = np.radians(hues)
        return float(1.0 - np.hypot(np.sin(ang).mean(), np.cos(ang).mean()))

    assert spread(b["targets/paper"]) > 4 * spread(a["targets/paper"])
    assert np.array_equal(np.asarray(a["targets/warm"].splits["train"][0].ref()),
                          np.asarray(b["targets/warm"].splits["train"][0].ref()))


@pytest.mark.parametrize("value", ["x", "200", "1/2"])
def test_target_hue_jitter_errors_name_the_key(value):
    with pytest.raises(DataError, match="'target_hue_jitter'"):
        parse_synth(f"synth:tiny,target_hue_jitter={value}")


def test_hard_preset_jitters_per_target():
    hard = parse_synth("synth:hard")
    assert [hard.hue_jitter_of_target(t) for t in range(3)] == [10, 0, 20]
    assert parse_synth("synth:hard,num_targets=2").num_targets == 2  # extra values unused
