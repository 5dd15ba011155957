"""Masked loaders (make_loader, fmt="ffcv" and fmt="wds") on the pixel-encoded index dataset.

Every image of ``index_dataset`` is one flat colour encoding its own sample index, so a batch
can be checked against the mask, ``Batch.indices`` and ``labels.npy`` from its pixels alone,
whatever crop, flip or resolution was applied. For ffcv this verifies our index attachment
(ffcv batches carry no indices). ffcv loaders compile a numba pipeline when first iterated
(~10 s here), so each kind is built once per module and reused for every epoch.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ffcv_dp4tl.data import (AugSpec, EpochPlan, load_manifest, make_loader, make_mask,
                             mask_from_classes, save_mask)
from ffcv_dp4tl.errors import DataError, MaskError

# numba's dispatcher finalizer may log a KeyError when ffcv's generated code is collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

KEEP = [1, 3]  # 2 of 5 classes
BS = 5
SEED = 11
TRAIN_RES = [16, 24, 20]  # progressive resizing: one resolution per epoch


@pytest.fixture(scope="module")
def mask(index_split):
    return mask_from_classes(index_split, KEEP)


def _collect(loader, decode_batch, expect_res=None):
    """One epoch: (indices from Batch.indices, indices from pixels, labels, batch sizes)."""
    idx, px, labels, sizes = [], [], [], []
    for batch in loader:
        assert batch.images.dtype == torch.float32 and batch.images.ndim == 4
        assert batch.images.shape[1] == 3
        if expect_res is not None:
            assert tuple(batch.images.shape[2:]) == (expect_res, expect_res)
        assert batch.labels.dtype == torch.int64 and batch.indices.dtype == torch.int64
        assert len(batch.labels) == len(batch.indices) == len(batch.images)
        decoded, spread = decode_batch(batch.images)
        assert spread < 12, spread  # flat images stay flat: decoding is unambiguous
        idx += batch.indices.tolist()
        px += decoded
        labels += batch.labels.tolist()
        sizes.append(len(batch.indices))
    return idx, px, labels, sizes


@pytest.fixture(scope="module")
def ffcv_eval(index_dataset, mask):
    return make_loader(index_dataset.root, "train", fmt="ffcv", mask=mask, aug=AugSpec.for_eval(),
                       batch_size=BS, resolution=24, num_workers=1)


@pytest.fixture(scope="module")
def ffcv_train(index_dataset, mask):
    return make_loader(index_dataset.root, "train", fmt="ffcv", mask=mask, aug=AugSpec.for_train(),
                       batch_size=BS, resolution=TRAIN_RES[0], num_workers=1, seed=SEED,
                       drop_last=False)


def _wds_train(index_dataset, mask, seed=SEED, num_workers=0, **kw):
    return make_loader(index_dataset.root, "train", fmt="wds", mask=mask, aug=AugSpec.for_train(),
                       batch_size=BS, resolution=TRAIN_RES[0], num_workers=num_workers, seed=seed,
                       drop_last=False, **kw)


def test_a_direct_call_asking_too_many_workers_is_told_of_its_argument(index_dataset, mask,
                                                                          capsys):
    """`make_loader(..., num_workers=8)` from Python on a smaller machine printed
    "[note] data.num_workers = 8 ...", a recipe key the caller never used (docs audit): the
    note names the argument."""
    from ffcv_dp4tl.data import resources

    resources._NOTED.clear()
    loader = _wds_train(index_dataset, mask, num_workers=10_000)
    loader.close()
    err = capsys.readouterr().err
    assert "[note] num_workers = 10000 but this machine gives the process" in err, err
    assert "data.num_workers" not in err


# ---------------------------------------------------------------------------------------------
# Eval mode: exactly the masked samples, with the right indices and labels
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["ffcv", "wds"])
def test_eval_reads_exactly_the_masked_samples(fmt, index_dataset, mask, ffcv_eval, pixel_codec):
    _, _, decode_batch = pixel_codec
    loader = ffcv_eval if fmt == "ffcv" else make_loader(
        index_dataset.root, "train", fmt="wds", mask=mask, aug=AugSpec.for_eval(), batch_size=BS,
        resolution=24, num_workers=1)
    m = mask.indices.tolist()
    assert len(m) > 2 * BS and set(index_dataset.labels[m].tolist()) == set(KEEP)
    assert len(loader) == -(-len(m) // BS)
    for _ in range(2):  # the same loader object serves several epochs
        idx, px, labels, sizes = _collect(loader, decode_batch, expect_res=24)
        assert px == idx  # Batch.indices names the samples actually in the batch
        assert idx == m  # eval: every masked sample once, in file order, nothing else
        assert labels == index_dataset.labels[idx].tolist()
        assert sizes == [BS] * (len(m) // BS) + ([len(m) % BS] if len(m) % BS else [])


def test_mask_from_file_and_full_split(index_dataset, index_split, mask, tmp_path, pixel_codec):
    _, _, decode_batch = pixel_codec
    path = save_mask(tmp_path / "keep", mask)
    loader = make_loader(index_dataset.root, "train", fmt="wds", mask=str(path), aug=AugSpec.for_eval(),
                         batch_size=BS, resolution=16, num_workers=0)
    idx, px, _, _ = _collect(loader, decode_batch)
    assert idx == px == mask.indices.tolist()
    loader = make_loader(index_dataset.root, "train", fmt="wds", aug=AugSpec.for_eval(), batch_size=16,
                         resolution=16, num_workers=0)
    idx, px, labels, _ = _collect(loader, decode_batch)
    assert idx == px == list(range(len(index_dataset)))
    assert labels == index_dataset.labels.tolist()


def test_make_loader_errors(index_dataset, index_split, tmp_path):
    from ffcv_dp4tl.data.manifest import SplitInfo

    kw = dict(aug=AugSpec.for_eval(), batch_size=BS, resolution=16, num_workers=0)
    with pytest.raises(DataError, match="unknown loader format 'tfrecord'"):
        make_loader(index_dataset.root, "train", fmt="tfrecord", **kw)
    with pytest.raises(DataError, match=r"has no split 'val' \(available: train\)$"):
        make_loader(index_dataset.root, "val", fmt="wds", **kw)
    with pytest.raises(DataError, match="not a built dataset"):
        make_loader(tmp_path, "train", fmt="wds", **kw)
    other = SplitInfo("train", index_split.num_samples, "0" * 64, index_split.beton,
                      index_split.labels, index_split.index, index_split.shards)
    foreign = make_mask([0, 1], other)
    with pytest.raises(MaskError, match="made for another dataset"):
        make_loader(index_dataset.root, "train", fmt="wds", mask=foreign, **kw)
    with pytest.raises(MaskError, match="mask file not found"):
        make_loader(index_dataset.root, "train", fmt="ffcv", mask=tmp_path / "none.npy", **kw)


BAD_LOADER_ARGS = [
    # resolution 0 aborted the process (OpenCV assert in an ffcv worker) or, with wds, blamed the
    # data ("cannot decode the JPEG ... run dp4tl verify"); -32, 32.0: raw torch/ffcv errors
    ("resolution", 0, "resolution must be an integer number of pixels from 1 to 2048, got 0"),
    ("resolution", -32, "resolution must be an integer number of pixels from 1 to 2048, got -32"),
    ("resolution", 32.0, "resolution must be an integer number of pixels from 1 to 2048, got 32.0"),
    ("resolution", True, "resolution must be an integer number of pixels from 1 to 2048, got True"),
    # 100000: batch buffers of terabytes, a torch allocation traceback
    ("resolution", 100000, "resolution must be an integer number of pixels from 1 to 2048, got 100000"),
    # batch size 0: ZeroDivisionError in ffcv; -1: "__len__() should return >= 0"
    ("batch_size", 0, "batch_size must be a positive integer, got 0"),
    ("batch_size", -1, "batch_size must be a positive integer, got -1"),
    ("batch_size", 2.5, "batch_size must be a positive integer, got 2.5"),
    ("batch_size", "8", "batch_size must be a positive integer, got '8'"),
    ("num_workers", -1, "num_workers must be an integer >= 0"),
    # an integer dtype truncated the normalised images to 0/±1/±2 without a word
    ("dtype", torch.int64, "dtype=torch.int64: images are normalised floats; use a floating dtype"),
    ("seed", -1, "seed: -1 is negative; seeds are integers >= 0"),
    ("seed", 1.5, "seed: 1.5 is not an integer"),
]


@pytest.mark.parametrize("fmt", ["ffcv", "wds"])
@pytest.mark.parametrize("arg,value,message", BAD_LOADER_ARGS,
                         ids=[f"{a}={v!r}" for a, v, _ in BAD_LOADER_ARGS])
def test_make_loader_refuses_bad_sizes_in_one_line(fmt, arg, value, message, index_dataset):
    kw = dict(aug=AugSpec.for_train(), batch_size=BS, resolution=16, num_workers=0)
    with pytest.raises(DataError, match=re.escape(message)):
        make_loader(index_dataset.root, "train", fmt=fmt, **{**kw, arg: value})


@pytest.mark.parametrize("device,message", [
    ("gpu", "device 'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
    ("cuda", "device 'cuda': no CUDA device is visible on this machine"),
])
def test_make_loader_takes_the_device_rule(device, message, index_dataset, monkeypatch):
    """The CLI's device rule (contracts.check_device), not torch's 'Expected one of cpu, cuda,
    ipu, ...' or 'Found no NVIDIA driver'; auto loads on the CPU here."""
    from ffcv_dp4tl.errors import DP4TLError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kw = dict(aug=AugSpec.for_eval(), batch_size=BS, resolution=16, num_workers=0)
    with pytest.raises(DP4TLError, match=re.escape(message)):
        make_loader(index_dataset.root, "train", fmt="wds", device=device, **kw)
    assert make_loader(index_dataset.root, "train", fmt="wds", device="auto", **kw).device.type == "cpu"


@pytest.mark.parametrize("fmt", ["ffcv", "wds"])
def test_set_epoch_refuses_a_bad_resolution_and_keeps_the_loader(fmt, index_dataset, mask,
                                                                  ffcv_train, pixel_codec):
    """A live loader's resolution (progressive resizing) follows make_loader's rule: refused in
    one line, and the loader still reads its epochs at the resolution it had."""
    loader = ffcv_train if fmt == "ffcv" else _wds_train(index_dataset, mask)
    loader.set_epoch(0, TRAIN_RES[0])
    for bad in (0, -8, 8.0, True, 4096):
        with pytest.raises(DataError, match="resolution must be an integer number of pixels"):
            loader.set_epoch(1, bad)
        assert loader.resolution == TRAIN_RES[0] and loader.epoch == 0
        with pytest.raises(DataError, match="next_resolution must be an integer number of pixels"):
            loader.set_epoch(0, TRAIN_RES[0], next_resolution=bad)  # (8.7 was read as 8)
    idx, px, _, _ = _collect(loader, pixel_codec[2], expect_res=TRAIN_RES[0])
    assert sorted(idx) == sorted(px) == mask.indices.tolist()


@pytest.mark.parametrize("bad", [np.array([0, 1, 2]), [0, 1], (3,)], ids=["ndarray", "list", "tuple"])
def test_a_bare_index_array_is_refused_pointing_to_make_mask(bad, index_dataset, index_split,
                                                             pixel_codec):
    """``mask=`` takes an IndexMask or a saved mask's path: bare indices carry no dataset
    fingerprint, so they are refused (pathlib's 'expected str, bytes or os.PathLike object'
    before) with the call that makes a mask of them, which then loads."""
    kw = dict(aug=AugSpec.for_eval(), batch_size=BS, resolution=16, num_workers=0)
    with pytest.raises(MaskError, match=r"mask must be an IndexMask or the path of a saved mask "
                                        r"\(\.npy\), got (ndarray|list|tuple); make one from "
                                        r"sample indices with make_mask\("):
        make_loader(index_dataset.root, "train", fmt="wds", mask=bad, **kw)
    loader = make_loader(index_dataset.root, "train", fmt="wds", mask=make_mask(bad, index_split), **kw)
    idx, px, _, _ = _collect(loader, pixel_codec[2])
    assert idx == px == sorted(np.asarray(bad).tolist())


# ---------------------------------------------------------------------------------------------
# Train mode: reshuffled epochs, progressive resizing, same order in both formats
# ---------------------------------------------------------------------------------------------

def test_train_epochs_resize_reshuffle_and_agree_across_formats(index_dataset, mask, ffcv_train,
                                                                  pixel_codec):
    _, _, decode_batch = pixel_codec
    m = sorted(mask.indices.tolist())
    wds_train = _wds_train(index_dataset, mask, num_workers=2)
    plan = EpochPlan(mask.indices, shuffle=True, seed=SEED)
    orders = {"ffcv": [], "wds": []}
    for epoch, res in enumerate(TRAIN_RES):
        for fmt, loader in (("ffcv", ffcv_train), ("wds", wds_train)):
            loader.set_epoch(epoch, res)
            idx, px, labels, sizes = _collect(loader, decode_batch, expect_res=res)
            assert px == idx, (fmt, epoch)
            assert sorted(idx) == m, (fmt, epoch)  # drop_last=False: each sample exactly once
            assert labels == index_dataset.labels[idx].tolist()
            assert sum(sizes) == len(m) and len(sizes) == len(loader)
            orders[fmt].append(idx)
        assert orders["ffcv"][-1] == orders["wds"][-1] == plan.order(epoch).tolist()
    assert ffcv_train.resolution == TRAIN_RES[-1]
    eps = orders["ffcv"]
    assert eps[0] != eps[1] and eps[1] != eps[2] and eps[0] != eps[2]
    assert eps[0] != m  # shuffled, not file order

    # Without set_epoch, the next iteration is the next epoch (both formats).
    for fmt, loader in (("ffcv", ffcv_train), ("wds", wds_train)):
        idx, px, _, _ = _collect(loader, decode_batch, expect_res=TRAIN_RES[-1])
        assert px == idx and idx == plan.order(len(TRAIN_RES)).tolist(), fmt
    # Going back to an epoch replays its order.
    ffcv_train.set_epoch(1, TRAIN_RES[0])
    idx, px, _, _ = _collect(ffcv_train, decode_batch, expect_res=TRAIN_RES[0])
    assert idx == px == orders["ffcv"][1]


@pytest.mark.parametrize("drop_last", [True, False])
def test_an_epoch_started_at_batch_k_yields_the_whole_epochs_batches_after_k(drop_last, index_dataset,
                                                                           mask, pixel_codec):
    """``set_epoch(e, start_batch=k)`` (a run resumed from a mid-epoch checkpoint): every
    format and decoder yields batches k.. of the epoch read whole, no partial batch under drop_last (ffcv
    truncates the order by its first epoch's length), and the next epoch is whole again."""
    _, _, decode_batch = pixel_codec
    kw = dict(mask=mask, aug=AugSpec.for_train(), batch_size=3, resolution=16, num_workers=1,
              seed=SEED, drop_last=drop_last)
    for fmt, decode in (("ffcv", "cpu"), ("wds", "cpu"), ("ffcv", "gpu")):  # (gpu: on the CPU)
        loader = make_loader(index_dataset.root, "train", fmt=fmt, decode=decode, **kw)
        loader.set_epoch(2)
        whole, n = _collect(loader, decode_batch)[0], len(loader)
        assert n == (len(mask) // 3 if drop_last else -(-len(mask) // 3)) and n >= 3
        loader.set_epoch(2, start_batch=2)
        assert len(loader) == n - 2
        idx, px, _, sizes = _collect(loader, decode_batch)
        assert idx == px == whole[2 * 3:] and len(sizes) == n - 2, fmt
        assert sizes[:-1] == [3] * (n - 3) and (sizes[-1] == 3 or not drop_last)
        assert len(loader) == n  # epoch 3: whole
        assert _collect(loader, decode_batch)[0] == EpochPlan(mask.indices, True, SEED).order(3)[
            :n * 3 if drop_last else None].tolist()
    with pytest.raises(DataError, match="cannot start at batch"):
        loader.set_epoch(2, start_batch=n + 1)


def test_same_seed_same_order_other_seed_differs(index_dataset, mask):
    def epoch_orders(seed):
        loader = _wds_train(index_dataset, mask, seed=seed)
        out = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            out.append([i for b in loader for i in b.indices.tolist()])
        return out

    a, b, c = epoch_orders(SEED), epoch_orders(SEED), epoch_orders(SEED + 1)
    assert a == b
    assert a != c and sorted(a[0]) == sorted(c[0])


def test_an_ffcv_epoch_left_early_ends_its_thread_before_the_next_epoch(index_dataset, mask, ffcv_eval,
                                                                        pixel_codec):
    """``break`` out of an ffcv epoch: its decode thread has ended when the loop is left (ffcv's
    own keeps decoding into the batch buffers the next epoch reuses, and a process that exits
    while it is in numba's native code aborts with "terminate called without an active
    exception"); the next epoch reads exactly the masked samples."""
    import threading

    from ffcv.loader.epoch_iterator import EpochIterator

    _, _, decode_batch = pixel_codec
    for left_after in (1, 2):
        for b, _batch in enumerate(ffcv_eval):
            if b + 1 == left_after:
                break
        alive = [t for t in threading.enumerate() if isinstance(t, EpochIterator) and t.is_alive()]
        assert not alive, f"ffcv epoch threads still running after the loop: {alive}"
        idx, px, _, _ = _collect(ffcv_eval, decode_batch, expect_res=24)
        assert px == idx == mask.indices.tolist()


def test_ffcv_with_no_workers_decodes_on_one_thread(index_dataset, mask, pixel_codec):
    """``num_workers=0`` ("load in this process") on ffcv, which has no in-process loading: ffcv
    read 0 as ``os.cpu_count()``, the machine's cores, and under taskset or a Slurm allocation
    its thread pool refused to start with a traceback (review). One decode thread, same
    samples."""
    _, _, decode_batch = pixel_codec
    loader = make_loader(index_dataset.root, "train", fmt="ffcv", mask=mask,
                         aug=AugSpec.for_eval(), batch_size=8, resolution=24, num_workers=0)
    assert loader.loader.num_workers == 1
    idx, px, _, _ = _collect(loader, decode_batch, expect_res=24)
    assert px == idx == mask.indices.tolist()


def test_train_drop_last_default(index_dataset, mask):
    bs = 7
    loader = make_loader(index_dataset.root, "train", fmt="wds", mask=mask, aug=AugSpec.for_train(),
                         batch_size=bs, resolution=16, num_workers=0)
    n = len(mask)
    assert n % bs, "test needs a partial last batch"
    sizes = [len(b.indices) for b in loader]
    assert sizes == [bs] * (n // bs) and len(loader) == n // bs


def test_wds_loader_with_workers_is_freed_without_gc(index_dataset, mask):
    """No reference cycle through the sampler: dropping a loader (even mid-epoch) frees it and
    its persistent workers at once, instead of a cyclic-GC teardown that stalls ~5 s."""
    import weakref

    for partial in (False, True):
        loader = _wds_train(index_dataset, mask, num_workers=1)
        if partial:
            it = iter(loader)
            next(it)
            del it
        else:
            assert sum(len(b.indices) for b in loader) == len(mask)
        ref = weakref.ref(loader)
        del loader
        assert ref() is None, "loader kept alive by a reference cycle"


@pytest.mark.parametrize("fmt", ["ffcv", "wds"])
def test_two_views_are_crops_of_the_same_masked_samples(fmt, index_dataset, mask, pixel_codec):
    """views=2 (MoCo's loader): Batch.images2 is a second view of exactly Batch.indices, at the
    epoch's resolution, also after a progressive-resizing change."""
    _, _, decode_batch = pixel_codec
    loader = make_loader(index_dataset.root, "train", fmt=fmt, mask=mask,
                         aug=AugSpec.for_train(views=2, crop_scale=(0.2, 1.0)),
                         batch_size=BS, resolution=16, num_workers=1, seed=SEED)
    for epoch, res in enumerate((16, 24)):
        loader.set_epoch(epoch, res)
        seen = []
        for batch in loader:
            assert batch.images2.shape == batch.images.shape == (len(batch.indices), 3, res, res)
            for view in (batch.images, batch.images2):
                decoded, spread = decode_batch(view)
                assert spread < 12 and decoded == batch.indices.tolist()
            seen += batch.indices.tolist()
        # train loaders drop the last partial batch; the rest are distinct masked samples
        assert len(set(seen)) == len(seen) == len(loader) * BS
        assert set(seen) <= set(mask.indices.tolist())


# ---------------------------------------------------------------------------------------------
# One interface (MaskedLoader), one augmentation object (AugSpec), ffcv's own extension point
# ---------------------------------------------------------------------------------------------

def _three_loaders(index_dataset, mask, **kw):
    common = dict(mask=mask, batch_size=BS, resolution=16, num_workers=0, seed=SEED, **kw)
    return {"ffcv": make_loader(index_dataset.root, "train", fmt="ffcv", **{**common, "num_workers": 1}),
            "wds": make_loader(index_dataset.root, "train", fmt="wds", **common),
            "gpu-decode": make_loader(index_dataset.root, "train", fmt="wds", decode="gpu", **common)}


def test_every_loader_is_a_masked_loader(index_dataset, mask, ffcv_eval):
    from ffcv_dp4tl.data import DeviceDecodeLoader, MaskedLoader
    from ffcv_dp4tl.data.ffcv_loader import FFCVMaskedLoader
    from ffcv_dp4tl.data.wds_loader import WdsMaskedLoader

    loaders = _three_loaders(index_dataset, mask, aug=AugSpec.for_train())
    kinds = {"ffcv": FFCVMaskedLoader, "wds": WdsMaskedLoader, "gpu-decode": DeviceDecodeLoader}
    for name, loader in loaders.items():
        assert type(loader) is kinds[name]
        assert isinstance(loader, MaskedLoader), name
        assert loader.resolution == 16 and len(loader) == loader.plan.num_batches(BS, True)
        loader.set_epoch(2, 24)
        assert loader.epoch == 2 and loader.resolution == 24
    assert isinstance(ffcv_eval, MaskedLoader)
    assert not isinstance(object(), MaskedLoader)
    loaders["gpu-decode"].close()


def test_augspec_reaches_every_loader(index_dataset, mask):
    """One AugSpec says what every loader does: MoCo's two views with its crop scale give two
    decoders of that scale (ffcv) and a second view of each sample (wds, GPU decode)."""
    from ffcv_dp4tl.data import AugSpec
    from ffcv_dp4tl.data.transforms import CENTER_CROP_RATIO, RRC_RATIO, RRC_SCALE

    assert AugSpec.for_train(views=2, crop_scale=(0.2, 1)) == AugSpec(
        train=True, crop_scale=(0.2, 1.0), crop_ratio=RRC_RATIO, flip=True, views=2,
        center_crop_ratio=CENTER_CROP_RATIO)
    assert AugSpec.for_eval() == AugSpec() and AugSpec.for_train().crop_scale == RRC_SCALE
    spec = AugSpec.for_train(views=2, crop_scale=(0.2, 1.0))
    loaders = _three_loaders(index_dataset, mask, aug=spec)
    for name, ld in loaders.items():
        assert ld.aug == spec and (ld.plan.shuffle, ld.drop_last) == (True, True), name
        if name == "ffcv":  # one decoder per view, with the spec's scale and ratio
            assert [(d.scale, d.ratio) for d in ld.decoders] == [((0.2, 1.0), RRC_RATIO)] * 2
            continue
        batch = next(iter(ld))  # (flat images here: test_moco shows the two crops differ)
        assert batch.images2 is not None and batch.images2.shape == batch.images.shape, name
    ev = make_loader(index_dataset.root, "train", fmt="wds", mask=mask, aug=AugSpec.for_eval(),
                     batch_size=BS, resolution=16, num_workers=0)
    assert (ev.plan.shuffle, ev.drop_last) == (False, False)
    loaders["gpu-decode"].close()


def test_every_loader_normalises_with_the_augspecs_statistics(index_dataset, mask):
    """AugSpec.normalize (the released CIFAR loader's mean/std, paper_code/*_cifar10) reaches
    every loader: the same pixels come back from both normalisations, and the floats differ."""
    from ffcv_dp4tl.data.transforms import NORMALIZATIONS

    def pixels(batch, stats):
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS[stats])
        return batch.images * std + mean

    out = {}
    for stats in ("imagenet", "cifar10"):
        loaders = _three_loaders(index_dataset, mask, aug=AugSpec.for_eval(normalize=stats))
        for name, ld in loaders.items():
            out[name, stats] = next(iter(ld))
        loaders["gpu-decode"].close()
    for name in ("ffcv", "wds", "gpu-decode"):
        a, b = out[name, "imagenet"], out[name, "cifar10"]
        assert torch.equal(a.indices, b.indices), name
        torch.testing.assert_close(pixels(a, "imagenet"), pixels(b, "cifar10"), atol=1e-3,
                                   rtol=0, msg=name)
        assert not torch.allclose(a.images, b.images), name
    with pytest.raises(DataError, match="normalize must be one of imagenet, cifar10, got 'svhn'"):
        make_loader(index_dataset.root, "train", fmt="wds", aug=AugSpec.for_eval(normalize="svhn"),
                    batch_size=BS, resolution=16, num_workers=0)


def test_augspec_errors_and_no_old_flags(index_dataset, mask):
    from ffcv_dp4tl.data import AugSpec

    kw = dict(batch_size=BS, resolution=16, num_workers=0)
    with pytest.raises(DataError, match=r"views must be 1, or 2 for a train loader \(got views=2, "
                       r"train=False\)"):
        make_loader(index_dataset.root, "train", fmt="wds", aug=AugSpec(views=2), **kw)
    with pytest.raises(DataError, match="crop_scale must satisfy"):
        make_loader(index_dataset.root, "train", fmt="wds",
                    aug=AugSpec.for_train(crop_scale=(0.5, 0.2)), **kw)
    with pytest.raises(DataError, match="center_crop_ratio"):
        make_loader(index_dataset.root, "train", fmt="wds", aug=AugSpec.for_eval(1.5), **kw)
    with pytest.raises(DataError, match="crop must be center or none, got 'squash'"):
        AugSpec.for_crop("squash")
    assert AugSpec.for_crop("none", "cifar10") == AugSpec.for_eval(1.0, "cifar10")
    assert AugSpec.for_crop("center") == AugSpec.for_eval()
    with pytest.raises(TypeError, match="aug"):  # the augmentation is always stated
        make_loader(index_dataset.root, "train", fmt="wds", **kw)
    for old in ({"train": True}, {"views": 2}, {"crop_scale": (0.2, 1.0)}):  # one spelling only
        with pytest.raises(TypeError, match=next(iter(old))):
            make_loader(index_dataset.root, "train", fmt="wds", aug=AugSpec.for_train(), **old, **kw)


def test_plan_order_is_a_traversal_order_ffcv_constructs(index_dataset, mask, ffcv_train):
    """PlanOrder is installed through ffcv's own extension point, whichever ffcv is installed:
    ``order=<subclass>, order_kwargs=`` (ffcv >= 1.1) or a TraversalOrder that ffcv 1.0.x calls
    with the loader. Either way ffcv runs ``TraversalOrder.__init__`` on the real loader."""
    from ffcv.traversal_order.base import TraversalOrder

    from ffcv_dp4tl.data import ffcv_loader as fl

    order = ffcv_train.loader.traversal_order
    assert type(order) is fl.PlanOrder and isinstance(order, TraversalOrder)
    assert order.loader is ffcv_train.loader and order.plan is ffcv_train.plan
    for epoch in range(3):
        assert np.array_equal(order.sample_order(epoch), ffcv_train.plan.order(epoch))

    plan = EpochPlan(np.arange(10, 30), shuffle=True, seed=4, rank=1, world_size=3)

    class FakeLoader:  # what TraversalOrder.__init__ reads
        indices, seed, distributed = np.arange(10, 30), 0, False

    class NewLoader:  # ffcv >= 1.1's signature
        def __init__(self, fname, order=None, order_kwargs=dict()):
            pass

    class OldLoader:  # ffcv 1.0.2's signature
        def __init__(self, fname, order=None):
            pass

    args = fl.plan_order_arguments(plan, NewLoader)
    assert args["order"] is fl.PlanOrder and issubclass(args["order"], TraversalOrder)
    made = args["order"](FakeLoader(), **args["order_kwargs"])  # what ffcv >= 1.1 does
    assert np.array_equal(made.sample_order(2), plan.order(2))

    args = fl.plan_order_arguments(plan, OldLoader)
    assert set(args) == {"order"} and isinstance(args["order"], TraversalOrder)
    made = args["order"](FakeLoader())  # what ffcv 1.0.2 does
    assert type(made) is fl.PlanOrder and isinstance(made.loader, FakeLoader)
    assert np.array_equal(made.sample_order(2), plan.order(2))
    assert fl.loader_takes_order_kwargs(NewLoader) and not fl.loader_takes_order_kwargs(OldLoader)


@pytest.mark.parametrize("fmt", ["ffcv", "wds"])
@pytest.mark.parametrize("aug", ["train", "eval"])
def test_a_last_batch_of_one_sample_keeps_its_label_vector(fmt, aug, index_dataset):
    """A batch of one sample (a mask of 2·BS + 1, or one rank's share under torchrun) has
    labels of shape (1,): ffcv's bare Squeeze() made them 0-d and ToDevice raised IndexError
    (distributed audit: any rank with count % batch == 1 crashed in training or validation)."""
    split = load_manifest(index_dataset.root).split("train")
    mask = make_mask(np.arange(2 * BS + 1), split, method="t")
    loader = make_loader(index_dataset.root, "train", fmt=fmt, mask=mask, batch_size=BS,
                         resolution=16, num_workers=0, drop_last=False,
                         aug=AugSpec.for_train() if aug == "train" else AugSpec.for_eval())
    batches = list(loader)
    assert [b.labels.shape for b in batches] == [(BS,), (BS,), (1,)]
    got = {int(i): int(y) for b in batches for i, y in zip(b.indices, b.labels)}
    assert got == {i: int(index_dataset.labels[i]) for i in range(2 * BS + 1)}


@pytest.mark.parametrize("fmt", ["ffcv", "wds"])
def test_closing_a_loader_ends_its_workers_and_it_reads_again(fmt, index_dataset, mask):
    """``close()`` ends what a loader runs beside the caller now, not when it is collected (a
    WebDataset loader's persistent worker processes), and a closed loader iterates again, the
    same batches; ``closing_loaders`` closes what ``make_loader`` made within it (how
    ``train``, ``finetune`` and ``score`` end)."""
    import multiprocessing

    from ffcv_dp4tl.data.loaders import closing_loaders

    before = set(multiprocessing.active_children())  # (another test's, if any: not this one's)
    with closing_loaders():
        loader = make_loader(index_dataset.root, "train", fmt=fmt, mask=mask, batch_size=BS,
                             resolution=16, aug=AugSpec.for_eval(), num_workers=1)
        first = [b.indices.tolist() for b in loader]
        if fmt == "wds":
            assert set(multiprocessing.active_children()) - before  # (persistent workers)
        loader.close()
        assert set(multiprocessing.active_children()) <= before
        assert [b.indices.tolist() for b in loader] == first
        it = iter(loader)
        next(it)  # (an epoch left suspended, as a kept traceback leaves it)
    assert set(multiprocessing.active_children()) <= before
    if fmt == "ffcv":
        assert not any(t.is_alive() for t in loader._epochs)  # (its epoch thread stopped)


def _left_mid_epoch(index_dataset, mask):
    """A WebDataset loader with one persistent worker, and its epoch left after one batch (as a
    kept traceback leaves it): the loader and the iterator, to keep both alive."""
    loader = make_loader(index_dataset.root, "train", fmt="wds", mask=mask, batch_size=BS,
                         resolution=16, aug=AugSpec.for_eval(), num_workers=1)
    it = iter(loader)
    next(it)
    return loader, it


def test_closing_loaders_closes_every_loader_made_in_the_block(index_dataset, mask):
    """``closing_loaders`` closes each loader made within the block, not only one of them: two
    WebDataset loaders left mid-epoch (still referenced, as a kept traceback keeps them) have
    no worker process left once the block ends."""
    import multiprocessing

    from ffcv_dp4tl.data.loaders import closing_loaders

    before = set(multiprocessing.active_children())  # (another test's, if any: not this one's)
    with closing_loaders():
        kept = [_left_mid_epoch(index_dataset, mask) for _ in range(2)]
        assert len(set(multiprocessing.active_children()) - before) >= 2  # (one each)
    assert set(multiprocessing.active_children()) <= before
    assert len(kept) == 2


def test_an_inner_closing_loaders_block_hands_back_to_the_outer_one(index_dataset, mask):
    """Blocks nest (``score`` inside a pipeline's block): once an inner block ends, a loader made
    in the outer block is the outer block's to close, and it is closed when that ends; outside
    every block no loader is collected."""
    import multiprocessing

    from ffcv_dp4tl.data.loaders import _OPENED, closing_loaders

    before = set(multiprocessing.active_children())
    with closing_loaders():
        with closing_loaders():
            pass
        kept = _left_mid_epoch(index_dataset, mask)
        assert set(multiprocessing.active_children()) - before  # (its persistent worker)
    assert set(multiprocessing.active_children()) <= before
    assert _OPENED.get() is None
    assert kept


@pytest.mark.parametrize("fmt,workers,decode", [("ffcv", 1, "cpu"), ("wds", 0, "cpu"),
                                                 ("wds", 1, "cpu"), ("wds", 0, "gpu")])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_come_in_the_memory_layout_asked_for(fmt, workers, decode, channels_last,
                                                     index_dataset, mask):
    """A loader gives NCHW-contiguous images unless ``channels_last`` is asked for (recipes ask
    on CUDA only: ``trainer.use_channels_last``). ffcv's and the workers' NHWC batches came out
    channels_last whatever was asked, and oneDNN's CPU convolution backward corrupted the heap
    on such input (a width-8 ResNet-18 on odd batches: "double free or corruption"; an audit)."""
    fmt_ = torch.channels_last if channels_last else torch.contiguous_format
    for aug in (AugSpec.for_eval(), AugSpec.for_train()):
        loader = make_loader(index_dataset.root, "train", fmt=fmt, mask=mask, batch_size=BS,
                             resolution=16, aug=aug, num_workers=workers, decode=decode,
                             channels_last=channels_last)
        batch = next(iter(loader))
        assert batch.images.is_contiguous(memory_format=fmt_), (aug.train, batch.images.stride())
        loader.close()
