"""Choice sets: each defined once here, used by the CLI (typer takes these Enum types), the
pipeline's config, the recipes and the files. Values travel as plain strings (``check``), so
stage keys, fingerprints and JSON files hold exactly the strings they always held."""
from __future__ import annotations

import math
import numbers
import re
from enum import Enum
from typing import Any, Iterable

from ..errors import DP4TLError

class Choice(str, Enum):
    """A closed set of string values. ``str(member)`` / f-strings give the value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)

    @classmethod
    def check(cls, value: Any, what: str, error: type[DP4TLError] = DP4TLError) -> str:
        """``value`` (a member or its string) as the plain string; anything else is a one-line
        ``error`` naming ``what`` and the choices."""
        v = value.value if isinstance(value, cls) else value
        if v not in cls.values():
            raise error(f"{what} must be one of {', '.join(cls.values())}, got {value!r}")
        return str(v)


class Format(Choice):
    """Which on-disk copy of a built dataset the loaders read."""
    ffcv = "ffcv"
    wds = "wds"


class Decode(Choice):
    """Where JPEGs are decoded and augmented (recipe ``data.decode``); ``auto``: GPU when
    possible (``data.loaders.resolve_decode``)."""
    cpu = "cpu"
    gpu = "gpu"
    auto = "auto"


class Backend(Choice):
    """Scoring kernels (k-means, feature mapping)."""
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Protocol(Choice):
    """Recipe protocol of the pipeline: today's fast recipes, the paper's text (recipes/paper/),
    or the authors' released code (recipes/paper_code/); docs/deviations.md."""
    fast = "fast"
    paper = "paper"
    paper_code = "paper-code"


class RecipeSet(Choice):
    """Fast-protocol recipe set: tiny CPU recipes, the embedded benchmark's (bench) or the full
    ones; ``auto`` (``""`` in ``PipelineConfig.recipes``): from the data's manifest."""
    auto = "auto"
    tiny = "tiny"
    bench = "bench"
    full = "full"


class TargetCrop(Choice):
    """How the surrogate reads target images when scoring (recipe ``scoring.target_crop``): the
    eval transform's 224/256 centre crop, or the whole short side."""
    center = "center"
    none = "none"


class TargetSplit(Choice):
    """Target splits: the CoOp split JSON when found beside the data (auto), required (coop),
    or the dataset's official splits."""
    auto = "auto"
    coop = "coop"
    official = "official"


class Budget(Choice):
    """What a pruning ratio counts for class/cluster methods: units, or kept train samples."""
    units = "units"
    samples = "samples"


class PretrainLength(Choice):
    """How long a pruned set is pretrained: the recipe's epochs (the paper's protocol, so
    pruning saves time), or as many optimizer steps as the unpruned run (the saved time spent
    again: what the data removed costs, apart from what fewer steps cost)."""
    epochs = "epochs"
    steps = "steps"


class Order(Choice):
    """Which end of the ranking is kept: the top-scored units (the method as published) or the
    lowest (paper Fig. A3)."""
    ordered = "ordered"
    reversed = "reversed"


class FinetuneMode(Choice):
    """Downstream protocol: linear probing or full finetuning."""
    lp = "lp"
    ff = "ff"


class AdvNorm(Choice):
    """PGD threat model of adversarial pretraining (recipe ``adv.norm``)."""
    linf = "linf"
    l2 = "l2"


class AdvUnits(Choice):
    """Units of a PGD step and random start (recipe ``adv.units``): [0, 1] pixels, or the
    normalised model input as the authors' released script (docs/deviations.md)."""
    pixel = "pixel"
    normalized = "normalized"


class FinetuneHead(Choice):
    """The classifier finetuning trains (recipe ``finetune.head``): a new target-sized linear
    head, or the source model's own (its pretrained weights as the start; target labels are its
    first outputs and a prediction is the argmax over all of them), as the authors' released
    ``imagenet_transfer_to_downstream.py``."""
    new = "new"
    source = "source"


class StartFrom(Choice):
    """Which pretraining checkpoint finetuning starts from (recipe ``finetune.start_from``): the
    final epoch's, or the best val top-1's (the authors' best.ckpt)."""
    final = "final"
    best = "best"


class Criterion(Choice):
    """Which epoch's target test top-1 decides a winning subset (``--criterion``): the final
    epoch, or the best epoch on the test set (the authors' ``best_test_top1``)."""
    final = "final"
    best = "best"


class BetonMode(Choice):
    """How a build stores images in the beton: all JPEG, or a share raw."""
    jpg = "jpg"
    proportion = "proportion"


#: the devices a command runs on (``--device``, ``device=`` of the Python API)
DEVICE_SYNTAX = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(device: Any, what: str = "device") -> str:
    """The one device rule (``--device``; ``device=`` of train, finetune, make_loader and
    PipelineConfig): ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (a string or a torch.device),
    CUDA only when a CUDA device is visible and N below their count. Returns the device as a
    string, ``auto`` resolved (``cuda`` when a CUDA device is visible, else ``cpu``); anything
    else is a one-line :class:`DP4TLError` naming ``what``. (torch is imported here only when
    called, so the contracts still import without it.)"""
    text = device if isinstance(device, str) else str(device)
    if not DEVICE_SYNTAX.match(text):
        raise DP4TLError(f"{what} {device!r} is not a device; use auto, cpu, cuda or cuda:N "
                         "(e.g. cuda:1)")
    if text == "cpu":
        return text
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    cpu = "--device cpu (or auto)" if what.startswith("--") else f"{what}='cpu' (or 'auto')"
    if not torch.cuda.is_available():
        raise DP4TLError(f"{what} {text!r}: no CUDA device is visible on this machine (CUDA is "
                         f"not available); use {cpu}")
    count = torch.cuda.device_count()
    index = text.partition(":")[2]
    if index and int(index) >= count:
        raise DP4TLError(f"{what} {text!r}: this machine has {count} CUDA device(s); use "
                         f"cuda:0 .. cuda:{count - 1}")
    return text


#: ratios are rounded to this many decimals in stage keys and tables
RATIO_DECIMALS = 6


def check_ratio(ratio: Any, what: str = "ratio", error: type[DP4TLError] = DP4TLError, *,
                text: bool = False) -> float:
    """A pruning ratio: the fraction of units removed, in [0, 1) (1 would keep nothing). A
    number (not a bool); a string only where the user typed it (``text``: a CLI list). Returned
    rounded to :data:`RATIO_DECIMALS`, the ratio every key, label and table holds (0.6000004 ran
    its own prune stage and report as "ratio 0.6000004" beside 0.6's, with the same mask)."""
    if isinstance(ratio, bool) or not (isinstance(ratio, numbers.Real)
                                       or (text and isinstance(ratio, str))):
        raise error(f"{what} must be a number in [0, 1), got {type(ratio).__name__} {ratio!r}")
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise error(f"{what} must be a number in [0, 1), got {ratio!r}") from None
    if not (math.isfinite(r) and 0.0 <= r < 1.0):
        raise error(f"{what} must be in [0, 1), got {ratio}")
    if (r > 0 and round(r, RATIO_DECIMALS) == 0) or round(r, RATIO_DECIMALS) >= 1:
        # 1e-9 became the unpruned reference, 0.9999999 a ratio of 1 (nothing kept)
        raise error(f"{what}: {ratio} is within 1e-{RATIO_DECIMALS} of {round(r)}; ratios are "
                    f"kept to {RATIO_DECIMALS} decimals, so give one in [1e-{RATIO_DECIMALS}, "
                    f"{1 - 10 ** -RATIO_DECIMALS:.{RATIO_DECIMALS}f}] (or 0)")
    return round(r, RATIO_DECIMALS)


def check_pruned_ratios(ratios: Iterable[Any], what: str, why: str,
                        error: type[DP4TLError] = DP4TLError) -> list[float]:
    """Ratios of pruned runs: each a :func:`check_ratio` above 0 (``why`` says why 0 is not
    one of them, e.g. "0 % is the shared reference")."""
    out = []
    for x in ratios:
        try:
            r: float | None = None if isinstance(x, bool) else float(x)
        except (TypeError, ValueError):
            r = None  # not a number: check_ratio says so
        if r is not None and not 0.0 < r < 1.0:  # (NaN too)
            raise error(f"{what} must lie in (0, 1) ({why}), got {x}")
        out.append(check_ratio(x, what, error, text=True))
    return out


def split_items(text: str | None, what: str, error: type[DP4TLError] = DP4TLError, *,
                parts: list[str] | None = None) -> list[str]:
    """``"a, b,c,"`` → ``["a", "b", "c"]``: the one list syntax of the command line (a leading
    or trailing comma drops nothing). An empty item *between* commas (``"0,,1"``,
    ``"0, ,1"``) is refused, never read as the shorter list: ``--seeds 0,,1`` ran two seeds
    where three were meant, while ``--classes 1,,2`` was refused (audit). ``parts``: the text
    already cut at its separating commas (``--methods`` keeps the commas inside
    ``fm[k=16,reversed]``)."""
    parts = [x.strip() for x in (parts if parts is not None else (text or "").split(","))]
    items = [x for x in parts if x]
    if not all(parts[1:-1]):
        raise error(f"{what + ': ' if what else ''}{text!r} has an empty item between commas: "
                    "put back the item that was dropped, or remove the extra comma")
    return items


def check_items(what: str, items: Iterable[Any]) -> list[Any]:
    """A list option's items: at least one, each once. An empty list would run nothing and
    write an empty table over an earlier one; a repeated seed or method would count one run
    twice in a mean or a pairing."""
    items = list(items)
    if not items:
        raise DP4TLError(f"{what} is empty: give at least one")
    for i, x in enumerate(items):
        if x in items[:i]:
            raise DP4TLError(f"{what} lists {x!r} twice; list each once")
    return items


MAX_SEED = 2**32 - 1  # numpy's legacy seeding and torch's generators all take it


def check_seeds(seeds: Iterable[int], what: str = "--seeds",
                error: type[DP4TLError] = DP4TLError) -> list[int]:
    """Seeds are integers >= 0 (train.seed; a recipe check that would otherwise fail only at
    pretraining): a list of ints (the CLI's digit strings too). A float, a bool, or one number
    or string instead of a list is refused (0.7 would become seed 0, "01" the seeds 0 and 1).
    One seed: ``check_seeds([seed], "seed")[0]``."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise error(f"{what} must be a list of integers >= 0 such as (0, 1, 2), got {seeds!r}")
    out = []
    for s in seeds:
        try:
            if isinstance(s, bool) or not isinstance(s, (numbers.Integral, str)):
                raise ValueError(s)
            out.append(int(s))
        except ValueError:
            raise error(f"{what}: {s!r} is not an integer; seeds are integers >= 0") from None
    negative = [s for s in out if s < 0]
    if negative:
        raise error(f"{what}: {negative[0]} is negative; seeds are integers >= 0")
    huge = [s for s in out if s > MAX_SEED]
    if huge:  # torch.manual_seed overflowed only at pretraining, after the selection ran
        raise error(f"{what}: {huge[0]} is too large; seeds are integers from 0 to {MAX_SEED}")
    return out


def check_tol(tol: Any, what: str = "--tol") -> float:
    """A winning-subset tolerance: accuracy points a pruned subset may lose and still win,
    a finite number >= 0 (NaN would make every comparison false: no subset would ever win)."""
    try:
        t = float(tol)
    except (TypeError, ValueError):
        raise DP4TLError(f"{what} must be a number of accuracy points >= 0, got {tol!r}") from None
    if not (math.isfinite(t) and t >= 0):
        raise DP4TLError(f"{what} must be a number of accuracy points >= 0, got {tol}")
    return t


#: the paper's number of k-means clusters (FM, Sec. 4)
PAPER_K = 2000
#: K on the embedded synth data (sized for its small presets, e.g. synth:tiny's 1.9k source
#: images, where the paper's K would exceed the sample count; synth:imagenet's users pass K)
SYNTH_K = 64


def default_k(synthetic: bool) -> int:
    """K when none is given: :data:`SYNTH_K` on the embedded synth data, else :data:`PAPER_K`.
    The one rule of the CLI's ``--k`` default and of ``PipelineConfig(k=None)``."""
    return SYNTH_K if synthetic else PAPER_K


def check_k(k: Any, what: str = "k") -> int:
    """A number of k-means clusters: a positive integer."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise DP4TLError(f"{what} must be a positive number of clusters, got {k!r}")
    return k


def check_k_fits(k: Any, num_samples: int) -> int:
    """K for k-means over the source train split: positive, and at most its samples (checked
    from the manifest before any feature is extracted)."""
    k = check_k(k)
    if k > num_samples:
        raise DP4TLError(f"k={k} clusters requested but the source train split has only "
                         f"{num_samples} samples; pass a smaller --k")
    return k
