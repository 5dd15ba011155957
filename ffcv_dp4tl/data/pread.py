"""Positionless reads from many files, a bounded number of them open at once, shared by threads.

The deep check of ``dp4tl verify``, the GPU-decode loader's read-ahead threads and the
WebDataset loader's :class:`~ffcv_dp4tl.data.wds_loader.ShardReader` read samples' bytes from a
split's shards (or its beton) through :class:`PreadFiles`.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from .resources import OpenFilesClaim

__all__ = ["PreadFiles"]


class PreadFiles:
    """Positionless reads (``os.pread``) from a list of files, at most ``max_open`` of them
    open at once: the least recently used idle one is closed first. Threads may share it: a
    descriptor is never closed while a read on it runs (not by :meth:`close` either, which
    leaves a busy one to its last reader), and a file is opened outside the lock, so a slow
    ``open`` (a network file system) holds up only the thread that needs it.

    Why a cap: a split may have thousands of shards (ImageNet-1K 1,282 train shards at the
    default shard size, ImageNet-21K about 14,200), more than the open-file limit (a soft
    1,024 is common, a hard 4,096 too), and one descriptor kept per shard failed with "Too many
    open files". Reads in shard order open each file once; random reads over more files than
    ``max_open`` pay an ``open`` where the file was closed (microseconds on a local disk, more
    on a network mount). ``max_open=None``: the reader's part of the process's open-file limit,
    shared with its other readers (:class:`~ffcv_dp4tl.data.resources.OpenFilesClaim`), asked
    for whenever a file must be opened."""

    def __init__(self, paths: list, max_open: int | None = 256):
        import threading
        from collections import OrderedDict

        self.paths = [str(p) for p in paths]
        #: a fixed cap (``dp4tl verify``, the loaders' module overrides); None: ``claim``'s
        self.max_open = None if max_open is None else max(1, int(max_open))
        self.claim = OpenFilesClaim(len(self.paths), self._shed) if max_open is None else None
        self._fds: OrderedDict[int, int] = OrderedDict()  # file number -> fd, oldest use first
        self._busy: dict[int, int] = {}  # fd -> reads running on it
        self._retired: set[int] = set()  # fds close() left to their last reader
        self._lock = threading.Lock()
        self._closes = 0  # close() calls: an open that raced one is not kept

    def _shut_idle(self, count: int) -> None:
        """Close up to ``count`` idle descriptors, least recently used first (lock held)."""
        shut = []
        for f, fd in self._fds.items():  # (oldest first; usually the first one is idle)
            if len(shut) >= count:
                break
            if not self._busy.get(fd):
                shut.append(f)
        for f in shut:
            os.close(self._fds.pop(f))

    def _shed(self, cap: int) -> None:
        """Close idle descriptors past ``cap`` (another reader of the process took a share)."""
        with self._lock:
            self._shut_idle(len(self._fds) - cap)

    def _use(self, f: int, fd: int) -> int:
        """Mark ``fd``, file ``f``'s descriptor, busy and most recently used (lock held)."""
        self._fds.move_to_end(f)
        self._busy[fd] = self._busy.get(fd, 0) + 1
        return fd

    @contextlib.contextmanager
    def _fd(self, f: int) -> Iterator[int]:
        with self._lock:
            fd, closes = self._fds.get(f), self._closes
            if fd is not None:
                self._use(f, fd)
        if fd is None:  # (outside the lock: the claim may shed others' files, open may be slow)
            cap = self.max_open if self.claim is None else self.claim.cap()
            new = os.open(self.paths[f], os.O_RDONLY)
            with self._lock:
                if self._closes != closes:  # close() ran meanwhile: this read's alone, then shut
                    fd = new
                    self._busy[fd] = 1
                    self._retired.add(fd)
                else:
                    fd = self._fds.get(f)  # (another thread may have opened it meanwhile)
                    if fd is None:
                        self._shut_idle(len(self._fds) + 1 - cap)
                        self._fds[f] = fd = new
                    else:
                        os.close(new)
                    self._use(f, fd)
        try:
            yield fd
        finally:
            with self._lock:
                self._busy[fd] -= 1
                if not self._busy[fd]:
                    del self._busy[fd]
                    if fd in self._retired:  # (close() left it to its last reader)
                        self._retired.discard(fd)
                        os.close(fd)

    def read(self, f: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of file ``f`` from ``offset`` (fewer at its end)."""
        with self._fd(f) as fd:
            return os.pread(fd, size, offset)

    def readinto(self, f: int, buffer: memoryview, offset: int) -> int:
        """Bytes of file ``f`` from ``offset`` into ``buffer``; the count read."""
        with self._fd(f) as fd:
            return os.preadv(fd, [buffer], offset)

    @property
    def open_count(self) -> int:
        return len(self._fds) + len(self._retired)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Close every idle descriptor now and each busy one when its last read ends (an open
        that was under way is closed after its read). A later read opens its file again (a
        loader is closed and iterated again), and gives the claimed share back."""
        with self._lock:
            self._closes += 1
            for fd in self._fds.values():
                if self._busy.get(fd):
                    self._retired.add(fd)
                else:
                    os.close(fd)
            self._fds.clear()
        if self.claim is not None:
            self.claim.release()
