"""Rebuild the model a finished LP/FF run ended with, for evaluations after finetuning.

A finetune run directory (``dp4tl finetune --out DIR`` or a pipeline's
``runs/finetune-{lp,ff}-<key>/``) holds ``result.json`` (mode, the source checkpoint, the
target) and ``finetune_state.pt`` (the trained weights after the last epoch: LP's head, FF's
whole model). The model is the source checkpoint's architecture with a fresh
``target_classes``-way head into which those weights are loaded — the exact network whose
``test_top1`` the run reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DP4TLError
from ..fsutil import read_json
from ..training.checkpoint import FinetuneState
from ..training.finetune import RESULT_NAME, STATE_NAME, load_pretrained
from ..training.models import backbone, get_head


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

    @property
    def name(self) -> str:
        return self.run_dir.name


def _resolution(result: dict[str, Any], run_dir: Path) -> int:
    """The recorded input resolution; runs from before it was recorded: the named recipe's
    (without the run's ``--set`` overrides, which ``--resolution`` must then repeat)."""
    from ..training.recipe import load_recipe

    if result.get("resolution"):
        return int(result["resolution"])
    try:
        return int(load_recipe(result["recipe"]).finetune.resolution)
    except Exception as e:  # noqa: BLE001 - any failure: ask the user
        raise DP4TLError(f"{run_dir}: cannot read the resolution of recipe {result.get('recipe')!r} "
                         f"({type(e).__name__}); pass --resolution") from None


def load_finetuned(run_dir: str | Path, device: str | torch.device = "cpu",
                   resolution: int | None = None, target: str | Path | None = None,
                   checkpoint: str | Path | None = None) -> Finetuned:
    """The model of the finished finetune run ``run_dir`` on ``device`` (eval mode).

    ``target`` / ``checkpoint`` override the paths recorded in ``result.json`` (a moved run);
    ``resolution`` the recipe's ``finetune.resolution``."""
    run_dir = Path(run_dir)
    res_path, state_path = run_dir / RESULT_NAME, run_dir / STATE_NAME
    if not res_path.exists() or not state_path.exists():
        raise DP4TLError(f"{run_dir} is not a finished finetune run (needs {RESULT_NAME} and "
                         f"{STATE_NAME}); pass the --out of `dp4tl finetune` or a pipeline's "
                         "runs/finetune-lp-*/ or finetune-ff-*/ directory")
    result = read_json(res_path, "finetune result")
    ckpt = Path(checkpoint or result.get("checkpoint", ""))
    tgt = Path(target or result.get("target", ""))
    for what, path, flag in (("source checkpoint", ckpt, "--checkpoint"), ("target", tgt, "--target")):
        if not path.exists():
            raise DP4TLError(f"{run_dir}: the {what} {path} recorded in {RESULT_NAME} is missing; "
                             f"run from where the run was made or pass {flag}")
    dev = torch.device(device)
    model, _ = load_pretrained(ckpt, dev)
    backbone(model).reset_classifier(int(result["target_classes"]))
    state = FinetuneState.load(state_path)  # the typed contract: damaged or newer files refused
    net = get_head(model) if result["mode"] == "lp" else model
    try:
        net.load_state_dict(state.net)
    except RuntimeError as e:
        raise DP4TLError(f"{state_path} does not fit {ckpt} ({type(e).__name__}); the source "
                         "checkpoint was replaced after finetuning, rerun the finetuning") from None
    model.eval()
    return Finetuned(model=model, run_dir=run_dir, result=result, mode=result["mode"], target=tgt,
                     resolution=resolution or _resolution(result, run_dir),
                     flip_tta=bool(result.get("flip_tta", False)), fmt=str(result.get("format") or "ffcv"))
