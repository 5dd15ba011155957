"""fsutil: output folders checked before work, short writes reported as a full disk."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.fsutil import atomic_save_npy, check_out_dir, os_error_line


def test_a_short_write_on_an_almost_full_disk_is_enospc(tmp_path):
    """A real short write: the child may write at most 2,000 bytes per file (RLIMIT_FSIZE, the
    kernel then returns a short count, as on a full disk); numpy reports it as
    'N requested and M written' with no errno, which must come out as ENOSPC naming the file."""
    code = f"""
import errno, resource, signal
from ffcv_dp4tl.fsutil import atomic_save_npy
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
try:
    atomic_save_npy({str(tmp_path / 'm.npy')!r}, np.arange(1000, dtype=np.int64))
except OSError as e:
    print(e.errno == errno.ENOSPC, e.filename, e.strerror)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr
    ok, name, why = r.stdout.strip().split(" ", 2)
    assert ok == "True" and name == str(tmp_path / "m.npy"), r.stdout
    assert why.startswith("No space left on device (short write: ") and "written" in why
    assert not (tmp_path / "m.npy").exists() and not list(tmp_path.glob(".*tmp*"))
    atomic_save_npy(tmp_path / "m.npy", np.arange(1000))  # with room, the same write works


def test_output_folders_that_cannot_be_are_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(DataError, match=r"--out .*afile is a file, not a folder; choose a folder"):
        check_out_dir(f)
    with pytest.raises(DataError, match=r"--runs-root .*afile/x/y: .*afile is a file, so no folder "
                                        r"can be made there; choose another path"):
        check_out_dir(f / "x" / "y", "--runs-root")
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_a_file_that_may_not_be_read_is_not_called_unwritable(tmp_path, monkeypatch):
    """EACCES on a file the user may not read (``chmod 000 manifest.json``) says "cannot read"
    and to fix its permissions; it used to say "cannot write ... choose a writable folder"."""
    import ffcv_dp4tl.fsutil as fsutil

    f = tmp_path / "manifest.json"
    f.write_text("{}")
    monkeypatch.setattr(fsutil.os, "access", lambda p, mode: mode != os.R_OK)  # (tests run as root)
    assert os_error_line(OSError(errno.EACCES, "Permission denied", str(f))) == (
        f"cannot read {f} (Permission denied); fix its permissions, or run as a user who may "
        "read it")


def test_environment_errors_read_as_one_line():
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "/data/ds/.build.lock")) == \
        ("cannot write /data/ds/.build.lock (Read-only file system); choose a writable folder or fix "
         "its permissions")
    assert os_error_line(OSError(errno.ENOTDIR, "Not a directory", "afile/source")).startswith(
        "cannot use afile/source (Not a directory): a file is where a folder should be")
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device", "/r/x.npy")).startswith(
        "disk full writing /r/x.npy (No space left on device); free some space")
    assert os_error_line(OSError(errno.EMFILE, "Too many open files", "ds/wds/val-000003.tar")) == (
        "too many open files opening ds/wds/val-000003.tar (Too many open files); raise the limit "
        "(`ulimit -n 65536`) or use fewer loader workers, then rerun the same command: it resumes")


def test_check_out_file_refuses_a_folder_or_a_bad_parent(tmp_path):
    """An output file (--report) that is a folder, or whose folder cannot be one (a file in the
    path), is refused before any work, naming the option."""
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.fsutil import check_out_file

    assert check_out_file(tmp_path / "new" / "B.md", "--report") == tmp_path / "new" / "B.md"
    with pytest.raises(DataError, match="--report .* is a folder, not a file"):
        check_out_file(tmp_path, "--report")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="--report .*afile is a file"):
        check_out_file(tmp_path / "afile" / "B.md", "--report")


def test_atomically_written_files_get_the_umask_permissions(tmp_path):
    """A file written atomically ends with the permissions a plain ``open`` would give it
    (0o666 minus the umask), not the temporary file's private 0o600: datasets, masks and
    reports built by one user stay readable by the others on a shared cluster."""
    import stat

    from ffcv_dp4tl.fsutil import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_save_npy(tmp_path / "m.npy", np.arange(3))
    finally:
        os.umask(old)
    for name in ("a.json", "m.npy"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


def test_a_stop_signal_at_any_point_of_an_atomic_write_leaves_the_old_file_and_no_temporary(
        tmp_path):
    """Ctrl-C or SIGTERM raises between any two lines of Python. One that landed after the
    temporary file was made but before its cleanup was armed left it behind (CI: a SIGTERMed
    training job's ``.timings.json.*.tmp``). Here KeyboardInterrupt is raised at the k-th
    line run inside the write (its library calls included), for every k until it completes."""
    from ffcv_dp4tl.fsutil import atomic_write_json

    target = tmp_path / "timings.json"
    atomic_write_json(target, {"old": 1})
    before = target.read_text()
    k = 0
    while True:
        k += 1
        seen = [0]

        def tracer(frame, event, arg):
            if event == "line":
                seen[0] += 1
                if seen[0] == k:
                    raise KeyboardInterrupt
            return tracer

        sys.settrace(tracer)
        try:
            atomic_write_json(target, {"new": 2})
        except KeyboardInterrupt:
            interrupted = True
        else:
            interrupted = False
        finally:
            sys.settrace(None)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == ["timings.json"], (k, left)
        if not interrupted:
            break
        assert target.read_text() == before or json.loads(target.read_text()) == {"new": 2}, k
    assert k > 10 and json.loads(target.read_text()) == {"new": 2}


def test_a_full_disk_in_an_atomic_write_names_the_file(tmp_path):
    """np.save and json.dump write through a file object, so their OSError names no path:
    `prune`, `mask classes`, `mask files` and `vtab-splits` on a full disk said only "disk full"
    (review). atomic_path gives such an error the file it was writing, under its final name."""
    from ffcv_dp4tl.fsutil import atomic_path

    target = tmp_path / "masks" / "train.npy"
    with pytest.raises(OSError) as e:
        with atomic_path(target, suffix=".npy"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert os_error_line(e.value).startswith(f"disk full writing {target} (No space left on device)")
    assert not list(target.parent.iterdir())  # (its temporary file removed)
    with pytest.raises(OSError) as e:  # a path it names already stays
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device", "/elsewhere/x")
    assert e.value.filename == "/elsewhere/x"


@pytest.mark.parametrize("text, why", [
    ("[" * 3000 + "]" * 3000, "nested too deeply)"),
    ('{"num_samples": ' + "9" * 5000 + "}", "it holds an integer of more than 4300 digits)")])
def test_json_the_parser_cannot_hold_is_one_line_naming_the_file(tmp_path, text, why):
    """A small file nested a few thousand levels deep, or holding an integer of over 4,300
    digits, raised RecursionError or ValueError through every command reading it (manifest,
    mask sidecar, scores; audit): one line naming the file, without Python's own advice."""
    from ffcv_dp4tl.fsutil import read_json

    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        read_json(path, "manifest", fix="restore it")
    msg = str(e.value)
    assert msg.startswith(f"manifest {path} cannot be read ({why}") and "\n" not in msg, msg
    assert msg.endswith("; restore it") and "set_int_max_str_digits" not in msg, msg


def forged_npy(path, shape=(1 << 40,), descr="<i8"):
    """A .npy of a few bytes whose header declares ``shape`` (numpy allocates it before reading)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(b"\0" * 64)
    return path


def test_load_npy_refuses_a_header_declaring_more_than_the_file_holds(tmp_path):
    """np.load allocates the declared array first: a 192-byte file declaring 4e9 items raised
    MemoryError (a traceback past every caller's ValueError/OSError handling)."""
    from ffcv_dp4tl.fsutil import load_npy

    for mmap_mode in (None, "r"):
        with pytest.raises(ValueError, match=r"declares shape \(1099511627776,\) of int64 "
                                             r"\(8796093022208 bytes\) but the file holds 64 bytes"):
            load_npy(forged_npy(tmp_path / "f.npy"), mmap_mode)
    np.save(tmp_path / "ok.npy", np.arange(8, dtype=np.int64))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    assert load_npy(tmp_path / "ok.npy").tolist() == list(range(8))
    assert load_npy(tmp_path / "empty.npy", "r").shape == (0, 3)
    os.mkfifo(tmp_path / "fifo.npy")
    with pytest.raises(ValueError, match="not a regular file"):
        load_npy(tmp_path / "fifo.npy")


def test_load_npy_reads_the_file_it_checked_not_the_name_again(tmp_path, monkeypatch):
    """The header was checked on one open file, then ``np.load(path)`` opened the name again:
    whatever replaced the file between the two was read unchecked. Without mmap the array now
    comes from the checked file object; a .npz archive (no array) is refused in one line."""
    from ffcv_dp4tl import fsutil

    np.save(tmp_path / "ok.npy", np.arange(8, dtype=np.int64))
    seen = []
    real = np.load
    monkeypatch.setattr(fsutil.np, "load", lambda f, *a, **k: seen.append(f) or real(f, *a, **k))
    assert fsutil.load_npy(tmp_path / "ok.npy").tolist() == list(range(8))
    assert len(seen) == 1 and not isinstance(seen[0], (str, os.PathLike)), seen
    np.savez(tmp_path / "x.npz", a=np.arange(3))
    with pytest.raises(ValueError, match=r"^an \.npz archive \(np\.savez\), not a \.npy array file$"):
        fsutil.load_npy(tmp_path / "x.npz")


def test_a_figure_is_saved_atomically_never_through_a_link_at_its_name(tmp_path):
    """``fig.savefig(path)`` wrote through a symlink left at that name: rendering a folder
    copied from someone else (``cp -r`` keeps links) replaced whatever file the link named
    (audit). The figure is rendered in memory and replaces the name; the linked file stays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ffcv_dp4tl.fsutil import atomic_save_figure

    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    png = tmp_path / "accuracy.png"
    png.symlink_to(victim)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    atomic_save_figure(fig, png, dpi=50)
    plt.close(fig)
    assert victim.read_text() == "precious"
    assert not png.is_symlink() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig, _ = plt.subplots()
    atomic_save_figure(fig, tmp_path / "f.svg")  # (the format follows the suffix)
    plt.close(fig)
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:400]


def test_a_full_dev_shm_is_named_when_an_enospc_names_no_file(monkeypatch):
    """The loader workers' semaphores live in /dev/shm: a container's small /dev/shm filled and
    the ENOSPC, naming no file, read "disk full (No space left on device)" with no place (audit).
    With little shared memory free the line says so and what to do; else it stays as it was."""
    import collections
    import shutil

    from ffcv_dp4tl import fsutil

    usage = collections.namedtuple("usage", "total used free")
    asked = []

    def shm(free):
        def disk_usage(path):
            asked.append(str(path))
            return usage(64 * 2**20, 64 * 2**20 - free, free)
        return disk_usage

    bare = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(shutil, "disk_usage", shm(0))
    assert os_error_line(bare) == (
        "shared memory (/dev/shm) is full (0 MiB free; No space left on device): free it (delete "
        "what stopped runs left there), or give the container more shared memory (docker run "
        "--shm-size=8g), or use fewer loader workers; then rerun the same command: finished work "
        "is kept and it resumes")
    assert asked == ["/dev/shm"]
    # a named file is the disk's, whatever /dev/shm holds
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device", "/r/x.npy")).startswith(
        "disk full writing /r/x.npy")
    monkeypatch.setattr(shutil, "disk_usage", shm(fsutil.SHM_LOW))  # room there: the disk's
    assert os_error_line(bare).startswith("disk full (No space left on device); free some space")

    def absent(path):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    monkeypatch.setattr(shutil, "disk_usage", absent)  # (no /dev/shm at all)
    assert os_error_line(bare).startswith("disk full (No space left on device); free some space")


def test_a_write_whose_folder_is_gone_says_it_disappeared(tmp_path):
    gone = tmp_path / "run" / "metrics.jsonl"
    e = FileNotFoundError(errno.ENOENT, "No such file or directory", str(gone))
    assert os_error_line(e, writing=True).startswith(
        f"the folder {tmp_path / 'run'} disappeared during the run (deleted or unmounted)")
    # a read, or a write whose folder is there, is as before
    assert os_error_line(e) == f"not found: {gone} (No such file or directory); check the path"
    (tmp_path / "run").mkdir()
    assert os_error_line(e, writing=True).startswith("not found: ")


def test_reserve_blocks_allocates_a_sparse_file_without_writing_it(tmp_path):
    """What the feature store relies on: after it, the file holds its blocks (a full disk can
    no longer SIGBUS a memory-mapped write), and its bytes are still zero."""
    from ffcv_dp4tl.fsutil import reserve_blocks

    path = tmp_path / "store"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    assert path.stat().st_blocks == 0  # sparse
    with open(path, "rb+") as f:
        assert reserve_blocks(f.fileno(), 1 << 20) is True
    assert path.stat().st_blocks * 512 >= 1 << 20
    assert path.stat().st_size == 1 << 20 and path.read_bytes() == bytes(1 << 20)


def _libc_answering(code: int, calls: list | None = None, *, times: int = 10**9):
    """A stand-in for glibc's fallocate that fails with ``code`` (its first ``times`` calls),
    as a file system gives it: -1 and errno."""
    import ctypes

    def fallocate(fd, mode, offset, length):
        if calls is not None:
            calls.append((mode, offset, length))
        if len(calls or [None]) <= times:
            ctypes.set_errno(code)
            return -1
        return 0

    return fallocate


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_reserve_blocks_says_cannot_where_the_file_system_has_no_fallocate(tmp_path, monkeypatch,
                                                                           code):
    """Not glibc's posix_fallocate, which on such a file system (NFSv3, some FUSE mounts)
    emulates the reservation by writing a byte into every 4 KiB block, minutes for a store of
    gigabytes over a network: the caller is told at once and checks the free space instead.
    Nothing is written."""
    from ffcv_dp4tl import fsutil

    monkeypatch.setattr(fsutil, "_libc_fallocate", lambda: _libc_answering(code))
    path = tmp_path / "store"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    with open(path, "rb+") as f:
        assert fsutil.reserve_blocks(f.fileno(), 1 << 20) is False
    assert path.stat().st_blocks == 0


def test_reserve_blocks_raises_a_full_disk_or_quota_and_retries_a_signal(tmp_path, monkeypatch):
    from ffcv_dp4tl import fsutil

    for code in (errno.ENOSPC, errno.EDQUOT):
        monkeypatch.setattr(fsutil, "_libc_fallocate", lambda c=code: _libc_answering(c))
        with pytest.raises(OSError) as e:
            fsutil.reserve_blocks(0, 4096)
        assert e.value.errno == code
    calls: list = []
    monkeypatch.setattr(fsutil, "_libc_fallocate", lambda: _libc_answering(errno.EINTR, calls,
                                                                            times=2))
    assert fsutil.reserve_blocks(0, 4096) is True
    assert calls == [(0, 0, 4096)] * 3  # mode 0 (allocate), the whole file, twice interrupted


def test_reserve_blocks_is_false_without_glibc(monkeypatch):
    from ffcv_dp4tl import fsutil

    monkeypatch.setattr(fsutil, "_libc_fallocate", lambda: None)
    assert fsutil.reserve_blocks(0, 4096) is False


def test_an_fsync_that_fails_names_the_file(tmp_path, monkeypatch):
    """``os.fsync`` on a descriptor raises an OSError naming no file (a full disk, audit):
    :func:`fsutil.fsync_path` names it."""
    from ffcv_dp4tl import fsutil

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", full)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(OSError) as e:
        fsutil.fsync_path(tmp_path / "f")
    assert e.value.filename == str(tmp_path / "f")
    assert os_error_line(e.value).startswith(f"disk full writing {tmp_path / 'f'}")
