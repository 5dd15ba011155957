"""Locks as other processes see them, for the tests of concurrent runs.

Tests import it as ``from lock_probe import exclusive_is_free, ReleaseOnWait`` (``tests/`` is on
``sys.path`` through the rootdir conftest), as they do ``cli_runner``.
"""
from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


def exclusive_is_free(lock: str | os.PathLike) -> bool:
    """Whether a build could take the dataset lock ``lock`` (``--overwrite``, a repair) now."""
    fd = os.open(Path(lock), os.O_RDWR)  # (no lock file: an error, not "free")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class ReleaseOnWait:
    """A holder process (which keeps its locks until its stdin is closed) told to let go a
    moment after :meth:`log` hears a "waiting" line, or after ``give_up_s`` should none come,
    so that a test fails instead of hanging. (A holder that held for a fixed time let a busy
    machine reach the locks after it, and see no holder.)"""

    def __init__(self, holder, give_up_s: float = 60.0):
        self.holder, self.logs = holder, []
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._give_up = threading.Timer(give_up_s, self.release)
        self._give_up.start()

    def release(self) -> None:
        with self._lock:
            if not self.released.is_set():
                self.released.set()
                self.holder.stdin.close()

    def log(self, m: str) -> None:
        self.logs.append(m)
        if "waiting" in m:
            threading.Timer(0.2, self.release).start()

    def end(self) -> None:
        """Let go (if not yet), and wait for the holder to end."""
        self._give_up.cancel()
        self.release()
        try:
            self.holder.wait(30)
        finally:
            self.holder.kill()


def holding(lock: str | os.PathLike, then: str = ""):
    """A process holding ``directory_lock(lock)`` until its stdin is closed (or it is killed);
    returned once it holds it (it has said "held"). ``then``: Python it runs before it lets go
    (``lock`` and ``shutil`` in scope), e.g. deleting the lock's folder."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import shutil, sys\n"
        "from ffcv_dp4tl.locks import directory_lock\n"
        f"lock = {str(lock)!r}\n"
        "with directory_lock(lock, 'x'):\n"
        f"    print('held', flush=True); sys.stdin.read(); {then or 'pass'}\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder
