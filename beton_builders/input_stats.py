"""Has a source image changed since it was built? Sizes and modification times of the inputs.

A build is identified by its *listing* (file names and labels, ``writer._listing_digest``), so
a rerun on the same folder says "already built" without decoding anything. An image edited in
place keeps its name, so the listing cannot see it. The build therefore records every input
file's size and modification time (``.build/inputs.npy``, 16 bytes per sample) and a rerun that
finds the build complete compares them: changed files are a warning naming them (the built data
is stale; ``--overwrite`` rebuilds). Content hashes would be exact but cost a full read of the
source (hours at ImageNet scale), which is what a rebuild does anyway.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ffcv_dp4tl.fsutil import atomic_save_npy, load_npy

from .spec import DatasetSpec, Sample

#: file under the build's ``.build/`` folder
STATS_NAME = "inputs.npy"
#: changed files named in the warning (the rest are counted)
MAX_NAMED = 3


def _paths(spec: DatasetSpec) -> list[Sample]:
    return [s for samples in spec.splits.values() for s in samples]


def sample_stats(samples: list[Sample]) -> list[list[int]] | None:
    """``[size, mtime_ns]`` of each sample's input file (``-1``s for in-memory samples and
    files that cannot be read); None when no sample is a file (synth, CIFAR arrays). A finished
    build records them for all its inputs (:func:`save_input_stats`), each shard for its own
    (a resumed build re-encodes a shard whose inputs changed)."""
    if not any(isinstance(s.ref, (str, Path)) for s in samples):
        return None
    out = []
    for s in samples:
        try:
            st = os.stat(s.ref) if isinstance(s.ref, (str, Path)) else None
        except OSError:
            st = None
        out.append([st.st_size, st.st_mtime_ns] if st is not None else [-1, -1])
    return out


def input_stats(spec: DatasetSpec) -> np.ndarray | None:
    """(N, 2) int64 ``(size, mtime_ns)`` per sample in spec order (:func:`sample_stats`)."""
    stats = sample_stats(_paths(spec))
    return None if stats is None else np.asarray(stats, np.int64).reshape(-1, 2)


def save_input_stats(spec: DatasetSpec, build_dir: Path) -> None:
    stats = input_stats(spec)
    if stats is not None:
        atomic_save_npy(build_dir / STATS_NAME, stats)


def stale_inputs(spec: DatasetSpec, build_dir: Path, remedy: str) -> list[str]:
    """Warnings (zero or one line) about inputs whose size or mtime differ from the build's.
    ``remedy``: how the command that found it rebuilds (the pipeline has no --overwrite)."""
    path = build_dir / STATS_NAME
    if not path.is_file():  # built before the stats existed, or no file inputs
        return []
    try:
        old = load_npy(path)
    except (OSError, ValueError):
        return []
    new = input_stats(spec)
    if new is None or old.shape != new.shape:
        return []
    changed = np.flatnonzero((old != new).any(axis=1))
    if not changed.size:
        return []
    samples = _paths(spec)
    named = ", ".join(samples[i].display_name() for i in changed[:MAX_NAMED])
    more = f" and {changed.size - MAX_NAMED} more" if changed.size > MAX_NAMED else ""
    return [f"{changed.size} input file(s) changed size or modification time since "
            f"{build_dir.parent} was built ({named}{more}): the built data is stale; to use the new "
            f"files, {remedy}"]
