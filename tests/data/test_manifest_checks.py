"""A hand-edited ``manifest.json`` is refused, not silently obeyed.

Loaders, masks and scores size everything from a split's ``num_samples``; the per-file
checksums cannot see an edited manifest (every file still matches). So the cheap checks each
load runs (``SplitInfo.check_files``, ``SplitInfo.load_labels``) compare each file's own
sample count with the manifest's, and ``dp4tl verify --deep`` names the manifest, not the
shards, when only its class names changed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from ffcv_dp4tl.data import AugSpec, load_manifest, make_loader
from ffcv_dp4tl.data.verify import verify_dataset
from ffcv_dp4tl.errors import DataError


#: what a hand-edited manifest's refusal ends with: how to rebuild over it
REBUILD = ("rebuild the dataset with `dp4tl build SOURCE --out DIR --overwrite` (DIR: the folder "
           "that build wrote, for synth data the one holding source/ and targets/; a rerun "
           "without --overwrite keeps this manifest)")


def _edit_manifest(root, edit):
    p = root / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.mark.parametrize("num_samples", [60, 80])  # the files hold 70
def test_edited_num_samples_is_refused_by_both_loaders_and_the_labels(index_copy, num_samples):
    root = index_copy
    _edit_manifest(root, lambda m: m["splits"]["train"].update(num_samples=num_samples))
    split = load_manifest(root).split("train")
    held = {"ffcv": split.beton, "wds": split.index}
    for fmt, path in held.items():
        with pytest.raises(DataError) as e:
            make_loader(root, "train", fmt=fmt, aug=AugSpec.for_eval(), batch_size=8, resolution=16,
                        num_workers=0)
        assert _one_line(e) == (f"{root}/manifest.json says split 'train' has {num_samples} samples "
                                f"but {path} holds 70: manifest.json disagrees with the file; "
                                f"restore manifest.json or rebuild {root}")
    with pytest.raises(DataError, match=r"train\.labels\.npy holds 70: manifest\.json disagrees") as e:
        split.load_labels()  # what masks, prune and scoring read
    _one_line(e)
    assert not verify_dataset(root).ok


def test_renamed_class_is_blamed_on_the_manifest_not_the_shards(index_copy):
    root = index_copy
    _edit_manifest(root, lambda m: m["classes"].__setitem__(0, "renamed"))
    assert verify_dataset(root, deep=True).problems == [
        "train: manifest.json's classes (or this split's fingerprint) were edited: the shards' "
        "bytes and the labels are the build's (every sample matches the beton, which hashes to its "
        "fingerprint) but no longer hash to the split fingerprint; restore manifest.json or "
        "rebuild it with `dp4tl build SOURCE --out DIR --overwrite` (a rerun without --overwrite "
        "checks only what loaders check, so it keeps this damage)"]


def test_a_file_we_may_not_read_names_its_permissions_not_a_rebuild(index_dataset, monkeypatch):
    """No permission to read labels.npy or the beton (another user's build; root on an NFS mount
    with root_squash) is not damage: the line says to fix permissions; "rebuild the dataset"
    would send the user to redo hours of conversion for nothing (it did)."""

    import beton_builders.beton as beton_mod
    from beton_builders.beton import check_beton
    from ffcv_dp4tl.data.manifest import read_npy

    split = load_manifest(index_dataset.root).split("train")

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    import ffcv_dp4tl.data.manifest as manifest_mod

    monkeypatch.setattr(manifest_mod, "load_npy", denied)  # (where the open of the file fails)
    with pytest.raises(DataError) as e:
        read_npy(split.labels)
    assert _one_line(e) == (f"cannot read {split.labels} (Permission denied); fix its "
                            "permissions, or run as a user who may read it")
    monkeypatch.setattr(beton_mod, "beton_images", denied)
    layout, problems = check_beton(split.beton, split.num_samples)
    assert layout is None and problems == [
        f"cannot read {split.beton} (Permission denied); fix its permissions, or run as a user "
        "who may read it"]


def test_sample_origins_are_read_line_per_sample_or_refused_in_one_line(index_copy):
    """``SplitInfo.load_origins`` (what ``dp4tl mask files`` prints): one origin per sample;
    a missing file says how to get it without a rebuild, a file of another length is refused
    (its lines would name the wrong inputs)."""
    split = load_manifest(index_copy).split("train")
    origins = split.load_origins()
    assert len(origins) == split.num_samples == 70 and len(set(origins)) == 70
    split.origins.write_text("".join(f"{x}\n" for x in origins[:-1]))
    with pytest.raises(DataError) as e:
        split.load_origins()
    assert "69 line(s) for the 70 samples" in _one_line(e)
    split.origins.unlink()
    with pytest.raises(DataError) as e:
        split.load_origins()
    assert "run the command that built the dataset again" in _one_line(e)


def test_float_labels_are_refused_by_load_labels(index_copy):
    """What masks, prune and scoring read: float labels (IndexError in `mask classes`) are one
    line naming the file, and the advice (rerun the build) works: its repair finds them too
    (tests/builders/test_repair.py)."""
    import numpy as np

    split = load_manifest(index_copy).split("train")
    np.save(split.labels, np.load(split.labels).astype(np.float32))
    with pytest.raises(DataError) as e:
        split.load_labels()
    assert _one_line(e) == (f"{split.labels}: labels must be a 1-D array of integer class ids, got "
                            "dtype float32 (converted or replaced since the build); rerun the "
                            f"`dp4tl build` that made {index_copy} (it writes the labels again "
                            "from its inputs)")


def test_a_file_or_a_synth_root_is_not_told_to_be_built(index_dataset, tmp_path):
    """``--data FILE`` and the root of a synth build (source/ + targets/NAME) were told
    `dp4tl build SOURCE --out <that path>`: building there again would not help."""
    root = tmp_path / "synth-tiny"
    for d in (root / "source", root / "targets" / "paper"):
        d.mkdir(parents=True)
        (d / "manifest.json").write_text((index_dataset.root / "manifest.json").read_text())
    with pytest.raises(DataError) as e:
        load_manifest(root)
    assert _one_line(e) == (f"{root} holds several built datasets, not one: pass {root}/source "
                            f"or {root}/targets/NAME (paper)")
    label_file = index_dataset.root / "train.labels.npy"
    with pytest.raises(DataError) as e:
        load_manifest(label_file)
    assert _one_line(e) == (f"{label_file} is a file, but a built dataset is a directory "
                            "(holding manifest.json); pass the directory `dp4tl build` wrote")
    assert "dp4tl build SOURCE --out" in str(verify_dataset(tmp_path / "nothing").problems)
    # a folder of a built dataset (its wds/ shards) was told to be built into (review)
    inner = index_dataset.root / "wds"
    made = not inner.exists()
    inner.mkdir(exist_ok=True)
    try:
        with pytest.raises(DataError) as e:
            load_manifest(inner)
        assert _one_line(e) == (f"{inner} is a folder inside the built dataset "
                                f"{index_dataset.root}: pass {index_dataset.root}")
    finally:
        if made:
            inner.rmdir()


def test_only_built_datasets_are_offered_as_the_datasets_a_folder_holds(index_dataset, tmp_path):
    """A folder of builds is told which sub-folder to pass; any ``manifest.json`` made a
    sub-folder "a built dataset" (a training run holding a web app's: "holds one: pass
    root/run"). The rule every output check uses (``outputs.is_dataset``: a dp4tl build's
    manifest) decides, for a synth root's source/ too; real builds are still offered."""
    root = tmp_path / "runs"
    for d in (root / "run", root / "source"):  # (each alone was a dataset offered)
        d.mkdir(parents=True)
        (d / "checkpoint.pt").write_bytes(b"")  # training runs' folders
        (d / "manifest.json").write_text(json.dumps({"name": "web app", "version": "1"}))
        with pytest.raises(DataError) as e:
            load_manifest(root)
        assert _one_line(e).startswith(f"{root} is not a built dataset (no manifest.json); "
                                       "build it"), d
    (root / "ds").mkdir()
    (root / "ds" / "manifest.json").write_text((index_dataset.root / "manifest.json").read_text())
    with pytest.raises(DataError) as e:
        load_manifest(root)
    assert _one_line(e) == f"{root} is not a built dataset but holds one: pass {root / 'ds'}"


def test_a_manifest_without_splits_says_so_where_a_split_is_read(index_copy):
    """`mask classes` on a manifest whose splits were emptied said "has no split 'train';
    available: " and stopped mid-sentence (review); it now says what verify says."""
    _edit_manifest(index_copy, lambda m: m.update(splits={}))
    with pytest.raises(DataError) as e:
        load_manifest(index_copy).split("train")
    assert _one_line(e) == (f"{index_copy / 'manifest.json'} lists no splits (emptied by hand?); "
                            "restore manifest.json or " + _one_line(e).split(" or ", 1)[1])
    assert "available" not in str(e.value)


@pytest.mark.parametrize("edit", ["a fingerprint pasted", "a split deleted"])
def test_a_manifest_whose_fingerprint_does_not_match_its_splits_is_refused_where_it_loads(
        index_copy, edit, capsys, monkeypatch):
    """Only ``verify`` checked the dataset fingerprint against the splits' own: every other
    command loaded a manifest carrying a pasted fingerprint (or with a split deleted) and keyed
    masks, scores and pipeline stages on it, so another dataset's cached stage could be reused
    for this one. Every command reads the manifest through ``load_manifest``: it refuses in
    one line naming the file and the fix; ``verify`` still reports it with the rest."""
    from cli_runner import cli, one_line

    from ffcv_dp4tl.contracts import dataset_fingerprint

    if edit == "a split deleted":  # a consistent two-split manifest first, which loads
        def add_val(m):
            m["splits"]["val"] = dict(m["splits"]["train"], fingerprint="cd" * 32)
            m["fingerprint"] = dataset_fingerprint([s["fingerprint"] for s in m["splits"].values()])
        _edit_manifest(index_copy, add_val)
        assert load_manifest(index_copy).split_names == ["train", "val"]
        _edit_manifest(index_copy, lambda m: m["splits"].pop("val"))
    else:
        _edit_manifest(index_copy, lambda m: m.update(fingerprint="ab" * 32))
    manifest = index_copy / "manifest.json"
    with pytest.raises(DataError) as e:
        load_manifest(index_copy)
    msg = _one_line(e)
    assert msg.startswith(f"{manifest}: the dataset fingerprint ") and "does not match its " \
        "splits" in msg and msg.endswith(f"restore manifest.json or {REBUILD}"), msg
    for command in (["info"], ["mask", "classes", "--classes", "0,1", "--out", index_copy.parent / "m.npy"]):
        code, _, err = cli(capsys, monkeypatch, *command, "--data", index_copy)
        one_line(code, err, str(manifest), "does not match its splits")
    problems = verify_dataset(index_copy).problems
    assert sum("does not match its splits" in p for p in problems) == 1, problems


def test_a_manifest_nested_too_deeply_is_one_line_for_info_and_verify(index_copy, capsys,
                                                                      monkeypatch):
    """``dp4tl info`` and ``verify`` on a 6 KB manifest.json of nested brackets ended in a
    RecursionError traceback (audit); both now say it cannot be read, naming the file."""
    from cli_runner import cli, one_line

    manifest = index_copy / "manifest.json"
    manifest.write_text("[" * 3000 + "]" * 3000)
    code, _, err = cli(capsys, monkeypatch, "info", "--data", index_copy)
    one_line(code, err, str(manifest), "cannot be read (nested too deeply)")
    (problem,) = verify_dataset(index_copy).problems
    assert str(manifest) in problem and "nested too deeply" in problem, problem


def test_a_missing_split_a_recipe_named_says_which_key_names_another(index_dataset):
    """`dp4tl finetune` on a target without `test` said only "has no split 'test'; available:
    train" (review): read for a recipe key, the error names the key that picks another."""
    m = load_manifest(index_dataset.root)
    with pytest.raises(DataError, match=r"has no split 'test' \(available: train\); build it "
                                        r"with that split, or name another \(--set "
                                        r"data.test_split=NAME\)$"):
        m.split("test", "data.test_split")
    with pytest.raises(DataError, match=r"has no split 'test' \(available: train\)$"):
        m.split("test")


@pytest.mark.parametrize("key, value", [("beton", "../elsewhere/train.beton"),
                                        ("labels", "/data/other/train.labels.npy"),
                                        ("shards", ["wds/../../x.tar"])])
def test_a_split_file_outside_the_build_is_refused(index_copy, key, value):
    """A hand-edited manifest could point loaders and verify at another folder's files and pass
    (review: "../../pristine/source/train.beton", exit 0): the build writes paths inside it."""
    _edit_manifest(index_copy, lambda m: m["splits"]["train"].update({key: value}))
    with pytest.raises(DataError) as e:
        load_manifest(index_copy)
    bad = value[0] if isinstance(value, list) else value
    assert f"{key} {bad!r} points outside the dataset folder" in _one_line(e)
    assert not verify_dataset(index_copy).ok


def test_a_shortened_or_emptied_class_list_is_refused_where_the_manifest_is_read(index_copy):
    """Models get one output per name in ``classes``: a list shortened by hand trained into an
    IndexError in the loss at the first label past its end. The split's class counts say how
    many classes it was built with."""
    root = index_copy
    built = len(load_manifest(root).classes)
    _edit_manifest(root, lambda m: m.update(classes=m["classes"][:2]))
    with pytest.raises(DataError) as e:
        load_manifest(root)
    assert _one_line(e) == (f"{root}/manifest.json: classes lists 2 names but split 'train' was "
                            f"built with {built} classes (its class_counts): classes was edited; "
                            f"restore manifest.json or {REBUILD}")
    _edit_manifest(root, lambda m: m.update(classes=[]))
    with pytest.raises(DataError, match=r"manifest\.json: classes is empty \(edited by hand\?\)") as e:
        load_manifest(root)
    _one_line(e)


def test_labels_past_the_class_list_are_refused_by_the_labels_and_both_loaders(index_copy):
    """A build recorded before class counts existed has only its labels to tell: a label that is
    no class of ``classes`` is one line naming the labels file, not a loss's IndexError."""
    root = index_copy

    def shorten(m):
        m["classes"] = m["classes"][:2]
        for s in m["splits"].values():
            s.pop("class_counts", None)
    _edit_manifest(root, shorten)
    split = load_manifest(root).split("train")
    hi = int(np.load(split.labels).max())
    want = (f"{split.labels}: label {hi} is no class of the 2 that {root}/manifest.json lists "
            "(classes edited, or labels replaced, since the build); restore them or rerun the "
            f"`dp4tl build` that made {root}")
    with pytest.raises(DataError) as e:
        split.load_labels()
    assert _one_line(e) == want
    for fmt in ("ffcv", "wds"):
        with pytest.raises(DataError) as e:
            make_loader(root, "train", fmt=fmt, aug=AugSpec.for_eval(), batch_size=8, resolution=16,
                        num_workers=0)
        assert _one_line(e) == want


@pytest.mark.parametrize("name", ["train.labels.npy", "manifest.json"])
def test_a_fifo_in_place_of_a_built_file_is_one_line_not_a_hang(index_copy, alarm, name):
    """A FIFO where the build's file belongs: opening it to read waited for a writer forever
    (`dp4tl verify` hung). Built files are checked to be regular files before they are read."""
    import os

    path = index_copy / name
    path.unlink()
    os.mkfifo(path)
    problems = verify_dataset(index_copy).problems
    assert any(p.startswith(f"{path}") and "not a regular file (a FIFO" in p for p in problems), problems
    with pytest.raises(DataError, match="not a regular file") as e:
        load_manifest(index_copy).split("train").load_labels()
    assert str(path) in str(e.value) and "\n" not in str(e.value)
