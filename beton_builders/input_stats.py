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

from ffcv_dp4tl.fsutil import atomic_save_npy

from .spec import DatasetSpec, Sample

#: file under the build's ``.build/`` folder
STATS_NAME = "inputs.npy"
#: changed files named in the warning (the rest are counted)
MAX_NAMED = 3


def _paths(spec: DatasetSpec) -> list[Sample]:
    return [s for samples in spec.splits.values() for s in samples]


def input_stats(spec: DatasetSpec) -> np.ndarray | None:
    """(N, 2) int64 ``(size, mtime_ns)`` per sample in spec order (-1 for in-memory samples and
    missing files); None when no sample is a file (synth, CIFAR arrays)."""
    samples = _paths(spec)
    if not any(isinstance(s.ref, (str, Path)) for s in samples):
        return None
    out = np.full((len(samples), 2), -1, np.int64)
    for i, s in enumerate(samples):
        if isinstance(s.ref, (str, Path)):
            try:
                st = os.stat(s.ref)
            except OSError:
                continue
            out[i] = (st.st_size, st.st_mtime_ns)
    return out


def save_input_stats(spec: DatasetSpec, build_dir: Path) -> None:
    stats = input_stats(spec)
    if stats is not None:
        atomic_save_npy(build_dir / STATS_NAME, stats)


def stale_inputs(spec: DatasetSpec, build_dir: Path) -> list[str]:
    """Warnings (zero or one line) about inputs whose size or mtime differ from the build's."""
    path = build_dir / STATS_NAME
    if not path.is_file():  # built before the stats existed, or no file inputs
        return []
    try:
        old = np.load(path, allow_pickle=False)
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
            f"{build_dir.parent} was built ({named}{more}): the built data is stale; rebuild with "
            "--overwrite to use the new files"]
