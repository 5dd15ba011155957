"""The ffcv loader path: compiled code shared between Loaders, damaged images named.

* a second Loader of the same shape in a process compiles nothing (the table of compiled
  operations hits) and gives the same pixels as the first and as ffcv's own per-Loader compile
  (``DP4TL_FFCV_CODE_CACHE=0``); a different crop is a different key;
* a damaged JPEG inside the beton (ffcv's decoder silently keeps stale pixels) is one line
  naming sample, split, beton and `dp4tl verify`, for the center-crop, random-crop and seeded
  decoders, and the process neither aborts nor hangs;
* an exception inside ffcv's pipeline thread reaches the consumer instead of leaving it waiting;
* a Loader over a split of one image, then Loaders over other splits, in one fresh process:
  every batch comes (building a Loader no longer corrupts numba's types).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

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


def test_a_loader_of_a_shape_seen_before_compiles_no_code_at_all(index_dataset, monkeypatch):
    """numba never frees compiled code: ffcv compiled its page reader again for every Loader,
    ~1.2 MB and 2 memory maps more per Loader for the life of the process (audit: ~0.4 GB over
    a cost table's Loaders). Once two Loaders of a shape have run, a third compiles nothing."""
    for _ in range(2):
        _epoch(_eval_loader(index_dataset.root))
    compiled = _spy_compiles(monkeypatch)
    batches = _epoch(_eval_loader(index_dataset.root))
    assert batches
    assert compiled == []


def _spy_compiles(monkeypatch) -> list[str]:
    """The names of the functions numba compiles from now on (a list that fills)."""
    from numba.core.dispatcher import Dispatcher

    compiled: list[str] = []
    real = Dispatcher.compile

    def spy(self, sig):
        before = len(self.overloads)
        out = real(self, sig)
        if len(self.overloads) > before:
            compiled.append(self.py_func.__qualname__)
        return out

    monkeypatch.setattr(Dispatcher, "compile", spy)
    return compiled


def test_a_new_data_seed_of_the_deterministic_decoder_compiles_nothing(source_dir,
                                                                       monkeypatch):
    """The seeded crop decoder captured its seed's hash, which numba freezes into the machine
    code: every data seed in a process compiled it and its helpers again (leak audit: ~12 MB
    and seconds each, never freed). The seed now reaches the code through a buffer: another
    seed compiles nothing, gives other crops, and the same seed gives the same pixels."""
    def epoch(seed):
        loader = make_loader(source_dir, "train", fmt="ffcv", aug=AugSpec.for_train(),
                             batch_size=16, resolution=16, num_workers=2, seed=seed,
                             deterministic=True, shuffle=False)  # (the same batches: only
        # the seed differs between two seeds' crops)
        loader.set_epoch(1, 16)
        return {int(i): x.tobytes() for b in loader
                for i, x in zip(b.indices.numpy(), b.images.numpy())}

    first = epoch(7)
    compiled = _spy_compiles(monkeypatch)
    other = epoch(8)
    assert compiled == []
    assert epoch(7) == first
    same = [i for i in first.keys() & other.keys() if first[i] == other[i]]
    assert len(same) < len(first) // 4  # the same image, another crop (a flip: most differ)


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


def _texture(i: int, side: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    r, g = 30 + 190 * x / (side - 1), 40 + 170 * y / (side - 1)
    b = 128 + 90 * np.sin(2 * np.pi * (x / 23 + y / 17) + i)
    return np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tex64(tmp_path_factory):
    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    root = tmp_path_factory.mktemp("tex64")
    samples = [Sample(_texture(i), i % 2, name=f"t/{i:02d}") for i in range(12)]
    build_dataset(DatasetSpec("tex", ["a", "b"], {"train": samples}), root,
                  BuildOptions(max_side=64, shard_size=12, workers=1, progress=False))
    return root


#: mean |scaled - full| in uint8 levels on a whole-image crop 64 -> 24 px (DCT-domain 1/2
#: decode, then INTER_AREA 32 -> 24, vs INTER_AREA 64 -> 24): measured 1.5 on these textures
#: (p99 7, max 10; the blue sine differs most); a flipped image is ~55 levels off
SCALED_DECODE_MAD = 3.0


def test_scaled_decode_stays_within_its_bound_of_ffcvs_decode(tex64):
    """``scaled_decode``: the crop is drawn first and the JPEG decoded at the smallest DCT scale
    covering the output. On a fixed crop (the whole image, no flip) it matches ffcv's full
    decode within a bound, exactly when no downscale is possible, and flips in the decoder."""
    import torch

    from ffcv_dp4tl.data.transforms import IMAGENET_STD

    whole = AugSpec.for_train(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def images(res, scaled, aug=whole):
        ld = make_loader(tex64, "train", aug=aug, batch_size=6, resolution=res, num_workers=1,
                         shuffle=False, drop_last=False, scaled_decode=scaled)
        assert ld.scaled_decode == scaled
        return torch.cat([b.images for b in ld]) * std  # uint8 level units

    full, scaled = images(24, False), images(24, True)
    mad = float((full - scaled).abs().mean())
    assert mad < SCALED_DECODE_MAD, mad
    assert float((full - scaled.flip(-1)).abs().mean()) > 10 * SCALED_DECODE_MAD  # sees a flip
    assert torch.equal(images(64, False), images(64, True))  # no downscale: ffcv's decode
    flipping = images(24, True, AugSpec.for_train(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)))
    mirrored = [float((f - s.flip(-1)).abs().mean()) < float((f - s).abs().mean())
                for f, s in zip(flipping, scaled)]
    assert 0 < sum(mirrored) < len(mirrored)  # some flipped, some not
    for f, s, m in zip(flipping, scaled, mirrored):
        assert torch.equal(f, s.flip(-1) if m else s)


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


#: run in a fresh process (numba's compiled state is per process, and an earlier test may have
#: compiled the specializations already): eval, then train, Loaders over the one-image ``val``
#: split, then the ``train`` split, then ``val`` again; every batch saved for the test to check
_ONE_IMAGE_SCRIPT = """
import sys
import torch
from ffcv_dp4tl.data import AugSpec, make_loader
root, out = sys.argv[1], sys.argv[2]
got = []
for split, train in [("val", False), ("train", False), ("val", False),
                     ("val", True), ("train", True)]:
    aug = AugSpec.for_train() if train else AugSpec.for_eval()
    loader = make_loader(root, split, fmt="ffcv", aug=aug, batch_size=4, resolution=16,
                         num_workers=1, shuffle=False, drop_last=False)
    for b in loader:
        got.append((split, train, b.indices.clone(), b.labels.clone(), b.images.clone()))
torch.save(got, out)
"""


def test_a_one_image_split_leaves_later_loaders_working(tmp_path, pixel_codec):
    """ffcv 1.0.2 marked numba's shared ``uint8[::1]`` type read-only in place whenever a Loader
    was built; after a Loader over a split of ONE image (C-contiguous metadata: its own
    specialization of the shared decoders), the next Loader over another split had to type
    ``imdecode`` again and failed: ``KeyError: (Array(uint8, 1, 'C'), ..., Literal[int](0),
    ...)`` in ``stage_code_0``, and so did every later one in the process."""
    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    index_image, _, decode_batch = pixel_codec
    train = [Sample(index_image(i, 24 + 8 * (i % 2), 32), i % 2, name=f"tr/{i}") for i in range(6)]
    val = [Sample(index_image(40, 32, 24), 1, name="va/0")]
    root = tmp_path / "ds"
    build_dataset(DatasetSpec("one", ["a", "b"], {"train": train, "val": val}), root,
                  BuildOptions(max_side=32, shard_size=8, workers=1, progress=False))
    out = tmp_path / "batches.pt"
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, "-c", _ONE_IMAGE_SCRIPT, str(root), str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(out)
    seen = [(split, trained, idx.tolist()) for split, trained, idx, _, _ in got]
    assert seen == [("val", False, [0]), ("train", False, [0, 1, 2, 3]),
                    ("train", False, [4, 5]), ("val", False, [0]), ("val", True, [0]),
                    ("train", True, [0, 1, 2, 3]), ("train", True, [4, 5])]
    for split, _, idx, labels, images in got:
        assert tuple(images.shape[1:]) == (3, 16, 16)
        codes = decode_batch(images)[0]
        if split == "val":
            assert codes == [40] and labels.tolist() == [1]
        else:
            assert codes == idx.tolist() and labels.tolist() == [i % 2 for i in idx.tolist()]
