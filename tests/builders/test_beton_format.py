"""Our copy of ffcv 1.0.2's beton format (beton_builders/beton_format.py) is ffcv's: the dtypes
equal ``ffcv.types``' and each field's ``metadata_type``, the reader reads what ffcv's
``Reader`` reads, and reading a beton's description imports no ffcv (4.6 s on 2 cores, paid by
every `dp4tl verify` and cached pipeline rerun; performance audit)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from beton_builders import beton_format as fmt
from ffcv_dp4tl.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def test_the_dtypes_are_ffcvs():
    from ffcv import types

    assert fmt.VERSION == types.CURRENT_VERSION
    assert fmt.HEADER == types.HeaderType and fmt.HEADER.itemsize == types.HeaderType.itemsize
    assert fmt.FIELD_DESC == types.FieldDescType
    assert fmt.ALLOC_TABLE == types.ALLOC_TABLE_TYPE
    known = {t: h for t, h in types.TYPE_ID_HANDLER.items() if h is not None}
    assert set(fmt.METADATA_TYPES) == set(known)
    for type_id, handler in known.items():  # (no field's metadata type reads its arguments)
        assert fmt.METADATA_TYPES[type_id] == handler.metadata_type.fget(None), handler
    assert known[fmt.RGB_IMAGE].__name__ == "RGBImageField"


def test_the_reader_reads_what_ffcvs_reader_reads(index_dataset):
    from ffcv.reader import Reader

    beton = index_dataset.root / "train.beton"
    theirs = Reader(str(beton))
    ours = fmt.read_layout(beton)
    assert ours.names == theirs.field_names and ours.num_samples == theirs.num_samples
    assert ours.metadata_type == theirs.metadata_type
    assert ours.metadata().tobytes() == theirs.metadata.tobytes()
    assert ours.alloc_table().tobytes() == theirs.alloc_table.tobytes()
    assert ours.image_field() == f"f{theirs.field_names.index('image')}"


@pytest.mark.parametrize("damage,said", [
    (lambda b: b[:10], "too short for an ffcv header"),
    (lambda b: (3).to_bytes(2, "little") + b[2:], "ffcv format version 3, but ffcv 1.0.2 reads version 2"),
    (lambda b: (1).to_bytes(2, "little") + b[2:], "ffcv format version 1, but ffcv 1.0.2 reads version 2"),
    (lambda b: b[:fmt.HEADER.itemsize] + bytes([200]) + b[fmt.HEADER.itemsize + 1:],
     "field type id 200 is none of ffcv 1.0.2's fields"),
    (lambda b: b[:fmt.HEADER.itemsize + 100], "the header lists 2 fields, but the file ends after 0"),
    (lambda b: b[:fmt.HEADER.itemsize + 1] + b"\xe9" + b[fmt.HEADER.itemsize + 2:],
     r"field name b'\\xe9.*' is not ASCII \(a damaged header\)"),  # (ffcv: UnicodeDecodeError)
    (lambda b: b[:8] + (2**40).to_bytes(8, "little") + b[16:],  # (a MemoryError line before)
     "header points outside the file"),
    (lambda b: b[:16] + (2**63).to_bytes(8, "little") + b[24:],  # (an OverflowError before)
     "header points outside the file"),
    (lambda b: b + b"\0" * 5, "header points outside the file"),  # (no whole table rows)
])
def test_a_damaged_header_is_one_line(index_dataset, tmp_path, damage, said):
    beton = tmp_path / "train.beton"
    beton.write_bytes(damage((index_dataset.root / "train.beton").read_bytes()))
    with pytest.raises(DataError, match=said) as e:
        fmt.read_layout(beton)
    assert str(e.value).startswith(f"{beton}:") and "\n" not in str(e.value)


def test_checking_and_verifying_a_build_imports_no_ffcv(index_dataset):
    """A loader's open-time checks (checksums, image sides) and `dp4tl verify` without
    `--deep` read only the betons' descriptions."""
    code = (
        "import sys\n"
        "from ffcv_dp4tl.data import load_manifest\n"
        "from ffcv_dp4tl.data.verify import verify_dataset\n"
        f"root = {str(index_dataset.root)!r}\n"
        "load_manifest(root).split('train').check_files('ffcv')\n"
        "assert verify_dataset(root).ok\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ffcv'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_a_beton_without_an_image_field_is_refused(tmp_path, index_dataset):
    """The image column is found by its type (RGBImageField), as ffcv's handlers find it."""
    beton = tmp_path / "train.beton"
    data = bytearray((index_dataset.root / "train.beton").read_bytes())
    image = fmt.read_layout(index_dataset.root / "train.beton").type_ids.index(fmt.RGB_IMAGE)
    data[fmt.HEADER.itemsize + image * fmt.FIELD_DESC.itemsize] = 1  # (now an IntField)
    beton.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"^{beton} has no RGB image field$"):
        fmt.read_layout(beton).image_field()


def test_the_image_field_named_image_is_the_one_read_when_there_are_several(tmp_path):
    """A beton with more than one RGB image field (a thumbnail beside the image) is read from
    the field named ``image``, wherever it lies, not from the first image field."""
    import numpy as np

    names, type_ids = ["thumb", "label", "image"], [fmt.RGB_IMAGE, 1, fmt.RGB_IMAGE]
    meta = np.dtype([("", fmt.METADATA_TYPES[t]) for t in type_ids], align=True)
    header = np.zeros(1, fmt.HEADER)[0]
    layout = fmt.BetonLayout(tmp_path / "train.beton", header, names, type_ids, meta, 0)
    assert layout.image_field() == "f2"
    layout = fmt.BetonLayout(tmp_path / "train.beton", header, ["thumb", "label", "big"],
                             type_ids, meta, 0)
    assert layout.image_field() == "f0"  # (none named image: the first)


def test_a_beton_whose_allocation_table_is_empty_is_one_line(tmp_path, index_dataset):
    """Its images point at no allocation (ffcv's writer always writes one per image): an
    IndexError from the empty table before."""
    from beton_builders.beton import beton_images

    beton = tmp_path / "train.beton"
    data = (index_dataset.root / "train.beton").read_bytes()
    table = int(fmt.read_header(index_dataset.root / "train.beton")["alloc_table_ptr"])
    beton.write_bytes(data[:table])
    with pytest.raises(DataError, match=r"samples but an empty allocation table"):
        beton_images(beton)
