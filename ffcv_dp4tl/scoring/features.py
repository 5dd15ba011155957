"""On-disk feature store: N x D surrogate features as a memory-mappable ``.npy``.

Extracting features for ImageNet (1.28M x 512 float32 = 2.6 GB) takes long enough to be
interrupted, and the array should never have to exist twice in memory. So features are
written batch by batch straight into a ``.npy`` memmap, and:

* while writing, the data lives in ``<path>.partial`` with ``<path>.partial.json`` (what is
  being written) and ``<path>.progress.npy`` (a bitmap of written rows, saved atomically at
  checkpoints *after* the memmap is flushed, so it never claims rows that are not on disk);
* reopening with the same metadata resumes: :meth:`FeatureWriter.missing_ranges` says which
  rows still need computing;
* :meth:`FeatureWriter.finalize` renames the data to ``<path>`` and then atomically writes
  the sidecar ``<path>.json``. The sidecar is the completion marker: a store without it is
  never loaded, so a crash at any point cannot produce something that looks complete.

The sidecar records N, D, dtype, the dataset fingerprint and the surrogate hash, so stale
features (other data or another surrogate) are detected at load time.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..fsutil import (atomic_save_npy, atomic_write_json, check_free_space, load_npy, naming,
                      read_json, reserve_blocks)

FORMAT = "ffcv-dp4tl-features"
VERSION = 1
_DTYPES = ("float16", "float32", "float64")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def meta_path(path: str | os.PathLike) -> Path:
    """The sidecar of a feature store (``feats.npy`` -> ``feats.npy.json``)."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def _partial_paths(path: Path) -> tuple[Path, Path, Path]:
    return (
        path.with_name(path.name + ".partial"),
        path.with_name(path.name + ".partial.json"),
        path.with_name(path.name + ".progress.npy"),
    )


def _make_meta(n: int, d: int, dtype: str, fingerprint: str | None, surrogate: str | None, extra: dict | None) -> dict:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"feature store size n must be a positive int, got {n!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise DataError(f"feature dimension d must be a positive int, got {d!r}")
    dt = np.dtype(dtype).name
    if dt not in _DTYPES:
        raise DataError(f"feature dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return {
        "format": FORMAT,
        "version": VERSION,
        "n": int(n),
        "d": int(d),
        "dtype": dt,
        "dataset_fingerprint": fingerprint,
        "surrogate_hash": surrogate,
        "extra": dict(extra or {}),
    }


def _differences(a: dict, b: dict) -> list[str]:
    return [f"{key}: {a.get(key)!r} != {b.get(key)!r}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def is_complete(path: str | os.PathLike) -> bool:
    """True when both the array and its sidecar exist (the sidecar is written last)."""
    return Path(path).is_file() and meta_path(path).is_file()


class FeatureWriter:
    """Incrementally write N x D features to ``path``; resumable, atomically finalised.

    Usage::

        with FeatureWriter(path, n, d, dataset_fingerprint=fp, surrogate_hash=h) as w:
            for start, stop in w.missing_ranges():
                for s in range(start, stop, batch):
                    w.write(s, compute_features(s, min(stop, s + batch)))
            w.finalize()

    If ``path`` already holds a complete store with the same metadata, ``w.done`` is True
    and there is nothing to write. A complete store with *different* metadata is an error
    (delete it or choose another path) rather than silently overwritten. ``resume=False``
    discards any partial progress. One writer per path at a time.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        d: int,
        *,
        dtype: str = "float32",
        dataset_fingerprint: str | None = None,
        surrogate_hash: str | None = None,
        extra: dict[str, Any] | None = None,
        resume: bool = True,
        checkpoint_rows: int = 65536,
    ) -> None:
        self.path = Path(path)
        self.meta = _make_meta(n, d, dtype, dataset_fingerprint, surrogate_hash, extra)
        self.checkpoint_rows = max(1, int(checkpoint_rows))
        self._data_tmp, self._meta_tmp, self._progress = _partial_paths(self.path)
        self._mm: np.memmap | None = None
        self._since_checkpoint = 0
        self.done = False
        self.n, self.d = self.meta["n"], self.meta["d"]

        if is_complete(self.path):
            existing = read_feature_meta(self.path)
            if existing == self.meta:
                self.done = True
                self._written = np.ones(self.n, dtype=bool)
                return
            raise DataError(
                f"{self.path} already holds features with different metadata "
                f"({'; '.join(_differences(existing, self.meta))}); delete it or write to another path"
            )
        if resume and self._can_resume():
            self._reserve()  # (the rows still to write: a hole a resumed run fills must fit too)
            self._mm = np.lib.format.open_memmap(self._data_tmp, mode="r+")
            bits = np.load(self._progress, allow_pickle=False)
            self._written = np.unpackbits(bits, count=self.n).astype(bool)
        else:
            self._start_fresh()

    def _can_resume(self) -> bool:
        if not (self._data_tmp.is_file() and self._meta_tmp.is_file() and self._progress.is_file()):
            return False
        try:
            if read_json(self._meta_tmp, "partial feature metadata") != self.meta:
                return False
            header = np.lib.format.open_memmap(self._data_tmp, mode="r")
            ok = header.shape == (self.n, self.d) and header.dtype == np.dtype(self.meta["dtype"])
            del header
            bits = np.load(self._progress, allow_pickle=False)
            return ok and bits.dtype == np.uint8 and bits.shape == ((self.n + 7) // 8,)
        except (DataError, ValueError, OSError, EOFError):  # (EOFError: an empty progress file)
            return False

    def _start_fresh(self) -> None:
        for p in (self._progress, self._meta_tmp, self._data_tmp):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(
            self._data_tmp, mode="w+", dtype=np.dtype(self.meta["dtype"]), shape=(self.n, self.d)
        )
        try:
            self._reserve()
        except BaseException:
            del mm  # (nothing written yet: no sparse file of the store's size is left behind)
            with contextlib.suppress(FileNotFoundError):
                self._data_tmp.unlink()
            raise
        self._mm = mm
        self._written = np.zeros(self.n, dtype=bool)
        atomic_write_json(self._meta_tmp, self.meta)
        atomic_save_npy(self._progress, np.packbits(self._written))

    def _reserve(self) -> None:
        """Allocate the ``.partial`` file's blocks before a row is written through the memmap.

        ``open_memmap`` makes a sparse file, and a store written through a memory map that
        meets a full disk gets no ``OSError`` but SIGBUS: the run died with "Bus error" (exit
        135) and no word (audit, a tmpfs filled mid-scoring). ``fallocate`` reserves every
        block (a resumed store's holes only: blocks already there cost nothing), so a full disk
        or quota is an ``OSError`` naming the ``.partial`` file, before any work, that the CLI
        says in its one disk-full line. Where the file system cannot reserve (EOPNOTSUPP, ENOSYS,
        EINVAL, or no glibc) the free space is checked instead (``fsutil.reserve_blocks``)."""
        size = self._data_tmp.stat().st_size
        with open(self._data_tmp, "rb+") as f:
            try:
                with naming(self._data_tmp):
                    if reserve_blocks(f.fileno(), size):
                        return
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                free = shutil.disk_usage(self._data_tmp.parent).free
                raise OSError(e.errno, f"{e.strerror}: the feature store needs "
                              f"{_mib(size)} MiB, {_mib(free)} MiB free",
                              str(self._data_tmp)) from None
            held = os.fstat(f.fileno()).st_blocks * 512  # (what a resumed store holds)
        check_free_space(self._data_tmp.parent, max(0, size - held),
                         f"the feature store {self._data_tmp.name}", option="",
                         then="it resumes")

    # -- writing ------------------------------------------------------------------------
    def write(self, start: int, block: Any) -> None:
        """Store ``block`` (m, D) as rows ``start .. start+m-1``; checkpoints every
        ``checkpoint_rows`` rows."""
        if self.done:
            raise DataError(f"{self.path} is already complete; nothing more can be written")
        if self._mm is None:
            raise DataError(f"writer for {self.path} is closed; open a new FeatureWriter to resume")
        module = type(block).__module__.split(".")[0]
        if module == "cupy":
            block = block.get()
        elif module == "torch":
            block = block.detach().cpu().numpy()
        b = np.asarray(block)
        if b.ndim != 2 or b.shape[1] != self.d:
            raise DataError(f"feature block must have shape (rows, {self.d}), got {b.shape}")
        start = int(start)
        if start < 0 or start + b.shape[0] > self.n:
            raise DataError(f"rows {start}..{start + b.shape[0] - 1} are outside the store's {self.n} rows")
        self._mm[start : start + b.shape[0]] = b
        self._written[start : start + b.shape[0]] = True
        self._since_checkpoint += b.shape[0]
        if self._since_checkpoint >= self.checkpoint_rows:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Flush the data, then record which rows are written (so a resume can trust it)."""
        if self._mm is None or self.done:
            return
        self._mm.flush()
        atomic_save_npy(self._progress, np.packbits(self._written))
        self._since_checkpoint = 0

    def missing_ranges(self) -> list[tuple[int, int]]:
        """Half-open row ranges ``[start, stop)`` not written yet (empty once complete)."""
        missing = np.flatnonzero(~self._written)
        if missing.size == 0:
            return []
        breaks = np.flatnonzero(np.diff(missing) != 1)
        starts = np.concatenate([[missing[0]], missing[breaks + 1]])
        stops = np.concatenate([missing[breaks] + 1, [missing[-1] + 1]])
        return [(int(a), int(b)) for a, b in zip(starts, stops)]

    @property
    def rows_written(self) -> int:
        return int(self._written.sum())

    def finalize(self) -> Path:
        """Publish the store: data renamed to ``path``, then the sidecar written (last)."""
        if self.done:
            return self.path
        missing = self.missing_ranges()
        if missing:
            count = sum(b - a for a, b in missing)
            a, b = missing[0]
            raise DataError(
                f"cannot finalize {self.path}: {count} of {self.n} rows were never written "
                f"(first missing rows {a}..{b - 1}); write them first"
            )
        assert self._mm is not None
        self._mm.flush()
        del self._mm
        self._mm = None
        with open(self._data_tmp, "rb+") as f:
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            meta_path(self.path).unlink()
        os.replace(self._data_tmp, self.path)
        atomic_write_json(meta_path(self.path), self.meta)
        for p in (self._progress, self._meta_tmp):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.done = True
        return self.path

    def close(self) -> None:
        """Checkpoint and release the memmap without finalising (resume later)."""
        if self._mm is not None:
            self.checkpoint()
            del self._mm
            self._mm = None

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_feature_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a complete store; a missing sidecar means the store is incomplete."""
    mp = meta_path(path)
    if not mp.is_file():
        state = "incomplete (no metadata; extraction was interrupted?)" if Path(path).exists() else "missing"
        raise DataError(f"feature store {path} is {state}; (re)run feature extraction to create it")
    meta = read_json(mp, "feature metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{mp} is not an {FORMAT} metadata file; rerun feature extraction")
    return meta


def load_features(
    path: str | os.PathLike,
    mmap: bool = True,
    *,
    expect_dataset_fingerprint: str | None = None,
    expect_surrogate_hash: str | None = None,
    expect_extra: dict[str, Any] | None = None,
) -> np.ndarray:
    """Open a complete feature store as an (N, D) array (read-only memmap by default).

    With ``mmap=True`` nothing is read until used, so a 1.28M x 512 store costs no RAM up
    front and is never duplicated. Pass the ``expect_*`` values to reject stale features
    (``expect_extra``: each of its keys must hold that value in the store's ``extra``, e.g. the
    resolution and crop the features were extracted at).
    """
    meta = read_feature_meta(path)
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    expected = [("dataset_fingerprint", meta.get("dataset_fingerprint"), expect_dataset_fingerprint),
                ("surrogate_hash", meta.get("surrogate_hash"), expect_surrogate_hash)]
    expected += [(k, extra.get(k), v) for k, v in sorted((expect_extra or {}).items())]
    for key, have, want in expected:
        if want is not None and have != want:
            raise DataError(
                f"feature store {path} was built with {key}={have!r}, expected {want!r}; "
                "the features are stale: delete the store and re-extract"
            )
    try:
        arr = load_npy(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:  # (EOFError: an empty file)
        raise DataError(f"cannot read feature store {path} ({type(e).__name__}: {e}); delete it "
                        "and re-extract") from None
    if arr.shape != (meta["n"], meta["d"]) or arr.dtype != np.dtype(meta["dtype"]):
        raise DataError(
            f"feature store {path} holds {arr.shape} {arr.dtype} but its metadata says "
            f"({meta['n']}, {meta['d']}) {meta['dtype']}; delete it and re-extract"
        )
    return arr
