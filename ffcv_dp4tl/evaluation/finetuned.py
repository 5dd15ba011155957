"""Rebuild the model a finished LP/FF run ended with, for evaluations after finetuning.

A finetune run directory (``dp4tl finetune --out DIR`` or a pipeline's
``runs/finetune-{lp,ff}-<key>/``) holds ``result.json`` (mode, the source checkpoint, the
target) and ``finetune_state.pt`` (the trained weights after the last epoch: LP's head, FF's
whole model). The model is the source checkpoint's architecture with the head the run trained
(a fresh ``target_classes``-way one, or the source's own for ``finetune.head = "source"``:
``result.json``'s ``head``) into which those weights are loaded — the exact network whose
``test_top1`` the run reported.

The run's ``test_top1`` is measured on its ``test_split`` under its ``test_mask`` (a VTAB-1k
selection run: the *train* split under ``val200``), and it was trained on its ``train_mask``:
:class:`Finetuned` carries both masks (loaded, checked against the target and against the
digests the run's ``finetune_state.pt`` recorded), so evaluations measure the images the run
was scored and trained on, not the whole split under the same name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..contracts import FinetuneHead, FinetuneMode, Format, TargetCrop
from ..contracts.fields import REQUIRED, typed
from ..data import AugSpec, IndexMask, load_manifest, load_mask
from ..data.transforms import NORMALIZATIONS
from ..data.sampling import check_resolution
from ..errors import DataError, DP4TLError
from ..fsutil import read_json
from ..training.checkpoint import FinetuneState
from ..training.distributed import resolve_device
from ..training.finetune import (PRECISIONS, RESULT_NAME, STATE_NAME, classifier_for,
                                 load_pretrained, mask_digest, weights_digest)
from ..training.models import get_head


@dataclass
class Finetuned:
    """A finetuned model and what its run recorded."""
    model: nn.Module
    run_dir: Path
    result: dict[str, Any]
    mode: str
    target: Path
    resolution: int
    #: the run's own evaluation used flip TTA (FF with ``eval.flip_tta``)
    flip_tta: bool
    #: the data format the run read its target from (``ffcv`` / ``wds``): evaluations load the
    #: same one by default, since the two decode paths differ by a few pixel levels and would
    #: not reproduce the run's ``test_top1`` exactly
    fmt: str = "ffcv"
    #: the autocast the run's test evaluation ran under (``fp32`` / ``bf16`` / ``fp16``; a
    #: ``result.json`` from before the field: ``fp32``): evaluations use it too
    precision: str = "fp32"
    #: the batch size of the run's test evaluation (None: from before the field); evaluations
    #: use it by default, so the device runs the same kernel shapes
    test_batch_size: int | None = None
    #: how the run read its test images (``result.json``'s ``normalize`` / ``test_crop``;
    #: absent: the defaults): evaluations read images the same way (:meth:`eval_aug`)
    normalize: str = "imagenet"
    test_crop: str = "center"
    #: the split the run's ``test_top1`` was measured on (``result.json``'s ``test_split``;
    #: ``test`` for a result from before the field, as evaluations read it then)
    test_split: str = "test"
    #: the mask over :attr:`test_split` the run was scored under (``test_mask``; VTAB-1k's
    #: ``val200``), None: the whole split. Evaluations default to it, so their clean numbers
    #: are of the run's own test images
    test_mask: IndexMask | None = None
    #: where :attr:`test_mask` was read from (as ``result.json`` names it)
    test_mask_path: Path | None = None
    #: the split the run trained on: its train mask's split (the mask records it), else
    #: ``result.json``'s ``train_split``, else ``train`` (runs from before that field)
    train_split: str = "train"
    #: the mask over :attr:`train_split` the run trained on (``train_mask``; VTAB-1k's
    #: ``train800``, ``train800val200``), None: the whole split. The flatness evaluation's
    #: "training loss" is over it
    train_mask: IndexMask | None = None
    #: where :attr:`train_mask` was read from (as ``result.json`` names it)
    train_mask_path: Path | None = None
    #: the fingerprint of the data the run was finetuned on, which :attr:`target` was checked
    #: to have; None: the run recorded none (from before the field), so it could not be checked
    target_fingerprint: str | None = None

    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype of :attr:`precision` (None: fp32)."""
        return PRECISIONS[self.precision]

    @property
    def name(self) -> str:
        return self.run_dir.name

    def eval_aug(self) -> AugSpec:
        """How the run read its test images (its crop and normalisation): evaluations read
        images this way, so a clean evaluation repeats the run's ``test_top1``."""
        return AugSpec.for_crop(self.test_crop, self.normalize)


_FIX = ("fix it, or rerun the finetuning that made this run with the same settings and output "
        f"folder (it rewrites {RESULT_NAME} from {STATE_NAME} without training again)")
_STATE_FIX = ("it holds this finished run's weights: restore it from a backup, or rerun the "
              "finetuning into a new output folder")


def _read_result(run_dir: Path) -> dict[str, Any]:
    """``result.json`` of a finished run, checked to be an object (each field is checked where
    it is read, with :func:`~ffcv_dp4tl.contracts.fields.typed`)."""
    path = run_dir / RESULT_NAME
    result = read_json(path, "finetune result", _FIX)
    if not isinstance(result, dict):
        raise DataError(f"{path} is not a finetune result (a JSON {type(result).__name__}, not an "
                        f"object); {_FIX}")
    return result


def recorded_target(run_dir: str | Path) -> Path | None:
    """The target dataset the finished finetune run ``run_dir`` recorded in ``result.json``, as
    :func:`load_finetuned` reads it; None where nothing readable is recorded (load_finetuned
    then says what is wrong). An evaluation holds that dataset's readers' lock while it reads
    it (``dp4tl evaluate``), so a rebuild of the target is refused meanwhile."""
    try:
        target = _read_result(Path(run_dir)).get("target")
    except DP4TLError:
        return None
    return Path(target) if isinstance(target, str) and target else None


def _field(result: dict[str, Any], key: str, kind: str, run_dir: Path, default: Any = REQUIRED, *,
           choices: Any = None, at_least: int | None = None):
    """``result[key]`` of ``kind`` (:func:`~ffcv_dp4tl.contracts.fields.typed`), and, when
    given, one of ``choices`` or ``>= at_least``: each a one-line error naming the field."""
    value = typed(result, key, kind, run_dir / RESULT_NAME, _FIX, default)
    if value is None:  # (absent, with a None default)
        return value
    if choices is not None and value not in choices:
        raise DataError(f"{run_dir / RESULT_NAME}: field {key!r} must be one of "
                        f"{', '.join(choices)}, got {value!r}; {_FIX}")
    if at_least is not None and value < at_least:
        raise DataError(f"{run_dir / RESULT_NAME}: field {key!r} must be >= {at_least}, got "
                        f"{value}; {_FIX}")
    return value


def _resolution(result: dict[str, Any], run_dir: Path) -> int:
    """The recorded input resolution; runs from before it was recorded: the named recipe's
    (without the run's ``--set`` overrides, which ``--resolution`` must then repeat)."""
    from ..training.recipe import load_recipe

    recorded = _field(result, "resolution", "int", run_dir, None, at_least=1)
    if recorded is not None:
        return recorded
    recipe = _field(result, "recipe", "str", run_dir, None)
    try:
        return int(load_recipe(recipe).finetune.resolution)
    except Exception as e:  # noqa: BLE001 - any failure: ask the user
        raise DP4TLError(f"{run_dir}: cannot read the resolution of recipe {recipe!r} "
                         f"({type(e).__name__}); pass --resolution") from None


def _path(result: dict[str, Any], key: str, what: str, run_dir: Path,
          given: str | Path | None) -> Path:
    """A path recorded in ``result.json`` (``given`` overrides it), which must exist."""
    path = Path(given) if given is not None else Path(_field(result, key, "str", run_dir))
    if not path.exists():
        where = ("run from the directory the finetuning ran in (the path is relative to it) or "
                 if not path.is_absolute() else "")
        raise DataError(f"{run_dir}: the {what} {path} recorded in {RESULT_NAME} (field {key!r}) "
                        f"is missing; {where}put it back at that path")
    return path


def _mask(result: dict[str, Any], key: str, run_dir: Path, target: Path, split: str | None,
          ident: dict[str, Any]) -> tuple[IndexMask | None, Path | None, str | None]:
    """The run's ``key`` mask (``train_mask`` / ``test_mask``), its path and its split (None for
    all three: the run used the whole split). Checked against ``split`` of the target (None:
    the split the mask's sidecar names, else ``train``) and against the digest the run's
    ``finetune_state.pt`` recorded, so a mask edited or replaced after finetuning is refused
    instead of silently measuring other images."""
    if _field(result, key, "str", run_dir, None) is None:
        return None, None, None
    what = key.replace("_", " ")
    path = _path(result, key, what, run_dir, None)
    try:
        mask = load_mask(path)
        split = split or mask.info.split or "train"
        info = load_manifest(target).split(split)
        mask = load_mask(path, info)
    except DataError as e:
        raise DataError(f"{run_dir}: the {what} recorded in {RESULT_NAME} cannot be used: "
                        f"{e}") from None
    digest = ident.get(key)
    if digest is not None and digest != mask_digest(mask):
        raise DataError(f"the {what} {path} is not the one {run_dir} was finetuned with (its "
                        f"indices differ from the digest in {STATE_NAME}): it was replaced after "
                        "finetuning; put the original back or rerun the finetuning")
    return mask, path, split


def _check_target(result: dict[str, Any], run_dir: Path, target: Path, classes: int,
                  ident: dict[str, Any]) -> str | None:
    """The fingerprint the run recorded of its target (``result.json``'s
    ``target_fingerprint``, else the one its ``finetune_state.pt`` recorded), checked to be
    ``target``'s: a ``target`` edited or pointed at another built dataset would be evaluated
    with a model trained on other data (its classes, its images), with nothing to say so.
    None: the run recorded none (older runs): then only the class count is checked (labels
    beyond the model's outputs would fail in the middle of an evaluation)."""
    recorded = _field(result, "target_fingerprint", "str", run_dir, None)
    if recorded is None and isinstance(ident.get("target_fingerprint"), str):
        recorded = ident["target_fingerprint"]
    try:
        manifest = load_manifest(target)
    except DataError as e:
        raise DataError(f"{run_dir}: the target recorded in {RESULT_NAME} (field 'target') cannot "
                        f"be used: {e}") from None
    fix = (f"point field 'target' back at the target it was trained on, or rerun the finetuning "
           f"on {target}")
    if recorded is not None and manifest.fingerprint != recorded:
        raise DataError(f"{run_dir / RESULT_NAME}: the target {target} (fingerprint "
                        f"{manifest.fingerprint[:12]}…) is not the data this run was finetuned on "
                        f"(fingerprint {recorded[:12]}…, field 'target_fingerprint'); {fix}")
    if recorded is None and manifest.num_classes != classes:
        raise DataError(f"{run_dir / RESULT_NAME}: the target {target} has {manifest.num_classes} "
                        f"classes, not the {classes} this run was finetuned on (field "
                        f"'target_classes'); {fix}")
    return recorded


def _source_differs(ident: dict[str, Any], source) -> str | None:
    """What of the source checkpoint differs from the one a finetune run recorded (None: it is
    the same): its identity (recipe, arch, data, mask), its epoch (another checkpoint of the
    same run) or its weights (a source trained again: same identity, other weights). Fields a
    run from before them lacks are not compared."""
    if "source_identity" in ident and ident["source_identity"] != dict(source.identity):
        return "identity"
    if "source_epoch" in ident and ident["source_epoch"] != source.epoch:
        return f"epoch ({source.epoch}, not {ident['source_epoch']})"
    if "source_weights" in ident and ident["source_weights"] != weights_digest(source.model):
        return "weights digest"
    return None


def load_finetuned(run_dir: str | Path, device: str | torch.device = "cpu",
                   resolution: int | None = None, target: str | Path | None = None,
                   checkpoint: str | Path | None = None) -> Finetuned:
    """The model of the finished finetune run ``run_dir`` on ``device`` (eval mode).

    ``target`` / ``checkpoint`` override the paths recorded in ``result.json`` (a moved run);
    ``resolution`` the recipe's ``finetune.resolution``. Every field of ``result.json`` is
    checked before the checkpoint is loaded; any problem is a one-line :class:`DP4TLError`.
    The run's test split and masks are read too (:func:`_mask`): a missing or replaced mask file
    is refused here, before any evaluation starts, as is a target that is not the data the run
    was finetuned on (:func:`_check_target`)."""
    run_dir = Path(run_dir)
    res_path, state_path = run_dir / RESULT_NAME, run_dir / STATE_NAME
    if resolution is not None:
        resolution = check_resolution(resolution, "--resolution")
    if not res_path.exists() or not state_path.exists():
        raise DP4TLError(f"{run_dir} is not a finished finetune run (needs {RESULT_NAME} and "
                         f"{STATE_NAME}); pass the --out of `dp4tl finetune` or a pipeline's "
                         "runs/finetune-lp-*/ or finetune-ff-*/ directory")
    result = _read_result(run_dir)
    mode = _field(result, "mode", "str", run_dir, choices=FinetuneMode.values())
    classes = _field(result, "target_classes", "count", run_dir, at_least=1)
    fmt = _field(result, "format", "str", run_dir, "ffcv", choices=Format.values())
    flip_tta = _field(result, "flip_tta", "bool", run_dir, False)
    precision = _field(result, "test_precision", "str", run_dir, "fp32", choices=PRECISIONS)
    test_batch_size = _field(result, "test_batch_size", "int", run_dir, None, at_least=1)
    test_split = _field(result, "test_split", "str", run_dir, "test")
    normalize = _field(result, "normalize", "str", run_dir, "imagenet",
                       choices=tuple(NORMALIZATIONS))
    test_crop = _field(result, "test_crop", "str", run_dir, "center", choices=TargetCrop.values())
    res = resolution if resolution is not None else _resolution(result, run_dir)
    ckpt = _path(result, "checkpoint", "source checkpoint", run_dir, checkpoint)
    tgt = _path(result, "target", "target", run_dir, target)
    try:  # the typed contract: damaged or newer files refused, with a finished run's advice
        state = FinetuneState.load(state_path, fix=_STATE_FIX)
    except (TypeError, ValueError) as e:
        raise DataError(f"{state_path} is not a readable finetune state ({type(e).__name__}); "
                        f"{_STATE_FIX}") from None
    ident = state.identity if isinstance(state.identity, dict) else {}
    # what the tables copy or follow: the reported top-1 (corruptions.json's reported_test_top1)
    # and the split the run was tested on, which the state's recipe records too (an edited
    # test_split was evaluated on the train split, the difference blamed on "other kernels")
    _field(result, "test_top1", "fraction", run_dir, None)
    data = state.recipe.get("data") if isinstance(state.recipe, dict) else None
    split_then = data.get("test_split") if isinstance(data, dict) else None
    # (a result.json from before test_split was recorded reads the whole test split, as
    # evaluations did then, whatever the recipe said: only a recorded split is compared)
    if "test_split" in result and isinstance(split_then, str) and split_then != test_split:
        raise DataError(f"{res_path}: field 'test_split' is {test_split!r} but the run was tested "
                        f"on {split_then!r} (its recipe in {state_path}); {_FIX}")
    if ident.get("mode", mode) != mode:
        raise DataError(f"{res_path}: field 'mode' is {mode!r} but {state_path} holds the weights "
                        f"of a {ident['mode']!r} run; {_FIX}")
    target_fingerprint = _check_target(result, run_dir, tgt, classes, ident)
    test_mask, test_mask_path, _ = _mask(result, "test_mask", run_dir, tgt, test_split, ident)
    recorded_train_split = _field(result, "train_split", "str", run_dir, None)
    train_mask, train_mask_path, train_split = _mask(result, "train_mask", run_dir, tgt,
                                                     recorded_train_split, ident)
    dev = resolve_device(device)  # the one device rule (auto, cpu, cuda, cuda:N)
    model, source = load_pretrained(ckpt, dev)
    differs = _source_differs(ident, source)
    if differs:
        raise DataError(f"the source checkpoint {ckpt} is not the one {run_dir} was finetuned "
                        f"from (its {differs} differs from the one in {STATE_NAME}): it was "
                        "replaced after finetuning; put the original back or rerun the finetuning")
    head = _field(result, "head", "str", run_dir, FinetuneHead.new.value,
                  choices=FinetuneHead.values())
    classifier_for(model, source, head, classes, ckpt)  # the head the run trained (its rule)
    net = get_head(model) if mode == "lp" else model
    try:
        net.load_state_dict(state.net)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise DataError(f"{state_path} does not fit the {mode} model with {classes} classes on "
                        f"{ckpt} that {RESULT_NAME} describes ({type(e).__name__}); restore the "
                        f"run's original {RESULT_NAME} (fields 'mode', 'target_classes', "
                        "'checkpoint') or rerun the finetuning") from None
    model.eval()
    return Finetuned(model=model, run_dir=run_dir, result=result, mode=mode, target=tgt,
                     resolution=res, flip_tta=bool(flip_tta), fmt=fmt, precision=precision,
                     test_batch_size=test_batch_size, test_split=test_split,
                     normalize=normalize, test_crop=test_crop,
                     test_mask=test_mask, test_mask_path=test_mask_path,
                     train_split=train_split or recorded_train_split or "train",
                     train_mask=train_mask,
                     train_mask_path=train_mask_path, target_fingerprint=target_fingerprint)
