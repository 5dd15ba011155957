"""Atomic, self-describing checkpoints and the identity check that guards resuming.

``checkpoint.pt`` holds everything an interrupted run needs to continue bit-for-bit on CPU
(model, optimiser, grad scaler, completed epochs, torch/numpy/python RNG states, stage timings)
plus *identity*: arch, recipe fingerprint, dataset fingerprint, mask hash and class count.
Resuming under a different identity is refused with a DP4TLError before any training, because
silently continuing another run's weights on other data is the worst kind of wrong result.

**The contract** is :class:`Checkpoint`: typed fields and a ``format_version``. On disk it is
still a plain dict (``Checkpoint.to_dict()``, the keys checkpoints always had plus
``format_version``), so files stay loadable with ``torch.load`` alone and old files (dicts
without a version, format 0) load through :meth:`Checkpoint.load` unchanged. Readers use the
typed fields (``ckpt.epoch``, ``ckpt.eval_resolution``, ``ckpt.training_recipe()``), never the
dict.

**Reading runs no code from the file.** Every checkpoint, finetune state and brought weights file
is read by :func:`torch_load_safe` (``weights_only=True``; numpy arrays allowed, which the RNG
states are), so a checkpoint another user left in a shared folder cannot run code when
``dp4tl finetune --checkpoint`` or ``evaluate`` opens it.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DP4TLError, brief
from ..fsutil import atomic_path, free_bytes, is_disk_full, os_error_line

CHECKPOINT_NAME = "checkpoint.pt"
#: a finetuning's resumable state and its result (training/finetune.py writes them)
FINETUNE_STATE_NAME = "finetune_state.pt"
FINETUNE_RESULT_NAME = "result.json"

IDENTITY_KEYS = ("arch", "recipe_fingerprint", "dataset_fingerprint", "mask_hash", "num_classes")
#: 0: the unversioned dicts written before this class existed; 1: the same keys + format_version;
#: 2: a mid-epoch checkpoint (``step`` > 0, train.checkpoint_every), which an older reader
#: would resume at the start of its epoch, training the steps it holds twice. A checkpoint at
#: the end of an epoch is still written as format 1 (the same file as before)
CHECKPOINT_VERSION = 2
#: the format an end-of-epoch checkpoint is written in
EPOCH_END_VERSION = 1
#: the fields only a mid-epoch checkpoint has (format 2)
MID_EPOCH_KEYS = ("step", "progress", "rank_rng")


def mask_hash(indices: np.ndarray | None, split_fingerprint: str) -> str:
    """Hash of the kept sample indices (and the split they index); "full" for no mask."""
    if indices is None:
        return "full"
    h = hashlib.sha256(split_fingerprint.encode())
    h.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
    return h.hexdigest()


#: the generators every checkpoint's RNG states hold (CUDA's too where a GPU is visible)
RNG_KEYS = ("torch", "numpy", "python")


def rng_states() -> dict[str, Any]:
    st = dict(zip(RNG_KEYS, (torch.get_rng_state(), np.random.get_state(), random.getstate())))
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_states(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        # one state per GPU the saving process saw; a resume may see fewer (another node, a
        # smaller CUDA_VISIBLE_DEVICES), where set_rng_state_all would fail on a missing device
        for i, state in enumerate(st["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, i)


def _mid_epoch_fields_ok(kw: dict[str, Any]) -> bool:
    """A mid-epoch checkpoint's ``step``, ``progress`` and ``rank_rng`` are what the trainer
    writes (step 0, the end of an epoch, needs neither): read as they would be on resume."""
    from .engine import METRIC_SUMS, EpochProgress

    step = kw.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return False
    if not step:
        return True
    try:
        progress = EpochProgress.from_dict(kw.get("progress"))
    except (KeyError, TypeError, ValueError):
        return False
    rank_rng = kw.get("rank_rng")
    return (progress.step == step and len(progress.sums) == len(METRIC_SUMS)
            and (rank_rng is None or (isinstance(rank_rng, list) and rank_rng and all(
                isinstance(st, dict) and set(RNG_KEYS) <= set(st)
                for st in rank_rng))))


@dataclasses.dataclass
class Checkpoint:
    """One training checkpoint (see the module doc). ``model`` is the backbone's state_dict
    (for self-supervised runs: ``num_classes`` = the projection width); everything else
    describes how to rebuild it (``arch``, ``model_kwargs``), the run it belongs to
    (``identity``) and the state a resumed run continues from."""
    model: dict[str, torch.Tensor]
    arch: str
    num_classes: int
    identity: dict[str, Any]
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    epoch: int = 0                              # completed epochs
    # steps of epoch ``epoch`` (the next) already taken: a mid-epoch checkpoint (0: none);
    # ``progress``: that epoch's EpochProgress so far (engine.py); ``rank_rng``: every rank's RNG
    # states at that step (``rng`` is rank 0's), so each rank resumes its own augmentation stream
    step: int = 0
    progress: dict[str, Any] | None = None
    rank_rng: list[dict[str, Any]] | None = None
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)  # Recipe.to_dict()
    recipe_name: str = ""
    classes: list[str] = dataclasses.field(default_factory=list)      # source class names
    self_supervised: str | None = None         # e.g. "moco_v2"; None = supervised
    objective: dict[str, Any] | None = None    # the objective's state (MoCo queue, key encoder)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    world_size: int = 1
    format: str = ""                            # dataset format trained from (ffcv / wds)
    cpu_threads: int = 0                        # torch's CPU threads it trained with (0: not recorded)
    # its last epoch's val top-1 (None: not validated, mid-epoch, or from before the field): a
    # best.pt says what best.json should hold when the metrics row is gone (trainer._check_best)
    top1_val: float | None = None
    format_version: int = CHECKPOINT_VERSION  # as read (0 = legacy dict); written: the current
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)   # unknown keys, kept

    # -- derived ------------------------------------------------------------------------------
    @property
    def dataset_fingerprint(self) -> str | None:
        return self.identity.get("dataset_fingerprint")

    @property
    def mask_hash(self) -> str | None:
        return self.identity.get("mask_hash")

    @property
    def recipe_fingerprint(self) -> str | None:
        return self.identity.get("recipe_fingerprint")

    @property
    def eval_resolution(self) -> int | None:
        """The recipe's ``eval.resolution`` (what scoring feeds the model by default); None when
        the checkpoint records no recipe."""
        res = self.recipe.get("eval", {}).get("resolution")
        return None if res is None else int(res)

    def training_recipe(self, source: str = "checkpoint"):
        """The :class:`~.recipe.Recipe` the model was trained with (validated; named
        ``recipe_name``); the defaults for a checkpoint that records no recipe."""
        from .recipe import Recipe

        recipe = Recipe.from_dict(dict(self.recipe), f"{source} recipe")
        recipe.name = self.recipe_name
        return recipe

    def unfinished(self) -> str | None:
        """Where the run stood, when this is a run's latest state before its recipe's last
        epoch ("after 3 of 16 epochs": epochs done, as the resume line counts them; "at step 40
        of epoch 4 of 16": 1-based, as the progress bars); None for a finished run, a
        checkpoint without a recipe, and imported weights (which have no epochs)."""
        epochs = self.recipe.get("train", {}).get("epochs")
        if epochs is None or "brought_weights" in self.extra:
            return None
        if self.step:
            return f"at step {self.step} of epoch {self.epoch + 1} of {int(epochs)}"
        return f"after {self.epoch} of {int(epochs)} epochs" if self.epoch < int(epochs) else None

    # -- the dict form ----------------------------------------------------------------------------
    _DERIVED = ("dataset_fingerprint", "mask_hash")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d.update({k: getattr(self, k) for k in self._DERIVED})  # top-level copies, as always
        d["format_version"] = CHECKPOINT_VERSION
        if not self.step:  # an end-of-epoch checkpoint: format 1, readable by older releases
            for k in MID_EPOCH_KEYS:
                d.pop(k)
            d["format_version"] = EPOCH_END_VERSION
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "Checkpoint":
        if not isinstance(d, dict) or "model" not in d or "identity" not in d:
            what = ("a finetune run's state (finetune_state.pt), not a source model: pass the "
                    "checkpoint.pt of the `dp4tl train` run it finetuned (or that run's "
                    "source_checkpoint.pt)" if isinstance(d, dict) and "net" in d and "identity" in d
                    else "not an ffcv-dp4tl checkpoint (no model/identity entries): pass the "
                    "checkpoint.pt a `dp4tl train` run wrote")
            raise DP4TLError(f"{source} is {what}")
        version = int(d.get("format_version", 0))
        if version > CHECKPOINT_VERSION:
            raise DP4TLError(f"{source} has checkpoint format {version}; this ffcv-dp4tl reads up "
                             f"to {CHECKPOINT_VERSION}: upgrade ffcv-dp4tl")
        for key in ("arch", "num_classes"):
            if key not in d:
                raise DP4TLError(f"{source} lacks {key!r}; it was not written by `dp4tl train`")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in names}
        identity = dict(d["identity"])
        for k in cls._DERIVED:  # format 0 kept them top-level too; identity wins
            if k in d:
                identity.setdefault(k, d[k])
        kw.update(identity=identity, format_version=version,
                  extra={k: v for k, v in d.items() if k not in names and k not in cls._DERIVED})
        if not _mid_epoch_fields_ok(kw):
            raise DP4TLError(f"{source}: its mid-epoch position (step {kw.get('step')!r}, progress "
                             f"{str(kw.get('progress'))[:60]}, rank_rng) is damaged; delete it "
                             "and rerun what wrote it")
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        """Write atomically (a file named checkpoint.pt is always complete), as a plain dict."""
        save_checkpoint(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "Checkpoint":
        return cls.from_dict(_load_dict(path, map_location), str(path))


def save_checkpoint(path: str | Path, state: dict[str, Any] | Checkpoint) -> None:
    """Write atomically: a file named checkpoint.pt is always complete."""
    if isinstance(state, Checkpoint):
        state = state.to_dict()
    # (what a failed write leaves: the previous checkpoint, or none yet; review)
    previous = Path(path).exists()
    kept = ("the previous checkpoint is intact: free some space and rerun to resume"
            if previous else "no checkpoint was written yet: free some space and "
            "rerun (the run starts over)")
    try:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(state, tmp)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise DP4TLError(_disk_full_line(path, previous)) from None
    except RuntimeError as e:  # torch's zip writer reports a failed write as "unexpected pos"
        if "unexpected pos" not in str(e) and "write" not in str(e).lower():
            raise
        free = free_bytes(Path(path).parent)
        if free is not None and free < _state_bytes(state) + 2**20:  # (it cannot fit: full)
            raise DP4TLError(_disk_full_line(path, previous, free)) from None
        raise DP4TLError(f"could not write the checkpoint {path} (is the disk full? "
                         f"{brief(e)}); {kept}") from None


def _disk_full_line(path: str | Path, previous: bool, free: int | None = None) -> str:
    """What a checkpoint write that met a full disk says: the free space, what is left (the
    previous checkpoint, or none) and what a rerun does; torch's own text ("[enforce fail at
    inline_container.cc:672] . unexpected pos 576 vs 534") says nothing to a user (audit)."""
    free = free_bytes(Path(path).parent) if free is None else free
    room = "" if free is None else f" ({free / 2**20:,.{1 if free < 10 * 2**20 else 0}f} MiB free)"
    then = ("the previous checkpoint is intact; free space and rerun: it resumes" if previous
            else "no checkpoint was written yet; free space and rerun: the run starts over")
    return f"could not write the checkpoint {path}: the disk is full{room}; {then}"


def _state_bytes(obj: Any) -> int:
    """The bytes of the tensors and arrays in a checkpoint's state: about its size on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v) for v in obj)
    return 0


#: The OSErrors reading a checkpoint that are about its bytes: torch's zip reader raises a bare
#: EINVAL (no file name) when it seeks before the start of a truncated file, and an OSError with
#: no errno is torch's own. These say the file is damaged, like any other unreadable checkpoint;
#: every other OSError is about the path or the machine (no permission, too many open files, a
#: failing disk or network mount: a good checkpoint must not be called damaged, the advice is
#: to delete it) and keeps :func:`~ffcv_dp4tl.fsutil.os_error_line`'s message, naming the path.
_ABOUT_THE_BYTES = frozenset({errno.EINVAL, None})


def _numpy_globals() -> list[Any]:
    """What a dp4tl checkpoint holds besides tensors and plain types: numpy arrays (its RNG
    states). Allowed to ``weights_only`` loading, which still runs no code from the file: numpy's
    array reconstruction only builds arrays (an object array's items would need more globals,
    which stay refused). Its two functions under both of numpy's module names: a file pickled
    under numpy 1.x names ``numpy.core.multiarray``, one under numpy 2 ``numpy._core.multiarray``
    (a run saved before a numpy upgrade was refused as if it held code; review)."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    named = [(getattr(core.multiarray, f), f"numpy.{mod}.multiarray.{f}")
             for f in ("_reconstruct", "scalar") for mod in ("core", "_core")]
    return [*named, np.ndarray, np.dtype, *dtypes]


def torch_load_safe(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` that runs no code from the file: ``weights_only=True``, numpy arrays
    allowed. The one way this package reads a ``.pt`` file (checkpoints, finetune states,
    brought weights): they come from shared folders and other people's runs, and unpickling an
    arbitrary object is running its author's code."""
    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_failure(e: Exception) -> str:
    """Why ``torch.load`` refused a file, in one short line: under weights_only, the unpickler's
    own reason (``Unsupported operand 110`` for a text file; ``unsupported GLOBAL posix.system
    whose module posix is blocked``), not the first line of torch's paragraph on its PyTorch 2.6
    default, which the message quoted (audit)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    reason = (re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
              or re.search(r"Trying to load (unsupported GLOBAL [^\n]+)", text))
    lines = [reason.group(1)] if reason else text.strip().splitlines()
    line = re.sub(r" was not an allowed global by default.*", "", lines[0]) if lines else ""
    return line.strip().rstrip(".")[:160]


def _named_global(e: Exception) -> str | None:
    """The class or function a file names (``GLOBAL posix.system``: what a pickle runs code
    through) when ``weights_only`` refused it, else None (a damaged file, a bad opcode)."""
    found = re.search(r"GLOBAL (\S+)", load_failure(e))
    return found.group(1) if found and isinstance(e, pickle.UnpicklingError) else None


def _refused_objects(path: Path, name: str, what: str) -> DP4TLError:
    return DP4TLError(f"{path} holds Python objects a {what} never holds (it names {name}): not "
                      "loaded, since unpickling them would run code from the file; use a file "
                      "dp4tl wrote, or bring weights as a plain state dict (torch.save(model."
                      "state_dict(), PATH)) by --source-weights, --surrogate-weights or "
                      "--target-weights")


def _load_dict(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    path = Path(path)
    if not path.exists():
        raise DP4TLError(f"checkpoint not found: {path}")
    if path.is_dir():  # (torch's IsADirectoryError read as "a file is where a folder should be")
        inside = path / "checkpoint.pt"
        raise DP4TLError(f"checkpoint {path} is a directory, but a checkpoint is a file: "
                         + (f"pass {inside}" if inside.is_file() else
                            f"pass the checkpoint file in it (`dp4tl train --out {path}` writes "
                            f"{inside})"))
    try:
        return torch_load_safe(path, map_location)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a user-facing error
        if (name := _named_global(e)) is not None:
            raise _refused_objects(path, name, "checkpoint") from None
        if isinstance(e, OSError) and e.errno not in _ABOUT_THE_BYTES:
            if not e.filename:  # (torch's own OSErrors name no file)
                e.filename = str(path)
            raise DP4TLError(os_error_line(e, reading=True)) from None
        # anything else is about the bytes: torch's zip reader raises a bare EINVAL ("Invalid
        # argument", no file name) when it seeks before the start of a truncated file
        said = e.strerror if isinstance(e, OSError) and e.strerror else brief(e)
        why = f"{type(e).__name__}: {said}" if said else type(e).__name__
        raise DP4TLError(f"{path} is not a readable checkpoint ({why}); it is "
                         "damaged (truncated?) or not a checkpoint: delete it and rerun what wrote "
                         "it (a pipeline stage: delete its stage folder and rerun)") from None


def _differences(found: Any, expected: Any, name: str) -> list[str]:
    """``name: checkpoint has A, this run has B`` per differing field; a dict field (e.g. the
    source's identity) names its differing entries (``source_identity.arch``), each value cut
    to 16 characters (hashes) — a whole dict cut there named nothing."""
    if isinstance(found, dict) and isinstance(expected, dict):
        return [d for k in sorted(set(found) | set(expected), key=str)
                for d in _differences(found.get(k), expected.get(k), f"{name}.{k}")]
    if found == expected:
        return []
    return [f"{name}: checkpoint has {str(found)[:16]}, this run has {str(expected)[:16]}"]


#: how many differing recipe keys a refusal shows ("and N more" for the rest)
RECIPE_KEYS_SHOWN = 4


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"num_workers": 2}}`` → ``{"data.num_workers": 2}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _recipe_differences(found_recipe: Any, recipe: Any, fingerprint: Any) -> str:
    """The recipe keys a refused resume's recipe fingerprint covers that differ, with both
    values (``data.num_workers: checkpoint 2, this run 1; …``), at most
    :data:`RECIPE_KEYS_SHOWN` then "and N more"; "" when they cannot be told: the checkpoint
    records no recipe (older or imported ones), ``fingerprint`` (this run's) is neither of
    ``recipe``'s, or no key differs (a recipe written by another release's ``to_dict``).

    ``found_recipe`` is the checkpoint's ``Recipe.to_dict()``, ``recipe`` this run's
    :class:`~.recipe.Recipe`. Only what the fingerprint hashes is compared
    (:func:`~.recipe.fingerprinted`); a key ``to_dict`` left out is at its default."""
    if not isinstance(found_recipe, dict) or not found_recipe or recipe is None:
        return ""
    try:
        from .recipe import NOT_IN_TRAINING, Recipe, fingerprinted

        if fingerprint == recipe.training_fingerprint():
            dropped = NOT_IN_TRAINING
        elif fingerprint == recipe.fingerprint():
            dropped = ()
        else:
            return ""
        theirs = _flat(fingerprinted(found_recipe, dropped))
        mine = _flat(fingerprinted(recipe.to_dict(), dropped))
        defaults = _flat(dataclasses.asdict(Recipe()))
        unset = object()
        lines = []
        for key in sorted(set(theirs) | set(mine)):
            a = theirs.get(key, defaults.get(key, unset))
            b = mine.get(key, defaults.get(key, unset))
            if a != b:
                lines.append(f"{key}: checkpoint {_shown(a, unset)}, this run {_shown(b, unset)}")
    except Exception:  # noqa: BLE001 - only a refusal's detail: the refusal itself still stands
        return ""
    if not lines:
        return ""
    more = len(lines) - RECIPE_KEYS_SHOWN
    if more > 0:
        lines = lines[:RECIPE_KEYS_SHOWN] + [f"and {more} more"]
    return "; ".join(lines)


def _shown(value: Any, unset: object) -> str:
    if value is unset:
        return "unset"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _hashes_today_to(found_recipe: Any, fingerprint: str) -> bool:
    """The recipe a checkpoint records (``Recipe.to_dict()``) has ``fingerprint`` under
    today's rule: the recorded hash differs only because the rule changed since it was
    written (2026-12-05: ``data.num_workers`` hashed as its default), so the run is this one.
    A run begun before was refused with two hashes and no key that differs (review)."""
    if not isinstance(found_recipe, dict) or not found_recipe:
        return False
    try:
        from .recipe import Recipe

        recorded = Recipe.from_dict(found_recipe, "the checkpoint's recipe")
        return fingerprint in (recorded.training_fingerprint(), recorded.fingerprint())
    except Exception:  # noqa: BLE001 - a recipe this release cannot read: the hashes decide
        return False


def check_identity(path: Path, found: dict[str, Any], expected: dict[str, Any],
                   what: str = "run", hint: str = " (or pass --no-resume)",
                   added_later: tuple[str, ...] = (), *, found_recipe: Any = None,
                   recipe: Any = None) -> None:
    """Raise a DP4TLError listing every identity field of ``expected`` that differs.
    ``added_later``: fields a run recorded before they existed lacks; not compared then.
    ``found_recipe`` (the recipe the checkpoint records, ``Recipe.to_dict()``) and ``recipe``
    (this run's :class:`~.recipe.Recipe`): when both are given and the recipe fingerprints
    differ, the refusal names the recipe keys that differ, with both values (last: its list
    is ";"-separated too)."""
    diffs = [d for k in expected if not (k in added_later and k not in found)
             for d in _differences(found.get(k), expected[k], k)]
    if any(d.startswith("recipe_fingerprint:") for d in diffs) and _hashes_today_to(
            found_recipe, expected["recipe_fingerprint"]):
        diffs = [d for d in diffs if not d.startswith("recipe_fingerprint:")]
    if any(d.startswith("recipe_fingerprint:") for d in diffs):
        keys = _recipe_differences(found_recipe, recipe, expected["recipe_fingerprint"])
        if keys:
            diffs.append(f"recipe keys that differ: {keys}")
    if diffs:
        raise DP4TLError(
            f"{path} belongs to a different {what} ({'; '.join(diffs)}). Use another --out "
            f"directory, or delete {Path(path).name} to start over{hint}.")


def resume_from(state_cls, path: Path, identity: dict[str, Any], *, resume: bool = True,
                what: str = "run", hint: str = " (or pass --no-resume)",
                added_later: tuple[str, ...] = (), recipe: Any = None):
    """The one resume rule of every resumable run (training: :class:`Checkpoint`, finetuning:
    :class:`FinetuneState`): ``None`` (start at epoch 0) when ``resume`` is off or ``path`` does
    not exist; else the state read from ``path`` (``state_cls.load``), after checking that it
    belongs to this run — every field of ``identity`` equal, or a one-line DP4TLError naming
    the fields that differ. The caller continues at ``state.epoch`` (completed epochs).
    ``recipe``: this run's :class:`~.recipe.Recipe`; given, a refusal for a changed recipe names
    the keys that differ from the recipe the state records (a :class:`Checkpoint`'s)."""
    path = Path(path)
    if not resume or not path.exists():
        return None
    state = state_cls.load(path)
    check_identity(path, state.identity, identity, what, hint, added_later,
                   found_recipe=getattr(state, "recipe", None), recipe=recipe)
    return state


#: 0: the unversioned dicts written before :class:`FinetuneState` existed; 1: + format_version
FINETUNE_STATE_VERSION = 1


@dataclasses.dataclass
class FinetuneState:
    """``finetune_state.pt``: what an interrupted LP/FF run continues from, written atomically
    after every epoch. ``net``: the trained weights (LP: the head; FF: the whole model);
    ``generator``: LP's feature-shuffling generator state (None when not used); ``rows``: the
    metric rows so far; ``seconds``: wall time of the earlier segments; ``identity``: what the
    run belongs to (mode, recipe and source fingerprints, target, format); ``recipe``: the
    recipe it runs (``Recipe.to_dict()``; empty in states from before it was recorded), so a
    refused resume names the keys that differ. On disk a plain dict (``to_dict``), like
    :class:`Checkpoint`; an older reader keeps the ``recipe`` entry as an unknown key."""
    identity: dict[str, Any]
    epoch: int                                  # completed epochs
    net: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    generator: Any = None
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FINETUNE_STATE_VERSION  # as read (0 = legacy dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)   # unknown keys, kept

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["format_version"] = FINETUNE_STATE_VERSION
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>",
                  fix: str = "delete it to start over") -> "FinetuneState":
        """``fix``: what to do with a damaged file (the default suits an unfinished run; a
        finished run's state holds its weights: evaluation passes its own advice)."""
        required = ("identity", "epoch", "net", "optimizer", "scaler", "rng")
        missing = [k for k in required if not isinstance(d, dict) or k not in d]
        if missing:
            raise DP4TLError(f"{source} is not a finetune state (no {missing[0]!r} entry); {fix}")
        version = int(d.get("format_version", 0))
        if version > FINETUNE_STATE_VERSION:
            raise DP4TLError(f"{source} has finetune state format {version}; this ffcv-dp4tl "
                             f"reads up to {FINETUNE_STATE_VERSION}: upgrade ffcv-dp4tl")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in names}
        kw.update(format_version=version, epoch=int(d["epoch"]), rows=list(d.get("rows") or []),
                  seconds=float(d.get("seconds", 0.0)),
                  extra={k: v for k, v in d.items() if k not in names})
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, fix: str = "delete it to start over") -> "FinetuneState":
        path = Path(path)
        try:
            d = torch_load_safe(path)
        except Exception as e:  # noqa: BLE001 - a damaged state file is a user-facing error
            if (name := _named_global(e)) is not None:
                raise _refused_objects(path, name, "finetune state") from None
            raise DP4TLError(f"{path} is not a readable finetune state ({type(e).__name__}: "
                             f"{load_failure(e)}); {fix}") from None
        return cls.from_dict(d, str(path), fix)
