"""MATLAB ``.mat`` files of the layouts (Flowers-102's labels and splits, Stanford Cars'
annotations, ImageNet's devkit ``meta.mat``): read with ``scipy.io.loadmat`` after their
declared sizes are checked (:func:`load_mat`), since scipy builds whatever a file declares: a
few hundred bytes could hold millions of objects. The counts read a MAT v5 file as scipy's own
reader does; what no dataset file holds (objects, function handles) is refused by name."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ffcv_dp4tl.errors import DataError

from ._common import bad, require_file

#: Most elements a field of a layout's MATLAB file may declare: the largest real one (Stanford
#: Cars' 8,144 annotations, Flowers-102's 8,189 labels) with ample room. A compressed file of a
#: few KB can declare 50M elements, which loadmat built (0.9 GB) before any check.
MAX_MAT_ELEMENTS = 1_000_000
#: Most bytes a layout's MATLAB file may hold once decompressed, nested fields included (the
#: element count above sees top-level variables only: a (1, 1) struct with a 40M-element field,
#: 311 KB compressed, built 662 MB). The real files are far smaller (Stanford Cars' annotations,
#: ImageNet's meta.mat: a few MB at most).
MAX_MAT_BYTES = 64 * 2**20
_MAT_CHUNK = 2**20
_MI_COMPRESSED = 15


def mat_data_bytes(path: Path, limit: int = MAX_MAT_BYTES) -> int:
    """Bytes of data a MAT v5 file holds once decompressed, counted without keeping them: each
    top-level data element after the 128-byte header (8-byte tag: type and byte count, both
    uint32 in the order bytes 126-127 name, ``IM`` little-endian; or the 4-byte small-element
    form) counts its byte count, an ``miCOMPRESSED`` one (a zlib stream) what it inflates to,
    in chunks. Stops once past ``limit``. 0 for a file that is not MAT v5 (v4 holds its data
    uncompressed; scipy reads it, or says why it cannot)."""
    import struct
    import zlib

    total = 0
    with open(path, "rb") as f:
        order = _mat5_order(f.read(128))
        if order is None:
            return 0
        while total <= limit and len(tag := f.read(8)) == 8:
            mtype, nbytes = struct.unpack(f"{order}II", tag)
            if mtype >> 16:  # small element: its (at most 4) bytes are in the tag
                continue
            if mtype != _MI_COMPRESSED:
                total += nbytes
                f.seek(nbytes, 1)
                continue
            inflate, left = zlib.decompressobj(), nbytes
            while left > 0 and total <= limit and not inflate.eof:
                data = f.read(min(left, _MAT_CHUNK))
                if not data:
                    break
                left -= len(data)
                while data and total <= limit and not inflate.eof:
                    total += len(inflate.decompress(data, _MAT_CHUNK))
                    data = inflate.unconsumed_tail
            f.seek(left, 1)
    return total


def _mat5_order(head: bytes) -> str | None:
    """The byte order of a MAT v5 file from its 128-byte header, None for any other file,
    by scipy's own rule (``matfile_version``, ``guess_byte_order``): v4 has a zero among its
    first 4 bytes; the major version is byte 125 when byte 126 is ``I``, else byte 124, and 1
    is v5 (any minor), 2 is v7.3 (HDF5, which scipy refuses itself); ``IM`` is little-endian,
    anything else big-endian. An exact 0x0100 and ``IM``/``MI`` let other spellings past both
    counts (review)."""
    if len(head) < 128 or 0 in head[:4]:
        return None
    major = head[125] if head[126] == ord("I") else head[124]
    return None if major != 1 else "<" if head[126:128] == b"IM" else ">"


_MI_MATRIX = 14
#: MATLAB array classes (mxCLASS): their elements become Python objects (cell, struct), or
#: no dataset's labels or annotations hold them (object, function handle, opaque)
_CELL, _STRUCT, _OBJECT, _CHAR, _SPARSE, _FUNCTION, _OPAQUE = 1, 2, 3, 4, 5, 16, 17
_NUMERIC = range(6, 16)
#: deepest nesting of cells and structs counted, and most fields a struct may have (real files:
#: a handful; scipy checks each new field name against all earlier ones, quadratic: review)
_MAT_DEPTH, _MAT_FIELDS = 32, 1024


class MatRefused(ValueError):
    """A MAT file holding what no dataset's labels or annotations hold (its reason)."""


class _MatStream:
    """A MAT v5 element stream read in sequence as scipy's reader reads it (a nested element's
    byte count is not trusted, as scipy does not use it: review)."""

    def __init__(self, buf: bytes, order: str) -> None:
        self.buf, self.pos, self.order = buf, 0, order

    def u32(self, at: int) -> int:
        import struct

        return struct.unpack_from(f"{self.order}I", self.buf, at)[0]

    def full_tag(self) -> tuple[int, int]:
        tag = (self.u32(self.pos), self.u32(self.pos + 4))
        self.pos += 8
        return tag

    def element(self) -> tuple[int, int, int]:
        """(type, data offset, byte count) of the next data element (the small form's type and
        count share its first 4 bytes), the stream moved past it (its data padded to 8)."""
        word = self.u32(self.pos)
        if word >> 16:
            mtype, at, n = word & 0xFFFF, self.pos + 4, word >> 16
            self.pos += 8
        else:
            mtype, at, n = word, self.pos + 8, self.u32(self.pos + 4)
            self.pos = at + (n + 7) // 8 * 8
        if at + n > len(self.buf):
            raise ValueError("a data element runs past the end of its stream")
        return mtype, at, n


#: what each element of a struct array, and each sparse array, costs in objects besides its
#: values (a struct element is a copied ``mat_struct`` and its ``__dict__``; a sparse array a
#: ``csc_array`` and its parts: review)
_STRUCT_EXTRA, _SPARSE_OBJECTS = 2, 5
#: most dimensions scipy reads (its dims buffer: 32 int32)
_MAT_MAXDIMS = 32


def _mat_matrix(s: _MatStream, limit: int, depth: int = 0, *, tag: str = "nested",
                wanted: Sequence[str] | None = None) -> int:
    """Python objects the ``miMATRIX`` element at ``s`` becomes: a cell array's elements, a
    struct array's elements (each with :data:`_STRUCT_EXTRA`) and fields, with what they hold;
    a sparse array :data:`_SPARSE_OBJECTS`; numeric and char arrays none (their bytes are
    bounded by :data:`MAX_MAT_BYTES`; a char array may declare more characters than its data
    holds only up to :data:`MAX_MAT_ELEMENTS`). ``tag``: ``nested`` (its tag is read, a byte
    count of 0 is an empty matrix), ``compressed`` (read, its count not checked: scipy does
    not), ``read`` (a top-level tag already read). ``wanted``: a top-level variable's names to count (scipy skips the others).
    Stops past ``limit``. :class:`MatRefused` for what no dataset file holds: an object,
    function handle or opaque array, a struct of over :data:`_MAT_FIELDS` fields, nesting past
    :data:`_MAT_DEPTH`; ValueError for what scipy cannot read either (negative or too many
    dimensions)."""
    import math
    import struct

    if depth > _MAT_DEPTH:
        raise MatRefused(f"its cells and structs nest deeper than {_MAT_DEPTH} levels")
    if tag != "read":
        mtype, n = s.full_tag()
        if mtype != _MI_MATRIX:
            raise ValueError(f"expected a matrix, found data type {mtype}")
        if n == 0 and tag == "nested":  # (an empty matrix: the tag alone)
            return 0
    flags = s.u32(s.pos + 8)  # (its element's tag is skipped, as scipy skips it)
    s.pos += 16
    cls, complex_ = flags & 0xFF, flags >> 11 & 1
    if cls in (_OBJECT, _FUNCTION, _OPAQUE):
        raise MatRefused("it holds a MATLAB object or function handle")
    mtype, at, nbytes = s.element()
    if mtype not in (5, 6) or nbytes > 4 * _MAT_MAXDIMS:  # (miINT32 / miUINT32, as scipy)
        raise ValueError(f"its dimensions take {nbytes} bytes of data type {mtype}")
    dims = struct.unpack_from(f"{s.order}{nbytes // 4}i", s.buf, at)
    if any(d < 0 for d in dims):
        raise ValueError(f"a matrix has negative dimensions {dims}")
    _, at, nbytes = s.element()  # (its name)
    if wanted is not None and bytes(s.buf[at:at + nbytes]).decode("latin-1") not in wanted:
        return 0
    count = math.prod(dims)
    if cls in _NUMERIC:
        for _ in range(1 + complex_):
            s.element()
        return 0
    if cls == _CHAR:  # (one element, whatever the complex flag says: scipy's read_char)
        _, _, nbytes = s.element()
        if count > max(nbytes, MAX_MAT_ELEMENTS):  # (scipy fills what the data lacks with
            # spaces: 150M characters declared over no data took 766 MB; review)
            raise ValueError(f"a char array declares {count:,} characters in {nbytes} bytes")
        return 0
    if cls == _SPARSE:
        for _ in range(3 + complex_):
            s.element()
        return _SPARSE_OBJECTS
    if cls not in (_CELL, _STRUCT):
        raise ValueError(f"unknown MATLAB array class {cls}")
    children = count
    if cls == _STRUCT:
        _, at, _ = s.element()
        name_len = struct.unpack_from(f"{s.order}i", s.buf, at)[0]
        _, _, nbytes = s.element()
        fields = nbytes // name_len if name_len > 0 else 0
        if fields > _MAT_FIELDS:
            raise MatRefused(f"a struct in it has {fields:,} fields")
        children, count = count * fields, count * (fields + _STRUCT_EXTRA)
    for _ in range(children):
        if count > limit:
            break
        count += _mat_matrix(s, limit - count, depth + 1)
    return count


def mat_objects(path: Path, keys: Sequence[str] | None = None,
                limit: int = MAX_MAT_ELEMENTS) -> int:
    """Python objects ``scipy.io.loadmat`` would build for the variables ``keys`` (None: all) of
    a MAT v5 file, their cells and structs nested ones included (:func:`_mat_matrix`), read
    from its data as scipy reads it (decompressed in memory: call it after
    :func:`mat_data_bytes` bounded that). A 200-byte file holding a (1, 2M) struct array without
    fields has almost no data, yet built 2M objects (372 MB; review). 0 for a file that is not
    MAT v5."""
    import struct
    import zlib

    data = Path(path).read_bytes()
    order = _mat5_order(data[:128])
    if order is None:
        return 0
    count, pos = 0, 128
    while pos + 8 <= len(data) and count <= limit:
        mtype, nbytes = struct.unpack_from(f"{order}II", data, pos)
        body = data[pos + 8:pos + 8 + nbytes]
        if mtype == _MI_COMPRESSED:  # (as scipy: no check of the stream's end)
            inner = zlib.decompressobj().decompress(body, MAX_MAT_BYTES + 1)
            count += _mat_matrix(_MatStream(inner, order), limit - count, tag="compressed",
                                 wanted=keys)
        elif mtype == _MI_MATRIX and nbytes:
            count += _mat_matrix(_MatStream(body, order), limit - count, tag="read", wanted=keys)
        pos += 8 + nbytes  # (the next variable: exactly its byte count on, as scipy reads)
    return count


def load_mat(path: Path, keys: Sequence[str], hint: str = "") -> dict[str, Any]:
    """``scipy.io.loadmat`` of ``keys`` only (squeezed, structs as objects), after checking
    that the file's data decompresses to at most :data:`MAX_MAT_BYTES` (:func:`mat_data_bytes`),
    that its cells and structs hold at most :data:`MAX_MAT_ELEMENTS` elements (:func:`mat_objects`)
    and that each key is present and declares at most :data:`MAX_MAT_ELEMENTS` elements
    (``scipy.io.whosmat`` reads the declarations without the data)."""
    import math

    import scipy.io

    require_file(path, hint)
    try:
        if mat_data_bytes(path) > MAX_MAT_BYTES:
            raise bad(path, f"its data decompresses to more than {MAX_MAT_BYTES // 2**20} MiB, "
                      "far more than a dataset's labels or annotations hold",
                      hint=hint or "re-download the official file")
        try:
            many = mat_objects(path, keys) > MAX_MAT_ELEMENTS
        except MatRefused as e:
            raise bad(path, f"{e}, which no dataset's labels or annotations hold",
                      hint=hint or "re-download the official file") from None
        if many:
            raise bad(path, f"its cells and structs hold more than {MAX_MAT_ELEMENTS:,} "
                      "elements, far more than a dataset's labels or annotations",
                      hint=hint or "re-download the official file")
        declared = {name: shape for name, shape, _ in scipy.io.whosmat(str(path))}
        for k in keys:
            if k not in declared:
                raise bad(path, f"missing field '{k}' (found: {sorted(declared)})",
                          hint=hint or "re-download the official file")
            if math.prod(declared[k]) > MAX_MAT_ELEMENTS:
                raise bad(path, f"field '{k}' declares shape {declared[k]}, more than the "
                          f"{MAX_MAT_ELEMENTS:,} elements a dataset's labels or annotations hold",
                          hint=hint or "re-download the official file")
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False,
                                variable_names=list(keys))
    except DataError:
        raise
    except Exception as e:  # scipy raises many types for corrupt files (zlib too)
        raise bad(path, f"cannot read MATLAB file ({e})", hint=hint or "re-download it") from None


def mat_list(value: Any) -> list[Any]:
    """A squeezed MATLAB array/cell/struct-array as a flat Python list (a scalar -> [scalar])."""
    return list(np.atleast_1d(np.asarray(value, dtype=object)).ravel())


def mat_scalar(value: Any) -> Any:
    """Unwrap 1-element arrays (possibly nested) into a Python scalar/str."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected a single value, got shape {value.shape}")
        value = value.reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value
