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
