"""Bring your own weights: torchvision/timm state dicts → checkpoints, checked against classes."""
from __future__ import annotations

import pytest
import torch

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.training.checkpoint import Checkpoint
from ffcv_dp4tl.training.finetune import load_pretrained
from ffcv_dp4tl.training.models import VisionTransformer, create_model
from ffcv_dp4tl.training.recipe import load_recipe
from ffcv_dp4tl.training.weights import (import_weights, read_state_dict,
                                         timm_vit_to_torchvision)

CLASSES = [f"n0{i:07d}" for i in range(5)]  # sorted wnids, as torchvision's ImageNet models
TINY = ["model.width=8", "model.small_input=true", "model.blurpool=false"]


def _model(n=5, **kw):
    torch.manual_seed(0)
    return create_model("resnet18", n, width=8, small_input=True, **kw)


def _recipe(*extra):
    return load_recipe("resnet18_surrogate", [*TINY, *extra])


@pytest.mark.parametrize("style", ["torchvision", "timm"])
def test_both_naming_styles_import_and_reload_identically(tmp_path, style):
    m = _model()
    sd = m.state_dict()
    path = tmp_path / f"{style}.pth"
    if style == "torchvision":
        torch.save(sd, path)  # torch.save(model.state_dict())
    else:  # timm / training-script checkpoint: wrapped, DDP prefix, extra entries
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 90,
                    "arch": "resnet18"}, path)
    info = import_weights(path, tmp_path / "ckpt.pt", recipe=_recipe(), classes=CLASSES)
    assert info["brought"] and info["num_classes"] == 5
    model, ckpt = load_pretrained(tmp_path / "ckpt.pt", torch.device("cpu"))
    assert ckpt.extra["brought_weights"] == str(path) and ckpt.classes == CLASSES
    x = torch.randn(2, 3, 16, 16)
    m.eval(), model.eval()
    torch.testing.assert_close(model(x), m(x))


def test_blurpool_weights_are_detected(tmp_path):
    m = _model(blurpool=True)
    torch.save(m.state_dict(), tmp_path / "bp.pth")
    info = import_weights(tmp_path / "bp.pth", tmp_path / "c.pt", recipe=_recipe(), classes=CLASSES)
    assert info["model_kwargs"]["blurpool"] is True


def test_class_count_and_order_mismatches_are_one_line_errors(tmp_path):
    torch.save(_model(4).state_dict(), tmp_path / "four.pth")
    with pytest.raises(DP4TLError, match="predicts 4 classes but the source .* has 5") as e:
        import_weights(tmp_path / "four.pth", tmp_path / "c.pt", recipe=_recipe(), classes=CLASSES)
    assert "\n" not in str(e.value)
    named = tmp_path / "named.pth"
    torch.save({"state_dict": _model().state_dict(), "classes": CLASSES[::-1]}, named)
    with pytest.raises(DP4TLError, match="output 0 is class 'n00000004'.*class order differs"):
        import_weights(named, tmp_path / "c.pt", recipe=_recipe(), classes=CLASSES)
    torch.save({"state_dict": _model().state_dict(), "classes": CLASSES}, named)
    import_weights(named, tmp_path / "c.pt", recipe=_recipe(), classes=CLASSES)  # same order: ok
    torch.save(_model().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(DP4TLError, match="sorted-wnid order.*not sorted"):
        import_weights(tmp_path / "plain.pth", tmp_path / "c.pt", recipe=_recipe(),
                       classes=["dog", "cat", "eel", "fox", "gnu"])
    assert not (tmp_path / "c.pt").exists() or Checkpoint.load(tmp_path / "c.pt").classes == CLASSES


def test_wrong_architecture_or_file_is_clear(tmp_path):
    torch.save(_model().state_dict(), tmp_path / "w.pth")
    with pytest.raises(DP4TLError, match="do not fit resnet34"):
        import_weights(tmp_path / "w.pth", tmp_path / "c.pt",
                       recipe=_recipe("model.arch=resnet34"), classes=CLASSES)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(DP4TLError, match="not a state dict"):
        read_state_dict(tmp_path / "junk.pth")
    # Python objects beside the weights (not a dp4tl checkpoint's numpy arrays): torch's
    # refusal without its terminal colour codes, and how to save a state dict instead
    from pathlib import Path

    torch.save({"model": _model().state_dict(), "source": Path("x")}, tmp_path / "ours.pt")
    with pytest.raises(DP4TLError, match=r"not a state dict.*torch\.save\(model\.state_dict\(\), "
                                         r"PATH\)$") as e:
        read_state_dict(tmp_path / "ours.pt")
    assert "\x1b" not in str(e.value)
    torch.save({"epoch": 3}, tmp_path / "nosd.pth")
    with pytest.raises(DP4TLError, match="holds no state dict"):
        read_state_dict(tmp_path / "nosd.pth")
    with pytest.raises(DP4TLError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


def _tv_to_timm(sd):
    """The inverse of the mapping under test, written out independently (timm's names)."""
    out = {}
    for k, v in sd.items():
        k2 = (k.replace("encoder.layers.encoder_layer_", "blocks.")
              .replace("self_attention.in_proj_weight", "attn.qkv.weight")
              .replace("self_attention.in_proj_bias", "attn.qkv.bias")
              .replace("self_attention.out_proj", "attn.proj").replace("ln_1", "norm1")
              .replace("ln_2", "norm2").replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
              .replace("encoder.ln.", "norm.").replace("encoder.pos_embedding", "pos_embed")
              .replace("class_token", "cls_token").replace("conv_proj.", "patch_embed.proj.")
              .replace("heads.head.", "head."))
        out[k2] = v
    return out


def test_timm_vit_names_map_to_torchvision():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16,
                            mlp_dim=32, num_classes=3)
    sd = vit.state_dict()
    timm_sd = _tv_to_timm(sd)
    assert any(k.startswith("blocks.1.attn.qkv") for k in timm_sd) and "cls_token" in timm_sd
    back = timm_vit_to_torchvision(timm_sd)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_a_dp4tl_training_checkpoint_is_brought_weights_too(trained_run, tmp_path):
    """`dp4tl train`'s checkpoint.pt given as --surrogate-weights / --source-weights was refused
    with torch's advice to allowlist numpy globals by hand (review): its RNG states are numpy
    arrays. They are allowed to weights_only loading (still no code from the file runs), and
    the file's model and class names are read as any wrapped state dict's."""
    from tiny_data import TEST_OVERRIDES

    ckpt = Checkpoint.load(trained_run / "checkpoint.pt")
    sd, classes = read_state_dict(trained_run / "checkpoint.pt")
    assert classes == ckpt.classes and sd.keys() == ckpt.model.keys()
    assert all(torch.equal(sd[k], ckpt.model[k]) for k in sd)
    info = import_weights(trained_run / "checkpoint.pt", tmp_path / "c.pt",
                          recipe=load_recipe("resnet18_tiny_cpu", TEST_OVERRIDES), classes=ckpt.classes)
    assert info["brought"] and info["num_classes"] == len(ckpt.classes)


def test_numpy_arrays_and_scalars_load_but_no_code_runs(tmp_path):
    """The allow-list that lets a dp4tl checkpoint's RNG states through weights_only: numpy
    arrays and scalars load; an object that runs code when unpickled is still refused."""
    import numpy as np

    sd = _model().state_dict()
    torch.save({"model": sd, "rng": np.arange(3, dtype=np.uint32), "loss": np.float64(0.5)},
               tmp_path / "np.pt")
    assert read_state_dict(tmp_path / "np.pt")[0].keys() == sd.keys()

    class Boom:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"model": sd, "x": Boom()}, tmp_path / "boom.pt")
    with pytest.raises(DP4TLError, match="not a state dict torch can read safely"):
        read_state_dict(tmp_path / "boom.pt")


def test_importing_the_same_weights_again_keeps_the_checkpoint_file(tmp_path):
    """A new save of the same tensors has other bytes: a pipeline's brought-weights stage run
    again (its DONE.json deleted) changed its result digest, and every finetuning from it ran
    again. The same import keeps the file; other weights, or another recipe, replace it."""
    torch.save(_model().state_dict(), tmp_path / "w.pth")
    out = tmp_path / "c.pt"
    import_weights(tmp_path / "w.pth", out, recipe=_recipe(), classes=CLASSES)
    first = out.read_bytes()
    again = Checkpoint.load(out)
    import_weights(tmp_path / "w.pth", out, recipe=_recipe(), classes=CLASSES)
    assert out.read_bytes() == first
    import_weights(tmp_path / "w.pth", out, recipe=_recipe("train.epochs=3"), classes=CLASSES)
    assert out.read_bytes() != first and Checkpoint.load(out).recipe != again.recipe
    torch.save(_model(n=5, blurpool=True).state_dict(), tmp_path / "other.pth")
    before = out.read_bytes()
    import_weights(tmp_path / "other.pth", out, recipe=_recipe(), classes=CLASSES)
    assert out.read_bytes() != before
    assert Checkpoint.load(out).extra["brought_weights"] == str(tmp_path / "other.pth")


def test_a_checked_weights_file_is_remembered_once_however_often_it_changes(tmp_path, monkeypatch):
    """``check_weights_file`` skips a file it read unchanged (a bench checks every run of its
    plan), and a file rewritten since is read again: a damaged rewrite is refused. It kept one
    entry per version of a file, so a long-lived process (a notebook rewriting its weights)
    grew without bound; now one entry a file."""
    import os

    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.training import weights

    monkeypatch.setattr(weights, "_CHECKED", {})
    path = tmp_path / "w.pth"
    for k in range(5):
        torch.save({"fc.weight": torch.full((2, 2), float(k))}, path)
        os.utime(path, ns=(k * 10**9, k * 10**9))  # (each version its own time)
        weights.check_weights_file(path, "--surrogate-weights")
    assert len(weights._CHECKED) == 1
    path.write_bytes(b"not a state dict")
    os.utime(path, ns=(9 * 10**9, 9 * 10**9))
    with pytest.raises(DP4TLError, match="--surrogate-weights"):
        weights.check_weights_file(path, "--surrogate-weights")
