"""Feature store: round trip, resume after interruption, never-complete partials, metadata."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.scoring import FeatureWriter, is_complete, load_features, meta_path, read_feature_meta


def _feats(rng, n=1000, d=16):
    return rng.standard_normal((n, d)).astype(np.float32)


def test_round_trip_memmap(tmp_path, rng):
    x = _feats(rng)
    path = tmp_path / "feats.npy"
    with FeatureWriter(path, *x.shape, dataset_fingerprint="fp1", surrogate_hash="h1", extra={"layer": "avgpool"}) as w:
        assert w.missing_ranges() == [(0, 1000)]
        for s in range(0, 1000, 128):
            w.write(s, x[s : s + 128])
        w.finalize()
    assert is_complete(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.npy", "feats.npy.json"]
    arr = load_features(path, expect_dataset_fingerprint="fp1", expect_surrogate_hash="h1")
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    np.testing.assert_array_equal(arr, x)
    np.testing.assert_array_equal(load_features(path, mmap=False), x)
    meta = read_feature_meta(path)
    assert (meta["n"], meta["d"], meta["dtype"]) == (1000, 16, "float32")
    assert meta["dataset_fingerprint"] == "fp1" and meta["surrogate_hash"] == "h1"
    assert meta["extra"] == {"layer": "avgpool"}


@pytest.mark.parametrize("mmap", [False, True])
def test_a_store_declaring_more_than_it_holds_is_one_line(tmp_path, rng, mmap):
    """A store whose .npy header was edited to declare 2**40 rows: ``np.load`` (mmap=False)
    allocated the declared array before reading, a MemoryError traceback. It is read through
    ``fsutil.load_npy``: one line naming the store."""
    x = _feats(rng, n=8)
    path = tmp_path / "feats.npy"
    with FeatureWriter(path, *x.shape, dataset_fingerprint="fp") as w:
        w.write(0, x)
        w.finalize()
    with open(path, "r+b") as f:  # the header rewritten in place, the data kept
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (1 << 40, 16)})
    with pytest.raises(DataError) as e:
        load_features(path, mmap=mmap)
    assert str(e.value).startswith(f"cannot read feature store {path} (ValueError: its header "
                                   "declares shape"), e.value
    assert "\n" not in str(e.value)


def test_interrupted_write_never_looks_complete_and_resumes(tmp_path, rng):
    x = _feats(rng)
    path = tmp_path / "feats.npy"

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with FeatureWriter(path, *x.shape, dataset_fingerprint="fp", checkpoint_rows=100) as w:
            w.write(0, x[:300])
            w.write(600, x[600:700])
            raise Boom  # e.g. killed mid-extraction
    assert not is_complete(path) and not path.exists()
    with pytest.raises(DataError, match="missing"):
        load_features(path)

    w = FeatureWriter(path, *x.shape, dataset_fingerprint="fp")
    assert w.missing_ranges() == [(300, 600), (700, 1000)]
    assert w.rows_written == 400
    with pytest.raises(DataError, match="600 of 1000 rows were never written .first missing rows 300..599"):
        w.finalize()
    for a, b in w.missing_ranges():
        w.write(a, x[a:b])
    w.finalize()
    np.testing.assert_array_equal(load_features(path), x)

    # Reopening a complete store with the same metadata: nothing to do.
    again = FeatureWriter(path, *x.shape, dataset_fingerprint="fp")
    assert again.done and again.missing_ranges() == []
    with pytest.raises(DataError, match="already complete"):
        again.write(0, x[:1])


def test_progress_without_checkpoint_is_not_trusted(tmp_path, rng):
    """Rows written after the last checkpoint are redone (progress never over-claims)."""
    x = _feats(rng, n=100)
    path = tmp_path / "f.npy"
    w = FeatureWriter(path, 100, 16, checkpoint_rows=50)
    w.write(0, x[:60])  # checkpoint at 60 rows
    w.write(60, x[60:70])  # not checkpointed; simulate a crash (no close)
    del w
    w2 = FeatureWriter(path, 100, 16)
    assert w2.missing_ranges() == [(60, 100)]


def test_different_metadata_restarts_partial_and_protects_complete(tmp_path, rng):
    x = _feats(rng, n=50)
    path = tmp_path / "f.npy"
    with FeatureWriter(path, 50, 16, surrogate_hash="a") as w:
        w.write(0, x[:20])
    w = FeatureWriter(path, 50, 16, surrogate_hash="b")  # other surrogate: partial discarded
    assert w.missing_ranges() == [(0, 50)]
    w.write(0, x)
    w.finalize()
    with pytest.raises(DataError, match="different metadata .*surrogate_hash: 'b' != 'c'"):
        FeatureWriter(path, 50, 16, surrogate_hash="c")
    with pytest.raises(DataError, match="surrogate_hash='b', expected 'c'.*stale"):
        load_features(path, expect_surrogate_hash="c")
    fresh = FeatureWriter(tmp_path / "g.npy", 50, 16, resume=False)
    assert fresh.rows_written == 0


def test_array_without_sidecar_is_incomplete(tmp_path, rng):
    path = tmp_path / "f.npy"
    np.save(path, _feats(rng, n=10))
    assert not is_complete(path)
    with pytest.raises(DataError, match="incomplete .no metadata"):
        load_features(path)


def test_corrupt_or_mismatched_store(tmp_path, rng):
    x = _feats(rng, n=10)
    path = tmp_path / "f.npy"
    w = FeatureWriter(path, 10, 16)
    w.write(0, x)
    w.finalize()
    meta = json.loads(meta_path(path).read_text())
    meta["n"] = 11
    meta_path(path).write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"holds \(10, 16\) float32 but its metadata says \(11, 16\)"):
        load_features(path)
    meta_path(path).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_features(path)
    meta["n"] = 10
    meta_path(path).write_text(json.dumps(meta))
    path.write_bytes(b"")  # emptied (a full disk): numpy raises EOFError, which click made "aborted"
    with pytest.raises(DataError, match=r"cannot read feature store .*f.npy \(EOFError: .*\); "
                                        r"delete it and re-extract"):
        load_features(path)


def test_writer_input_errors(tmp_path, rng):
    w = FeatureWriter(tmp_path / "f.npy", 10, 4, dtype="float16")
    with pytest.raises(DataError, match=r"shape \(rows, 4\)"):
        w.write(0, np.zeros((2, 3)))
    with pytest.raises(DataError, match="outside the store's 10 rows"):
        w.write(9, np.zeros((2, 4)))
    w.write(0, np.ones((10, 4)))
    w.finalize()
    assert load_features(tmp_path / "f.npy").dtype == np.float16
    with pytest.raises(DataError, match="dtype must be one of"):
        FeatureWriter(tmp_path / "g.npy", 10, 4, dtype="int8")
    with pytest.raises(DataError, match="size n must be a positive int"):
        FeatureWriter(tmp_path / "g.npy", 0, 4)


def _no_space(*a, **k):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_an_error_naming_the_partial_store_before_any_row_is_written(
        tmp_path, rng, monkeypatch):
    """The store was a sparse file written through a memory map: a disk that filled while it
    was written killed the run with SIGBUS ("Bus error", exit 135, no message; audit, FM on a
    full tmpfs). Its blocks are now reserved (posix_fallocate) when it is created, so a full
    disk is an OSError naming the .partial file, the CLI's one disk-full line, before any work;
    nothing is left behind. A resumed store reserves its holes the same way and keeps its rows."""

    from ffcv_dp4tl.fsutil import os_error_line

    from ffcv_dp4tl import fsutil
    from ffcv_dp4tl.scoring import features as features_mod

    path = tmp_path / "feats.npy"
    calls = []
    real = fsutil.reserve_blocks
    monkeypatch.setattr(features_mod, "reserve_blocks", lambda fd, n: calls.append(n) or real(fd, n))
    with FeatureWriter(path, 1000, 16) as w:
        w.write(0, _feats(rng, 500))
    data = tmp_path / "feats.npy.partial"
    assert calls == [data.stat().st_size]  # the whole file, header included
    assert data.stat().st_blocks * 512 >= data.stat().st_size  # reserved: no longer sparse
    monkeypatch.setattr(features_mod, "reserve_blocks", _no_space)
    with pytest.raises(OSError) as e:  # resuming: the rows written stay
        FeatureWriter(path, 1000, 16)
    assert e.value.filename == str(data)
    assert data.is_file() and (tmp_path / "feats.npy.progress.npy").is_file()
    fresh = tmp_path / "fresh.npy"
    with pytest.raises(OSError) as e:
        FeatureWriter(fresh, 1000, 16)
    line = os_error_line(e.value)
    assert line.startswith(f"disk full writing {tmp_path / 'fresh.npy.partial'} (No space left on "
                           "device: the feature store needs 0.1 MiB, "), line
    assert line.endswith("free some space, then rerun the same command: finished work is kept "
                         "and it resumes")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("fresh")]  # nothing left


@pytest.mark.parametrize("code", ["EOPNOTSUPP", "ENOSYS", "EINVAL"])
def test_where_blocks_cannot_be_reserved_the_free_space_is_checked(tmp_path, monkeypatch, code):
    import errno
    import shutil

    import ctypes

    from ffcv_dp4tl import fsutil

    def unsupported(fd, mode, offset, length):  # (the file system's answer, as glibc gives it)
        ctypes.set_errno(getattr(errno, code))
        return -1

    monkeypatch.setattr(fsutil, "_libc_fallocate", lambda: unsupported)
    with FeatureWriter(tmp_path / "ok.npy", 100, 4) as w:  # (room enough: it goes on)
        assert w.missing_ranges() == [(0, 100)]
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(DataError, match=r"^not enough space for the feature store "
                                        r"full\.npy\.partial in .*: needs ~\d+ MiB, 0 MiB free; "
                                        r"free some space, then rerun \(it resumes\)$"):
        FeatureWriter(tmp_path / "full.npy", 100_000, 64)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("full")]
