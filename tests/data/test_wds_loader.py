"""The WebDataset loader (``data.wds_loader``): whole batches built in the workers, in plan
order, with the crops of the shared rule and the same floats as normalising on the main."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ffcv_dp4tl.data import AugSpec, load_manifest, make_loader, make_mask
from ffcv_dp4tl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, crop_draws
from ffcv_dp4tl.data.wds_loader import ShardReader

SIZES = [(40, 56), (48, 48), (56, 36)]
N = 24


def _texture(i: int) -> np.ndarray:
    h, w = SIZES[i % len(SIZES)]
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r, g = 30 + 190 * x / (w - 1), 40 + 170 * y / (h - 1)
    b = 128 + 90 * np.sin(2 * np.pi * (x / (w / 2.3) + y / (h / 1.7)) + i)
    return np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tex(tmp_path_factory):
    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    samples = [Sample(_texture(i), i % 3, name=f"t/{i:03d}") for i in range(N)]
    root = tmp_path_factory.mktemp("wds_tex")
    build_dataset(DatasetSpec("tex", ["a", "b", "c"], {"train": samples}), root,
                  BuildOptions(max_side=64, shard_size=8, workers=1, progress=False))
    return root


def _epoch(loader):
    batches = list(loader)
    return (torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches]),
            torch.cat([b.indices for b in batches]).tolist(), [len(b.indices) for b in batches])


@pytest.mark.parametrize("batch_size,train,workers", [(5, False, 1), (5, True, 0), (7, False, 0),
                                                      (100, False, 1)])
def test_batches_are_whole_and_in_plan_order(tex, batch_size, train, workers):
    loader = make_loader(tex, "train", fmt="wds", batch_size=batch_size, resolution=16, seed=3,
                         aug=AugSpec.for_train() if train else AugSpec.for_eval(),
                         num_workers=workers)
    images, labels, seen, sizes = _epoch(loader)
    want = [batch_size] * (N // batch_size) + ([] if train or N % batch_size == 0 else [N % batch_size])
    assert sizes == want and len(loader) == len(want)
    assert seen == loader.plan.order(0)[:len(seen)].tolist()
    assert labels.tolist() == [i % 3 for i in seen]
    assert images.shape == (len(seen), 3, 16, 16) and images.dtype == torch.float32


def _reference(root, indices, resolution, aug, eseed):
    """Float NCHW batch built from first principles: PIL decode (draft), the shared crop draws,
    PIL's bilinear resize, flip, then ImageNet normalisation."""
    reader = ShardReader(load_manifest(root).split("train"))
    imgs = []
    for i in indices:
        img = Image.open(io.BytesIO(reader.read(i)[0]))
        img.draft("RGB", (resolution, resolution))
        imgs.append(img.convert("RGB"))
    hw = np.array([(im.height, im.width) for im in imgs])
    [(boxes, flips)] = crop_draws(hw, np.asarray(indices), eseed=eseed, aug=aug)
    out = []
    for im, (t, l, h, w), f in zip(imgs, boxes.tolist(), flips):
        a = np.asarray(im.resize((resolution, resolution), Image.BILINEAR, box=(l, t, l + w, t + h)))
        out.append(a[:, ::-1] if f else a)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("train", [False, True])
def test_workers_deliver_the_reference_floats(tex, train):
    aug = AugSpec.for_train() if train else AugSpec.for_eval()
    loader = make_loader(tex, "train", fmt="wds", aug=aug, batch_size=8, resolution=24, seed=2,
                         num_workers=1, drop_last=False)
    assert loader.normalize_in_workers  # a CPU device: the main process gets finished floats
    loader.set_epoch(1)
    images, _, idx, _ = _epoch(loader)
    ref = _reference(tex, idx, 24, aug, loader.plan.aug_seed(1))
    assert torch.equal(images, ref)
    assert not torch.equal(images, ref.flip(-1))  # the comparison sees a flip


def test_a_sample_gets_the_same_crop_in_any_mask_and_batch(tex):
    """Crops follow (seed, epoch, sample): a masked loader, another batch size or more workers
    give each sample the pixels the full loader gives it in that epoch."""
    split = load_manifest(tex).split("train")
    kw = dict(fmt="wds", aug=AugSpec.for_train(views=2), resolution=20, seed=4, drop_last=False)
    full = make_loader(tex, "train", batch_size=5, num_workers=0, **kw)
    masked = make_loader(tex, "train", batch_size=3, num_workers=2,
                         mask=make_mask(range(1, N, 2), split), **kw)
    for loader in (full, masked):
        loader.set_epoch(3)
    ref = {int(i): (x, y) for b in full for i, x, y in zip(b.indices, b.images, b.images2)}
    n = 0
    for b in masked:
        for i, x, y in zip(b.indices.tolist(), b.images, b.images2):
            assert torch.equal(x, ref[i][0]) and torch.equal(y, ref[i][1]), i
            n += 1
    assert n == N // 2
    assert any(not torch.equal(x, y) for x, y in ref.values())  # two different views


def test_dtype_and_channels_last_are_applied_in_the_workers(tex):
    base = make_loader(tex, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=8,
                       resolution=16, num_workers=1)
    half = make_loader(tex, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=8,
                       resolution=16, num_workers=1, dtype=torch.bfloat16, channels_last=True)
    for a, b in zip(base, half):
        assert b.images.dtype == torch.bfloat16
        assert b.images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a.images.to(torch.bfloat16), b.images)


# ---------------------------------------------------------------------------------------------
# Look-ahead across epochs: set_epoch(..., next_resolution=) lets the workers start on the
# next epoch while one drains; the batches must be exactly those of a loader without it.
# ---------------------------------------------------------------------------------------------

RES = [16, 16, 20, 24, 24]  # progressive resizing: a resolution per epoch


def _batches(loader):
    """One epoch as a list of (indices, labels, images, images2) per batch."""
    return [(b.indices.tolist(), b.labels.tolist(), b.images,
             b.images2 if b.images2 is not None else torch.empty(0)) for b in loader]


def _same(got, want, what):
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        assert g[0] == w[0] and g[1] == w[1], (what, k)
        assert torch.equal(g[2], w[2]) and torch.equal(g[3], w[3]), (what, k)


def _reference_epochs(tex, settings, **kw):
    """The batches of each (epoch, resolution) from a fresh in-process loader (no look-ahead)."""
    ref = make_loader(tex, "train", fmt="wds", num_workers=0, **kw)
    out = []
    for epoch, res in settings:
        ref.set_epoch(epoch, res)
        out.append(_batches(ref))
    return out


@pytest.mark.parametrize("batch_size,workers,views", [(3, 2, 1), (7, 2, 2), (5, 1, 1)])
def test_look_ahead_gives_the_batches_of_a_loader_without_it(tex, batch_size, workers, views):
    """Epoch after epoch with the next one announced, the stream is started once and never
    restarted, and every batch (indices, labels, pixels of both views) equals the in-process
    loader's. batch 7: an epoch of 3 batches is shorter than what is in flight (2 x workers),
    so the whole next epoch is dispatched before its set_epoch."""
    split = load_manifest(tex).split("train")
    kw = dict(aug=AugSpec.for_train(views=views), batch_size=batch_size, seed=5,
              mask=make_mask([i for i in range(N) if i % 5 != 2], split), resolution=RES[0])
    want = _reference_epochs(tex, list(enumerate(RES)), **kw)
    loader = make_loader(tex, "train", fmt="wds", num_workers=workers, **kw)
    kept = set(loader.plan.indices.tolist())
    for epoch, res in enumerate(RES):
        nxt = RES[epoch + 1] if epoch + 1 < len(RES) else None
        loader.set_epoch(epoch, res, next_resolution=nxt)
        got = _batches(loader)
        _same(got, want[epoch], epoch)
        assert {i for b in got for i in b[0]} <= kept  # the mask holds for speculative batches too
        assert all(b[2].shape[-1] == res for b in got)
        # the workers already took on the announced epoch (none after the last)
        assert list(loader._queued) == ([(epoch + 1, nxt)] if nxt else [])
    assert loader.restarts == 1


def test_a_different_set_epoch_drops_the_look_ahead(tex):
    """Announced (epoch + 1, resolution) but then asked for something else: another
    resolution, another epoch, the same epoch again, or the next epoch without set_epoch at a
    resolution other than announced. Each time the stream restarts and the batches are those
    asked for; the announced one, asked for, is used without a restart."""
    kw = dict(aug=AugSpec.for_train(), batch_size=4, seed=8, resolution=16)
    steps = [  # (set_epoch arguments or None = iterate without set_epoch, restarts expected)
        ((0, 16, 16), 1),
        ((1, 20, 20), 2),   # announced res 16, asked 20: dropped
        ((5, 20, 20), 3),   # announced epoch 2, asked 5: dropped
        ((5, 20, 24), 4),   # the same epoch again: dropped
        (None, 5),          # epoch 6 at 20 (announced 24): dropped
        ((7, 20, 20), 6),   # epoch 7 (no announcement from the implicit epoch 6)
        ((8, 20, None), 6),  # announced by epoch 7 and used
        ((9, 20, None), 7),  # nothing announced
    ]
    settings, epoch, res = [], None, None
    for args, _ in steps:
        epoch, res = (args[0], args[1]) if args else (epoch + 1, res)
        settings.append((epoch, res))
    want = _reference_epochs(tex, settings, **kw)
    loader = make_loader(tex, "train", fmt="wds", num_workers=2, **kw)
    for k, (args, restarts) in enumerate(steps):
        if args:
            loader.set_epoch(args[0], args[1], next_resolution=args[2])
        _same(_batches(loader), want[k], settings[k])
        assert loader.restarts == restarts, settings[k]


def test_an_epoch_left_early_restarts_the_stream(tex):
    """A consumer that stops mid-epoch (break, an error): the next iteration starts the epoch
    asked for from its first batch, not from where the stream stood."""
    kw = dict(aug=AugSpec.for_train(), batch_size=3, seed=1, resolution=16)
    want = _reference_epochs(tex, [(0, 16), (1, 16), (1, 16)], **kw)
    loader = make_loader(tex, "train", fmt="wds", num_workers=2, **kw)
    loader.set_epoch(0, next_resolution=16)
    _same(_batches(loader), want[0], 0)
    loader.set_epoch(1, next_resolution=16)
    for k, b in enumerate(loader):
        if k == 2:
            break
    assert loader.epoch == 1  # not a full pass
    loader.set_epoch(1, next_resolution=16)
    _same(_batches(loader), want[2], "after a partial epoch")
    assert loader.restarts == 2


def test_look_ahead_keeps_ranks_disjoint(tex):
    """Two ranks with look-ahead: each epoch they cover the kept samples exactly once."""
    split = load_manifest(tex).split("train")
    mask = make_mask(range(1, N, 2), split)
    kw = dict(fmt="wds", aug=AugSpec.for_train(), batch_size=2, seed=3, resolution=16,
              drop_last=False, mask=mask, num_workers=2, world_size=2)
    ranks = [make_loader(tex, "train", rank=r, **kw) for r in range(2)]
    for epoch in range(3):
        seen = []
        for ld in ranks:
            ld.set_epoch(epoch, next_resolution=16)
            idx = [i for b in ld for i in b.indices.tolist()]
            assert idx == ld.plan.order(epoch).tolist()
            seen += idx
        assert sorted(seen) == mask.indices.tolist(), epoch
    assert [ld.restarts for ld in ranks] == [1, 1]  # (3 batches an epoch, 4 in flight)


def test_a_loader_with_batches_built_ahead_shuts_down_at_once(tex):
    """Dropped with the next epoch's batches in flight: freed without the cyclic GC, and its
    worker processes exit."""
    import gc
    import time
    import weakref

    loader = make_loader(tex, "train", fmt="wds", aug=AugSpec.for_train(), batch_size=3,
                         resolution=16, num_workers=2)
    loader.set_epoch(0, next_resolution=16)
    assert sum(len(b.indices) for b in loader) == (N // 3) * 3
    assert list(loader._queued) == [(1, 16)]
    workers = list(loader.dataloader._iterator._workers)
    ref = weakref.ref(loader)
    gc.disable()
    try:
        del loader
        assert ref() is None, "loader kept alive by a reference cycle"
    finally:
        gc.enable()
    deadline = time.monotonic() + 20
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(w.is_alive() for w in workers)


def test_uint8_batches_for_a_device_come_through_shared_memory_unchanged(tex):
    """The CUDA path's worker output (uint8 NHWC, the device normalises) allocated in shared
    memory in a worker: the same pixels as built in-process, both views."""
    from torch.utils.data import DataLoader

    from ffcv_dp4tl.data.wds_loader import _as_is, _MaskedShardDataset

    split = load_manifest(tex).split("train")
    ds = _MaskedShardDataset(split, AugSpec.for_train(views=2), None)
    items = [(np.arange(k, k + 6, dtype=np.int64), 20, 99 + k) for k in (0, 6, 12)]
    want = [ds[it] for it in items]
    got = list(DataLoader(ds, sampler=items, batch_size=None, collate_fn=_as_is, num_workers=1))
    for g, w in zip(got, want):
        assert g[0].dtype == torch.uint8 and g[0].shape == (6, 20, 20, 3)
        for a, b in zip(g, w):
            assert torch.equal(a, b)
    assert not torch.equal(got[0][0], got[0][3])  # two different views


def test_a_reader_keeps_at_most_max_open_shards_files_open(tex, monkeypatch):
    """A masked epoch visits shards in random order: one handle per shard ran past the usual
    1,024 open files on ImageNet's 1,282 shards ("Too many open files"). Past the cap the least
    recently used handle is closed; the bytes read are the same."""
    import os

    from ffcv_dp4tl.data import wds_loader

    split = load_manifest(tex).split("train")
    assert len(split.shards) == 3
    want = [ShardReader(split).read(i) for i in range(N)]
    monkeypatch.setattr(wds_loader, "MAX_OPEN_SHARDS", 2)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    reader = ShardReader(split)
    order = [0, 8, 16, 1, 9, 17, 23, 2, 15]  # shards 0, 1, 2, 0, 1, 2, ...
    assert [reader.read(i) for i in order] == [want[i] for i in order]
    assert reader._files.open_count == 2 and fds() - before == 2
    assert list(reader._files._fds) == [0, 1]  # the last two used
    reader.read(16)  # shard 2: shard 0, the least recently used, is closed
    assert list(reader._files._fds) == [1, 2]
    reader.close()
    assert fds() == before and reader.read(5) == want[5]  # reading again reopens
    reader.close()


def test_closing_a_loader_without_workers_closes_its_shard_files(tex):
    """With ``num_workers=0`` the shards are read in the caller's process: ``close()`` closes
    those files then (a loader kept by a traceback kept them open), not when it is collected."""
    import gc
    import os

    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    gc.collect()  # (an earlier test's collectable loader closing its files here would lower it)
    before = fds()
    loader = make_loader(tex, "train", fmt="wds", batch_size=5, resolution=16,
                         aug=AugSpec.for_eval(), num_workers=0)
    assert _epoch(loader)[2] == list(range(N))
    files = loader.dataset.reader._files
    assert files.open_count > 0 and fds() > before  # (its shards, open after the epoch)
    loader.close()
    assert files.open_count == 0 and fds() == before
    assert loader  # (still referenced: closed by close(), not by collection)


def test_a_reader_keeps_its_processes_share_of_the_open_file_limit_by_default(tex, monkeypatch):
    """By default the cap is this process's share of its open-file limit (the GPU-decode
    loader's rule), read at the reader's first read in the process that reads (a worker, after
    its loader raised the limit): a fixed 64 made about 95 % of shuffled ImageNet-1K reads
    reopen a shard, a metadata round trip each on a shared file system."""
    from ffcv_dp4tl.data import resources, wds_loader

    split = load_manifest(tex).split("train")
    want = [ShardReader(split).read(i) for i in range(N)]
    assert wds_loader.MAX_OPEN_SHARDS is None
    monkeypatch.setattr(resources, "_CLAIMS", ())  # (no readers other tests left alive)
    monkeypatch.setattr(resources, "open_files_budget", lambda: 2)  # (this process's budget)
    reader = ShardReader(split)
    order = [0, 8, 16, 1, 9, 17]  # shards 0, 1, 2, 0, 1, 2
    assert [reader.read(i) for i in order] == [want[i] for i in order]
    assert list(reader._files._fds) == [1, 2]  # 2 of the 3 shards: the budget, not a fixed 64
    monkeypatch.setattr(resources, "open_files_budget", lambda: 3)  # (then a fork's)
    reader._pid = -1  # as in a forked worker: its own handles, its own limit
    assert [reader.read(i) for i in order] == [want[i] for i in order]
    assert list(reader._files._fds) == [0, 1, 2]
    reader.close()


def test_an_environment_error_in_a_worker_is_one_line_not_a_traceback(tex, monkeypatch):
    """"Too many open files" (or a lost network mount) inside a DataLoader worker: torch re-raises
    it without its errno, which the CLI would print as a traceback. The worker hands back the
    one-line advice instead."""
    import errno

    from ffcv_dp4tl.data.wds_loader import SampleError

    def emfile(self, i):
        raise OSError(errno.EMFILE, "Too many open files", "tex/wds/train-000001.tar")

    monkeypatch.setattr(ShardReader, "read", emfile)
    loader = make_loader(tex, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=4,
                         resolution=16, num_workers=1)
    with pytest.raises(SampleError, match=r"too many open files opening .*train-000001.tar .*"
                                          r"raise the limit \(`ulimit -n 65536`\)"):
        next(iter(loader))


@pytest.fixture(scope="module")
def tex_val(tmp_path_factory):
    """A train split of 12 shards and a val split of 4 (2 samples a shard)."""
    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    samples = [Sample(_texture(i), i % 3, name=f"t/{i:03d}") for i in range(N)]
    root = tmp_path_factory.mktemp("wds_tex_val")
    build_dataset(DatasetSpec("tex", ["a", "b", "c"], {"train": samples, "val": samples[:8]}),
                  root, BuildOptions(max_side=64, shard_size=2, workers=1, progress=False))
    return root


def test_a_train_and_a_val_reader_in_one_process_share_its_open_file_budget(tex_val, monkeypatch):
    """Without workers a loader reads train and val in the main process: each reader took the
    whole budget (half the limit), so together they could hold all of the limit (ImageNet-21K:
    14,200 shards against a hard 4,096) and torch and the logs got "Too many open files".
    Together they hold at most the budget, the val reader all of its shards, and each reads
    the right bytes; closing the val reader gives the train reader its share back."""
    import gc
    import os
    import random

    from ffcv_dp4tl.data import resources

    manifest = load_manifest(tex_val)
    train_split, val_split = manifest.split("train"), manifest.split("val")
    assert (len(train_split.shards), len(val_split.shards)) == (12, 4)
    want = {s: [ShardReader(split).read(i) for i in range(n)]
            for s, split, n in (("train", train_split, N), ("val", val_split, 8))}
    gc.collect()
    monkeypatch.setattr(resources, "_CLAIMS", ())  # (no readers other tests left alive)
    monkeypatch.setattr(resources, "open_files_budget", lambda: 10)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    train, val = ShardReader(train_split), ShardReader(val_split)
    rng = random.Random(0)
    order = rng.sample(range(N), N)
    assert [train.read(i) for i in order] == [want["train"][i] for i in order]
    assert fds() - before == 10  # alone: the whole budget
    held = []
    for k in range(3 * N):  # an epoch of each, interleaved, then the train epoch goes on
        i = rng.randrange(N)
        assert train.read(i) == want["train"][i]
        held.append(fds() - before)
        if k < 8:
            assert val.read(k) == want["val"][k]
            held.append(fds() - before)
    assert max(held) == 10  # never more than the budget (the old rule: 10 + 4)
    assert val._files.open_count == 4 and train._files.open_count == 6  # val: all it needs
    val.close()
    for i in order:
        assert train.read(i) == want["train"][i]
    assert fds() - before == train._files.open_count == 10  # val's share back
    train.close()
    assert fds() == before


def test_workers_share_their_loader_process_multiprocessing_temp_folder(tex, tmp_path, monkeypatch):
    """A worker hands its batches' shared memory over through sockets in a multiprocessing temp
    folder: each worker made its own pymp-* folder, and one that a signal to the job's process
    group ended (a scheduler's SIGTERM, torchrun's) left it in $TMPDIR, one per worker and rank
    at every preemption (a leak audit). The workers use the loader process's folder, which it
    removes at its exit."""
    import multiprocessing.util
    import os

    seen = tmp_path / "seen"
    seen.mkdir()
    read = ShardReader.read

    def recording_read(self, i):  # (runs in the workers: they are forked after the patch)
        (seen / f"{os.getpid()}").write_text(multiprocessing.util.get_temp_dir())
        return read(self, i)

    monkeypatch.setattr(ShardReader, "read", recording_read)
    loader = make_loader(tex, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=4,
                         resolution=16, num_workers=2)
    assert sum(len(b.labels) for b in loader) == N
    workers = {p.name: p.read_text() for p in seen.iterdir()}
    assert len(workers) == 2 and str(os.getpid()) not in workers
    assert set(workers.values()) == {multiprocessing.util.get_temp_dir()}
