"""ffcv 1.0.2's on-disk beton format, read without importing ffcv.

A beton starts with a header (:data:`HEADER`), one descriptor per field (:data:`FIELD_DESC`),
then one metadata row per sample (the fields' metadata types side by side), and ends with an
allocation table (:data:`ALLOC_TABLE`) that ffcv's writer appends. These dtypes are the ones
``ffcv/types.py`` and ffcv's fields declare (its writer and ``Reader`` share them), copied here
so that what only reads a beton's description (the loaders' open-time checks, ``dp4tl
verify``, the GPU-decode loader's layout) needs no ``import ffcv``: 4.6 s on a 2-core machine,
2.7 s of them numba compiling a typed dictionary (``ffcv.fields.rgb_image.IMAGE_MODES``), paid
by every cached rerun of the pipeline and every ``verify`` (performance audit). The ffcv pin
(requirements) fixes the format; ``tests/builders/test_beton_format.py`` checks every dtype
against ffcv's own and the reader against ffcv's ``Reader`` on a built beton.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ffcv_dp4tl.errors import DataError

#: ``ffcv.types.CURRENT_VERSION``: the only format version ffcv 1.0.2 reads
VERSION = 2

#: ``ffcv.types.HeaderType``
HEADER = np.dtype([
    ("version", "<u2"),
    ("num_fields", "<u2"),
    ("page_size", "<u4"),
    ("num_samples", "<u8"),
    ("alloc_table_ptr", "<u8"),
], align=True)

#: ``ffcv.types.FieldDescType``
FIELD_DESC = np.dtype([
    ("type_id", "<u1"),
    ("name", ("<u1", 16)),
    ("arguments", ("<u1", (1024,))),
], align=True)

#: ``ffcv.types.ALLOC_TABLE_TYPE``
ALLOC_TABLE = np.dtype([
    ("sample_id", "<u8"),
    ("ptr", "<u8"),
    ("size", "<u8"),
])

#: ``RGBImageField.metadata_type``
RGB_IMAGE_METADATA = np.dtype([
    ("mode", "<u1"),
    ("width", "<u2"),
    ("height", "<u2"),
    ("data_ptr", "<u8"),
])
_PTR_SIZE = np.dtype([("ptr", "<u8"), ("size", "<u8")])

#: ``ffcv.types.TYPE_ID_HANDLER`` as each field class's ``metadata_type`` (none depends on the
#: field's arguments): Float, Int, RGBImage, Bytes, NDArray, JSON, TorchTensor
METADATA_TYPES: dict[int, np.dtype] = {
    0: np.dtype("<f8"),
    1: np.dtype("<i8"),
    2: RGB_IMAGE_METADATA,
    3: _PTR_SIZE,
    4: np.dtype("<u8"),
    5: _PTR_SIZE,
    6: np.dtype("<u8"),
}
#: the type id of ``RGBImageField``
RGB_IMAGE = 2


@dataclass(frozen=True)
class BetonLayout:
    """A beton's header and field descriptors: what is needed to find and read the rest."""

    path: Path
    header: np.void
    names: list[str]        # field names, in the file's order
    type_ids: list[int]     # each field's ffcv type id (:data:`METADATA_TYPES`)
    metadata_type: np.dtype
    size: int               # the file's size in bytes when the header was read

    @property
    def num_samples(self) -> int:
        return int(self.header["num_samples"])

    @property
    def metadata_offset(self) -> int:
        return HEADER.itemsize + FIELD_DESC.itemsize * len(self.names)

    @property
    def metadata_end(self) -> int:
        return self.metadata_offset + self.num_samples * self.metadata_type.itemsize

    def image_field(self) -> str:
        """The metadata column (``f<k>``) of the RGB image field (``image`` when several)."""
        images = [n for n, t in zip(self.names, self.type_ids) if t == RGB_IMAGE]
        if not images:
            raise DataError(f"{self.path} has no RGB image field")
        return f"f{self.names.index('image' if 'image' in images else images[0])}"

    def metadata(self) -> np.ndarray:
        """Every sample's metadata row (ffcv ``Reader.metadata``)."""
        return np.fromfile(self.path, dtype=self.metadata_type, count=self.num_samples,
                           offset=self.metadata_offset)

    def alloc_table(self) -> np.ndarray:
        """The allocation table (ffcv ``Reader.alloc_table``)."""
        return np.fromfile(self.path, dtype=ALLOC_TABLE, offset=int(self.header["alloc_table_ptr"]))


def read_header(path: str | Path) -> np.void:
    """The beton's header; a file too short for one is refused in one line. (Lines here say
    what is wrong; the caller adds what to do: rebuild, or verify.)"""
    path = Path(path)
    raw = np.fromfile(path, dtype=HEADER, count=1)
    if not len(raw):
        raise DataError(f"{path}: {path.stat().st_size} bytes, too short for an ffcv header")
    return raw[0]


def read_layout(path: str | Path) -> BetonLayout:
    """Header and field descriptors of the beton at ``path`` (ffcv ``Reader``'s first two
    steps), refused in one line where ffcv 1.0.2 could not read it: another format version, or
    a field type it does not know."""
    path = Path(path)
    header = read_header(path)
    if int(header["version"]) != VERSION:
        raise DataError(f"{path}: ffcv format version {int(header['version'])}, but ffcv 1.0.2 "
                        f"reads version {VERSION}")
    descs = np.fromfile(path, dtype=FIELD_DESC, count=int(header["num_fields"]),
                        offset=HEADER.itemsize)
    if len(descs) != int(header["num_fields"]):
        raise DataError(f"{path}: the header lists {int(header['num_fields'])} fields, but the "
                        f"file ends after {len(descs)} of their descriptors")
    type_ids = [int(t) for t in descs["type_id"]]
    unknown = sorted({t for t in type_ids if t not in METADATA_TYPES})
    if unknown:
        raise DataError(f"{path}: field type id {unknown[0]} is none of ffcv 1.0.2's fields "
                        "(a custom field, or a damaged header)")
    names = []
    for raw in descs["name"]:
        name = bytes(raw).split(b"\x00")[0]
        if not name.isascii():  # (ffcv's Reader fails on it: UnicodeDecodeError at open)
            raise DataError(f"{path}: field name {name!r} is not ASCII (a damaged header)")
        names.append(name.decode("ascii"))
    meta = np.dtype([("", METADATA_TYPES[t]) for t in type_ids], align=True)
    size = path.stat().st_size
    layout = BetonLayout(path, header, names, type_ids, meta, size)
    table = int(header["alloc_table_ptr"])
    if not layout.metadata_end <= table <= size or (size - table) % ALLOC_TABLE.itemsize:
        raise DataError(f"{path}: header points outside the file (metadata ends at "
                        f"{layout.metadata_end}, allocation table at {table}, file size {size})")
    return layout
