"""Index masks (ffcv_dp4tl.data.masks): normalisation, class masks, files, validation.

Uses a hand-made SplitInfo over a labels.npy in tmp_path: masks only read labels.npy and the
fingerprint, never images, so no dataset build (and no ffcv import) is needed here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl.contracts import FORMAT
from ffcv_dp4tl.data import (IndexMask, full_mask, load_mask, make_mask, mask_from_classes,
                             save_mask, validate_mask)
from ffcv_dp4tl.data.manifest import SplitInfo
from ffcv_dp4tl.errors import DataError, MaskError

N = 30
LABELS = np.array([(i * 7) % 4 for i in range(N)], dtype=np.int64)


def _split(tmp_path: Path, fingerprint: str = "f" * 64, name: str = "train") -> SplitInfo:
    labels = tmp_path / f"{name}.labels.npy"
    if not labels.exists():
        np.save(labels, LABELS)
    return SplitInfo(name=name, num_samples=N, fingerprint=fingerprint, beton=tmp_path / "x.beton",
                     labels=labels, index=tmp_path / "x.index.npy", shards=[])


@pytest.fixture
def split(tmp_path) -> SplitInfo:
    return _split(tmp_path)


def test_make_mask_sorts_and_deduplicates(split):
    m = make_mask([5, 1, 5, 29, 0, 1], split, method="manual")
    assert m.indices.dtype == np.int64
    assert m.indices.tolist() == [0, 1, 5, 29]
    assert len(m) == 4
    assert m.meta["fingerprint"] == split.fingerprint and m.meta["split"] == "train"
    assert m.meta["num_samples"] == N and m.meta["num_kept"] == 4 and m.meta["method"] == "manual"
    assert m.kept_fraction == pytest.approx(4 / N)
    # numpy input of another integer dtype, and a generator
    assert make_mask(np.array([3, 2, 2], np.int32), split).indices.tolist() == [2, 3]
    assert make_mask((i for i in (9, 8)), split).indices.tolist() == [8, 9]


def test_make_mask_deduplicates_already_sorted_input(split):
    """Masks are "sorted + unique" whatever order the indices come in: an already-sorted list
    with repeats (a scorer's kept samples concatenated per unit, say) is deduplicated like an
    unsorted one, never kept twice (which would train a sample twice per epoch and inflate
    ``num_kept``) nor refused."""
    m = make_mask([1, 2, 2, 3], split)
    assert m.indices.tolist() == [1, 2, 3] and m.meta["num_kept"] == 3
    assert make_mask(np.array([0, 0, 29, 29], np.int64), split).indices.tolist() == [0, 29]


def test_make_mask_rejects_bad_input(split):
    with pytest.raises(MaskError, match="must be integers"):
        make_mask(np.array([0.5, 1.0]), split)
    with pytest.raises(MaskError, match=r"out of range \[0, 30\)"):
        make_mask([0, 30], split)
    with pytest.raises(MaskError, match="out of range"):
        make_mask([-1, 3], split)
    with pytest.raises(MaskError, match="is empty"):
        make_mask([], split)


def test_full_mask(split):
    m = full_mask(split)
    assert m.indices.tolist() == list(range(N)) and m.kept_fraction == 1.0


def test_mask_from_classes_picks_exactly_those_classes(split):
    m = mask_from_classes(split, [3, 1, 1])
    expected = [i for i in range(N) if LABELS[i] in (1, 3)]
    assert m.indices.tolist() == expected
    assert m.meta["kept_classes"] == [1, 3]
    assert set(LABELS[m.indices].tolist()) == {1, 3}
    assert mask_from_classes(split, [0]).indices.tolist() == np.flatnonzero(LABELS == 0).tolist()
    with pytest.raises(MaskError, match="class ids must be >= 0"):
        mask_from_classes(split, [-1, 2])
    with pytest.raises(MaskError, match="is empty"):
        mask_from_classes(split, [17])  # no sample has this class


def test_mask_from_classes_refuses_ids_past_the_datasets_classes(split):
    """A class id the dataset does not have is refused, naming it and the range: [5, 99] over
    32 classes kept class 5 alone, in silence (Python API review)."""
    import dataclasses

    four = dataclasses.replace(split, num_classes=4)
    with pytest.raises(MaskError, match=r"class ids \[9, 12\] are outside the 4 classes of .* "
                                        r"\(ids 0-3\)"):
        mask_from_classes(four, [2, 12, 9])
    assert mask_from_classes(four, [3]).indices.tolist() == np.flatnonzero(LABELS == 3).tolist()


def test_save_load_round_trip(split, tmp_path):
    m = mask_from_classes(split, [2], method="classes", note="kept class 2")
    npy = save_mask(tmp_path / "masks" / "keep2", m)
    assert npy == tmp_path / "masks" / "keep2.npy"
    assert npy.is_file() and npy.with_suffix(".json").is_file()
    assert not [p for p in npy.parent.iterdir() if ".tmp" in p.name]  # atomic: no leftovers
    side = json.loads(npy.with_suffix(".json").read_text())
    assert side["fingerprint"] == split.fingerprint and side["note"] == "kept class 2"

    for path in (npy, tmp_path / "masks" / "keep2", str(npy)):
        back = load_mask(path, split)
        assert back.indices.dtype == np.int64
        assert back.indices.tolist() == m.indices.tolist()
        assert back.meta == m.meta
    # saving again replaces both files
    m2 = make_mask([1, 2], split)
    save_mask(npy, m2)
    assert load_mask(npy, split).indices.tolist() == [1, 2]
    assert load_mask(npy, split).meta["num_kept"] == 2


def _write_raw(path: Path, indices, meta: dict | None) -> Path:
    np.save(path, np.asarray(indices))
    if meta is not None:
        path.with_suffix(".json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("indices, message", [
    (np.array([0, 3, 31], np.int64), r"1 indices out of range \[0, 30\).*\[31\]"),
    (np.array([-2, 3], np.int64), r"out of range.*\[-2\]"),
    (np.array([1, 4, 4, 7], np.int64), r"duplicate index 4 at position 2"),
    (np.array([1, 6, 2], np.int64), r"unsorted index 2 at position 2"),
    (np.array([], np.int64), r"is empty"),
    (np.array([1, 2], np.int32), r"must be int64"),
    (np.array([[1, 2]], np.int64), r"must be 1-D"),
])
def test_load_validates_contents_and_names_the_file(split, tmp_path, indices, message):
    npy = _write_raw(tmp_path / "bad.npy", indices, {"fingerprint": split.fingerprint})
    with pytest.raises(MaskError, match=message) as err:
        load_mask(npy, split)
    assert str(npy) in str(err.value)
    if np.asarray(indices).dtype == np.int64:
        # without a split to check against, loading itself works (nothing to compare)
        assert load_mask(npy).indices.shape == np.asarray(indices).shape
    else:  # (no split makes another dtype a mask)
        with pytest.raises(MaskError, match=message):
            load_mask(npy)


@pytest.mark.parametrize("values, message", [
    (np.arange(30) % 3 == 0, r"holds a boolean array \(a keep flag per sample\), but a mask holds "
                             r"the kept samples' indices \(sorted int64\): save_mask\(PATH, "
                             r"make_mask\(np\.flatnonzero\(flags\), "),
    (np.array([1.0, np.nan, 4.0]), r"bad\.npy: indices must be int64, got float64; recreate it"),
    (np.array([1, 2, 5], np.uint64), r"bad\.npy: indices must be int64, got uint64; recreate it")])
def test_a_mask_of_another_dtype_says_so_not_that_its_count_differs(split, tmp_path, values,
                                                                     message):
    """A boolean keep-flag array (numpy's other kind of mask), floats or uint64 saved over a
    mask's .npy beside its sidecar was reported as "says 10 samples are kept but bad.npy holds
    30" (audit): the dtype is the problem, and a boolean one is told how to convert."""
    npy = save_mask(tmp_path / "bad", make_mask(np.arange(10) * 3, split))
    np.save(npy, values)
    with pytest.raises(MaskError, match=message) as err:
        load_mask(npy, split)
    assert "kept but" not in str(err.value) and "\n" not in str(err.value)


def test_wrong_fingerprint_is_refused(split, tmp_path):
    other = _split(tmp_path, fingerprint="0" * 64, name="other")
    m = make_mask([1, 2, 3], other)
    with pytest.raises(MaskError, match="made for another dataset.*recompute the mask"):
        validate_mask(m, split)
    npy = save_mask(tmp_path / "other_mask", m)
    with pytest.raises(MaskError, match="made for another dataset") as err:
        load_mask(npy, split)
    assert str(npy) in str(err.value) and "0000" in str(err.value) and "ffff" in str(err.value)


def test_missing_files_and_sidecar(split, tmp_path):
    with pytest.raises(MaskError, match="mask file not found: .*nothere.npy"):
        load_mask(tmp_path / "nothere.npy", split)
    npy = _write_raw(tmp_path / "lonely.npy", np.array([1, 2], np.int64), None)
    with pytest.raises(MaskError, match=r"mask metadata not found: .*lonely\.json.*sidecar"):
        load_mask(npy, split)
    _write_raw(tmp_path / "nofp.npy", np.array([1], np.int64), {"split": "train"})
    with pytest.raises(MaskError, match=r"nofp\.json lacks field 'fingerprint'"):
        load_mask(tmp_path / "nofp.npy", split)
    # a null fingerprint (hand edit) is no fingerprint: it switched the dataset check off
    _write_raw(tmp_path / "nullfp.npy", np.array([1], np.int64), {"split": "train", "fingerprint": None})
    with pytest.raises(MaskError, match=r"nullfp\.json lacks field 'fingerprint'"):
        load_mask(tmp_path / "nullfp.npy", split)
    (tmp_path / "corrupt.npy").write_bytes(b"not numpy")
    (tmp_path / "corrupt.json").write_text(json.dumps({"fingerprint": split.fingerprint}))
    with pytest.raises(MaskError, match=r"corrupt\.npy is not a readable \.npy mask"):
        load_mask(tmp_path / "corrupt.npy", split)
    _write_raw(tmp_path / "badjson.npy", np.array([1], np.int64), None)
    (tmp_path / "badjson.json").write_text("{not json")
    with pytest.raises(DataError, match=r"badjson\.json is not valid JSON"):
        load_mask(tmp_path / "badjson.npy", split)


def test_mask_errors_are_data_errors(split):
    with pytest.raises(DataError):  # the CLI reports DataError subclasses as one line
        validate_mask(IndexMask(np.array([], np.int64), {}), split)


@pytest.mark.parametrize("case", ["sorted", "shuffled", "dups", "sorted-dups", "empty", "one",
                                  "negative", "uint"])
def test_sorted_unique_equals_np_unique(case):
    from ffcv_dp4tl.data.masks import sorted_unique

    rng = np.random.default_rng(3)
    x = {"sorted": np.arange(0, 5000, 3), "shuffled": rng.permutation(4000),
         "dups": rng.integers(0, 50, 1000), "sorted-dups": np.array([1, 2, 2, 3, 7, 7]),
         "empty": np.array([], np.int64),
         "one": np.array([7]), "negative": np.array([3, -2, 3, -9]),
         "uint": np.array([9, 2, 2], np.uint32)}[case]
    got = sorted_unique(x)
    assert got.dtype == np.int64
    assert np.array_equal(got, np.unique(x.astype(np.int64)))
    if x.size:
        assert not np.shares_memory(got, x)


@pytest.mark.parametrize("case", ["sorted", "shuffled", "beyond", "negative", "none", "uint8"])
def test_samples_with_labels_equals_isin(case):
    """The lookup-table selection (mask_from_classes, scorers' kept_sample_indices) selects
    exactly what ``np.isin`` selects, including classes no sample has and negative labels."""
    from ffcv_dp4tl.data.masks import samples_with_labels

    rng = np.random.default_rng(5)
    labels = {"sorted": np.sort(rng.integers(0, 50, 2000)), "shuffled": rng.integers(0, 50, 2000),
              "beyond": rng.integers(0, 10, 500), "negative": rng.integers(-3, 10, 500),
              "none": rng.integers(0, 10, 100), "uint8": rng.integers(0, 200, 900).astype(np.uint8)}[case]
    kept = {"beyond": np.array([3, 99, 1000]), "none": np.array([], np.int64),
            "negative": np.array([0, 4, 9])}.get(case, rng.choice(50, 17, replace=False))
    got = samples_with_labels(labels, kept)
    assert got.dtype == np.int64
    assert np.array_equal(got, np.flatnonzero(np.isin(labels, kept)))


def test_class_mask_at_imagenet_scale_equals_isin(tmp_path):
    """1,281,167 labels sorted by class (a folder build): the same indices as plain numpy
    (speed side by side: benchmarks/bench_data.py, "mask_from_classes" rows)."""
    n = 1_281_167
    labels = np.sort(np.random.default_rng(0).integers(0, 1000, n)).astype(np.int64)
    np.save(tmp_path / "big.labels.npy", labels)
    split = SplitInfo(name="train", num_samples=n, fingerprint="f" * 64,
                      beton=tmp_path / "x.beton", labels=tmp_path / "big.labels.npy",
                      index=tmp_path / "x.npy", shards=[])
    classes = list(range(0, 1000, 3))
    mask = mask_from_classes(split, classes)
    assert np.array_equal(mask.indices, np.flatnonzero(np.isin(labels, classes)))
    assert np.array_equal(full_mask(split).indices, np.arange(n))


def test_masks_whose_names_hold_a_dot_are_two_files(split, tmp_path):
    """``lm_0.2`` and ``lm_0.8``: the suffix is appended, not swapped (both were ``lm_0.npy``,
    the second overwriting the first)."""
    a, b = make_mask([1, 2], split), make_mask([3, 4, 5], split)
    pa, pb = save_mask(tmp_path / "lm_0.2", a), save_mask(tmp_path / "lm_0.8", b)
    assert (pa.name, pb.name) == ("lm_0.2.npy", "lm_0.8.npy")
    assert load_mask(tmp_path / "lm_0.2", split).indices.tolist() == [1, 2]
    assert load_mask(tmp_path / "lm_0.8.npy", split).indices.tolist() == [3, 4, 5]
    assert load_mask(tmp_path / "lm_0.8.json", split).indices.tolist() == [3, 4, 5]  # the sidecar
    (tmp_path / "folder").mkdir()
    save_mask(tmp_path / "folder" / "train.npy", a)
    for fn in (lambda p: save_mask(p, a), load_mask):  # a folder is not a mask file
        with pytest.raises(MaskError, match=r"folder is a folder; pass the mask file in it \(it holds train.npy\)"):
            fn(tmp_path / "folder")
    np.save(tmp_path / "folder" / "train.labels.npy", np.zeros(3, np.int64))  # no mask: not listed
    with pytest.raises(MaskError, match=r"folder is a folder; pass the mask file in it \(it holds train.npy\)$"):
        load_mask(tmp_path / "folder")
    # a built dataset (a dp4tl build's manifest): its files are no masks
    (tmp_path / "folder" / "manifest.json").write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(MaskError, match=r"folder is a built dataset, not a mask; pass a mask's \.npy "
                                        r"file \(`dp4tl prune --out DIR` writes DIR/train\.npy\)$"):
        load_mask(tmp_path / "folder")


def test_a_folder_is_a_built_dataset_only_when_it_is_one(split, tmp_path):
    """Any ``manifest.json`` made a folder "a built dataset, not a mask": a training run or a
    prune's folder holding another program's (a web app's) was called one, and the mask files
    in it went unnamed. The rule every output check uses (``outputs.is_dataset``: a dp4tl
    build's manifest) decides; a built dataset is still named as one."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")  # a training run's folder
    (run / "manifest.json").write_text(json.dumps({"name": "web app", "version": "1"}))
    save_mask(run / "train.npy", make_mask([1, 2], split))
    for fn in (lambda p: save_mask(p, make_mask([1], split)), load_mask):
        with pytest.raises(MaskError) as e:
            fn(run)
        assert str(e.value) == f"{run} is a folder; pass the mask file in it (it holds train.npy)"
    (run / "manifest.json").write_text(json.dumps({"format": FORMAT}))  # a build's: a dataset
    with pytest.raises(MaskError, match=r"run is a built dataset, not a mask"):
        load_mask(run)


def test_class_and_split_arguments_of_the_wrong_kind_are_refused(split):
    with pytest.raises(MaskError, match="not the string '13'"):
        mask_from_classes(split, "13")  # iterated, it kept classes 1 and 3
    with pytest.raises(MaskError, match="must be integers"):
        mask_from_classes(split, [1.7])  # it was truncated to class 1
    for fn in (lambda s: make_mask([1], s), lambda s: mask_from_classes(s, [1])):
        with pytest.raises(MaskError, match=r"not 'train': pass load_manifest\(DATASET\).split\(NAME\)"):
            fn("train")
    assert mask_from_classes(split, np.array([1], np.int32)).meta["kept_classes"] == [1]


def test_a_mask_written_over_another_never_pairs_new_indices_with_the_old_sidecar(split, tmp_path,
                                                                                  monkeypatch):
    """``dp4tl prune --ratio 0.6`` into the folder of a 0.2 mask, interrupted between the two
    files: the new .npy is refused for lack of a sidecar (it used to be read with the old one,
    ``mask check`` saying OK at the old ratio). A sidecar whose count disagrees with the
    indices (edited, or copied from another mask) is refused, naming both files."""
    import ffcv_dp4tl.data.masks as masks_mod

    path = save_mask(tmp_path / "train.npy", make_mask(np.arange(0, 8), split, method="a"))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(masks_mod, "atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_mask(path, make_mask(np.arange(0, 4), split, method="b"))
    monkeypatch.undo()
    with pytest.raises(MaskError, match="mask metadata not found"):
        load_mask(path, split)
    save_mask(path, make_mask(np.arange(0, 8), split, method="a"))
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "num_kept": 5}))
    with pytest.raises(MaskError, match=r"train.json says 5 samples are kept but .*train.npy holds 8"):
        load_mask(path, split)


def test_a_file_that_is_no_npy_is_not_called_pickled_data(split, tmp_path):
    """numpy says "pickled" about any file without the .npy magic: a text file named g.npy was
    described as "Python objects (pickled data)". One rule (manifest.npy_error_reason) tells a
    file that is no .npy from a real .npy of Python objects."""
    (tmp_path / "g.npy").write_text("not numpy at all")
    (tmp_path / "g.json").write_text(json.dumps({"fingerprint": split.fingerprint}))
    with pytest.raises(MaskError) as e:
        load_mask(tmp_path / "g.npy", split)
    assert "(not a .npy array file)" in str(e.value) and "pickled" not in str(e.value)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "o.json").write_text(json.dumps({"fingerprint": split.fingerprint}))
    with pytest.raises(MaskError, match=r"it holds Python objects \(pickled data\)"):
        load_mask(tmp_path / "o.npy", split)


def test_an_npz_archive_or_a_sidecar_of_odd_class_ids_is_one_line_for_every_reader(split, tmp_path):
    """An np.savez archive named NAME.npy crashed every mask reader with "'NpzFile' object has
    no attribute 'ndim'", and a sidecar's kept_classes of [1, "x"] crashed `mask check` (train
    and finetune took it silently; review). load_mask, which every reader goes through, now
    refuses both in one line naming the file."""
    good = save_mask(tmp_path / "good.npy", mask_from_classes(split, [0, 1], method="lm"))
    with open(tmp_path / "z.npy", "wb") as f:
        np.savez(f, indices=np.arange(3))
    (tmp_path / "z.json").write_text(good.with_suffix(".json").read_text())
    with pytest.raises(MaskError, match=r"^.*/z\.npy is an \.npz archive \(np\.savez\), not a "
                                        r"\.npy mask of sample indices; recreate it with"):
        load_mask(tmp_path / "z.npy", split)
    for bad in ([1, "x"], "1", [True], [-1]):
        meta = json.loads(good.with_suffix(".json").read_text())
        np.save(tmp_path / "k.npy", np.load(good))
        (tmp_path / "k.json").write_text(json.dumps({**meta, "kept_classes": bad}))
        with pytest.raises(MaskError, match=r"^.*/k\.json: field 'kept_classes' must be a list of "
                                            r"class ids \(integers >= 0\), got .*; recreate the mask"):
            load_mask(tmp_path / "k.npy")


def test_a_mask_of_another_split_of_the_same_dataset_names_the_split_to_pass(index_copy, tmp_path):
    """A mask of split 'train' used with ``--split val`` of the same dataset was said to be "made
    for another dataset ... recompute the mask": it is right, only the split option is wrong."""
    from ffcv_dp4tl.contracts import dataset_fingerprint
    from ffcv_dp4tl.data import load_manifest

    m = json.loads((index_copy / "manifest.json").read_text())
    m["splits"]["val"] = {**m["splits"]["train"], "fingerprint": "e" * 64}  # (same files)
    m["fingerprint"] = dataset_fingerprint([s["fingerprint"] for s in m["splits"].values()])
    (index_copy / "manifest.json").write_text(json.dumps(m))
    manifest = load_manifest(index_copy)
    npy = save_mask(tmp_path / "t.npy", make_mask([1, 2], manifest.split("train")))
    with pytest.raises(MaskError) as e:  # a command with --split (mask check, mask files)
        load_mask(npy, manifest.split("val"), split_option=True)
    assert str(e.value) == (f"{npy} indexes split 'train' of this dataset, not split 'val', which "
                            "this reads: pass `--split train` (or drop --split) to use it, or make "
                            "a mask of split 'val'")
    # a command without one (train, finetune, mask overlap) was told to pass --split too
    val_mask = save_mask(tmp_path / "v.npy", make_mask([1], manifest.split("val")))
    with pytest.raises(MaskError) as e:
        load_mask(val_mask, manifest.split("train"))
    assert str(e.value) == (f"{val_mask} indexes split 'val' of this dataset, not split 'train', "
                            "which this reads: give the mask of split 'train' (`dp4tl prune` "
                            "writes train.npy beside val.npy)")
    # a target's train and test masks: prune never writes those (review)
    m["splits"]["test"] = {**m["splits"]["train"], "fingerprint": "f" * 64}
    m["fingerprint"] = dataset_fingerprint([s["fingerprint"] for s in m["splits"].values()])
    (index_copy / "manifest.json").write_text(json.dumps(m))
    manifest = load_manifest(index_copy)
    test_mask = save_mask(tmp_path / "te.npy", make_mask([1], manifest.split("test")))
    with pytest.raises(MaskError) as e:
        load_mask(test_mask, manifest.split("train"))
    assert str(e.value).endswith("give the mask of split 'train' (`dp4tl mask classes --split "
                                 "train` makes one)")


def test_only_the_same_mask_again_may_replace_a_mask(split, tmp_path):
    """``mask_conflict``, the rule of every command that writes a mask by name: the same indices
    from the same recorded inputs (a rerun — with the scores folder spelled otherwise, at another
    time — or the rest of a killed one: .npy without sidecar, sidecar without .npy) may be written
    again; a mask of other inputs or samples, or a file of the user's, is named instead."""
    from ffcv_dp4tl.data.masks import mask_conflict

    def mask(idx=range(8), **prov):
        return make_mask(np.asarray(idx), split, **{"method": "lm", "ratio": 0.5, "scores": "s",
                                                    **prov})

    path = tmp_path / "train.npy"
    assert mask_conflict(path, mask()) is None  # nothing there
    save_mask(path, mask())
    assert mask_conflict(path, mask(scores=str(tmp_path / "s"))) is None
    assert mask_conflict(path, mask(ratio=0.25)) == (path, "the lm mask at ratio 0.5")
    assert mask_conflict(path, mask(budget="samples")) == (path, "the lm mask at ratio 0.5")
    assert mask_conflict(path, mask(range(4))) == (path, "the lm mask at ratio 0.5 selecting "
                                                         "other samples")
    assert mask_conflict(path, None) == (path, "the lm mask at ratio 0.5")  # (would be deleted)
    val = make_mask(np.arange(8), _split(tmp_path, "e" * 64, "val"), method="lm", ratio=0.5)
    assert mask_conflict(path, val) == (path, "the lm mask at ratio 0.5 of split 'train'")
    path.with_suffix(".json").unlink()  # killed between the two files of a rerun
    assert mask_conflict(path, mask()) is None
    assert mask_conflict(path, mask(range(4)))[1].startswith("a file that is not this mask")
    save_mask(path, mask())
    path.unlink()  # the sidecar alone
    assert mask_conflict(path, mask()) is None
    np.save(tmp_path / "feat.npy", np.linspace(0, 1, 8))  # the user's own array, no sidecar
    assert mask_conflict(tmp_path / "feat", mask())[0] == tmp_path / "feat.npy"
    (tmp_path / "results.json").write_text('{"top1": 0.9}')  # NAME.json: the user's file
    assert mask_conflict(tmp_path / "results.npy", mask()) == (
        tmp_path / "results.json", "a file that is not a mask's sidecar")


def test_an_npy_replaced_under_its_sidecar_is_refused(split, tmp_path):
    """A pruned set's train.npy replaced by other indices of the same length was trained on
    under the pruned set's description, by the pipeline and `dp4tl train --mask` (only `mask
    check` compared it with kept_classes; audit). save_mask records the indices' sha256 and
    load_mask checks it; a mask saved before the digest is checked against its kept_classes
    where the split is known."""
    m = mask_from_classes(split, [1, 3])
    path = save_mask(tmp_path / "train.npy", m)
    assert np.array_equal(load_mask(path, split).indices, m.indices)  # untouched: loads
    other = mask_from_classes(split, [0, 2]).indices[: len(m)]
    assert len(other) == len(m)
    np.save(path, other)
    with pytest.raises(MaskError, match="holds other indices than the ones train.json describes"):
        load_mask(path)
    side = json.loads((tmp_path / "train.json").read_text())
    del side["indices_sha256"]  # as saved before the digest: the recorded classes still tell
    (tmp_path / "train.json").write_text(json.dumps(side))
    assert len(load_mask(path)) == len(m)  # (without the split: nothing to compare with)
    with pytest.raises(MaskError, match="kept_classes leaves out classes"):
        load_mask(path, split)


def test_a_mask_whose_header_declares_billions_of_indices_is_one_line(split, tmp_path):
    """A 192-byte .npy declaring shape (4e9,): numpy allocated it first, and `dp4tl mask
    check` died with a MemoryError traceback (only ValueError/OSError/EOFError were caught)."""
    npy = tmp_path / "huge.npy"
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False,
                                                 "shape": (1 << 40,)})
        f.write(b"\0" * 64)
    (tmp_path / "huge.json").write_text(json.dumps({"fingerprint": split.fingerprint}))
    with pytest.raises(MaskError, match=r"huge\.npy is not a readable \.npy mask \(its header "
                                        r"declares shape \(1099511627776,\) of int64") as e:
        load_mask(npy, split)
    assert "\n" not in str(e.value)
