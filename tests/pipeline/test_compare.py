"""The selection overlap of paper Tab. A6 (|A ∩ B| / |B|, B the reference) on hand-made
selections whose answer is known, and ``dp4tl mask overlap``."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cli_runner import run_cli
from ffcv_dp4tl.data.manifest import SplitInfo
from ffcv_dp4tl.data.masks import make_mask, mask_from_classes, save_mask
from ffcv_dp4tl.errors import DP4TLError, MaskError
from ffcv_dp4tl.pipeline.compare import compare_masks, kept_classes, overlap

#: classes 0..3 with 1, 2, 3, 4 samples: sample and class overlaps differ
LABELS = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3], dtype=np.int64)


@pytest.fixture
def split(tmp_path: Path) -> SplitInfo:
    np.save(tmp_path / "labels.npy", LABELS)
    return SplitInfo(name="train", num_samples=len(LABELS), fingerprint="f" * 64,
                     beton=tmp_path / "x.beton", labels=tmp_path / "labels.npy",
                     index=tmp_path / "index.npy", shards=[])


def test_overlap_of_ids():
    o = overlap([0, 1, 2, 3], [2, 3, 4, 5])
    assert (o.kept, o.kept_ref, o.common) == (4, 4, 2)
    assert o.share == 0.5 and o.jaccard == pytest.approx(2 / 6)
    # the reference is the denominator: not symmetric when sizes differ
    assert overlap([0, 1], [0, 1, 2, 3]).share == 0.5
    assert overlap([0, 1, 2, 3], [0, 1]).share == 1.0
    assert overlap(np.array([3, 1, 1, 2]), [1, 2, 3]).share == 1.0  # order, duplicates: once
    assert overlap([7, 8], [1, 2]).share == 0.0


def test_empty_reference_is_refused():
    with pytest.raises(DP4TLError, match="reference selection keeps nothing"):
        overlap([1], [])


def test_class_masks(split):
    a = mask_from_classes(split, [0, 1, 2], method="lm")
    b = mask_from_classes(split, [1, 2, 3], method="lm")
    res = compare_masks(a, b)
    assert res["classes"].share == pytest.approx(2 / 3)  # classes 1, 2 of the reference's 1, 2, 3
    assert (res["samples"].common, res["samples"].kept_ref) == (5, 9)  # 2 + 3 of 2 + 3 + 4
    assert compare_masks(b, b)["classes"].share == compare_masks(b, b)["samples"].share == 1.0


def test_sample_masks_read_classes_from_labels(split):
    a = make_mask([0, 1, 9], split, method="random")  # classes 0, 1, 3
    b = mask_from_classes(split, [3], method="lm")
    with pytest.raises(MaskError, match="--data"):
        kept_classes(a)
    assert kept_classes(a, split).tolist() == [0, 1, 3]
    res = compare_masks(a, b, split)
    assert res["classes"].share == 1.0 and res["samples"].share == 0.25


def test_masks_of_other_datasets_are_refused(split):
    a = mask_from_classes(split, [0], method="lm")
    other = a.__class__(a.indices, {**a.meta, "fingerprint": "0" * 64})
    with pytest.raises(MaskError, match="different datasets"):
        compare_masks(a, other)


def _dp4tl(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)  # in-process (cli_runner): exit code, stdout, stderr


def test_cli(split, tmp_path):
    a = save_mask(tmp_path / "a.npy", mask_from_classes(split, [0, 1, 2], method="lm"))
    b = save_mask(tmp_path / "b.npy", mask_from_classes(split, [1, 2, 3], method="lm"))
    r = _dp4tl("mask", "overlap", str(a), str(b))
    assert r.returncode == 0, r.stderr
    assert "classes: 66.7 % of the reference's 3 kept classes" in r.stdout
    assert "samples: 55.6 % of the reference's 9 kept samples" in r.stdout
    r = _dp4tl("mask", "overlap", str(b), str(a), "--json")
    got = json.loads(r.stdout)
    assert got["classes"]["share"] == pytest.approx(2 / 3) and got["samples"]["common"] == 5
    assert got["samples"]["kept_ref"] == 6
    s = save_mask(tmp_path / "s.npy", make_mask([0, 9], split, method="random"))
    r = _dp4tl("mask", "overlap", str(s), str(b))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--data" in r.stderr


def test_cli_names_two_masks_of_one_file_name_apart(split, tmp_path):
    """`dp4tl mask overlap runs/prune-A/train.npy runs/prune-B/train.npy` (docs/surrogates.md)
    said "kept by train.npy" and named the reference nowhere (docs audit): each mask is named by
    the shortest ending of its path that tells it from the other."""
    for d in ("prune-A", "prune-B"):
        (tmp_path / "runs" / d).mkdir(parents=True)
    a = save_mask(tmp_path / "runs" / "prune-A" / "train.npy",
                  mask_from_classes(split, [0, 1, 2], method="lm"))
    b = save_mask(tmp_path / "runs" / "prune-B" / "train.npy",
                  mask_from_classes(split, [1, 2, 3], method="lm"))
    r = _dp4tl("mask", "overlap", str(a), str(b))
    assert r.returncode == 0, r.stderr
    assert ("classes: 66.7 % of the reference's 3 kept classes (in prune-B/train.npy) are kept "
            "by prune-A/train.npy (2 in common;") in r.stdout
    c = save_mask(tmp_path / "c.npy", mask_from_classes(split, [1, 2, 3], method="lm"))
    r = _dp4tl("mask", "overlap", str(c), str(b))
    assert "(in train.npy) are kept by c.npy (" in r.stdout
    r = _dp4tl("mask", "overlap", str(b), str(b))
    assert f"(in {b}) are kept by {b} (" in r.stdout


def _damage(path: Path, indices=None, **sidecar) -> None:
    """Rewrite a saved mask's indices and/or sidecar fields (num_kept kept consistent)."""
    meta = json.loads(path.with_suffix(".json").read_text())
    if indices is not None:
        np.save(path, np.asarray(indices, dtype=np.int64))
        meta["num_kept"] = len(indices)
        # (as a mask saved before the indices' digest, or a hand-made sidecar: the content
        # checks below it are what such a mask meets; a digest names any edit first)
        meta.pop("indices_sha256", None)
    path.with_suffix(".json").write_text(json.dumps({**meta, **sidecar}))


@pytest.mark.parametrize("damage,needle", [
    ({"indices": [0, 1, 5000]}, "a.npy: 1 indices out of range [0, 10)"),
    ({"indices": [0, 1, 1, 2]}, "a.npy: duplicate index 1"),
    ({"kept_classes": [999, -4]}, "a.json: field 'kept_classes' must be a list of class ids"),
    ({"kept_classes": [0, 1, 1, 2]}, "a.json: field 'kept_classes' lists class 1 more than once"),
    ({"kept_classes": [1, 2], "num_classes": 2}, "a.json: kept_classes holds class 2 but the "
                                                 "dataset has 2 classes (ids 0-1); recreate"),
    ({"kept_classes": [1, 2], "num_classes": 1}, "a.json: kept_classes holds class 2 but the "
                                                 "dataset has 1 class (id 0); recreate"),
    ({"kept_classes": [1, 2], "num_classes": 0}, "a.json: kept_classes holds class 2 but the "
                                                 "dataset has 0 classes (no class ids); recreate"),
    ({"kept_classes": []}, "a.json keeps no class but"),
    ({"indices": []}, "a.npy is empty"),  # its sidecar still lists classes: "100 %" before
])
def test_without_data_each_mask_is_checked_against_its_own_sidecar(split, tmp_path, damage,
                                                                   needle):
    """Without --data the masks were counted unchecked: an index past the split, a duplicate
    counted twice, invented class ids, an empty mask gave numbers and exit 0."""
    a = save_mask(tmp_path / "a.npy", mask_from_classes(split, [0, 1, 2], method="lm"))
    b = save_mask(tmp_path / "b.npy", mask_from_classes(split, [1, 2, 3], method="lm"))
    _damage(a, **damage)
    for args in ((str(a), str(b)), (str(b), str(a))):  # as the selection and as the reference
        r = _dp4tl("mask", "overlap", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"error: {tmp_path}/{needle}") and r.stderr.count("\n") == 1


def test_with_data_kept_classes_must_be_classes_of_the_dataset(index_dataset, tmp_path):
    """--data knows the class count: a sidecar naming class 999 of a 5-class dataset counted it
    as a kept class (0 % class overlap, exit 0)."""
    from ffcv_dp4tl.data import load_manifest

    info = load_manifest(index_dataset.root).split("train")
    a = save_mask(tmp_path / "a.npy", mask_from_classes(info, [0, 1], method="lm"))
    b = save_mask(tmp_path / "b.npy", mask_from_classes(info, [1, 2], method="lm"))
    _damage(a, kept_classes=[999])
    r = _dp4tl("mask", "overlap", str(a), str(b), "--data", str(index_dataset.root))
    assert r.returncode == 2, r.stdout
    assert f"{tmp_path}/a.json: kept_classes holds class 999 but the dataset has 5 classes" in r.stderr


def test_with_data_a_sidecar_whose_classes_miss_the_masks_samples_is_refused(index_dataset, tmp_path):
    """A sidecar edited by hand (or copied from another mask of the same size) named classes the
    samples are not of: the class overlap read it (15 % beside a 100 % sample overlap) and
    `mask check` said OK (review). With the labels at hand both refuse it in one line."""
    from ffcv_dp4tl.data import load_manifest

    info = load_manifest(index_dataset.root).split("train")
    a = save_mask(tmp_path / "a.npy", mask_from_classes(info, [0, 1], method="lm"))
    b = save_mask(tmp_path / "b.npy", mask_from_classes(info, [0, 1], method="lm"))
    assert _dp4tl("mask", "check", str(a), "--data", str(index_dataset.root)).returncode == 0
    _damage(a, kept_classes=[3, 4])
    expect = f"{tmp_path}/a.json: kept_classes leaves out classes [0, 1] whose samples"
    for cmd in (("mask", "overlap", str(a), str(b)), ("mask", "check", str(a))):
        r = _dp4tl(*cmd, "--data", str(index_dataset.root))
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr
