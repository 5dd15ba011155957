"""The WebDataset loader's workers decode chunks of a batch (a fixed per-epoch cost that used to
weigh on short, masked epochs); the loader joins them back into the same batches in order."""
from __future__ import annotations

import numpy as np
import pytest

from ffcv_dp4tl.data import AugSpec, make_loader
from ffcv_dp4tl.data import wds_loader


@pytest.mark.parametrize("batch_size,train,workers", [(40, False, 1), (40, True, 0), (7, False, 1),
                                                      (100, False, 0)])
def test_batches_are_whole_and_in_plan_order(index_dataset, batch_size, train, workers, monkeypatch):
    monkeypatch.setattr(wds_loader, "CHUNK", 16)
    loader = make_loader(index_dataset.root, "train", fmt="wds",
                         aug=AugSpec.for_train() if train else AugSpec.for_eval(), batch_size=batch_size,
                         resolution=16, num_workers=workers, seed=3)
    order = loader.plan.order(0)
    sizes, seen = [], []
    for b in loader:
        assert b.images.shape[0] == b.labels.shape[0] == b.indices.shape[0]
        sizes.append(len(b.indices))
        seen += b.indices.tolist()
    n = len(index_dataset)
    want = [batch_size] * (n // batch_size) + ([] if train or n % batch_size == 0 else [n % batch_size])
    assert sizes == want and len(loader) == len(want)
    assert seen == order[:len(seen)].tolist()
