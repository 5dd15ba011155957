"""CIFAR-10 python-pickle layout.

Expected (``root`` = ``cifar-10-batches-py/`` or a folder containing it)::

    data_batch_1 ... data_batch_5   # train; pickles with b"data" (N, 3072) uint8, b"labels"
    test_batch                      # test
    batches.meta                    # b"label_names"

Samples hold in-memory HWC uint8 arrays (32, 32, 3) named like ``data_batch_1[17]``.
Splits: ``train``, ``test``. ``split_json`` is not supported (there are no image paths).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import DatasetSpec, Sample
from ._common import bad, dataset_dir, finish, require_file

NAME = "cifar10"
HINT = "expected cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta (python version)"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


#: the globals a CIFAR-10 batch file names: numpy's array reconstruction (the Python 2 pickles
#: of the download, and later numpy's and protocol 5's), and pickle's own bytes helper
#: (protocol 2 written by Python 3)
_ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})


class _Refused(pickle.UnpicklingError):
    """A global the batch names that is not in :data:`_ALLOWED`."""


class _BatchUnpickler(pickle.Unpickler):
    """Builds plain containers and numpy arrays only. A batch file names nothing else, and any
    other class or function a pickle names is code that runs while it loads: a CIFAR folder on
    shared storage is someone else's file, and ``pickle.load`` ran its code during
    ``dp4tl build`` (audit)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def _load(path: Path) -> dict[bytes, Any]:
    require_file(path, HINT)
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise bad(path, f"holds Python objects a CIFAR-10 batch never holds (it names {e}): not "
                  "loaded, since unpickling them would run code from the file",
                  hint="re-download the python version of CIFAR-10") from None
    except Exception as e:  # corrupt/truncated pickles raise many types
        raise bad(path, f"cannot unpickle ({e})", hint="re-download the python version of CIFAR-10") from None
    if not isinstance(obj, dict):
        raise bad(path, "not a CIFAR pickle (expected a dict)", hint=HINT)
    return obj


def _batch(path: Path, n_classes: int) -> list[Sample]:
    obj = _load(path)
    if b"data" not in obj or b"labels" not in obj:
        raise bad(path, f"missing field b'data' or b'labels' (found {sorted(obj)})", hint=HINT)
    data = np.asarray(obj[b"data"], dtype=np.uint8)
    labels = [int(x) for x in obj[b"labels"]]
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
        raise bad(path, f"field b'data' has shape {data.shape} for {len(labels)} labels; expected (N, 3072)",
                  hint=HINT)
    bad_labels = [x for x in labels if not 0 <= x < n_classes]
    if bad_labels:
        raise bad(path, f"field b'labels' has value {bad_labels[0]} outside 0..{n_classes - 1}", hint=HINT)
    hwc = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return [Sample(hwc[i], labels[i], f"{path.name}[{i}]") for i in range(len(labels))]


def read(root: Path, split_json: Path | None = None) -> DatasetSpec:
    """Load CIFAR-10 batches (see module docstring for the layout)."""
    root = dataset_dir(Path(root), "batches.meta", ["cifar-10-batches-py"], HINT)
    if split_json is not None:
        raise bad(split_json, "cifar10 does not support --split-json (samples have no file paths)",
                  hint="drop --split-json")
    meta = _load(root / "batches.meta")
    if b"label_names" not in meta:
        raise bad(root / "batches.meta", "missing field b'label_names'", hint=HINT)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    splits = {s: [x for b in files for x in _batch(root / b, len(classes))] for s, files in BATCHES.items()}
    return finish(NAME, classes, splits, root, {"layout": NAME})
