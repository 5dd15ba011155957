"""Distributed sampling: an eval plan puts every masked sample on exactly one rank per epoch; a
train plan (``even``) gives every rank as many samples, reshuffled per epoch.

Unit checks on :class:`EpochPlan`, plus one real 2-process gloo run of ``make_loader(fmt="wds")``
taking rank/world size from torch.distributed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as tmp_mp

from ffcv_dp4tl.data import AugSpec, EpochPlan, make_loader, mask_from_classes, save_mask
from ffcv_dp4tl.data.sampling import dist_info
from ffcv_dp4tl.errors import DataError

MASK = np.array(sorted(np.random.default_rng(5).choice(1000, 101, replace=False)), dtype=np.int64)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_partition_the_mask_every_epoch(world, shuffle):
    plans = [EpochPlan(MASK, shuffle=shuffle, seed=7, rank=r, world_size=world) for r in range(world)]
    previous = None
    for epoch in range(4):
        parts = [p.order(epoch) for p in plans]
        for p, part in zip(plans, parts):
            assert len(part) == p.samples_per_epoch()
            assert len(np.unique(part)) == len(part)
        union = np.concatenate(parts)
        assert len(union) == len(MASK)  # nothing padded, nothing dropped
        assert np.array_equal(np.sort(union), MASK)
        for a in range(world):
            for b in range(a + 1, world):
                assert not np.intersect1d(parts[a], parts[b]).size
        sizes = [len(x) for x in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        key = [x.tolist() for x in parts]
        if shuffle:
            assert key != previous  # reshuffled every epoch
        else:
            assert key == [MASK[r::world].tolist() for r in range(world)]
        previous = key


def test_plan_is_deterministic_and_seeded():
    a = EpochPlan(MASK, shuffle=True, seed=1, rank=1, world_size=3)
    b = EpochPlan(MASK.copy(), shuffle=True, seed=1, rank=1, world_size=3)
    c = EpochPlan(MASK, shuffle=True, seed=2, rank=1, world_size=3)
    assert np.array_equal(a.order(5), b.order(5))
    assert not np.array_equal(a.order(5), c.order(5))
    # the full (all-rank) order is the same on every rank: rank r takes every world-th item
    full = np.stack([EpochPlan(MASK, True, 1, r, 3).order(2)[:33] for r in range(3)], 1).ravel()
    assert np.array_equal(full, EpochPlan(MASK, True, 1).order(2)[:99])


@pytest.mark.parametrize("world", [2, 3, 4])
def test_train_plans_give_every_rank_as_many_samples(world):
    """DDP needs the same steps on every rank: the epoch's order loses its last n mod world
    samples (a different few each shuffled epoch), the rest is split as the eval plan splits."""
    plans = [EpochPlan(MASK, shuffle=True, seed=7, rank=r, world_size=world, even=True)
             for r in range(world)]
    per_rank = len(MASK) // world
    left_out = []
    for epoch in range(6):
        parts = [p.order(epoch) for p in plans]
        assert [len(x) for x in parts] == [per_rank] * world
        assert [p.samples_per_epoch() for p in plans] == [per_rank] * world
        assert len({p.num_batches(4, drop_last=False) for p in plans}) == 1
        union = np.concatenate(parts)
        assert len(np.unique(union)) == per_rank * world and np.isin(union, MASK).all()
        full = EpochPlan(MASK, shuffle=True, seed=7).order(epoch)
        assert np.array_equal(np.sort(union), np.sort(full[:per_rank * world]))
        left_out.append(tuple(np.setdiff1d(MASK, union)))
    assert len(set(left_out)) > 1  # not the same samples every epoch
    # one rank reads what it would alone: even changes nothing without ranks
    assert np.array_equal(EpochPlan(MASK, True, 7, even=True).order(2), EpochPlan(MASK, True, 7).order(2))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_an_epoch_started_at_a_later_batch_reads_the_rest_of_the_same_global_order(world, drop_last):
    """A run resumed from a checkpoint written k steps into an epoch reads, on every rank, the
    batches after the k-th, in the order it would have read them; what is skipped is the
    first k global batches whatever the number of ranks (global batch j = positions
    [jB, (j+1)B) of the epoch's order), so one rank resuming a 2-rank run reads the rest too."""
    b = 4  # per rank
    plans = [EpochPlan(MASK, shuffle=True, seed=7, rank=r, world_size=world, even=True)
             for r in range(world)]
    whole = plans[0].num_batches(b, drop_last)
    stop = whole * b if drop_last else None  # per rank
    one = EpochPlan(MASK, shuffle=True, seed=7).order(3)
    glob = one[:len(one) - len(one) % world]
    for k in range(whole + 1):
        # the whole epoch's order from batch k (k = 0: the whole order, the loader drops the rest)
        tails = [p.order(3)[k * b:stop] if k else p.order(3) for p in plans]
        for p in plans:
            p.start_at_batch(3, k, b, drop_last)
        parts = [p.order(3) for p in plans]
        for r in range(world):
            np.testing.assert_array_equal(parts[r], tails[r])
            assert plans[r].num_batches(b, drop_last, epoch=3) == whole - k
        end = whole * b * world if drop_last and k else None
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.sort(glob[k * b * world:end]))
        # the next epoch is whole again
        assert plans[0].num_batches(b, drop_last, epoch=4) == whole
        np.testing.assert_array_equal(plans[0].order(4), EpochPlan(MASK, True, 7, 0, world, even=True).order(4))
        for p in plans:
            p.start_at_batch(3, 0, b, drop_last)
    with pytest.raises(DataError, match=f"an epoch of {whole} batches cannot start at batch {whole + 1}"):
        plans[0].start_at_batch(3, whole + 1, b, drop_last)


@pytest.mark.parametrize("n, world, expected", [(101, 2, [51, 50]), (101, 3, [34, 34, 33]),
                                                (2, 3, [1, 1, 0]), (9, 3, [3, 3, 3])])
def test_samples_per_epoch_and_num_batches(n, world, expected):
    plans = [EpochPlan(np.arange(n), shuffle=True, seed=0, rank=r, world_size=world)
             for r in range(world)]
    assert [p.samples_per_epoch() for p in plans] == expected
    assert [len(p.order(3)) for p in plans] == expected
    for p, k in zip(plans, expected):
        assert p.num_batches(4, drop_last=False) == -(-k // 4)
        assert p.num_batches(4, drop_last=True) == k // 4


def test_bad_rank_is_refused_when_the_plan_is_made():
    """(It was refused at the first epoch, with a bare ValueError; Python API review.)"""
    with pytest.raises(DataError, match=r"rank must be an integer in \[0, world_size\)"):
        EpochPlan(MASK, shuffle=False, seed=0, rank=2, world_size=2)


@pytest.mark.parametrize("indices, match", [
    (np.array([3, 3, 3]), "sorted, unique"), (np.array([5, 2]), "sorted, unique"),
    (np.array([-1, 2]), "sorted, unique"), (np.array([5, 3], dtype=np.uint64), "sorted, unique"),
    (np.array([0.5, 1.7]), "1-D array"),
    (np.arange(6).reshape(2, 3), "1-D array")])
def test_a_plan_over_what_no_mask_holds_is_refused(indices, match):
    """A plan is over a mask's indices: repeats, unsorted, negative or fractional indices
    were accepted and read wrong samples (Python API review)."""
    with pytest.raises(DataError, match=match):
        EpochPlan(indices, shuffle=False, seed=0)


def test_an_epoch_is_a_whole_number_from_zero():
    plan = EpochPlan(MASK, shuffle=True, seed=0)
    for bad in (-1, 1.5, True):
        with pytest.raises(DataError, match="an epoch is an integer >= 0"):
            plan.order(bad)
    assert plan.order(np.int64(2)).tolist() == plan.order(2).tolist()


def test_dist_info_defaults():
    assert dist_info() == (0, 1)  # no process group in this process
    assert dist_info(1, 4) == (1, 4)


@pytest.mark.parametrize("rank, world, match", [
    (1, None, "together"), (None, 2, "together"),  # one alone was dropped: every sample read
    (2, 2, r"in \[0, world_size\)"), (-1, 2, r"in \[0, world_size\)"), (0, 0, ">= 1"),
    (0.5, 2, "integer"), (True, 2, "integer")])
def test_bad_rank_or_world_size_is_one_line(rank, world, match):
    with pytest.raises(DataError, match=match):
        dist_info(rank, world)


# ---------------------------------------------------------------------------------------------
# Real multi-process run (gloo, CPU)
# ---------------------------------------------------------------------------------------------

EPOCHS = 2


def _rank_main(rank: int, world: int, init_file: str, root: str, mask_path: str, out_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = {}
        for what, fmt, aug in (("train", "wds", AugSpec.for_train()), ("train-ffcv", "ffcv", AugSpec.for_train()),
                               ("eval", "wds", AugSpec.for_eval())):
            loader = make_loader(root, "train", fmt=fmt, mask=mask_path, aug=aug, batch_size=4,
                                 resolution=16, num_workers=0, seed=3, drop_last=False, shuffle=True)
            result[what] = {"plan": [loader.plan.rank, loader.plan.world_size], "epochs": []}
            for epoch in range(EPOCHS):
                loader.set_epoch(epoch)
                result[what]["epochs"].append({
                    "indices": [i for b in loader for i in b.indices.tolist()],
                    "len": len(loader),
                })
        dist.barrier()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_run_partitions_the_mask(index_dataset, index_split, tmp_path):
    world = 2
    mask = mask_from_classes(index_split, [0, 2, 4])
    mask_path = save_mask(tmp_path / "mask", mask)
    tmp_mp.spawn(_rank_main, nprocs=world, join=True,
                 args=(world, str(tmp_path / "pg_init"), str(index_dataset.root), str(mask_path),
                       str(tmp_path)))
    m = mask.indices.tolist()
    assert len(m) % world == 1  # (so the train loader leaves one sample out per epoch)
    per_what = {}
    for what in ("train", "train-ffcv", "eval"):
        results = [json.loads((tmp_path / f"rank{r}.json").read_text())[what] for r in range(world)]
        assert [r["plan"] for r in results] == [[0, world], [1, world]]  # from torch.distributed
        orders = []
        for epoch in range(EPOCHS):
            parts = [r["epochs"][epoch]["indices"] for r in results]
            assert not set(parts[0]) & set(parts[1])
            if what == "eval":  # every sample once
                assert sorted(parts[0] + parts[1]) == m
            else:  # as many on each rank, the epoch's last one left out
                assert len(parts[0]) == len(parts[1]) == len(m) // 2 and set(parts[0] + parts[1]) < set(m)
            for r, part in zip(results, parts):
                assert r["epochs"][epoch]["len"] == -(-len(part) // 4)
                assert set(index_dataset.labels[part].tolist()) <= {0, 2, 4}
            orders.append(parts)
        assert orders[0] != orders[1]  # reshuffled across epochs
        per_what[what] = orders
    assert per_what["train-ffcv"] == per_what["train"]  # one plan: both formats read alike


def test_every_epoch_gets_its_own_order():
    """Shuffling gives each epoch its own visiting order, not just one that differs from the
    previous epoch: no two of epochs 0-5 repeat an order (an order that cycles every other
    epoch would train on the same sequence again and again)."""
    plan = EpochPlan(MASK, shuffle=True, seed=7)
    orders = [plan.order(e).tobytes() for e in range(6)]
    assert len(set(orders)) == 6
