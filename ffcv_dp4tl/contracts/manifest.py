"""Dataset manifest (``DATASET/manifest.json``): written by ``beton_builders``, read by ``data``."""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError
from .fields import REQUIRED, _show, typed
from .names import split_name_problem
from .versions import check_version, _known

#: what a damaged manifest's error says to do: rebuild over it (a plain rerun of the build finds
#: its settings unchanged and its files intact, so it says "already built" and keeps the manifest)
_REBUILD = ("rebuild the dataset with `dp4tl build SOURCE --out DIR --overwrite` (DIR: the "
            "folder that build wrote, for synth data the one holding source/ and targets/; a rerun "
            "without --overwrite keeps this manifest)")

MANIFEST_NAME = "manifest.json"
#: ``DATASET/SPLIT.files.txt``: where each sample came from (its input file, or the generator's
#: name for it), one line per sample in sample order — line ``i`` is sample ``i``, the index a
#: mask holds; a tab or line break inside a name is written ``\t``/``\n``/``\r``. A plain
#: sidecar, outside the manifest and its fingerprints (builds made before it lack it).
#: A backslash is written as it is, so each line is the path other tools open; the price: a
#: name holding a line break and one holding ``\n`` as text read the same (an audit found it;
#: kept, since escaping every backslash would change every such path and this format).
ORIGINS_SUFFIX = ".files.txt"
#: Identity tag of a manifest (kept from the first release; the version is ``format_version``).
FORMAT = "ffcv-dp4tl/1"
#: the ``checksums`` scheme this version writes and checks (beton_builders.integrity); a record
#: of another scheme (a newer release) is kept as read but not checked
CHECKSUM_SCHEME = "size+blake2b-edges/1"
#: the builder's range for ``--max-side`` (``BuildOptions.validate``): no build stores an image
#: side past its top, so a beton's recorded sides are held to it whatever manifest.json says
MAX_SIDE_RANGE = (8, 4096)


def side_limit(max_side: int | None) -> int:
    """The largest image side a beton of a build with ``max_side`` may record: that, within the
    builder's range (:data:`MAX_SIDE_RANGE`; its top when the manifest records none), so an
    edited or stripped ``image.max_side`` cannot lift the check on the beton's metadata."""
    top = MAX_SIDE_RANGE[1]
    return top if max_side is None else min(max_side, top)

#: Per-sample record of the WebDataset random-access index (``wds/SPLIT.index.npy``).
#: ``shard``: shard number; ``offset``/``size``: byte range of the ``.jpg`` member's data in the
#: tar; ``label``: class id; ``key``: the sample's ``__key__`` in the shard (source ordinal).
INDEX_DTYPE = np.dtype(
    [("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i8"), ("key", "<u8")]
)


def split_fingerprint(sample_digests: bytes, labels: np.ndarray, classes: list[str]) -> str:
    """Content fingerprint of one split: hash of every sample's JPEG digest and label, in order."""
    h = hashlib.sha256()
    h.update("\n".join(classes).encode())
    h.update(sample_digests)
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def dataset_fingerprint(split_fingerprints: list[str]) -> str:
    """Fingerprint of a whole dataset: hash of its splits' fingerprints, in split order."""
    return hashlib.sha256("".join(split_fingerprints).encode()).hexdigest()


def _checked_checksums(d: dict[str, Any], where: str) -> dict[str, Any] | None:
    """A split's ``checksums`` record, its shape checked (one DataError line naming the field):
    every reader (loaders' ``check_split_files``, ``dp4tl verify``, the build's repair) indexes
    it as ``rec["beton"]["size"]``, so a hand-edited ``"beton": 5`` must be refused here, not
    as a TypeError deep inside one of them. A record of an unknown (newer) scheme is kept
    unchecked: its shape is the newer release's."""
    rec = d.get("checksums")
    if rec is None:
        return None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: field 'checksums' must be a JSON object, got {_show(rec)}; "
                        f"{_REBUILD}")
    ck = f"{where} 'checksums'"
    if typed(rec, "scheme", "str", ck, _REBUILD) != CHECKSUM_SCHEME:
        return dict(rec)

    def file_record(v: Any, field_name: str) -> None:
        if not isinstance(v, dict):
            raise DataError(f"{ck}: field {field_name!r} must be a JSON object "
                            f"{{\"size\", \"digest\"}}, got {_show(v)}; {_REBUILD}")
        typed(v, "size", "count", f"{ck} {field_name!r}", _REBUILD)
        typed(v, "digest", "str", f"{ck} {field_name!r}", _REBUILD)

    file_record(rec.get("beton"), "beton")
    shards = rec.get("shards")
    if not isinstance(shards, list):
        raise DataError(f"{ck}: field 'shards' must be a list of {{\"size\", \"digest\"}} "
                        f"objects, got {_show(shards)}; {_REBUILD}")
    for i, v in enumerate(shards):
        if v is not None:  # (no record for that shard: checked by existence)
            file_record(v, f"shards[{i}]")
    for key in ("labels", "index"):
        typed(rec, key, "str", ck, _REBUILD, None)
    return dict(rec)


@dataclass(frozen=True)
class SplitEntry:
    """One split of a built dataset; paths are relative to the dataset directory."""

    num_samples: int
    fingerprint: str
    beton: str
    labels: str
    index: str
    shards: list[str]
    num_rejected: int = 0
    class_counts: list[int] | None = None
    #: content fingerprint of the beton: per sample its storage mode, shape and the SHA-1 of the
    #: stored bytes (beton_builders.integrity.beton_fingerprint); None in builds before it existed
    beton_fingerprint: str | None = None
    #: cheap per-file checksums checked when a loader opens the files: ``{"scheme", "beton":
    #: {"size", "digest"}, "shards": [{"size", "digest"}, ...]}``; None in older builds
    checksums: dict[str, Any] | None = None
    unknown: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        d = {"num_samples": int(self.num_samples), "num_rejected": int(self.num_rejected)}
        if self.class_counts is not None:
            d["class_counts"] = [int(c) for c in self.class_counts]
        d.update({"fingerprint": self.fingerprint, "beton": self.beton, "labels": self.labels,
                  "index": self.index, "shards": list(self.shards)})
        if self.beton_fingerprint is not None:
            d["beton_fingerprint"] = self.beton_fingerprint
        if self.checksums is not None:
            d["checksums"] = self.checksums
        return {**d, **self.unknown}

    @classmethod
    def from_json(cls, d: Any, where: str = "split") -> "SplitEntry":
        if not isinstance(d, dict):
            raise DataError(f"{where} must be a JSON object, got {d!r}; {_REBUILD}")
        missing = [k for k in ("num_samples", "fingerprint", "beton", "labels", "index", "shards")
                   if k not in d]
        if missing:
            raise DataError(f"{where} lacks field {missing[0]!r}; {_REBUILD}")
        known = _known(cls) - {"unknown"}

        def get(key: str, kind: str, default: Any = None) -> Any:
            return typed(d, key, kind, where, _REBUILD, default)

        def inside(key: str, kind: str = "str") -> Any:
            """A file of the build: a path relative to its folder that stays in it (a
            hand-edited "../other/train.beton" had loaders and verify read another folder)."""
            value = get(key, kind, REQUIRED)
            for p in ([value] if kind == "str" else value):
                pp = PurePosixPath(p)
                if pp.is_absolute() or ".." in pp.parts or PureWindowsPath(p).drive:
                    raise DataError(f"{where}: {key} {p!r} points outside the dataset folder (the "
                                    f"build writes paths inside it); {_REBUILD}")
            return value
        cc = get("class_counts", "counts")
        return cls(num_samples=get("num_samples", "count", REQUIRED),
                   fingerprint=get("fingerprint", "str", REQUIRED),
                   beton=inside("beton"),
                   labels=inside("labels"),
                   index=inside("index"),
                   shards=list(inside("shards", "strs")),
                   num_rejected=get("num_rejected", "count", 0),
                   class_counts=None if cc is None else list(cc),
                   beton_fingerprint=get("beton_fingerprint", "str"),
                   checksums=_checked_checksums(d, where),
                   unknown={k: v for k, v in d.items() if k not in known})


def _check_class_count(source: object, num_classes: int, splits: dict[str, SplitEntry]) -> None:
    """Refuse (one line) a ``classes`` list that cannot be the build's: empty, or of another
    length than the per-class counts a split was built with. Models get ``num_classes``
    outputs from it, so a shortened list trained into an IndexError on the first label past
    its end (labels are checked against it too: ``SplitInfo.load_labels``)."""
    if num_classes == 0:
        raise DataError(f"{source}: classes is empty (edited by hand?); restore manifest.json or "
                        f"{_REBUILD}")
    for name, entry in splits.items():
        if entry.class_counts is not None and len(entry.class_counts) != num_classes:
            raise DataError(f"{source}: classes lists {num_classes} names but split {name!r} was "
                            f"built with {len(entry.class_counts)} classes (its class_counts): "
                            f"classes was edited; restore manifest.json or {_REBUILD}")


@dataclass(frozen=True)
class ImageSettings:
    """How the images of a build were stored."""

    max_side: int
    quality: int
    beton_mode: str = "jpg"
    raw_fraction: float = 0.0
    color: str = "RGB"
    encoding: str = "JPEG"

    def to_json(self) -> dict[str, Any]:
        return {"max_side": self.max_side, "quality": self.quality, "beton_mode": self.beton_mode,
                "raw_fraction": self.raw_fraction, "color": self.color, "encoding": self.encoding}

    @classmethod
    def from_json(cls, d: Any, where: object = "image settings") -> "ImageSettings":
        if not isinstance(d, dict):
            raise DataError(f"{where}: field 'image' must be a JSON object, got {d!r}; {_REBUILD}")
        kinds = {"max_side": "count", "quality": "count", "beton_mode": "str",
                 "raw_fraction": "number", "color": "str", "encoding": "str"}
        fixed = {k: typed(d, k, kind, f"{where} 'image'", _REBUILD,
                          REQUIRED if k in ("max_side", "quality") else None)
                 for k, kind in kinds.items()}
        low, high = MAX_SIDE_RANGE
        if not low <= fixed["max_side"] <= high:  # (what the beton's sides are held to)
            raise DataError(f"{where}: field 'image.max_side' must be in [{low}, {high}] (the "
                            f"build's --max-side range), got {fixed['max_side']}; restore "
                            f"manifest.json or {_REBUILD}")
        return cls(**{k: v for k, v in fixed.items() if v is not None})


@dataclass(frozen=True)
class DatasetManifest:
    """``manifest.json``: what a built dataset directory contains (written last by the builder)."""

    VERSION: ClassVar[int] = 1

    classes: list[str]
    splits: dict[str, SplitEntry]
    fingerprint: str
    name: str = ""
    image: ImageSettings | None = None
    shard_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the build's settings (source, options, listing digest): a rerun compares them
    build: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    #: hash of the splits' beton fingerprints (None for builds before they were recorded)
    beton_fingerprint: str | None = None
    format: str = FORMAT
    format_version: int = VERSION
    #: top-level fields this version does not know, kept so a rewrite loses nothing
    unknown: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint_problem(self, source: object = MANIFEST_NAME, fix: str = "") -> str | None:
        """Why the recorded dataset ``fingerprint`` cannot be trusted (one line naming
        ``source``), or None. It is what masks, scores and every pipeline stage are keyed on, and
        :func:`dataset_fingerprint` of the splits' fingerprints (the builder's rule, reused
        here): a split removed from the manifest, or a fingerprint pasted from another dataset,
        leaves every file intact but makes it no longer match. Without any split the manifest
        describes no data at all. ``fix``: the caller's way to rebuild (the pipeline's, which
        builds its own data folders), else ``dp4tl build --overwrite``."""
        fix = fix or _REBUILD
        if not self.splits:
            return f"{source} lists no splits (emptied by hand?); restore manifest.json or {fix}"
        # the builder hashes its splits in the order it built them (train, then test or val),
        # which manifest.json does not keep (its keys are written sorted): any order that
        # gives the recorded fingerprint is the build's (at most a few splits)
        fps = [s.fingerprint for s in self.splits.values()]
        want = dataset_fingerprint(fps)
        orders = itertools.islice(itertools.permutations(fps), 720)  # (6 splits; more: unchecked)
        if len(fps) <= 6 and not any(dataset_fingerprint(list(o)) == self.fingerprint
                                     for o in orders):
            return (f"{source}: the dataset fingerprint {self.fingerprint[:12]}… does not match its "
                    f"splits ({', '.join(self.splits)}: {want[:12]}…): a split was removed or the "
                    f"fingerprint edited; restore manifest.json or {fix}")
        return None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": self.format, "format_version": self.format_version,
                             "name": self.name, "classes": list(self.classes),
                             "splits": {k: s.to_json() for k, s in self.splits.items()}}
        if self.image is not None:
            d["image"] = self.image.to_json()
        if self.shard_size is not None:
            d["shard_size"] = self.shard_size
        d.update({"fingerprint": self.fingerprint, "extra": self.extra, "build": self.build,
                  "created": self.created})
        if self.beton_fingerprint is not None:
            d["beton_fingerprint"] = self.beton_fingerprint
        return {**d, **self.unknown}

    @classmethod
    def from_json(cls, data: Any, source: object = MANIFEST_NAME) -> "DatasetManifest":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else None
            raise DataError(f"{source} is not an ffcv-dp4tl manifest (format {got!r}, "
                            f"expected {FORMAT!r}); rebuild the dataset")
        version = check_version(data, cls.VERSION, "dataset manifest", source)
        def get(key: str, kind: str, default: Any = None) -> Any:
            return typed(data, key, kind, source, _REBUILD, default)
        classes = get("classes", "names", REQUIRED)
        splits = get("splits", "object", REQUIRED)
        known = _known(cls) - {"unknown"}
        for k in splits:  # (not in the fingerprint: the build's rule, checked on every read)
            if problem := split_name_problem(k):
                raise DataError(f"{source}: {problem}; restore manifest.json or {_REBUILD}")
        entries = {k: SplitEntry.from_json(v, f"{source} split {k!r}") for k, v in splits.items()}
        _check_class_count(source, len(classes), entries)
        return cls(
            classes=[str(c) for c in classes],
            splits=entries,
            fingerprint=get("fingerprint", "str", REQUIRED), name=get("name", "str", ""),
            # absent: a build that recorded none; null or {} is an edit, refused by the check
            # (a falsy value read as "none recorded" passed an edited manifest; audit)
            image=ImageSettings.from_json(data["image"], source) if "image" in data else None,
            shard_size=get("shard_size", "count"), extra=dict(get("extra", "object", {})),
            build=dict(get("build", "object", {})), created=get("created", "str", ""),
            beton_fingerprint=get("beton_fingerprint", "str"),
            format=data["format"], format_version=version,
            unknown={k: v for k, v in data.items() if k not in known})
