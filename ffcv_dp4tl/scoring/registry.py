"""Scorer registry: one class per scoring method, in the style of the model registry (timm's
``register_model``).

A scoring method is a :class:`Scorer` subclass decorated with :func:`register_scorer`. It
declares, as class attributes, everything the rest of the project needs to know about it:

* ``name`` / ``help`` — the CLI name and its one-line description;
* ``unit`` — what it ranks and what ``prune`` removes: ``class`` (source classes), ``cluster``
  (clusters of source samples, with a cluster id per sample) or ``sample``;
* ``needs`` — a subset of :data:`NEEDS`: ``logits`` (a surrogate with a source-class head: refused
  for a self-supervised surrogate), ``features`` (penultimate features of a surrogate),
  ``trajectory`` (an early-training checkpoint of the surrogate), ``target`` (the target train
  split); empty = nothing (no surrogate is trained for it);
* ``cost`` — a :class:`Cost` record of what the selection runs (for the cost table), including
  the training runs the method makes itself (``Cost.training``; their wall time is in the
  score stage's ``selection_seconds`` and listed in ``scores.json``'s ``training_runs``);
* ``reads`` — the shared run settings the method reads, a subset of :data:`SETTINGS`: ``k``
  (``ctx.k``, k-means clusters) and ``seed`` (``ctx.seed``). Only these enter the score
  stage's cache key (:meth:`Scorer.stage_key`), so LM is not rescored when ``--k`` changes;
  an undeclared setting reaches ``score`` as ``None``;
* ``kernels`` — the scoring kernels' settings it reads, a subset of :data:`KERNEL_SETTINGS`:
  ``iters`` (``ctx.iters``, Lloyd iterations) and ``backend`` (``ctx.backend``, the numba/CuPy
  kernels). They stay out of the stage key: ``backend`` changes run time, not which units win,
  and the pipeline always runs the default ``iters`` (a standalone ``dp4tl score --iters N``
  can change the winners when k-means has not converged in N; ``scores.json`` records it);
  ``dp4tl score`` refuses each one a method does not declare (it would be ignored);
* ``revision`` — bumped when a fixed rule changes the method's scores for the same inputs
  (FM's tie-break, 2026-12-03): it enters the score stage's key and ``scores.json``, so cached
  scores of the older rule are computed again;
* ``options`` — the method's knobs, ``{name: Option(default, help, choices=(),
  minimum=None)}`` (a number's ``minimum`` is required: registration refuses it missing), set with
  ``--opt NAME=VALUE`` (``dp4tl score`` / ``dp4tl pipeline``) and read as ``ctx.opt(name)``;
* ``trains`` — True when the method trains models itself (FORGET, GraNd/EL2N with several
  runs): the pipeline then hands it the surrogate's training recipe;
* ``style`` — a :class:`PlotStyle` (colour, marker, label) for the cost table and plots; no two
  methods may share a colour and marker (refused at registration);
* ``order`` — its place in listings (``--method`` choices, reports): the built-ins take 0-99 in
  the paper's order, and a method that leaves the default (100) is listed after them by name;
* ``score(ctx)`` — the entry point: a :class:`~ffcv_dp4tl.scoring.context.ScoringContext` in,
  a :class:`ScoreResult` out (the pipeline writes it as a scores directory).

The built-in methods live one per module in :mod:`ffcv_dp4tl.scoring.methods`; every module there
is imported on first use of the registry, so adding a method is adding one file.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..contracts import SCORE_UNITS
from ..errors import DP4TLError
from ..shipped import doc_ref

if TYPE_CHECKING:  # pragma: no cover
    from .context import ScoringContext

#: Units a scorer can rank (``contracts.SCORE_UNITS``), with their plural (for reports).
UNIT_PLURAL: dict[str, str] = {"class": "classes", "cluster": "clusters", "sample": "samples"}

LOGITS, FEATURES, TRAJECTORY, TARGET = "logits", "features", "trajectory", "target"
#: What a scorer may need: surrogate class logits, surrogate features, an early-training
#: checkpoint of the surrogate, the target train split.
NEEDS = (LOGITS, FEATURES, TRAJECTORY, TARGET)
_SURROGATE_NEEDS = frozenset({LOGITS, FEATURES, TRAJECTORY})

K, SEED = "k", "seed"
#: Run settings shared by every scorer's context that a scorer may read (``Scorer.reads``).
SETTINGS = (K, SEED)

ITERS, BACKEND = "iters", "backend"
#: Settings of the scoring kernels (k-means, centroid sums) a scorer may read (``Scorer.kernels``).
KERNEL_SETTINGS = (ITERS, BACKEND)


@dataclass(frozen=True)
class PlotStyle:
    """How a method is drawn and named in the cost table and accuracy plots."""
    color: str | None = None  # a matplotlib colour; None = matplotlib's cycle
    marker: str = "o"
    label: str = ""
    fill: str = "full"  # matplotlib's fillstyle: "none" draws the marker open (a variant)


@dataclass(frozen=True)
class Cost:
    """What a selection runs, beyond training the surrogate (which ``needs`` implies)."""
    forward: tuple[str, ...] = ()  # surrogate forward passes, e.g. "target train", "source train"
    steps: tuple[str, ...] = ()  # other work, e.g. "k-means on source train features"
    training: tuple[str, ...] = ()  # training runs the method makes itself (timed in score)


#: what a value of an option's default type is, in words ("must be an integer", not "a int")
_KIND = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Option:
    """One knob of a scorer: its default (whose type the CLI value is converted to), a one-line
    help and, optionally, the allowed values; a number's smallest allowed value is required
    (:func:`register_scorer` refuses a numeric option without ``minimum``)."""
    default: Any
    help: str = ""
    choices: tuple[Any, ...] = ()
    minimum: int | float | None = None  # numbers below are refused (e.g. epoch=-1)

    @property
    def is_number(self) -> bool:
        """An int or float knob (not a bool): it must declare its ``minimum``."""
        return isinstance(self.default, (int, float)) and not isinstance(self.default, bool)

    def parse(self, method: str, name: str, value: Any) -> Any:
        d = self.default
        try:
            if isinstance(d, bool):
                v = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
                if not isinstance(value, bool) and str(value).lower() not in (
                        "1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
            elif isinstance(d, int):
                v = int(value)
            elif isinstance(d, float):
                v = float(value)
            else:
                v = str(value)
        except (TypeError, ValueError):
            raise DP4TLError(f"{method}: option {name}={value!r} must be "
                             f"{_KIND.get(type(d), 'a ' + type(d).__name__)}") from None
        if isinstance(v, float) and not math.isfinite(v):  # (inf passed `v < minimum`: NaN scores)
            raise DP4TLError(f"{method}: option {name}={value!r} must be a finite number")
        if self.choices and v not in self.choices:
            raise DP4TLError(f"{method}: option {name}={value!r} must be one of "
                             f"{', '.join(map(str, self.choices))}")
        if self.minimum is not None and not isinstance(v, bool) and v < self.minimum:
            raise DP4TLError(f"{method}: option {name}={value!r} must be >= {self.minimum}"
                             + (f"; {name}: {self.help}" if self.help else ""))
        return v


@dataclass
class ScoreResult:
    """What ``Scorer.score`` returns; arrays as in a scores directory (``pipeline/scores_io``)."""
    scores: Any  # one score per unit (class, cluster or sample); higher = keep
    tiebreak: Any = None  # class/cluster: orders equal scores
    train_units: Any = None  # cluster: cluster id of every source train sample


class Scorer:
    """Base class of a scoring method; subclass, set the class attributes, implement ``score``."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    unit: ClassVar[str] = "sample"
    needs: ClassVar[frozenset[str]] = frozenset()
    cost: ClassVar[Cost] = Cost()
    style: ClassVar[PlotStyle | None] = None  # default: no colour, "o", NAME in capitals
    higher_is_better: ClassVar[bool] = True  # sample unit: keep the highest scores
    order: ClassVar[int] = 100  # position in listings (built-ins 0-99, then by name)
    options: ClassVar[dict[str, Option]] = {}  # knobs: --opt NAME=VALUE, ctx.opt(NAME)
    trains: ClassVar[bool] = False  # trains models itself (gets the surrogate's recipe)
    reads: ClassVar[frozenset[str]] = frozenset()  # settings of SETTINGS read (ctx.k, ctx.seed)
    kernels: ClassVar[frozenset[str]] = frozenset()  # of KERNEL_SETTINGS (ctx.iters, ctx.backend)
    #: bumped when the method's scores change for the same inputs (a fixed rule), so cached
    #: score stages run again; 0 stays out of the key (older keys stay valid)
    revision: ClassVar[int] = 0

    # ------------------------------------------------------------------ derived facts
    @property
    def uses_k(self) -> bool:
        """Clusters the source into ``k`` (so ``k`` is checked against the source's size)."""
        return K in self.reads

    def key_settings(self, **values: Any) -> dict[str, Any]:
        """The settings among ``values`` (``k=..., seed=...``) this scorer reads."""
        return {name: values[name] for name in SETTINGS if name in self.reads}

    def stage_key(self, **values: Any) -> dict[str, Any]:
        """What its score stage's key holds besides its inputs: the settings it reads
        (:meth:`key_settings`) and its ``revision`` when not 0."""
        return {**self.key_settings(**values), **({"revision": self.revision} if self.revision else {})}

    @property
    def needs_class_head(self) -> bool:
        return LOGITS in self.needs

    @property
    def needs_surrogate(self) -> bool:
        return bool(self.needs & _SURROGATE_NEEDS)

    @property
    def needs_target(self) -> bool:
        return TARGET in self.needs

    @property
    def supports_self_supervised(self) -> bool:
        """A self-supervised (e.g. MoCo) surrogate has no source-class head."""
        return not self.needs_class_head

    @property
    def plot_style(self) -> PlotStyle:
        s = self.style or PlotStyle()
        return PlotStyle(s.color, s.marker, s.label or self.name.upper())

    @property
    def label(self) -> str:
        return self.plot_style.label

    def cost_summary(self) -> str:
        """One line: what the selection runs (surrogate training included)."""
        parts = []
        if self.needs_surrogate:
            parts.append("surrogate training" + (" (early checkpoint)"
                                                 if TRAJECTORY in self.needs else ""))
        parts.extend(self.cost.training)
        if self.cost.forward:
            parts.append("surrogate forward over " + ", ".join(self.cost.forward))
        parts.extend(self.cost.steps)
        return "; ".join(parts) or "nothing"

    def parse_options(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every option's value: ``given`` (strings from the CLI or typed values) converted to
        the default's type, the defaults for the rest; an unknown name is a DP4TLError."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            have = ", ".join(self.options) or "none"
            raise DP4TLError(f"{self.name} has no option {', '.join(unknown)} (its options: {have})")
        return {k: (o.parse(self.name, k, given[k]) if k in given else o.default)
                for k, o in self.options.items()}

    def options_help(self) -> str:
        return "; ".join(f"{k}={o.default!r}: {o.help}" for k, o in self.options.items())

    # ------------------------------------------------------------------ behaviour
    def pick_checkpoint(self, checkpoint: Path | None, trajectory: tuple[Path, ...]) -> Path | None:
        """The surrogate checkpoint to score: the earliest kept one for trajectory methods."""
        if TRAJECTORY in self.needs and trajectory:
            return Path(trajectory[0])
        return checkpoint

    def memory_bytes(self, source: Any) -> int:
        """Bytes the method holds in memory that grow with the source (its ``Manifest``), beyond
        the models and the memory-mapped feature store: 0 for a method that reads batch by batch
        or in blocks (docs/scale.md). A method holding whole matrices says so, and
        :func:`check_memory` refuses a source it cannot hold before any work."""
        return 0

    def score(self, ctx: "ScoringContext") -> ScoreResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<scorer {self.name!r}: {self.unit}, needs {sorted(self.needs) or 'nothing'}>"


_REGISTRY: dict[str, Scorer] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        from . import methods  # noqa: F401  (imports every module of the package)


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator adding a :class:`Scorer` subclass to the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise TypeError("register_scorer decorates Scorer subclasses")
    _load_builtins()  # a name clash with a built-in is caught whatever was imported first
    name = cls.name
    if not name or any(c.isspace() or c in ",@" for c in name):
        raise ValueError(f"{cls.__qualname__}: scorer name {name!r} must be non-empty, without "
                         "spaces, ',' or '@'")
    if cls.unit not in SCORE_UNITS:
        raise ValueError(f"scorer {name!r}: unit {cls.unit!r} is not one of "
                         f"{', '.join(SCORE_UNITS)}")
    unknown = set(cls.needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"scorer {name!r}: unknown needs {sorted(unknown)}; choose from "
                         f"{', '.join(NEEDS)}")
    unknown = set(cls.reads) - set(SETTINGS)
    if unknown:
        raise ValueError(f"scorer {name!r}: unknown reads {sorted(unknown)}; choose from "
                         f"{', '.join(SETTINGS)}")
    unknown = set(cls.kernels) - set(KERNEL_SETTINGS)
    if unknown:
        raise ValueError(f"scorer {name!r}: unknown kernels {sorted(unknown)}; choose from "
                         f"{', '.join(KERNEL_SETTINGS)}")
    if isinstance(cls.revision, bool) or not isinstance(cls.revision, int) or cls.revision < 0:
        raise ValueError(f"scorer {name!r}: revision must be an integer >= 0, got {cls.revision!r}")
    for opt_name, opt in dict(cls.options).items():
        if not isinstance(opt, Option) or not opt_name.isidentifier():
            raise ValueError(f"scorer {name!r}: options must map identifiers to Option, got "
                             f"{opt_name!r}: {opt!r}")
        if opt.is_number and opt.minimum is None:  # (-1 epochs ran as 0; docs audit)
            raise ValueError(f"scorer {name!r}: numeric option {opt_name!r} has no minimum; "
                             f"give its smallest allowed value: Option({opt.default!r}, ..., "
                             "minimum=...)")
    old = _REGISTRY.get(name)
    if old is not None and (type(old).__module__, type(old).__qualname__) != (
            cls.__module__, cls.__qualname__):
        raise ValueError(f"scorer {name!r} is registered already (by {type(old).__module__})")
    look = (cls.style.color, cls.style.marker) if cls.style is not None else None
    twin = next((other for other in _REGISTRY.values() if other.name != name and look
                 and look[0] is not None and other.style is not None
                 and (other.style.color, other.style.marker) == look), None)
    if twin is not None:  # (two methods drawn alike could not be told apart in a plot)
        raise ValueError(f"scorer {name!r}: plot style {look[0]!r} {look[1]!r} is {twin.name!r}'s; "
                         "choose another colour or marker for its PlotStyle")
    cls.needs = frozenset(cls.needs)
    cls.reads = frozenset(cls.reads)
    cls.kernels = frozenset(cls.kernels)
    _REGISTRY[name] = cls()
    return cls


def unregister_scorer(name: str) -> None:
    """Remove a scorer (tests register toy scorers and remove them again)."""
    _REGISTRY.pop(name, None)


def list_scorers() -> list[str]:
    """Registered names, built-ins first in the paper's order, then by name."""
    _load_builtins()
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n))


def scorers() -> list[Scorer]:
    return [_REGISTRY[n] for n in list_scorers()]


def get_scorer(name: str) -> Scorer:
    """The registered scorer ``name``; an unknown name is a one-line DP4TLError."""
    if why := unregistered_why(name):
        raise DP4TLError(why)
    return _REGISTRY[name]


def unregistered_why(name: str, given: bool = True) -> str | None:
    """None when ``name`` is a registered scorer; else the words that say it is not, naming
    the spelling when only the case differs (the docs write LM, FM, ...), else the registered
    names. Every refusal of an unregistered method says it so: a command's or the pipeline's
    method (:func:`get_scorer`) and a ``scores.json``'s (``pipeline.scores_io``, which names
    the file); they were worded apart. ``given``: the user typed the name, so the words advise
    a choice; a name read from a file (``False``) is told what is registered instead (review:
    "choose one of" read as advice for a file the user did not write)."""
    if is_registered(name):
        return None
    if isinstance(name, str) and name.lower() in _REGISTRY:  # (is_registered loaded them)
        return (f"unknown scoring method {name!r}; method names are lower case: {name.lower()!r}"
                if given else f"unknown scoring method {name!r} (registered: {name.lower()!r})")
    names = ", ".join(list_scorers())
    return (f"unknown scoring method {name!r}; choose one of {names}" if given
            else f"unknown scoring method {name!r} (registered: {names})")


def is_registered(name: str) -> bool:
    _load_builtins()
    return name in _REGISTRY


def self_supervised_alternatives() -> list[str]:
    """Surrogate-based methods that work with a self-supervised surrogate (features only)."""
    return [s.name for s in scorers() if s.needs_surrogate and s.supports_self_supervised]


def parse_option_pairs(pairs: Any) -> dict[str, str]:
    """``["runs=5", "arch=resnet50"]`` (or one comma-free string each) → ``{"runs": "5", ...}``."""
    out: dict[str, str] = {}
    for p in pairs or ():
        if "=" not in str(p):
            raise DP4TLError(f"--opt expects NAME=VALUE, got {p!r}")
        k, v = str(p).split("=", 1)
        if not k.strip():  # ('=1' was "lm has no option  (its options: none)": no name to name)
            raise DP4TLError(f"--opt {p!r}: no option name before '='; give NAME=VALUE")
        out[k.strip()] = v.strip()
    return out


def methods_help(detailed: bool = False, needing: str | None = None) -> str:
    """CLI help: the registered names (``detailed``: each with its one-line help; ``needing``:
    only the methods whose ``needs`` include it)."""
    chosen = [s for s in scorers() if needing is None or needing in s.needs]
    if detailed:
        return "; ".join(f"{s.name}: {s.help}" for s in chosen)
    return (", " if needing else " | ").join(s.name for s in chosen)


def check_memory(scorer: Scorer, source: Any) -> None:
    """Refuse a source whose ``scorer`` would hold more bytes (:meth:`Scorer.memory_bytes`, a
    lower bound) than this process may use (:func:`~ffcv_dp4tl.cpus.memory_limit`: the
    machine's memory within its cgroup limit). Called when scoring starts, before the source is
    read: the run was killed by the kernel with no message, its surrogate (cached) trained."""
    from ..cpus import memory_limit
    from ..errors import DP4TLError

    need = scorer.memory_bytes(source)
    limit = memory_limit() if need else None
    if need and limit and need > limit:
        raise DP4TLError(
            f"--method {scorer.name} would hold about {need / 2**30:.1f} GiB in memory for "
            f"{source.root} ({source.split('train').num_samples:,} train samples, "
            f"{source.num_classes:,} classes), more than the {limit / 2**30:.1f} GiB this process "
            "may use (a lower bound): run it where more memory is given (a larger job), or "
            f"choose a method that reads in batches: {doc_ref('scale')}")
