"""Atomic file writes.

A file that exists under its final name is always complete: everything is written to a
temporary file in the same directory and renamed into place (``os.replace`` is atomic on
POSIX). Interrupted work therefore never leaves a file that looks finished, and resumable
stages can use "the final file exists" as their completion test.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    ``suffix`` is appended to the temporary name for tools that care about extensions.
    On any exception the temporary file is removed and ``path`` is left untouched.

    The temporary file is created inside the block that removes it, under a name chosen
    before: a stop signal (Ctrl-C, SIGTERM) raises between any two steps, and one that landed
    after ``mkstemp`` had made the file but before the cleanup was armed left it behind (CI: a
    SIGTERMed training job's ``.timings.json.*.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp{suffix}"
    try:
        os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.chmod(tmp_path, _mode_for(path))
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        if not (isinstance(e, FileExistsError) and e.filename == str(tmp_path)):  # (not ours)
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
        if isinstance(e, OSError) and not e.filename:
            # a write through a file object (np.save, json.dump) names no path: a full disk
            # said only "disk full" (review); the error line names ``path`` (final_name)
            e.filename = str(tmp_path)
        raise


def _mode_for(path: Path) -> int:
    """The mode a file written to ``path`` gets: the usual permissions (0666 minus umask), so
    that datasets and masks built by one user are readable by the others on a shared cluster;
    a file replaced keeps its mode (a group-writable report stays so)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without setting it (/proc on Linux): the portable way sets it
    to 0 and back, and a signal raised between the two left it at 0 for every later file."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def short_write_is_disk_full(path: str | os.PathLike) -> Iterator[None]:
    """Turn a short write into ``OSError(ENOSPC)`` naming ``path``.

    numpy's ``tofile`` (used by ``np.save`` on real files) reports a write that stopped early as
    ``OSError("780 requested and 496 written")`` with no errno; on a local disk that is a full
    disk (or quota), so the CLI's one-line disk-full message applies instead of a traceback."""
    try:
        yield
    except OSError as e:
        if e.errno is None and "requested and" in str(e) and "written" in str(e):
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write: {e})",
                          str(path)) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, short_write_is_disk_full(path):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib ``fig`` as :func:`atomic_write_bytes` writes (rendered in memory, the
    format from ``path``'s suffix): a plain ``fig.savefig(path)`` wrote through a symlink left
    at that name, so rendering a folder copied from someone else replaced whatever file the
    link named (audit), and a stop mid-save left half a PNG."""
    import io

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return path


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file written by another library (a tar, ffcv's beton) to the disk before it is
    renamed into place: the manifest that names it is fsynced, so after a power cut it must not
    point at data that never reached the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with naming(path):  # (an fsync's EIO/ENOSPC, on NFS say, names no file)
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give an ``OSError`` raised in the block that names no file ``path`` as its filename:
    calls on a descriptor (``os.pwrite``, ``os.fsync``, ``os.posix_fallocate``) name none, and a
    full disk then read "disk full (No space left on device)", with no word of where."""
    try:
        yield
    except OSError as e:
        if not e.filename:
            e.filename = str(path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp, short_write_is_disk_full(path):
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


#: what ``json.loads`` raises on a damaged file, besides the ``OSError`` of reading it: not JSON
#: or not UTF-8 (``ValueError``; also an integer past Python's digit cap) and nesting deeper than
#: the parser recurses (``RecursionError``). Readers that treat such a file as absent catch these.
BAD_JSON: tuple[type[Exception], ...] = (ValueError, RecursionError)


def read_json(path: str | os.PathLike, what: str = "file", fix: str = "rebuild or replace it",
              missing: str = "") -> Any:
    """Read JSON, turning missing/corrupt files into a :class:`DataError` naming the file and,
    for a corrupt one, ``fix``: the step that rewrites it (callers that know it say it, e.g.
    "delete the stage folder and rerun"; the default fits a file the user made); for a missing
    one, ``missing``: the step that writes it (e.g. "run `dp4tl score` first"), when known."""
    from .errors import DataError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}" + (f"; {missing}" if missing else "")) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path} is not valid JSON ({e}); {fix}") from None
    except BAD_JSON as e:  # (what the parser itself cannot hold, audit)
        if isinstance(e, RecursionError):
            why = "nested too deeply"
        elif "Exceeds the limit" in str(e):  # (Python's cap on int digits; its advice is not ours)
            why = f"it holds an integer of more than {sys.get_int_max_str_digits()} digits"
        else:  # (e.g. a path with a NUL byte)
            why = str(e)
        raise DataError(f"{what} {path} cannot be read ({why}); {fix}") from None


#: Name pattern of atomic_path's temporary files: ".<final name>.<random>.tmp[<suffix>]".
TEMP_GLOB = ".*.tmp*"


def remove_orphan_temps(directory: str | os.PathLike) -> int:
    """Delete the temporary files :func:`atomic_path` left in ``directory`` (recursively) when a
    process was killed before its cleanup ran (a beton-sized file at ImageNet scale). Call it
    only under :func:`~ffcv_dp4tl.locks.directory_lock`, when no other writer can own them. Returns the count."""
    n = 0
    for p in Path(directory).rglob(TEMP_GLOB):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


def check_free_space(directory: str | os.PathLike, needed: int, what: str, *,
                     option: str = "--out", then: str = "the build resumes") -> None:
    """Fail fast, before writing, when ``directory``'s file system has less than ``needed``
    bytes free: a full disk in the middle of ffcv's multi-process beton writer hangs it.

    ``option``: the command-line option that chose ``directory``, named as the other way out
    ("" names none); ``then``: what a rerun does."""
    from .errors import DataError

    free = shutil.disk_usage(directory).free
    if free < needed:
        other = f" or choose another {option}" if option else ""
        raise DataError(f"not enough space for {what} in {directory}: needs ~{needed / 2**20:,.0f} MiB, "
                        f"{free / 2**20:,.0f} MiB free; free some space{other}, then rerun "
                        f"({then})")


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


#: errnos meaning "this place cannot be written" (read-only mount, permissions)
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def is_unwritable(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in UNWRITABLE


def check_out_dir(path: str | os.PathLike, what: str = "--out", *, must_write: bool = True) -> Path:
    """Refuse, before any work, an output folder that cannot be one: a file, a path through a
    file, or (``must_write``) a folder whose nearest existing ancestor is not writable.

    Commands call it on their output folders so a typo costs one line, not a traceback after
    minutes of work."""
    from .errors import DataError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{what} {path} is a file, not a folder; choose a folder")
    probe = _through_no_file(path, path, what, "folder")
    if must_write and probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_fs(probe) else "no write permission"
        raise DataError(f"{what} {path}: cannot write in {probe} ({why}); choose a writable folder")
    return path


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the root when none exists)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _through_no_file(path: Path, folder: Path, what: str, made: str) -> Path:
    """The nearest existing of ``folder`` and its ancestors, refused when it is a file: no
    ``made`` (file or folder) at ``path`` could be created through it."""
    from .errors import DataError

    probe = _nearest_existing(folder)
    if probe.exists() and not probe.is_dir():
        raise DataError(f"{what} {path}: {probe} is a file, so no {made} can be made there; "
                        "choose another path")
    return probe


def check_out_file(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before any work, an output file that cannot be one: a folder, or a file whose
    folder :func:`check_out_dir` refuses (e.g. ``--report`` pointing at a directory)."""
    from .errors import DataError

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not a file; give a file such as "
                        f"{path / 'BENCHMARKS.md'}")
    _through_no_file(path, path.parent, what, "file")
    if path.exists() and not path.stat().st_mode & 0o222:
        # an atomic replace would bypass the protection (the folder is what is writable)
        raise DataError(f"{what} {path} is read-only; make it writable (chmod u+w) or choose "
                        "another file")
    check_out_dir(path.parent, what)
    return path


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def final_name(path: str | os.PathLike) -> str:
    """The file a temporary name of :func:`atomic_path` stands for (``.x.npy.k3j.tmp.npy`` →
    ``x.npy``), so an error names what the user asked for; other paths unchanged."""
    import re

    p = Path(path)
    m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp(\.[^.]*)?", p.name)
    return str(p.with_name(m.group(1))) if m else str(path)


def environment_error_line(e: BaseException) -> str | None:
    """:func:`os_error_line` for an environment error (an ``OSError`` with an errno, not a
    broken pipe), else None: an ``OSError`` without an errno is a bug and keeps its traceback.
    The CLI's last handler and :func:`~ffcv_dp4tl.training.distributed.fail_together` (the line
    every other rank shows) both ask this."""
    if isinstance(e, OSError) and not isinstance(e, BrokenPipeError) and e.errno is not None:
        return os_error_line(e)
    return None


def os_error_line(e: OSError, *, reading: bool = False, writing: bool = False) -> str:
    """One line for an environment error (read-only folder, a file where a folder should be,
    no permission) that reached the CLI: what failed, on which path, and what to do.
    ``reading``: the caller knows ``e`` came from reading (no permission is then "cannot read"
    even where ``os.access`` cannot tell, e.g. root on an NFS mount with root_squash);
    ``writing``: it came from writing (creating or appending) a file, so a file "not found"
    whose folder is gone means the folder disappeared during the run."""
    where = f" {final_name(e.filename)}" if e.filename else ""
    what = e.strerror or str(e)
    if e.errno == errno.ENOSPC and not e.filename:
        shm = shm_full_line(what)
        if shm is not None:
            return shm
    if is_disk_full(e):
        return (f"disk full{' writing' + where if where else ''} ({what}); free some space, then "
                "rerun the same command: finished work is kept and it resumes")
    if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return f"cannot use{where} ({what}): a file is where a folder should be (or the reverse); choose another path"
    if e.errno in (errno.EACCES, errno.EPERM) and (reading or (
            e.filename and os.path.exists(e.filename) and not os.access(e.filename, os.R_OK))):
        # (a file or folder we may not even read)
        return f"cannot read{where} ({what}); fix its permissions, or run as a user who may read it"
    if is_unwritable(e):
        return f"cannot write{where} ({what}); choose a writable folder or fix its permissions"
    if e.errno == errno.ENOENT:
        if writing and e.filename and not os.path.isdir(os.path.dirname(os.fspath(e.filename)) or "."):
            return vanished_folder_line(e.filename)
        return f"not found:{where} ({what}); check the path"
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return (f"too many open files{' opening' + where if where else ''} ({what}); raise the "
                "limit (`ulimit -n 65536`) or use fewer loader workers, then rerun the same "
                "command: it resumes")
    return f"{what}{':' + where if where else ''}; check the path and its permissions"


def vanished_folder_line(path: str | os.PathLike) -> str:
    """What a write to ``path`` is told when its folder is gone: the output folder was deleted
    (or its file system unmounted) while the run wrote in it. It read "not found: .../metrics.jsonl
    (No such file or directory); check the path", a path the user never typed (audit)."""
    folder = os.path.dirname(final_name(path)) or "."
    return (f"the folder {folder} disappeared during the run (deleted or unmounted) while "
            f"{os.path.basename(final_name(path))} was written in it; rerun the same command: it "
            "resumes from what is left, or starts over where nothing is")


@functools.cache
def _libc_fallocate() -> Any:
    """glibc's ``fallocate`` (Linux's fallocate(2), no emulation), or None where there is none."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.fallocate64
    except (OSError, AttributeError):  # (not glibc: macOS, musl without the alias)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def reserve_blocks(fd: int, length: int) -> bool:
    """Allocate the blocks of the open file ``fd`` up to ``length`` bytes without writing them;
    False where the file system or platform cannot (then check the free space instead).

    A full disk or quota raises the ``OSError`` (ENOSPC, EDQUOT) here, before any work, where a
    file later written through a memory map would die of SIGBUS. Linux's ``fallocate(2)``, not
    ``os.posix_fallocate``: where the file system has no fallocate (NFSv3, some FUSE mounts)
    glibc's ``posix_fallocate`` emulates it by writing a byte into every 4 KiB block, a million
    synchronous writes per 4 GiB over the network, where this says "cannot" at once."""
    import ctypes

    fn = _libc_fallocate()
    if fn is None:
        return False
    while fn(fd, 0, 0, length) != 0:
        err = ctypes.get_errno()
        if err == errno.EINTR:  # (a signal arrived mid-call: the call is retried, as Python does)
            continue
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise OSError(err, os.strerror(err))
    return True


#: Below this much free shared memory, an ENOSPC naming no file is said to be /dev/shm's
SHM_LOW = 64 * 2**20


def free_bytes(folder: str | os.PathLike) -> int | None:
    """The free bytes of ``folder``'s file system, or None where it cannot be asked (a folder
    gone or unreadable; no /dev/shm on macOS and some sandboxes)."""
    try:
        return shutil.disk_usage(folder).free
    except (OSError, ValueError):
        return None


def shm_nearly_full() -> int | None:
    """The free bytes of ``/dev/shm`` when it has less than :data:`SHM_LOW` free, else None
    (None without one): where an ENOSPC naming no file comes from then (multiprocessing's
    semaphores and shared memory)."""
    free = free_bytes("/dev/shm")
    return free if free is not None and free < SHM_LOW else None


def shm_full_line(what: str) -> str | None:
    """The line for an ENOSPC that names no file when ``/dev/shm`` is (nearly) full, else None.

    The data loader's worker processes take POSIX semaphores and shared memory there
    (multiprocessing's SemLock): a container's 64 MiB /dev/shm filled, and the error, naming
    no file, read "disk full (No space left on device)" with no place to free (audit). Also
    the line of a beton writer killed by SIGBUS there (ffcv's metadata lives in /dev/shm)."""
    free = shm_nearly_full()
    if free is None:
        return None
    return (f"shared memory (/dev/shm) is full ({free / 2**20:,.0f} MiB free; {what}): free it "
            "(delete what stopped runs left there), or give the container more shared memory "
            "(docker run --shm-size=8g), or use fewer loader workers; then "
            "rerun the same command: finished work is kept and it resumes")


#: what a folder where a dataset's file belongs is told (:func:`absent_why`)
FOLDER_IN_THE_WAY = "a folder where the build's file belongs (move it away first: it is never deleted)"


#: What :func:`absent_why` says of a FIFO, socket or device where a file belongs
NOT_REGULAR = "not a regular file (a FIFO, socket or device where the build's file belongs)"


def absent_why(path: str | os.PathLike) -> str | None:
    """None when ``path`` is a regular file (or a link to one); else why it cannot be read, to
    follow ``"{path}: "`` or ``"{path} is "`` in a message: ``missing``, for a folder at
    that path :data:`FOLDER_IN_THE_WAY`, for anything else :data:`NOT_REGULAR`. A folder was
    reported "missing", and the advised rebuild then failed on it; a FIFO was opened and its
    read waited for a writer forever (audit). Callers check it before opening a built file."""
    p = Path(path)
    if p.is_file():
        return None
    return FOLDER_IN_THE_WAY if p.is_dir() else NOT_REGULAR if p.exists() else "missing"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints, masks, weight files)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_npy(path: str | os.PathLike, mmap_mode: str | None = None) -> Any:
    """``np.load(path, allow_pickle=False)``, after checking that a ``.npy`` header's shape
    times its item size fits in the file: numpy allocates the declared array before it reads,
    so a 192-byte file declaring shape (4e9,) raised a MemoryError traceback (or took the
    memory) instead of the callers' one line. Problems raise ``ValueError``, as numpy does for a
    truncated file, so every caller's own handling (and :func:`~.data.manifest.npy_error_reason`)
    turns them into its message. A FIFO is refused before it is read (it would block). Without
    ``mmap_mode`` the array is read from the file object just checked (the name is opened once)."""
    import math

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file (a FIFO, socket or device)")
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            version = None  # not a .npy file: np.load says what it is (.npz, pickle, text)
        if version is not None:
            readers = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}
            if version in readers:
                shape, _, dtype = readers[version](f)
            else:  # (format 3.0: the same header with UTF-8 field names; numpy's own reader)
                impl = getattr(np.lib, "_format_impl", np.lib.format)
                shape, _, dtype = impl._read_array_header(f, version)
            if not dtype.hasobject:  # (object arrays: np.load refuses them, unread)
                needed = math.prod(shape) * dtype.itemsize
                held = st.st_size - f.tell()
                if needed > held:
                    raise ValueError(f"its header declares shape {shape} of {dtype} ({needed} "
                                     f"bytes) but the file holds {held} bytes of data (truncated "
                                     "or not a real array)")
        if mmap_mode is None:  # the file checked, not whatever the name holds by now
            f.seek(0)
            return _array_only(np.load(f, allow_pickle=False))
    # (a memory map needs the name: numpy maps no open file object)
    return _array_only(np.load(path, mmap_mode=mmap_mode, allow_pickle=False))


class NpzArchiveError(ValueError):
    """:func:`load_npy` of an ``np.savez`` archive (whatever its name): no one array."""


def _array_only(loaded: Any) -> np.ndarray:
    """What :func:`load_npy` returns: an array, never a ``.npz`` archive (whose lazy members
    would read a closed file; every caller wants one array)."""
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise NpzArchiveError("an .npz archive (np.savez), not a .npy array file")
    return loaded
