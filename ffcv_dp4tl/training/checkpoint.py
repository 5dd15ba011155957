"""Atomic, self-describing checkpoints and the identity check that guards resuming.

``checkpoint.pt`` holds everything an interrupted run needs to continue bit-for-bit on CPU
(model, optimiser, grad scaler, completed epochs, torch/numpy/python RNG states, stage timings)
plus *identity*: arch, recipe fingerprint, dataset fingerprint, mask hash and class count.
Resuming under a different identity is refused with a DP4TLError before any training, because
silently continuing another run's weights on other data is the worst kind of wrong result.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DP4TLError
from ..fsutil import atomic_path

CHECKPOINT_NAME = "checkpoint.pt"
IDENTITY_KEYS = ("arch", "recipe_fingerprint", "dataset_fingerprint", "mask_hash", "num_classes")


def mask_hash(indices: np.ndarray | None, split_fingerprint: str) -> str:
    """Hash of the kept sample indices (and the split they index); "full" for no mask."""
    if indices is None:
        return "full"
    h = hashlib.sha256(split_fingerprint.encode())
    h.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
    return h.hexdigest()


def rng_states() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_states(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically: a file named checkpoint.pt is always complete."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise DP4TLError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: RNG states contain numpy/python objects. Only load your own runs.
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a user-facing error
        raise DP4TLError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "identity" not in ckpt:
        raise DP4TLError(f"{path} is not an ffcv-dp4tl checkpoint (no model/identity entries)")
    return ckpt


def check_identity(path: Path, found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise a DP4TLError listing every identity field that differs."""
    diffs = [f"{k}: checkpoint has {str(found.get(k))[:16]!s}, this run has {str(expected[k])[:16]}"
             for k in IDENTITY_KEYS if found.get(k) != expected[k]]
    if diffs:
        raise DP4TLError(
            f"{path} belongs to a different run ({'; '.join(diffs)}). Use another --out "
            "directory, or delete the checkpoint to start over (or pass --no-resume).")
