"""Directory locks: one writer of a folder at a time, and readers that keep writers out.

Two processes writing one dataset or runs folder corrupt each other's files, and a build that
replaces a dataset a training reads loses that training's work. A folder's writer holds an
exclusive ``fcntl.flock`` on its lock file, its readers a shared one (:func:`directory_lock`).
A flock dies with its process (kill -9 included), so a crashed run never leaves a stale lock;
the holder writes ``host:pid start`` into the file, which a refusal or a wait names; a wait
polls, says who it waits for every few minutes, and gives up at ``$DP4TL_LOCK_TIMEOUT``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

from .fsutil import is_disk_full, is_unwritable, naming

#: what flock() says on a file system that has no locks
_NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


#: descriptors of the locks this process holds (:func:`directory_lock`), closed in every child
#: it forks: a flock belongs to the open file, which a fork shares, so a data-loader worker kept
#: a killed (kill -9) run's lock until it noticed its parent was gone (about 5 s), and an
#: immediate rerun was refused naming the dead process
_HELD_LOCKS: set[int] = set()


def _close_locks_in_child() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)

#: seconds between two tries of a waiting :func:`directory_lock` (a non-blocking poll: a blocking
#: flock said nothing more, ever, behind a holder that was suspended or hung; tests shorten it)
LOCK_POLL_S = 1.0
#: seconds between two "still waiting" lines of a waiting :func:`directory_lock`
LOCK_HEARTBEAT_S = 300.0
#: the environment variable giving up a lock wait after that many seconds (unset: wait forever)
LOCK_TIMEOUT_ENV = "DP4TL_LOCK_TIMEOUT"


def lock_timeout() -> float | None:
    """``$DP4TL_LOCK_TIMEOUT`` in seconds (unset, blank or 0: None, wait forever): a job array on
    a cluster wants a waiter behind a suspended or hung holder to end, not to hold its slot."""
    from .errors import DataError

    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else 0.0
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise DataError(f"{LOCK_TIMEOUT_ENV}={text!r} is not a number of seconds; set it to one "
                        "(e.g. 3600), or unset it to wait for a lock forever")
    return value or None


@dataclasses.dataclass
class LockHolder:
    """Who holds a lock, as its lock file says (``host:pid start``, written by the holder):
    a bare pid on a cluster did not say which machine to look at."""
    pid: str
    host: str = ""
    since: str = ""  # the holder's start, "YYYY-MM-DD HH:MM:SS"

    @classmethod
    def read(cls, fd: int, lock_file: Path) -> LockHolder:
        with naming(lock_file):
            text = os.pread(fd, 256, 0).decode(errors="replace").strip()
        who, _, since = text.partition(" ")
        host, _, pid = who.rpartition(":")
        return cls(pid or "unknown", host, since.replace("T", " "))

    @staticmethod
    def mine() -> str:
        """What a holder writes into its lock file: ``host:pid YYYY-MM-DDTHH:MM:SS``."""
        return f"{socket.gethostname()}:{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}"

    def __str__(self) -> str:  # "(pid 12) on host n1" reads after "another dp4tl run"
        return f"(pid {self.pid})" + (f" on host {self.host}" if self.host else "")


@dataclasses.dataclass
class LockWait:
    """What :func:`directory_lock` yields: the holder it waited for (None: it waited for nobody)
    and how long, so a caller can say what became of that holder (a stage taken over)."""
    holder: LockHolder | None = None
    seconds: float = 0.0


def _try_lock(fd: int, mode: int, lock_file: Path) -> str:
    """One non-blocking try of ``mode`` on ``fd``: ``"mine"`` (taken), ``"readers"`` (an
    exclusive lock refused by shared holders only: runs reading the folder, :func:`directory_lock`
    with ``shared``) or ``"writer"`` (another process holds it exclusive).

    Told apart by a shared try: it succeeds only without a writer. Then the exclusive one is
    tried again on the same descriptor: the holder that refused it may have let go in between
    (a build ending), and "being read" said of a free lock refused a build nobody read (review)."""
    import fcntl

    try:
        with naming(lock_file):
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return "mine"
    except BlockingIOError:
        if mode != fcntl.LOCK_EX:
            return "writer"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return "writer"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (our shared lock converted, if alone)
        return "mine"
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "readers"


def _newest_change(folder: Path, limit: int = 2000) -> float | None:
    """The newest modification time among ``folder`` and (up to ``limit`` of) the files under it:
    a waiting run's sign that the holder still works (a stage's segment file is touched every
    few seconds, a build writes its shards). None when nothing can be read."""
    newest, seen = None, 0
    stack = [folder]
    while stack and seen < limit:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for e in it:
                seen += 1
                with contextlib.suppress(OSError):
                    newest = max(newest or 0.0, e.stat(follow_symlinks=False).st_mtime)
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
    return newest


def _wait_line(holder: LockHolder | None, what: str, waited: float, folder: Path) -> str:
    """The heartbeat of a lock wait: how long, for whom, and the folder's last change."""
    who = f"pid {holder.pid}" + (f" on host {holder.host}" if holder.host else "") if holder \
        else "the runs reading it"
    since = f", holding it since {holder.since}" if holder and holder.since else ""
    changed = _newest_change(folder)
    life = (f"; {folder} last changed at {time.strftime('%H:%M:%S', time.localtime(changed))}"
            if changed else "")
    how_long = f"{waited / 60:.0f} min" if waited >= 60 else f"{waited:.0f}s"
    return f"still waiting ({how_long}) for {who} ({what}{since}){life}"


@contextlib.contextmanager
def directory_lock(lock_file: str | os.PathLike, what: str, *, wait: bool = False,
                   on_wait: Callable[[str], None] | None = None, shared: bool = False,
                   readers: str | None = None,
                   busy: str = "wait for it to finish or use another folder") -> Iterator[LockWait]:
    """Hold an exclusive ``fcntl`` lock on ``lock_file`` for the block, or fail at once.

    Two processes writing one dataset or runs folder corrupt each other's files; the second
    one is refused with a one-line message instead. The lock dies with its process (kill -9
    included), so a crashed run never leaves a stale lock behind. On a file system without
    locks (Lustre without ``-o flock``) the block runs unguarded, with a warning saying so.
    The holder writes ``host:pid start`` into the file, which a refusal or a wait names: on a
    cluster the pid alone did not say where to look.

    ``wait=True`` waits until the holder finishes instead of refusing (``on_wait`` gets an
    "another run (pid N) on host H is using ...; waiting for it (time)" line first, then a
    "still waiting" line every :data:`LOCK_HEARTBEAT_S` seconds): pipeline stages use it, so a
    second run of the same stage waits and then reuses the first one's result. The wait polls
    (:data:`LOCK_POLL_S`) rather than blocking in ``flock``: a suspended or hung holder (kill
    -STOP, a suspended Slurm job, a hung NFS client) left a silent wait forever.
    ``$DP4TL_LOCK_TIMEOUT`` ends a wait after that many seconds, with a line naming the holder.

    ``shared=True`` takes a shared lock: runs *reading* a folder (a dataset being trained on)
    hold it together, and a writer's exclusive lock is refused while they do. A reader never
    creates the folder, and reads unguarded where the lock file cannot be opened (a folder it
    may not write, with no lock file) or the file system has no locks: it has nothing to
    protect there that a warning would help with. ``readers``: the refusal of an exclusive lock
    while only readers hold it, said at once even with ``wait`` (a writer does not wait for a
    training of hours to end; a wait is for another writer). ``busy``: what a refusal (no
    ``wait``) tells the user to do.

    Yields a :class:`LockWait`: whom the block waited for, and how long.
    """
    import fcntl

    lock_file = Path(lock_file)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    waited_for, waited = None, 0.0
    while True:
        fd = _open_lock(lock_file, shared)
        if fd is None:
            yield LockWait(waited_for, waited)
            return
        try:
            locked = True
            holder = None  # (set: another process holds the lock)
            try:
                state = _try_lock(fd, mode, lock_file)
                if state != "mine":
                    holder = LockHolder.read(fd, lock_file)
            except OSError as e:
                if e.errno not in _NO_LOCKS:
                    raise
                locked = False
                if not shared:
                    # a file system without locks (Lustre mounted without -o flock, some FUSE
                    # and object-store mounts): run without the guard rather than not at all
                    warnings.warn(f"{lock_file.parent} does not support file locks "
                                  f"({e.strerror}): nothing stops a second dp4tl process from "
                                  f"writing {what} at the same time; run one at a time there",
                                  RuntimeWarning, stacklevel=3)
            if holder is not None:  # waited for outside the `except`: a stop signal that ends
                # the wait must not look like an error being handled (the CLI reads its context)
                waited += _wait_for(fd, mode, lock_file, what, holder, state, wait, on_wait,
                                    readers, busy)
                waited_for = holder
            if locked and not _same_file(fd, lock_file):
                continue  # (closed below; the lock on the file there now is taken instead)
            if locked and not shared:
                # (a full disk fails the holder's write: the line names the lock file, not nothing)
                with naming(lock_file):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, LockHolder.mine().encode(), 0)
            if locked:
                _HELD_LOCKS.add(fd)
            yield LockWait(waited_for, waited)
            return
        finally:
            _HELD_LOCKS.discard(fd)
            os.close(fd)


def _same_file(fd: int, lock_file: Path) -> bool:
    """Whether ``fd`` is still the file at ``lock_file``: the holder a run waited for may have
    removed it (a synth ``--overwrite`` deletes the parts it no longer makes, lock file and
    folder) or replaced it, and a lock on the old file is a lock on nothing anyone else sees;
    the waiter then took it and went on reading a folder that was gone (review)."""
    try:
        a, b = os.fstat(fd), os.stat(lock_file)
    except FileNotFoundError:
        return False
    except OSError:  # (cannot tell: the lock it holds is the one it has)
        return True
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _open_lock(lock_file: Path, shared: bool) -> int | None:
    """The lock file's descriptor; a writer makes the folder and the file. A reader opens the
    file read-only where it may not write it, and gets None (no lock) where it cannot open it:
    it never makes a folder, nor a lock file in a folder that holds none and is no build."""
    if not shared:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        return os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(lock_file, flags, 0o666)
        except OSError as e:  # (a full disk or quota: a training of data built long ago that
            # has no lock file was refused for want of one, review)
            if not (is_unwritable(e) or is_disk_full(e) or isinstance(e, FileNotFoundError)):
                raise
    return None


def _wait_for(fd: int, mode: int, lock_file: Path, what: str, holder: LockHolder, state: str,
              wait: bool, on_wait: Callable[[str], None] | None, readers: str | None,
              busy: str) -> float:
    """Wait for the lock ``holder`` holds (``state``: what refused it, :func:`_try_lock`; see
    :func:`directory_lock`), or refuse it: returns the seconds waited."""
    from .errors import DataError
    from .progress import now

    if readers is not None and state == "readers":
        raise DataError(readers)
    if not wait:
        raise DataError(f"another dp4tl process {holder} is using {what}; {busy}")
    timeout = lock_timeout()
    if on_wait is not None:
        since = f", since {holder.since}" if holder.since else ""
        on_wait(f"another dp4tl run {holder}{since} is using {what}; waiting for it ({now()})")
    start = time.monotonic()
    beat = start + LOCK_HEARTBEAT_S
    while True:
        state = _try_lock(fd, mode, lock_file)
        if state == "mine":
            return time.monotonic() - start
        waited = time.monotonic() - start
        if readers is not None and state == "readers":  # (the writer it waited for is gone;
            raise DataError(readers)                     # readers came)
        if timeout is not None and waited >= timeout:
            who = (f"another dp4tl run {LockHolder.read(fd, lock_file)} still holds it"
                   if state == "writer" else "the runs reading it still hold it")
            raise DataError(f"gave up waiting for {what} after {waited:.0f}s "
                            f"({LOCK_TIMEOUT_ENV}={timeout:g}): {who}; if that "
                            "run is stopped or hung, end it and rerun (this run resumes), or "
                            f"unset {LOCK_TIMEOUT_ENV} to wait for it")
        if on_wait is not None and time.monotonic() >= beat:
            beat += LOCK_HEARTBEAT_S
            current = LockHolder.read(fd, lock_file) if state == "writer" else None
            on_wait(_wait_line(current, what, waited, lock_file.parent))
        time.sleep(LOCK_POLL_S)
