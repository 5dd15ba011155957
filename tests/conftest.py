"""Shared fixtures: tiny generated datasets built once per session.

The "index" dataset draws every image as one flat colour that encodes the sample's own index,
so a decoded batch tells which samples it holds regardless of crop, flip or resolution (flat
colours survive JPEG, resizing and cropping). Loader tests compare those pixel-decoded indices
with ``Batch.indices``, the mask and ``labels.npy``.

Building a dataset imports ffcv (numba compilation, ~10 s once per process); the first ffcv
``Loader`` of each pipeline shape compiles it (later ones reuse the compiled operations, see
``ffcv_dp4tl/data/ffcv_compile.py``), so loaders are still module/session fixtures in the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

#: Pixel code of sample ``i``: ``(i * MUL) % 4096`` split into three base-16 digits, one per
#: channel, stored as ``16 * digit + 8``. MUL is odd, so the map is a bijection mod 4096 and
#: consecutive samples differ in all channels (not just red).
CODE_MUL = 61
CODE_MOD = 16 ** 3
CODE_INV = pow(CODE_MUL, -1, CODE_MOD)


def index_image(i: int, height: int = 32, width: int = 32) -> np.ndarray:
    """HWC uint8 RGB image whose flat colour encodes ``i`` (0 <= i < 4096)."""
    assert 0 <= i < CODE_MOD
    code = (i * CODE_MUL) % CODE_MOD
    digits = [code % 16, (code // 16) % 16, code // 256]
    img = np.empty((height, width, 3), np.uint8)
    for c, d in enumerate(digits):
        img[..., c] = 16 * d + 8
    return img


def decode_pixels(images: np.ndarray | torch.Tensor) -> tuple[list[int], float]:
    """Indices encoded by uint8 NHWC/NCHW images; also the largest deviation from flat."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.float()
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    mean = x.mean(dim=(2, 3))  # N, 3
    spread = float((x - mean[:, :, None, None]).abs().amax()) if x.numel() else 0.0
    digits = ((mean - 8) / 16).round().clamp(0, 15).long()
    codes = digits[:, 0] + 16 * digits[:, 1] + 256 * digits[:, 2]
    return [(int(c) * CODE_INV) % CODE_MOD for c in codes], spread


def decode_batch(images: torch.Tensor) -> tuple[list[int], float]:
    """Like :func:`decode_pixels` for a loader's normalised float NCHW batch."""
    from ffcv_dp4tl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = images.float() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) \
        + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return decode_pixels(x)


@dataclass(frozen=True)
class IndexDataset:
    root: Path
    split: str
    labels: np.ndarray  # label of sample i (file order == source order: no rejects)
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


IDX_N = 70
IDX_CLASSES = 5


@pytest.fixture(scope="session")
def pixel_codec():
    """(index_image, decode_pixels, decode_batch) for tests that cannot import conftest."""
    return index_image, decode_pixels, decode_batch


@pytest.fixture(scope="session")
def index_dataset(tmp_path_factory) -> IndexDataset:
    """70 flat-colour index images, 5 classes, 5 shards of 16; non-square inputs."""
    from beton_builders import BuildOptions, DatasetSpec, Sample, build_dataset

    labels = np.random.default_rng(0).integers(0, IDX_CLASSES, IDX_N)
    labels[:IDX_CLASSES] = np.arange(IDX_CLASSES)  # every class present
    samples = [Sample(index_image(i, 24 + 8 * (i % 3), 40 - 8 * (i % 2)), int(labels[i]),
                      name=f"idx/{i:03d}") for i in range(IDX_N)]
    spec = DatasetSpec("index", [f"class{k}" for k in range(IDX_CLASSES)], {"train": samples})
    root = tmp_path_factory.mktemp("index_dataset")
    build_dataset(spec, root, BuildOptions(max_side=32, shard_size=16, workers=1, progress=False))
    return IndexDataset(root, "train", labels.astype(np.int64), IDX_CLASSES)


@pytest.fixture(scope="session")
def index_split(index_dataset):
    from ffcv_dp4tl.data import load_manifest

    return load_manifest(index_dataset.root).split(index_dataset.split)


@pytest.fixture
def index_copy(index_dataset, tmp_path):
    """A private copy of the shared tiny build, for tests that damage files."""
    import shutil

    dst = tmp_path / "ds"
    shutil.copytree(index_dataset.root, dst)
    return dst


# ------------------------------------------------------------------ shared end-to-end fixtures
@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """ONE data root for the session: a pipeline (``PipelineConfig(data_root=...)``) builds each
    SOURCE there once, whichever test asks first (content-keyed folders, a build lock)."""
    return tmp_path_factory.mktemp("shared") / "data"


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """ONE runs root for the session: stages are keyed by the content of their inputs, so tests
    asking for the same stage share it and tests asking for another never see it. (Tests that
    count or damage stage folders use their own.)"""
    return tmp_path_factory.mktemp("shared") / "runs"


@pytest.fixture(scope="session")
def synth_root(data_root: Path) -> Path:
    """:data:`tiny_data.SYNTH` built in the shared data root (``source/``, ``targets/paper``)."""
    from tiny_data import SYNTH

    from ffcv_dp4tl.pipeline.resolve import ensure_built

    return ensure_built(SYNTH, data_root, lambda s: None)


@pytest.fixture(scope="session")
def source_dir(synth_root: Path) -> Path:
    return synth_root / "source"


@pytest.fixture(scope="session")
def target_dir(synth_root: Path) -> Path:
    return next(p for p in sorted((synth_root / "targets").iterdir()) if p.is_dir())


@pytest.fixture
def test_recipe():
    """A factory: ``test_recipe("train.epochs=3")`` → validated small Recipe."""
    from tiny_data import TEST_OVERRIDES

    from ffcv_dp4tl.training.recipe import load_recipe

    def make(*extra: str, base: str = "resnet18_tiny_cpu"):
        return load_recipe(base, TEST_OVERRIDES + list(extra))
    return make


@pytest.fixture(scope="session")
def trained_run(source_dir: Path, tmp_path_factory) -> Path:
    """ONE finished 2-epoch training run of the tiny recipe on :data:`tiny_data.SYNTH` (early
    checkpoint after epoch 1 kept): the surrogate of the scoring tests, the source model of the
    finetuning tests. Read it, never write into it."""
    from tiny_data import SURROGATE_OVERRIDES

    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    out = tmp_path_factory.mktemp("run")
    train(load_recipe("resnet18_tiny_cpu", SURROGATE_OVERRIDES), source_dir, out_dir=out,
          fmt="wds", device="cpu", progress=False)
    return out


@pytest.fixture
def alarm():
    """Fail (instead of hanging the suite until its timeout) when the test blocks over 120 s:
    for tests of reads that once waited forever (a FIFO where a file belongs)."""
    import signal

    def ring(*_):
        raise TimeoutError("the test blocked for 120 s (a read that never returns?)")
    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
