"""Flatness of a finetuned model's downstream training loss (the paper's Fig. A4).

Fig. A4 compares source models pretrained on differently pruned data, then linear-probed on
the target, by five sharpness measures of the *target training loss*; two of them are here:

* **ε-sharpness** (Keskar et al., ICLR 2017, Metric 2.1 — the paper's [120]): with weights
  ``w`` and loss ``L``, ``max_{y ∈ C_ε} (L(w + y) − L(w)) / (1 + L(w)) × 100`` over the box
  ``C_ε = {y : |y_i| ≤ ε (|w_i| + 1)}`` (the full parameter space, A = I). Keskar et al. solve
  the inner maximisation with 10 L-BFGS-B iterations and report ε = 1e-3 and 5e-4; here it is
  approximated by ``steps`` of projected sign-gradient ascent inside the box (PGD; per
  coordinate step ``2.5 · bound / steps``, Madry et al.'s rule, from ``y = 0``). The largest
  loss seen is the maximum (a lower bound of the true one).
* **λ_max(H)**, the top eigenvalue of the Hessian of the loss w.r.t. all weights (Maddox et al.
  2020 — the paper's [122]), by power iteration on Hessian-vector products (double backward,
  never forming H). Power iteration converges to the eigenvalue of largest *magnitude*; at a
  trained minimum that is the top (positive) one.

Both use the same fixed set of batches (the images the run trained on — the target's train
split under the run's ``train_mask``, e.g. VTAB-1k's ``train800val200``, so the "training loss"
is not measured on images the model never saw —, eval transform, in file order) with the model in eval mode (BatchNorm statistics frozen), so the loss is a function of
the weights alone (no batch statistics, no augmentation draws). On the CPU a repeated call gives
the same numbers bit for bit (``tests/evaluation/test_flatness_eval.py``); on CUDA the gradient
kernels are not deterministic (cuDNN's weight-gradient algorithms, the atomic adds of e.g.
adaptive average pooling's backward), so repeated calls agree to float rounding, not bit for bit,
and a power iteration may stop one product earlier or later. The loss is the sample-weighted mean
over the whole batch set, exactly as one big batch.

The paper normalises each measure over the compared methods ("100 % = flattest");
:func:`relative_flatness` does that for a set of models: ``min(sharpness) / sharpness × 100``.
"""
from __future__ import annotations

import math
import operator
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..contracts.fields import typed
from ..errors import DP4TLError

LossFn = Callable[[nn.Module, tuple], torch.Tensor]


def cross_entropy(model: nn.Module, batch: tuple) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on ``(images, labels)``."""
    images, labels = batch[0], batch[1]
    return nn.functional.cross_entropy(model(images).float(), labels)


def _count(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (a bool, a float or a smaller number: ValueError)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return n


def fixed_batches(loader, num_batches: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``num_batches`` (an integer >= 1; None: all) ``(images, labels)`` of an
    (unshuffled) loader."""
    if num_batches is not None:
        num_batches = _count(num_batches, "num_batches (None for all batches)")
    out = []
    for batch in loader:
        out.append((batch.images, batch.labels))
        if num_batches is not None and len(out) >= num_batches:
            break
    return out


def _batches(batches: Iterable[tuple]) -> list[tuple]:
    """``batches`` as a list, refused when empty or without a single sample (the loss of no
    data is no loss: measuring it would report a perfectly flat 0)."""
    out = list(batches)
    if not out:
        raise ValueError("batches is empty: give at least one (images, labels) batch "
                         "(fixed_batches(loader, n) of a loader over a non-empty split)")
    if not sum(len(b[1]) if b[1] is not None else 1 for b in out):
        raise ValueError("batches hold no sample (every labels tensor is empty): give at least "
                         "one non-empty (images, labels) batch")
    return out


def _weights(batches: Sequence[tuple]) -> list[float]:
    sizes = [len(b[1]) if b[1] is not None else 1 for b in batches]
    total = float(sum(sizes))
    return [s / total for s in sizes]


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise DP4TLError(f"{what} is not finite ({value}): the model's loss overflows or its "
                         "weights or inputs hold NaN/inf there, so no sharpness can be measured; "
                         "check the run (and for the ε-box ascent try a smaller --eps)")
    return value


def _params(model: nn.Module, params: Iterable[nn.Parameter] | None) -> list[nn.Parameter]:
    ps = list(params) if params is not None else [p for p in model.parameters()]
    if not ps:
        raise ValueError("no parameters to measure flatness over")
    return ps


def mean_loss(model: nn.Module, batches: Sequence[tuple], loss_fn: LossFn = cross_entropy) -> float:
    """Sample-weighted mean loss over ``batches`` (no gradients)."""
    batches = _batches(batches)
    with torch.no_grad():
        return float(sum(w * float(loss_fn(model, b)) for w, b in zip(_weights(batches), batches)))


def _loss_and_grad(model, batches, loss_fn, params) -> tuple[float, list[torch.Tensor]]:
    grads = [torch.zeros_like(p) for p in params]
    total = 0.0
    for w, b in zip(_weights(batches), batches):
        loss = loss_fn(model, b) * w
        for g, gi in zip(grads, torch.autograd.grad(loss, params)):
            g += gi
        total += float(loss.detach())
    return total, grads


def hessian_vector_product(model: nn.Module, batches: Sequence[tuple], vec: Sequence[torch.Tensor],
                           loss_fn: LossFn = cross_entropy,
                           params: Sequence[nn.Parameter] | None = None) -> list[torch.Tensor]:
    """``H v`` of the mean loss over ``batches`` (double backward, batch by batch).

    Attention runs on ``scaled_dot_product_attention``'s math kernel here: the fused ones
    (flash / memory-efficient, what a ViT gets by default on CPU and CUDA) have no double
    backward."""
    params = _params(model, params)
    batches = _batches(batches)
    vec = list(vec)
    if len(vec) != len(params) or any(v.shape != p.shape for v, p in zip(vec, params)):
        raise ValueError(f"vec must hold one tensor of each parameter's shape ({len(params)} "
                         f"tensors), got {len(vec)} of shapes {[tuple(v.shape) for v in vec]}")
    out = [torch.zeros_like(p) for p in params]
    with sdpa_kernel(SDPBackend.MATH):
        for w, b in zip(_weights(batches), batches):
            grads = torch.autograd.grad(loss_fn(model, b) * w, params, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vec))
            for o, h in zip(out, torch.autograd.grad(dot, params)):
                o += h
    return out


def _bar(total: int, desc: str, unit: str, progress: bool | None):
    """A tqdm bar of ``total`` steps on stderr, cleared when done (``leave=False``), as the
    project's other long loops show theirs: on CPU both measures run for minutes on a real
    target, silent without it. ``progress``: True shows it, False does not, None shows it only
    where stderr is a terminal, so a log file or a captured stderr gets none (a log file's
    timestamped line a minute is :mod:`ffcv_dp4tl.progress`'s, for ``True``)."""
    from ..progress import bar, to_terminal

    return bar(total=total, desc=desc, unit=unit,
               show=to_terminal() if progress is None else progress)


def _norm(vec: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((v.double() ** 2).sum() for v in vec))


def hessian_top_eigenvalue(model: nn.Module, batches: Sequence[tuple], *, iters: int = 20,
                           tol: float = 1e-3, seed: int = 0, loss_fn: LossFn = cross_entropy,
                           params: Sequence[nn.Parameter] | None = None,
                           progress: bool | None = False,
                           desc: str = "λ_max power iteration") -> dict:
    """Power iteration for the Hessian's eigenvalue of largest magnitude.

    Starts from a seeded Gaussian vector; stops after ``iters`` products or when the Rayleigh
    quotient changes by less than ``tol`` (relative). Returns ``{"lambda_max", "iterations",
    "converged", "history"}``. ``progress``: a bar of the ``iters`` products named ``desc``
    (each one a double backward over every batch; see :func:`_bar` for None)."""
    iters = _count(iters, "iters")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) \
            or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    model.eval()
    params = _params(model, params)
    batches = _batches(batches)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p) for p in params]
    n = _norm(v)
    v = [x / n.to(x.dtype) for x in v]
    history: list[float] = []
    lam, converged = float("nan"), False
    with _bar(iters, desc, "HVP", progress) as bar:
        for _ in range(iters):
            hv = hessian_vector_product(model, batches, v, loss_fn, params)
            new = _finite(float(sum((h.double() * x.double()).sum() for h, x in zip(hv, v))),
                          f"the Hessian's Rayleigh quotient at power iteration {len(history) + 1}")
            history.append(new)
            bar.set_postfix_str(f"λ {new:.4g}", refresh=False)
            bar.update()
            n = _norm(hv)
            if float(n) == 0.0:
                lam, converged = 0.0, True
                break
            v = [h / n.to(h.dtype) for h in hv]
            if history[:-1] and abs(new - lam) <= tol * max(abs(new), 1e-12):
                lam, converged = new, True
                break
            lam = new
    return {"lambda_max": lam, "iterations": len(history), "converged": converged,
            "history": history}


def epsilon_sharpness(model: nn.Module, batches: Sequence[tuple], *, eps: float = 1e-3,
                      steps: int = 10, loss_fn: LossFn = cross_entropy,
                      params: Sequence[nn.Parameter] | None = None,
                      progress: bool | None = False, desc: str = "ε-sharpness ascent") -> dict:
    """Keskar et al.'s ε-sharpness (in %) by projected sign-gradient ascent in the box
    ``|y_i| ≤ ε(|w_i| + 1)``. The weights are restored afterwards. Returns ``{"sharpness",
    "loss", "max_loss", "eps", "steps"}``. ``progress``: a bar of the ``steps`` ascent steps
    named ``desc`` (each one a backward over every batch; see :func:`_bar` for None)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0 (Keskar et al.: 1e-3, 5e-4), got {eps!r}")
    steps = _count(steps, "steps")
    model.eval()
    params = _params(model, params)
    batches = _batches(batches)
    w0 = [p.detach().clone() for p in params]
    bound = [eps * (w.abs() + 1) for w in w0]
    y = [torch.zeros_like(w) for w in w0]
    base = _finite(mean_loss(model, batches, loss_fn), "the loss at the model's own weights")
    best = base
    try:
        with _bar(steps, desc, "step", progress) as bar:
            for step in range(steps):
                loss, grads = _loss_and_grad(model, batches, loss_fn, params)
                best = max(best, _finite(loss, f"the loss at ε-box ascent step {step + 1} of "
                                               f"{steps} (eps={eps})"))
                with torch.no_grad():
                    for p, w, yi, g, b in zip(params, w0, y, grads, bound):
                        yi.add_(2.5 * b / steps * g.sign())
                        torch.maximum(torch.minimum(yi, b), -b, out=yi)
                        p.copy_(w + yi)
                bar.update()
        best = max(best, _finite(mean_loss(model, batches, loss_fn),
                                 f"the loss after the last ε-box ascent step (eps={eps})"))
    finally:
        with torch.no_grad():
            for p, w in zip(params, w0):
                p.copy_(w)
    return {"sharpness": (best - base) / (1 + base) * 100, "loss": base, "max_loss": best,
            "eps": eps, "steps": steps}


def relative_flatness(sharpness: dict[str, float]) -> dict[str, float]:
    """Fig. A4's normalisation of one measure over compared models: the flattest (smallest
    sharpness) is 100 %, a model twice as sharp 50 %. A sharpness ≤ 0 gets NaN: no ratio to the
    flattest expresses it (:func:`flatness_table` shows "–" and says why)."""
    positive = [s for s in sharpness.values() if s > 0]
    if not positive:
        return {k: float("nan") for k in sharpness}
    lo = min(positive)
    return {k: (100.0 * lo / s if s > 0 else float("nan")) for k, s in sharpness.items()}


def model_flatness(ft, *, split: str | None = None, fmt: str | None = None, batch_size: int = 64,
                   num_batches: int | None = 4, eps: float = 1e-3, steps: int = 10,
                   iters: int = 20, tol: float = 1e-3, seed: int = 0,
                   num_workers: int = 2, progress: bool | None = None) -> dict:
    """ε-sharpness and λ_max(H) of a finetuned model (:class:`~.finetuned.Finetuned`) on the
    first ``num_batches`` batches of its training images (eval transform, file order), read in
    ``fmt`` (default: the format the run was finetuned from). ``split``: None (default) is the
    run's own train split under its ``train_mask`` (the paper's "downstream training loss": of
    the samples the model was trained on); a split named here is read whole (no mask).

    ``progress``: bars of the ascent steps and the power iteration, named after the run (each
    a pass over the batches per step: minutes on CPU, silent without them). The default None
    shows them where stderr is a terminal only, as ``dp4tl evaluate flatness`` calls this with
    no ``--progress`` option: a terminal sees them, a log file gets no bar redrawn in it."""
    from ..data import make_loader
    from ..data.loaders import closing_loaders
    from ..errors import DataError
    from ..training.distributed import single_process_context

    dev = next(ft.model.parameters()).device
    single_process_context(dev)  # `cuda:N` current before the loader is made
    fmt = fmt or ft.fmt
    mask, mask_path = (ft.train_mask, ft.train_mask_path) if split is None else (None, None)
    split = ft.train_split if split is None else split
    with closing_loaders():  # (the batches are read into memory: the loader ends here)
        loader = make_loader(ft.target, split, fmt=fmt, aug=ft.eval_aug(), shuffle=False,
                             mask=mask, batch_size=batch_size, resolution=ft.resolution,
                             device=dev, num_workers=num_workers)
        batches = fixed_batches(loader, num_batches)
        available = loader.plan.samples_per_epoch()  # (of the split under its mask)
    if not batches:
        raise DataError(f"{ft.target} split {split!r} gave no batch to measure the loss on; "
                        "choose a split with samples (--split)")
    model = ft.model.float()
    sharp = epsilon_sharpness(model, batches, eps=eps, steps=steps, progress=progress,
                              desc=f"ε-sharpness {ft.name}")
    hess = hessian_top_eigenvalue(model, batches, iters=iters, tol=tol, seed=seed,
                                  progress=progress, desc=f"λ_max {ft.name}")
    return {"run": str(ft.run_dir), "mode": ft.mode, "target": str(ft.target), "split": split,
            "mask": None if mask_path is None else str(mask_path),
            "format": fmt, "samples": sum(len(b[1]) for b in batches),
            "available": available, "batches": num_batches, "loss": sharp["loss"],
            "eps_sharpness": sharp["sharpness"], "eps": eps, "ascent_steps": steps,
            "max_loss": sharp["max_loss"], "lambda_max": hess["lambda_max"],
            "power_iterations": hess["iterations"], "converged": hess["converged"],
            "seed": seed, "params": sum(p.numel() for p in model.parameters())}


def check_flatness_entry(entry: dict, where: str, fix: str) -> None:
    """One line (:class:`~ffcv_dp4tl.errors.DataError` naming ``where``, the field and ``fix``)
    when an entry of ``flatness.json`` lacks a field :func:`flatness_table` reads or holds one
    of another type: what ``dp4tl evaluate flatness`` checks before it reuses an earlier entry."""
    for name, what in (("loss", "number"), ("eps_sharpness", "number"), ("lambda_max", "number"),
                       ("power_iterations", "count"), ("converged", "bool"),
                       ("samples", "count")):
        typed(entry, name, what, where, fix)


def _samples(r: dict) -> str:
    """``64 of 144 samples (--batches 1)`` when the loss was over the first batches of the
    split only (it read "(all samples), 64 samples"; figures audit), ``144 samples`` over all
    of them (and for an entry written before ``available`` was recorded)."""
    n, available = r["samples"], r.get("available")
    if isinstance(available, int) and not isinstance(available, bool) and n < available:
        batches = r.get("batches")
        return f"{n} of {available} samples" + (f" (--batches {batches})" if batches else "")
    return f"{n} samples"


def flatness_table(results: dict[str, dict]) -> str:
    """Per model: the two sharpness numbers and Fig. A4's relative flatness (100 % = flattest)."""
    rel_e = relative_flatness({k: r["eps_sharpness"] for k, r in results.items()})
    rel_h = relative_flatness({k: r["lambda_max"] for k, r in results.items()})
    lines = ["| model | train loss | ε-sharpness (%) | λ_max(H) | flatness ε (rel. %) | "
             "flatness λ_max (rel. %) | power it. |", "|---|---|---|---|---|---|---|"]
    def rel(x: float) -> str:
        return "–" if math.isnan(x) else f"{x:.1f}"

    for k, r in results.items():
        lines.append(f"| {k} | {r['loss']:.4f} | {r['eps_sharpness']:.4f} | {r['lambda_max']:.4g} | "
                     f"{rel(rel_e[k])} | {rel(rel_h[k])} | {r['power_iterations']}"
                     f"{'' if r['converged'] else ' (not converged)'} |")
    where = {k: f"split {r.get('split', 'train')!r}"
             + (f" under mask {r['mask']}" if r.get("mask") else " (all samples)")
             + f", {_samples(r)}" for k, r in results.items()}
    lines.append("")
    if any(math.isnan(x) for x in (*rel_e.values(), *rel_h.values())):
        lines.append("–: a sharpness ≤ 0 (no loss rise within ε, or λ_max ≤ 0 away from a "
                     "minimum) has no ratio to the flattest model.")
        lines.append("")
    lines.append("Loss over: " + "; ".join(f"{k}: {w}" for k, w in where.items()) + ".")
    return "\n".join(lines) + "\n"
