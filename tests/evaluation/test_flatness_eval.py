"""Fig. A4 on a real finetuned model: finite, deterministic, and the weights are untouched."""
from __future__ import annotations

import torch

from ffcv_dp4tl.evaluation.finetuned import load_finetuned
from ffcv_dp4tl.evaluation.flatness import flatness_table, model_flatness


def test_flatness_of_a_finetuned_model(lp_run):
    ft = load_finetuned(lp_run, "cpu")
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    kw = dict(batch_size=8, num_batches=2, eps=1e-3, steps=2, iters=3, num_workers=0)
    res = model_flatness(ft, **kw)
    assert res["samples"] == 16 and res["split"] == "train"
    assert res["format"] == "wds"  # the run's own format, from result.json
    assert res["eps_sharpness"] > 0 and res["max_loss"] > res["loss"] > 0
    assert res["lambda_max"] > 0 and 1 <= res["power_iterations"] <= 3
    for k, v in ft.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    again = model_flatness(load_finetuned(lp_run, "cpu"), **kw)
    assert again["eps_sharpness"] == res["eps_sharpness"]
    assert again["lambda_max"] == res["lambda_max"]
    wider = model_flatness(load_finetuned(lp_run, "cpu"), **{**kw, "eps": 5e-3, "iters": 1})
    assert wider["eps_sharpness"] > res["eps_sharpness"]
    assert "100.0" in flatness_table({"a": res, "b": wider})


def test_flatness_of_a_masked_run_is_over_its_training_images(masked_lp_run):
    """A run trained on train16 (of 24 train images): the "training loss" is over those 16, not
    the whole train split (8 of which the model never trained on); a split given is read whole."""
    ft = load_finetuned(masked_lp_run, "cpu")
    kw = dict(batch_size=8, num_batches=None, steps=1, iters=1, num_workers=0)
    res = model_flatness(ft, **kw)
    assert (res["split"], res["mask"], res["samples"]) == ("train", ft.result["train_mask"], 16)
    assert f"under mask {ft.result['train_mask']}, 16 samples" in flatness_table({"a": res})
    whole = model_flatness(ft, split="train", **kw)
    assert (whole["mask"], whole["samples"]) == (None, 24)
    # the first batch only: its 8 of the 16 (the mask's; the report says so: figures audit)
    first = model_flatness(ft, **{**kw, "num_batches": 1})
    assert (first["samples"], first["available"], first["batches"]) == (8, 16, 1)
    assert f"under mask {ft.result['train_mask']}, 8 of 16 samples (--batches 1)" in \
        flatness_table({"a": first})


def test_flatness_of_a_run_shows_its_progress_on_a_terminal_only(lp_run, capsys, monkeypatch):
    """`dp4tl evaluate flatness` was silent for minutes on CPU: by default (its --progress
    unset) a terminal now sees a bar of the ascent steps and one of the power iteration, named
    after the run; a captured stderr or a log file gets no bar unless --progress asks."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    ft = load_finetuned(lp_run, "cpu")
    kw = dict(batch_size=8, num_batches=1, steps=2, iters=2, num_workers=0)
    model_flatness(ft, **kw)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("ffcv_dp4tl.progress.LOG_EVERY_S", 0.0)  # (a log file: a line a minute)
    model_flatness(ft, **kw, progress=True)
    assert f"λ_max {ft.name}" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stderr", Terminal())
    model_flatness(ft, **kw)
    err = sys.stderr.getvalue()
    assert f"ε-sharpness {ft.name}" in err and f"λ_max {ft.name}" in err and "/2" in err
