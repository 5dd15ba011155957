"""``val.npy``: the val samples of the classes the train mask keeps, for every unit (the set the
trainer validates on), written as a pair with ``train.npy``."""
from __future__ import annotations

import numpy as np
import pytest

from ffcv_dp4tl.data import load_manifest, load_mask, make_mask, val_mask_of
from ffcv_dp4tl.errors import MaskError
from ffcv_dp4tl.pipeline.prune import prune
from ffcv_dp4tl.pipeline.scores_io import write_scores

# train: 4 classes x 6; val: classes 0, 1 and 3 only (class 2 has no val sample)
TRAIN = np.repeat(np.arange(4), 6)
VAL = np.array([0, 0, 1, 1, 3, 3])


@pytest.fixture(scope="module")
def src(tmp_path_factory, pixel_codec):
    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    index_image = pixel_codec[0]

    def samples(labels, base):
        return [Sample(index_image(base + i), int(y), name=f"s/{base + i}") for i, y in enumerate(labels)]

    spec = DatasetSpec("valrule", [f"c{k}" for k in range(4)],
                       {"train": samples(TRAIN, 0), "val": samples(VAL, 100)})
    root = tmp_path_factory.mktemp("valrule")
    build_dataset(spec, root, BuildOptions(max_side=16, shard_size=16, workers=1, progress=False))
    return root


def _val_classes(folder, root):
    val = load_manifest(root).split("val")
    return sorted(set(VAL[load_mask(folder / "val.npy", val).indices].tolist()))


def test_sample_units_val_follows_the_classes_the_train_mask_keeps(src, tmp_path):
    """A sample selection can remove whole classes (EL2N's easy ones first): val.npy loses them
    too (it was the whole val split)."""
    scores = np.where(TRAIN == 0, 0.0, 1.0) + np.linspace(0, 0.1, 24)  # class 0 lowest
    write_scores(tmp_path / "s", method="el2n", unit="sample", scores=scores,
                 meta={"seed": 0, "higher_is_better": True})
    s = prune(tmp_path / "s", src, 0.25, tmp_path / "m")
    train = load_mask(tmp_path / "m" / "train.npy", load_manifest(src).split("train"))
    assert sorted(set(TRAIN[train.indices].tolist())) == [1, 2, 3]
    assert _val_classes(tmp_path / "m", src) == [1, 3] and s["val_kept"] == 4


def test_cluster_units_val_is_the_classes_of_the_kept_clusters_samples(src, tmp_path):
    units = np.array([0, 1] * 12)  # clusters cut across classes
    units[TRAIN == 3] = 2          # class 3 only in cluster 2
    write_scores(tmp_path / "s", method="fm", unit="cluster", scores=np.array([1.0, 0.0, 2.0]),
                 train_units=units, meta={})
    s = prune(tmp_path / "s", src, 0.34, tmp_path / "m")  # keeps clusters 0 and 2
    assert s["kept_units"] == [0, 2]
    assert _val_classes(tmp_path / "m", src) == [0, 1, 3] and s["val_kept"] == 6


def test_kept_classes_without_val_samples_leave_no_val_npy_and_no_stale_pair(src, tmp_path):
    """No val.npy when the kept classes have none; and never the val.npy of another prune beside
    the train.npy: a folder holding a mask of another ratio is refused, left as it was (it may be
    the mask a finished training run used), not replaced in part or in whole."""
    write_scores(tmp_path / "s", method="lm", unit="class", scores=np.array([3.0, 2.0, 9.0, 1.0]),
                 meta={})
    out = tmp_path / "m"
    assert prune(tmp_path / "s", src, 0.5, out)["val_kept"] == 2  # classes 2 and 0: val of 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    with pytest.raises(MaskError, match=rf"--out {out} holds the lm mask at ratio 0.5 \(train.npy\); "
                                        "pass another --out for the lm mask at ratio 0.75"):
        prune(tmp_path / "s", src, 0.75, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    s = prune(tmp_path / "s", src, 0.75, tmp_path / "m2")  # class 2 alone: no val sample
    assert s["kept_units"] == [2] and s["val_kept"] == 0 and s["train_kept"] == 6
    assert sorted(p.name for p in (tmp_path / "m2").iterdir()
                  if not p.name.startswith(".")) == ["train.json", "train.npy"]
    (tmp_path / "m2" / "val.npy").write_bytes(before["val.npy"])  # a val.npy of other inputs
    (tmp_path / "m2" / "val.json").write_bytes(before["val.json"])
    with pytest.raises(MaskError, match=r"holds the lm mask at ratio 0.5 \(val.npy\)"):
        prune(tmp_path / "s", src, 0.75, tmp_path / "m2")  # (this run would delete it)


def test_val_mask_of_is_none_when_the_kept_classes_have_no_val_sample(src):
    man = load_manifest(src)
    train, val = man.split("train"), man.split("val")
    assert val_mask_of(make_mask(np.flatnonzero(TRAIN == 2), train), train, val) is None
    m = val_mask_of(make_mask(np.flatnonzero(TRAIN >= 2), train), train, val, method="x")
    assert VAL[m.indices].tolist() == [3, 3] and m.meta["kept_classes"] == [2, 3]
    assert m.meta["method"] == "x"
