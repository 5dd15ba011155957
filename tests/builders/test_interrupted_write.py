"""An interrupted beton write leaves no queue feeder thread and no descriptor of ffcv's writer
behind, even while its traceback is kept (a notebook keeps the last one; API audit)."""
from __future__ import annotations

import gc
import os
import threading
import time

import pytest

from beton_builders import build_dataset

try:
    from tiny_builds import OPTS, mem_spec
except ImportError:  # pragma: no cover
    from .tiny_builds import OPTS, mem_spec  # type: ignore[no-redef]


def _fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return out


def test_an_interrupted_beton_write_leaves_no_feeder_thread_or_pipe(tmp_path, monkeypatch):
    import ffcv.writer

    build_dataset(mem_spec(), tmp_path / "first", OPTS, source="mem")  # (one-time imports)
    gc.collect()
    before, threads = _fds(), {t.name for t in threading.enumerate()}

    def interrupted(seconds):  # ffcv's wait for its writers: Ctrl-C there
        raise KeyboardInterrupt

    monkeypatch.setattr(ffcv.writer, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        build_dataset(mem_spec(), tmp_path / "second", OPTS, source="mem")
    monkeypatch.undo()
    gc.collect()
    assert caught.value.__traceback__ is not None  # (kept, as a notebook keeps it)
    assert "QueueFeederThread" not in {t.name for t in threading.enumerate()} - threads
    assert sorted(_fds() - before) == []


def test_a_reader_the_feeder_closes_mid_read_ends_the_cleanup_quietly():
    """The queue's feeder closes its reader when it takes its sentinel, concurrently with the
    cleanup's reads of what is left in the pipe: ``recv_bytes`` then found the handle None and
    raised ``TypeError`` out of the cleanup (seen once in a clean-clone suite run), in place of
    the write's own interrupt."""
    from beton_builders.beton import _close_queues

    class Reader:
        closed = False

        def poll(self):
            return True

        def recv_bytes(self):  # (the feeder closed it: multiprocessing's _recv on a None handle)
            raise TypeError("'NoneType' object cannot be interpreted as an integer")

        def close(self):
            self.closed = True

    class Queue:
        def __init__(self):
            self._reader, self._writer = Reader(), Reader()
            self._thread = threading.Thread(target=time.sleep, args=(0.05,))  # (the feeder)
            self._thread.start()

        def close(self):
            pass

    queue = Queue()
    _close_queues([queue], timeout=1.0)
    assert queue._reader.closed and queue._writer.closed
