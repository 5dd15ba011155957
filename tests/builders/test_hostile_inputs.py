"""Inputs and environments a build must survive with one clear line, never a hang or a
traceback (issue 21): FIFOs among the images, an --out inside the input folder, a read-only
folder, a Ctrl-C swallowed by native code, images edited in place, decode memory bombs."""
from __future__ import annotations

import errno
import os
import signal
import struct
import time
import zlib
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import beton_builders.writer as writer
from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset
from beton_builders.encode import MAX_DECODE_BYTES, encode_sample
from beton_builders.layouts import read_layout
from ffcv_dp4tl import fsutil
from ffcv_dp4tl.errors import DataError

OPTS = BuildOptions(max_side=32, shard_size=4, workers=1, progress=False)


def _folder(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _spec(n=8):
    rng = np.random.default_rng(0)
    return DatasetSpec("s", ["a", "b"], {"train": [Sample(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), k % 2)
                                                   for k in range(n)]})


@pytest.fixture
def ctrl_c(request):
    """SIGINT set to ``request.param`` (Python's own handler, or ignored) for the test, then
    back as it was: the suite may run as a background job of a script, which bash starts with
    SIGINT ignored, and a build now keeps that (a Ctrl-C test needs Python's handler)."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, getattr(request, "param", signal.default_int_handler))
    yield
    signal.signal(signal.SIGINT, before)


def test_a_fifo_among_the_images_is_skipped_with_a_reason_not_read(tmp_path, alarm):
    src = _folder(tmp_path / "F")
    os.mkfifo(src / "a" / "pipe.jpg")  # no writer: a plain open() would block forever
    assert encode_sample(src / "a" / "pipe.jpg", 32, 90) == \
        "not a regular file (a FIFO (named pipe)); only regular files are read"
    summary = build_dataset(read_layout("folder", src), tmp_path / "O", OPTS, source=f"folder:{src}")
    assert [(s.num_samples, s.num_rejected) for s in summary.splits] == [(6, 1)]
    rejects = (tmp_path / "O" / "rejects.txt").read_text()
    assert "pipe.jpg\tnot a regular file (a FIFO (named pipe))" in rejects


def test_a_symlink_to_a_regular_image_is_still_read(tmp_path):
    src = _folder(tmp_path / "F")
    os.symlink(src / "b" / "0.png", src / "a" / "link.png")
    assert not isinstance(encode_sample(src / "a" / "link.png", 32, 90), str)


def test_out_inside_the_input_folder_is_refused_before_any_work(tmp_path):
    src = _folder(tmp_path / "X")
    with pytest.raises(DataError, match=r"--out .*X/built lies inside the input folder .*X: .*choose "
                                        "another --out, outside it$"):
        build_dataset(read_layout("folder", src), src / "built", OPTS, source=f"folder:{src}")
    assert not (src / "built").exists()
    build_dataset(read_layout("folder", src), tmp_path / "built", OPTS, source=f"folder:{src}")
    # and the rerun a user makes works (the old behaviour failed here, on the second run)
    assert build_dataset(read_layout("folder", src), tmp_path / "built", OPTS,
                         source=f"folder:{src}").skipped


def _read_only(monkeypatch):
    def erofs(path, *_, **__):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(writer, "build_lock", erofs)


def test_a_finished_build_on_a_read_only_folder_is_used(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    build_dataset(_spec(), out, OPTS)
    _read_only(monkeypatch)  # the lock file cannot be created: EROFS, as on a read-only mount
    summary = build_dataset(_spec(), out, OPTS)
    assert summary.skipped and summary.splits[0].num_samples == 8


def test_an_unfinished_or_different_build_on_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    out.mkdir()
    _read_only(monkeypatch)
    with pytest.raises(DataError, match=r"cannot write to .*ds \(Read-only file system\) and it holds "
                                        "no finished build of this source; choose a writable --out"):
        build_dataset(_spec(), out, OPTS)


def test_a_read_only_folder_names_the_callers_option(tmp_path, monkeypatch):
    """The pipeline chooses the build folder with --data-root and has no --out: its read-only
    data root said "choose a writable --out"."""
    out = tmp_path / "ds"
    out.mkdir()
    _read_only(monkeypatch)
    with pytest.raises(DataError, match=r"no finished build of this source; choose a writable "
                                        r"--data-root$"):
        build_dataset(_spec(), out, OPTS, option="--data-root")
    monkeypatch.undo()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"is not empty and is not a dp4tl build: choose another "
                                        r"--data-root "):
        build_dataset(_spec(), out, OPTS, option="--data-root")


def test_other_builds_messages_carry_the_callers_remedy(tmp_path):
    out = tmp_path / "ds"
    build_dataset(_spec(), out, OPTS)
    with pytest.raises(DataError, match="already holds a different build.*; delete it or pass another --data-root$"):
        build_dataset(_spec(9), out, OPTS, remedy="delete it or pass another --data-root")
    with pytest.raises(DataError, match="pass --overwrite to replace it, or choose another --out"):
        build_dataset(_spec(9), out, OPTS)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_swallowed_by_native_code_still_stops_the_build(tmp_path, monkeypatch, signum,
                                                               ctrl_c):
    """numba/llvmlite can eat the KeyboardInterrupt of a Ctrl-C (or of a scheduler's SIGTERM);
    the build must not run on to a manifest (rc 0) but stop, and a rerun resumes."""
    from ffcv_dp4tl import stopping

    real = writer.write_beton

    def swallowing(*a, **k):
        try:
            os.kill(os.getpid(), signum)
            for _ in range(100):  # the handler runs between bytecodes
                pass
        except KeyboardInterrupt:
            pass  # what native code does with it
        return real(*a, **k)

    monkeypatch.setattr(writer, "write_beton", swallowing)
    monkeypatch.setattr(stopping, "_RECEIVED", [])
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        build_dataset(_spec(), out, OPTS)
    assert not (out / "manifest.json").exists() and not (out / "train.beton").exists()
    assert stopping.received() == signum  # what the CLI's one line and exit status name
    # the caller's handlers restored (SIGINT: SIG_IGN when the suite runs as a background job)
    assert {s: signal.getsignal(s) for s in before} == before
    monkeypatch.setattr(writer, "write_beton", real)
    assert build_dataset(_spec(), out, OPTS).splits[0].num_samples == 8


@pytest.mark.parametrize("ctrl_c", [signal.SIG_IGN], indirect=True, ids=["sigint-ignored"])
def test_a_build_keeps_an_inherited_ignored_ctrl_c(tmp_path, monkeypatch, ctrl_c):
    """bash starts a script's background jobs with SIGINT ignored; `dp4tl pipeline` keeps that
    (ffcv_dp4tl.stopping), but the build installed its Ctrl-C handler over it, so `kill -INT`
    stopped a background `dp4tl build` with status 130. The build now runs on past the SIGINT
    and leaves it ignored (SIGTERM still stops it: tests/builders/test_build_safety.py)."""
    from ffcv_dp4tl import stopping

    real = writer.write_beton
    seen = []

    def signalled(*a, **k):
        seen.append(signal.getsignal(signal.SIGINT))
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):  # (a handler would run between these bytecodes)
            pass
        return real(*a, **k)

    monkeypatch.setattr(writer, "write_beton", signalled)
    monkeypatch.setattr(stopping, "_RECEIVED", [])
    try:
        summary = build_dataset(_spec(), tmp_path / "ds", OPTS)
    except KeyboardInterrupt:  # (caught: pytest would end the whole session on it)
        pytest.fail("the ignored Ctrl-C stopped the build")
    assert summary.splits[0].num_samples == 8 and (tmp_path / "ds" / "manifest.json").exists()
    assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert stopping.received() is None


def _sleep_until_killed():
    import time

    time.sleep(30)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_ends_forked_writer_workers_quietly(signum, ctrl_c):
    """Ctrl-C reaches the whole process group (a scheduler's SIGTERM every process of the
    job), ffcv's forked beton writers included. They inherited the build's Ctrl-C handler;
    raising KeyboardInterrupt there printed one traceback per worker (~130 lines). A forked
    worker now exits at once, silently (Ctrl-C: status 130), or dies of SIGTERM, whose default
    action it starts with (a pool's terminate() relies on it), and only the parent reports."""
    import multiprocessing as mp

    with writer._stop_guard():
        child = mp.get_context("fork").Process(target=_sleep_until_killed)
        child.start()
        time.sleep(0.5)
        os.kill(child.pid, signum)
        child.join(timeout=20)
    # a KeyboardInterrupt traceback would exit with 1
    assert child.exitcode == (130 if signum == signal.SIGINT else -signal.SIGTERM)
    assert not writer._Interrupted.flag


def test_free_space_needed_does_not_grow_with_workers(tmp_path, monkeypatch):
    from beton_builders.beton import beton_workers

    assert beton_workers(200, 48) == 1 and beton_workers(2, 1000) == 2 and beton_workers(0, 5) == 1
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 40 * 2**20))
    opts = BuildOptions(max_side=32, shard_size=4, workers=200, progress=False)
    # 200 open pages would ask for 1.6 GiB; two pages (one writer + header) fit in 40 MiB
    summary = build_dataset(_spec(), tmp_path / "ds", opts)
    assert summary.splits[0].num_samples == 8


def test_an_image_edited_in_place_warns_on_the_next_run(tmp_path):
    src = _folder(tmp_path / "F")
    out = tmp_path / "O"
    build_dataset(read_layout("folder", src), out, OPTS, source=f"folder:{src}")
    again = build_dataset(read_layout("folder", src), out, OPTS, source=f"folder:{src}")
    assert again.skipped and again.warnings == []
    edited = src / "b" / "1.png"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(edited)  # same name, new content
    os.utime(edited, ns=(1, 1))
    again = build_dataset(read_layout("folder", src), out, OPTS, source=f"folder:{src}")
    assert again.skipped and len(again.warnings) == 1
    assert f"1 input file(s) changed size or modification time since {out} was built ({edited})" \
        in again.warnings[0]
    assert again.warnings[0].endswith("the built data is stale; to use the new files, pass "
                                      "--overwrite to replace it, or choose another --out")
    # the pipeline has no --overwrite: its warning names the way it rebuilds (review)
    again = build_dataset(read_layout("folder", src), out, OPTS, source=f"folder:{src}",
                          remedy=f"delete {out} to rebuild it there, or pass another --data-root")
    assert again.warnings[0].endswith(f"to use the new files, delete {out} to rebuild it there, "
                                      "or pass another --data-root")


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A valid PNG signature + IHDR (1-bit grey, w x h) + a tiny IDAT: what PIL reads at open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_decode_is_bounded_by_memory_not_only_by_pixels(tmp_path):
    """A 1-bit 19999^2 PNG (a few KB) passes PIL's pixel limit (it only warns below twice the
    limit) and would take 1.2 GB as RGB: rejected from its header, nothing decoded."""
    p = tmp_path / "bomb.png"
    _png_header_only(p, 19999, 19999)
    reason = encode_sample(p, 256, 90)
    assert reason == ("too large to decode: 19999x19999 px would take 1,144 MiB as RGB "
                      f"(limit {MAX_DECODE_BYTES / 2**20:,.0f} MiB per image)")
    ok = tmp_path / "ok.png"
    Image.new("1", (300, 200)).save(ok)
    assert not isinstance(encode_sample(ok, 256, 90), str)
