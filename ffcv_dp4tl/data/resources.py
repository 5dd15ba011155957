"""What this process may use: its CPU cores (affinity, cgroup CPU quota), its open files, its
place among torchrun's ranks.

The loaders size their worker pools from here (:func:`effective_workers`), and
``training.distributed`` reads the launcher's variables through :func:`env_int`, so a value in
the environment that torchrun (or the user) set wrongly is one line naming the variable,
whichever part of the program reads it first.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from typing import Callable

from ..cpus import available_cores, cpu_quota
from ..errors import DataError, DP4TLError

__all__ = ["RESERVED_ENV", "OpenFilesClaim", "available_cores", "cpu_quota", "effective_workers", "env_int",
           "loader_cores", "local_ranks", "open_file_shares", "open_files_budget", "raise_open_files_limit",
           "ranks_sharing", "reserved_cores", "usable_workers"]


def env_int(name: str, default: int, lowest: int, fix: str,
            error: type[DP4TLError] = DP4TLError) -> int:
    """``$name`` as a whole number >= ``lowest`` (``default`` when unset); anything else (text,
    an empty value, '²', which ``str.isdigit`` accepts) is one line naming the variable, its
    value and ``fix``, what to do about it."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < lowest:
        raise error(f"{name}={raw!r} is not a whole number >= {lowest}: {fix}")
    return int(text)


#: Environment variable that sets :func:`reserved_cores` (e.g. 0 to give the loader every core)
RESERVED_ENV = "DP4TL_RESERVED_CORES"


def reserved_cores(cores: int) -> int:
    """Cores kept free of loader workers for the training thread (and the CUDA launch / pin
    threads): none on up to 4 cores (a small CPU machine needs every core for the loader and
    trains on the same threads), 1 on 5-8 cores, 2 above (a GPU node: the first GPU check ran
    16 decode threads on 16 cores beside the training thread). ``$DP4TL_RESERVED_CORES`` sets
    the number instead (the GPU check measures 16 workers against 14 with it)."""
    default = 0 if cores <= 4 else 1 if cores <= 8 else 2
    if not os.environ.get(RESERVED_ENV, "").strip():  # unset or blank: the default
        return default
    wanted = env_int(RESERVED_ENV, default, 0, "give a number of cores to keep free of loader "
                     "workers (or unset it for the default)", DataError)
    return min(wanted, max(cores - 1, 0))


_LIMIT_RAISED = False


def raise_open_files_limit(cap: int = 1 << 20) -> None:
    """Raise this process's soft limit on open files to its hard limit (at most ``cap``), once.
    Loaders keep shard files open (:class:`OpenFilesClaim`: the readers of a process share half
    its limit; each WebDataset worker inherits the raised limit), and many systems start at a
    soft 1,024."""
    global _LIMIT_RAISED
    if _LIMIT_RAISED:
        return
    _LIMIT_RAISED = True
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        for want in (target, min(target, 10240)):  # (macOS: an unlimited hard limit, capped lower)
            with contextlib.suppress(ValueError, OSError):  # a sandbox may forbid it: keep it
                resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), hard))
                return


def open_files_budget(share: float = 0.5) -> int:
    """How many files the readers of this process that keep files open may hold together:
    ``share`` of its soft limit on open files (after :func:`raise_open_files_limit`; at least
    8). The rest is left to the loader's workers, ffcv, torch, the logs and sockets. The readers
    split it among themselves (:class:`OpenFilesClaim`): a train and a val reader in one process
    each took this whole share, and so together could hold the whole limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 256
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(8, int(soft * share))


def open_file_shares(budget: int, wants: list[int]) -> list[int]:
    """Split ``budget`` open files among readers that want ``wants`` files each, by water
    filling: one that wants less than an equal share gets all it wants and the rest is split
    evenly among the others (budget 2,048, a train split of 14,200 shards and a val split of
    50: 1,998 and 50; two large splits: 1,024 each; one reader: ``min(wants, budget)``). Each
    gets at least 1 (a reader must open a file to read it)."""
    shares = [0] * len(wants)
    left, readers = budget, len(wants)
    for i in sorted(range(len(wants)), key=wants.__getitem__):  # (fewest wanted first)
        shares[i] = max(1, min(wants[i], left // readers))
        left, readers = left - shares[i], readers - 1
    return shares


#: (reentrant: a reader the garbage collector finalizes while this thread holds it releases)
_CLAIMS_LOCK = threading.RLock()
#: this process's live readers; replaced, never changed in place, so a snapshot stays valid
_CLAIMS: "tuple[weakref.ref[OpenFilesClaim], ...]" = ()


def _forget_claims() -> None:
    """In a forked child: no reader reads there yet (a reader built in the parent joins when it
    first opens a file in the child), and a lock another thread held at the fork is not held."""
    global _CLAIMS_LOCK, _CLAIMS
    _CLAIMS_LOCK, _CLAIMS = threading.RLock(), ()


if hasattr(os, "register_at_fork"):  # (POSIX)
    os.register_at_fork(after_in_child=_forget_claims)


class OpenFilesClaim:
    """The one rule for how many files a reader keeps open: all ``files`` of its split where
    they fit, else its part of this process's :func:`open_files_budget`, shared with the other
    readers that read in this process (:func:`open_file_shares`).

    Why shared: a WebDataset loader without workers holds a train and a val reader in one
    process, and the GPU-decode loader's train and val readers both read in the main process;
    each took half the limit, so together they could hold all of it (ImageNet-21K: about 14,200
    shards against a common hard limit of 4,096) and torch, ffcv and the logs got "Too many open
    files". Only readers that read here count: a reader joins at :meth:`cap`, which it calls when
    it must open a file, and a forked worker starts with none (a reader its parent built but
    the worker never reads takes nothing there). It leaves at :meth:`release` (its ``close``)
    or when it is collected.

    A reader that joins shrinks the others' shares: ``shed(cap)``, a method of each other
    reader, is called with its new share to close its idle files past it (the train reader
    keeps its files open through the val epoch, and would hold its whole former share beside
    the val reader's). Thread-safe; ``shed`` runs outside the lock here, in the joining
    reader's thread."""

    def __init__(self, files: int, shed: Callable[[int], None] | None = None):
        self.files = max(1, int(files))
        self._shed = None if shed is None else weakref.WeakMethod(shed)  # (not kept alive here)
        self._ref = weakref.ref(self)  # (a reader collected without close drops out)

    def cap(self) -> int:
        """How many files this reader may keep open now (joining this process's readers)."""
        global _CLAIMS
        with _CLAIMS_LOCK:
            claims = [c for c in (r() for r in _CLAIMS) if c is not None]
            joined = self not in claims
            if joined:
                claims.append(self)
            _CLAIMS = tuple(c._ref for c in claims)
            shares = open_file_shares(open_files_budget(), [c.files for c in claims])
        if joined:  # the others' shares shrank: they close what they hold past them
            for claim, share in zip(claims, shares):
                shed = claim._shed() if claim is not self and claim._shed is not None else None
                if shed is not None:
                    shed(share)
        return shares[claims.index(self)]

    def release(self) -> None:
        """Give this reader's share back (it closed its files; reading again joins again)."""
        global _CLAIMS
        with _CLAIMS_LOCK:
            _CLAIMS = tuple(r for r in _CLAIMS if r() not in (self, None))


def local_ranks() -> int:
    """Processes torchrun started on this node (``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return env_int("LOCAL_WORLD_SIZE", 1, 1, "torchrun sets it to the processes it starts on "
                   "this node; unset it to run one process")


def _launcher_cores() -> int:
    """Cores of the process that started this one (torchrun's agent holds the job's CPU set),
    capped by this process's cgroup CPU quota (:func:`available_cores` of the parent): the ranks
    of one container share its quota, so 8 ranks under an 8-CPU quota on a 64-core host get one
    core each, not 8."""
    return available_cores(os.getppid())


def ranks_sharing(cores: int, ranks: int) -> int:
    """How many of this node's ``ranks`` share this process's ``cores``, assuming the launcher's
    CPU set is split evenly: all of them when each sees the launcher's whole set (a node, or a
    Slurm / ``--cpuset-cpus`` job set), one when they were pinned to disjoint parts, four when 8
    ranks are bound to the 2 sockets of a node."""
    return max(1, min(ranks, round(ranks * cores / max(_launcher_cores(), cores))))


def loader_cores() -> int:
    """The cores loader workers may use: this process's (:func:`available_cores`), no more than
    numba's thread pool allows (ffcv's workers are numba threads). Under torchrun, ranks that
    were not pinned to their own cores share the node's: each gets its part (8 ranks with 12
    workers each on 64 cores ran 96 decode threads)."""
    cores = available_cores()
    ranks = local_ranks()
    if ranks > 1:
        cores = max(1, cores // ranks_sharing(cores, ranks))
    try:
        import numba

        cores = min(cores, int(numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba comes with ffcv
        pass
    return cores


_NOTED: set[tuple[int, int]] = set()


def usable_workers(cores: int | None = None) -> int:
    """The most loader workers this process runs: its loader cores (:func:`loader_cores`, or
    ``cores``) less the :func:`reserved_cores`, at least 1."""
    cores = loader_cores() if cores is None else cores
    return max(1, cores - reserved_cores(cores))


def effective_workers(requested: int, asked_as: str = "data.num_workers") -> int:
    """``min(requested, cores - reserved_cores(cores))``: more loader workers than cores only
    slows the loader and the training thread down, and ffcv's numba pool refuses more than the
    cores ("number of threads must be between 1 and N"). The full recipes ask for 8-12 workers
    (a GPU node); on a smaller machine they run with what it leaves, with a one-time note on
    stderr naming the setting that asked (``asked_as``: a recipe's key, or a function's
    argument, as ``make_loader``'s: a direct ``make_loader(num_workers=8)`` was told of a
    recipe key it never used). (``0`` = in-process loading, kept.)"""
    cores = loader_cores()
    usable = usable_workers(cores)
    if requested <= usable:
        return requested
    # (said by each node's first rank only: the ranks of a node get the same share; 8 lines on
    # 8 GPUs; torchrun sets LOCAL_RANK, and RANK where a launcher sets only that)
    first = os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) in ("", "0")
    if (requested, usable) not in _NOTED and first:
        _NOTED.add((requested, usable))
        spare = cores - usable
        ranks = local_ranks()
        share = f" (its part of the node, shared by {ranks} ranks)" if ranks > 1 else ""
        print(f"[note] {asked_as} = {requested} but this machine gives the process {cores} "
              f"cores{share}: loading with {usable} workers"
              + (f" ({spare} left for the training thread)" if spare else ""),
              file=sys.stderr, flush=True)
    return usable
