"""File contracts (ffcv_dp4tl.contracts): round trips, old files, newer files, import graph."""
from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl.contracts import (FORMAT, STAGE_KINDS, DatasetManifest, ImageSettings, MaskMeta,
                                  ScoresMeta, SplitEntry, StageResult, UnsupportedFormatError,
                                  stage_kind)
from ffcv_dp4tl.errors import DataError, DP4TLError, MaskError
from repo_scripts import parse_python

REPO = Path(__file__).resolve().parents[1]
FP = "ab" * 32


def _manifest() -> DatasetManifest:
    split = SplitEntry(num_samples=3, fingerprint=FP, beton="train.beton",
                       labels="train.labels.npy", index="wds/train.index.npy",
                       shards=["wds/train-000000.tar"], num_rejected=1, class_counts=[2, 1])
    return DatasetManifest(classes=["a", "b"], splits={"train": split}, fingerprint="cd" * 32,
                           name="tiny", image=ImageSettings(max_side=32, quality=90),
                           shard_size=16, extra={"synth": "tiny"},
                           build={"format": FORMAT, "source": "synth:tiny"},
                           created="2024-01-01T00:00:00Z")


CONTRACTS = {
    "manifest": _manifest(),
    "mask": MaskMeta(fingerprint=FP, split="train", num_samples=10, num_kept=4,
                     created="2024-01-01T00:00:00Z", provenance={"method": "lm", "ratio": 0.5}),
    "scores": ScoresMeta(method="lm", unit="class", num_units=5,
                         meta={"source_fingerprint": FP, "seed": 0, "selection_seconds": 1.5,
                               "array_sha256": {"scores": "ef" * 32}}),
    "stage": StageResult(stage="finetune-lp", kind="finetune", seconds=2.0,
                         values={"test_top1": 0.5, "mode": "lp"}),
}


def test_split_fingerprint_covers_digests_labels_and_class_names():
    """A dataset's fingerprint is what masks, scores and every pipeline stage are checked and
    keyed against ("never reused on other data"). The same images under other labels, or other
    class names or class order, are other data: each must give another split fingerprint, and so
    another dataset fingerprint. The same content gives the same one (labels of any int dtype)."""
    from ffcv_dp4tl.contracts import dataset_fingerprint, split_fingerprint

    digests = bytes(range(60))  # 3 samples' 20-byte SHA-1 digests
    labels, classes = np.array([0, 1, 1]), ["ant", "bee"]
    fp = split_fingerprint(digests, labels, classes)
    assert split_fingerprint(digests, labels.astype(np.int32), list(classes)) == fp
    others = {"digests": split_fingerprint(bytes(range(1, 61)), labels, classes),
              "labels": split_fingerprint(digests, np.array([1, 0, 1]), classes),
              "class names": split_fingerprint(digests, labels, ["ant", "cow"]),
              "class order": split_fingerprint(digests, labels, ["bee", "ant"])}
    for what, other in others.items():
        assert other != fp, f"other {what}, same fingerprint"
        assert dataset_fingerprint([other]) != dataset_fingerprint([fp]), what
    assert len(set(others.values())) == len(others)


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_round_trip_through_json(name):
    obj = CONTRACTS[name]
    blob = json.loads(json.dumps(obj.to_json()))  # what a file holds
    back = type(obj).from_json(blob)
    assert back == obj
    assert back.to_json() == blob
    # scores.json is format 2 (2026-12-05: source_fingerprint and array_sha256 required)
    assert blob["format_version"] == type(obj).VERSION == (2 if name == "scores" else 1)


def test_unknown_fields_survive_a_round_trip():
    d = _manifest().to_json()
    d["added_later"] = {"x": 1}
    d["splits"]["train"]["added_later_too"] = 2
    assert DatasetManifest.from_json(d).to_json() == d


# --- files from before format_version ---------------------------------------------------------

def _without_version(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "format_version"}


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_files_without_a_version_read_as_version_1(name):
    obj = CONTRACTS[name]
    back = type(obj).from_json(_without_version(obj.to_json()))
    assert back.format_version == 1 and back == dataclasses.replace(obj, format_version=1)


def test_old_files_still_load_through_the_readers(index_dataset, index_split, tmp_path):
    """A dataset, mask, scores directory and stage written before versions keep working."""
    from ffcv_dp4tl.data import load_manifest, load_mask, make_mask, save_mask
    from ffcv_dp4tl.pipeline.scores_io import load_scores, write_scores
    from ffcv_dp4tl.pipeline.stages import DONE, stage

    # manifest: copy the built one without format_version (the first release's shape)
    m = json.loads((index_dataset.root / "manifest.json").read_text())
    assert m["format_version"] == 1
    old = tmp_path / "old_ds"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(_without_version(m)))
    loaded = load_manifest(old)
    assert loaded.contract.format_version == 1
    assert loaded.fingerprint == m["fingerprint"] and loaded.classes == m["classes"]
    assert loaded.split("train").num_samples == index_split.num_samples
    assert loaded.extra == m["extra"]

    # mask sidecar
    npy = save_mask(tmp_path / "m.npy", make_mask([0, 2], index_split, method="manual"))
    side = npy.with_suffix(".json")
    side.write_text(json.dumps(_without_version(json.loads(side.read_text()))))
    back = load_mask(npy, index_split)
    assert back.indices.tolist() == [0, 2] and back.meta["method"] == "manual"
    assert back.info.format_version == 1

    # scores.json
    sd = tmp_path / "scores"
    write_scores(sd, method="random", unit="sample", scores=np.arange(3.0), meta={"seed": 1})
    meta = json.loads((sd / "scores.json").read_text())
    (sd / "scores.json").write_text(json.dumps(_without_version(meta)))
    got = load_scores(sd)
    assert got.method == "random" and got.meta.seed == 1 and got.scores.tolist() == [0, 1, 2]
    assert got.meta.format_version == 1 and got.tiebreak is None

    # DONE.json without kind/format_version: the kind comes from the stage's name
    st = stage(tmp_path / "runs", "finetune-ff", {"x": 1})
    st.dir.mkdir(parents=True)
    (st.dir / DONE).write_text(json.dumps({"test_top1": 0.25, "seconds": 1.0,
                                           "stage": "finetune-ff"}))
    res = st.result()
    assert res.kind == "finetune" and res.values["test_top1"] == 0.25


# --- files from a newer release ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_a_newer_version_is_refused_in_one_line(name):
    obj = CONTRACTS[name]
    d = {**obj.to_json(), "format_version": 7}
    with pytest.raises(UnsupportedFormatError, match="format version 7.*upgrade ffcv-dp4tl") as e:
        type(obj).from_json(d)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, DataError)  # the CLI prints it as one line, exit status 2


def test_readers_refuse_newer_files(index_dataset, index_split, tmp_path):
    from ffcv_dp4tl.data import load_manifest, load_mask, make_mask, save_mask
    from ffcv_dp4tl.pipeline.scores_io import load_scores, write_scores

    m = json.loads((index_dataset.root / "manifest.json").read_text())
    new = tmp_path / "new_ds"
    new.mkdir()
    (new / "manifest.json").write_text(json.dumps({**m, "format_version": 2}))
    with pytest.raises(UnsupportedFormatError, match=r"manifest.json is a dataset manifest of "
                       r"format version 2, but this ffcv-dp4tl reads versions up to 1; upgrade"):
        load_manifest(new)

    npy = save_mask(tmp_path / "m.npy", make_mask([1], index_split))
    side = npy.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "format_version": 3}))
    with pytest.raises(UnsupportedFormatError, match="m.json is a mask of format version 3"):
        load_mask(npy)

    sd = tmp_path / "scores"
    write_scores(sd, method="lm", unit="class", scores=np.ones(2), meta={"source_fingerprint": FP})
    (sd / "scores.json").write_text(json.dumps({**json.loads((sd / "scores.json").read_text()),
                                                "format_version": ScoresMeta.VERSION + 1}))
    with pytest.raises(UnsupportedFormatError, match=rf"scores file of format version "
                       rf"{ScoresMeta.VERSION + 1}, but this ffcv-dp4tl reads versions up to "
                       rf"{ScoresMeta.VERSION}; upgrade ffcv-dp4tl"):
        load_scores(sd)


def test_bad_versions_and_missing_fields_are_named():
    with pytest.raises(DataError, match="format_version must be a positive integer"):
        DatasetManifest.from_json({**_manifest().to_json(), "format_version": "2"})
    with pytest.raises(MaskError, match="lacks field 'fingerprint'"):
        MaskMeta.from_json({"split": "train"})
    with pytest.raises(DataError, match="not an ffcv-dp4tl manifest"):
        DatasetManifest.from_json({"format": "other/1"})
    d = _manifest().to_json()
    del d["splits"]["train"]["beton"]
    with pytest.raises(DataError, match="lacks field 'beton'"):
        DatasetManifest.from_json(d)
    with pytest.raises(DataError, match="not a dp4tl scores file"):
        ScoresMeta.from_json({"method": "lm", "unit": "pixel"})
    with pytest.raises(ValueError, match="unit must be one of"):
        ScoresMeta(method="lm", unit="pixel", num_units=1)
    with pytest.raises(ValueError, match="stage kind"):
        StageResult(stage="x", kind="guess")


def _set(d: dict, path: str, value) -> dict:
    """``d`` (a contract's JSON) with the dotted field ``path`` replaced by ``value``."""
    d = json.loads(json.dumps(d))
    *outer, last = path.split(".")
    node = d
    for k in outer:
        node = node[k]
    node[last] = value
    return d


@pytest.mark.parametrize("name,path,value,needle", [
    ("manifest", "classes", 5, "field 'classes' must be a list of names, got 5"),
    ("manifest", "splits", [], "field 'splits' must be a JSON object, got []"),
    ("manifest", "splits.train", "x", "split 'train' must be a JSON object"),
    ("manifest", "splits.train.num_samples", "abc", "'num_samples' must be a non-negative integer, got 'abc'"),
    ("manifest", "splits.train.num_samples", -3, "'num_samples' must be a non-negative integer"),
    ("manifest", "splits.train.labels", None, "split 'train' lacks field 'labels'"),
    ("manifest", "splits.train.shards", "wds/x.tar", "'shards' must be a list of strings"),
    ("manifest", "splits.train.class_counts", [1, "2"], "'class_counts' must be a list of non-negative integers"),
    ("manifest", "image", {"quality": 90}, "'image' lacks field 'max_side'"),
    # null / {}: an edit (a build records the settings or omits the field), was read as absent
    ("manifest", "image", None, "field 'image' must be a JSON object, got None"),
    ("manifest", "image", {}, "'image' lacks field 'max_side'"),
    ("manifest", "image.quality", "high", "'quality' must be a non-negative integer"),
    # the builder's --max-side range: a beton's recorded sides are checked against it
    ("manifest", "image.max_side", 0, "'image.max_side' must be in [8, 4096]"),
    ("manifest", "image.max_side", 100000, "'image.max_side' must be in [8, 4096]"),
    ("manifest", "extra", [1], "'extra' must be a JSON object"),
    ("manifest", "splits.train.checksums", "x", "split 'train': field 'checksums' must be a JSON object"),
    ("manifest", "splits.train.checksums", {"scheme": "size+blake2b-edges/1", "beton": 5, "shards": "x",
                                            "labels": 7, "index": [1]},
     "'checksums': field 'beton' must be a JSON object"),
    ("manifest", "splits.train.checksums", {"scheme": "size+blake2b-edges/1", "beton": {"size": 1, "digest": "d"},
                                            "shards": "x"}, "'checksums': field 'shards' must be a list"),
    ("manifest", "splits.train.checksums", {"scheme": "size+blake2b-edges/1", "beton": {"size": "1", "digest": "d"},
                                            "shards": []}, "'checksums' 'beton': field 'size' must be a non-negative"),
    ("manifest", "splits.train.checksums", {"scheme": "size+blake2b-edges/1", "beton": {"size": 1, "digest": "d"},
                                            "shards": [{"size": 1, "digest": "d"}], "labels": 7},
     "'checksums': field 'labels' must be a string, got 7"),
    ("manifest", "splits.train.checksums", {"scheme": 9}, "'checksums': field 'scheme' must be a string"),
    ("mask", "num_kept", "x", "'num_kept' must be a non-negative integer, got 'x'"),
    ("mask", "fingerprint", 7, "'fingerprint' must be a string"),
    ("scores", "num_units", "x", "'num_units' must be a non-negative integer, got 'x'"),
    ("scores", "method", None, "lacks field 'method'"),
    ("scores", "source_fingerprint", None, "lacks field 'source_fingerprint'"),
    ("scores", "options", 5, "'options' must be a JSON object, got 5"),
    ("scores", "higher_is_better", "false", "'higher_is_better' must be true or false, got 'false'"),
    ("scores", "higher_is_better", None, "lacks field 'higher_is_better'"),  # bool(None): False
    ("scores", "seed", "abc", "'seed' must be a non-negative integer, got 'abc'"),
    ("scores", "selection_seconds", "fast", "'selection_seconds' must be a finite number >= 0"),
    ("scores", "training_seconds", -4.0, "'training_seconds' must be a finite number >= 0, got -4.0"),
    ("scores", "selection_seconds", float("nan"), "'selection_seconds' must be a finite number >= 0"),
    ("scores", "target_fingerprints", "ab", "'target_fingerprints' must be a list of strings"),
    ("stage", "seconds", "fast", "'seconds' must be a finite number >= 0, got 'fast'"),
])
def test_a_wrongly_typed_field_is_one_line_naming_it(name, path, value, needle):
    """A hand-edited or damaged contract file: one DataError line naming the file, the field
    and what it must be (never int("abc") or iterating an int deep inside a reader)."""
    cls = type(CONTRACTS[name])
    with pytest.raises(DataError) as e:
        cls.from_json(_set(CONTRACTS[name].to_json(), path, value), source="F.json")
    assert needle in str(e.value) and str(e.value).startswith("F.json")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("split", ["\x1b]0;PWNED\x07evil", "../../x", "", ".hidden", "a..b",
                                   "a\ud800b"])
def test_a_split_name_the_build_refuses_is_refused_on_read(split, tmp_path):
    """Split names are not in the fingerprint: one renamed in manifest.json to an OSC sequence
    reached the terminal through error messages, and ``../../x`` names files outside the folder.
    The build's rule runs on every read: one line naming the file, the name escaped."""
    from ffcv_dp4tl.data import load_manifest

    d = CONTRACTS["manifest"].to_json()
    d["splits"] = {split: d["splits"]["train"]}
    with pytest.raises(DataError) as e:
        DatasetManifest.from_json(d, source="F.json")
    msg = str(e.value)
    assert msg.startswith("F.json: split name ") and "is not allowed" in msg, msg
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in msg), msg
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(DataError, match="is not allowed") as e:
        load_manifest(tmp_path)
    assert str(e.value).startswith(str(tmp_path / "manifest.json")), e.value


def test_the_builder_and_the_manifest_share_one_split_name_rule():
    from beton_builders import spec
    from ffcv_dp4tl.contracts import names

    assert spec.split_name_problem is names.split_name_problem
    assert spec.printable is names.printable


@pytest.mark.parametrize("text,want", [
    ("x\udd00y", "x\\udd00y"), ("x\udfffy", "x\\udfffy"), ("x\ud800y", "x\\ud800y"),
    ("bad\udc85.jpg", "bad\\x85.jpg")])
def test_name_text_writes_any_lone_surrogate_as_an_escape(text, want):
    """A lone surrogate anywhere in U+D800..U+DFFF (JSON's ``"\\udd00"`` in a manifest) made
    the encoding raise, a traceback in place of the line; only U+DC80..U+DCFF are PEP 383's
    undecodable bytes (``\\xNN``), every other one is ``\\uXXXX``."""
    from ffcv_dp4tl.contracts.names import name_text

    assert name_text(text) == want


@pytest.mark.parametrize("show,text,want", [
    ("one_line", "a\tb\nc\rd", "a\\tb\\nc\\rd"),
    ("printable", "a\tb\nc", "a\\tb\\nc"),
    ("printable", "nul\x00here\x1f", "nul\\x00here\\x1f"),
    ("printable", "esc\x1b[31m del\x7f c1\x9f", "esc\\x1b[31m del\\x7f c1\\x9f")])
def test_names_are_shown_with_their_separators_and_control_characters_escaped(show, text, want):
    """``rejects.txt`` is tab-separated and ``S.files.txt`` one name a line (``one_line``): a
    tab left in a field would split it in two columns. A message shows every C0 control (NUL included), DEL
    and C1 as an escape (``printable``), so a terminal acts on none of them."""
    from ffcv_dp4tl.contracts import names

    assert getattr(names, show)(text) == want


def test_a_fingerprint_that_does_not_match_its_splits_is_named():
    """The dataset fingerprint is what masks, scores and stages are keyed on: one that is not
    the builder's hash of the splits' fingerprints (a split deleted, a fingerprint pasted) or a
    manifest with no split at all is a problem naming the file; the builder's own is not."""
    from ffcv_dp4tl.contracts import dataset_fingerprint

    m = _manifest()
    good = DatasetManifest.from_json({**m.to_json(), "fingerprint": dataset_fingerprint([FP])})
    assert good.fingerprint_problem("F.json") is None
    assert "does not match its splits" in m.fingerprint_problem("F.json")  # "cd" * 32
    assert m.fingerprint_problem("F.json").startswith("F.json: the dataset fingerprint cdcdcdcdcdcd")
    empty = DatasetManifest.from_json({**good.to_json(), "splits": {}})
    assert empty.fingerprint_problem("F.json").startswith("F.json lists no splits")


# --- stage results carry an explicit kind ----------------------------------------------------

#: the least a result of each kind holds (contracts.STAGE_VALUES)
VALID_VALUES = {"train": {"epoch": 0}, "score": {"method": "lm", "unit": "class"},
                "prune": {"unit": "class", "train_kept": 1}, "finetune": {"test_top1": 0.5},
                "other": {}}


def test_stage_values_follow_their_kinds_schema(tmp_path):
    from ffcv_dp4tl.contracts import STAGE_VALUES, check_stage_values
    from ffcv_dp4tl.pipeline.stages import DONE, stage

    assert set(VALID_VALUES) | {"build"} == set(STAGE_VALUES) == set(STAGE_KINDS)
    for kind, values in VALID_VALUES.items():
        check_stage_values(kind, values)
    check_stage_values("train", {"brought": True, "weights": "w.pth", "arch": "resnet18"})
    with pytest.raises(DataError, match="a score stage result lacks field 'unit'"):
        StageResult(stage="score", kind="score", values={"method": "lm"})
    with pytest.raises(DataError, match="field 'train_kept' of a prune stage result is str"):
        check_stage_values("prune", {"unit": "class", "train_kept": "5"})
    # a DONE.json that lost a field is refused on read, naming the file and the way out
    st = stage(tmp_path, "finetune-lp", {"x": 1})
    st.dir.mkdir(parents=True)
    (st.dir / DONE).write_text(json.dumps({"stage": "finetune-lp", "kind": "finetune",
                                           "seconds": 1.0}))
    with pytest.raises(DataError, match="DONE.json: a finetune stage result lacks field "
                                        "'test_top1'; delete the stage folder .*finetune-lp-.* "
                                        "and rerun"):
        st.result()


@pytest.mark.parametrize("name, values, field, got", [
    ("pretrain", {"epoch": 0, "top1_val": "0.08"}, "top1_val", "'0.08'"),
    ("surrogate", {"epoch": 0, "top1_val": None, "objective": "moco_v2", "loss": "1.5",
                   "top1_train": 0.25}, "loss", "'1.5'"),
    ("finetune-lp", {"test_top1": 0.5, "best_test_top1": "0.75"}, "best_test_top1", "'0.75'"),
    ("finetune-ff", {"test_top1": 0.5, "final_test_top1": 1.5}, "final_test_top1", "1.5"),
    ("finetune-lp", {"test_top1": 50.0}, "test_top1", "50.0"),
    ("prune", {"unit": "class", "train_kept": 5, "kept_sample_fraction": "0.4"},
     "kept_sample_fraction", "'0.4'"),
    ("score", {"method": "lm", "unit": "class", "selection_seconds": "2"},
     "selection_seconds", "'2'"),
    ("pretrain", {"epoch": 0, "top1_val": 0.5, "estimated_seconds": "x"},
     "estimated_seconds", "'x'"),
])
def test_a_done_file_value_the_report_reads_is_type_checked_on_read(name, values, field, got,
                                                                     tmp_path):
    """Audit B6: STAGE_VALUES checked one field per kind, so a DONE.json's ``"top1_val":
    "0.08"`` was read, and the report's ``:.4f`` crashed (``Unknown format code 'f'``) at the end
    of ``dp4tl pipeline``; a top-1 of 50 (a percent) went into the tables as it was. Every value
    the report and the ``[result]`` line read is checked where DONE.json is read: one line
    naming the file, the field and the stage folder to delete."""
    from ffcv_dp4tl.pipeline.stages import DONE, describe, stage

    st = stage(tmp_path, name, {"x": 1})
    st.dir.mkdir(parents=True)
    (st.dir / DONE).write_text(json.dumps({**values, "stage": name, "kind": stage_kind(name),
                                           "seconds": 1.0, "format_version": 1}))
    with pytest.raises(DataError) as e:
        st.result()
    what = {"loss": "a number", "selection_seconds": "a finite number >= 0",
            "estimated_seconds": "a finite number >= 0"}.get(field, "a number in [0, 1]")
    assert str(e.value) == (f"{st.dir / DONE}: field {field!r} must be {what}, got {got}; "
                            f"delete the stage folder {st.dir} and rerun")
    with pytest.raises(DataError, match=f"field {field!r} must be"):  # (not a ValueError)
        describe(json.loads((st.dir / DONE).read_text()))


def _done(tmp_path, name, fields):
    """A stage of ``name`` whose DONE.json holds ``fields`` over a genuine result of its kind."""
    from ffcv_dp4tl.pipeline.stages import DONE, stage

    st = stage(tmp_path, name, {"x": 1})
    st.dir.mkdir(parents=True)
    base = {**VALID_VALUES[stage_kind(name)], "stage": name, "kind": stage_kind(name),
            "seconds": 1.0, "cpu_seconds": 0.5, "loadavg_1min": 0.25, "format_version": 1}
    (st.dir / DONE).write_text(json.dumps({**base, **fields}))  # (NaN/Infinity as json writes them)
    return st


@pytest.mark.parametrize("name, field, value", [
    ("pretrain", "seconds", -5.0), ("pretrain", "cpu_seconds", -1.0),
    ("surrogate", "seconds", float("nan")), ("pretrain", "seconds", float("inf")),
    ("finetune-lp", "loadavg_1min", -1.0), ("score", "selection_seconds", -2.0),
    ("score", "training_seconds", float("nan")), ("prune", "estimated_seconds", -3.0),
    ("pretrain", "epoch_seconds", -0.5), ("pretrain", "train_seconds", float("nan")),
])
def test_a_stage_time_below_zero_or_not_finite_is_refused_on_read(name, field, value, tmp_path):
    """Audit: a cached pretrain DONE.json's ``"seconds": -5.0`` / ``"cpu_seconds": -1.0`` was
    read, and `bench adversarial` printed a pretraining time of -5.0 and a total of -3.9; a NaN
    surrogate time went through too. Every time of a stage result (its wall and CPU seconds,
    load average, the listed ``*_seconds`` values) is a finite number >= 0 where DONE.json is
    read: one line naming the file and the field, and the stage folder to delete."""
    st = _done(tmp_path, name, {field: value})
    with pytest.raises(DataError) as e:
        st.result()
    assert str(e.value) == (f"{st.dir / 'DONE.json'}: field {field!r} must be a finite number "
                            f">= 0, got {value!r}; delete the stage folder {st.dir} and rerun")


@pytest.mark.parametrize("kept, repeated", [([0, 0, 0, 0], "0"), ([0, 3, 6, 3], "3"),
                                            (["a", "b", "a"], "'a'")])
def test_a_prune_stage_listing_a_kept_unit_twice_is_refused_on_read(kept, repeated, tmp_path):
    """Audit: a prune DONE.json's ``kept_units`` edited from ``[0, 3, 6, 7]`` to
    ``[0, 0, 0, 0]`` was read, and `bench surrogates` printed a class overlap of 0.0 instead of
    50.0. The kept units are a set: a list that repeats one is refused in one line naming the
    field and the unit."""
    st = _done(tmp_path, "prune", {"kept_units": kept, "train_kept": 1})
    with pytest.raises(DataError) as e:
        st.result()
    assert str(e.value) == (f"{st.dir / 'DONE.json'}: field 'kept_units' must be a list of "
                            f"distinct names, but lists {repeated} more than once; delete the "
                            f"stage folder {st.dir} and rerun")


def test_genuine_stage_times_and_kept_units_are_read(tmp_path):
    """What a stage records is read back as it is: times of 0 (a stage faster than the clock),
    a load average of 0, distinct kept units in any order, an empty list, ``null`` times of
    files from before they were recorded."""
    st = _done(tmp_path, "prune", {"seconds": 0.0, "cpu_seconds": None, "loadavg_1min": 0,
                                   "kept_units": [7, 0, 3, 6], "estimated_seconds": 0.0})
    # a scorer's own metadata, in a score stage's values (docs/scorers.md): its times are its
    # own to shape; a catch-all rule for *_seconds refused them after the scoring (review)
    _done(tmp_path, "score", {"per_split_seconds": {"train": 1.0}, "step_seconds": [0.1, 0.2],
                              "timeout_seconds": float("inf")}).result()
    res = st.result()
    assert (res.seconds, res.cpu_seconds, res.loadavg_1min) == (0.0, None, 0.0)
    assert res.values["kept_units"] == [7, 0, 3, 6]
    assert _done(tmp_path / "b", "prune", {"kept_units": []}).result().values["kept_units"] == []
    assert _done(tmp_path / "c", "pretrain", {"epoch_seconds": 2.5, "train_seconds": 2}
                 ).result().values["train_seconds"] == 2


@pytest.mark.parametrize("name, kind", [("surrogate", "train"), ("pretrain", "train"),
                                        ("score", "score"), ("prune", "prune"),
                                        ("finetune-lp", "finetune"), ("finetune-ff", "finetune"),
                                        ("mystery", "other")])
def test_stage_kinds(name, kind, tmp_path):
    from ffcv_dp4tl.pipeline.stages import run_stage, stage

    assert stage_kind(name) == kind
    st = stage(tmp_path, name, {"a": 1})
    res = run_stage(st, lambda d: {"value": 3, "kind": "ignored", **VALID_VALUES[kind]},
                    log=lambda _: None)
    assert res.kind == kind and res.name == name and res.values["value"] == 3
    assert json.loads((st.dir / "DONE.json").read_text()) == res.result.to_json()
    again = run_stage(st, lambda d: pytest.fail("a finished stage must not rerun"),
                      log=lambda _: None)
    assert again.result == res.result and res.ran and not again.ran


def test_describe_dispatches_on_kind():
    from ffcv_dp4tl.pipeline.stages import describe

    assert describe({"stage": "finetune-lp", "kind": "finetune", "test_top1": 0.5,
                     "top1_val": 0.1}) == "target test top-1 50.00 %"
    assert describe({"stage": "score", "method": "lm", "unit": "class",
                     "selection_seconds": 2.25}) == "selection 2.2s"
    assert describe({"stage": "pretrain", "epoch": 0, "top1_val": 0.75}) == "val top-1 75.00 %"
    assert describe({"stage": "surrogate", "epoch": 0, "top1_val": None, "objective": "moco_v2",
                     "loss": 1.5, "top1_train": 0.25}) == \
        "moco_v2 loss 1.500, instance top-1 25.00 %"
    assert describe({"stage": "prune", "unit": "class", "train_kept": 5}) == ""
    # a train result that happens to hold a key of another kind is not misread as that kind
    assert describe({"stage": "pretrain", "epoch": 0, "top1_val": 0.5,
                     "selection_seconds": 9.0}) == "val top-1 50.00 %"


# --- import graph ----------------------------------------------------------------------------

PACKAGES = ("ffcv_dp4tl", "beton_builders")
#: ffcv_dp4tl's dependency-free base: what beton_builders may import from it
#: What beton_builders may import: the package root, its contracts, errors, files, locks, cpus (the
#: cores a process may use, which the encoders count as the loaders do) and stopping (Ctrl-C and
#: SIGTERM end a build as they end any command); each stdlib-only or nearly.
CORE = {"ffcv_dp4tl", "ffcv_dp4tl.contracts", "ffcv_dp4tl.cpus", "ffcv_dp4tl.errors",
        "ffcv_dp4tl.fsutil", "ffcv_dp4tl.locks", "ffcv_dp4tl.stopping", "ffcv_dp4tl.progress",
        "ffcv_dp4tl.lazy"}  # (lazy: standard library only; the one heavy-import guard)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every project module ``path`` imports (lazy imports included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(parse_python(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _graph(node_of) -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        src = node_of(name)
        for target in _imports(path):
            while target not in modules and "." in target:  # `pkg.module.attr` → `pkg.module`
                target = target.rpartition(".")[0]
            if target in modules and node_of(target) != src:
                graph.setdefault(src, set()).add(node_of(target))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def _package_node(name: str) -> str:
    """Top-level packages, with ffcv_dp4tl's core (its ``__init__``, contracts, errors, fsutil: what
    importing any ffcv_dp4tl module runs; and the stdlib-only cpus) apart from the rest of it
    (``ffcv_dp4tl.*``)."""
    if name in CORE:
        return name
    if name.startswith("ffcv_dp4tl.contracts."):  # the contracts package's modules: one node
        return "ffcv_dp4tl.contracts"
    top = name.split(".")[0]
    return "ffcv_dp4tl.*" if top == "ffcv_dp4tl" else top


def _layer_node(name: str) -> str:
    """ffcv_dp4tl's subpackages and top-level modules, beton_builders as one."""
    parts = name.split(".")
    return "beton_builders" if parts[0] == "beton_builders" else ".".join(parts[:2])


def test_no_package_level_import_cycle():
    graph = _graph(_package_node)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    # beton_builders may use ffcv_dp4tl's core only, never its heavy subpackages
    assert graph.get("beton_builders", set()) <= CORE, graph["beton_builders"]
    # and the core depends on nothing else of the project
    assert not any(graph.get(c, set()) - CORE for c in CORE), {c: graph.get(c) for c in CORE}


def test_no_cycle_between_layers():
    graph = _graph(_layer_node)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_check_catches_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
    # the old import (beton_builders -> ffcv_dp4tl.data.manifest) is a package cycle
    assert _package_node("ffcv_dp4tl.data.manifest") == _package_node("ffcv_dp4tl.cli.build")
    assert _cycle({"beton_builders": {"ffcv_dp4tl.*"}, "ffcv_dp4tl.*": {"beton_builders"}})


def test_importing_beton_builders_first_stays_light():
    """A fresh interpreter that imports the builders first loads neither torch, ffcv nor any
    ffcv_dp4tl subpackage (the builders read the contracts, not the data layer)."""
    code = ("import sys, beton_builders, beton_builders.writer, beton_builders.beton, "
            "beton_builders.layouts, beton_builders.sources, beton_builders.synth\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ffcv') "
            "or (m.startswith('ffcv_dp4tl.') and m.split('.')[1] not in "
            f"{tuple(sorted(m.split('.')[1] for m in CORE if '.' in m))!r}))\n"
            "print(heavy)\n"
            "import ffcv_dp4tl.data, ffcv_dp4tl.cli\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- choice sets: defined once ------------------------------------------------------------------

def test_choice_sets_are_the_contracts_enums_everywhere():
    from ffcv_dp4tl import contracts as C
    from ffcv_dp4tl.cli import options
    from ffcv_dp4tl.pipeline.recipes import RECIPE_SETS
    from ffcv_dp4tl.training import recipe

    # the CLI's option types are the contracts' enums, not copies
    for name in ("Format", "Backend", "Protocol", "RecipeSet", "TargetCrop", "TargetSplit",
                 "Budget", "Order", "FinetuneMode", "AdvNorm", "BetonMode"):
        assert getattr(options, name) is getattr(C, name), name
    # the recipe validates with the same sets
    assert recipe._CHOICES[("finetune", "mode")] == C.FinetuneMode.values()
    assert recipe._CHOICES[("scoring", "target_crop")] == C.TargetCrop.values()
    assert recipe._CHOICES[("data", "decode")] == C.Decode.values()
    assert recipe._CHOICES[("adv", "norm")] == C.AdvNorm.values()
    assert set(RECIPE_SETS) == set(C.RecipeSet.values()) - {"auto"}
    # values travel as plain strings; a bad one is a one-line error naming what and the choices
    assert C.Budget.check(C.Budget.samples, "budget") == "samples"
    assert f"{C.Order.reversed}" == str(C.Order.reversed) == "reversed"
    with pytest.raises(DataError, match=r"--budget must be one of units, samples, got 'all'"):
        C.Budget.check("all", "--budget", DataError)
    assert C.check_ratio(0) == 0.0 and C.check_k(3) == 3
    for bad in (1.0, -0.1, float("nan"), "x", "0.5", False, None):
        with pytest.raises(DP4TLError, match="ratio must be"):
            C.check_ratio(bad)  # a string or a bool was read as a number (False as 0.0)
    assert C.check_ratio("0.5", text=True) == 0.5  # what a user typed in a CLI list
    with pytest.raises(DP4TLError, match="ratio must be"):
        C.check_ratio(True, text=True)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(DP4TLError, match="k must be a positive number of clusters"):
            C.check_k(bad)


def test_check_tol_takes_finite_points_at_or_above_zero():
    """The winning-subset tolerance: NaN would make every comparison false (no subset could
    win) and a negative one demands more than the unpruned accuracy; both refused in one line."""
    from ffcv_dp4tl.contracts import check_tol
    from ffcv_dp4tl.errors import DP4TLError

    assert check_tol(0) == 0.0 and check_tol("0.5") == 0.5
    for bad in (float("nan"), float("inf"), -0.1, "x"):
        with pytest.raises(DP4TLError, match="--tol must be a number of accuracy points >= 0"):
            check_tol(bad)


def test_check_items_wants_at_least_one_each_once():
    """The one rule of list options (bench --seeds/--methods/--targets/--finetune/--ratios):
    an empty list would write an empty table, a repeated item count one run twice."""
    from ffcv_dp4tl.contracts import check_items
    from ffcv_dp4tl.errors import DP4TLError

    assert check_items("--seeds", iter([0, 2])) == [0, 2]
    with pytest.raises(DP4TLError, match="--seeds is empty: give at least one"):
        check_items("--seeds", [])
    with pytest.raises(DP4TLError, match="--methods lists 'lm' twice; list each once"):
        check_items("--methods", ["lm", "random", "lm"])


@pytest.mark.parametrize("data", [{"unit": "pixel", "method": "lm", "num_units": 3},
                                  {"unit": "class", "num_units": 3}, ["class"]])
def test_a_scores_file_of_no_known_unit_says_what_is_wanted_and_the_fix(data):
    """``"unit": "pixel"`` in scores.json was refused with "is not a dp4tl scores file (field
    'unit'/'method')" and no step to take (audit): the line names the units and the rerun."""
    from ffcv_dp4tl.contracts import ScoresMeta

    with pytest.raises(DataError) as e:
        ScoresMeta.from_json(data, "S/scores.json")
    assert str(e.value) == ("S/scores.json is not a dp4tl scores file (field 'unit' must be one "
                            "of class, cluster, sample, and 'method' present); rerun `dp4tl "
                            "score` into that folder")
