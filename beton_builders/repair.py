"""Repair of a finished build whose files were damaged since (truncated, deleted, edited).

Rerunning the same ``dp4tl build`` finds the damage with the cheap checks the loaders run
(:func:`damaged_files`), turns the build back into an interrupted one that the normal resume
completes (:func:`start_repair`), and refuses, putting the manifest back, when the inputs
would now give other data (:func:`undo_repair`). The record of a repair under way lives in
``.build/repair.json`` so that a kill at any point leaves a state the next run handles.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ffcv_dp4tl.contracts import MANIFEST_NAME, DatasetManifest
from ffcv_dp4tl.errors import DataError
from ffcv_dp4tl.fsutil import FOLDER_IN_THE_WAY, absent_why, atomic_write_json, load_npy, read_json

from .beton import check_beton
from .out_dir import BUILD_DIR, REMEDY, REPAIR_NAME, settings_file, shard_meta
from .integrity import (SCHEME, VERIFY_HINT, array_digest, index_digest, labels_dtype_problem,
                        recorded_problems)


def damaged_files(out_dir: Path, remedy: str = REMEDY) -> list[tuple[Path, str]]:
    """``(file, problem)`` for each file of a finished build that no longer matches what the
    build recorded: the cheap checks the loaders run (sizes, header and edge digests, the
    labels' and index's digests), or for a build from before checksums were recorded, files
    missing and the beton's structure (:func:`~.beton.check_beton`). Empty when all match."""
    manifest = DatasetManifest.from_json(read_json(out_dir / MANIFEST_NAME, "manifest"),
                                         out_dir / MANIFEST_NAME)
    hint = VERIFY_HINT.format(root=out_dir)
    out = []
    for name, entry in manifest.splits.items():
        beton = out_dir / entry.beton
        shards = [out_dir / p for p in entry.shards]
        rec = entry.checksums if entry.checksums and entry.checksums.get("scheme") == SCHEME else None
        if rec is None:  # an older build: what can be checked without recorded digests
            listed = [beton, *shards, out_dir / entry.labels, out_dir / entry.index]
            out += [(p, f"{p} is {why}") for p in listed if (why := absent_why(p))]
            problems = check_beton(beton, entry.num_samples)[1] if beton.is_file() else []
            out += [(beton, f"{beton}: damaged ({problems[0]})")] if problems else []
            continue
        wants = rec.get("shards") or []
        if (not isinstance(rec.get("beton"), dict) or len(wants) != len(shards)
                or not all(w is None or isinstance(w, dict) for w in wants)):
            raise DataError(f"{out_dir / MANIFEST_NAME}: split {name!r}'s checksums do not fit its "
                            f"files (edited by hand?); restore manifest.json, or {remedy}")
        out += [(p, f"{p} is {why}") for p in [beton, *shards] if (why := absent_why(p))]
        out += recorded_problems(beton, shards, rec, name, hint)
        for rel, key, digest in ((entry.labels, "labels", array_digest),
                                 (entry.index, "index", index_digest)):
            path = out_dir / rel
            if key in rec:
                try:
                    values = load_npy(path)
                    # (float labels of whole values hash like the build's: their dtype is damage)
                    ok = (digest(values) == rec[key] and
                          (key != "labels" or labels_dtype_problem(path, values) is None))
                except (OSError, ValueError, EOFError, TypeError):  # (an empty file: EOFError)
                    ok = False
                if not ok:
                    out.append((path, f"{path} is missing or differs from the build's"))
    return out


def start_repair(out_dir: Path, damaged: list[tuple[Path, str]], remedy: str = REMEDY) -> None:
    """Turn a finished build with ``damaged`` files back into an interrupted one that the
    normal resume completes: a damaged shard loses its metadata (so it alone is encoded again
    from its inputs), a damaged beton is deleted (written again from the shards), the labels
    and index are always written again. Order, so that a kill at any point leaves a state the
    next run handles: ``.build/repair.json`` first (the manifest and its split fingerprints),
    then the damaged files' metadata, the manifest last. Until a repair restores the
    fingerprints, a split whose shards would give other data (inputs changed or vanished
    since) is refused before its beton is touched, and the manifest is put back
    (:func:`undo_repair`). Needs the build's ``.build/`` records; without them, ``remedy``."""
    manifest_path = out_dir / MANIFEST_NAME
    for path, _ in damaged:  # (before anything is written: the repair would fail on it)
        if absent_why(path) == FOLDER_IN_THE_WAY:  # (the readers' rule: a link to one too)
            raise DataError(f"{path} is {FOLDER_IN_THE_WAY}; then rerun the build, which "
                            "writes the file again")
    if not settings_file(out_dir).is_file():
        raise DataError(f"{damaged[0][1]}; {out_dir}'s build records (.build/) are gone, so it "
                        f"cannot be repaired in place: {remedy}")
    old = read_json(manifest_path, "manifest")
    manifest = DatasetManifest.from_json(old, manifest_path)
    atomic_write_json(out_dir / BUILD_DIR / REPAIR_NAME,
                      {"splits": {n: e.fingerprint for n, e in manifest.splits.items()},
                       "manifest": old})
    more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
    print(f"[build] {out_dir} is damaged: {damaged[0][1].split('; ')[0]}{more}; repairing it from "
          "its inputs", file=sys.stderr, flush=True)
    for path, _ in damaged:
        if path.suffix == ".tar":
            shard_meta(out_dir, path).unlink(missing_ok=True)
        elif path.suffix == ".beton":
            path.unlink(missing_ok=True)
    manifest_path.unlink()


def undo_repair(out_dir: Path, repair: dict) -> None:
    """A repair refused: the manifest it removed goes back (the intact files, all but the
    damaged ones, are usable again, as before the repair) and its record goes."""
    if isinstance(repair.get("manifest"), dict):
        atomic_write_json(out_dir / MANIFEST_NAME, repair["manifest"])
    end_repair(out_dir)


def end_repair(out_dir: Path) -> None:
    """The repair is over (the build's manifest is written, or back): its record goes."""
    (out_dir / BUILD_DIR / REPAIR_NAME).unlink(missing_ok=True)


def read_repair(out_dir: Path, remedy: str = REMEDY) -> dict | None:
    """The record of a repair under way (:func:`start_repair`), else None."""
    path = out_dir / BUILD_DIR / REPAIR_NAME
    if not path.is_file():
        return None
    rec = read_json(path, "repair record")
    if not isinstance(rec, dict) or not isinstance(rec.get("splits"), dict):
        raise DataError(f"{path} is damaged; {remedy}")
    return rec
