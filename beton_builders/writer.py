"""Build a dataset directory from a :class:`DatasetSpec`: shards, beton, labels, manifest.

Layout of ``out_dir`` (per split ``S``)::

    S.beton               FFCV file (RGB image field in JPEG/proportion mode, int label)
    S.labels.npy          int64 label of every sample, in file order
    S.files.txt           where each sample came from (its input file), one line per sample
    wds/S-000000.tar ...  WebDataset shards (KEY.jpg, KEY.cls)
    wds/S.index.npy       random-access index (shard, byte offset, size, label, key)
    rejects.txt           inputs that were skipped, with the reason
    manifest.json         written last: classes, counts, settings, content fingerprints

Resumability: shards are encoded in parallel, one task per shard, and each shard becomes
visible only by an atomic rename followed by its metadata file in ``.build/``. A rerun of the
same command skips finished shards; the beton, labels and manifest are produced from the
finished shards, each atomically. A directory without ``manifest.json`` is never complete.
What may be written or removed in ``out_dir`` is decided in :mod:`.out_dir`; a rerun on a finished
build whose files were damaged since repairs it (:mod:`.repair`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ffcv_dp4tl import stopping
from ffcv_dp4tl.contracts import (FORMAT, BetonMode, INDEX_DTYPE, MANIFEST_NAME, MAX_SIDE_RANGE,
                                  ORIGINS_SUFFIX,
                                  DatasetManifest, ImageSettings, SplitEntry, dataset_fingerprint,
                                  split_fingerprint)
from ffcv_dp4tl.cpus import available_cores
from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.fsutil import (BAD_JSON, atomic_path, atomic_save_npy, atomic_write_json,
                               atomic_write_text, check_free_space, check_out_dir, free_bytes,
                               fsync_path, is_disk_full, is_unwritable, load_npy, read_json,
                               remove_orphan_temps, shm_full_line, shm_nearly_full)
from ffcv_dp4tl.progress import bar as progress_bar

from .beton import (ShardBytesDataset, beton_images, beton_workers, check_beton, keep_as_jpeg,
                    write_beton, writer_error)
from .out_dir import (BUILD_DIR, REMEDY, build_lock, check_ours, check_overwrite, is_build,
                      reading, remove_build, settings_file, shard_files)
from .input_stats import sample_stats, save_input_stats, stale_inputs
from .integrity import REMAKE_HINT, beton_fingerprint, split_checksums, stored_digests
from .repair import damaged_files, end_repair, read_repair, start_repair, undo_repair
from .shards import write_shard
from .spec import DatasetSpec, one_line, split_name_problem

#: ffcv DatasetWriter's default page size (4 * MIN_PAGE_SIZE = 8 MiB in ffcv 1.0.2)
BETON_PAGE_SIZE = 8 * 2**20
#: a folder with less free than two of ffcv's pages is full (to a writer's failure, an ENOSPC)
FULL_BELOW = 2 * BETON_PAGE_SIZE


@dataclass(frozen=True)
class BuildOptions:
    """Image and file settings; all but ``workers`` and ``progress`` are part of the content."""

    max_side: int = 256
    quality: int = 90
    shard_size: int = 1000
    #: "jpg": every image stored as JPEG; "proportion": ``raw_fraction`` stored as raw pixels.
    beton_mode: str = "jpg"
    raw_fraction: float = 0.0
    #: Encoder processes; default every core this process may run on: its affinity mask (a Slurm
    #: or ``--cpuset-cpus`` set) within its cgroup CPU quota (``ffcv_dp4tl.cpus``, the loaders' rule).
    workers: int = field(default_factory=available_cores)
    progress: bool = True

    def validate(self) -> None:
        low, high = MAX_SIDE_RANGE
        if not low <= self.max_side <= high:
            raise DataError(f"--max-side must be in [{low}, {high}], got {self.max_side}")
        if not 1 <= self.quality <= 100:
            raise DataError(f"--quality must be in [1, 100], got {self.quality}")
        if self.shard_size < 1:
            raise DataError(f"--shard-size must be >= 1, got {self.shard_size}")
        BetonMode.check(self.beton_mode, "--beton-mode", DataError)
        if self.beton_mode == "jpg" and self.raw_fraction:
            raise DataError("--raw-fraction needs --beton-mode proportion")
        if not 0.0 <= self.raw_fraction < 1.0:
            raise DataError(f"--raw-fraction must be in [0, 1), got {self.raw_fraction}")

    def content_settings(self) -> dict:
        d = asdict(self)
        d.pop("workers"), d.pop("progress")
        return d


@dataclass
class SplitSummary:
    name: str
    num_samples: int
    num_rejected: int
    seconds: float


@dataclass
class BuildSummary:
    out_dir: Path
    splits: list[SplitSummary]
    skipped: bool = False  # everything was already built
    #: one line per thing the user should know (e.g. inputs changed since the build)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for s in self.splits:
            rate = s.num_samples / s.seconds if s.seconds > 0 else float("nan")
            out.append(f"{s.name}: {s.num_samples} samples, {s.num_rejected} rejected"
                       + ("" if self.skipped else f", {s.seconds:.1f}s ({rate:.0f} img/s)"))
        return out


def _listing_digest(spec: DatasetSpec) -> str:
    """Identify the *input* listing, so a resumed build cannot mix two different sources."""
    h = hashlib.sha256()
    h.update(json.dumps(spec.classes).encode())
    for split, samples in spec.splits.items():
        h.update(f"\x00{split}:{len(samples)}".encode())
        for s in samples:
            # exact name bytes (== the old str.encode() for UTF-8 names, so digests of earlier
            # builds are unchanged; a non-UTF-8 file name no longer raises)
            h.update(s.name_bytes() + f"\x01{s.label}\x02".encode())
    return h.hexdigest()


def _ignore_ctrl_c() -> None:
    """Shard pool workers ignore Ctrl-C, which reaches the whole process group: the build's
    own handler, which they inherited, ended an idle worker while it held the pool's task-queue
    lock, and ``Pool.terminate()`` then waited for that lock forever (review). The parent
    reports the stop and ``terminate()`` ends them (SIGTERM)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _shard_task(args: tuple) -> tuple[str, int, int, int]:
    """Worker: encode one shard, write tar then metadata, both atomically."""
    out_dir, split, shard_id, samples, first, max_side, quality = args
    tar_path, meta_path = shard_files(out_dir, split, shard_id)
    meta_path.unlink(missing_ok=True)  # (a shard encoded again: its old metadata goes first)
    stats = sample_stats(samples)  # before reading them: an edit during encoding is seen later
    with atomic_path(tar_path, suffix=".tar") as tmp:
        meta = write_shard(tmp, samples, first, max_side, quality)
        fsync_path(tmp)
    meta["tar_size"] = tar_path.stat().st_size
    if stats is not None:
        meta["inputs"] = stats
    atomic_write_json(meta_path, meta)
    return split, shard_id, len(meta["samples"]), len(meta["rejects"])


def _shard_done(out_dir: Path, split: str, shard_id: int, samples: list) -> bool:
    """A shard a killed build finished, intact, from inputs that have not changed since: its
    metadata exists, its tar exists with the size recorded, and its inputs have the size and
    modification time they had when it was encoded. Otherwise it is encoded again (a resumed
    build mixed old pixels of edited inputs with new ones, and a truncated or deleted tar was
    checksummed as it was, or hung ffcv's beton writer). Metadata from before these fields were
    recorded is trusted on the tar's presence alone."""
    tar_path, meta_path = shard_files(out_dir, split, shard_id)
    if not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
        size = tar_path.stat().st_size
    except (OSError, *BAD_JSON):
        return False
    if not isinstance(meta, dict) or ("tar_size" in meta and meta["tar_size"] != size):
        return False
    if "tar_size" not in meta:  # (older metadata: the samples must at least lie inside the tar)
        ends = [r.get("offset", 0) + r.get("size", 0) for r in meta.get("samples", [])]
        if ends and max(ends) > size:
            return False
    return "inputs" not in meta or meta["inputs"] == sample_stats(samples)


def _check_spec(spec: DatasetSpec) -> None:
    if not spec.classes:
        raise DataError(f"dataset {spec.name!r} has no classes")
    if not spec.splits:
        raise DataError(f"dataset {spec.name!r} has no splits")
    n = len(spec.classes)
    for split, samples in spec.splits.items():
        problem = split_name_problem(split)
        if problem is not None:
            raise DataError(f"dataset {spec.name!r}: {problem}; rename the split")
        if not samples:
            raise DataError(f"split {split!r} of dataset {spec.name!r} is empty; check the input "
                            "layout (wrong folder or split file?)")
        bad = next((s for s in samples if not 0 <= int(s.label) < n), None)
        if bad is not None:
            raise DataError(f"{bad.display_name()}: label {bad.label} outside [0, {n}) for "
                            f"split {split!r}")


def build_settings(spec: DatasetSpec, opts: BuildOptions, source: str) -> dict:
    """What a build of ``spec`` with ``opts`` records first (``.build/settings.json``) and its
    manifest keeps: two builds with equal settings are the same build. ``source`` is the spec
    as written."""
    settings = {"format": FORMAT, "source": source, "options": opts.content_settings(),
                "listing": _listing_digest(spec)}
    if spec.content:
        settings["content"] = spec.content
    return settings


def _differing(old: dict, new: dict) -> str:
    """What differs between two builds' settings, for the refusal: the source (as written),
    the option names (``quality 90 -> 80``), the input listing or the generated content."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = (old or {}).get(key), new.get(key)
        if a == b:
            continue
        if key == "options" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
        elif key == "source":
            out.append(f"source {a!r} -> {b!r}")
        else:
            out.append({"listing": "input listing (file names or labels)"}.get(key, key))
    return ", ".join(out) or "settings"


def _prepare_dir(spec: DatasetSpec, out_dir: Path, opts: BuildOptions, source: str,
                 overwrite: bool, remedy: str = REMEDY, option: str = "--out") -> tuple[dict, bool]:
    """Check/record build settings. Returns (settings, already_complete). ``overwrite``
    replaces a dp4tl build only: a folder holding anything else is refused before a file is
    touched (its files could be the user's own betons, shards or notes)."""
    settings = build_settings(spec, opts, source)
    manifest_path = out_dir / MANIFEST_NAME
    settings_path = settings_file(out_dir)
    check_ours(out_dir, option)  # (again under the lock)
    if overwrite and is_build(out_dir):
        check_overwrite(out_dir, spec.splits)  # (again under the lock)
        remove_build(out_dir, spec.splits)
    if manifest_path.exists():
        _check_finished(spec, out_dir, settings, remedy)
        return settings, True
    if settings_path.exists():
        old = read_json(settings_path, "build settings")
        if old != settings:
            raise DataError(f"{out_dir} holds an interrupted build with different "
                            f"{_differing(old, settings)}; rerun with the same source and options "
                            f"to resume, or {remedy}")
        check_overwrite(out_dir, spec.splits, "rerun the build to resume it")
    atomic_write_json(settings_path, settings)
    return settings, False


def _check_finished(spec: DatasetSpec, out_dir: Path, settings: dict, remedy: str) -> None:
    """Refuse the finished build in ``out_dir`` unless it is this build (``settings``) with its
    manifest as the build wrote it. Reads only: a build that finds its data built checks it
    under the readers' shared lock (:func:`_reused`)."""
    manifest_path = out_dir / MANIFEST_NAME
    # (a damaged manifest: this build command is how the user rebuilds, so its fix is ours)
    manifest = DatasetManifest.from_json(read_json(manifest_path, "manifest", fix=remedy),
                                         manifest_path)
    old = manifest.build
    if old != settings:
        raise DataError(f"{out_dir} already holds a different build (other "
                        f"{_differing(old, settings)}); {remedy}")
    # the same build, but its manifest edited by hand (a split added or deleted, the
    # fingerprint pasted): "already built" would keep it, and a split this build does
    # not make had no listing to write its files.txt from (KeyError, audit)
    problem = manifest.fingerprint_problem(manifest_path, remedy)
    if problem is None and set(manifest.splits) != set(spec.splits):
        problem = (f"{manifest_path} lists splits {', '.join(sorted(manifest.splits))} but "
                   f"this build makes {', '.join(sorted(spec.splits))} (edited by hand?); "
                   f"restore manifest.json, or {remedy}")
    if problem is not None:
        raise DataError(problem)


def _reused(spec: DatasetSpec, out_dir: Path, opts: BuildOptions, source: str, remedy: str,
            wait: bool, on_wait: Callable[[str], None] | None,
            settings: dict | None = None) -> BuildSummary | None:
    """The summary of the finished, intact build of exactly this input in ``out_dir``, checked
    under the readers' shared lock (:func:`~.out_dir.reading`), else None (the build has work
    to do, under its exclusive lock). A build that finds its data built changes nothing, so it
    must not need the exclusive lock: a second pipeline's build step was refused while the
    first one trained on the data. With ``wait``, a build under way is waited for first."""
    if not (out_dir / MANIFEST_NAME).is_file():
        return None
    if settings is None:
        settings = build_settings(spec, opts, source)
    with reading(out_dir, wait=wait, on_wait=on_wait):
        _check_finished(spec, out_dir, settings, remedy)
        if damaged_files(out_dir, remedy):
            return None  # (a repair: work for the exclusive lock)
        try:  # a build made before files.txt gets it here: written atomically, the same bytes
            _add_missing_origins(spec, out_dir)  # whoever writes them (review: refused while
        except OSError as e:                     # read, as needing the exclusive lock)
            if not is_unwritable(e):
                raise
        return _complete_build(spec, out_dir, opts, source, remedy, settings)


def build_dataset(spec: DatasetSpec, out_dir: str | Path, opts: BuildOptions | None = None,
                  *, source: str = "", overwrite: bool = False,
                  remedy: str = REMEDY, option: str = "--out", wait: bool = False,
                  on_wait: Callable[[str], None] | None = None,
                  hold: contextlib.ExitStack | None = None) -> BuildSummary:
    """Convert ``spec`` into ``out_dir``; resume if a previous run was interrupted.

    One build per folder at a time (a second is refused: :func:`~.out_dir.build_lock`; with
    ``wait`` it waits, ``on_wait`` saying so, then reuses the first one's build: a pipeline
    behind a standalone build). A finished build is reused under the readers' shared lock;
    ``--overwrite`` and a repair are refused at once while another run reads the folder
    (:func:`~.out_dir.reading`). Temporary files a killed build left behind are removed
    first; a full disk is a one-line error naming the
    folder (the beton's size is checked before it is written), and rerunning resumes. A
    complete build in a folder that cannot be written (read-only mount) is simply reused.
    Ctrl-C and SIGTERM always end the build with ``KeyboardInterrupt`` (see :func:`_stop_guard`;
    a Ctrl-C the process inherited as ignored stays ignored). ``remedy`` ends the messages about
    a folder holding something else; ``option`` is the command-line option the user chose the
    folder with (the pipeline's ``--data-root``), named where a message says to choose another.

    ``hold``: where the readers' shared lock of the finished build is kept for the caller (a
    pipeline reading it), taken once the build's own lock is let go; the build is then checked
    again under it, so a ``--overwrite`` with other settings that ran in between is refused, not
    read as the build this call checked (review).
    """
    opts = opts or BuildOptions()
    # (the input listing's digest, ~1 s for ImageNet's 1.28M names: computed once for the
    # reuse check and the check again under ``hold``)
    settings = build_settings(spec, opts, source) if hold is not None else None
    summary = _build_dataset(spec, out_dir, opts, source=source, overwrite=overwrite,
                             remedy=remedy, option=option, wait=wait, on_wait=on_wait,
                             settings=settings)
    if hold is not None:
        out_dir = Path(out_dir)
        hold.enter_context(reading(out_dir, wait=wait, on_wait=on_wait))
        if _built_with(out_dir, settings) is None:
            raise DataError(f"{out_dir} was built again by another run, with other settings, "
                            "while this one started; rerun to build or reuse it as this run "
                            f"needs, or choose another {option}")
    return summary


def _build_dataset(spec: DatasetSpec, out_dir: str | Path, opts: BuildOptions, *, source: str,
                   overwrite: bool, remedy: str, option: str, wait: bool,
                   on_wait: Callable[[str], None] | None, settings: dict | None) -> BuildSummary:
    """:func:`build_dataset` but for ``hold`` (``settings``: the build's, when computed)."""
    opts.validate()
    _check_spec(spec)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, option, must_write=False)
    _check_out_outside_input(source, out_dir, option)
    check_ours(out_dir, option)
    if overwrite and is_build(out_dir):
        check_overwrite(out_dir, spec.splits)
    if not overwrite:
        done = _reused(spec, out_dir, opts, source, remedy, wait, on_wait, settings)
        if done is not None:
            return done
    with contextlib.ExitStack() as stack:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(build_lock(out_dir, option=option, wait=wait, on_wait=on_wait))
        except OSError as e:
            if not is_unwritable(e):
                raise
            # nobody can write a read-only folder, so a finished build there is safe to use
            done = _complete_build(spec, out_dir, opts, source, remedy)
            if done is not None:
                damaged = damaged_files(out_dir, remedy)
                if damaged:
                    raise DataError(f"{damaged[0][1].split('; ')[0]}: {out_dir} is damaged and "
                                    "read-only, so the build cannot repair it; rerun it where the "
                                    "folder is writable, or restore the files") from None
                return done
            raise DataError(f"cannot write to {out_dir} ({e.strerror}) and it holds no finished "
                            f"build of this source; choose a writable {option}") from None
        remove_orphan_temps(out_dir)
        stack.enter_context(_stop_guard())
        try:
            return _build_locked(spec, out_dir, opts, source, overwrite, remedy, option)
        except OSError as e:
            if is_disk_full(e) and _fills_out_dir(e, out_dir):
                raise DataError(f"disk full while writing {out_dir} ({e.strerror}); free some space or "
                                f"choose another {option}, then rerun: the build resumes") from None
            if is_unwritable(e):
                raise DataError(f"cannot write {e.filename or out_dir} ({e.strerror}); choose a "
                                f"writable {option}") from None
            raise


def _fills_out_dir(e: OSError, out_dir: Path) -> bool:
    """Whether the disk-full error ``e`` is the build folder's: its file lies in ``out_dir``; or
    it names no file (a write's error names none) and is not the other place a build fills, a
    nearly full /dev/shm (the worker pool's semaphores raise ENOSPC there) beside a folder with
    room. Otherwise the error is left to the CLI's line, which names what filled: "choose
    another --out" sent users to free the wrong disk (audit)."""
    if e.filename:
        try:
            return Path(os.path.realpath(e.filename)).is_relative_to(os.path.realpath(out_dir))
        except (OSError, ValueError, TypeError):
            return True
    free = free_bytes(out_dir)
    if free is None:
        return True
    return not (free >= FULL_BELOW and shm_nearly_full() is not None)


def _check_out_outside_input(source: str, out_dir: Path, option: str = "--out") -> None:
    """Refuse an ``--out`` inside the input folder of a ``LAYOUT:PATH`` source: the layout would
    list the build's own files as a class on every later run."""
    name, sep, path = source.partition(":")
    if not sep or not path or name == "synth":
        return
    root = Path(path).expanduser()
    try:
        inside = Path(os.path.realpath(out_dir)).is_relative_to(os.path.realpath(root))
    except OSError:
        return
    if inside and root.is_dir():
        raise DataError(f"{option} {out_dir} lies inside the input folder {root}: the next build "
                        f"would read its own output as images; choose another {option}, outside it")


def _built_with(out_dir: Path, settings: dict) -> DatasetManifest | None:
    """The manifest of ``out_dir`` when it records a finished build with ``settings``, else
    None."""
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    manifest = DatasetManifest.from_json(read_json(manifest_path, "manifest"), manifest_path)
    return manifest if manifest.build == settings else None


def _complete_build(spec: DatasetSpec, out_dir: Path, opts: BuildOptions,
                    source: str, remedy: str = REMEDY,
                    settings: dict | None = None) -> BuildSummary | None:
    """The summary of the finished build of exactly this input in ``out_dir``, else None.
    ``remedy``: the caller's way to rebuild, which a warning about stale inputs names;
    ``settings``: the build's, when the caller computed them."""
    manifest = _built_with(out_dir, build_settings(spec, opts, source) if settings is None
                           else settings)
    if manifest is None:
        return None
    return BuildSummary(out_dir, [SplitSummary(n, s.num_samples, s.num_rejected, 0.0)
                                  for n, s in manifest.splits.items()], skipped=True,
                        warnings=stale_inputs(spec, out_dir / BUILD_DIR, remedy))


class _Interrupted:
    flag = False
    #: the signal :func:`_interrupt_watchdog` re-sends: SIGINT, or SIGTERM where Ctrl-C is ignored
    resend = signal.SIGINT
    #: a beton writer process that failed, ``(pid, "exit status 1")``, seen by the watchdog,
    #: which then sends ``resend`` to make the main thread raise :class:`WriterFailed`
    writer_failed: tuple[int, str] | None = None
    #: the watchdog's wake-ups sent and not yet handled (at most one at a time): a signal that
    #: finds none pending is a stop from outside
    wakeups = 0


class WriterFailed(RuntimeError):
    """One of ffcv's beton writer processes ended in failure (a full disk or an exceeded
    quota while it flushed a page: ffcv's main loop then waits forever for its samples).
    ``args``: the process id and how it ended."""


def _in_ffcv_write(frame) -> bool:
    """Whether ``frame`` runs inside ffcv's ``DatasetWriter.from_indexed_dataset`` (its wait
    for the writers): where :class:`WriterFailed` ends the wait. Not in the cleanup after it,
    which a raise there would cut short."""
    while frame is not None:
        if (frame.f_code.co_name == "from_indexed_dataset"
                and frame.f_globals.get("__name__") == "ffcv.writer"):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _stop_guard() -> Iterator[None]:
    """Make Ctrl-C and SIGTERM (a scheduler's time limit, ``kill``) always end the build: the
    signal sets a flag *and* raises KeyboardInterrupt (:class:`~ffcv_dp4tl.stopping.Terminated`
    for SIGTERM) as usual. Native code (numba/llvmlite compiling ffcv's writer) can swallow the
    exception; the flag is checked between shards and before the beton and the manifest are
    written (:func:`_check_interrupt`), so a stopped build never runs on to a manifest.

    A Ctrl-C the process inherited as ignored (SIG_IGN: bash starts a script's background jobs
    so) stays ignored, as :mod:`ffcv_dp4tl.stopping` leaves it for every other command (its
    Ctrl-C handler replaces only Python's own): a ``kill -INT`` to ``dp4tl build &`` in a script
    stopped it with status 130, while ``dp4tl pipeline`` ran on.
    SIGTERM still ends it; the watchdog then re-sends SIGTERM, not the ignored SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    parent = os.getpid()

    def handler(signum, frame):
        if os.getpid() != parent:
            # A forked worker (ffcv's beton writer, the shard pool) inherits this handler for
            # Ctrl-C, which reaches the whole process group, and the parent reports the stop
            # once. A worker raising here would print its own traceback (one per worker). (A
            # worker starts with SIGTERM's default: stopping.sigterm_handler.)
            os._exit(128 + signum)
        if _Interrupted.wakeups > 0 and not _Interrupted.flag:
            # the watchdog's wake-up after a writer process failed, not a stop from outside:
            # raised inside ffcv's wait (one swallowed there, by an at-fork hook, is sent again),
            # dropped in the cleanup after it
            _Interrupted.wakeups -= 1
            if _Interrupted.writer_failed is not None and _in_ffcv_write(frame):
                raise WriterFailed(*_Interrupted.writer_failed)
            return
        _Interrupted.flag = True
        stopping.record(signum)
        # (the first signal names the stop: the watchdog's re-sent SIGINT is not a Ctrl-C)
        raise stopping.interrupt_for(stopping.received() or signum)

    previous_hook = sys.unraisablehook

    def unraisable(info):
        # The KeyboardInterrupt raised where Python cannot propagate it (logging's at-fork
        # hook while ffcv forks its writers) printed "Exception ignored in ..." and a
        # traceback; the flag set with it stops the build at the next check, with one line.
        if not ((_Interrupted.flag and isinstance(info.exc_value, KeyboardInterrupt))
                or isinstance(info.exc_value, WriterFailed)):  # (raised again by the watchdog)
            previous_hook(info)

    _Interrupted.flag = False
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    previous = None if ignored else signal.signal(signal.SIGINT, handler)
    _Interrupted.resend = stopping.resend_signal()
    sys.unraisablehook = unraisable
    try:
        with stopping.sigterm_handler(handler):
            yield
    finally:
        if not ignored:
            signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        _Interrupted.flag = False
        _Interrupted.resend = signal.SIGINT


@contextlib.contextmanager
def _interrupt_watchdog(every: float = 1.0, tick: float = 0.25) -> Iterator[None]:
    """Watch ffcv's beton writer for the two ways its main loop waits forever for samples.

    * Ctrl-C that lands in an at-fork hook while ffcv forks its writers cannot be raised there
      (Python ignores it); the same Ctrl-C ends the writers already forked. Once the interrupt
      flag is set, a thread re-sends SIGINT to the main thread every ``every`` seconds, so the
      interrupt is raised where it can be (in ffcv's wait loop) and the build stops (SIGTERM
      where Ctrl-C is ignored, :func:`_stop_guard`: an ignored SIGINT raises nothing).
    * A writer process that fails (the disk filled, or the quota ran out, while it flushed a
      page: ffcv's check of the free space is made once, before, and sees no quota) left the
      build hanging after its traceback (audit: a Slurm job burns its allocation). Every
      ``tick`` seconds the thread looks for a child started in the block that ended in failure
      (:func:`ffcv_dp4tl.stopping.failed_children`) and then makes the main thread raise
      :class:`WriterFailed` by the same signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    done = threading.Event()
    main_id = threading.main_thread().ident
    before = stopping.child_pids()
    per = max(1, round(every / tick))
    _Interrupted.writer_failed, _Interrupted.wakeups = None, 0

    def watch() -> None:
        ticks = 0
        while not done.wait(tick):
            ticks += 1
            if _Interrupted.writer_failed is None and not _Interrupted.flag:
                failed = stopping.failed_children(before)
                if failed:
                    _Interrupted.writer_failed = failed[0]
                    ticks = 0  # (signalled at once, then every `every` seconds)
            if ticks % per or done.is_set():
                continue
            if _Interrupted.flag:
                signal.pthread_kill(main_id, _Interrupted.resend)
            elif _Interrupted.writer_failed is not None and _Interrupted.wakeups == 0:
                _Interrupted.wakeups += 1  # (before the signal: its handler may run at once)
                signal.pthread_kill(main_id, _Interrupted.resend)

    thread = threading.Thread(target=watch, name="dp4tl-interrupt-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        _Interrupted.writer_failed, _Interrupted.wakeups = None, 0


def writer_failed_line(beton_path: Path, pid: int, how: str, option: str = "--out",
                       error: tuple[str, Path] | None = None) -> str:
    """The one line for a beton writer process that failed (:class:`WriterFailed`), by its
    likeliest cause: SIGKILL, the out-of-memory killer; SIGBUS with a nearly full /dev/shm
    (ffcv's metadata lives there); less than two of ffcv's pages free, a full disk; else a quota
    (which the free space does not show) or what its error says. ``error``: the writer's own
    error and the log holding its traceback (:func:`~.beton.writer_error`; None: it printed
    it above, or left none)."""
    writer = f"ffcv's beton writer (process {pid}, {how})"
    its = (f"its error: {error[0]}; traceback in {error[1]}" if error is not None else
           "its error above")
    if how == "killed by SIGKILL":
        return (f"{writer} was killed while writing {beton_path}: usually the out-of-memory "
                "killer (`dmesg` says); give the build more memory or fewer --workers, then "
                "rerun: the build resumes")
    shm = shm_full_line(f"{writer} while writing {beton_path}") if how == "killed by SIGBUS" else None
    if shm is not None:  # (ffcv's metadata lives in /dev/shm)
        return shm
    free = free_bytes(beton_path.parent)
    if free is not None and free < FULL_BELOW:
        return (f"disk full while writing {beton_path} ({writer}, {its}; "
                f"{free / 2**20:,.1f} MiB free); free some space or choose another {option}, "
                "then rerun: the build resumes")
    cause = ("" if error is not None else  # (its own error says the cause)
             ": an exceeded disk quota is a usual cause, which the free space does not show")
    return (f"{writer} failed while writing {beton_path} ({its}{cause}); fix it and rerun: "
            "the build resumes")


def _check_interrupt() -> None:
    """Raise the stop native code swallowed: the exception of the first signal received,
    made as the handler makes it (the CLI reads the last one made, :func:`stopping.last_interrupt`)."""
    if _Interrupted.flag:
        raise stopping.interrupt_for(stopping.received() or signal.SIGINT)


def _build_locked(spec: DatasetSpec, out_dir: Path, opts: BuildOptions, source: str,
                  overwrite: bool, remedy: str = REMEDY, option: str = "--out") -> BuildSummary:
    settings, done = _prepare_dir(spec, out_dir, opts, source, overwrite, remedy, option)
    if done:
        damaged = damaged_files(out_dir, remedy)
        if not damaged:
            summary = _complete_build(spec, out_dir, opts, source, remedy)
            _add_missing_origins(spec, out_dir)
            return summary
        start_repair(out_dir, damaged, remedy)
    # a repair (begun now or by an earlier run that stopped): what it must restore
    repair = read_repair(out_dir, remedy)

    # 1. Shards (parallel, resumable; a repair encodes only the shards it marked as damaged,
    # by removing their metadata: an intact shard whose inputs were merely touched stays)
    tasks = []
    for split, samples in spec.splits.items():
        for shard_id, first in enumerate(range(0, len(samples), opts.shard_size)):
            chunk = samples[first:first + opts.shard_size]
            if repair:
                tar, meta = shard_files(out_dir, split, shard_id)
                finished = meta.exists() and tar.is_file()
            else:
                finished = _shard_done(out_dir, split, shard_id, chunk)
            if not finished:
                tasks.append((out_dir, split, shard_id, chunk, first, opts.max_side, opts.quality))
    # splits whose shards this run writes: their beton is written again, except in a repair,
    # where the split's fingerprint (checked below, before the beton) proves the shards
    # encoded again hold the bytes they held
    encoded = set() if repair else {t[1] for t in tasks}
    todo = sum(len(t[3]) for t in tasks)
    start = time.perf_counter()
    if tasks:
        bar = progress_bar(total=todo, unit="img", desc=f"encode {spec.name}", leave=True,
                           show=opts.progress)
        workers = max(1, min(opts.workers, len(tasks)))
        if workers == 1:
            results = map(_shard_task, tasks)
            pool = None
        else:
            pool = mp.get_context("fork").Pool(workers, initializer=_ignore_ctrl_c)
            results = pool.imap_unordered(_shard_task, tasks)
        finished = False
        try:
            for _, _, n_ok, n_bad in results:
                _check_interrupt()
                bar.update(n_ok + n_bad)
            finished = True
        finally:
            if pool is not None:
                pool.terminate()
                if not finished:
                    # workers killed inside their atomic writes leave temporary shards (half
                    # of a full disk in an audit, while the message said "free some space"):
                    # removed once they are gone, under the build's lock
                    pool.join()
                    remove_orphan_temps(out_dir)
            bar.close()
    encode_seconds = time.perf_counter() - start
    _check_interrupt()

    # 2. Per split: gather shard metadata -> index, labels, fingerprint, beton
    split_entries, summaries, all_rejects, warnings = {}, [], [], []
    for split, samples in spec.splits.items():
        t0 = time.perf_counter()
        n_shards = (len(samples) + opts.shard_size - 1) // opts.shard_size
        records, digests = [], []
        for shard_id in range(n_shards):
            meta = read_json(shard_files(out_dir, split, shard_id)[1], "shard metadata")
            for rec in meta["samples"]:
                records.append((shard_id, rec["offset"], rec["size"], rec["label"], rec["key"],
                                rec["height"], rec["width"]))
                digests.append(bytes.fromhex(rec["sha1"]))
            all_rejects.extend((split, name, reason) for name, reason in meta["rejects"])
        if not records:
            raise DataError(f"split {split!r} of {spec.name!r}: every input was rejected; see the "
                            f"reasons in {out_dir / BUILD_DIR}/{split}-*.json")
        arr = np.array(records, dtype=np.int64)
        index = np.zeros(len(records), dtype=INDEX_DTYPE)
        for j, name in enumerate(("shard", "offset", "size", "label", "key")):
            index[name] = arr[:, j]
        labels = index["label"].astype(np.int64)
        fingerprint = split_fingerprint(b"".join(digests), labels, spec.classes)
        if repair and repair["splits"].get(split) not in (None, fingerprint):
            undo_repair(out_dir, repair)
            raise DataError(f"repairing {out_dir} would give other data than it was built with "
                            f"(split {split!r}: inputs changed or missing since); its manifest and "
                            "intact files are back as they were and the damaged files stay "
                            f"damaged: restore the inputs and rerun, or {remedy}")
        shard_names = [shard_files(out_dir, split, i)[0].relative_to(out_dir).as_posix()
                       for i in range(n_shards)]
        beton_path = out_dir / f"{split}.beton"
        if beton_path.exists() and (split in encoded or check_beton(beton_path, len(records))[1]):
            # damaged (e.g. truncated after the manifest was lost), or made from shards this
            # run encoded again (their inputs changed, or they were damaged): rewrite it
            beton_path.unlink()
        if not beton_path.exists():
            needed = int(index["size"].sum())
            if opts.raw_fraction > 0:  # raw samples take height x width x 3 bytes instead
                raw = np.array([not keep_as_jpeg(i, opts.raw_fraction) for i in range(len(index))])
                needed += int((arr[raw, 5] * arr[raw, 6] * 3).sum())
            # ffcv's writer fills fixed-size pages, one open page per worker (+ the header's)
            pages = beton_workers(opts.workers, len(index)) + 1
            check_free_space(out_dir, int(needed * 1.02) + pages * BETON_PAGE_SIZE, f"{split}.beton",
                             option=option)
            dataset = ShardBytesDataset(index, [out_dir / s for s in shard_names], arr[:, 5],
                                        arr[:, 6], opts.raw_fraction)
            with atomic_path(beton_path, suffix=".beton") as tmp:
                try:
                    with _interrupt_watchdog():
                        write_beton(tmp, dataset, opts.quality, opts.max_side, opts.workers,
                                    opts.progress, desc=f"beton {spec.name}:{split}",
                                    log_dir=out_dir / BUILD_DIR)
                except WriterFailed as e:
                    pid, how = e.args
                    raise DataError(writer_failed_line(
                        beton_path, pid, how, option,
                        writer_error(out_dir / BUILD_DIR, pid))) from None
                _check_interrupt()  # (a Ctrl-C swallowed inside ffcv's writer: no beton)
                fsync_path(tmp)
        # what the beton stores, per sample (JPEG samples: the shards' bytes, digests known)
        sha1 = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 20)
        images = beton_images(beton_path)
        beton_fp = beton_fingerprint(images.mode, images.hw, stored_digests(beton_path, images, sha1).tobytes())
        checksums = split_checksums(beton_path, [out_dir / s for s in shard_names], labels, index)
        atomic_save_npy(out_dir / "wds" / f"{split}.index.npy", index)
        atomic_save_npy(out_dir / f"{split}.labels.npy", labels)
        write_origins(out_dir, split, samples, index["key"])
        n_rej = sum(1 for r in all_rejects if r[0] == split)
        listed = np.bincount([int(x.label) for x in samples], minlength=len(spec.classes))
        kept = np.bincount(labels, minlength=len(spec.classes))
        warnings += [f"split {split!r}: class {spec.classes[c]!r} has no image left (its {listed[c]} "
                    f"input(s) were all rejected; reasons in {out_dir / 'rejects.txt'})"
                    for c in np.flatnonzero((listed > 0) & (kept == 0))]
        if split == "train":  # (a class only in test/ or val/: no model trained here learns it)
            warnings += [f"split 'train': class {spec.classes[c]!r} has no input at all (it is "
                        "only in the other splits); check the input layout"
                        for c in np.flatnonzero(listed == 0)]
        split_entries[split] = SplitEntry(
            num_samples=len(records),
            num_rejected=n_rej,
            class_counts=kept.tolist(),
            fingerprint=fingerprint,
            beton=f"{split}.beton",
            labels=f"{split}.labels.npy",
            index=f"wds/{split}.index.npy",
            shards=shard_names,
            beton_fingerprint=beton_fp,
            checksums=checksums,
        )
        share = len(samples) / max(1, sum(len(s) for s in spec.splits.values()))
        summaries.append(SplitSummary(split, len(records), n_rej,
                                      encode_seconds * share + time.perf_counter() - t0))

    # 3. Rejects list and manifest (the manifest last: it marks the build complete)
    _check_interrupt()
    if not repair:  # (a repair keeps the stats of the build: intact shards keep their pixels,
        save_input_stats(spec, out_dir / BUILD_DIR)  # so inputs changed since stay a warning)
    lines = ["# split\tinput\treason"] + [f"{s}\t{one_line(n)}\t{one_line(r)}"
                                         for s, n, r in all_rejects]
    atomic_write_text(out_dir / "rejects.txt", "\n".join(lines) + "\n")
    manifest = DatasetManifest(
        name=spec.name,
        classes=list(spec.classes),
        splits=split_entries,
        image=ImageSettings(max_side=opts.max_side, quality=opts.quality,
                            beton_mode=opts.beton_mode, raw_fraction=opts.raw_fraction),
        shard_size=opts.shard_size,
        fingerprint=dataset_fingerprint([e.fingerprint for e in split_entries.values()]),
        beton_fingerprint=dataset_fingerprint([e.beton_fingerprint for e in split_entries.values()]),
        extra=spec.extra,
        build=settings,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    atomic_write_json(out_dir / MANIFEST_NAME, manifest.to_json())
    end_repair(out_dir)  # (repaired, if it was a repair: its record goes)
    return BuildSummary(out_dir, summaries, warnings=warnings)


def write_origins(out_dir: Path, split: str, samples: list, keys: np.ndarray) -> None:
    """``S.files.txt``: sample ``i``'s origin (:meth:`~.spec.Sample.origin`: its input file's
    absolute path, or the generator's name for it) on line ``i``. ``keys``: each sample's
    ordinal in the layout's listing (the index's ``key``; rejected inputs have none), so the
    lines follow the samples, not the listing."""
    lines = [one_line(samples[int(k)].origin()) for k in keys]
    atomic_write_text(out_dir / f"{split}{ORIGINS_SUFFIX}", "".join(f"{x}\n" for x in lines))


def _add_missing_origins(spec: DatasetSpec, out_dir: Path) -> None:
    """A finished build made before ``S.files.txt`` existed gets it when the same build command
    runs again: the listing is the one it was built from (the settings' digest), and the index
    names each sample's ordinal in it."""
    manifest = DatasetManifest.from_json(read_json(out_dir / MANIFEST_NAME, "manifest"),
                                         out_dir / MANIFEST_NAME)
    for name, entry in manifest.splits.items():
        if not (out_dir / f"{name}{ORIGINS_SUFFIX}").is_file():
            path = out_dir / entry.index
            try:
                index = load_npy(path)
            except (OSError, ValueError, EOFError) as e:
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise DataError(f"{path}: unreadable ({why}); "
                                f"{REMAKE_HINT.format(file=path, root=out_dir)}") from None
            write_origins(out_dir, name, spec.splits[name], index["key"])
