"""The device-decode loader (``make_loader(decode="gpu")``), run on the CPU (``device="cpu"``).

Two datasets: the conftest's flat-colour ``index_dataset`` (pixels name the sample, so order
and index attachment are checked from pixels), and a small textured one built here whose images
are asymmetric (red rises left to right, green top to bottom, a diagonal blue wave), so a wrong
crop, flip or channel order shows up as a large pixel difference.

Measured on the CPU (mean absolute difference of normalised images, ~0.0175 = one uint8 level):
eval vs ffcv's CPU eval loader (OpenCV INTER_AREA, other JPEG decoder settings) 0.017 at 32 px
and 0.022 at 64 px (worst image 0.027); eval vs the WebDataset CPU loader (PIL) at 64 px 0.0034
(worst image 0.0046); train vs the WebDataset loader with the same seed (same crop boxes and
flips) 0.0031 (worst 0.0048). A flipped or BGR output, or a crop of ratio 0.8 instead of 0.875,
or one shifted by 2 px, is 0.15-0.85 away.
"""
from __future__ import annotations

import gc
from functools import partial
import threading
import weakref

import numpy as np
import pytest
import torch

from ffcv_dp4tl.data import (AugSpec, DeviceDecodeLoader, EpochPlan, load_manifest, make_loader,
                             mask_from_classes)
from ffcv_dp4tl.data import gpu_decode as gd
from ffcv_dp4tl.data import gpu_resample as gr
from ffcv_dp4tl.data import resources, transforms
from ffcv_dp4tl.data.transforms import center_crop_box
from ffcv_dp4tl.errors import DataError, DP4TLError

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

KEEP = [1, 3]
BS = 5
SEED = 11
# Bounds: the measured values in the module docstring, with headroom.
EVAL_FFCV_MAD = 0.035
EVAL_FFCV_WORST = 0.05
PIL_MAD = 0.01     # eval and train vs the WebDataset (PIL) loader, where PIL does not draft
FAR = 0.1          # every wrong-geometry control is at least this far off
# nvJPEG (CUDA) decodes these small, strongly coloured JPEGs ~2 uint8 levels away from
# libjpeg-turbo; measured on an H100: eval vs ffcv 0.035 (worst image 0.050), train vs the
# WebDataset loader 0.033 (worst 0.045). Geometry errors stay >= 0.15 away.
CUDA_MAD = 0.05
CUDA_WORST = 0.07

SIZES = [(40, 56), (56, 40), (48, 48), (96, 120), (128, 88)]  # (h, w), incl. 2x+ shrinks
TEX_N = 30


def texture(i: int) -> np.ndarray:
    """HWC uint8: red rises left→right (sign of its slope tells a flip), green top→bottom,
    blue a diagonal wave with a per-sample phase."""
    h, w = SIZES[i % len(SIZES)]
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 30 + 190 * x / (w - 1)
    g = 40 + 170 * y / (h - 1)
    b = 128 + 90 * np.sin(2 * np.pi * (x / (w / 2.3) + y / (h / 1.7)) + i)
    return np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8)


def _build(root, n: int, shard_size: int = 8, **opts):
    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    spec = DatasetSpec("tex", ["a", "b", "c"],
                       {"train": [Sample(texture(i), i % 3, name=f"t{i}") for i in range(n)]})
    build_dataset(spec, root, BuildOptions(max_side=128, shard_size=shard_size, workers=1,
                                           progress=False, **opts))
    return root


@pytest.fixture(scope="module")
def tex(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("tex"), TEX_N)


@pytest.fixture(scope="module")
def mask(index_split):
    return mask_from_classes(index_split, KEEP)


def _epoch(loader):
    """(images, images2 or None, labels, indices) of one epoch, concatenated."""
    batches = list(loader)
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    return (cat([b.images for b in batches]),
            cat([b.images2 for b in batches if b.images2 is not None]),
            cat([b.labels for b in batches]), cat([b.indices for b in batches]).tolist())


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().mean())


def _worst(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().mean(dim=(1, 2, 3)).max())


def _live_reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(gd.THREAD_PREFIX)]


# ---------------------------------------------------------------------------------------------
# Same samples, same order, as the CPU loaders
# ---------------------------------------------------------------------------------------------

def test_train_visits_the_cpu_loaders_samples_in_their_order(index_dataset, mask, pixel_codec):
    _, _, decode_batch = pixel_codec
    kw = dict(mask=mask, aug=AugSpec.for_train(), batch_size=BS, num_workers=1, seed=SEED, drop_last=False)
    cpu = {fmt: make_loader(index_dataset.root, "train", fmt=fmt, resolution=16, **kw)
           for fmt in ("ffcv", "wds")}
    gpu = {fmt: make_loader(index_dataset.root, "train", fmt=fmt, decode="gpu", resolution=16,
                            **kw) for fmt in ("ffcv", "wds")}
    assert all(isinstance(g, DeviceDecodeLoader) for g in gpu.values())
    plan = EpochPlan(mask.indices, shuffle=True, seed=SEED)
    for epoch, res in enumerate((16, 24)):
        orders = {}
        for name, loader in [(f"cpu-{k}", v) for k, v in cpu.items()] + \
                            [(f"gpu-{k}", v) for k, v in gpu.items()]:
            loader.set_epoch(epoch, res)
            images, _, labels, idx = _epoch(loader)
            assert images.shape[1:] == (3, res, res), name
            decoded, spread = decode_batch(images)
            assert spread < 12 and decoded == idx, name  # Batch.indices names its pixels
            assert labels.dtype == torch.int64
            assert labels.tolist() == index_dataset.labels[idx].tolist(), name
            orders[name] = idx
        assert len(set(map(tuple, orders.values()))) == 1, orders
        assert orders["gpu-ffcv"] == plan.order(epoch).tolist()
    assert len(gpu["ffcv"]) == len(cpu["ffcv"])


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_ranks_match_the_wds_loader(index_dataset, mask, world):
    kw = dict(mask=mask, aug=AugSpec.for_train(), batch_size=BS, resolution=16, num_workers=0, seed=SEED,
              drop_last=False, world_size=world)
    for epoch in range(2):
        seen = []
        for rank in range(world):
            ref = make_loader(index_dataset.root, "train", fmt="wds", rank=rank, **kw)
            ref.set_epoch(epoch)
            expect = [i for b in ref for i in b.indices.tolist()]
            for fmt in ("ffcv", "wds"):
                loader = make_loader(index_dataset.root, "train", fmt=fmt, decode="gpu",
                                     rank=rank, **kw)
                loader.set_epoch(epoch)
                assert _epoch(loader)[3] == expect, (epoch, rank, fmt)
                assert len(loader) == len(ref)
            seen += expect
        # disjoint, as many per rank (train: even), the epoch's last n mod world left out
        assert len(set(seen)) == len(seen) == len(mask) - len(mask) % world
        assert set(seen) <= set(mask.indices.tolist())


# ---------------------------------------------------------------------------------------------
# Pixels: eval against the CPU loaders, train reproducibility and crops
# ---------------------------------------------------------------------------------------------

def test_eval_pixels_match_the_cpu_loaders(tex, monkeypatch):
    def run(fmt, res, decode="cpu"):
        return _epoch(make_loader(tex, "train", fmt=fmt, decode=decode, aug=AugSpec.for_eval(),
                                  batch_size=8, resolution=res, num_workers=1))

    refs = {}
    for res in (32, 64):
        ref, _, ref_labels, ref_idx = refs[res] = run("ffcv", res)
        got, _, labels, idx = run("ffcv", res, "gpu")
        from_shards = run("wds", res, "gpu")[0]
        assert idx == ref_idx == list(range(TEX_N)) and torch.equal(labels, ref_labels)
        assert torch.equal(got, from_shards)  # same JPEG bytes in beton and shards
        assert _mad(got, ref) < EVAL_FFCV_MAD and _worst(got, ref) < EVAL_FFCV_WORST, res
        # controls: the comparison would catch a flip, a vertical flip, BGR, a sample mix-up
        for wrong in (got.flip(-1), got.flip(-2), got[:, [2, 1, 0]], got.roll(1, dims=0)):
            assert _mad(wrong, ref) > FAR
    pil, _, _, _ = run("wds", 64)  # no PIL draft at 64 px for these sizes: same geometry
    got64 = run("wds", 64, "gpu")[0]
    assert _mad(got64, pil) < PIL_MAD
    # ... and a wrong crop: ratio 0.8 instead of 224/256, or the right one shifted by 2 px
    for box in (lambda h, w, *_: center_crop_box(h, w, 0.8),
                lambda h, w, *_: (lambda t, l, ch, cw: (t, l + 2, ch, cw))(*center_crop_box(h, w))):
        monkeypatch.setattr(transforms, "center_crop_box", box)
        assert _mad(run("wds", 64, "gpu")[0], pil) > FAR
        assert _mad(run("ffcv", 32, "gpu")[0], refs[32][0]) > FAR


def _train(tex, fmt="wds", decode="gpu", **kw):
    args = dict(aug=AugSpec.for_train(), batch_size=8, resolution=64, num_workers=1, seed=5,
                drop_last=False)
    args.update(kw)
    if "max_canvas_bytes" in args:  # a DeviceDecodeLoader option make_loader does not take
        split = load_manifest(tex).split("train")
        plan = EpochPlan(np.arange(split.num_samples), True, args.pop("seed"))
        args.pop("drop_last")
        return DeviceDecodeLoader(split, plan, source=fmt, **args)
    return make_loader(tex, "train", fmt=fmt, decode=decode, **args)


def test_train_crops_reproducible_per_epoch_and_equal_to_wds_crops(tex):
    a, b = _train(tex), _train(tex, fmt="ffcv", num_workers=0)
    pil = _train(tex, decode="cpu", num_workers=0)
    epochs = []
    for epoch in range(2):
        for loader in (a, b, pil):
            loader.set_epoch(epoch)
        x, _, _, idx = _epoch(a)
        y, _, _, idx_b = _epoch(b)
        ref, _, _, idx_ref = _epoch(pil)
        assert idx == idx_b == idx_ref
        assert torch.equal(x, y)  # seeded per (seed, epoch, sample), not per thread or source
        assert _mad(x, ref) < PIL_MAD and _worst(x, ref) < 2 * PIL_MAD, epoch
        assert _mad(x.flip(-1), ref) > FAR
        a.set_epoch(epoch)
        assert torch.equal(_epoch(a)[0], x)  # replaying an epoch replays its crops
        epochs.append((dict(zip(idx, x)), idx))
    (first, order0), (second, order1) = epochs
    assert order0 != order1
    assert all(_mad(first[i], second[i]) > 0.05 for i in order0)  # new crops every epoch
    other_seed = _train(tex, seed=6)
    x6, _, _, idx6 = _epoch(other_seed)
    assert _mad(torch.stack([dict(zip(idx6, x6))[i] for i in order0]),
                torch.stack([first[i] for i in order0])) > FAR


def test_flip_in_about_half_the_samples(tex):
    loader = _train(tex, resolution=32)
    flipped, expected = [], []
    for epoch in range(4):
        loader.set_epoch(epoch)
        images, _, _, idx = _epoch(loader)
        red = images[:, 0]
        flipped += (red[:, :, -1] - red[:, :, 0]).mean(dim=1).lt(0).tolist()  # red falls → flip
        hw = np.array([SIZES[i % len(SIZES)] for i in idx])
        draws = transforms.crop_draws(hw, np.array(idx), aug=loader.aug,
                                      eseed=loader.plan.aug_seed(epoch))
        expected += draws[0][1].tolist()
    assert flipped == expected
    assert 0.3 < np.mean(flipped) < 0.7, np.mean(flipped)


def test_two_views_are_independent_crops_of_the_same_samples(tex):
    two = _train(tex, aug=AugSpec.for_train(views=2, crop_scale=(0.2, 1.0)))
    pil = _train(tex, decode="cpu", aug=AugSpec.for_train(views=2, crop_scale=(0.2, 1.0)),
                 num_workers=0)
    for loader in (two, pil):
        loader.set_epoch(1, 72)  # >= half of every image side: PIL does not draft
    x1, x2, _, idx = _epoch(two)
    r1, r2, _, idx_ref = _epoch(pil)
    assert idx == idx_ref and x2.shape == x1.shape == (TEX_N, 3, 72, 72)
    assert _mad(x1, r1) < PIL_MAD and _mad(x2, r2) < PIL_MAD  # the WebDataset loader's draws
    per_sample = (x1 - x2).abs().mean(dim=(1, 2, 3))
    assert (per_sample > 0.02).float().mean() > 0.9  # different crops of each sample


def test_dtype_and_channels_last(tex):
    base = _epoch(_train(tex, fmt="ffcv", aug=AugSpec.for_eval()))[0]
    loader = _train(tex, fmt="ffcv", aug=AugSpec.for_eval(), dtype=torch.bfloat16, channels_last=True)
    batch = next(iter(loader))
    assert batch.images.dtype == torch.bfloat16 and batch.labels.dtype == torch.int64
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert _mad(batch.images, base[:len(batch.images)]) < 0.01


def test_antialiased_shrink_is_batched_and_does_not_alias():
    """1-px vertical stripes shrunk 4-6x: the mipmap path gives flat grey (their true area
    average), plain bilinear (every image on level 0) keeps the stripes' aliasing. Two image
    sizes share one zero-padded canvas, as in a decoded batch."""
    hw = np.array([[100, 130], [80, 72]])
    res = 16
    boxes = np.array([[0, 0, 100, 100], [5, 2, 70, 70]])
    flips = np.array([False, True])
    xx = np.arange(136)[None, :].repeat(128, 0)
    canvas = torch.from_numpy((xx % 2 * 255).astype(np.float32)).expand(2, 3, 128, 136).clone()
    for k, (h, w) in enumerate(hw):
        canvas[k, :, h:] = 0
        canvas[k, :, :, w:] = 0
    levels = gr.mip_level(boxes, res)
    assert levels.tolist() == [2, 2]
    for lv, flat in ((levels, True), (np.zeros(2, np.int64), False)):
        pyramid = [canvas] + gr.mip_pyramid(canvas, torch.from_numpy(hw), int(lv.max()))
        params = torch.from_numpy(gr.grid_params(boxes, flips, hw, lv, res, (128, 136)))
        out = gr.resample(pyramid, params, gr.level_groups(lv), res)
        assert out.shape == (2, 3, res, res)
        spread = float((out - 127.5).abs().mean())
        assert (spread < 1) if flat else (spread > 40), (lv, spread)


# ---------------------------------------------------------------------------------------------
# Errors, threads, resolution
# ---------------------------------------------------------------------------------------------

def test_errors(tex, tmp_path):
    kw = dict(aug=AugSpec.for_eval(), batch_size=4, resolution=16, num_workers=0)
    with pytest.raises(DataError, match="unknown decode 'nvjpeg'; choose one of cpu, gpu, auto"):
        make_loader(tex, "train", decode="nvjpeg", **kw)
    raw = _build(tmp_path / "raw", 8, beton_mode="proportion", raw_fraction=0.5)
    with pytest.raises(DataError, match="stored as raw pixels.*fmt='wds'.*decode='cpu'"):
        make_loader(raw, "train", fmt="ffcv", decode="gpu", **kw)
    assert _epoch(make_loader(raw, "train", fmt="wds", decode="gpu", **kw))[3] == list(range(8))
    split = load_manifest(tex).split("train")
    with pytest.raises(DataError, match="unknown byte source"):
        DeviceDecodeLoader(split, EpochPlan(np.arange(4), False, 0), source="tar", **kw)
    # auto: the CPU loaders unless the device is CUDA with a working decoder
    assert not isinstance(make_loader(tex, "train", decode="auto", **kw), DeviceDecodeLoader)


def test_auto_decode_takes_the_gpu_only_when_few_cores_feed_it(monkeypatch):
    from ffcv_dp4tl.data import loaders

    monkeypatch.setattr(loaders, "device_decode_available", lambda dev: True)
    monkeypatch.setattr(loaders, "_cores_per_gpu", lambda: 16.0)  # the measured H100 host
    assert loaders.resolve_decode("auto", "cuda") == "cpu"
    monkeypatch.setattr(loaders, "_cores_per_gpu", lambda: 4.0)  # e.g. 8 GPUs on 32 cores
    assert loaders.resolve_decode("auto", "cuda") == "gpu"
    assert loaders.resolve_decode("auto", "cpu") == "cpu"
    monkeypatch.setattr(loaders, "device_decode_available", lambda dev: False)
    assert loaders.resolve_decode("auto", "cuda") == "cpu"
    assert loaders.resolve_decode("gpu", "cpu") == "gpu" and loaders.resolve_decode("cpu", "cuda") == "cpu"


def test_recipe_decode_knob():
    from ffcv_dp4tl.training.recipe import Recipe

    base = Recipe.from_dict({})
    assert base.data.decode == "cpu" and "decode" not in base.to_dict()["data"]
    gpu = Recipe.from_dict({"data": {"decode": "gpu"}})
    assert gpu.data.decode == "gpu" and gpu.fingerprint() != base.fingerprint()
    with pytest.raises(DP4TLError, match="data.decode = 'nvjpeg' is not one of cpu, gpu, auto"):
        Recipe.from_dict({"data": {"decode": "nvjpeg"}})


def test_threads_stop_on_early_break_close_and_drop(tex):
    assert not _live_reader_threads()
    loader = _train(tex, num_workers=2, batch_size=4)
    for _ in loader:
        assert _live_reader_threads()  # reading ahead
        break
    assert not _live_reader_threads()
    it = iter(loader)
    next(it)
    loader.close()  # an unfinished iteration's threads stop with the loader
    assert not _live_reader_threads()
    del it
    it = iter(loader)
    next(it)
    ref = weakref.ref(loader)
    del loader, it  # dropping both frees the loader at once (no reference cycle)
    assert ref() is None and not _live_reader_threads()
    gc.collect()
    assert not _live_reader_threads()


@pytest.mark.parametrize("fmt", ["ffcv", "wds"])
def test_close_closes_the_data_files(tex, fmt):
    """``close()`` closes the files the loader reads its JPEG bytes from (the beton, or the
    shards) now, not when the loader is collected: a loader a traceback keeps held them. (Its
    labels, a memory map, stay with the loader.)"""
    import os

    def data_fds(paths):  # this process's descriptors of the loader's data files
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                out.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # (the listing's own descriptor, gone)
                pass
        return [p for p in out if p in paths]

    loader = _train(tex, fmt=fmt, num_workers=2, batch_size=4)
    files = loader._locations.files
    paths = {os.path.realpath(p) for p in files.paths}
    before = data_fds(paths)
    assert len(_epoch(loader)[3]) == TEX_N
    assert files.open_count > 0 and len(data_fds(paths)) > len(before)  # (open after the epoch)
    loader.close()
    assert files.open_count == 0 and data_fds(paths) == before
    assert not _live_reader_threads()
    assert loader  # (still referenced: closed by close(), not by collection)


def test_decode_and_pad_run_on_the_read_ahead_threads(tex, monkeypatch):
    """The iterating thread only crops and resizes: every batch was decoded and padded on a
    read-ahead thread (with workers; inline without)."""
    threads = []
    real = DeviceDecodeLoader._decode_padded

    def spy(self, host):
        threads.append(threading.current_thread().name)
        return real(self, host)

    monkeypatch.setattr(DeviceDecodeLoader, "_decode_padded", spy)
    x, _, _, idx = _epoch(_train(tex, num_workers=2, batch_size=4))
    assert len(threads) == -(-TEX_N // 4) and all(t.startswith(gd.THREAD_PREFIX) for t in threads)
    assert sorted(idx) == list(range(TEX_N)) and x.shape[0] == TEX_N
    threads.clear()
    _epoch(_train(tex, num_workers=0, batch_size=4))
    assert threads and set(threads) == {threading.current_thread().name}


def test_every_read_ahead_thread_sets_the_device_first(monkeypatch):
    """On CUDA each read-ahead thread calls ``torch.cuda.set_device`` before its first batch
    (else every rank creates a context on GPU 0). No GPU here: only the C call at the bottom of
    ``set_device`` is replaced, so torch's own argument check (an index is required) runs."""
    calls = []
    monkeypatch.setattr(torch._C, "_cuda_setDevice",
                        lambda i: calls.append((threading.current_thread().name, i)))
    seen = []

    def work(b):
        name = threading.current_thread().name
        assert (name, 1) in calls  # the device was set in this thread
        seen.append(b)
        return b

    reader = gd._ReadAhead(work, 12, workers=3, depth=4,
                           initializer=partial(gd.thread_device_setup, torch.device("cuda", 1)))
    assert list(reader) == list(range(12))
    reader.close()
    names = {n for n, _ in calls}
    assert len(calls) == len(names) <= 3 and all(n.startswith(gd.THREAD_PREFIX) for n in names)
    calls.clear()
    gd.thread_device_setup(torch.device("cpu"))  # nothing to set for a CPU loader
    assert calls == []


def test_shards_past_the_open_file_limit_are_read(tmp_path, monkeypatch):
    """One descriptor was kept per shard read: a split with more shards than the open-file
    limit (ImageNet-21K: about 14,200 at the default shard size, against a common hard 4,096) failed
    with "Too many open files". At most ``MAX_OPEN_FILES`` stay open, shared by the threads."""
    import os
    import resource

    from ffcv_dp4tl.data import loaders

    root = _build(tmp_path / "many", 40, shard_size=1)
    assert len(load_manifest(root).split("train").shards) == 40
    monkeypatch.setattr(gd, "MAX_OPEN_FILES", 4, raising=False)
    monkeypatch.setattr(loaders, "raise_open_files_limit", lambda: None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 24, hard))
    try:
        loader = make_loader(root, "train", fmt="wds", decode="gpu", resolution=16,
                             batch_size=8, num_workers=2, aug=AugSpec.for_train(), seed=SEED)
        idx = _epoch(loader)[3]
        loader.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert sorted(idx) == list(range(40))
    monkeypatch.setattr(gd, "MAX_OPEN_FILES", None)  # (the default: resources.open_files_budget)
    monkeypatch.setattr(resources, "_CLAIMS", ())  # (no readers other tests left alive)
    monkeypatch.setattr(resources, "open_files_budget", lambda: 25)
    locations = gd._shard_locations(load_manifest(root).split("train"))
    assert locations.files.claim.cap() == 25
    locations.close()


def test_oversized_canvas_is_a_clear_error(tex):
    """The batch canvas is padded to the largest image: too large is refused before decoding."""
    idx, hw = np.arange(1024), np.full((1024, 2), 300)
    hw[17] = (4096, 3000)
    with pytest.raises(DataError, match=r"batch of 1024 images is padded to 4096x3000 px \(sample "
                       r"17 is 4096x3000 px\), a 140.6 GiB canvas, over the 8.0 GiB limit; "
                       r"rebuild the dataset with a smaller --max-side, lower the batch size"):
        gr.check_canvas(idx, hw, (4096, 3000), 0)
    gr.check_canvas(idx, hw[:, :] * 0 + 300, (300, 300), 0)  # 1.0 GiB: fine
    small = _train(tex, batch_size=8, max_canvas_bytes=1000)
    with pytest.raises(DataError, match="over the 0.0 GiB limit"):
        next(iter(small))
    small.close()


def test_set_epoch_changes_resolution(tex):
    loader = _train(tex, resolution=24)
    assert loader.resolution == 24 and len(loader) == -(-TEX_N // 8)
    loader.set_epoch(3, 40)
    assert loader.resolution == 40 and loader.epoch == 3
    assert _epoch(loader)[0].shape == (TEX_N, 3, 40, 40)
    assert loader.epoch == 4  # a full pass moves on to the next epoch
    loader.set_epoch(4)
    assert loader.resolution == 40


# ---------------------------------------------------------------------------------------------
# The same checks on CUDA (nvJPEG); runs on the GPU host
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_matches_the_cpu_loaders(tex):
    kw = dict(aug=AugSpec.for_eval(), batch_size=8, resolution=32, num_workers=1)
    ref, _, _, ref_idx = _epoch(make_loader(tex, "train", fmt="ffcv", **kw))
    for fmt in ("ffcv", "wds"):
        loader = make_loader(tex, "train", fmt=fmt, decode="gpu", device="cuda", **kw)
        assert isinstance(loader, DeviceDecodeLoader)
        got, _, labels, idx = _epoch(loader)
        assert got.device.type == "cuda" and labels.device.type == "cuda"
        assert idx == ref_idx
        assert _mad(got, ref) < CUDA_MAD and _worst(got, ref) < CUDA_WORST
        assert _mad(got.flip(-1), ref) > FAR and _mad(got[:, [2, 1, 0]], ref) > FAR
    cpu_side = _train(tex, decode="cpu", num_workers=0)
    cuda_side = _train(tex, device="cuda", channels_last=True)
    for epoch in range(2):
        cpu_side.set_epoch(epoch)
        cuda_side.set_epoch(epoch)
        x, _, _, idx = _epoch(cuda_side)
        y, _, _, idx_ref = _epoch(cpu_side)
        assert idx == idx_ref
        assert _mad(x, y) < CUDA_MAD and _worst(x, y) < CUDA_WORST
        assert _mad(x.flip(-1), y) > FAR
    assert not _live_reader_threads()


def test_a_loader_made_for_cuda_names_its_device_index(monkeypatch):
    """``device="cuda"`` (what ``--device cuda``/``auto`` resolve to) becomes ``cuda:N``, N the
    current device of the thread that makes the loader: a read-ahead thread starts on device 0
    and ``torch.cuda.set_device`` refuses a device without an index."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert gd.with_index(torch.device("cuda")) == torch.device("cuda", 3)
    assert gd.with_index(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert gd.with_index(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch._C, "_cuda_setDevice", lambda i: None)
    with pytest.raises(ValueError, match="index"):  # what the threads hit without with_index
        gd.thread_device_setup(torch.device("cuda"))
    gd.thread_device_setup(gd.with_index(torch.device("cuda")))


def test_the_loader_takes_its_device_through_with_index(tex, monkeypatch):
    """The loader's constructor (the thread that makes it) resolves ``cuda`` to ``cuda:N``,
    so the read-ahead threads get an index. No GPU: with_index is recorded and answers CPU."""
    seen = []
    monkeypatch.setattr(gd, "with_index", lambda d: (seen.append(d), torch.device("cpu"))[1])
    split = load_manifest(tex).split("train")
    ld = DeviceDecodeLoader(split, EpochPlan(np.arange(4), False, 0), source="wds",
                            aug=AugSpec.for_eval(), batch_size=4, resolution=32, device="cuda",
                            num_workers=0)
    assert seen == [torch.device("cuda")] and ld.device == torch.device("cpu")
    ld.close()


def test_a_train_and_a_val_loaders_files_share_the_processs_open_file_budget(tmp_path,
                                                                              monkeypatch):
    """The GPU-decode loader's train and val readers both read in the main process (threads):
    each held half the open-file limit, so together all of it (ImageNet-21K: about 14,200
    shards against a hard 4,096). Together they hold at most the budget and read right."""
    import os

    from ffcv_dp4tl.data.wds_loader import ShardReader

    split = load_manifest(_build(tmp_path / "many", 16, shard_size=1)).split("train")
    want = [ShardReader(split).read(i)[0] for i in range(16)]
    gc.collect()
    monkeypatch.setattr(gd, "MAX_OPEN_FILES", None)
    monkeypatch.setattr(resources, "_CLAIMS", ())  # (no readers other tests left alive)
    monkeypatch.setattr(resources, "open_files_budget", lambda: 10)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    train, val = gd._shard_locations(split), gd._shard_locations(split)  # (val: the same files)
    order = np.random.default_rng(0).permutation(16)
    got = train.read(order)  # alone: the whole budget
    assert [bytes(t.numpy()) for t in got] == [want[i] for i in order]
    assert fds() - before == train.files.open_count == 10
    held = []
    for i in order:
        for loc in (val, train):
            assert bytes(loc.read(np.array([i]))[0].numpy()) == want[i]
            held.append(fds() - before)
    assert max(held) == 10 and train.files.open_count == val.files.open_count == 5
    val.close()
    train.close()
    assert fds() == before
