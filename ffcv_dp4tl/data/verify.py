"""``dp4tl verify``: is a built dataset intact, in both formats?

A build records, per split, a content fingerprint over every sample's JPEG digest (SHA-1) and
label (``manifest.split_fingerprint``). Nothing read it back, so flipped bytes in a beton or a
shard gave silently different images. This module checks a built directory against its manifest:

* **quick** (always; seconds at ImageNet scale: no image bytes are read): the manifest loads;
  labels and the random-access index have one entry per sample, labels are valid class ids
  whose per-class counts match the manifest; every shard exists and each sample's byte range
  lies inside its shard; the beton's header opens with ffcv, holds the manifest's sample count,
  and every image points at an allocation of the right size inside the file; for builds that
  recorded them (``checksums`` in the manifest), every file's size, the beton's
  header/metadata digest and each shard's first/last 4 KiB digest: the loaders' own rules
  (beton_builders.integrity), so a file a loader would refuse is reported here first.
* **deep** (``deep=True``; reads every image once per format): every sample's shard bytes
  hash back to the manifest's fingerprint, and every JPEG sample of the beton holds exactly
  the bytes of the shard (raw-pixel samples of ``--beton-mode proportion`` builds: size
  ``h * w * 3``), and the stored bytes hash back to the split's ``beton_fingerprint``
  (builds that recorded it). Failures name the split, the sample index and the file; when
  every sample's bytes and the labels are proven intact but the split fingerprint still
  differs, the edited ``manifest.json`` (its class names) is named instead of the shards.

Every problem is one line; :func:`verify_dataset` returns them all rather than stopping at the
first, so one run tells the whole story.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from beton_builders.beton import check_beton, listed_samples
from beton_builders.integrity import (SCHEME, beton_fingerprint, index_digest, labels_intact,
                                      recorded_problems)

from ..errors import DataError

from .manifest import SplitInfo, load_manifest, read_npy, split_fingerprint

#: Problems listed per kind before the rest are counted ("... and N more").
MAX_LISTED = 10


@dataclass
class VerifyReport:
    root: Path
    deep: bool
    problems: list[str] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=dict)  # split -> samples checked

    @property
    def ok(self) -> bool:
        return not self.problems


def _listed(kind: str, where: str, idx: np.ndarray) -> str:
    return listed_samples(kind, where, idx, MAX_LISTED)


def _check_labels(split: SplitInfo, num_classes: int, counts: list[int] | None, out: list[str]) -> None:
    try:
        labels = np.asarray(read_npy(split.labels, mmap=True))
    except DataError as e:
        out.append(str(e))
        return
    if labels.shape != (split.num_samples,):
        out.append(f"{split.labels}: {labels.shape[0] if labels.ndim else 0} labels for "
                   f"{split.num_samples} samples; rebuild the dataset")
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        out.append(_listed(f"label outside [0, {num_classes})", str(split.labels), bad))
    elif counts is not None and np.bincount(labels, minlength=num_classes).tolist() != list(counts):
        out.append(f"{split.labels}: per-class counts differ from manifest.json; rebuild the dataset")
    elif labels_intact(split.labels, labels, split.checksums) is False:
        out.append(f"{split.labels}: labels differ from the ones the build wrote (same counts: "
                   "permuted or edited); rebuild the dataset")


def _check_shards(split: SplitInfo, out: list[str]) -> np.ndarray | None:
    """The index, checked against the shard files; returns it (None if unusable)."""
    try:
        index = split.load_index()
    except DataError as e:
        out.append(str(e))
        return None
    if len(index) != split.num_samples:
        out.append(f"{split.index}: {len(index)} entries for {split.num_samples} samples; rebuild the dataset")
        return None
    want = (split.checksums or {}).get("index")
    if want is not None and index_digest(index) != want:
        out.append(f"{split.index}: entries differ from the ones the build wrote (edited or "
                   "replaced); rebuild the dataset")
        return None
    sizes = np.array([p.stat().st_size if p.is_file() else -1 for p in split.shards], dtype=np.int64)
    for p, sz in zip(split.shards, sizes):
        if sz < 0:
            out.append(f"{p}: missing; rebuild the dataset (or restore the file)")
    shard = index["shard"].astype(np.int64)
    if (shard >= len(split.shards)).any():
        out.append(_listed("shard number beyond the shard list", str(split.index),
                           np.flatnonzero(shard >= len(split.shards))))
        return None
    end = index["offset"].astype(np.int64) + index["size"].astype(np.int64)
    beyond = np.flatnonzero((sizes[shard] >= 0) & (end > sizes[shard]))
    if beyond.size:
        out.append(_listed("byte range past the end of its shard (truncated file?)", split.name, beyond))
    return index


def _check_beton(split: SplitInfo, out: list[str]):
    """The beton's image layout, checked (beton_builders.beton.check_beton); None if unusable."""
    images, problems = check_beton(split.beton, split.num_samples)
    out.extend(problems)
    return images


def _check_checksums(split: SplitInfo, out: list[str]) -> None:
    """What the build recorded (builds that recorded it): every file's size, the beton's
    header/metadata digest and each shard's edge digest (no image bytes). The rules are the
    loaders' own (``beton_problem``, ``shard_problem``), so whatever a loader would refuse at
    open, the quick check reports first."""
    rec = split.checksums
    if not rec or rec.get("scheme") != SCHEME:
        return
    if len(rec.get("shards", [])) != len(split.shards):
        out.append(f"{split.root}/manifest.json lists {len(split.shards)} shards for split "
                   f"{split.name!r} but checksums for {len(rec.get('shards', []))}; "
                   "rebuild the dataset")
    # (a missing file is _check_shards' and _check_beton's)
    out.extend(why for _, why in recorded_problems(split.beton, split.shards, rec, split.name,
                                                   "rebuild the dataset"))


class _Reader:
    """pread-based byte reader over a set of files (no shared file position)."""

    def __init__(self, paths: list[Path]):
        self.fds = [os.open(p, os.O_RDONLY) for p in paths]

    def read(self, f: int, offset: int, size: int) -> bytes:
        return os.pread(self.fds[f], size, offset)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _deep(split: SplitInfo, classes: list[str], index: np.ndarray, images, progress: bool,
          out: list[str]) -> None:
    n = split.num_samples
    digests = np.empty((n, 20), np.uint8)
    mismatch, truncated = [], []
    stored_sha1 = np.zeros((n, 20), np.uint8)
    shards = _Reader(split.shards)
    beton = _Reader([split.beton]) if images is not None else None
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"verify {split.name}", unit="img", leave=False)
    try:
        for i in it:
            rec = index[i]
            data = shards.read(int(rec["shard"]), int(rec["offset"]), int(rec["size"]))
            if len(data) != int(rec["size"]):
                truncated.append(i)
            digests[i] = np.frombuffer(hashlib.sha1(data).digest(), np.uint8)
            if beton is not None and images.size[i] >= 0:
                # ffcv allocates at least the JPEG's length; the JPEG is the region's prefix
                stored = beton.read(0, int(images.data_ptr[i]), int(images.size[i]))
                if images.is_jpeg[i] and stored[:len(data)] != data:
                    mismatch.append(i)
                stored_sha1[i] = np.frombuffer(hashlib.sha1(stored).digest(), np.uint8)
    finally:
        shards.close()
        if beton is not None:
            beton.close()
    if truncated:
        out.append(_listed("shard bytes shorter than the index says", split.name, np.array(truncated)))
    # Which side is damaged? The shards are right when their digests (with the build's labels)
    # hash to the split fingerprint; the beton is right when what it stores hashes to the beton
    # fingerprint. A sample whose beton bytes differ from its shard bytes is blamed on the side
    # that does not match its own fingerprint (both, when neither can be told).
    labels = _build_labels(split, index)
    shards_ok = (None if labels is None else
                 split_fingerprint(digests.tobytes(), labels, classes) == split.fingerprint)
    beton_ok = (None if images is None or split.beton_fingerprint is None else
                beton_fingerprint(images.mode, images.hw, stored_sha1.tobytes()) == split.beton_fingerprint)
    if shards_ok is False and _only_manifest_changed(split, images, labels, beton_ok,
                                                     mismatch or truncated):
        out.append(f"{split.name}: manifest.json's classes (or this split's fingerprint) were "
                   "edited: the shards' bytes and the labels are the build's (every sample matches "
                   "the beton, which hashes to its fingerprint) but no longer hash to the split "
                   "fingerprint; restore manifest.json or rebuild the dataset")
    elif shards_ok is False:
        files = _shard_files(split, index, np.array(mismatch, dtype=np.int64)) if beton_ok else ""
        out.append(f"{split.name}: the shards' bytes do not hash to the fingerprint in manifest.json "
                   f"(a shard was modified or damaged{files}); rebuild the dataset")
    if mismatch:
        idx = np.array(mismatch)
        if beton_ok and shards_ok is False:
            out.append(_listed("shard bytes differ from the build's (the beton's copy is intact)",
                               _shard_files(split, index, idx, bare=True), idx))
        else:
            out.append(_listed("beton JPEG bytes differ from the shard's", str(split.beton), idx))
    if beton_ok is False and not mismatch:
        out.append(f"{split.beton}: stored images do not hash to the beton fingerprint in "
                   "manifest.json (raw pixels, shapes or modes changed); rebuild the dataset")


def _only_manifest_changed(split: SplitInfo, images, labels: np.ndarray | None, beton_ok: bool | None,
                           differing: list[int]) -> bool:
    """Are the split fingerprint's inputs other than ``manifest.json`` (every sample's shard
    bytes, the labels) proven to be the build's? Then a fingerprint mismatch comes from the
    manifest itself (the fingerprint also hashes the class names), not from a shard. Proven:
    every sample is a JPEG whose shard bytes equal the beton's copy (none ``differing``), the
    beton hashes to its recorded fingerprint, and the labels hash to their recorded digest.
    Raw-pixel samples (``--beton-mode proportion``) cannot be compared, so they prove nothing."""
    from beton_builders.integrity import array_digest

    want_labels = (split.checksums or {}).get("labels")
    return bool(beton_ok and not differing and images is not None and images.is_jpeg.all()
                and (images.size >= 0).all() and labels is not None and want_labels is not None
                and array_digest(labels) == want_labels)


def _build_labels(split: SplitInfo, index: np.ndarray) -> np.ndarray | None:
    """The labels the build wrote: ``labels.npy`` unless it fails its recorded digest, then the
    index's copy (so a permuted labels file is not blamed on the shards); None if unknown."""
    from beton_builders.integrity import array_digest

    try:
        labels = np.asarray(read_npy(split.labels, mmap=True))
    except DataError:  # (reported by the quick check)
        labels = None
    if labels is not None and labels_intact(split.labels, labels, split.checksums) is not False:
        return labels
    from_index = np.asarray(index["label"], dtype=np.int64)
    return from_index if array_digest(from_index) == (split.checksums or {}).get("labels") else None


def _shard_files(split: SplitInfo, index: np.ndarray, idx: np.ndarray, bare: bool = False) -> str:
    names = sorted({str(split.shards[int(index[int(i)]["shard"])]) for i in idx})
    if not names:
        return ""
    text = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return text if bare else f": {text}"


def verify_dataset(root: str | Path, *, deep: bool = False, progress: bool = False) -> VerifyReport:
    """Check the built dataset at ``root``; see the module docstring for what each mode reads."""
    root = Path(root)
    report = VerifyReport(root, deep)
    try:
        manifest = load_manifest(root)
    except DataError as e:
        report.problems.append(str(e))
        return report
    for name in manifest.split_names:
        split = manifest.split(name)
        _check_labels(split, manifest.num_classes, manifest.class_counts(name), report.problems)
        index = _check_shards(split, report.problems)
        images = _check_beton(split, report.problems)
        _check_checksums(split, report.problems)
        if deep and index is not None:
            _deep(split, manifest.classes, index, images, progress, report.problems)
        report.samples[name] = split.num_samples
    return report
