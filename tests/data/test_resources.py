"""What a process may use (data/resources.py): loader workers against its cores, the cores
torchrun's ranks share, the open-files limit, and the environment variables read for them."""
from __future__ import annotations

import os

import numba
import pytest

from ffcv_dp4tl import cpus
from ffcv_dp4tl.data import resources
from ffcv_dp4tl.errors import DataError, DP4TLError


@pytest.fixture
def cores(monkeypatch):
    """Pretend this process runs on N cores (numba's pool as large), with the default
    reservation and no torchrun; returns the setter."""
    monkeypatch.delenv(resources.RESERVED_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    resources._NOTED.clear()

    def set_cores(n: int) -> None:
        monkeypatch.setattr(resources, "available_cores", lambda: n)
        monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", max(n, 1))

    return set_cores


@pytest.mark.parametrize("n,requested,expected", [
    (2, 2, 2), (2, 8, 2), (4, 16, 4), (8, 12, 7), (8, 7, 7), (16, 16, 14), (16, 12, 12),
    (64, 64, 62), (1, 4, 1), (16, 0, 0)])
def test_loader_workers_leave_cores_for_the_training_thread(cores, capsys, n, requested, expected):
    cores(n)
    assert resources.effective_workers(requested) == expected
    err = capsys.readouterr().err
    assert ("data.num_workers" in err) == (requested > expected)
    if requested > expected and n > 4:
        assert f"{n - expected} left for the training thread" in err


def test_the_environment_sets_the_cores_kept_free(cores, monkeypatch, capsys):
    """``DP4TL_RESERVED_CORES`` replaces the default reservation (the GPU check runs 16 workers
    on 16 cores with 0, against 14 with the default); at least one core stays for the loader;
    a blank value is the default; a value that is not a count is one line naming the variable."""
    cores(16)
    monkeypatch.setenv(resources.RESERVED_ENV, "0")
    assert resources.effective_workers(16) == 16
    monkeypatch.setenv(resources.RESERVED_ENV, " 4 ")
    assert resources.effective_workers(16) == 12
    monkeypatch.setenv(resources.RESERVED_ENV, "99")
    assert resources.effective_workers(16) == 1 and resources.reserved_cores(16) == 15  # one stays
    monkeypatch.setenv(resources.RESERVED_ENV, "")
    assert resources.reserved_cores(16) == 2
    for bad in ("two", "-1", "1.5", "²"):
        monkeypatch.setenv(resources.RESERVED_ENV, bad)
        with pytest.raises(DataError, match=f"DP4TL_RESERVED_CORES={bad!r} is not a whole number"):
            resources.effective_workers(16)
    capsys.readouterr()


def test_ranks_on_one_node_share_its_cores(cores, monkeypatch, capsys):
    """torchrun's ranks on one node split the CPU set they share between their loaders (8 ranks
    × 12 workers on 64 cores ran 96 decode threads): the whole node, a Slurm job's set smaller
    than it, or a socket each 4 ranks are bound to; ranks pinned apart keep theirs."""
    cores(64)

    def node(ranks: int, launcher: int, mine: int) -> int:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
        monkeypatch.setattr(resources, "_launcher_cores", lambda: launcher)
        monkeypatch.setattr(resources, "available_cores", lambda: mine)
        return resources.loader_cores()

    assert node(8, 64, 64) == 8  # every rank sees the whole node
    assert resources.effective_workers(12) == 7
    assert "gives the process 8 cores (its part of the node, shared by 8 ranks)" in capsys.readouterr().err
    assert node(2, 16, 16) == 8  # a 16-core job set shared by 2 ranks on a 64-core node
    assert node(8, 64, 32) == 8  # 4 ranks bound to each 32-core socket
    assert node(8, 64, 8) == 8  # pinned apart: 8 cores each, kept
    assert node(1, 64, 64) == 64  # one process on this node
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert resources.local_ranks() == 1  # no torchrun


@pytest.mark.parametrize("value", ["abc", "", "0", "²", "-2"])
def test_a_local_world_size_torchrun_would_not_set_is_one_line(monkeypatch, value):
    """The loaders size their workers by ``LOCAL_WORLD_SIZE``; a value torchrun never sets names
    the variable (it used to be read as 1, silently)."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
    with pytest.raises(DP4TLError, match=f"LOCAL_WORLD_SIZE={value!r} is not a whole number >= 1: torchrun sets it"):
        resources.local_ranks()


def test_env_int_reads_the_default_only_when_unset(monkeypatch):
    monkeypatch.delenv("DP4TL_TEST_INT", raising=False)
    assert resources.env_int("DP4TL_TEST_INT", 7, 0, "fix it") == 7
    monkeypatch.setenv("DP4TL_TEST_INT", " 12\n")
    assert resources.env_int("DP4TL_TEST_INT", 7, 0, "fix it") == 12
    monkeypatch.setenv("DP4TL_TEST_INT", "3")
    with pytest.raises(DataError, match=r"^DP4TL_TEST_INT='3' is not a whole number >= 4: fix it$"):
        resources.env_int("DP4TL_TEST_INT", 7, 4, "fix it", DataError)


def test_the_launchers_cpu_set_is_read_from_the_parent_process(monkeypatch):
    monkeypatch.setattr(cpus, "cpu_quota", lambda: None)
    assert resources._launcher_cores() == len(os.sched_getaffinity(os.getppid()))
    monkeypatch.setattr(cpus, "cpu_quota", lambda: 1.5)  # the ranks share the container's quota
    assert resources._launcher_cores() == min(2, len(os.sched_getaffinity(os.getppid())))


def test_the_open_files_limit_is_raised_to_the_hard_limit_once(monkeypatch):
    """GPU decode keeps one descriptor per shard (ImageNet: 1,282) and many systems start at a
    soft limit of 1,024: the loader raises the soft limit to the hard one (capped), once."""
    import resource

    calls = []
    monkeypatch.setattr(resources, "_LIMIT_RAISED", False)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, 524288))
    monkeypatch.setattr(resource, "setrlimit", lambda what, lim: calls.append(lim))
    resources.raise_open_files_limit()
    resources.raise_open_files_limit()
    assert calls == [(524288, 524288)]
    monkeypatch.setattr(resources, "_LIMIT_RAISED", False)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, resource.RLIM_INFINITY))
    resources.raise_open_files_limit()
    assert calls[-1] == (1 << 20, resource.RLIM_INFINITY)

    def forbidden(what, lim):
        raise ValueError("not allowed")

    monkeypatch.setattr(resources, "_LIMIT_RAISED", False)
    monkeypatch.setattr(resource, "setrlimit", forbidden)
    resources.raise_open_files_limit()  # a sandbox that forbids it: the limit stays, no error


def test_the_capped_workers_note_is_said_by_the_first_rank_only(cores, monkeypatch, capsys):
    """Every rank of a node gets the same share, and each printed the note: 8 lines on 8 GPUs
    (review). The first rank says it; the others apply the same cap in silence."""
    cores(4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("RANK", "1")  # (a launcher that sets RANK only)
    capped = resources.effective_workers(64)
    assert capped < 64 and "data.num_workers = 64" not in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "9")  # a second rank of the second node
    assert resources.effective_workers(64) == capped
    assert "data.num_workers = 64" not in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_RANK", "0")  # the second node's first rank: its own line
    monkeypatch.setenv("RANK", "8")
    assert resources.effective_workers(64) == capped
    assert "data.num_workers = 64" in capsys.readouterr().err


def test_open_files_budget_is_half_the_soft_limit_and_never_more_than_it():
    """The readers of a process keep at most this many files open together (they split it:
    ``OpenFilesClaim``): half the soft limit, the rest left to torch, ffcv and the logs, and
    never more than the limit (a 64-file floor gave 64 under a soft limit of 40: review)."""
    import resource

    from ffcv_dp4tl.data.resources import open_files_budget

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for limit, want in ((1024, 512), (40, 20), (10, 8)):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(limit, 0), hard))
            assert open_files_budget() == want, limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def claims(monkeypatch):
    """No readers of other tests in this process's table; a budget of 2,048 open files."""
    monkeypatch.setattr(resources, "_CLAIMS", ())
    monkeypatch.setattr(resources, "open_files_budget", lambda: 2048)


def test_readers_in_one_process_split_the_open_file_budget_by_water_filling():
    """A train (14,200 shards, ImageNet-21K) and a val reader in one process each took half the
    limit: together all of it, and torch, ffcv and the logs got "Too many open files". They
    share the budget; one that needs less than an equal share gets all it needs."""
    shares = resources.open_file_shares
    assert shares(2048, [14200]) == [2048] and shares(2048, [50]) == [50]  # alone: as before
    assert shares(2048, [14200, 14200]) == [1024, 1024]
    assert shares(2048, [14200, 50]) == [1998, 50]
    assert shares(2048, [14200, 50, 14200]) == [999, 50, 999]
    assert sum(shares(2048, [3000, 3000, 3000])) == 2048
    assert shares(2, [10, 10, 10]) == [1, 1, 1]  # (each reader opens at least one file)


def test_a_readers_cap_is_its_share_among_the_live_readers_of_its_process(claims):
    """A reader joins at its first open, the others' shares shrink at once (``shed``: the train
    reader keeps its files through the val epoch), and closing or dropping a reader gives its
    share back."""
    import gc

    shed = []

    class Reader:
        def __init__(self, files):
            self.claim = resources.OpenFilesClaim(files, self.shed)

        def shed(self, cap):
            shed.append((self.claim.files, cap))

    train = Reader(14200)
    assert train.claim.cap() == 2048 and shed == []  # alone: the whole budget
    val = Reader(50)
    assert val.claim.cap() == 50 and shed == [(14200, 1998)] and train.claim.cap() == 1998
    other = resources.OpenFilesClaim(14200)  # (no shed: a fixed-size table)
    assert other.cap() == 999 and sorted(shed[1:]) == [(50, 50), (14200, 999)]
    assert train.claim.cap() == 999
    other.release()
    assert train.claim.cap() == 1998
    del val
    gc.collect()
    assert train.claim.cap() == 2048


def test_a_forked_worker_starts_with_no_readers(claims):
    """A DataLoader worker is a forked copy of its loader's process: readers that read in the
    parent (or were only built there) must not take a share of the worker's own limit."""
    parent = resources.OpenFilesClaim(14200)
    assert parent.cap() == 2048
    assert resources.OpenFilesClaim(14200).cap() == 1024  # (a second one, dropped at once)
    other = resources.OpenFilesClaim(14200)
    assert other.cap() == 1024
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 3
        try:
            worker = resources.OpenFilesClaim(14200)
            code = 0 if (worker.cap() == 2048 and len(resources._CLAIMS) == 1) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.cap() == 1024  # (the parent's table is its own)
