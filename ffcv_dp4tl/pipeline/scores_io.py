"""The output of ``dp4tl score``: a scores directory.

``scores.npy``    one score per unit (source class, k-means cluster, or source sample)
``tiebreak.npy``  (LM/FM) soft score used to order equal scores: summed softmax mass / votes
``train_units.npy`` / ``val_units.npy``  (FM) cluster id of every source train / val sample
``scores.json``   method, unit, surrogate checkpoint hash, source and target fingerprints,
                  selection cost in seconds (for the cost table): the
                  :class:`~ffcv_dp4tl.contracts.ScoresMeta` contract
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..contracts import SCORE_UNITS, ScoresMeta
from ..errors import DataError
from ..fsutil import atomic_save_npy, atomic_write_json, read_json

UNITS = SCORE_UNITS


def write_scores(out: Path, *, method: str, unit: str, scores: np.ndarray,
                 tiebreak: np.ndarray | None = None, train_units: np.ndarray | None = None,
                 val_units: np.ndarray | None = None, meta: dict[str, Any]) -> None:
    contract = ScoresMeta(method=method, unit=unit, num_units=int(len(scores)), meta=dict(meta))
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(out / "scores.npy", np.asarray(scores))
    for name, arr in (("tiebreak", tiebreak), ("train_units", train_units), ("val_units", val_units)):
        if arr is not None:
            atomic_save_npy(out / f"{name}.npy", np.asarray(arr))
    atomic_write_json(out / "scores.json", contract.to_json())


def load_scores(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, arrays) of a scores directory; arrays has 'scores' and the optional ones."""
    path = Path(path)
    meta = ScoresMeta.from_json(read_json(path / "scores.json", "scores metadata"),
                                path / "scores.json").to_json()
    arrays = {}
    for name in ("scores", "tiebreak", "train_units", "val_units"):
        p = path / f"{name}.npy"
        if p.exists():
            arrays[name] = np.load(p, allow_pickle=False)
    if "scores" not in arrays:
        raise DataError(f"{path / 'scores.npy'} is missing; rerun `dp4tl score`")
    return meta, arrays


def load_scores_meta(path: str | Path) -> ScoresMeta:
    """The typed ``scores.json`` of a scores directory."""
    path = Path(path)
    return ScoresMeta.from_json(read_json(path / "scores.json", "scores metadata"),
                                path / "scores.json")
