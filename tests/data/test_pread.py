"""data/pread.py: reads from many files with a bounded number open, shared by threads."""
from __future__ import annotations

import pytest

from ffcv_dp4tl.data import pread
from ffcv_dp4tl.data.pread import PreadFiles


def test_pread_files_hold_few_files_open_and_threads_read_the_right_bytes(tmp_path):
    """A split may have thousands of shards, more than the open-file limit: PreadFiles keeps at
    most ``max_open`` open (least recently used closed first), and threads sharing it read the
    right bytes though files are closed and reopened under them (a descriptor closed during
    another thread's read would be reused by the next open: another file's bytes)."""
    import random
    import threading

    paths = []
    for k in range(40):
        paths.append(tmp_path / f"f{k:02d}")
        paths[-1].write_bytes(bytes([k]) * 4096)
    files = PreadFiles(paths, max_open=3)
    assert [files.read(k, 100, 8) for k in range(40)] == [bytes([k]) * 8 for k in range(40)]
    assert files.open_count == 3
    assert files.read(39, 4090, 64) == bytes([39]) * 6  # (fewer at the end)
    wrong, most = [], [0]

    def work(seed):
        rng = random.Random(seed)
        for _ in range(3000):
            k = rng.randrange(40)
            buf = bytearray(32)
            n = files.readinto(k, memoryview(buf), rng.randrange(4064))
            if n != 32 or buf != bytes([k]) * 32:
                wrong.append(k)
            most[0] = max(most[0], files.open_count)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files.close()
    assert not wrong and most[0] <= 4 and files.open_count == 0


def test_pread_files_close_leaves_a_busy_descriptor_to_its_reader(tmp_path):
    """close() while another thread reads (a loader closed with a read-ahead thread still in a
    read) must not close that descriptor under it: its number could be reused by the next open
    and the read return another file's bytes. The last reader closes it; a later read (the
    loader iterated again) opens its file afresh."""
    import os

    paths = [tmp_path / "a", tmp_path / "b"]
    for p in paths:
        p.write_bytes(b"x" * 64)
    files = PreadFiles(paths, max_open=2)
    assert files.read(1, 0, 4) == b"xxxx"  # (b open and idle)
    with files._fd(0) as busy:  # a read of a in progress
        files.close()
        assert files.open_count == 1 and os.pread(busy, 4, 0) == b"xxxx"
        assert files.read(0, 0, 4) == b"xxxx"  # (a new descriptor: the old one is retired)
        assert files.open_count == 2
    assert files.open_count == 1  # (the retired one closed by its reader)
    with pytest.raises(OSError):
        os.fstat(busy)
    assert files.read(0, 0, 4) == b"xxxx" and files.open_count == 1
    files.close()
    assert files.open_count == 0


def test_pread_files_an_open_racing_close_or_another_open_keeps_no_stray_descriptor(
        tmp_path, monkeypatch):
    """Files are opened outside the lock (a slow open on a network mount). Two threads opening
    the same file keep one descriptor; an open under way when close() runs serves its read and
    is then closed (it was put into the emptied cache and leaked: review)."""
    import os
    import threading

    path = tmp_path / "a"
    path.write_bytes(b"y" * 64)
    gate, arrived, opened = threading.Event(), threading.Semaphore(0), []
    real_open = os.open

    def slow_open(p, flags, *a):
        arrived.release()
        gate.wait(10)
        fd = real_open(p, flags, *a)
        opened.append(fd)
        return fd

    def open_fds():
        return {int(n) for n in os.listdir("/proc/self/fd")}

    def run(files, between):
        got = []
        threads = [threading.Thread(target=lambda: got.append(files.read(0, 0, 2)))
                   for _ in range(2)]
        monkeypatch.setattr(pread.os, "open", slow_open)
        for t in threads:
            t.start()
        for _ in threads:
            assert arrived.acquire(timeout=10)
        between()
        gate.set()
        for t in threads:
            t.join(10)
        monkeypatch.setattr(pread.os, "open", real_open)
        gate.clear()
        assert got == [b"yy", b"yy"]

    before = open_fds()
    files = PreadFiles([path])
    run(files, lambda: None)  # both opened a: one descriptor kept, the other closed
    assert files.open_count == 1 and len(open_fds() - before) == 1
    files.close()
    assert open_fds() == before
    opened.clear()
    run(files, files.close)  # close() while both opens are under way
    assert len(opened) == 2 and files.open_count == 0 and open_fds() == before


def test_pread_files_close_gives_its_share_of_the_budget_back(tmp_path, monkeypatch):
    """Readers without a fixed cap share the process's open-file budget; one that is closed
    (the val loader after its epoch) gives its share back, so the other may keep all of it
    open again instead of reopening files past half of it for the rest of the run."""
    from ffcv_dp4tl.data import resources

    monkeypatch.setattr(resources, "_CLAIMS", ())  # (no readers other tests left alive)
    monkeypatch.setattr(resources, "open_files_budget", lambda: 8)
    paths = []
    for k in range(10):
        paths.append(tmp_path / f"f{k}")
        paths[-1].write_bytes(bytes([k]) * 16)
    a, b = PreadFiles(paths, max_open=None), PreadFiles(paths, max_open=None)
    assert a.read(0, 0, 2) == b.read(0, 0, 2) == bytes([0]) * 2  # (both joined)
    assert b.claim.cap() == 4
    a.close()
    assert b.claim.cap() == 8
    assert [b.read(k, 0, 1) for k in range(10)] == [bytes([k]) for k in range(10)]
    assert b.open_count == 8
    b.close()


def test_pread_files_close_the_least_recently_used_file_not_the_first_opened(tmp_path,
                                                                             monkeypatch):
    """Past ``max_open`` the file read least recently is closed, not the one opened first: a
    file read again and again (the shard an epoch is in) stays open while others come and go,
    instead of being reopened each time."""
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"f{k}")
        paths[-1].write_bytes(bytes([k]) * 16)
    opens = []
    real_open = pread.os.open

    def counting_open(p, flags, *a):
        opens.append(p)
        return real_open(p, flags, *a)

    monkeypatch.setattr(pread.os, "open", counting_open)
    files = PreadFiles(paths, max_open=2)
    for k in (0, 1, 0, 2):
        assert files.read(k, 0, 1) == bytes([k])
    assert set(files._fds) == {0, 2} and files.open_count == 2  # (1: the least recently used)
    assert files.read(0, 0, 1) == bytes([0])
    assert opens == [str(p) for p in paths]  # (each opened once: 0 was never closed)
    files.close()
