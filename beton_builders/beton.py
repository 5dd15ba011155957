"""Write an FFCV ``.beton`` holding exactly the JPEG bytes of the WebDataset shards.

Stock ``RGBImageField.encode`` only accepts pixel arrays and would decode and re-encode every
image (a second lossy step, and betons that disagree with the shards). We keep the stock field
class (so the file's header says ``RGBImageField`` and stock ffcv reads it) and give the field
*instance* an ``encode`` that stores our already-encoded bytes in JPEG mode. In ``proportion``
mode a deterministic, per-sample fraction is stored RAW (decoded pixels of the same JPEG),
trading disk for decode time, as ffcv's own proportion mode does.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ffcv_dp4tl.contracts import INDEX_DTYPE, side_limit
from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.fsutil import absent_why, os_error_line
from ffcv_dp4tl.lazy import import_ffcv, sigint_deferred

if TYPE_CHECKING:
    from .beton_format import BetonLayout


@dataclass(frozen=True)
class JPEGBytes:
    """Already-encoded image passed through the ffcv writer untouched."""

    data: np.ndarray  # uint8, 1-D
    height: int
    width: int


def _encode(field, destination, image, malloc) -> None:  # bound to a field instance
    if isinstance(image, JPEGBytes):
        from ffcv.fields.rgb_image import IMAGE_MODES

        destination["mode"] = IMAGE_MODES["jpg"]
        destination["height"], destination["width"] = image.height, image.width
        destination["data_ptr"], storage = malloc(image.data.nbytes)
        storage[:] = image.data
        return
    type(field).encode(field, destination, image, malloc)  # raw pixels, stock path


def keep_as_jpeg(sample_index: int, raw_fraction: float) -> bool:
    """Deterministic per-sample choice for ``proportion`` mode (same build → same beton)."""
    if raw_fraction <= 0:
        return True
    digest = hashlib.blake2b(int(sample_index).to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 >= raw_fraction


class ShardBytesDataset:
    """Indexable view of the shards for ``DatasetWriter.from_indexed_dataset``."""

    def __init__(self, index: np.ndarray, shard_paths: list[Path], heights, widths,
                 raw_fraction: float):
        assert index.dtype == INDEX_DTYPE
        self.index = index
        self.shard_paths = [str(p) for p in shard_paths]
        self.heights = np.asarray(heights)
        self.widths = np.asarray(widths)
        self.raw_fraction = raw_fraction

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        rec = self.index[i]
        with open(self.shard_paths[rec["shard"]], "rb") as f:
            f.seek(int(rec["offset"]))
            data = np.frombuffer(f.read(int(rec["size"])), dtype=np.uint8)
        if keep_as_jpeg(i, self.raw_fraction):
            image = JPEGBytes(data, int(self.heights[i]), int(self.widths[i]))
        else:
            import cv2

            image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return image, int(rec["label"])


_PROGRESS_LOCK = threading.Lock()


@contextlib.contextmanager
def _ffcv_progress(enabled: bool, desc: str = "") -> Iterator[None]:
    """Label ffcv's ``DatasetWriter`` progress bar with ``desc`` (like the build's own
    ``encode NAME`` bars), or silence it, for this block only.

    ffcv offers no switch for its bar: ``DatasetWriter._write_common`` always calls the module's
    ``tqdm(total=...)`` (ffcv 1.0.2 and upstream main: no constructor or method argument,
    and tqdm reads its ``TQDM_*`` environment overrides once, at import). So we patch
    ``ffcv.writer.tqdm`` for the duration of one write, under a lock (two concurrent writes in
    one process cannot interleave their patch/restore), and always restore it.
    """
    import_ffcv()
    import ffcv.writer
    from unittest import mock

    from ffcv_dp4tl.progress import bar as progress_bar

    bar = functools.partial(progress_bar, desc=desc, unit="img", leave=True, show=enabled)
    with _PROGRESS_LOCK, mock.patch.object(ffcv.writer, "tqdm", bar):
        yield


#: samples per task handed to one of ffcv's writer processes
WRITE_CHUNK = 64


def beton_workers(workers: int, num_samples: int) -> int:
    """Writer processes worth starting: one per chunk at most (``--workers 200`` on 48 images
    starts one, and the free-space check counts one open page, not 200)."""
    return max(1, min(workers, -(-num_samples // WRITE_CHUNK)))


#: the folder where the beton writer processes forked during :func:`write_beton` write their
#: stderr (:class:`_WriterLog`); None outside a write
_WRITER_LOG_DIR: Path | None = None
#: a writer's stderr file: ``writer-<pid>.log`` (:func:`writer_error` reads it back)
WRITER_LOG = "writer-{pid}.log"


class _WriterLog:
    """A forked beton writer's ``sys.stderr``: a file in the build's records, made at its
    first write, so a writer that fails leaves its traceback there (the build's one line
    quotes its exception and names the file) instead of a screen of ffcv's frames above the
    line; one that succeeds leaves nothing, unless it warned. Where the file cannot be written
    (the disk that failed the writer), the text goes to the real stderr, as before."""

    encoding, errors = "utf-8", "replace"

    def __init__(self, path: Path):
        self.path, self._file, self._broken = path, None, False

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                if self._file is None:
                    self._file = open(self.path, "a", encoding="utf-8", errors="replace")
                n = self._file.write(text)
                self._file.flush()
                return n
            except OSError:
                self._broken = True
        return sys.__stderr__.write(text) if sys.__stderr__ is not None else len(text)

    def flush(self) -> None:
        if self._file is not None and not self._broken:
            with contextlib.suppress(OSError):
                self._file.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False

    def fileno(self) -> int:  # (C-level writers, e.g. faulthandler: the real stderr)
        if sys.__stderr__ is None:
            raise OSError("no stderr")
        return sys.__stderr__.fileno()


def _log_writer_stderr() -> None:  # (at fork, in the child: ffcv's writers are forked)
    if _WRITER_LOG_DIR is not None:
        sys.stderr = _WriterLog(_WRITER_LOG_DIR / WRITER_LOG.format(pid=os.getpid()))


os.register_at_fork(after_in_child=_log_writer_stderr)


#: the last line of a Python traceback: the exception, ``OSError: [Errno 28] No space …``
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b")


def writer_error(log_dir: Path | None, pid: int) -> tuple[str, Path] | None:
    """The error the failed beton writer ``pid`` wrote to its log in ``log_dir`` (the exception
    line ending its last traceback, e.g. ``OSError: [Errno 122] Disk quota exceeded``) and the
    log's path; None when it left none (killed by a signal, its log could not be written, or
    was cut short: a line of the traceback's middle was quoted as the error, review)."""
    if log_dir is None:
        return None
    log = log_dir / WRITER_LOG.format(pid=pid)
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return None
    starts = [i for i, x in enumerate(lines) if x.startswith("Traceback (most recent call last)")]
    if not starts or not _EXCEPTION_LINE.match(lines[-1]) or len(lines) - 1 <= starts[-1]:
        return None
    return lines[-1][:300], log


def write_beton(path: Path, dataset: ShardBytesDataset, quality: int, max_side: int,
                workers: int, progress: bool = True, desc: str = "",
                log_dir: Path | None = None) -> None:
    """Write ``dataset`` to the beton at ``path`` (in place; the caller renames atomically);
    ``desc`` labels the progress bar (``path`` is the temporary name). ``log_dir``: where the
    writer processes' stderr goes (:class:`_WriterLog`; the logs of an earlier write there
    are removed first); None: the terminal's."""
    import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    image_field = RGBImageField(write_mode="raw", max_resolution=max_side, jpeg_quality=quality)
    # Supported per-instance hook: the field's class (and so the file's header) stays stock.
    image_field.encode = functools.partial(_encode, image_field)
    writer = DatasetWriter(str(path), {"image": image_field, "label": IntField()},
                           num_workers=beton_workers(workers, len(dataset)))
    import multiprocessing

    global _WRITER_LOG_DIR
    if log_dir is not None:
        for stale in log_dir.glob(WRITER_LOG.format(pid="*")):
            stale.unlink(missing_ok=True)
    before = set(multiprocessing.active_children())
    _WRITER_LOG_DIR = log_dir
    try:
        _write_and_join(writer, dataset, before, progress, desc or f"beton {path.name}")
    finally:
        _WRITER_LOG_DIR = None


def _write_and_join(writer, dataset: ShardBytesDataset, before: set, progress: bool,
                    desc: str) -> None:
    """ffcv's write of ``dataset``, then its writer processes (those not in ``before``) joined;
    on any failure they are ended first."""
    import multiprocessing

    try:
        with _ffcv_progress(progress, desc):
            writer.from_indexed_dataset(dataset, chunksize=WRITE_CHUNK)
    except BaseException as e:  # Ctrl-C, a full disk: the caller removes the partial beton
        # (the build's watchdog sends SIGINT again every second while a stop is under way: the
        # cleanup is not cut short by it, and a held one is raised after it)
        with sigint_deferred():
            _free_metadata_memory(writer)
            # the writers still running (one failed; the others would write on into a beton
            # that is being removed) end with the write: SIGTERM's default in a worker ends it
            writers = set(multiprocessing.active_children()) - before
            for p in writers:
                p.terminate()
            for p in writers:
                p.join(timeout=10)
                with contextlib.suppress(ValueError):  # (one still running keeps its sentinel)
                    p.close()  # its sentinel pipe closed now, not when the traceback goes
            _close_queues(_queues_left_by(e.__traceback__))
        raise
    # ffcv returns without joining its writer processes. They have finished their work: wait
    # for them to exit, so none outlives the write (their logs flushed, no zombie left).
    for p in set(multiprocessing.active_children()) - before:
        p.join(timeout=60)


def _queues_left_by(tb) -> list:
    """The ``multiprocessing`` queues a failed write of ffcv's left open: those held by its
    writer's frames in the traceback ``tb`` (its work and allocation queues are locals of
    ``DatasetWriter._write_common``, which the traceback keeps alive, feeder thread and pipes
    included, for as long as a notebook keeps the exception). Read from the frames, by type:
    ffcv's ``Queue`` is no longer patched to record them (the rule: extend ffcv only through
    its documented classes; its progress bar still is, :func:`_ffcv_progress`, for want of a
    switch), and no local's name is assumed."""
    import multiprocessing.queues

    found: dict[int, Any] = {}
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__") == "ffcv.writer":
            for value in frame.f_locals.values():
                if isinstance(value, multiprocessing.queues.Queue):
                    found.setdefault(id(value), value)
        tb = tb.tb_next
    return list(found.values())


def _close_queues(queues: list, timeout: float = 1.0) -> None:
    """Close the queues of a failed write, their feeder threads ended and their pipes closed:
    an interrupted build left a ``QueueFeederThread`` and ~11 descriptors in the process (API
    audit). Their readers, ffcv's writer processes, are gone: what is still in a pipe is read
    here (past the queue's read lock, which a killed reader may hold), so the feeder can put its
    last item and end. ``timeout``: for all of them together (5 s per queue made a Ctrl-C
    during a write end ~4 s later, not 0.5 s; review): a feeder still alive then is left, not
    waited for at exit."""
    deadline = time.monotonic() + timeout
    for queue in queues:
        reader, writer = getattr(queue, "_reader", None), getattr(queue, "_writer", None)
        feeder = getattr(queue, "_thread", None)
        with contextlib.suppress(Exception):
            queue.close()  # (its feeder ends after the items it holds, closing both ends)
        while feeder is not None and feeder.is_alive() and time.monotonic() < deadline:
            try:
                while reader is not None and not reader.closed and reader.poll():
                    reader.recv_bytes()
            except (OSError, ValueError, EOFError, TypeError):  # (closed by the feeder
                pass  # meanwhile: its sentinel closes the reader, whose handle is None mid-read)
            feeder.join(timeout=0.01)
        if feeder is not None and feeder.is_alive():
            with contextlib.suppress(Exception):
                queue.cancel_join_thread()  # (not waited for at exit)
            continue
        for end in (reader, writer):  # (a queue nothing was put in has no feeder to close them)
            with contextlib.suppress(Exception):
                end.close()


def _free_metadata_memory(writer) -> None:
    """Release the shared-memory block ffcv 1.0.2's ``DatasetWriter`` allocates for its
    metadata (``metadata_sm``) and frees only when a write completes: an interrupted build
    left it to the resource tracker, which printed "There appear to be 1 leaked shared_memory
    objects" after the build's one-line message."""
    from multiprocessing import shared_memory

    sm = getattr(writer, "metadata_sm", None)
    if isinstance(sm, shared_memory.SharedMemory):
        with contextlib.suppress(OSError):
            sm.close()
        with contextlib.suppress(OSError):
            sm.unlink()


#: ffcv's IMAGE_MODES["jpg"]: the sample's bytes are a JPEG file (else raw pixels)
JPEG_MODE = 0


@dataclass(frozen=True)
class BetonImages:
    """Where each sample's image is in a beton (ffcv 1.0.2's layout): the image field's
    metadata gives ``data_ptr`` (an absolute file offset), mode and shape; ffcv's allocation
    table gives the size of the region allocated at that pointer."""

    path: Path
    mode: np.ndarray      # (N,) ffcv image mode: 0 = JPEG bytes, else raw pixels
    data_ptr: np.ndarray  # (N,) int64 file offsets
    size: np.ndarray      # (N,) int64 allocated bytes (-1: no allocation at that pointer)
    hw: np.ndarray        # (N, 2) int64 height, width

    @property
    def is_jpeg(self) -> np.ndarray:
        return self.mode == JPEG_MODE


def metadata_sides(layout: "BetonLayout", metadata: np.ndarray) -> np.ndarray:
    """(N, 2) height, width of each image, from a beton's metadata rows (``layout``'s)."""
    field = metadata[layout.image_field()]
    return np.stack([field["height"], field["width"]], axis=1).astype(np.int64)


def oversized_line(path: Path, hw: np.ndarray, max_side: int | None) -> str | None:
    """One line naming the samples whose recorded height or width exceeds the build's
    ``max_side`` held to the builder's range (:func:`~ffcv_dp4tl.contracts.side_limit`: its top,
    4096, when no ``max_side`` is known), or None when none does. The builder never stores a
    larger side, and ffcv sizes its decode buffers by the largest one: an edited metadata entry
    (20000x20000) made a loader allocate 96 GB before its first batch; the limit never comes
    from manifest.json alone, which whoever edits the beton can edit too."""
    if not len(hw):
        return None
    limit = side_limit(max_side)
    idx = np.flatnonzero((hw > limit).any(axis=1))
    if not idx.size:
        return None
    h, w = (int(v) for v in hw[idx[0]])
    return listed_samples(f"image side over the build's max_side {limit} (first {h}x{w}: "
                          "metadata edited or damaged)", str(path), idx)


def beton_images(beton: Path) -> BetonImages:
    """Read the image layout of ``beton`` (shared by the GPU-decode loader and ``dp4tl verify``)."""
    from .beton_format import read_layout

    layout = read_layout(beton)
    rows = layout.metadata()
    meta = rows[layout.image_field()]
    table = layout.alloc_table()
    if layout.num_samples and not len(table):
        raise DataError(f"{beton}: {layout.num_samples} samples but an empty allocation table "
                        "(a damaged header)")
    order = np.argsort(table["ptr"])
    ptrs, sizes = table["ptr"][order], table["size"][order]
    data_ptr = meta["data_ptr"].astype(np.uint64)
    pos = np.minimum(np.searchsorted(ptrs, data_ptr), len(ptrs) - 1)
    found = ptrs[pos] == data_ptr
    return BetonImages(Path(beton), np.asarray(meta["mode"]).astype(np.int64), data_ptr.astype(np.int64),
                       np.where(found, sizes[pos].astype(np.int64), -1), metadata_sides(layout, rows))


def listed_samples(kind: str, where: str, idx: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"{where}: {kind} at sample(s) {shown}{more}"


def check_beton(path: Path, num_samples: int,
                max_side: int | None = None) -> tuple["BetonImages | None", list[str]]:
    """Structural check of a beton without reading image bytes: ffcv opens its header, it holds
    ``num_samples`` samples, every image points at an allocation inside the file (raw images
    at least ``h * w * 3`` bytes) and no image side exceeds ``max_side`` (the manifest's, within
    the builder's range: :func:`oversized_line`). Returns ``(layout or None, one line per problem)``."""
    path = Path(path)
    if why := absent_why(path):
        return None, [f"{path}: {why}; rebuild the dataset"]
    try:
        images = beton_images(path)
    except DataError as e:
        return None, [f"{e}; rebuild the dataset"]
    except PermissionError as e:  # the file is fine: rebuilding would not help
        return None, [os_error_line(e, reading=True)]
    except Exception as e:  # noqa: BLE001 - ffcv raises assorted errors on damaged headers
        return None, [f"{path}: unreadable header ({type(e).__name__}: {e}); rebuild the dataset"]
    if len(images.mode) != num_samples:
        return None, [f"{path}: {len(images.mode)} samples, manifest.json says {num_samples}; rebuild the dataset"]
    problems = []
    file_size = path.stat().st_size
    unalloc = np.flatnonzero(images.size < 0)
    if unalloc.size:
        problems.append(listed_samples("image pointer without an allocation", str(path), unalloc))
    past = np.flatnonzero((images.size >= 0) & (images.data_ptr + images.size > file_size))
    if past.size:
        problems.append(listed_samples("image bytes past the end of the file (truncated?)", str(path), past))
    short = np.flatnonzero(~images.is_jpeg & (images.size >= 0)
                           & (images.size < images.hw[:, 0] * images.hw[:, 1] * 3))
    if short.size:
        problems.append(listed_samples("raw image smaller than height x width x 3", str(path), short))
    if line := oversized_line(path, images.hw, max_side):
        problems.append(f"{line}; rebuild the dataset")
    return images, problems
