"""Cheap per-file checksums, recorded at build time and checked when a loader opens the files.

What is cheap enough at ImageNet scale (1.28M samples, one ~70 GB beton, ~1,300 shards of
~100 MB) is reading the parts of each file that *describe* it, never its image bytes:

* **beton**: the file size, and a BLAKE2b digest of its header, field descriptors and per-sample
  metadata (mode, shape and data pointer of every image; every label) plus its allocation
  table at the end of the file: ~60 MB for ImageNet, read anyway by ffcv when it opens the file
  (~0.1 s to hash). A truncated, replaced or re-laid-out beton, or one whose metadata was
  damaged, fails it. Flipped image bytes do not: that is ``dp4tl verify DIR --deep``.
* **shard**: its size and a digest of its first and last 4 KiB (the first member's tar header
  and JPEG header, and the end-of-archive): two small reads per shard, ~10 MB at ImageNet scale.

The *beton fingerprint* (:func:`beton_fingerprint`) is the content counterpart: a hash of what
the beton stores per sample (mode, height, width and the SHA-1 of the stored bytes), in sample
order. Unlike the layout digest it is the same for every rebuild of the same content (ffcv's
writer places pages in whatever order its workers finish), so the dataset's content fingerprint
(shards + labels, mode-independent so masks carry over between ``--beton-mode`` builds) gets a
companion that also covers how the beton stores each image; ``dp4tl verify --deep`` recomputes it.
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import numpy as np

from ffcv_dp4tl.contracts.manifest import CHECKSUM_SCHEME
from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.fsutil import absent_why

if TYPE_CHECKING:
    from .beton_format import BetonLayout

#: bytes hashed at each end of a shard
SHARD_EDGE = 4096
#: shards checked at once: each check is a stat and two small reads that wait on the file
#: system (a metadata round trip each on a network mount), so they overlap; one by one, a
#: loader opening ImageNet-21K's ~14,200 shards waited for ~43,000 round trips in a row
CHECK_THREADS = 16
#: items per thread task (a task's own cost, ~20 us, next to a local check's ~30 us)
_CHECK_BLOCK = 16

_T = TypeVar("_T")
_R = TypeVar("_R")
#: checksum scheme tag stored with the checksums (a future scheme can be told apart)
SCHEME = CHECKSUM_SCHEME
#: what to do about damage inside a sample (a changed byte that only ``verify --deep`` or a
#: decode finds): the build's own repair covers missing files, so deleting the damaged one works
DAMAGED_SAMPLE_HINT = ("run `dp4tl verify {root} --deep` to list every damaged sample, then delete "
                       "the shard or beton it names and rerun the `dp4tl build` that made the "
                       "dataset (it makes the deleted file again from the inputs)")
#: what to do about one damaged file that only ``dp4tl verify --deep`` finds (a sample's bytes,
#: a tar header): the rerun's repair runs the cheap checks only, so the file must go first
REMAKE_HINT = ("delete {file} and rerun the `dp4tl build` that made {root} (it makes the deleted "
               "file again from the inputs)")
#: ... and about damage that only ``--deep`` finds but cannot pin on one file
OVERWRITE_HINT = ("rebuild it with `dp4tl build SOURCE --out DIR --overwrite` (a rerun without "
                  "--overwrite checks only what loaders check, so it keeps this damage)")
VERIFY_HINT = ("run `dp4tl verify {root} --deep` to see what is damaged, then rerun the `dp4tl "
               "build` that made it (it repairs damaged files from the inputs)")


def _blake(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


@dataclass(frozen=True)
class BetonRegions:
    """The parts of a beton its checksum covers, read once: the header, field descriptors and
    every sample's metadata (``head``) and the allocation table (``tail``). A loader's open-time
    check takes the digest, the sample count and the image sides from this one read (tens of MB
    at ImageNet's size; reading the header three times and the metadata twice cost as much again
    on a network mount)."""

    layout: BetonLayout
    head: bytes
    tail: bytes

    @property
    def digest(self) -> str:
        return _blake(self.head, self.tail)

    def metadata(self) -> np.ndarray:
        """Every sample's metadata row, from ``head`` (a view: no second read)."""
        return np.frombuffer(self.head, dtype=self.layout.metadata_type,
                             count=self.layout.num_samples, offset=self.layout.metadata_offset)


def read_regions(path: Path) -> BetonRegions:
    """:class:`BetonRegions` of the beton at ``path`` (:mod:`beton_builders.beton_format`: no
    ``import ffcv``; offsets checked within the file by ``read_layout``)."""
    from .beton_format import read_layout

    layout = read_layout(path)
    alloc_ptr = int(layout.header["alloc_table_ptr"])
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.pread(fd, layout.metadata_end, 0)
        tail = os.pread(fd, layout.size - alloc_ptr, alloc_ptr)
    finally:
        os.close(fd)
    return BetonRegions(layout, head, tail)


def beton_checksum(path: Path) -> dict[str, Any]:
    """``{"size", "digest"}`` of a beton (see the module docstring for what is hashed)."""
    regions = read_regions(Path(path))
    return {"size": regions.layout.size, "digest": regions.digest}


def shard_checksum(path: Path) -> dict[str, Any]:
    """``{"size", "digest"}`` of a shard: its size and its first and last ``SHARD_EDGE`` bytes."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.pread(fd, min(size, SHARD_EDGE), 0)
        tail = os.pread(fd, min(size, SHARD_EDGE), max(0, size - SHARD_EDGE))
    finally:
        os.close(fd)
    return {"size": size, "digest": _blake(head, tail)}


def array_digest(values: np.ndarray) -> str:
    """SHA-256 of an integer array's values (little-endian int64, in order): labels and index
    files are small (8 bytes a sample), so they are hashed whole; the digest does not depend on
    how the ``.npy`` file was written."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<i8").tobytes()).hexdigest()


def index_digest(index: np.ndarray) -> str:
    """:func:`array_digest` over every field of a WebDataset index (shard, offset, size, label, key)."""
    return array_digest(np.stack([np.asarray(index[n], dtype=np.int64) for n in index.dtype.names], 1))


def split_checksums(beton: Path, shards: list[Path], labels: np.ndarray | None = None,
                    index: np.ndarray | None = None) -> dict[str, Any]:
    """The ``checksums`` record of one split's files (stored in ``manifest.json``). ``labels``
    and ``index`` (the arrays written to ``S.labels.npy`` and ``wds/S.index.npy``) add their
    digests: a permuted labels file changes no size, only its content."""
    rec = {"scheme": SCHEME, "beton": beton_checksum(beton),
           "shards": [shard_checksum(p) for p in shards]}
    if labels is not None:
        rec["labels"] = array_digest(labels)
    if index is not None:
        rec["index"] = index_digest(index)
    return rec


def labels_dtype_problem(path: Path, labels: np.ndarray) -> str | None:
    """Why the array read from a labels file cannot be class ids (one line naming ``path``), or
    None. The one rule for loaders (:meth:`~ffcv_dp4tl.data.manifest.SplitInfo.load_labels`),
    ``dp4tl verify`` and the build's repair: float labels of whole values hash like the build's
    (:func:`array_digest` casts), so the digest alone passes a file that masks then index with
    (IndexError) or verify counts with (casting TypeError)."""
    if np.issubdtype(labels.dtype, np.integer) and labels.ndim == 1:
        return None
    what = (f"dtype {labels.dtype}" if labels.ndim == 1 else f"shape {labels.shape}")
    return (f"{path}: labels must be a 1-D array of integer class ids, got {what} (converted or "
            "replaced since the build)")


#: path -> ((size, mtime_ns), digest) of labels files already hashed in this process (one entry
#: a file, however often it changes: a long-lived process keeps no entry per version of it)
_LABELS_SEEN: dict[str, tuple[tuple[int, int], str]] = {}


def labels_intact(path: Path, labels: np.ndarray, checksums: dict[str, Any] | None) -> bool | None:
    """Do ``labels`` (read from ``path``) hash to the build's recorded digest? None when the build
    recorded none. Cached per file state, so repeated loads cost one ``stat``."""
    want = (checksums or {}).get("labels")
    if want is None or (checksums or {}).get("scheme") != SCHEME:
        return None
    try:
        st = os.stat(path)
        state = (st.st_size, st.st_mtime_ns)
    except OSError:
        state = None
    seen = _LABELS_SEEN.get(str(path))
    if state is not None and seen is not None and seen[0] == state:
        return seen[1] == want
    got = array_digest(np.asarray(labels))
    if state is not None:
        _LABELS_SEEN[str(path)] = (state, got)
    return got == want


def check_labels(path: Path, labels: np.ndarray, checksums: dict[str, Any] | None, root: Path,
                 split_name: str) -> None:
    """Refuse (one-line :class:`DataError`) a labels file whose values differ from the build's."""
    if labels_intact(path, labels, checksums) is False:
        raise DataError(f"{path}: labels differ from the ones the build wrote (edited, permuted or "
                        f"replaced; split {split_name!r}): class masks and class scores would pick "
                        f"other samples; {VERIFY_HINT.format(root=root)}")


def beton_fingerprint(mode: np.ndarray, hw: np.ndarray, stored_sha1: bytes) -> str:
    """Content fingerprint of a beton: per sample (in order) the storage mode, height, width and
    the SHA-1 of the stored bytes (the JPEG, or the raw pixels)."""
    h = hashlib.sha256(b"ffcv-dp4tl beton/1\n")
    h.update(np.ascontiguousarray(mode, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(hw, dtype="<i8").tobytes())
    h.update(stored_sha1)
    return h.hexdigest()


def stored_digests(beton: Path, images, known_jpeg_sha1: np.ndarray | None = None) -> np.ndarray:
    """(N, 20) SHA-1 of every sample's stored bytes in ``beton`` (``images``: its
    :class:`~beton_builders.beton.BetonImages`). JPEG samples whose digest is already known
    (``known_jpeg_sha1``: the shards' digests; the builder stores exactly those bytes) are not
    read."""
    n = len(images.mode)
    out = np.empty((n, 20), np.uint8)
    fd = os.open(beton, os.O_RDONLY)
    try:
        for i in range(n):
            if known_jpeg_sha1 is not None and images.mode[i] == 0:
                out[i] = known_jpeg_sha1[i]
                continue
            data = os.pread(fd, int(images.size[i]), int(images.data_ptr[i]))
            out[i] = np.frombuffer(hashlib.sha1(data).digest(), np.uint8)
    finally:
        os.close(fd)
    return out


def check_count(root: Path, split_name: str, path: Path, count: int, num_samples: int) -> None:
    """Refuse (one-line :class:`DataError`) a file whose sample count differs from the split's
    ``num_samples`` in ``manifest.json``. Loaders, masks and scores size everything from
    ``num_samples``: a hand-edited count would silently drop (or invent) samples while every
    file still matches its checksum."""
    if count != num_samples:
        raise DataError(f"{root}/manifest.json says split {split_name!r} has {num_samples} samples "
                        f"but {path} holds {count}: manifest.json disagrees with the file; restore "
                        f"manifest.json or rebuild {root}")


def beton_problem(path: Path, want: dict[str, Any], split_name: str, hint: str) -> str | None:
    """Why the beton at ``path`` fails its recorded checksum ``want`` (one line ending in
    ``hint``), or None when it matches. The one rule for loaders (:func:`check_split_files`) and
    ``dp4tl verify``, so whatever a loader refuses, verify reports first."""
    return _beton_against(path, want, split_name, hint)[0]


def _beton_against(path: Path, want: dict[str, Any], split_name: str,
                   hint: str) -> tuple[str | None, BetonRegions | None]:
    """:func:`beton_problem`'s line, or None and the regions it read (for the loaders' count
    and side checks, which need no second read)."""
    size = path.stat().st_size
    if size != want["size"]:
        return (f"{path}: {size} bytes, but the build wrote {want['size']} "
                f"(truncated or replaced, split {split_name!r}); {hint}"), None
    try:
        regions = read_regions(path)
    except DataError as e:
        return f"{e}; {hint}", None
    except Exception as e:  # noqa: BLE001 - numpy/os on a damaged header
        return f"{path}: unreadable header ({type(e).__name__}: {e}); {hint}", None
    if regions.digest != want["digest"]:
        return (f"{path}: header/metadata checksum differs from the one recorded "
                f"at build time (split {split_name!r}); {hint}"), None
    return None, regions


def in_order(fn: Callable[[_T], _R], items: list[_T],
             last: Callable[[_R], bool] | None = None) -> Iterator[_R]:
    """``fn`` of each item, yielded in the items' order, computed :data:`CHECK_THREADS` at a
    time (I/O-bound checks of many files). Whatever ``fn`` raises is raised at its item's turn;
    a caller that stops early leaves the items not yet begun undone. ``last``: a result after
    which the caller stops (the first problem found), so its block checks no further."""
    if len(items) <= 2 * _CHECK_BLOCK:
        yield from map(fn, items)
        return
    blocks = [items[i:i + _CHECK_BLOCK] for i in range(0, len(items), _CHECK_BLOCK)]
    pool = ThreadPoolExecutor(min(CHECK_THREADS, len(blocks)), thread_name_prefix="dp4tl-check")
    stop = threading.Event()  # (the caller stopped: a running block ends after its current item,
    #                            so Ctrl-C or the first problem waits for one check per block)

    def run(block: list[_T]) -> list[tuple[bool, Any]]:
        out: list[tuple[bool, Any]] = []
        for x in block:
            if stop.is_set():
                break
            try:
                out.append((True, fn(x)))
            except Exception as e:  # noqa: BLE001 - raised at its item's turn, below
                out.append((False, e))
                break
            if last is not None and last(out[-1][1]):
                break
        return out

    try:
        for done in pool.map(run, blocks):
            for ok, value in done:
                if not ok:
                    raise value
                yield value
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def shard_problem(path: Path, want: dict[str, Any], split_name: str, hint: str) -> str | None:
    """Why the shard at ``path`` fails its recorded checksum ``want`` (size, then the digest of
    its first and last ``SHARD_EDGE`` bytes; one line ending in ``hint``), or None when it
    matches. Shared by loaders and ``dp4tl verify`` like :func:`beton_problem`."""
    size = path.stat().st_size
    if size != want["size"]:
        return (f"{path}: {size} bytes, but the build wrote {want['size']} "
                f"(truncated or replaced, split {split_name!r}); {hint}")
    if shard_checksum(path)["digest"] != want["digest"]:
        return (f"{path}: checksum of its first/last {SHARD_EDGE} bytes differs from "
                f"the one recorded at build time (split {split_name!r}); {hint}")
    return None


def recorded_problems(beton: Path, shards: list[Path], checksums: dict[str, Any], split_name: str,
                      hint: str) -> Iterator[tuple[Path, str]]:
    """``(file, problem)`` for each present file of a split that fails the checksum the build
    recorded for it (:func:`beton_problem`, :func:`shard_problem`; a missing file or a missing
    record is the caller's to report): every problem, for ``dp4tl verify`` and the build's
    repair. (Loaders stop at the first: :func:`check_split_files`.)"""
    want = checksums.get("beton")
    if want is not None and beton.is_file():
        problem = beton_problem(beton, want, split_name, hint)
        if problem is not None:
            yield beton, problem
    def check(item: tuple[Path, dict[str, Any] | None]) -> str | None:
        path, want = item
        return None if want is None or not path.is_file() else \
            shard_problem(path, want, split_name, hint)

    recorded = list(zip(shards, checksums.get("shards") or []))
    for (path, _), problem in zip(recorded, in_order(check, recorded)):
        if problem is not None:
            yield path, problem


def _check_sides(regions: BetonRegions, max_side: int | None, hint: str) -> None:
    """Refuse a beton whose metadata records an image side over the build's ``max_side``
    (:func:`beton_builders.beton.oversized_line`; the builder's largest, 4096, when None): the
    checksums cannot tell, when whoever edited the metadata recorded its new digest too, and ffcv
    would allocate for it before any check."""
    from .beton import metadata_sides, oversized_line

    beton = regions.layout.path
    try:
        line = oversized_line(beton, metadata_sides(regions.layout, regions.metadata()), max_side)
    except DataError as e:  # (its header: the line says what is wrong, the hint what to do)
        line = str(e)
    except Exception as e:  # noqa: BLE001 - numpy raises assorted errors on damaged metadata
        line = f"{beton}: unreadable metadata ({type(e).__name__}: {e})"
    if line is not None:
        raise DataError(f"{line}; {hint}")


def check_split_files(root: Path, split_name: str, beton: Path | None, shards: list[Path] | None,
                      checksums: dict[str, Any] | None, num_samples: int,
                      max_side: int | None = None) -> None:
    """Refuse (one-line :class:`DataError`) a split's files that do not match the build.

    ``beton``/``shards``: the files a loader is about to read (None: not read). With recorded
    ``checksums`` (builds since this check exists) every named file's size and digest must
    match, and the beton's header must hold ``num_samples`` samples (the checksums cannot see
    an edited ``manifest.json``); without them (older builds) the beton's structure is checked
    instead (:func:`beton_builders.beton.check_beton`, no image bytes read, its sample count
    included) and shards by existence.
    """
    hint = VERIFY_HINT.format(root=root)
    rec = checksums if checksums and checksums.get("scheme") == SCHEME else None
    if beton is not None:
        if why := absent_why(beton):
            raise DataError(f"{beton} is {why}; rebuild {root}")
        if rec is not None:
            problem, regions = _beton_against(beton, rec["beton"], split_name, hint)
            if problem is not None:
                raise DataError(problem)
            check_count(root, split_name, beton, regions.layout.num_samples, num_samples)
            _check_sides(regions, max_side, hint)
        else:
            from .beton import check_beton

            _, problems = check_beton(beton, num_samples, max_side)
            if problems:
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                raise DataError(f"{problems[0].replace('; rebuild the dataset', '')}{more}; {hint}")
    if shards is not None:
        recorded = rec["shards"] if rec is not None else [None] * len(shards)
        if len(recorded) != len(shards):
            raise DataError(f"{root}/manifest.json lists {len(shards)} shards for split "
                            f"{split_name!r} but checksums for {len(recorded)}; rebuild {root}")
        def check(item: tuple[Path, dict[str, Any] | None]) -> str | None:
            p, want = item
            if why := absent_why(p):
                return f"{p} is {why} (split {split_name!r}); rebuild {root}"
            return None if want is None else shard_problem(p, want, split_name, hint)

        for problem in in_order(check, list(zip(shards, recorded)),  # (the first, in order)
                                last=lambda problem: problem is not None):
            if problem is not None:
                raise DataError(problem)
