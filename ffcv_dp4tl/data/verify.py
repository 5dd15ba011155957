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
from beton_builders.integrity import (OVERWRITE_HINT, REMAKE_HINT, SCHEME, beton_fingerprint, index_digest,
                                      labels_intact, recorded_problems)

from ..errors import DataError
from ..fsutil import absent_why

from .pread import PreadFiles
from .manifest import MANIFEST_NAME, SplitInfo, load_manifest, read_labels, split_fingerprint

#: Problems listed per kind before the rest are counted ("... and N more").
MAX_LISTED = 10
#: Most bytes a shard's ``KEY.cls`` member may hold: the label as decimal text (a tar header
#: can declare gigabytes in a few bytes of file, and a deep check read the member whole)
MAX_CLS_BYTES = 32


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
        labels = np.asarray(read_labels(split.labels, split.root))
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
            out.append(f"{p}: {absent_why(p)}; rebuild the dataset (or restore the file)")
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
    images, problems = check_beton(split.beton, split.num_samples, split.max_side)
    out.extend(problems)
    return images


def _check_checksums(split: SplitInfo, out: list[str]) -> None:
    """What the build recorded (builds that recorded it): every file's size, the beton's
    header/metadata digest and each shard's edge digest (no image bytes). The rules are the
    loaders' own (``beton_problem``, ``shard_problem``), so whatever a loader would refuse at
    open, the quick check reports first."""
    rec = split.checksums
    if not rec:
        return
    if rec.get("scheme") != SCHEME:
        # (contracts/versions.py's rule: what a newer release wrote is refused, never skipped
        # in silence; loaders still open the files, checking their structure only)
        out.append(f"{split.root / MANIFEST_NAME}: split {split.name!r} records checksums of "
                   f"scheme {rec.get('scheme')!r}, which this ffcv-dp4tl does not know (expected "
                   f"{SCHEME!r}), so its files' checksums were not checked; upgrade ffcv-dp4tl "
                   "(pip install -U ffcv-dp4tl), or rebuild the dataset with this one (`dp4tl build "
                   "SOURCE --out DIR --overwrite`)")
        return
    if len(rec.get("shards", [])) != len(split.shards):
        out.append(f"{split.root}/manifest.json lists {len(split.shards)} shards for split "
                   f"{split.name!r} but checksums for {len(rec.get('shards', []))}; "
                   "rebuild the dataset")
    # (a missing file is _check_shards' and _check_beton's; an unreadable header, which both
    # read, once)
    out.extend(why for _, why in recorded_problems(split.beton, split.shards, rec, split.name,
                                                   "rebuild the dataset") if why not in out)


def _deep(split: SplitInfo, classes: list[str], index: np.ndarray, images, progress: bool,
          out: list[str]) -> None:
    n = split.num_samples
    digests = np.empty((n, 20), np.uint8)
    mismatch, truncated = [], []
    stored_sha1 = np.zeros((n, 20), np.uint8)
    shards = PreadFiles(split.shards, max_open=8)  # (thousands of shards: pread.PreadFiles)
    beton = PreadFiles([split.beton]) if images is not None else None
    it = range(n)
    if progress:
        from ..progress import bar

        it = bar(it, desc=f"verify {split.name}", unit="img")
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
                   f"fingerprint; restore manifest.json or {OVERWRITE_HINT}")
    elif shards_ok is False:
        files = _shard_files(split, index, np.array(mismatch, dtype=np.int64), bare=True) if beton_ok else ""
        out.append(f"{split.name}: the shards' bytes do not hash to the fingerprint in manifest.json "
                   f"(a shard was modified or damaged{': ' + files if files else ''}); "
                   f"{_remake(split, files) if files else OVERWRITE_HINT}")
    if mismatch:
        idx = np.array(mismatch)
        if beton_ok and shards_ok is False:
            out.append(_listed("shard bytes differ from the build's (the beton's copy is intact)",
                               _shard_files(split, index, idx, bare=True), idx))
        else:  # (the beton is rewritten from the shards when they are the build's)
            out.append(_listed("beton JPEG bytes differ from the shard's", str(split.beton), idx)
                       + f"; {_remake(split, split.beton) if shards_ok else OVERWRITE_HINT}")
    if beton_ok is False and not mismatch:
        out.append(f"{split.beton}: stored images do not hash to the beton fingerprint in "
                   "manifest.json (raw pixels, shapes or modes changed); "
                   f"{_remake(split, split.beton) if shards_ok else OVERWRITE_HINT}")


def _check_tars(split: SplitInfo, index: np.ndarray, out: list[str]) -> None:
    """Each shard read as a standard tar reader reads it (Python's ``tarfile``, what
    ``webdataset`` uses): its members, in order, must be the index's samples of that shard,
    ``KEY.jpg`` at the index's byte range then ``KEY.cls`` holding the label the build wrote
    (the labels file's, unless that fails its recorded digest: the quick check's problem). The
    random-access index never reads a tar header, so a damaged header (a standard reader stops
    there: every later sample is lost) or a changed ``.cls`` (a garbled label for a WebDataset
    user) is invisible to the byte hashes of :func:`_deep`. One line per damaged shard, naming
    the first bad sample."""
    import tarfile

    labels = _build_labels(split, index)  # (a damaged labels file is the quick check's)
    if labels is None or labels.shape != (len(index),):
        labels = index["label"]
    labels = np.asarray(labels, dtype=np.int64)
    shard_of = index["shard"].astype(np.int64)
    for s, path in enumerate(split.shards):
        if not path.is_file():
            continue  # (reported by the quick check)
        want = iter(np.flatnonzero(shard_of == s).tolist())
        i = next(want, None)
        cls_of = None  # the sample whose .cls comes next
        why = None
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if cls_of is not None:
                        key = f"{int(index[cls_of]['key']):09d}"
                        if m.name != f"{key}.cls":
                            why = f"member {m.name!r} where {key}.cls belongs", cls_of
                        elif m.size > MAX_CLS_BYTES or m.issparse():
                            why = (f"{m.name} declaring {m.size} bytes"
                                   f"{' (sparse)' if m.issparse() else ''}, more than a label's "
                                   f"{MAX_CLS_BYTES}"), cls_of
                        else:
                            data = tar.extractfile(m).read(MAX_CLS_BYTES) if m.isreg() else b""
                            if data.strip() != str(int(labels[cls_of])).encode():
                                why = (f"label {data[:20].decode('latin-1')!r} in {m.name}, but the "
                                       f"build wrote {int(labels[cls_of])}"), cls_of
                        cls_of = None
                    elif i is None:
                        why = f"member {m.name!r} after the last sample of the shard", None
                    else:
                        key, rec = f"{int(index[i]['key']):09d}", index[i]
                        if m.name != f"{key}.jpg" or not m.isreg():
                            why = f"member {m.name!r} where {key}.jpg belongs", i
                        elif (m.offset_data, m.size) != (int(rec["offset"]), int(rec["size"])):
                            why = (f"{m.name} at bytes {m.offset_data}+{m.size}, but the index "
                                   f"says {int(rec['offset'])}+{int(rec['size'])}"), i
                        cls_of, i = i, next(want, None)
                    if why is not None:
                        break
        except (tarfile.TarError, OSError, EOFError) as e:
            why = f"no readable tar header ({type(e).__name__}: {e})", cls_of if cls_of is not None else i
        if why is None and (cls_of is not None or i is not None):
            first = cls_of if cls_of is not None else i
            why = ("the archive ending early (a damaged tar header: a reader stops there and "
                   "loses every later sample)"), first
        if why is not None:
            what, at = why
            where = f", sample {at} (key {int(index[at]['key']):09d})" if at is not None else ""
            out.append(f"{path}{where}: a standard tar reader (tarfile, webdataset) finds {what}; "
                       f"{_remake(split, path)}")


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
        labels = np.asarray(read_labels(split.labels, split.root))
    except DataError:  # (reported by the quick check)
        labels = None
    if labels is not None and labels_intact(split.labels, labels, split.checksums) is not False:
        return labels
    from_index = np.asarray(index["label"], dtype=np.int64)
    return from_index if array_digest(from_index) == (split.checksums or {}).get("labels") else None


def _remake(split: SplitInfo, path: Path | str) -> str:
    """What to do about a damaged file that only ``--deep`` finds: the build's own repair checks
    only what loaders check (sizes, edges, digests: no image bytes, no tar headers), so a rerun
    alone says "already built"; without the file, the rerun makes it again from the inputs
    (:data:`beton_builders.integrity.REMAKE_HINT`)."""
    return REMAKE_HINT.format(file=path, root=split.root)


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
        manifest = load_manifest(root, check=False)  # (its fingerprint is one problem of several)
    except DataError as e:
        report.problems.append(str(e))
        return report
    problem = manifest.contract.fingerprint_problem(root / MANIFEST_NAME)
    if problem is not None:
        report.problems.append(problem)
    for name in manifest.split_names:
        split = manifest.split(name)
        _check_labels(split, manifest.num_classes, manifest.class_counts(name), report.problems)
        index = _check_shards(split, report.problems)
        images = _check_beton(split, report.problems)
        _check_checksums(split, report.problems)
        # (a shard the quick check found missing is its problem already: hashing cannot read it)
        if deep and index is not None and all(Path(p).is_file() for p in split.shards):
            try:
                for p in split.shards:  # (one unreadable is said now, not hours into hashing)
                    os.close(os.open(p, os.O_RDONLY))
                _deep(split, manifest.classes, index, images, progress, report.problems)
                _check_tars(split, index, report.problems)
            except OSError as e:  # unreadable (permissions, an I/O error): one line, and go on
                report.problems.append(f"{e.filename or root}: cannot read it for the deep check "
                                       f"({e.strerror or e}); fix its permissions or restore it")
        report.samples[name] = split.num_samples
    return report
