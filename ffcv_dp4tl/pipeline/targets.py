"""Several targets and the pruning order (paper Fig. A3 and Fig. A5) for :mod:`.run`.

**Several targets** (Fig. A5, "DP in the multi-task setting"): one pruned source serves every
target. The selection scores all targets at once (:func:`~..scoring.combine_target_scores`:
each target's votes are normalised to sum 1, times its weight, then added; equal weights by
default), the source model is pretrained once on that mask, and LP/FF then run on *each*
target: the result lists one accuracy per target. With one target nothing changes (stage keys,
stage names, report), so single-target caches stay valid.

**Order** (Fig. A3): ``ordered`` keeps the highest-scoring units (the method as published);
``reversed`` keeps the lowest-scoring ones, i.e. prunes the most influential units first, the
paper's check that LM's top classes are the ones that matter.

Everything here is a pure function of the config, checked before any work; names that reach
stage keys are the targets' content fingerprints (in :mod:`.run`), never these display names.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..contracts import MANIFEST_NAME, Order, split_items
from ..errors import DP4TLError, count



def check_order(order: str) -> bool:
    """``True`` for ``reversed``; a one-line error for anything but the two orders."""
    return Order.check(order, "order") == Order.reversed


def split_targets(values: str | Iterable[str]) -> list[str]:
    """``--target a,b --target c`` → ``[a, b, c]``. A value holding ``=`` is one SOURCE with
    options (``synth:tiny,seed=3``), whose commas are not separators."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for v in items:
        v = v.strip()
        if not v:
            continue
        out += [v] if "=" in v else split_items(v, "--target")
    return out


def parse_weights(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"1,2"`` → ``(1.0, 2.0)``; ``""`` → ``()`` (equal weights)."""
    if isinstance(text, str):
        parts = split_items(text, "--target-weights")
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            raise DP4TLError(f"--target-weights must be comma-separated numbers, got "
                             f"{text!r}") from None
    return tuple(float(w) for w in text)


def target_list(target: str, targets: Sequence[str]) -> tuple[str, ...]:
    """The config's targets in order: ``targets`` when given (``target`` then empty or one of
    them), else ``(target,)`` (``""`` = the embedded data's first target)."""
    if not targets:
        return (target,)
    ts = tuple(targets)
    if target and target not in ts:
        raise DP4TLError(f"target={target!r} and targets={list(ts)} disagree; give the "
                         "targets in one of the two")
    check_distinct_targets(ts)
    return ts


def check_distinct_targets(targets: Iterable[str | Path]) -> None:
    """Each target once (``warm``, ``./warm`` and ``warm/`` are one): scored twice, a target's
    votes count twice, i.e. a silent double weight. Shared by the config (pipeline, bench) and
    :func:`~.score.score` (``dp4tl score --target``)."""
    seen: set[str] = set()
    for t in targets:
        key = os.path.normpath(str(t))
        if key in seen:
            raise DP4TLError(f"target {str(t)!r} is given twice; list each target once "
                             "(--target-weights weighs targets against each other)")
        seen.add(key)


def check_distinct_datasets(names: Sequence[str], fingerprints: Sequence[str],
                            source: tuple[str, str] | None = None,
                            option: str = "--target",
                            give: str = "the target's build or LAYOUT:PATH") -> None:
    """The fingerprint half of :func:`check_distinct_targets`: two targets with one content
    fingerprint (a copy of a folder under another path) are one dataset, which would vote twice
    in the selection and be reported under two names; a target with the source's fingerprint
    leaves nothing to transfer to. ``source``: ``(name, fingerprint)``; ``give``: what the
    command takes as a target (``dp4tl score``: a built folder only). Shared by the pipeline's
    resolve and ``dp4tl score``."""
    seen: dict[str, str] = {}
    for name, fp in zip(names, fingerprints):
        if source is not None and fp == source[1]:
            raise DP4TLError(f"{option} {name} is the source dataset ({source[0]}, same content "
                             f"fingerprint): transfer needs another dataset as target; pass {give}")
        if fp in seen:
            raise DP4TLError(f"targets {seen[fp]!r} and {name!r} are the same dataset (same "
                             "content fingerprint); list each target once (to count one more, "
                             "use --target-weights)")
        seen[fp] = name


def check_weights(weights: Sequence[float], n_targets: int) -> tuple[float, ...]:
    """Weights for ``n_targets`` targets: ``()`` (equal) or one finite number ≥ 0 per target,
    not all 0."""
    ws = tuple(float(w) for w in weights)
    if not ws:
        return ()
    if len(ws) != n_targets:
        raise DP4TLError(f"target weights: {len(ws)} given for {count(n_targets, 'target')}; give one weight per target "
                         "(in --target's order) or none for equal weights")
    for i, w in enumerate(ws):
        if not math.isfinite(w) or w < 0:
            raise DP4TLError(f"target weights: weight {i + 1} is {w}; weights must be finite "
                             "numbers >= 0")
    if not any(ws):
        raise DP4TLError("target weights are all 0; at least one target must count")
    return ws


def built_targets(root: Path) -> list[str]:
    """The names of the built targets of the embedded data's build ``root``
    (``root/targets/NAME/`` with a manifest), sorted: the one rule the pipeline, its checks
    and its messages read them by."""
    return sorted(p.parent.name for p in (root / "targets").glob(f"*/{MANIFEST_NAME}"))


def check_synth_target(root: Path, target: str) -> None:
    """On the embedded data (``root/targets/*``), a bare name that is not one of its targets:
    a one-line error listing them (instead of trying to build the name as a SOURCE)."""
    if not target or ":" in target or "/" in target or Path(target).expanduser().exists():
        return
    names = built_targets(root)
    if target not in names:
        raise DP4TLError(f"unknown target {target!r}; the embedded data in {root} has: "
                         f"{', '.join(names) or '(none)'} (or pass a built target dir / "
                         "LAYOUT:PATH)")


def synth_root(folder: Path) -> Path | None:
    """The embedded data's build ``folder`` is the root of (``ROOT/source`` and
    ``ROOT/targets/NAME``) or the source of (``ROOT/source``, beside ``ROOT/targets``), else
    None: where a plain target name is looked up first (:func:`~.resolve.resolve_data`)."""
    if folder.name == "source" and (folder.parent / "targets").is_dir():
        folder = folder.parent
    return folder if (folder / "source" / MANIFEST_NAME).exists() else None


def synth_targets(source: str) -> frozenset[str]:
    """The names a plain ``--target NAME`` is read as, known before any build: the embedded
    data's targets when ``source`` is a synth spec (its ``num_targets`` names) or a built synth
    root or source (its ``targets/*``); none for other data. A plain name outside them is a
    folder read against the working directory (:func:`~.config.absolute_paths` makes it
    absolute). (A synth spec that does not parse names none: resolve refuses it.)"""
    if source.strip().lower().split(":", 1)[0] == "synth":
        from beton_builders.synth import parse_synth

        try:
            return frozenset(parse_synth(source).target_names())
        except (DP4TLError, ValueError):
            return frozenset()
    root = synth_root(Path(source).expanduser())
    if root is None:
        return frozenset()
    return frozenset(built_targets(root))


def display_names(target_dirs: Sequence[Path]) -> list[str]:
    """A short, unique name per target (its folder's name, e.g. ``warm``, ``flowers102``;
    ``name-2`` … where two folders share a name)."""
    out: list[str] = []
    for d in target_dirs:
        base, n = Path(d).name or "target", 1
        name = base
        while name in out:
            n += 1
            name = f"{base}-{n}"
        out.append(name)
    return out


def stage_suffix(name: str | None) -> str:
    """Suffix of a per-target result name: ``finetune-lp@warm`` (several targets), ``""``
    (one target: the names stay ``finetune-lp`` as before)."""
    return f"@{name}" if name else ""


def score_key(target_fps: Sequence[str], weights: Sequence[float]) -> dict[str, Any]:
    """The target part of the score stage's key: ``{"target": fp}`` for one target (the key of
    every run before several targets existed), else every target's fingerprint in order plus
    the weights when given, and the combination rule: since 2026-12-04 the combined shares are
    rounded so equal shares tie exactly (:func:`~..scoring.combine_target_scores`); scores of
    several targets cached before that are computed again, single-target keys are unchanged."""
    if len(target_fps) == 1:
        return {"target": target_fps[0]}
    return {"targets": list(target_fps), **({"target_weights": list(weights)} if weights else {}),
            "combine": "rounded"}


def method_title(label: str, order: str) -> str:
    """``LM`` / ``LM (reversed)``: how reports and tables name a method run in an order."""
    return label if order == "ordered" else f"{label} ({order})"
