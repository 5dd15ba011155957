"""The output of ``dp4tl score``: a scores directory.

``scores.npy``    one score per unit (source class, k-means cluster, or source sample)
``tiebreak.npy``  (LM/FM) soft score used to order equal scores: summed softmax mass / votes
``train_units.npy``  (FM) cluster id of every source train sample (``val_units.npy``, the
                    val samples' ids, was written before 2026-12-05 and read by nothing;
                    a folder holding it is still read, and its next write removes it)
``scores.json``   method, unit, surrogate checkpoint hash, source and target fingerprints,
                  selection cost in seconds (for the cost table): the
                  :class:`~ffcv_dp4tl.contracts.ScoresMeta` contract
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..contracts import Scores, ScoresMeta
from ..data.manifest import npy_error_reason
from ..errors import DataError
from ..fsutil import atomic_save_npy, atomic_write_json, load_npy, read_json
from ..scoring.ranking import ScoringError, as_vector


def write_scores(out: Path, *, method: str, unit: str, scores: np.ndarray,
                 tiebreak: np.ndarray | None = None, train_units: np.ndarray | None = None,
                 meta: dict[str, Any]) -> None:
    """Write a scores directory: the arrays first, ``scores.json`` (the contract, with
    the arrays' digests) last. Rewriting a folder first removes its ``scores.json`` (so a crash
    half-way leaves no folder that looks complete) and then every array this write does not
    produce (FM's cluster ids must not outlive FM's scores)."""
    arrays = {"scores": np.asarray(scores)}
    for name, arr in (("tiebreak", tiebreak), ("train_units", train_units)):
        if arr is not None:
            arrays[name] = np.asarray(arr)
    # the arrays' digests go into scores.json (written last), so a file replaced later is caught
    # when the scores are read again (a cached score stage feeding a new ratio)
    meta = {**meta, DIGESTS: {name: array_sha256(a) for name, a in arrays.items()}}
    # format 2 (whose reader requires the digests and ``source_fingerprint``) when meta holds
    # the source's fingerprint, as `dp4tl score` always records; without one (a caller that
    # knows no source) format 1, the format that may lack it
    contract = ScoresMeta(method=method, unit=unit, num_units=int(len(scores)), meta=meta,
                          format_version=ScoresMeta.version_for(meta))
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
                arrays[name] = load_npy(p)
            except (OSError, ValueError, EOFError) as e:  # (EOFError: an emptied file)
                raise DataError(f"{p} is not a readable .npy file ({npy_error_reason(e, 'scores')}); "
                                f"{_RESCORE.format(path=path)}") from None
    if "scores" not in arrays:
        raise DataError(f"{path / 'scores.npy'} is missing; {_RESCORE.format(path=path)}")
    # absent (format 1 only; ScoresMeta.from_json requires them from format 2 on): written
    # before the digests (2026-12-02), nothing to check against
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
    # after the digests: an edited file is named as such; then a damaged file's content
    _check_arrays(path, arrays, meta)
    return Scores(meta=meta, **arrays)


def _check_arrays(path: Path, arrays: dict[str, np.ndarray], meta: ScoresMeta) -> None:
    """The arrays' content, checked here where the files are known, so that a damaged file is
    named with what to do (the selection functions' own messages name their parameters:
    ``sample_labels must hold integer ids``). ``scores`` / ``tiebreak``: finite numbers, one per
    unit; ``train_units`` / ``val_units``: ids of units ``0 .. num_units - 1`` (a larger id
    matched no score: its samples were silently dropped)."""
    fix = _RESCORE.format(path=path)

    def vector(name: str, kind: str) -> np.ndarray:
        try:  # the one rule for a score / id vector, with the file in place of the parameter
            return as_vector(arrays[name], str(path / f"{name}.npy"), kind=kind,
                             allow_empty=name != "scores")
        except ScoringError as e:
            raise DataError(f"{str(e).split('; ')[0]}; {fix}") from None

    n = len(vector("scores", "f"))
    if n != meta.num_units:
        raise DataError(f"{path / 'scores.npy'} holds {n} scores but scores.json says num_units "
                        f"{meta.num_units}; {fix}")
    if "tiebreak" in arrays and len(vector("tiebreak", "f")) != n:
        raise DataError(f"{path / 'tiebreak.npy'} holds {len(arrays['tiebreak'])} entries but "
                        f"scores.npy holds {n} scores; {fix}")
    for name in ("train_units", "val_units"):
        if name in arrays:
            ids = vector(name, "i")
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n):
                bad = ids[(ids < 0) | (ids >= n)]
                raise DataError(f"{path / (name + '.npy')}: {bad.size} unit ids outside [0, {n}) "
                                f"(scores.npy scores {n} units; e.g. {bad[:3].tolist()}); {fix}")


_RESCORE = ("rerun `dp4tl score` into {path} (a pipeline's cached score stage: delete the stage "
            "folder {path} and rerun the pipeline)")


#: a folder without scores.json: never scored (prune before score), or not the scores folder
_NO_SCORES = ("{path} holds no scores: run `dp4tl score ... --out {path}` first, or pass the "
              "folder `dp4tl score` wrote")


def load_scores_meta(path: str | Path, check_method: bool = True) -> ScoresMeta:
    """The typed ``scores.json`` of a scores directory (missing or damaged: one line saying
    which ``dp4tl score`` run writes it). ``check_method``: the method registered here and
    the unit its own (:func:`_check_method`); off where a folder is only told apart from this
    run's (an unregistered method's scores are someone's work, not damage)."""
    path = Path(path)
    if path.is_file():  # (scores.json itself, or another file: "a file where a folder should be")
        raise DataError(f"{path} is a file, but the scores are a folder: pass the folder "
                        f"`dp4tl score --out` wrote" + (f" ({path.parent})" if path.name == "scores.json" else ""))
    fix = _RESCORE.format(path=path)
    meta = ScoresMeta.from_json(read_json(path / "scores.json", "scores metadata", fix,
                                          missing=_NO_SCORES.format(path=path)),
                                path / "scores.json", fix)
    if check_method:
        _check_method(meta, path / "scores.json", fix)
    return meta


def _check_method(meta: ScoresMeta, source: Path, fix: str) -> None:
    """The recorded method is a registered scorer and the unit is the one it declares. Pruning
    reads the unit, not the method (:mod:`.prune`), and the arrays' digests do not cover
    ``scores.json``'s fields: ``"method": "randm"`` was accepted and written into every mask's
    provenance, and ``"unit": "sample"`` on LM's class scores would prune samples (audit).
    Every scorer is a file of the package (docs/scorers.md), so the writer's is registered
    here too."""
    from ..scoring.registry import get_scorer, unregistered_why

    if why := unregistered_why(meta.method, given=False):
        raise DataError(f"{source}: {why} (the file was edited, or written by a version with "
                        f"other methods); {fix}")
    unit = get_scorer(meta.method).unit
    if meta.unit != unit:
        raise DataError(f"{source}: method {meta.method!r} has unit {unit!r}, but the file says "
                        f"{meta.unit!r} (edited by hand?), which prune would remove; {fix}")
