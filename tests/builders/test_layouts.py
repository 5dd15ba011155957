"""Layout readers on tiny fake trees (see layout_fakes.py)."""
from __future__ import annotations


import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from beton_builders.layouts import LAYOUTS, read_layout
from beton_builders.spec import DatasetSpec
from ffcv_dp4tl.errors import DataError

try:  # rootdir-relative import (no tests/__init__.py) or package-relative
    import layout_fakes as F
except ImportError:  # pragma: no cover
    from . import layout_fakes as F  # type: ignore[no-redef]


def refs(spec: DatasetSpec, split: str, base: Path) -> list[tuple[str, int]]:
    return [(Path(s.ref).relative_to(base).as_posix(), s.label) for s in spec.splits[split]]


def counts(spec: DatasetSpec) -> dict[str, int]:
    return {k: len(v) for k, v in spec.splits.items()}


def check_files_exist(spec: DatasetSpec) -> None:
    for samples in spec.splits.values():
        for s in samples:
            assert Path(s.ref).is_file(), s.ref


def test_registry_names() -> None:
    """The built-in layouts are registered; a layout added to the table (ARCHITECTURE.md, "add a
    dataset layout") failed this test when it asserted the exact set (docs audit)."""
    assert set(LAYOUTS) >= {"imagenet", "folder", "flowers102", "dtd", "ucf101", "food101",
                            "oxfordpets", "stanfordcars", "sun397", "cifar10"}


def test_build_help_lists_every_registered_layout() -> None:
    """``dp4tl build --help`` lists the layouts of ``LAYOUTS``, one added there included: it
    listed a copy of the built-in names, which a new layout missed (docs audit)."""
    import subprocess
    import sys

    probe = ("from beton_builders.layouts import LAYOUTS, folder\n"
             "LAYOUTS['mylayout'] = folder.read\n"
             "from typer.testing import CliRunner\n"
             "from ffcv_dp4tl.cli import app\n"
             "r = CliRunner().invoke(app, ['build', '--help'])\n"
             "print(r.exit_code, ' '.join(r.output.replace('│', ' ').split()))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    listed = ", ".join(sorted([*LAYOUTS, "mylayout"]))
    assert out.stdout.startswith("0 ") and f"LAYOUT one of {listed} [required]" in out.stdout, \
        out.stdout


# --- imagenet -------------------------------------------------------------------------------

@pytest.mark.parametrize("val", ["folders", "kaggle", "txt", "devkit"])
def test_imagenet(tmp_path: Path, val: str) -> None:
    root = tmp_path / "CLS-LOC"
    F.make_imagenet(root, val)
    spec = read_layout("imagenet", root)
    assert spec.name == "imagenet" and spec.classes == F.WNIDS
    assert counts(spec) == {"train": 6, "val": 6}
    assert refs(spec, "train", root)[:3] == [("train/n01000001/n01000001_0.JPEG", 0),
                                              ("train/n01000001/n01000001_1.JPEG", 0),
                                              ("train/n02000002/n02000002_0.JPEG", 1)]
    by_name = {Path(s.ref).stem: s.label for s in spec.splits["val"]}
    expected = {f"ILSVRC2012_val_{k:08d}": F.WNIDS.index(w) for k, w in enumerate(F.VAL_WNIDS, 1)}
    assert by_name == expected
    check_files_exist(spec)
    if val == "kaggle":
        assert spec.extra["class_descriptions"] == ["thing 0, alias", "thing 1, alias", "thing 2, alias"]
    if val == "devkit":
        assert spec.extra["class_descriptions"] == [f"words of {w}" for w in F.WNIDS]


def test_imagenet_devkit_ground_truth_with_a_blank_line_inside_is_refused(tmp_path: Path) -> None:
    """Line i of the devkit's ground truth is image i's label: a blank line inside (an edited
    file) shifted every later label by one (review); a trailing newline stays harmless."""
    root = tmp_path / "CLS-LOC"
    F.make_imagenet(root, "devkit")
    gt = root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join(lines) + "\n\n")  # trailing blank lines: fine
    assert counts(read_layout("imagenet", root)) == {"train": 6, "val": 6}
    gt.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"ILSVRC2012_validation_ground_truth.txt: line 2 is blank "
                                        r"or a comment, but line i holds the label of "
                                        r"ILSVRC2012_val_00000002 \(every later label would shift\)"):
        read_layout("imagenet", root)


def test_imagenet_flat_val_without_ground_truth(tmp_path: Path) -> None:
    root = tmp_path / "in"
    F.make_imagenet(root, "txt")
    (root / "val_labels.txt").unlink()
    with pytest.raises(DataError, match="LOC_val_solution.csv"):
        read_layout("imagenet", root)


def test_imagenet_bad_wnid_in_labels(tmp_path: Path) -> None:
    root = tmp_path / "in"
    F.make_imagenet(root, "txt")
    F.text(root / "val_labels.txt", ["ILSVRC2012_val_00000001.JPEG n07777777"])
    with pytest.raises(DataError, match=r"val_labels.txt.*n07777777.*not a folder of train"):
        read_layout("imagenet", root)


def test_imagenet_wrong_root(tmp_path: Path) -> None:
    F.make_imagenet(tmp_path / "in", "folders")
    with pytest.raises(DataError, match=r"train.*pass the folder that contains train/"):
        read_layout("imagenet", tmp_path)


# --- folder ---------------------------------------------------------------------------------

def test_folder_single_split(tmp_path: Path) -> None:
    F.img(tmp_path / "dog" / "a.JPG")
    F.img(tmp_path / "dog" / "sub" / "b.png")
    F.img(tmp_path / "cat" / "c.jpeg")
    F.img(tmp_path / "cat" / ".hidden.jpg")
    (tmp_path / "cat" / "notes.txt").write_text("x")
    (tmp_path / "cat" / "broken.webp").write_bytes(b"not an image")  # kept: the writer rejects it
    F.img(tmp_path / ".git" / "x.jpg")
    with pytest.warns(UserWarning, match=r"1 file\(s\) in the class folders not read: no image "
                                         r"extension \(\.txt\), e\.g\. .*cat/notes\.txt"):
        spec = read_layout("folder", tmp_path)
    assert spec.classes == ["cat", "dog"]
    assert refs(spec, "train", tmp_path) == [("cat/broken.webp", 0), ("cat/c.jpeg", 0), ("dog/a.JPG", 1),
                                             ("dog/sub/b.png", 1)]


def test_folder_names_loose_images_and_lookalike_class_names(tmp_path: Path) -> None:
    """An image beside the class folders (one level too high) was dropped without a trace, and
    class folders ``café`` in NFC and NFD became two classes that print the same (audit): each
    is one warning; what is built does not change."""
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    for c in (nfc, nfd, "dog"):
        F.img(tmp_path / "train" / c / "a.jpg")
    F.img(tmp_path / "train" / "stray.jpg")
    (tmp_path / "train" / "README.txt").write_text("not an image: no warning")
    with pytest.warns(UserWarning) as record:
        spec = read_layout("folder", tmp_path)
    lines = sorted(str(w.message) for w in record)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{tmp_path}: 1 group(s) of class folders whose names differ only "
                               "in their Unicode form") and ascii(nfd) in lines[0], lines
    assert lines[1] == (f"{tmp_path}: 1 image(s) beside the class folders not read (an image "
                        f"belongs inside its class folder), e.g. {tmp_path / 'train' / 'stray.jpg'}; "
                        "move them into their class folders to build them")
    assert len(spec.classes) == 3 and counts(spec) == {"train": 3}


def test_folder_with_splits(tmp_path: Path) -> None:
    for split, classes in {"train": ["a", "b"], "val": ["b", "c"], "test": ["a", "c"]}.items():
        for c in classes:
            F.img(tmp_path / split / c / "1.jpg")
            F.img(tmp_path / split / c / "2.jpg")
    spec = read_layout("folder", tmp_path)
    assert spec.classes == ["a", "b", "c"]
    assert counts(spec) == {"train": 4, "val": 4, "test": 4}
    assert refs(spec, "val", tmp_path) == [("val/b/1.jpg", 1), ("val/b/2.jpg", 1), ("val/c/1.jpg", 2),
                                           ("val/c/2.jpg", 2)]
    assert [s.label for s in spec.splits["test"]] == [0, 0, 2, 2]


def test_a_class_named_train_is_a_class_and_a_mixed_tree_is_named(tmp_path: Path) -> None:
    """CIFAR-100 has a class "train": a flat tree with it was taken for a split layout and
    refused as "no class folders" (or, with sub-folders in it, built without the other classes)."""
    flat = tmp_path / "cifar100like"
    for c in ("apple", "bus", "train", "tulip"):
        F.img(flat / c / "1.png")
    spec = read_layout("folder", flat)
    assert spec.classes == ["apple", "bus", "train", "tulip"] and counts(spec) == {"train": 4}
    mixed = tmp_path / "mixed"
    F.img(mixed / "train" / "a" / "1.jpg")
    F.img(mixed / "b" / "1.jpg")
    with pytest.raises(DataError, match=r"mixed: holds split folders \(train\) beside other folders "
                                        r"\(b\), so it is neither layout; put every class folder "
                                        r"inside train/"):
        read_layout("folder", mixed)


def test_folder_empty_class_and_split(tmp_path: Path) -> None:
    F.img(tmp_path / "a" / "1.jpg")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"b: class folder has no image files"):
        read_layout("folder", tmp_path)
    other = tmp_path / "o"
    F.img(other / "train" / "a" / "1.jpg")
    (other / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="split 'val' is empty"):
        read_layout("folder", other)


# --- flowers102 -----------------------------------------------------------------------------

@pytest.mark.parametrize("names", [False, True])
def test_flowers102(tmp_path: Path, names: bool) -> None:
    F.make_flowers102(tmp_path, names=names)
    spec = read_layout("flowers102", tmp_path)
    assert spec.classes == (["pink primrose", "hard-leaved pocket orchid", "canterbury bells"] if names
                            else ["class_001", "class_002", "class_003"])
    assert counts(spec) == {"train": 3, "val": 3, "test": 4}
    assert refs(spec, "test", tmp_path) == [("jpg/image_00010.jpg", 2), ("jpg/image_00009.jpg", 2),
                                            ("jpg/image_00008.jpg", 1), ("jpg/image_00007.jpg", 0)]
    check_files_exist(spec)


def test_flowers102_bad_setid(tmp_path: Path) -> None:
    F.make_flowers102(tmp_path)
    import scipy.io
    scipy.io.savemat(str(tmp_path / "setid.mat"), {"trnid": np.array([[1, 99]]), "valid": np.array([[2]]),
                                                    "tstid": np.array([[3]])})
    with pytest.raises(DataError, match=r"setid.mat.*'trnid'.*99"):
        read_layout("flowers102", tmp_path)
    scipy.io.savemat(str(tmp_path / "setid.mat"), {"trnid": np.array([[1]])})
    with pytest.raises(DataError, match=r"setid.mat.*missing field 'valid'"):
        read_layout("flowers102", tmp_path)


def test_flowers102_mat_declaring_millions_of_labels_is_refused_unread(tmp_path: Path) -> None:
    """A compressed .mat of a few KB can declare 50M elements, which loadmat built (0.9 GB)
    during the build; the declared shapes are checked first (scipy.io.whosmat)."""
    import scipy.io

    F.make_flowers102(tmp_path)
    scipy.io.savemat(str(tmp_path / "imagelabels.mat"), {"labels": np.ones((1, 1_500_000), np.uint8)},
                     do_compression=True)
    assert (tmp_path / "imagelabels.mat").stat().st_size < 10_000
    with pytest.raises(DataError, match=r"imagelabels.mat: field 'labels' declares shape "
                                        r"\(1, 1500000\), more than the 1,000,000 elements") as e:
        read_layout("flowers102", tmp_path)
    assert "\n" not in str(e.value)


def test_stanfordcars_mat_with_a_huge_nested_field_is_refused_unread(tmp_path: Path) -> None:
    """The declared shapes (scipy.io.whosmat) are the top-level variables' only: a (1, 1)
    struct with a 40M-element field, 311 KB compressed, passed and loadmat built it (662 MB;
    here 9M elements). The file's data is inflated in chunks and counted first."""
    import scipy.io

    F.make_stanfordcars(tmp_path)
    path = tmp_path / "devkit" / "cars_train_annos.mat"
    ann = np.zeros((1, 1), dtype=[("fname", "O"), ("class", "O"), ("pad", "O")])
    ann[0, 0]["fname"], ann[0, 0]["class"], ann[0, 0]["pad"] = "x.jpg", 1, np.zeros(9_000_000)
    scipy.io.savemat(str(path), {"annotations": ann}, do_compression=True)
    del ann
    assert path.stat().st_size < 200_000
    assert scipy.io.whosmat(str(path)) == [("annotations", (1, 1), "struct")]  # (what it saw)
    with pytest.raises(DataError) as e:
        read_layout("stanfordcars", tmp_path)
    assert str(e.value).startswith(f"{path}: its data decompresses to more than 64 MiB, far more "
                                   "than a dataset's labels or annotations hold; "), e.value
    assert "\n" not in str(e.value)


def test_mat_data_bytes_counts_plain_and_compressed_elements(tmp_path: Path) -> None:
    """Both forms count what loadmat would hold: an uncompressed file its elements' bytes, a
    compressed one what they inflate to; a file that is not MAT v5 counts 0 (scipy decides)."""
    import scipy.io

    from beton_builders.layouts._mat import mat_data_bytes

    data = {"a": np.arange(1000.0), "b": np.array([[1, 2]], np.uint8)}
    sizes = []
    for compressed in (False, True):
        scipy.io.savemat(str(tmp_path / "x.mat"), data, do_compression=compressed)
        sizes.append(mat_data_bytes(tmp_path / "x.mat"))
    assert 8000 < sizes[0] <= sizes[1] < 9000, sizes
    (tmp_path / "y.mat").write_bytes(b"\0" * 40)
    assert mat_data_bytes(tmp_path / "y.mat") == 0


def _mat_struct_without_fields(n: int, version: int = 0x0100, before: bytes = b"",
                               order: str = "<") -> bytes:
    """A MAT v5 file, written by hand as a few hundred bytes: a cell holding a (1, n) struct
    array with no fields, which has no data to count, yet becomes n Python objects (after the
    elements ``before``, as another writer put them; the header's ``version``; its byte
    ``order``, ``>`` big-endian as a MATLAB on such a machine wrote it, marked ``MI``)."""
    import struct
    import zlib

    def el(t: int, data: bytes) -> bytes:
        return struct.pack(f"{order}II", t, len(data)) + data + b"\0" * (-len(data) % 8)

    def matrix(cls: int, dims: tuple[int, int], name: str, rest: bytes) -> bytes:
        return el(14, el(6, struct.pack(f"{order}II", cls, 0)) + el(5, struct.pack(f"{order}2i", *dims))
                  + el(1, name.encode()) + rest)

    # a small element (its byte count 4 and type 5 in one word) says 32-byte names; 0 of them
    fields = struct.pack(f"{order}Ii", 4 << 16 | 5, 32) + el(1, b"")
    top = matrix(1, (1, 1), "annotations", matrix(2, (1, n), "", fields))
    header = (b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8
              + struct.pack(f"{order}H", version))
    packed = zlib.compress(top)
    return (header + (b"IM" if order == "<" else b"MI") + before
            + struct.pack(f"{order}II", 15, len(packed)) + packed)  # (no padding)


def test_a_mat_whose_cells_and_structs_hold_millions_of_elements_is_refused(tmp_path: Path
                                                                            ) -> None:
    """Counting data bytes missed objects without data: a 200-byte file holding a (1, 2M)
    struct array without fields built 2M objects (372 MB, 4 s; review). The cells' and structs'
    elements are counted, nested ones too, before scipy builds them; a real annotations file
    (8,144 structs of 6 fields, as Stanford Cars') loads."""
    import scipy.io

    from beton_builders.layouts._mat import MAX_MAT_ELEMENTS, load_mat, mat_objects

    path = tmp_path / "a.mat"
    path.write_bytes(_mat_struct_without_fields(2_000_000))
    assert path.stat().st_size < 300
    with pytest.raises(DataError, match=r"its cells and structs hold more than 1,000,000 "
                                        r"elements"):
        load_mat(path, ["annotations"])
    for order in ("<", ">"):  # (a big-endian file, ``MI``, is read in its own byte order)
        path.write_bytes(_mat_struct_without_fields(1000, order=order))
        assert mat_objects(path) == 1 + 1000 * 2  # (a struct element: a mat_struct, __dict__)
        assert len(load_mat(path, ["annotations"])["annotations"]) == 1000
    rec = np.zeros((1, 8144), dtype=[(f, "O") for f in ("x1", "y1", "x2", "y2", "class",
                                                         "fname")])
    for i in range(8144):
        rec[0, i] = (1, 2, 3, 4, 5, f"{i:05d}.jpg")
    for compressed in (False, True):
        scipy.io.savemat(str(path), {"annotations": rec}, do_compression=compressed)
        assert 8144 * 6 <= mat_objects(path) < MAX_MAT_ELEMENTS
        assert len(load_mat(path, ["annotations"])["annotations"]) == 8144


def test_a_mat_is_read_as_scipy_reads_it_whatever_its_spelling(tmp_path: Path) -> None:
    """The count read files otherwise than scipy, which loaded them (review): a version other
    than exactly 0x0100 (scipy takes any minor of major 1) counted nothing, and so did what
    followed a compressed variable (whose byte count is exact, not padded to 8, as savemat
    writes it); a big-endian file must be counted in its own byte order. Each still builds 2M
    objects in scipy: refused for that. An object, a function handle or
    a struct of 100,000 fields (scipy's field-name check is quadratic) is refused by name."""
    import struct
    import zlib

    import scipy.io

    from beton_builders.layouts._mat import load_mat

    scipy.io.savemat(str(tmp_path / "small.mat"), {"a": np.arange(3)}, do_compression=True)
    small = (tmp_path / "small.mat").read_bytes()[128:]
    assert len(small) % 8 != 0  # (an unpadded compressed element)
    path = tmp_path / "a.mat"
    for spelling in (dict(version=0x0101), dict(version=0x01FF), dict(before=small),
                     dict(order=">")):  # (big-endian, ``MI``: read in its own byte order)
        path.write_bytes(_mat_struct_without_fields(2_000_000, **spelling))
        with pytest.raises(DataError, match="its cells and structs hold more than 1,000,000"):
            load_mat(path, ["annotations"])

    def el(t: int, data: bytes) -> bytes:
        return struct.pack("<II", t, len(data)) + data + b"\0" * (-len(data) % 8)

    names = b"".join(f"f{i:07d}".encode().ljust(9, b"\0") for i in range(100_000))
    wide = el(14, el(6, struct.pack("<II", 2, 0)) + el(5, struct.pack("<2i", 1, 1)) + el(1, b"w")
              + struct.pack("<HHi", 5, 4, 9) + el(1, names))
    head = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    packed = zlib.compress(wide)
    path.write_bytes(head + struct.pack("<II", 15, len(packed)) + packed)
    with pytest.raises(DataError, match="a struct in it has 100,000 fields, which no dataset"):
        load_mat(path, ["w"])
    scipy.io.savemat(str(path), {"o": scipy.io.matlab.MatlabObject(
        np.zeros((1, 1), dtype=[("p", "O")]), "MyClass")})
    with pytest.raises(DataError, match="it holds a MATLAB object or function handle"):
        load_mat(path, ["o"])


def _mat_hostile(case: str) -> bytes:
    """Files of a few hundred bytes on which the count and scipy parted (a review's): scipy
    built millions of objects (or spaces) the count did not see, or the count ran for minutes."""
    import struct
    import zlib

    def el(t: int, data: bytes) -> bytes:
        return struct.pack("<II", t, len(data)) + data + b"\0" * (-len(data) % 8)

    def body(cls: int, dims, name: str, rest: bytes, flags: int = 0) -> bytes:
        return (el(6, struct.pack("<II", cls | flags, 0)) + el(5, struct.pack(f"<{len(dims)}i", *dims))
                + el(1, name.encode()) + rest)

    def matrix(cls: int, dims, name: str, rest: bytes, flags: int = 0) -> bytes:
        return el(14, body(cls, dims, name, rest, flags))

    def comp(top: bytes) -> bytes:
        packed = zlib.compress(top)
        return struct.pack("<II", 15, len(packed)) + packed

    nofields = struct.pack("<HHi", 5, 4, 32) + el(1, b"")
    many = matrix(2, (1, 3_000_000), "", nofields)
    head = (b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100)
            + b"IM")
    return head + {
        # negative dims: scipy multiplies them as size_t (4M structs), the count took 0
        "negative dims": comp(matrix(1, (1, 1), "annotations", matrix(2, (-2000, -2000), "",
                                                                      nofields))),
        # a complex flag on a char array: scipy reads one element, the count read two
        "complex char": matrix(1, (1, 2), "annotations", matrix(4, (1, 2), "", el(2, b"ab"),
                                                                flags=1 << 11) + many),
        # a compressed variable whose matrix tag says 0 bytes: scipy reads its header anyway
        "zero tag": comp(struct.pack("<II", 14, 0) + body(1, (1, 1), "annotations", many)),
        # 400,000 dims (scipy refuses over 32): the count multiplied them for minutes
        "many dims": comp(matrix(6, [2**31 - 1] * 400_000, "annotations", el(9, b""))),
        # 150M characters over no data: scipy fills them with spaces (766 MB)
        "empty char": comp(matrix(1, (1, 1), "annotations", matrix(4, (1, 150_000_000), "",
                                                                   el(16, b"")))),
        # 999,999 structs counted as many objects: each is a mat_struct and its __dict__
        "struct extras": comp(matrix(1, (1, 1), "annotations", matrix(2, (1, 999_999), "",
                                                                      nofields))),
    }[case]


MANY = "its cells and structs hold more than 1,000,000 elements"


@pytest.mark.parametrize("case,needle", [
    ("negative dims", "cannot read MATLAB file (a matrix has negative dimensions (-2000, -2000))"),
    ("complex char", MANY), ("zero tag", MANY), ("struct extras", MANY),
    ("many dims", "cannot read MATLAB file (its dimensions take 1600000 bytes of data type 5)"),
    ("empty char", "cannot read MATLAB file (a char array declares 150,000,000 characters in 0 "
                   "bytes)")])
def test_a_few_hundred_bytes_of_mat_never_build_millions_of_objects(tmp_path: Path, case: str,
                                                                     needle: str) -> None:
    import time

    from beton_builders.layouts._mat import load_mat

    path = tmp_path / "h.mat"
    path.write_bytes(_mat_hostile(case))
    assert path.stat().st_size < 3000
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        load_mat(path, ["annotations"])
    assert str(e.value).startswith(f"{path}: {needle}"), e.value
    assert time.monotonic() - t0 < 10  # (the count itself ran for minutes on many dims)


def test_a_mat_variable_not_asked_for_is_not_counted(tmp_path: Path) -> None:
    """scipy reads only the variables asked for (``variable_names``): one it skips holds
    whatever it holds, and the count refused the file for it (review)."""
    import struct

    import scipy.io

    from beton_builders.layouts._mat import load_mat

    path = tmp_path / "l.mat"
    scipy.io.savemat(str(path), {"labels": np.arange(3.0)})
    junk = struct.pack("<II", 14, 48) + struct.pack("<II", 6, 8) + struct.pack("<II", 99, 0) \
        + struct.pack("<II", 5, 8) + struct.pack("<2i", 1, 1) + struct.pack("<II", 1, 4) + b"junk"
    path.write_bytes(path.read_bytes() + junk + b"\0" * 4)
    assert list(load_mat(path, ["labels"])["labels"]) == [0.0, 1.0, 2.0]


def test_a_compressed_mat_variable_not_asked_for_is_not_counted(tmp_path: Path,
                                                                monkeypatch) -> None:
    """As above for compressed variables (what savemat and MATLAB write by default): a file
    whose labels come first and another variable holds 4,001 objects loads the labels (the
    limit scaled down to 1,000 here, so the file stays small); the whole file counts them."""
    import struct
    import zlib

    import beton_builders.layouts._mat as mat

    def el(t: int, data: bytes) -> bytes:
        return struct.pack("<II", t, len(data)) + data + b"\0" * (-len(data) % 8)

    def matrix(cls: int, dims: tuple[int, int], name: str, rest: bytes) -> bytes:
        return el(14, el(6, struct.pack("<II", cls, 0)) + el(5, struct.pack("<2i", *dims))
                  + el(1, name.encode()) + rest)

    def comp(x: bytes) -> bytes:
        packed = zlib.compress(x)
        return struct.pack("<II", 15, len(packed)) + packed

    nofields = struct.pack("<HHi", 5, 4, 32) + el(1, b"")
    labels = matrix(6, (1, 3), "labels", el(9, np.arange(3, dtype="<f8").tobytes()))
    junk = matrix(1, (1, 1), "junk", matrix(2, (1, 2000), "", nofields))
    head = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    path = tmp_path / "l.mat"
    path.write_bytes(head + comp(labels) + comp(junk))
    monkeypatch.setattr(mat, "MAX_MAT_ELEMENTS", 1000)
    assert list(mat.load_mat(path, ["labels"])["labels"]) == [0.0, 1.0, 2.0]
    assert mat.mat_objects(path, ["labels"]) == 0 and mat.mat_objects(path) == 1 + 2000 * 2


@pytest.mark.parametrize("compressed", [False, True])
def test_a_mat_cell_of_complex_arrays_and_strings_loads(tmp_path: Path, compressed: bool) -> None:
    """A complex numeric array holds its real and its imaginary parts, two data elements: the
    count must step over both, or it reads the imaginary part as the cell's next element (a
    valid file refused as unreadable)."""
    import scipy.io

    from beton_builders.layouts._mat import load_mat, mat_objects

    cell = np.empty((1, 3), dtype=object)
    cell[0, 0], cell[0, 1], cell[0, 2] = np.array([1 + 2j, 3j]), "abc", np.array([4.0])
    path = tmp_path / "c.mat"
    scipy.io.savemat(str(path), {"annotations": cell}, do_compression=compressed)
    assert mat_objects(path) == 3
    got = load_mat(path, ["annotations"])["annotations"]
    assert list(got[0]) == [1 + 2j, 3j] and got[1] == "abc" and got[2] == 4.0


def test_a_mat_nesting_cells_past_32_levels_is_refused_by_name(tmp_path: Path) -> None:
    """No dataset's labels nest cells 40 deep; the count recurses once per level, so the depth
    is bounded and a file past it is refused, saying why."""
    import scipy.io

    from beton_builders.layouts._mat import load_mat

    x = np.array([[1.0]])
    for _ in range(40):
        c = np.empty((1, 1), dtype=object)
        c[0, 0] = x
        x = c
    path = tmp_path / "deep.mat"
    scipy.io.savemat(str(path), {"annotations": x})
    with pytest.raises(DataError) as e:
        load_mat(path, ["annotations"])
    assert str(e.value).startswith(f"{path}: its cells and structs nest deeper than 32 levels, "
                                   "which no dataset's labels or annotations hold"), e.value


def test_a_sparse_mat_array_counts_as_the_objects_scipy_builds(tmp_path: Path,
                                                               monkeypatch) -> None:
    """scipy builds a sparse array as a ``csc_array`` and its parts, five objects: a cell of
    sparse arrays counts them (review), so a cell of many is refused where as many numbers
    would not be (the limit scaled down to 40 here; 10 sparse arrays: 10 + 50)."""
    import scipy.io
    import scipy.sparse

    import beton_builders.layouts._mat as mat

    cell = np.empty((1, 10), dtype=object)
    for i in range(10):
        cell[0, i] = scipy.sparse.csc_matrix(np.eye(2))
    path = tmp_path / "s.mat"
    scipy.io.savemat(str(path), {"annotations": cell})
    monkeypatch.setattr(mat, "MAX_MAT_ELEMENTS", 40)
    with pytest.raises(DataError, match="its cells and structs hold more than 40 elements"):
        mat.load_mat(path, ["annotations"])
    assert mat.mat_objects(path) == 10 + 10 * 5


def test_a_mat_v73_file_is_not_walked_as_v5(tmp_path: Path) -> None:
    """A v7.3 file is HDF5 with v5's ``IM`` mark and version 0x0200: its bytes were read as
    element tags (a 4 KB file counted 526,336 bytes; review). It counts nothing, and scipy's
    own refusal ("use HDF reader") is the line."""
    import struct

    from beton_builders.layouts._mat import load_mat, mat_data_bytes, mat_objects

    path = tmp_path / "v73.mat"
    path.write_bytes(b"MATLAB 7.3 MAT-file".ljust(116, b" ") + b"\0" * 8
                     + struct.pack("<H", 0x0200) + b"IM" + bytes(range(256)) * 16)
    assert mat_data_bytes(path) == mat_objects(path) == 0
    with pytest.raises(DataError, match="cannot read MATLAB file"):
        load_mat(path, ["x"])


# --- dtd ------------------------------------------------------------------------------------

def test_dtd(tmp_path: Path) -> None:
    lists = F.make_dtd(tmp_path / "dtd")
    spec = read_layout("dtd", tmp_path)  # the folder containing dtd/ also works
    assert spec.classes == F.DTD_CLASSES
    assert counts(spec) == {"train": 3, "val": 3, "test": 6}
    base = tmp_path / "dtd" / "images"
    assert refs(spec, "test", base) == [(r, F.DTD_CLASSES.index(r.split("/")[0])) for r in lists["test"]]
    check_files_exist(spec)


def test_dtd_missing_split_file(tmp_path: Path) -> None:
    F.make_dtd(tmp_path)
    (tmp_path / "labels" / "test1.txt").unlink()
    with pytest.raises(DataError, match=r"test1.txt: file not found"):
        read_layout("dtd", tmp_path)


def test_dtd_empty_split(tmp_path: Path) -> None:
    F.make_dtd(tmp_path)
    (tmp_path / "labels" / "val1.txt").write_text("\n")
    with pytest.raises(DataError, match=r"val1.txt: lists no images"):
        read_layout("dtd", tmp_path)


def test_dtd_missing_image_is_kept(tmp_path: Path) -> None:
    F.make_dtd(tmp_path)
    (tmp_path / "images" / "banded" / "banded_0000.jpg").unlink()
    spec = read_layout("dtd", tmp_path)
    assert spec.splits["train"][0].ref == tmp_path / "images" / "banded" / "banded_0000.jpg"


def test_dtd_unknown_class_line(tmp_path: Path) -> None:
    F.make_dtd(tmp_path)
    F.text(tmp_path / "labels" / "train1.txt", ["banded/banded_0000.jpg", "striped/striped_0001.jpg"])
    with pytest.raises(DataError, match=r"train1.txt:2: unknown class 'striped'"):
        read_layout("dtd", tmp_path)


# --- ucf101 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("coop_folders", [False, True])
def test_ucf101(tmp_path: Path, coop_folders: bool) -> None:
    F.make_ucf101(tmp_path, coop_folders=coop_folders)
    spec = read_layout("ucf101", tmp_path)
    assert spec.classes == F.UCF_CLASSES
    assert counts(spec) == {"train": 6, "test": 3}
    mid = tmp_path / "UCF-101-midframes"
    hs = "Handstand_Pushups" if coop_folders else "HandstandPushups"
    assert refs(spec, "test", mid)[2] == (f"{hs}/v_HandStandPushups_g01_c01.jpg", 2)
    check_files_exist(spec)
    # the mid-frames folder itself as root (lists found in its parent)
    assert counts(read_layout("ucf101", mid)) == {"train": 6, "test": 3}


def test_ucf101_label_mismatch(tmp_path: Path) -> None:
    F.make_ucf101(tmp_path)
    F.text(tmp_path / "ucfTrainTestlist" / "trainlist01.txt", ["Basketball/v_Basketball_g08_c01.avi 3"])
    with pytest.raises(DataError, match=r"trainlist01.txt:1: label 3 does not match"):
        read_layout("ucf101", tmp_path)


def test_ucf101_malformed_classind(tmp_path: Path) -> None:
    F.make_ucf101(tmp_path)
    F.text(tmp_path / "ucfTrainTestlist" / "classInd.txt", ["1 ApplyEyeMakeup", "two Basketball"])
    with pytest.raises(DataError, match=r"classInd.txt:2: class index 'two' is not an integer"):
        read_layout("ucf101", tmp_path)


# --- food101 --------------------------------------------------------------------------------

def test_food101(tmp_path: Path) -> None:
    F.make_food101(tmp_path)
    spec = read_layout("food101", tmp_path)
    assert spec.classes == F.FOOD_CLASSES
    assert counts(spec) == {"train": 6, "test": 3}
    assert refs(spec, "test", tmp_path) == [("images/apple_pie/303.jpg", 0), ("images/baby_back_ribs/303.jpg", 1),
                                            ("images/waffles/303.jpg", 2)]
    check_files_exist(spec)


def test_food101_malformed_line(tmp_path: Path) -> None:
    F.make_food101(tmp_path)
    F.text(tmp_path / "meta" / "train.txt", ["apple_pie/101", "apple_pie"])
    with pytest.raises(DataError, match=r"meta/train.txt:2: malformed line 'apple_pie'.*<class>/<file>"):
        read_layout("food101", tmp_path)


# --- oxfordpets -----------------------------------------------------------------------------

def test_oxfordpets(tmp_path: Path) -> None:
    F.make_oxfordpets(tmp_path)
    spec = read_layout("oxfordpets", tmp_path)
    assert spec.classes == F.PET_CLASSES  # by class id, not alphabetically
    assert counts(spec) == {"train": 6, "test": 3}
    assert refs(spec, "test", tmp_path) == [("images/Abyssinian_3.jpg", 0), ("images/american_bulldog_3.jpg", 1),
                                            ("images/Bengal_3.jpg", 2)]
    check_files_exist(spec)


def test_oxfordpets_malformed_line(tmp_path: Path) -> None:
    F.make_oxfordpets(tmp_path)
    F.text(tmp_path / "annotations" / "test.txt", ["# comment", "Bengal_3 x 1 3"])
    with pytest.raises(DataError, match=r"test.txt:2: class id 'x' is not an integer"):
        read_layout("oxfordpets", tmp_path)


# --- stanfordcars ---------------------------------------------------------------------------

def test_stanfordcars(tmp_path: Path) -> None:
    F.make_stanfordcars(tmp_path)
    spec = read_layout("stanfordcars", tmp_path)
    assert spec.classes == F.CAR_CLASSES
    assert refs(spec, "train", tmp_path) == [(f"cars_train/{f}", c - 1) for f, c in F.CAR_TRAIN]
    assert refs(spec, "test", tmp_path) == [(f"cars_test/{f}", c - 1) for f, c in F.CAR_TEST]
    check_files_exist(spec)


def test_stanfordcars_test_annos_in_devkit_and_missing(tmp_path: Path) -> None:
    F.make_stanfordcars(tmp_path)
    (tmp_path / "cars_test_annos_withlabels.mat").rename(tmp_path / "devkit" / "cars_test_annos_withlabels.mat")
    assert counts(read_layout("stanfordcars", tmp_path)) == {"train": 4, "test": 3}
    (tmp_path / "devkit" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match="cars_test_annos_withlabels.mat"):
        read_layout("stanfordcars", tmp_path)


# --- sun397 ---------------------------------------------------------------------------------

def test_sun397(tmp_path: Path) -> None:
    train, test = F.make_sun397(tmp_path)
    spec = read_layout("sun397", tmp_path)
    assert spec.classes == ["abbey", "apartment_building/outdoor", "bakery/shop"]
    assert counts(spec) == {"train": 6, "test": 3}
    assert refs(spec, "test", tmp_path / "SUN397") == [(r.lstrip("/"), i) for i, r in enumerate(test)]
    check_files_exist(spec)


# --- cifar10 --------------------------------------------------------------------------------

def test_cifar10(tmp_path: Path) -> None:
    batches = F.make_cifar10(tmp_path)
    spec = read_layout("cifar10", tmp_path)
    assert spec.classes == F.CIFAR_CLASSES
    assert counts(spec) == {"train": 20, "test": 4}
    s = spec.splits["train"][5]
    data, labels = batches["data_batch_2"]
    assert s.name == "data_batch_2[1]" and s.label == labels[1]
    assert isinstance(s.ref, np.ndarray) and s.ref.shape == (32, 32, 3) and s.ref.dtype == np.uint8
    assert np.array_equal(s.ref[:, :, 0], data[1, :1024].reshape(32, 32))
    assert np.array_equal(s.ref[3, 4], data[1, [3 * 32 + 4, 1024 + 3 * 32 + 4, 2048 + 3 * 32 + 4]])
    assert pickle.loads(pickle.dumps(s)).ref.shape == (32, 32, 3)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches_of_every_pickle_protocol_load(tmp_path: Path, protocol: int) -> None:
    """The restricted unpickler still reads what a batch file holds, in every form: the
    download's Python 2 pickles name ``numpy.core.multiarray._reconstruct`` (protocol 2, made
    here by renaming numpy 2's module back), newer ones ``numpy._core`` and protocol 5
    ``_frombuffer``."""
    batches = F.make_cifar10(tmp_path)
    d = tmp_path / "cifar-10-batches-py"
    for f in d.iterdir():
        raw = pickle.dumps(pickle.loads(f.read_bytes()), protocol=protocol)
        f.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    if protocol == 2:
        assert b"cnumpy.core.multiarray\n_reconstruct" in (d / "test_batch").read_bytes()
    spec = read_layout("cifar10", tmp_path)
    assert spec.classes == F.CIFAR_CLASSES
    data, labels = batches["test_batch"]
    assert [s.label for s in spec.splits["test"]] == labels
    assert np.array_equal(spec.splits["test"][2].ref[:, :, 1], data[2, 1024:2048].reshape(32, 32))


@pytest.mark.parametrize("name", ["batches.meta", "data_batch_3"])
def test_a_cifar10_batch_that_would_run_code_is_refused_and_runs_none(tmp_path: Path,
                                                                      name: str) -> None:
    """A CIFAR folder on shared storage is someone else's file, and ``pickle.load`` ran the
    code a batch names during ``dp4tl build`` (audit: a ``batches.meta`` that calls os.system
    ran it, then the build said "not a CIFAR pickle"). Only numpy arrays and plain containers
    are built; anything else is refused in one line naming it, and nothing runs."""
    import os

    F.make_cifar10(tmp_path)
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "cifar-10-batches-py" / name
    path.write_bytes(pickle.dumps({b"label_names": RunsCode(), b"data": RunsCode()}))
    with pytest.raises(DataError) as e:
        read_layout("cifar10", tmp_path)
    assert not marker.exists()
    assert str(e.value) == (f"{path}: holds Python objects a CIFAR-10 batch never holds (it "
                            f"names {os.mkdir.__module__}.mkdir): not loaded, since unpickling "
                            "them would run code from the file; re-download the python version "
                            "of CIFAR-10")


def test_a_cifar10_batch_naming_another_function_of_an_allowed_module_is_refused(
        tmp_path: Path) -> None:
    """The allowed globals are (module, name) pairs, not modules: ``numpy`` is allowed for its
    ``ndarray`` and ``dtype``, yet ``numpy.load(f, None, True)`` unpickles another file and
    runs the code that one names. A batch naming it is refused by name, and nothing runs."""
    import os

    F.make_cifar10(tmp_path)
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    evil = tmp_path / "evil.npy"
    np.save(evil, np.array([RunsCode()], dtype=object), allow_pickle=True)

    class LoadsIt:
        def __reduce__(self):
            return (np.load, (str(evil), None, True))

    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                                   b"x": LoadsIt()}, protocol=2))
    with pytest.raises(DataError, match=r"holds Python objects a CIFAR-10 batch never holds "
                                        r"\(it names numpy\.load\)"):
        read_layout("cifar10", tmp_path)
    assert not marker.exists()


# --- CoOp split JSON --------------------------------------------------------------------------

def _write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_coop_json_flowers102(tmp_path: Path) -> None:
    F.make_flowers102(tmp_path)
    sj = _write_json(tmp_path / "split_zhou_OxfordFlowers.json", {
        "train": [["image_00001.jpg", 0, "pink primrose"], ["image_00002.jpg", 1, "hard-leaved pocket orchid"]],
        "val": [["image_00003.jpg", 2, "canterbury bells"]],
        "test": [["image_00004.jpg", 0, "pink primrose"], ["image_00005.jpg", 1, "hard-leaved pocket orchid"]],
    })
    spec = read_layout("flowers102", tmp_path, sj)
    assert spec.classes == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert counts(spec) == {"train": 2, "val": 1, "test": 2}
    assert refs(spec, "test", tmp_path) == [("jpg/image_00004.jpg", 0), ("jpg/image_00005.jpg", 1)]
    assert spec.extra["split_source"] == str(sj)


def test_coop_json_not_used_automatically(tmp_path: Path) -> None:
    F.make_dtd(tmp_path)
    _write_json(tmp_path / "split_zhou_DescribableTextures.json",
                {"train": [["banded/banded_0000.jpg", 0, "banded"]], "val": [], "test": []})
    assert counts(read_layout("dtd", tmp_path)) == {"train": 3, "val": 3, "test": 6}


def test_coop_json_dtd_and_stanfordcars(tmp_path: Path) -> None:
    F.make_dtd(tmp_path / "dtd")
    sj = _write_json(tmp_path / "dtd.json", {
        "train": [["zigzagged/zigzagged_0000.jpg", 1, "zigzagged"], ["banded/banded_0000.jpg", 0, "banded"]],
        "val": [["banded/banded_0001.jpg", 0, "banded"]],
        "test": [["zigzagged/zigzagged_0002.jpg", 1, "zigzagged"]],
    })
    spec = read_layout("dtd", tmp_path / "dtd", sj)
    assert spec.classes == ["banded", "zigzagged"]
    assert refs(spec, "train", tmp_path / "dtd" / "images") == [("zigzagged/zigzagged_0000.jpg", 1),
                                                                ("banded/banded_0000.jpg", 0)]
    F.make_stanfordcars(tmp_path / "cars")
    sj = _write_json(tmp_path / "cars.json", {
        "train": [["cars_train/00001.jpg", 0, "2000 AM General Hummer SUV"]],
        "val": [["cars_train/00002.jpg", 1, "2012 Acura RL Sedan"]],
        "test": [["cars_test/00001.jpg", 1, "2012 Acura RL Sedan"]],
    })
    spec = read_layout("stanfordcars", tmp_path / "cars", sj)
    assert spec.classes == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan"]
    assert refs(spec, "test", tmp_path / "cars") == [("cars_test/00001.jpg", 1)]
    check_files_exist(spec)


@pytest.mark.parametrize("obj, msg", [
    ({"train": [["a.jpg", "0", "x"]]}, r"entry train\[0\].*not \[relpath, int label, classname\]"),
    ({"train": [["a.jpg", 0, "x"], ["b.jpg", 0, "y"]]}, r"entry train\[1\]: label 0 is named 'y'"),
    ({"train": [["a.jpg", 0, "x"]], "test": []}, r"split 'test' is empty"),
    ([1, 2], "top level must be"),
])
def test_coop_json_errors(tmp_path: Path, obj: object, msg: str) -> None:
    F.make_food101(tmp_path)
    sj = _write_json(tmp_path / "s.json", obj)
    with pytest.raises(DataError, match=msg) as e:
        read_layout("food101", tmp_path, sj)
    assert str(sj) in str(e.value)


@pytest.mark.parametrize("obj, msg", [
    ({"../../escaped": [["apple_pie/101.jpg", 0, "x"]]}, r"split name '\.\./\.\./escaped' is not allowed"),
    ({"train/x": [["apple_pie/101.jpg", 0, "x"]]}, r"split name 'train/x' is not allowed"),
    ({"..": [["apple_pie/101.jpg", 0, "x"]]}, r"split name '\.\.' is not allowed"),
    ({"train": [["/etc/secret.jpg", 0, "x"]]}, r"entry train\[0\]: image path '/etc/secret.jpg' is absolute"),
    ({"train": [["../../outside.jpg", 0, "x"]]}, r"entry train\[0\]: image path .* climbing out"),
])
def test_coop_json_cannot_leave_the_out_or_image_folder(tmp_path: Path, obj: object, msg: str) -> None:
    """A split name becomes file names in the output folder and a path is joined to the image
    folder: a split file from elsewhere must not write outside --out or read outside the data."""
    F.make_food101(tmp_path)
    sj = _write_json(tmp_path / "s.json", obj)
    with pytest.raises(DataError, match=msg) as e:
        read_layout("food101", tmp_path, sj)
    assert str(sj) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("layout, edit", [
    ("dtd", lambda root: (root / "labels" / "train1.txt").write_text("banded/../../../x.jpg\n")),
    ("oxfordpets", lambda root: (root / "annotations" / "test.txt").write_text("../../x_1 1 1 1\n")),
    ("sun397", lambda root: (root / "Partitions" / "Testing_01.txt").write_text("/a/abbey/../../../x.jpg\n")),
])
def test_list_files_cannot_point_outside_the_image_folder(tmp_path: Path, layout, edit) -> None:
    getattr(F, f"make_{layout}")(tmp_path)
    edit(tmp_path)
    with pytest.raises(DataError, match=r":1: entry: image path .* climbing out with '\.\.'"):
        read_layout(layout, tmp_path)


def test_a_spec_with_a_path_like_split_name_is_not_built(tmp_path: Path) -> None:
    from beton_builders import build_dataset
    from beton_builders.spec import Sample

    spec = DatasetSpec("x", ["a"], {"../escaped": [Sample(np.zeros((8, 8, 3), np.uint8), 0)]})
    with pytest.raises(DataError, match="split name '../escaped' is not allowed"):
        build_dataset(spec, tmp_path / "out")
    assert not (tmp_path / "escaped.beton").exists()


def test_coop_json_invalid_and_cifar(tmp_path: Path) -> None:
    F.make_food101(tmp_path)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DataError, match="not valid JSON"):
        read_layout("food101", tmp_path, tmp_path / "bad.json")
    with pytest.raises(DataError, match="split JSON not found"):
        read_layout("food101", tmp_path, tmp_path / "missing.json")
    F.make_cifar10(tmp_path / "c", n=1)
    with pytest.raises(DataError, match="does not support --split-json"):
        read_layout("cifar10", tmp_path / "c", tmp_path / "bad.json")


# --- registry errors --------------------------------------------------------------------------

def test_unknown_layout() -> None:
    with pytest.raises(DataError, match=r"unknown layout 'imagenet21k'.*cifar10, dtd, flowers102, folder"):
        read_layout("imagenet21k", "/nonexistent")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{tmp_path / 'nope'}: dataset folder not found"):
        read_layout("food101", tmp_path / "nope")


def test_wrong_dataset_folder(tmp_path: Path) -> None:
    F.make_food101(tmp_path)
    with pytest.raises(DataError, match=r"jpg: not found.*Flowers-102"):
        read_layout("flowers102", tmp_path)


def test_a_source_without_a_layout_says_what_it_is(tmp_path, monkeypatch):
    """A bare path as SOURCE: a missing folder says so; an existing folder says to name its
    layout (``folder:PATH``); both used to say only that SOURCE must look like ..."""
    from beton_builders.sources import resolve_source

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"SOURCE 'nonexist' is no such folder; SOURCE must look like"):
        resolve_source("nonexist")
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataError, match=r"SOURCE 'imgs' is a folder but names no layout: write "
                                        r"LAYOUT:PATH, e\.g\. folder:imgs"):
        resolve_source("imgs")


def test_folder_reads_every_image_name_pil_reads_and_says_what_it_skips(tmp_path: Path) -> None:
    """.pgm (torchvision's ImageFolder lists it) and .jfif / .jpe (JPEG's other names) were
    skipped without a trace: not built, not in rejects.txt, "0 rejected" (review). They are
    images now; a file whose name is no image's is said in one warning line."""
    from PIL import Image

    for c in ("a", "b"):
        d = tmp_path / c
        d.mkdir()
        img = Image.new("L", (8, 8), 128)
        img.save(d / "x.pgm")
        img.convert("RGB").save(d / "y.jfif", format="JPEG")
        img.convert("RGB").save(d / "z.JPE", format="JPEG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "README").write_text("not an image")
    with pytest.warns(UserWarning, match=r"2 file\(s\) in the class folders not read: no image "
                                         r"extension \(\(no extension\), \.txt\)"):
        spec = read_layout("folder", tmp_path)
    names = sorted(Path(s.ref).name for s in spec.splits["train"])
    assert names == ["x.pgm", "x.pgm", "y.jfif", "y.jfif", "z.JPE", "z.JPE"]
