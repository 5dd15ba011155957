"""The ffcv loader path: compiled code shared between Loaders, damaged images named.

* a second Loader of the same shape in a process compiles nothing (the table of compiled
  operations hits) and gives the same pixels as the first and as ffcv's own per-Loader compile
  (``DP4TL_FFCV_CODE_CACHE=0``); a different crop is a different key;
* a damaged JPEG inside the beton (ffcv's decoder silently keeps stale pixels) is one line
  naming sample, split, beton and `dp4tl verify`, for the center-crop, random-crop and seeded
  decoders, and the process neither aborts nor hangs;
* an exception inside ffcv's pipeline thread reaches the consumer instead of leaving it waiting.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from beton_builders.beton import beton_images
from ffcv_dp4tl.data import AugSpec, load_manifest, make_loader
from ffcv_dp4tl.data import ffcv_compile
from ffcv_dp4tl.errors import DataError


def _eval_loader(root, **kw):
    return make_loader(root, "train", aug=AugSpec.for_eval(), batch_size=16, resolution=16,
                       num_workers=1, **kw)


def _epoch(loader):
    return [(b.indices.numpy().copy(), b.images.numpy().copy()) for b in loader]


def test_second_loader_of_the_same_shape_compiles_nothing(index_dataset, monkeypatch):
    first = _epoch(_eval_loader(index_dataset.root))  # compiles (or hits an earlier test's code)
    before = dict(ffcv_compile.STATS)
    second = _epoch(_eval_loader(index_dataset.root))
    assert ffcv_compile.STATS["misses"] == before["misses"]
    assert ffcv_compile.STATS["hits"] > before["hits"]
    monkeypatch.setenv(ffcv_compile.CODE_CACHE_ENV, "0")  # ffcv's own compile, for reference
    hits = ffcv_compile.STATS["hits"]
    fresh = _epoch(_eval_loader(index_dataset.root))
    assert ffcv_compile.STATS["hits"] == hits  # the table was not consulted
    for (i1, x1), (i2, x2), (i3, x3) in zip(first, second, fresh, strict=True):
        assert np.array_equal(i1, i2) and np.array_equal(i1, i3)
        assert x1.tobytes() == x2.tobytes() == x3.tobytes()


def test_epoch_buffers_are_reused_until_the_shapes_change(index_dataset, pixel_codec):
    """ffcv allocates (and on CUDA pins) every batch buffer at each ``iter(loader)``; ours keeps
    them across epochs of one shape, reallocates on a resolution change, and what a consumer
    kept from an earlier epoch is not overwritten by the next one."""
    _, _, decode_batch = pixel_codec
    loader = make_loader(index_dataset.root, "train", aug=AugSpec.for_train(), batch_size=16,
                         resolution=16, num_workers=1, drop_last=False)
    stats = ffcv_compile.STATS
    kept = []
    for epoch, res in enumerate((16, 16, 16, 24)):
        loader.set_epoch(epoch, res)
        allocated, reused = stats["buffers_allocated"], stats["buffers_reused"]
        batches = list(loader)
        fresh = epoch in (0, 3)  # the first epoch, and a new resolution
        assert (stats["buffers_allocated"] - allocated, stats["buffers_reused"] - reused) \
            == ((1, 0) if fresh else (0, 1)), epoch
        for b in batches:
            assert decode_batch(b.images)[0] == b.indices.tolist()  # right pixels every epoch
            assert tuple(b.images.shape[2:]) == (res, res)
        kept.append([(b.images.clone(), b.labels.clone(), b) for b in batches])
    for epoch_batches in kept:  # batches held from earlier epochs were not overwritten
        for images, labels, b in epoch_batches:
            assert torch.equal(b.images, images) and torch.equal(b.labels, labels)
            assert b.labels.tolist() == index_dataset.labels[b.indices.numpy()].tolist()


def test_compiled_operations_are_keyed_by_what_they_capture():
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.pipeline.compiler import Compiler

    def key(dec):
        dec.memory_read = None  # what accept_globals would set; equal for both
        return ffcv_compile._fingerprint(dec.generate_code())

    Compiler.set_num_threads(1)
    a = key(RandomResizedCropRGBImageDecoder((16, 16), scale=(0.08, 1.0)))
    assert a == key(RandomResizedCropRGBImageDecoder((32, 32), scale=(0.08, 1.0)))  # size: memory
    assert a != key(RandomResizedCropRGBImageDecoder((16, 16), scale=(0.2, 1.0)))
    Compiler.set_num_threads(2)  # prange instead of range
    assert a != key(RandomResizedCropRGBImageDecoder((16, 16), scale=(0.08, 1.0)))
    with pytest.raises(ffcv_compile._Unkeyable):
        ffcv_compile._fingerprint(object())


def _damage(root, i, how):
    beton = load_manifest(root).split("train").beton
    images = beton_images(beton)
    off, size = int(images.data_ptr[i]), int(images.size[i])
    with open(beton, "r+b") as f:
        f.seek(off)
        data = bytearray(f.read(size))
        if how == "marker":  # the SOS marker's second byte
            data[data.find(b"\xff\xda") + 1] ^= 0xFF
        else:  # zero the scan data after the first third
            data[len(data) // 3:] = bytes(len(data) - len(data) // 3)
        f.seek(off)
        f.write(bytes(data))
    return beton


@pytest.mark.parametrize("how", ["marker", "tail"])
@pytest.mark.parametrize("aug,det", [(AugSpec.for_eval(), False), (AugSpec.for_train(), False),
                                     (AugSpec.for_train(views=2), True)])
def test_damaged_beton_jpeg_is_named_in_one_line(index_copy, how, aug, det):
    beton = _damage(index_copy, 37, how)
    loader = make_loader(index_copy, "train", aug=aug, deterministic=det, batch_size=16,
                         resolution=16, num_workers=1, shuffle=False)
    seen = []
    with pytest.raises(DataError) as e:
        for b in loader:
            seen += b.indices.tolist()
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert f"sample 37 of split 'train' in {beton} is damaged" in msg, msg
    assert f"dp4tl verify {index_copy} --deep" in msg and "BytesIO" not in msg, msg
    assert seen == list(range(32))  # the batches before the damaged one came through


def test_pipeline_exception_reaches_the_consumer(index_dataset):
    loader = _eval_loader(index_dataset.root)
    stages, outputs = loader.loader.code

    def broken(**kw):
        raise RuntimeError("boom in a stage")

    loader.loader.code = ([(broken, stages[0][1])] + stages[1:], outputs)
    caught = []

    def consume():
        try:
            for _ in loader:
                pass
        except BaseException as err:  # noqa: BLE001 - recorded for the assertion
            caught.append(err)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the loader hung on a pipeline exception"
    assert len(caught) == 1 and isinstance(caught[0], RuntimeError), caught
    assert "boom in a stage" in str(caught[0])
