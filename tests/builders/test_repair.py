"""Repair of a damaged finished build (beton_builders.repair) by rerunning the same build.

What users rely on: the loaders and ``verify`` say "rerun the build" about a damaged file, and
that rerun restores exactly the build that was (damaged shards encoded again, a damaged beton
written again, an intact beton kept); a repair that would give other data is refused and the
intact files stay usable; a read-only or pre-checksum build is handled in one line.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import beton_builders.writer as writer_mod
from beton_builders import build_dataset
from ffcv_dp4tl.errors import DataError

try:  # rootdir-relative import (no tests/__init__.py) or package-relative
    from tiny_builds import OPTS, file_spec, image, manifest_of, mem_spec, shards_of, verify_ok
except ImportError:  # pragma: no cover
    from .tiny_builds import (OPTS, file_spec, image, manifest_of, mem_spec,  # type: ignore[no-redef]
                              shards_of, verify_ok)

# numba's dispatcher finalizer may log a KeyError when ffcv's generated code is collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_rerunning_the_build_repairs_damaged_files_from_the_inputs(tmp_path, builds, capsys):
    """Loaders and ``verify`` say "rebuild the dataset" about a damaged file; rerunning the same
    ``dp4tl build`` (which said "already built") repairs it: a damaged shard is encoded again, a
    damaged beton written again, lost labels and index rewritten, and the result equals the
    build it was, with one line on stderr saying so."""
    from ffcv_dp4tl.data.verify import verify_dataset

    out = tmp_path / "out"
    shutil.copytree(builds["a"], out)
    ref = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()
           and p.suffix in (".tar", ".npy")}
    shard = shards_of(out)[2]
    shard.write_bytes(shard.read_bytes()[:2000])
    beton = out / "train.beton"
    data = bytearray(beton.read_bytes())
    data[30] ^= 0xFF  # in the header: the beton's checksum differs
    beton.write_bytes(bytes(data))
    (out / "train.labels.npy").unlink()
    assert not verify_dataset(out).ok  # problems listed
    summary = build_dataset(mem_spec(), out, OPTS, source="mem")
    assert not summary.skipped
    assert "is damaged" in capsys.readouterr().err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()
            and p.suffix in (".tar", ".npy")} == ref
    assert verify_dataset(out).ok
    assert manifest_of(out)["fingerprint"] == manifest_of(builds["a"])["fingerprint"]
    assert build_dataset(mem_spec(), out, OPTS, source="mem").skipped  # intact: nothing to do


@pytest.mark.parametrize("what", ["beton", "shard"])
def test_a_folder_where_a_build_file_belongs_is_named_and_kept(tmp_path, builds, what):
    """A folder at a beton's or shard's path was called "missing" by verify and the loaders, and
    the rerun they advise began a repair and failed on it. Every reader now names the folder
    (fsutil.absent_why); the rerun refuses before it writes anything, and the folder, with what
    the user keeps in it, stays."""
    from ffcv_dp4tl.data.verify import verify_dataset

    out = tmp_path / "out"
    shutil.copytree(builds["a"], out)
    path = out / "train.beton" if what == "beton" else shards_of(out)[0]
    path.unlink()
    path.mkdir()
    (path / "mine.txt").write_text("the user's")
    manifest = (out / "manifest.json").read_bytes()
    problems = verify_dataset(out).problems
    assert problems and all("missing" not in p for p in problems), problems
    assert any(p.startswith(f"{path}: a folder where the build's file belongs") for p in problems)
    with pytest.raises(DataError, match="a folder where the build's file belongs .* then rerun the build"):
        build_dataset(mem_spec(), out, OPTS, source="mem")
    assert (path / "mine.txt").read_text() == "the user's"
    assert (out / "manifest.json").read_bytes() == manifest  # no repair begun
    assert not (out / ".build" / "repair.json").exists()
    shutil.rmtree(path)  # moved away, as told: the same rerun repairs the build
    build_dataset(mem_spec(), out, OPTS, source="mem")
    assert verify_dataset(out).ok


def test_a_repair_that_would_give_other_data_is_refused_on_every_rerun(tmp_path):
    """The inputs of a damaged shard changed since the build: repairing would change the data,
    so the beton (intact) is left as it was, and every later rerun
    refuses too, each time putting the manifest back so that the intact files stay usable (the
    intact shards, whose inputs changed too, are not encoded again); with the inputs restored
    the repair completes."""
    src = tmp_path / "src"
    spec = file_spec(src)
    out = tmp_path / "out"
    build_dataset(spec, out, OPTS, source="folder:src")
    beton = (out / "train.beton").read_bytes()
    shard = shards_of(out)[0]
    shard.write_bytes(shard.read_bytes()[:2000])
    manifest = (out / "manifest.json").read_bytes()
    intact = {p.name: p.read_bytes() for p in shards_of(out)[1:]}
    for _ in range(2):
        with pytest.raises(DataError, match="would give other data than it was built with.*its "
                                            "manifest and intact files are back as they were"):
            build_dataset(file_spec(src, salt=1), out, OPTS, source="folder:src")
        # the build is as usable as before the repair: its manifest is back, the intact shards
        # (whose inputs changed too) and the beton untouched
        assert (out / "manifest.json").read_bytes() == manifest
        assert {p.name: p.read_bytes() for p in shards_of(out)[1:]} == intact
        assert (out / "train.beton").read_bytes() == beton
        assert not (out / ".build" / "repair.json").exists()
    build_dataset(file_spec(src), out, OPTS, source="folder:src")  # the original pixels again
    assert verify_ok(out) and not (out / ".build" / "repair.json").exists()
    assert (out / "train.beton").read_bytes() == beton


def test_repairing_a_shard_keeps_an_intact_beton(tmp_path, builds):
    """One damaged shard is encoded again; the beton, which passed its checksum, is not written
    again (at ImageNet scale that is a 70 GB write for one 100 MB shard)."""
    out = tmp_path / "out"
    shutil.copytree(builds["a"], out)
    before = (out / "train.beton").stat().st_mtime_ns
    shard = shards_of(out)[3]
    shard.write_bytes(shard.read_bytes()[:1000])
    build_dataset(mem_spec(), out, OPTS, source="mem")
    assert (out / "train.beton").stat().st_mtime_ns == before
    assert verify_ok(out)
    # what the loaders advise for damage inside a sample: delete the file named, rerun the build
    (out / "train.beton").unlink()
    shards_of(out)[1].unlink()
    build_dataset(mem_spec(), out, OPTS, source="mem")
    assert verify_ok(out) and len(shards_of(out)) == 5
    assert manifest_of(out)["fingerprint"] == manifest_of(builds["a"])["fingerprint"]


def test_an_empty_labels_file_is_repaired_not_an_abort(tmp_path, builds):
    """An emptied labels file (``np.load``: EOFError) is one more damaged file to repair."""
    out = tmp_path / "out"
    shutil.copytree(builds["a"], out)
    labels = (out / "train.labels.npy").read_bytes()
    (out / "train.labels.npy").write_bytes(b"")
    build_dataset(mem_spec(), out, OPTS, source="mem")
    assert (out / "train.labels.npy").read_bytes() == labels and verify_ok(out)


def test_a_damaged_read_only_build_is_one_line_not_already_built(tmp_path, builds, monkeypatch):
    """A finished build in a folder nobody can write is reused as it is, unless it is damaged:
    then one line says so (the loaders' advice to rerun the build could not repair it there)."""
    import errno

    out = tmp_path / "out"
    shutil.copytree(builds["a"], out)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(writer_mod, "build_lock", read_only)
    assert build_dataset(mem_spec(), out, OPTS, source="mem").skipped
    shard = shards_of(out)[0]
    shard.write_bytes(shard.read_bytes()[:500])
    with pytest.raises(DataError, match="is damaged and read-only, so the build cannot repair it"):
        build_dataset(mem_spec(), out, OPTS, source="mem")


def test_a_repair_keeps_the_warning_about_inputs_changed_since_the_build(tmp_path):
    """A repair keeps the intact shards (old pixels) of inputs edited since the build, so the
    "input file(s) changed" warning must survive it (recording the new stats hid it)."""
    import os

    src = tmp_path / "src"
    spec = file_spec(src)
    out = tmp_path / "out"
    build_dataset(spec, out, OPTS, source="folder:src")
    edited = Path(spec.splits["train"][20].ref)
    Image.fromarray(image(20, salt=1)).save(edited)
    os.utime(edited, ns=(10**18, 10**18))
    assert build_dataset(spec, out, OPTS, source="folder:src").warnings  # stale: warned
    (out / "train.labels.npy").write_bytes(b"")
    assert not build_dataset(spec, out, OPTS, source="folder:src").skipped  # repaired
    again = build_dataset(spec, out, OPTS, source="folder:src")
    assert again.skipped and any("changed size or modification time" in w for w in again.warnings)


def test_an_older_build_without_checksums_is_repaired_when_its_labels_are_gone(tmp_path, builds):
    """A build from before checksums were recorded: a missing labels file (what verify
    reports) is repaired by the rerun, not "already built"."""
    out = tmp_path / "out"
    shutil.copytree(builds["a"], out)
    m = manifest_of(out)
    m["splits"]["train"].pop("checksums", None)
    (out / "manifest.json").write_text(json.dumps(m))
    labels = (out / "train.labels.npy").read_bytes()
    (out / "train.labels.npy").unlink()
    assert not build_dataset(mem_spec(), out, OPTS, source="mem").skipped
    assert (out / "train.labels.npy").read_bytes() == labels


def test_deep_verify_damage_is_repaired_by_following_its_advice(tmp_path, builds):
    """A changed byte inside a shard's sample (away from its edges) is found by ``verify --deep``
    only; a rerun alone says "already built" (its checks are the loaders' cheap ones), so verify
    says to delete the file first, and doing exactly that restores the build."""
    import numpy as np

    from ffcv_dp4tl.data.verify import verify_dataset

    out = tmp_path / "out"
    shutil.copytree(builds["a"], out)
    index = np.load(out / "wds" / "train.index.npy")
    shard = out / manifest_of(out)["splits"]["train"]["shards"][int(index[12]["shard"])]
    data = bytearray(shard.read_bytes())
    data[int(index[12]["offset"]) + int(index[12]["size"]) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_dataset(out, deep=True).problems
    assert f"delete {shard} and rerun the `dp4tl build` that made {out}" in problems[0], problems
    assert build_dataset(mem_spec(), out, OPTS, source="mem").skipped  # why the advice says delete
    shard.unlink()
    assert not build_dataset(mem_spec(), out, OPTS, source="mem").skipped
    assert verify_dataset(out, deep=True).ok


def test_float_labels_are_repaired_by_a_rerun(tmp_path, builds):
    """Float labels of whole values hash like the build's (the digest casts to int64): the
    loaders refuse them saying "rerun the build", so the rerun's repair must see them too."""
    import numpy as np

    from ffcv_dp4tl.data.verify import verify_dataset

    out = tmp_path / "out"
    shutil.copytree(builds["a"], out)
    labels = out / "train.labels.npy"
    np.save(labels, np.load(labels).astype(np.float32))
    assert not verify_dataset(out).ok
    assert not build_dataset(mem_spec(), out, OPTS, source="mem").skipped
    assert np.load(labels).dtype == np.int64 and verify_dataset(out).ok
