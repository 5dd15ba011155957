"""Bring your own weights: a torchvision or timm state dict → a checkpoint the pipeline can use.

The paper's surrogate is a ResNet-18 *pretrained on ImageNet*, and many users already hold such
weights (torchvision's ``resnet18-f37072fd.pth``, a timm checkpoint, their own run). Instead of
training a surrogate (or a source model for LP/FF), :func:`import_weights` reads the file, maps
its key names onto the registered architecture (:mod:`.models`), loads them strictly, checks the
classifier against the source dataset's classes and writes an ordinary :class:`Checkpoint`, so
scoring and finetuning load it like one of our own runs. Nothing is downloaded: the file must be
on disk.

* **Files**: a plain state dict, or a dict holding one under ``state_dict`` / ``model`` /
  ``model_state_dict`` / ``module`` (timm's and most training scripts' checkpoints), optionally
  with ``classes`` (the class names in output order). ``module.`` / ``_orig_mod.`` / ``model.``
  prefixes (DDP, torch.compile, wrappers) are stripped. A ``dp4tl train`` checkpoint.pt is one
  of those (its ``model`` and ``classes``). Read with ``weights_only=True`` (numpy arrays
  allowed, for a checkpoint's RNG states): no code from the file runs.
* **Key names**: ResNets use the same names in torchvision and timm. timm's ViT names
  (``blocks.N.attn.qkv``, ``patch_embed.proj``, ``cls_token``, ...) are mapped to torchvision's
  (:func:`timm_vit_to_torchvision`). BlurPool is detected from the keys (``….conv.weight`` on the
  strided convs), so ffcv-imagenet's BlurPool ResNets load too.
* **Classes**: the head must have one output per source class, in the source manifest's order.
  With ``classes`` in the file they are compared name by name; without, the file is taken to
  follow torchvision's ImageNet convention (outputs indexed by the *sorted* wnids), so the
  manifest's class list must be sorted (the imagenet layout's is). Any mismatch is a one-line
  :class:`DP4TLError` before any work.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import DP4TLError
from ..fsutil import file_sha256
from .checkpoint import Checkpoint, load_failure, torch_load_safe
from .models import create_model, get_head

_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net")
_PREFIXES = ("module.", "_orig_mod.", "model.")




def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """(state dict with wrapper prefixes stripped, class names if the file lists them)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DP4TLError(f"weights file not found: {path}")
    try:
        obj = torch_load_safe(path)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a user-facing error
        why = load_failure(e)
        raise DP4TLError(f"{path} is not a state dict torch can read safely (weights_only): "
                         f"{type(e).__name__}{f': {why}' if why else ''}; save it with torch.save(model.state_dict(), "
                         "PATH)") from None
    classes = None
    if isinstance(obj, dict) and not _is_state_dict(obj):
        classes = obj.get("classes")
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict) and _is_state_dict(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not _is_state_dict(obj):
        raise DP4TLError(f"{path} holds no state dict (a dict of tensors, possibly under "
                         f"{'/'.join(_WRAPPERS)})")
    sd = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if classes is not None and (not isinstance(classes, (list, tuple))
                                or not all(isinstance(c, str) for c in classes)):
        raise DP4TLError(f"{path}: 'classes' must be a list of class names")
    return sd, None if classes is None else list(classes)


#: files check_weights_file read: path -> (mtime, size) when read (one entry a file, however
#: often it changes: a long-lived process keeps no entry per version of it)
_CHECKED: dict[str, tuple[int, int]] = {}


def check_weights_file(path: str | Path, option: str) -> None:
    """``path``, given as ``option`` (``--surrogate-weights``), is a file holding a state dict
    (:func:`read_state_dict`, the stage's reader): checked before any work, so a folder or a
    file torch cannot read is one line naming the option, not a refusal inside the stage that
    left its folder half made (audit). A file read once (same path, time and size) is not read
    again: a bench checks every run of its plan."""
    p = Path(path).expanduser()
    fix = "give the weights file, a state dict saved with torch.save(model.state_dict(), PATH)"
    if p.is_dir():
        raise DP4TLError(f"{option} {path} is a folder; {fix}")
    if not p.is_file():
        raise DP4TLError(f"{option} {path}: {option[2:].replace('-', ' ')} not found (no such "
                         f"file); {fix}")
    st = p.stat()
    key, state = str(p.resolve()), (st.st_mtime_ns, st.st_size)
    if _CHECKED.get(key) == state:
        return
    try:
        read_state_dict(p)
    except DP4TLError as e:
        raise DP4TLError(f"{option}: {e}") from None
    _CHECKED[key] = state


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


_VIT_BLOCK = {
    "norm1": "ln_1", "norm2": "ln_2", "attn.proj": "self_attention.out_proj",
    "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.3",
}


def timm_vit_to_torchvision(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` key names → torchvision's (same tensors, same shapes)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", k)
        if m:
            i, rest = m.groups()
            pre = f"encoder.layers.encoder_layer_{i}."
            if rest == "attn.qkv.weight":
                out[pre + "self_attention.in_proj_weight"] = v
                continue
            if rest == "attn.qkv.bias":
                out[pre + "self_attention.in_proj_bias"] = v
                continue
            name, _, leaf = rest.rpartition(".")
            out[pre + _VIT_BLOCK.get(name, name) + "." + leaf] = v
            continue
        k2 = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding",
              "norm.weight": "encoder.ln.weight", "norm.bias": "encoder.ln.bias",
              "head.weight": "heads.head.weight", "head.bias": "heads.head.bias"}.get(k)
        if k2 is None and k.startswith("patch_embed.proj."):
            k2 = "conv_proj." + k.rsplit(".", 1)[1]
        out[k2 or k] = v
    return out


def to_registry_names(sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Map a state dict's key names onto the registered model ``arch`` (timm → torchvision)."""
    if arch.startswith("vit") and any(k.startswith("blocks.") for k in sd):
        return timm_vit_to_torchvision(sd)
    return sd


#: what weights that do not fit are told, where the recipe's ``[model]`` section chose the model
FIT_FIX = "pass weights of that architecture (the recipe's [model] section sets it)"


def build_from_state_dict(sd: dict[str, torch.Tensor], arch: str, model_kwargs: dict[str, Any],
                          what: str = "weights", fix: str = FIT_FIX
                          ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The registered ``arch`` (knobs ``model_kwargs``; BlurPool detected from the keys) with
    ``sd`` loaded strictly; the head's size is read from ``sd``. Returns (model, kwargs used).
    ``fix``: what weights that do not fit are told (the caller knows what chose ``arch``)."""
    sd = to_registry_names(sd, arch)
    head_w = next((sd[k] for k in ("fc.weight", "heads.head.weight") if k in sd), None)
    if head_w is None or head_w.ndim != 2:
        raise DP4TLError(f"{what}: no classifier weight (fc.weight / head.weight) found; is it "
                         f"a {arch} state dict?")
    kw = dict(model_kwargs)
    tries = [kw]
    if "blurpool" in kw:  # ffcv-imagenet's ResNets wrap strided convs (….conv.weight)
        tries.append({**kw, "blurpool": not kw["blurpool"]})
    first_error = ""
    for cand in tries:
        model = create_model(arch, int(head_w.shape[0]), **cand)
        missing, unexpected, shapes = _diff(model.state_dict(), sd)
        if not (missing or unexpected or shapes):
            model.load_state_dict(sd, strict=True)
            return model, cand
        if not first_error:
            first_error = "; ".join(x for x in (
                f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}" if missing else "",
                f"unexpected {', '.join(unexpected[:3])}{' …' if len(unexpected) > 3 else ''}"
                if unexpected else "",
                f"shape differs for {', '.join(shapes[:3])}" if shapes else "") if x)
    knobs = ", ".join(f"{k}={v}" for k, v in kw.items())
    raise DP4TLError(f"the weights in {what} do not fit {arch} ({knobs}): {first_error}; {fix}")


def _diff(have: dict[str, torch.Tensor], got: dict[str, torch.Tensor]):
    missing = [k for k in have if k not in got]
    unexpected = [k for k in got if k not in have]
    shapes = [k for k in have if k in got and tuple(have[k].shape) != tuple(got[k].shape)]
    return missing, unexpected, shapes


def check_classes(path: str | Path, num_outputs: int, file_classes: list[str] | None,
                  classes: list[str], source: str) -> None:
    """One-line DP4TLError unless the head's outputs are ``classes`` in order (see module doc)."""
    if num_outputs != len(classes):
        raise DP4TLError(f"{path} predicts {num_outputs} classes but the source {source} has "
                         f"{len(classes)}: bring weights trained on this source's classes")
    if file_classes is not None:
        if len(file_classes) != len(classes):
            raise DP4TLError(f"{path} lists {len(file_classes)} class names for {num_outputs} "
                             "outputs")
        bad = next((i for i, (a, b) in enumerate(zip(file_classes, classes)) if a != b), None)
        if bad is not None:
            raise DP4TLError(f"{path}: output {bad} is class {file_classes[bad]!r} but the source "
                             f"{source} has {classes[bad]!r} there: the class order differs")
        return
    if list(classes) != sorted(classes):
        raise DP4TLError(f"{path} lists no class names, so its outputs are taken to follow "
                         f"torchvision's sorted-wnid order, but the classes of {source} are not "
                         "sorted; save the weights as {'state_dict': ..., 'classes': [...]} in "
                         "output order")


def _holds(out: str | Path, ckpt: Checkpoint) -> bool:
    """``out`` is already this import of the same weights file for the same recipe and classes
    (its identity, recipe, classes and provenance equal ``ckpt``'s): kept as it is. A new save
    of the same tensors has other bytes, so a pipeline's brought-weights stage run again (its
    DONE.json deleted) changed its result digest and reran every finetuning from it. An
    unreadable file is not kept."""
    out = Path(out)
    if not out.is_file():
        return False
    try:
        old = Checkpoint.load(out)
    except (DP4TLError, OSError):
        return False
    return all(getattr(old, f) == getattr(ckpt, f) for f in
               ("arch", "num_classes", "identity", "model_kwargs", "recipe", "classes", "extra"))


def _fitted(path: Path, recipe, classes: list[str] | None, source: str, fix: str):
    """(model, its kwargs, head size, the file's classes) of the weights file ``path`` fitted
    to ``recipe``'s model and checked against ``classes``: the one reading both the import
    and its check before any work use."""
    from .trainer import model_kwargs

    sd, file_classes = read_state_dict(path)
    model, kw = build_from_state_dict(sd, recipe.model.arch, model_kwargs(recipe), what=str(path),
                                      fix=fix)
    n_out = get_head(model).out_features
    if classes is not None:
        check_classes(path, n_out, file_classes, list(classes), source or "dataset")
    return model, kw, n_out, file_classes


def check_importable(path: str | Path, option: str, *, recipe, classes: list[str] | None = None,
                     source: str = "", fix: str = FIT_FIX) -> None:
    """What :func:`import_weights` would refuse of ``path`` (given as ``option``) for
    ``recipe``'s model and ``classes``, said before its stage makes a folder: refused inside
    the stage, a file of another architecture left an empty stage folder behind (docs audit)."""
    try:
        _fitted(Path(path).expanduser(), recipe, classes, source, fix)
    except DP4TLError as e:
        raise DP4TLError(f"{option}: {e}") from None


def import_weights(path: str | Path, out: str | Path, *, recipe, classes: list[str] | None = None,
                   source: str = "", dataset_fingerprint: str | None = None,
                   fix: str = FIT_FIX) -> dict[str, Any]:
    """Import ``path`` for ``recipe``'s model as ``out`` (a checkpoint.pt) and return a summary.

    ``classes``: the source's class list (the manifest's) to check the head against; None skips
    the check (finetuning replaces the head anyway)."""
    path = Path(path).expanduser()
    arch = recipe.model.arch
    model, kw, n_out, file_classes = _fitted(path, recipe, classes, source, fix)
    sha = file_sha256(path)
    ckpt = Checkpoint(
        model=model.state_dict(), arch=arch, num_classes=n_out,
        identity={"arch": arch, "recipe_fingerprint": f"brought:{sha}",
                  "dataset_fingerprint": dataset_fingerprint, "mask_hash": "full",
                  "num_classes": n_out},
        model_kwargs=kw, epoch=0, recipe=recipe.to_dict(), recipe_name=recipe.name,
        classes=list(classes) if classes is not None else list(file_classes or []),
        extra={"brought_weights": str(path), "weights_sha256": sha})
    if not _holds(out, ckpt):
        ckpt.save(out)
    return {"brought": True, "weights": str(path), "weights_sha256": sha, "arch": arch,
            "num_classes": n_out, "model_kwargs": kw, "checkpoint": str(out)}
