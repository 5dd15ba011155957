"""Thin images (a 1x1 GIF, a 300x1 banner) are rejected at build time with a reason, so no
ffcv loader ever meets them (its decoders abort the process on a 1-pixel-wide centre crop)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset
from beton_builders.encode import MIN_SIDE


def test_thin_images_rejected_and_the_rest_loads(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    Image.new("P", (1, 1)).save(root / "dot.gif")
    Image.new("RGB", (300, 1), (200, 10, 10)).save(root / "banner.png")
    Image.new("RGB", (600, 20), (10, 200, 10)).save(root / "wide.png")  # 256 x 9 after shrinking: kept
    Image.new("RGB", (MIN_SIDE, MIN_SIDE), (10, 10, 200)).save(root / "small_ok.png")
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"ok{k}.png")
    names = ["dot.gif", "ok0.png", "banner.png", "wide.png", "ok1.png", "small_ok.png", "ok2.png", "ok3.png"]
    spec = DatasetSpec("thin", ["a", "b"], {"train": [Sample(root / n, k % 2) for k, n in enumerate(names)]})
    out = tmp_path / "out"
    build_dataset(spec, out, BuildOptions(max_side=256, shard_size=4, workers=1, progress=False))

    rows = [line.split("\t") for line in (out / "rejects.txt").read_text().splitlines()[1:]]
    reasons = {Path(name).name: reason for _, name, reason in rows}
    assert sorted(reasons) == ["banner.png", "dot.gif"]
    assert reasons["dot.gif"].startswith("too small: 1x1 px")
    assert reasons["banner.png"].startswith("too small: 300x1 px (shorter side 1 px")

    from ffcv_dp4tl.data import AugSpec, make_loader

    for train in (False, True):  # eval = centre crop, the path that aborted before
        aug = AugSpec.for_train() if train else AugSpec.for_eval()
        loader = make_loader(out, "train", fmt="ffcv", aug=aug, batch_size=3, resolution=16,
                             num_workers=1)
        seen = sorted(int(i) for batch in loader for i in batch.indices)
        assert seen == list(range(6))
