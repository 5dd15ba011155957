"""Odd file trees in the layouts: symlink loops are one-line errors naming the link; file and
folder names that are not UTF-8 are read, shown with ``\\xNN`` escapes and build fine."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beton_builders import BuildOptions, build_dataset
from beton_builders.layouts import read_layout
from ffcv_dp4tl.errors import DataError


def _img(path: Path, value: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), value, np.uint8)).save(path)


def _tree(root: Path) -> None:
    for c in ("cat", "dog"):
        for k in range(2):
            _img(root / c / f"{k}.jpg", 40 * k + 10)


def _layout_tree(root: Path, layout: str) -> tuple[Path, Path]:
    """(root, the folder of class folders): ``_tree`` as the folder layout or as ImageNet's
    train/ (+ val/)."""
    base = root / "train" if layout == "imagenet" else root
    _tree(base)
    if layout == "imagenet":
        _tree(root / "val")
    return root, base


def _odd(name: bytes) -> str:
    return os.fsdecode(name)  # surrogate-escaped str, as os.scandir returns it


@pytest.mark.parametrize("kind", ["link-pair", "self", "ancestor"])
@pytest.mark.parametrize("layout", ["folder", "imagenet"])
def test_symlink_loop_is_one_line_naming_the_link(tmp_path, kind, layout):
    root, base = _layout_tree(tmp_path / "ds", layout)
    where = base / "cat"
    if kind == "link-pair":
        os.symlink("b", where / "a")
        os.symlink("a", where / "b")
        link = where / "a"
    elif kind == "self":
        os.symlink(".", where / "again")
        link = where / "again"
    else:
        (where / "deep").mkdir()
        os.symlink("../..", where / "deep" / "up")
        link = where / "deep" / "up"
    with pytest.raises(DataError) as e:
        read_layout(layout, root)
    msg = str(e.value)
    assert "\n" not in msg and str(link) in msg and "symlink loop" in msg, msg


def test_symlinked_folders_without_loops_still_work(tmp_path):
    root = tmp_path / "ds"
    _tree(root)
    _img(tmp_path / "elsewhere" / "x.jpg")
    os.symlink(tmp_path / "elsewhere", root / "dog" / "more")
    spec = read_layout("folder", root)
    assert len(spec.splits["train"]) == 5


def test_non_utf8_names_are_read_and_shown_escaped(tmp_path):
    root = tmp_path / "ds"
    _tree(root)
    odd_cls = root / _odd(b"ch\xe8vre")
    _img(odd_cls / _odd(b"caf\xe9.jpg"), 99)
    spec = read_layout("folder", root)
    assert spec.classes == ["cat", "ch\\xe8vre", "dog"]
    names = [s.display_name() for s in spec.splits["train"]]
    assert any(n.endswith("ch\\xe8vre/caf\\xe9.jpg") for n in names), names
    for n in names:
        n.encode("utf-8")  # printable everywhere

    (root / "dog" / _odd(b"bad\xff.jpg")).write_bytes(b"not a jpeg")
    spec = read_layout("folder", root)
    out = tmp_path / "out"
    build_dataset(spec, out, BuildOptions(max_side=32, shard_size=4, workers=1, progress=False))
    rows = (out / "rejects.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert len(rows) == 1 and rows[0].split("\t")[1].endswith("dog/bad\\xff.jpg"), rows
    from ffcv_dp4tl.data import load_manifest

    m = load_manifest(out)
    assert m.classes == ["cat", "ch\\xe8vre", "dog"] and m.split("train").num_samples == 5
    # the same listing again resumes as the same build (the listing digest is stable)
    assert build_dataset(read_layout("folder", root), out,
                         BuildOptions(max_side=32, shard_size=4, workers=1, progress=False)).skipped


@pytest.mark.parametrize("layout", ["folder", "imagenet"])
def test_a_dangling_symlink_among_the_class_folders_is_one_line(tmp_path, layout):
    """A class folder reached through a symlink whose target is gone was dropped silently,
    renumbering the classes after it: it is one line naming the link."""
    root, base = _layout_tree(tmp_path / "ds", layout)
    link = base / "bird"
    os.symlink(tmp_path / "gone", link)
    with pytest.raises(DataError) as e:
        read_layout(layout, root)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{link}: a symlink to {tmp_path / 'gone'}, which leads nowhere"), msg
