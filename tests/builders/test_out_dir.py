"""What a build may touch in ``--out`` (beton_builders.out_dir).

What users rely on: a folder that is not a dp4tl build is never written or emptied, even with
``--overwrite``; a build killed at its first file resumes; a SOURCE of several datasets and a
build of one are never mixed in one folder; ``--overwrite`` of a synth SOURCE removes the old
targets it no longer makes, and nothing else.
"""
from __future__ import annotations

import pytest
from PIL import Image

from beton_builders import build_dataset
from ffcv_dp4tl.errors import DataError

try:  # rootdir-relative import (no tests/__init__.py) or package-relative
    from tiny_builds import OPTS, image, manifest_of, mem_spec, shards_of, verify_ok
except ImportError:  # pragma: no cover
    from .tiny_builds import (OPTS, image, manifest_of, mem_spec,  # type: ignore[no-redef]
                              shards_of, verify_ok)

# numba's dispatcher finalizer may log a KeyError when ffcv's generated code is collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_foreign_nonempty_dir_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and is not a dp4tl build"):
        build_dataset(mem_spec(n=3), tmp_path, OPTS)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_never_deletes_a_folder_that_is_no_build(tmp_path):
    """``--overwrite`` replaces a dp4tl build only: a folder of the user's own shards, betons
    and notes is refused before any file is touched (it used to delete wds/, the betons and
    the labels, then refuse because of the notes), and the message does not suggest
    ``--overwrite``."""
    out = tmp_path / "mine"
    (out / "wds").mkdir(parents=True)
    files = {out / "wds" / "my-shard.tar": b"tar", out / "imagenet_train.beton": b"beton",
             out / "imagenet.labels.npy": b"labels", out / "notes.txt": b"notes"}
    for path, data in files.items():
        path.write_bytes(data)
    for overwrite in (False, True):
        with pytest.raises(DataError, match="is not empty and is not a dp4tl build: choose another --out") as e:
            build_dataset(mem_spec(n=3), out, OPTS, overwrite=overwrite)
        assert "pass --overwrite" not in str(e.value)
        assert all(path.read_bytes() == data for path, data in files.items())
    (out / "d").mkdir()  # temporary-looking files of the user's are not ours either
    (out / ".report.md.tmp").write_text("draft")
    (out / "d" / ".draft.tmp.txt").write_text("draft")
    with pytest.raises(DataError, match="is not a dp4tl build"):
        build_dataset(mem_spec(n=3), out, OPTS, overwrite=True)
    assert (out / ".report.md.tmp").exists() and (out / "d" / ".draft.tmp.txt").exists()
    assert not (out / ".build.lock").exists()
    (out / "notes.txt").unlink()  # only build-like files left: still not a build, still kept
    with pytest.raises(DataError, match="is not a dp4tl build"):
        build_dataset(mem_spec(n=3), out, OPTS, overwrite=True)
    assert (out / "imagenet_train.beton").read_bytes() == b"beton"


@pytest.mark.parametrize("state", ["finished", "manifest cut short", "killed before its manifest"])
def test_overwrite_deletes_the_builds_files_and_keeps_the_users_beside_them(tmp_path, state):
    """``--overwrite`` emptied ``wds/`` whole and every ``*.beton`` at the top, so a user's own
    shard and notes kept in a build's ``wds/`` were deleted without a word (audit). Only the
    files named after the build's splits go, found from the manifest or, when it is damaged or
    not yet written, from the build's shard records; the new build is then complete."""
    import shutil

    out = tmp_path / "out"
    build_dataset(mem_spec(n=16), out, OPTS)  # 2 shards of 8
    built = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert {"train.beton", "wds/train-000000.tar", "wds/train-000001.tar"} <= {str(p) for p in built}
    mine = {out / "wds" / "mydata-000000.tar": (out / "wds" / "train-000000.tar").read_bytes(),
            out / "wds" / "notes.txt": b"mine", out / "imagenet.beton": b"beton",
            out / "NOTES.md": b"notes"}
    for path, data in mine.items():
        path.write_bytes(data)
    if state == "manifest cut short":
        (out / "manifest.json").write_text((out / "manifest.json").read_text()[:50])
    elif state == "killed before its manifest":  # (its beton, labels and index not made yet)
        for rel in ("manifest.json", "train.beton", "train.labels.npy", "wds/train.index.npy"):
            (out / rel).unlink()
        shutil.copy(out / "wds" / "train-000001.tar", out / "wds" / "train-000002.tar")
        (out / ".build" / "train-000002.json").write_text("{}")  # a third finished shard
    build_dataset(mem_spec(n=8), out, OPTS, overwrite=True)  # 1 shard: the old second must go
    assert all(path.read_bytes() == data for path, data in mine.items())
    assert shards_of(out) == [out / "wds" / "train-000000.tar"]
    assert manifest_of(out)["splits"]["train"]["num_samples"] == 8 and verify_ok(out)


@pytest.mark.parametrize("what", ["beton", "shard", "manifest", "link to a folder"])
def test_overwrite_refuses_a_folder_where_a_build_file_belongs_before_touching_anything(tmp_path, what):
    """``--overwrite`` skipped a folder at a split's beton or shard path, deleted the rest of
    the build, then stopped while writing there; a folder at ``manifest.json`` was deleted
    with what the user kept in it. It now names the folder before anything is written or
    deleted (the readers' and the repair's rule, fsutil.absent_why), and the same command
    rebuilds once the folder is moved away. A link to a folder is one too, as for the readers."""
    import shutil

    out = tmp_path / "out"
    build_dataset(mem_spec(n=16), out, OPTS)  # 2 shards of 8
    path = {"shard": shards_of(out)[1], "manifest": out / "manifest.json"}.get(what,
                                                                              out / "train.beton")
    path.unlink()
    folder = tmp_path / "elsewhere" if what == "link to a folder" else path
    folder.mkdir()
    (folder / "mine.txt").write_text("the user's")
    if folder != path:
        path.symlink_to(folder)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=f"^{path} is a folder where the build's file belongs "
                       r"\(move it away first: it is never deleted\); then rerun the build with "
                       "--overwrite$"):
        build_dataset(mem_spec(n=8), out, OPTS, overwrite=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    path.unlink() if path.is_symlink() else shutil.rmtree(path)  # moved away, as told
    build_dataset(mem_spec(n=8), out, OPTS, overwrite=True)  # the same command rebuilds
    assert shards_of(out) == [out / "wds" / "train-000000.tar"] and verify_ok(out)


def test_a_resumed_build_names_a_folder_where_a_build_file_belongs(tmp_path):
    """An interrupted build resumed with a folder at a split's beton stopped there with "a file
    is where a folder should be (or the reverse); choose another path": advice to give up the
    folder's build. It names the folder and says to move it, by the same rule as --overwrite;
    once it is moved the same command resumes."""
    import shutil

    out = tmp_path / "out"
    build_dataset(mem_spec(n=16), out, OPTS)
    (out / "manifest.json").unlink()  # (killed before its manifest: a resume)
    (out / "train.beton").unlink()
    (out / "train.beton").mkdir()
    (out / "train.beton" / "mine.txt").write_text("the user's")
    with pytest.raises(DataError, match=f"^{out / 'train.beton'} is a folder where the build's "
                       r"file belongs \(move it away first: it is never deleted\); then rerun "
                       "the build to resume it$"):
        build_dataset(mem_spec(n=16), out, OPTS)
    assert (out / "train.beton" / "mine.txt").read_text() == "the user's"
    shutil.rmtree(out / "train.beton")
    build_dataset(mem_spec(n=16), out, OPTS)
    assert verify_ok(out)


@pytest.mark.parametrize("state", ["finished", "manifest cut short", "killed before its manifest"])
def test_remove_build_finds_the_splits_from_what_the_build_left(tmp_path, state):
    """With no split names given (the synth stale-target clean-up; a rebuild that makes other
    splits), the old build's splits come from its manifest, or, when that is cut short or not
    yet written, from its shard records: every file of theirs goes, the user's stay."""
    import shutil

    from beton_builders.out_dir import build_splits, remove_build

    out = tmp_path / "out"
    build_dataset(mem_spec(n=16), out, OPTS)
    for old, new in (("train", "val"),):  # the build's split renamed, as another build's would be
        for p in list(out.rglob(f"{old}*")):
            p.rename(p.with_name(p.name.replace(old, new, 1)))
        m = manifest_of(out)
        m["splits"] = {new: {k: v.replace(old, new) if isinstance(v, str) else
                             [x.replace(old, new) for x in v] if k == "shards" else v
                             for k, v in m["splits"][old].items()}}
        (out / "manifest.json").write_text(__import__("json").dumps(m))
    mine = {out / "wds" / "my-000000.tar": b"tar", out / "train.beton": b"beton of mine"}
    for path, data in mine.items():
        path.write_bytes(data)
    if state == "manifest cut short":
        (out / "manifest.json").write_text((out / "manifest.json").read_text()[:40])
    elif state == "killed before its manifest":
        (out / "manifest.json").unlink()
        shutil.copy(out / "wds" / "val-000001.tar", out / "wds" / "val-000002.tar")
        (out / ".build" / "val-000002.json").write_text("{}")
    assert build_splits(out) == {"val"}
    remove_build(out)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == [".build.lock", "train.beton", "wds/my-000000.tar"], left
    assert all(path.read_bytes() == data for path, data in mine.items())


def test_overwrite_rebuilds_over_a_manifest_damaged_past_reading(tmp_path, capsys, monkeypatch):
    """``dp4tl build --overwrite``, what every refusal of a hand-edited manifest advises, died
    with a RecursionError before deleting anything when the manifest was nested thousands of
    levels deep (the output-folder check read it), and split names no build writes (300
    characters, a NUL byte) made the deletion fail (review). It rebuilds."""
    import json

    from cli_runner import cli

    from beton_builders.out_dir import build_splits

    src = tmp_path / "images"
    for i in range(6):
        folder = src / ("ant", "bee")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(i)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    args = ("build", f"folder:{src}", "--out", out, "--workers", "1", "--no-progress")
    assert cli(capsys, monkeypatch, *args)[0] == 0
    m = json.loads((out / "manifest.json").read_text())
    m["splits"].update({"x" * 300: {}, "a\0b": {}})
    (out / "manifest.json").write_text(json.dumps(m))
    assert build_splits(out) == {"train"}
    (out / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    code, _, err = cli(capsys, monkeypatch, *args, "--overwrite")
    assert code == 0, err
    assert manifest_of(out)["splits"]["train"]["num_samples"] == 6 and verify_ok(out)


def test_overwrite_removes_wds_when_it_held_only_the_builds_files(tmp_path):
    out = tmp_path / "out"
    build_dataset(mem_spec(n=8), out, OPTS)
    from beton_builders.out_dir import remove_build

    remove_build(out)
    assert {p.name for p in out.iterdir()} <= {".build.lock"}  # (the lock a build leaves)


def test_a_build_killed_writing_its_first_file_is_resumed_not_refused(tmp_path):
    """A kill during the first atomic write leaves the lock and ``.build/`` holding only a
    temporary file (removed by the next run): that folder is a fresh build's, not a foreign
    one (which led users to --overwrite)."""
    out = tmp_path / "out"
    (out / ".build").mkdir(parents=True)
    (out / ".build.lock").write_text("")
    (out / ".build" / ".settings.json.x1y2.tmp").write_text("{")  # what atomic_write_json leaves
    summary = build_dataset(mem_spec(n=6), out, OPTS)
    assert not summary.skipped and manifest_of(out)["splits"]["train"]["num_samples"] == 6


def test_a_build_of_the_other_shape_is_refused_before_anything_is_touched(tmp_path, capsys,
                                                                          monkeypatch):
    """A synth SOURCE (source/ + targets/) over a build of one dataset, or the reverse, even
    with ``--overwrite``: one line saying what the folder holds, and every file stays (a synth
    SOURCE used to build beside the old build, mixing the two)."""
    from cli_runner import cli

    small = ("synth:tiny,num_superclasses=4,classes_per_superclass=2,train_per_class=4,"
             "val_per_class=0,image_size=16,target_classes=3,target_train_per_class=2,"
             "target_test_per_class=1,num_targets=1")
    src = tmp_path / "src"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(image(i + 3 * (c == "b"))).save(src / c / f"{i}.png")
    args = ("--workers", "1", "--no-progress", "--overwrite")
    single, synth = tmp_path / "single", tmp_path / "synth"
    assert cli(capsys, monkeypatch, "build", f"folder:{src}", "--out", str(single), *args)[0] == 0
    assert cli(capsys, monkeypatch, "build", small, "--out", str(synth), *args)[0] == 0
    for out, source, says in ((single, small, "holds a build of one dataset"),
                              (synth, f"folder:{src}", "holds a synth build")):
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        code, _, err = cli(capsys, monkeypatch, "build", source, "--out", str(out), *args)
        assert code != 0 and says in err and "Traceback" not in err
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


#: a synth SOURCE of three targets (blur, paper, warm) small enough to build in seconds
_SMALL_SYNTH = ("synth:tiny,num_superclasses=4,classes_per_superclass=2,train_per_class=4,"
                "val_per_class=0,image_size=16,target_classes=3,target_train_per_class=2,"
                "target_test_per_class=1")


def _build_small_synth(tmp_path, capsys, monkeypatch):
    """``dp4tl build`` of :data:`_SMALL_SYNTH` into ``tmp_path/s`` (its folder)."""
    from cli_runner import cli

    out = tmp_path / "s"
    assert cli(capsys, monkeypatch, "build", _SMALL_SYNTH, "--out", str(out), "--workers", "1",
               "--no-progress")[0] == 0
    return out


def test_overwriting_synth_with_fewer_targets_removes_the_old_ones(tmp_path, capsys, monkeypatch):
    """``dp4tl build synth:... --overwrite`` with fewer targets than the build it replaces: the
    targets the new SOURCE does not make are removed (the pipeline pairs every ``targets/*``
    with the source, so an old target would pass for one of the new data); a folder the user
    put there that is no build stays."""
    from cli_runner import cli

    small, out = _SMALL_SYNTH, _build_small_synth(tmp_path, capsys, monkeypatch)
    assert sorted(p.name for p in (out / "targets").iterdir()) == ["blur", "paper", "warm"]
    (out / "targets" / "mine").mkdir()
    (out / "targets" / "mine" / "notes.txt").write_text("kept")
    code, stdout, _ = cli(capsys, monkeypatch, "build", small + ",num_targets=1,seed=1", "--out",
                          str(out), "--workers", "1", "--no-progress", "--overwrite")
    assert code == 0
    assert sorted(p.name for p in (out / "targets").iterdir()) == ["mine", "paper"]
    assert "targets/blur: removed" in stdout and "targets/warm: removed" in stdout


def test_an_overwrite_of_a_synth_build_holds_every_part_from_the_first_build_to_the_last(
        tmp_path, capsys, monkeypatch):
    """``--overwrite`` of a synth build checked its parts' readers before it started, then
    locked each part only while that part was rebuilt: a finetuning starting on an old target
    while the source was replaced read an old target beside a new source (audit). Every part,
    the stale ones it removes included, is now held from the first build to the last."""
    import beton_builders.writer as writer
    from cli_runner import cli
    from lock_probe import exclusive_is_free

    small, out = _SMALL_SYNTH, _build_small_synth(tmp_path, capsys, monkeypatch)
    parts = [out / "source", *sorted((out / "targets").iterdir())]
    assert len(parts) == 4
    real, seen = writer.build_dataset, {}

    def build(spec, target, *a, **k):  # who else could take a part's lock while one is built
        seen[target.name] = [exclusive_is_free(p / ".build.lock") for p in parts if p != target]
        return real(spec, target, *a, **k)

    monkeypatch.setattr(writer, "build_dataset", build)
    code, stdout, err = cli(capsys, monkeypatch, "build", small + ",num_targets=2,seed=1",
                            "--out", str(out), "--workers", "1", "--no-progress", "--overwrite")
    assert code == 0, err
    assert sorted(seen) == ["paper", "source", "warm"]
    assert seen == {name: [False] * 3 for name in seen}, seen  # (all held, the stale one too)
    assert "targets/blur: removed" in stdout
    assert all(exclusive_is_free(p / ".build.lock") for p in parts if p.exists())


def test_a_stale_target_with_a_folder_where_a_build_file_belongs_is_refused_before_the_build(
        tmp_path, capsys, monkeypatch):
    """A target the new synth SOURCE no longer makes is removed after the build; a folder at its
    manifest.json was kept there (never deleted), the target still read as a build, and it was
    reported "removed" (review). It is refused before anything is built, naming the folder."""
    from cli_runner import cli

    small, out = _SMALL_SYNTH, _build_small_synth(tmp_path, capsys, monkeypatch)
    blur = out / "targets" / "blur"
    (blur / "manifest.json").unlink()
    (blur / "manifest.json").mkdir()
    (blur / "manifest.json" / "mine.txt").write_text("the user's")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, _, err = cli(capsys, monkeypatch, "build", small + ",num_targets=1,seed=1", "--out",
                       str(out), "--workers", "1", "--no-progress", "--overwrite")
    assert code == 2 and err.strip().endswith(
        f"{blur / 'manifest.json'} is a folder where the build's file belongs (move it away "
        "first: it is never deleted); then rerun the build with --overwrite"), err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_split_added_to_the_manifest_by_hand_is_not_taken_for_the_builds(tmp_path):
    """--overwrite deletes the files named after the build's splits. A split added to
    manifest.json by hand, named after the user's own mine.beton, had that file deleted: where
    the build's shard records exist, only the splits they (or a repair under way) name are the
    build's. A build whose records are gone still has its manifest's splits removed."""
    import json
    import shutil

    from beton_builders.out_dir import build_splits, remove_build

    out = tmp_path / "out"
    build_dataset(mem_spec(n=16), out, OPTS)
    m = manifest_of(out)
    m["splits"]["mine"] = {**m["splits"]["train"], "beton": "mine.beton"}
    (out / "manifest.json").write_text(json.dumps(m))
    mine = {out / "mine.beton": b"my beton", out / "mine.labels.npy": b"my labels"}
    for path, data in mine.items():
        path.write_bytes(data)
    assert build_splits(out) == {"train"}
    (out / ".build" / "repair.json").write_text(json.dumps({"splits": {"train": "f", "val": "g"}}))
    assert build_splits(out) == {"train", "val"}  # (a repair may have removed val's one record)
    (out / ".build" / "repair.json").unlink()
    remove_build(out)
    assert all(path.read_bytes() == data for path, data in mine.items())
    assert not (out / "train.beton").exists() and not (out / "manifest.json").exists()

    other = tmp_path / "other"  # records gone: the manifest is all that tells
    build_dataset(mem_spec(n=16), other, OPTS)
    shutil.rmtree(other / ".build")
    assert build_splits(other) == {"train"}
