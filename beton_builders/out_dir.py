"""What a build's ``--out`` folder holds, and what tells a dp4tl build from anyone else's files.

A build writes into ``--out`` (see :mod:`.writer` for the layout): its manifest last, its
records under ``.build/`` first (``settings.json``, one metadata file per finished shard), a
lock while it runs. The rules here decide what a build may touch: a folder that is neither a
build nor fresh is refused before any file is written or removed, since it could be the
user's; ``--overwrite`` removes a build's own files and never anything else.
"""
from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ffcv_dp4tl.contracts import MANIFEST_NAME, ORIGINS_SUFFIX
from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.fsutil import BAD_JSON, FOLDER_IN_THE_WAY, TEMP_GLOB, absent_why
from ffcv_dp4tl.locks import LockWait, directory_lock

#: the build's records: ``settings.json``, ``S-NNNNNN.json`` per finished shard, input stats
BUILD_DIR = ".build"
#: under ``.build/``: what a repair under way must restore (beton_builders.repair.start_repair)
REPAIR_NAME = "repair.json"
#: fcntl lock held by the build writing a folder (see ffcv_dp4tl.locks.directory_lock)
LOCK_NAME = ".build.lock"
#: what the user can do when ``--out`` holds something else (the pipeline passes its own words)
REMEDY = "pass --overwrite to replace it, or choose another --out"


def being_read(out_dir: Path, option: str = "--out") -> str:
    """The refusal of a build that would change the finished build in ``out_dir`` (``--overwrite``,
    a repair) while runs read it (:func:`reading`): a training that found its betons gone died
    hours in, and its checkpoint no longer matched the data (audit)."""
    return (f"{out_dir} is being read by another dp4tl run; wait for it to finish or build into "
            f"another {option}")


#: the build folders (real paths) whose exclusive lock this process holds (:func:`build_lock`):
#: a nested :func:`build_lock` of one of them is held already. A synth ``--overwrite`` holds
#: every part's for its whole run (:func:`overwriting_parts`) while :func:`~.writer.build_dataset`
#: takes each in turn; a second descriptor's flock would have refused the process itself
_HELD_BUILDS: set[str] = set()
os.register_at_fork(after_in_child=_HELD_BUILDS.clear)  # (a forked worker holds no lock)


@contextlib.contextmanager
def build_lock(out_dir: Path, *, option: str = "--out", wait: bool = False,
               on_wait: Callable[[str], None] | None = None) -> Iterator[LockWait]:
    """The exclusive lock of a build writing ``out_dir``: refused at once while runs read it
    (:func:`being_read`); with ``wait``, another build holding it is waited for (a pipeline
    whose data a standalone ``dp4tl build`` is building: it then reuses that build). The
    writer's :func:`~.writer.build_dataset` takes it too. Re-entrant within a process
    (:data:`_HELD_BUILDS`)."""
    key = os.path.realpath(out_dir)
    if key in _HELD_BUILDS:
        yield LockWait()
        return
    with directory_lock(Path(out_dir) / LOCK_NAME, f"dataset folder {out_dir}", wait=wait,
                        on_wait=on_wait, readers=being_read(Path(out_dir), option)) as waited:
        _HELD_BUILDS.add(key)
        try:
            yield waited
        finally:
            _HELD_BUILDS.discard(key)


def reading(data_dir: str | Path, *, wait: bool = False,
            on_wait: Callable[[str], None] | None = None):
    """Hold the shared lock of the built dataset ``data_dir`` (its :data:`LOCK_NAME`) for the
    block: every run reading a dataset holds it while it reads, so a build that would change
    the data (``--overwrite``, a repair) is refused instead (:func:`build_lock`). The places
    that hold it are those that cover every reader in the fewest places: a training and a
    finetuning run, for their whole run (``dp4tl train``/``finetune`` and the pipeline stages
    that run them), and a pipeline for its whole run, from its data resolved to its report
    (its scoring, pruning and report read the data between stages, whose keys hold the data's
    fingerprint), and ``dp4tl score`` for its scoring (:func:`reading_all`). A build under way
    (its exclusive lock) refuses a reader, or with ``wait`` is waited for (pipelines). A folder
    that holds neither a build (a manifest) nor a lock file is read unguarded: no lock file is
    made there."""
    data_dir = Path(data_dir)
    if not (data_dir / LOCK_NAME).exists() and not is_build(data_dir):
        return contextlib.nullcontext(LockWait())
    return directory_lock(data_dir / LOCK_NAME, f"the dataset {data_dir}", shared=True,
                          wait=wait, on_wait=on_wait, busy="wait for its build to finish, then rerun")


@contextlib.contextmanager
def reading_all(data_dirs: Iterable[str | Path]):
    """:func:`reading` of each of ``data_dirs`` (once each) for the block: a command reading a
    source and its targets (``dp4tl score``)."""
    with contextlib.ExitStack() as held:
        for d in dict.fromkeys(Path(d) for d in data_dirs):
            held.enter_context(reading(d))
        yield


def settings_file(out_dir: Path) -> Path:
    """``.build/settings.json``: the build's source and options, the first file a build writes."""
    return out_dir / BUILD_DIR / "settings.json"


def shard_meta(out_dir: Path, tar: Path) -> Path:
    """The metadata file of the shard ``tar``: ``.build/S-NNNNNN.json`` (written after the tar;
    a shard without it is not finished)."""
    return out_dir / BUILD_DIR / f"{tar.stem}.json"


def shard_files(out_dir: Path, split: str, shard_id: int) -> tuple[Path, Path]:
    """(tar, metadata) of one shard: ``wds/S-NNNNNN.tar`` and ``.build/S-NNNNNN.json``."""
    tar = out_dir / "wds" / f"{split}-{shard_id:06d}.tar"
    return tar, shard_meta(out_dir, tar)


def is_build(out_dir: Path) -> bool:
    """``out_dir`` holds a dp4tl build, finished (its manifest) or not (its settings, the first
    file a build writes)."""
    return (out_dir / MANIFEST_NAME).exists() or settings_file(out_dir).exists()


def is_fresh(out_dir: Path) -> bool:
    """Nothing in ``out_dir`` but a build's lock and a ``.build/`` holding at most temporary
    files (a build killed while writing its first file)."""
    if not out_dir.exists():
        return True
    for p in out_dir.iterdir():
        if p.name == LOCK_NAME or (p.name == BUILD_DIR and p.is_dir() and all(
                fnmatch.fnmatch(q.name, TEMP_GLOB) for q in p.iterdir())):
            continue
        return False
    return True


def check_ours(out_dir: Path, option: str = "--out") -> None:
    """Refuse a folder that holds anything but a dp4tl build (finished or not) or a fresh one,
    before a lock is taken or a temporary file removed there: it could be the user's. ``option``:
    the command-line option that chose the folder (named in "choose another ...")."""
    if out_dir.is_dir() and not is_build(out_dir) and not is_fresh(out_dir):
        if is_build(out_dir / "source"):
            raise DataError(f"{out_dir} holds a synth build (source/, targets/), which a build of "
                            f"one dataset does not replace: choose another {option}")
        raise DataError(f"{out_dir} is not empty and is not a dp4tl build: choose another {option} "
                        "(an empty or new folder; --overwrite replaces only a dp4tl build, never "
                        "other files)")


def check_parts_fit(out_dir: Path, parts: list[str], overwrite: bool = False) -> None:
    """A SOURCE of several datasets (synth: ``parts`` ``source``, ``targets/<name>``) is built
    into sub-folders: refused when ``out_dir`` itself holds a build of one dataset, before
    anything is written (the two would be mixed in one folder; ``--overwrite`` replaces a build
    of the same shape only). With ``overwrite``, the old build's parts the new SOURCE does not
    make (:func:`remove_stale_parts` deletes them after the build) must hold no folder where a
    build file belongs either (:func:`check_overwrite`): found after the build, such a part kept
    its folder and still read as a target (review)."""
    if parts and is_build(out_dir):
        raise DataError(f"{out_dir} holds a build of one dataset; a synth SOURCE builds source/ "
                        "and targets/ beside it, which --overwrite does not replace: choose "
                        "another --out")
    for d in stale_parts(out_dir, parts) if overwrite else ():
        check_overwrite(d)


@contextlib.contextmanager
def overwriting_parts(out_dir: Path, parts: list[str]) -> Iterator[None]:
    """Hold the build lock (:func:`build_lock`) of every existing part of a SOURCE of several
    datasets under ``out_dir`` (``parts``, and the old build's parts it no longer makes) for an
    ``--overwrite`` of them all: refused before any part is replaced while a run reads one
    (not a source new and a target old), and no run starts reading an old part while another
    one is replaced (audit: the parts were locked one at a time, as each was rebuilt)."""
    with contextlib.ExitStack() as held:
        for d in [out_dir / p for p in parts] + stale_parts(out_dir, parts):
            if is_build(d):
                held.enter_context(build_lock(d))
        yield


def stale_parts(out_dir: Path, parts: list[str]) -> list[Path]:
    """The dp4tl builds under ``out_dir/targets/`` that a SOURCE making ``parts`` does not make."""
    targets, keep = out_dir / "targets", {Path(p) for p in parts}
    return [d for d in (sorted(targets.iterdir()) if targets.is_dir() else [])
            if d.is_dir() and d.relative_to(out_dir) not in keep and is_build(d)]


def remove_build(out_dir: Path, splits: Iterable[str] = ()) -> None:
    """Delete the files a build writes in ``out_dir`` (``--overwrite``), nothing else: per
    split ``S`` the files named after it (``S.beton``, ``S.labels.npy``, ``S.files.txt``,
    ``wds/S.index.npy``, ``wds/S-NNNNNN.tar``), then its rejects, records and manifest, last,
    so a stop in between leaves a build the next ``--overwrite`` still takes for one.
    ``wds/`` and the top level used to be emptied by pattern, which deleted a user's own shards
    and betons kept there (audit); ``wds/`` goes only when that empties it. A folder at one of
    those paths is never deleted (:func:`check_overwrite` refuses it first). The splits are the
    manifest's, those the build's records name (one ``.build/S-NNNNNN.json`` per finished
    shard: a build killed before its manifest) and ``splits`` (the build about to be written,
    which replaces those names anyway)."""
    *files, manifest = _build_files(out_dir, splits)
    for p in files:
        _unlink_file(p)
    with contextlib.suppress(OSError):  # (not empty: the user's files stay, and the folder)
        (out_dir / "wds").rmdir()
    records = out_dir / BUILD_DIR
    shutil.rmtree(records) if records.is_dir() and not records.is_symlink() else _unlink_file(records)
    _unlink_file(manifest)  # (last: see above)


def _unlink_file(path: Path) -> None:
    """Delete ``path`` when it is a file or a link; a folder there is never the build's."""
    if path.is_file() or path.is_symlink():
        path.unlink()


def check_overwrite(out_dir: Path, splits: Iterable[str] = (),
                    rerun: str = "rerun the build with --overwrite") -> None:
    """Refuse ``--overwrite`` of the build in ``out_dir`` before anything is written or deleted
    when a folder sits where one of the build's files belongs (:func:`remove_build` would keep
    it, and the build then stopped while writing there, with the other files already gone);
    also an interrupted build's resume (``rerun``: what to do once it is moved), which stopped
    at that file with "a file is where a folder should be (or the reverse); choose another
    path". The rule is the readers' and the repair's (:func:`~ffcv_dp4tl.fsutil.absent_why`),
    so a link to a folder is refused too."""
    for p in _build_files(out_dir, splits):
        if absent_why(p) == FOLDER_IN_THE_WAY:
            raise DataError(f"{p} is {FOLDER_IN_THE_WAY}; then {rerun}")


def _build_files(out_dir: Path, splits: Iterable[str]) -> list[Path]:
    """The files of the build in ``out_dir`` that ``--overwrite`` replaces (:func:`remove_build`),
    its manifest last: those named after its splits (:func:`build_splits` and ``splits``), its
    rejects and its manifest. Its records (``.build/``) are a folder of its own."""
    wds = out_dir / "wds"
    out = []
    for s in sorted(build_splits(out_dir) | set(splits)):
        out += [out_dir / f"{s}.beton", out_dir / f"{s}.labels.npy",
                out_dir / f"{s}{ORIGINS_SUFFIX}", wds / f"{s}.index.npy",
                *(sorted(wds.glob(f"{glob.escape(s)}-{_SHARD_DIGITS}.tar")) if wds.is_dir() else ())]
    return [*out, out_dir / "rejects.txt", out_dir / MANIFEST_NAME]


#: the shard number in ``wds/S-NNNNNN.tar`` (:func:`shard_files`), as a glob
_SHARD_DIGITS = "[0-9]" * 6


def build_splits(out_dir: Path) -> set[str]:
    """The split names of the build in ``out_dir`` as far as its files tell, even when damaged
    (what ``--overwrite`` is for): the splits of the finished shards recorded in ``.build/``
    (``S-NNNNNN.json``, one per shard: every split a build wrote has one), those of a repair
    under way (``.build/repair.json``: it may have removed a shard's record), and the
    manifest's splits when it still reads as JSON. Where records exist, a manifest split they
    do not name is no split the build wrote: one added by hand and named after the user's own
    ``NAME.beton`` had that file deleted (audit). A build whose records are gone has only
    its manifest to tell."""
    recorded = {p.stem[:-7] for p in (out_dir / BUILD_DIR).glob(f"*-{_SHARD_DIGITS}.json")}
    repair = _json_keys(out_dir / BUILD_DIR / REPAIR_NAME, "splits")
    listed = _json_keys(out_dir / MANIFEST_NAME, "splits")
    names = recorded | repair | ((listed & (recorded | repair)) if recorded else listed)
    # (names a build can write: a hand-edited one with a NUL byte, a slash or 200+ characters
    # names no file of ours, and would only make the deletion fail)
    return {n for n in names if n and n not in (".", "..") and "/" not in n and "\0" not in n
            and len(n.encode("utf-8", "surrogateescape")) <= 200}


def _json_keys(path: Path, field: str) -> set[str]:
    """The string keys of the object ``field`` of the JSON file ``path``; none when the file is
    missing or damaged past reading (what ``--overwrite`` is for)."""
    try:
        obj = json.loads(path.read_bytes()).get(field)
    except (OSError, *BAD_JSON, AttributeError):
        return set()
    return {k for k in obj if isinstance(k, str)} if isinstance(obj, dict) else set()


def remove_stale_parts(out_dir: Path, parts: list[str]) -> list[Path]:
    """After ``--overwrite`` of a SOURCE made of several datasets (synth: ``source`` and
    ``targets/<name>``), delete the dp4tl builds under ``out_dir/targets/`` that the new SOURCE
    no longer makes: the pipeline pairs every ``targets/*`` with the source, so a target of the
    old build would be taken as one of the new. Only the files a build writes are deleted (a
    folder left with other files stays, without a manifest). Returns what went."""
    gone = []
    for d in stale_parts(out_dir, parts):  # (checked for folders in the way: check_parts_fit)
        with build_lock(d):  # (a build writing it, a run reading it: refused)
            remove_build(d)  # the build's own files only; the folder too when that empties it
        (d / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            d.rmdir()
        gone.append(d)
    return gone
