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

from ..contracts import Scores, ScoresMeta
from ..errors import DataError
from ..fsutil import atomic_save_npy, atomic_write_json, read_json


def write_scores(out: Path, *, method: str, unit: str, scores: np.ndarray,
                 tiebreak: np.ndarray | None = None, train_units: np.ndarray | None = None,
                 val_units: np.ndarray | None = None, meta: dict[str, Any]) -> None:
    """Write a scores directory: the arrays first, ``scores.json`` (the contract, with
    the arrays' digests) last. Rewriting a folder first removes its ``scores.json`` (so a crash
    half-way leaves no folder that looks complete) and then every array this write does not
    produce (FM's cluster ids must not outlive FM's scores)."""
    arrays = {"scores": np.asarray(scores)}
    for name, arr in (("tiebreak", tiebreak), ("train_units", train_units), ("val_units", val_units)):
        if arr is not None:
            arrays[name] = np.asarray(arr)
    # the arrays' digests go into scores.json (written last), so a file replaced later is caught
    # when the scores are read again (a cached score stage feeding a new ratio)
    meta = {**meta, DIGESTS: {name: array_sha256(a) for name, a in arrays.items()}}
    contract = ScoresMeta(method=method, unit=unit, num_units=int(len(scores)), meta=meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").unlink(missing_ok=True)
    for name, arr in arrays.items():
        atomic_save_npy(out / f"{name}.npy", arr)
    for name in set(Scores.ARRAYS) - set(arrays):
        (out / f"{name}.npy").unlink(missing_ok=True)
    atomic_write_json(out / "scores.json", contract.to_json())


#: key of ``scores.json``'s meta holding each array file's :func:`array_sha256`
DIGESTS = "array_sha256"


def array_sha256(arr: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (how it was saved does not matter)."""
    import hashlib

    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def load_scores(path: str | Path) -> Scores:
    """The typed scores directory (:class:`~ffcv_dp4tl.contracts.Scores`): its metadata and
    ``scores`` plus the optional arrays (None when absent), each checked against the digest
    ``scores.json`` records."""
    path = Path(path)
    meta = load_scores_meta(path)
    arrays = {}
    for name in Scores.ARRAYS:
        p = path / f"{name}.npy"
        if p.exists():
            try:
                arrays[name] = np.load(p, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"{p} is not a readable .npy file ({str(e).splitlines()[0]}); "
                                f"{_RESCORE.format(path=path)}") from None
    if "scores" not in arrays:
        raise DataError(f"{path / 'scores.npy'} is missing; {_RESCORE.format(path=path)}")
    # absent: written before the digests (2026-12-02), nothing to check against
    recorded = meta.meta.get(DIGESTS) or {}
    unrecorded = sorted(arrays.keys() - recorded.keys()) if DIGESTS in meta.meta else []
    if unrecorded:  # an array added later, or its digest deleted from scores.json
        raise DataError(f"{path / (unrecorded[0] + '.npy')} has no digest in scores.json, which "
                        f"records those of the files `dp4tl score` wrote: the file was added or "
                        f"scores.json edited; {_RESCORE.format(path=path)}")
    for name, want in recorded.items():
        if name not in arrays:
            raise DataError(f"{path / (name + '.npy')} is missing; {_RESCORE.format(path=path)}")
        if array_sha256(arrays[name]) != want:
            raise DataError(f"{path / (name + '.npy')} differs from the file `dp4tl score` wrote "
                            f"(scores.json records its digest): it was replaced or edited; "
                            f"{_RESCORE.format(path=path)}")
    # after the digests: an edited file is named as such; then a damaged scores.json
    if len(arrays["scores"]) != meta.num_units:
        raise DataError(f"{path / 'scores.npy'} holds {len(arrays['scores'])} scores but scores.json "
                        f"says num_units {meta.num_units}; {_RESCORE.format(path=path)}")
    return Scores(meta=meta, **arrays)


_RESCORE = ("rerun `dp4tl score` into {path} (a pipeline's cached score stage: delete the stage "
            "folder {path} and rerun the pipeline)")


def load_scores_meta(path: str | Path) -> ScoresMeta:
    """The typed ``scores.json`` of a scores directory."""
    path = Path(path)
    return ScoresMeta.from_json(read_json(path / "scores.json", "scores metadata"),
                                path / "scores.json", _RESCORE.format(path=path))
