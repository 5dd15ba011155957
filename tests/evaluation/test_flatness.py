"""Fig. A4's sharpness measures on models whose answer is known in closed form."""
from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from ffcv_dp4tl.evaluation.flatness import (epsilon_sharpness, hessian_top_eigenvalue,
                                            hessian_vector_product, mean_loss, relative_flatness)


class Quadratic(nn.Module):
    """L(w) = ½ wᵀAw + bᵀw with a known Hessian A."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        self.w = nn.Parameter(w.clone())


def quad_loss(model: Quadratic, batch) -> torch.Tensor:
    return 0.5 * model.w @ model.a @ model.w + model.b @ model.w


ONE = [(None, None)]  # the quadratic ignores its batch


def _sym(eigs, seed=0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return (q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T)


def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
    eigs = [7.5, 3.0, 2.0, 1.0, 0.5, 0.1, -0.2, 0.0]
    a = _sym(eigs)
    model = Quadratic(a, torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64))
    out = hessian_top_eigenvalue(model, ONE, iters=200, tol=1e-10, loss_fn=quad_loss)
    assert out["converged"]
    assert out["lambda_max"] == pytest.approx(7.5, rel=1e-6)
    again = hessian_top_eigenvalue(model, ONE, iters=200, tol=1e-10, loss_fn=quad_loss)
    assert again["history"] == out["history"]  # seeded start: same numbers every call


def test_hessian_of_a_small_net_over_batches_matches_the_explicit_hessian():
    """Batches of unequal size weighted as one big batch; compared with the full Hessian."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(11, 3, dtype=torch.float64), torch.randint(0, 3, (11,))
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]

    def ce(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    params = list(net.parameters())
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(flat):
        out, i = [], 0
        for s in shapes:
            n = int(np.prod(s))
            out.append(flat[i:i + n].reshape(s))
            i += n
        h = torch.tanh(x @ out[0].T + out[1])
        return nn.functional.cross_entropy(h @ out[2].T + out[3], y)

    hess = torch.autograd.functional.hessian(loss_of, flat0)
    top = torch.linalg.eigvalsh(hess)
    want = float(top[top.abs().argmax()])
    v = torch.randn(flat0.numel(), dtype=torch.float64)
    vs, i = [], 0
    for p in params:
        vs.append(v[i:i + p.numel()].reshape(p.shape))
        i += p.numel()
    hv = torch.cat([h.reshape(-1) for h in hessian_vector_product(net, batches, vs, ce)])
    torch.testing.assert_close(hv, hess @ v)
    got = hessian_top_eigenvalue(net, batches, iters=500, tol=1e-12, loss_fn=ce)
    assert got["lambda_max"] == pytest.approx(want, rel=1e-5)


def test_epsilon_sharpness_is_keskars_box_maximum():
    """For a separable convex quadratic whose gradient keeps its sign over the box, the box
    maximum is at the corner the gradient points to: closed form."""
    a = torch.diag(torch.tensor([4.0, 1.0, 0.5, 2.0], dtype=torch.float64))
    b = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    model = Quadratic(a, b, w)
    eps = 1e-2
    r = eps * (w.abs() + 1)
    g = a @ w + b
    y = r * torch.sign(g)
    base = float(0.5 * w @ a @ w + b @ w)
    top = float(0.5 * (w + y) @ a @ (w + y) + b @ (w + y))
    out = epsilon_sharpness(model, ONE, eps=eps, steps=10, loss_fn=quad_loss)
    assert out["loss"] == pytest.approx(base)
    assert out["max_loss"] == pytest.approx(top, rel=1e-9)
    assert out["sharpness"] == pytest.approx((top - base) / (1 + base) * 100, rel=1e-9)
    torch.testing.assert_close(model.w.detach(), w)  # weights restored
    smaller = epsilon_sharpness(model, ONE, eps=eps / 2, steps=10, loss_fn=quad_loss)
    assert 0 < smaller["sharpness"] < out["sharpness"]
    sharper = Quadratic(a * 3, b, w)
    assert epsilon_sharpness(sharper, ONE, eps=eps, loss_fn=quad_loss)["sharpness"] \
        > out["sharpness"]
    with pytest.raises(ValueError):
        epsilon_sharpness(model, ONE, eps=0.0, loss_fn=quad_loss)


def test_mean_loss_weights_batches_by_size():
    net = nn.Linear(2, 2).double()
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    whole = float(nn.functional.cross_entropy(net(x), y).detach())
    assert mean_loss(net, [(x[:4], y[:4]), (x[4:], y[4:])]) == pytest.approx(whole)


def test_relative_flatness_puts_the_flattest_at_100():
    rel = relative_flatness({"lm": 2.0, "random": 4.0, "dense": 8.0})
    assert rel == {"lm": 100.0, "random": 50.0, "dense": 25.0}


def test_a_zero_sharpness_is_shown_as_no_ratio_and_said_why():
    """A model with no loss rise within ε has no ratio to the flattest: the table shows "–" and
    a line saying why (it printed "nan"); the others keep their ratio to the smallest positive."""
    from ffcv_dp4tl.evaluation.flatness import flatness_table

    row = {"loss": 0.1, "power_iterations": 3, "converged": True, "samples": 4}
    table = flatness_table({"flat": {**row, "eps_sharpness": 0.0, "lambda_max": 2.0},
                            "sharp": {**row, "eps_sharpness": 4.0, "lambda_max": 4.0}})
    assert "| flat | 0.1000 | 0.0000 | 2 | – | 100.0 |" in table
    assert "| sharp | 0.1000 | 4.0000 | 4 | 100.0 | 50.0 |" in table
    assert "nan" not in table and "has no ratio to the flattest" in table


def test_hessian_of_a_vit_matches_finite_differences():
    """A ViT (the registered vit_b_16's class at a tiny size): its attention's fused kernels
    have no double backward, so the Hessian-vector product runs on the math kernel. H v is
    checked against central differences of the gradient (float64)."""
    from ffcv_dp4tl.training.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                            mlp_dim=32, num_classes=3).double().eval()
    x, y = torch.randn(5, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]

    def ce(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    params = list(vit.parameters())
    v = [torch.randn(p.shape, dtype=torch.float64) for p in params]
    hv = hessian_vector_product(vit, batches, v, ce)

    def grad_at(step: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(step * d)
        g = torch.autograd.grad(ce(vit, (x, y)), params)
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(step * d)
        return g

    h = 1e-5
    fd = [(a - b) / (2 * h) for a, b in zip(grad_at(h), grad_at(-h))]
    got, want = (torch.cat([t.reshape(-1) for t in ts]) for ts in (hv, fd))
    assert float(want.abs().max()) > 0.1  # (a product worth comparing)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    top = hessian_top_eigenvalue(vit, batches, iters=3, loss_fn=ce)
    assert top["iterations"] >= 1 and np.isfinite(top["lambda_max"]) and top["lambda_max"] != 0
    assert epsilon_sharpness(vit, batches, steps=2, loss_fn=ce)["sharpness"] > 0


def _net_and_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    return net, [(x[:4], y[:4]), (x[4:], y[4:])]


@pytest.mark.parametrize("call, needle", [
    (lambda m, b: epsilon_sharpness(m, b, eps=float("nan")), "eps must be a finite number > 0"),
    (lambda m, b: epsilon_sharpness(m, b, eps=float("inf")), "eps must be a finite number > 0"),
    (lambda m, b: epsilon_sharpness(m, b, eps=-1e-3), "eps must be a finite number > 0"),
    (lambda m, b: epsilon_sharpness(m, b, steps=2.5), "steps must be an integer >= 1, got 2.5"),
    (lambda m, b: epsilon_sharpness(m, b, steps=0), "steps must be an integer >= 1"),
    (lambda m, b: epsilon_sharpness(m, []), "batches is empty"),
    (lambda m, b: hessian_top_eigenvalue(m, []), "batches is empty"),
    (lambda m, b: hessian_top_eigenvalue(m, b, iters=0), "iters must be an integer >= 1"),
    (lambda m, b: hessian_top_eigenvalue(m, b, iters=True), "iters must be an integer >= 1"),
    (lambda m, b: hessian_top_eigenvalue(m, b, tol=float("nan")), "tol must be a finite"),
    (lambda m, b: hessian_top_eigenvalue(m, b, tol=-1.0), "tol must be a finite"),
    (lambda m, b: mean_loss(m, []), "batches is empty"),
    (lambda m, b: mean_loss(m, [(b[0][0][:0], b[0][1][:0])]), "no sample"),
    (lambda m, b: hessian_vector_product(m, b, [torch.ones(1)]), "vec must hold one tensor"),
], ids=["eps-nan", "eps-inf", "eps-negative", "steps-fraction", "steps-0", "sharpness-no-batch",
        "hessian-no-batch", "iters-0", "iters-bool", "tol-nan", "tol-negative", "loss-no-batch",
        "loss-no-sample", "vec-short"])
def test_bad_arguments_are_refused_not_measured_as_flat(call, needle):
    """NaN/inf ε gave sharpness 0 (max ignores NaN), no batches a flat 0 and λ_max 0
    'converged', iters=0 NaN, a fractional step count a raw TypeError: each is now a
    ValueError that names the argument."""
    net, batches = _net_and_batches()
    with pytest.raises(ValueError, match=needle):
        call(net, batches)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_fixed_batches_refuses_a_count_below_one(n):
    """0 and -1 returned one batch (the CLI's --batches 0, "all", passes None)."""
    from ffcv_dp4tl.evaluation.flatness import fixed_batches

    loader = [SimpleNamespace(images=torch.zeros(1), labels=torch.zeros(1)) for _ in range(3)]
    with pytest.raises(ValueError, match="num_batches"):
        fixed_batches(loader, n)
    assert len(fixed_batches(loader, None)) == 3 and len(fixed_batches(loader, 2)) == 2


def test_a_loss_that_turns_non_finite_in_the_box_is_an_error_not_flat():
    """A loss that overflows inside the ε-box was skipped by max() and reported as sharpness
    0 (perfectly flat); it is an error naming the ascent step, and the weights are restored."""
    from ffcv_dp4tl.errors import DP4TLError

    w0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    model = Quadratic(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), w0)

    def blows_up(m, batch):  # finite at w0, NaN as soon as the weights move
        return quad_loss(m, batch) + torch.log(1 - 1e3 * (m.w - w0).abs().sum())

    with pytest.raises(DP4TLError, match="ε-box ascent step 2 of 3 .* not finite"):
        epsilon_sharpness(model, ONE, steps=3, loss_fn=blows_up)
    torch.testing.assert_close(model.w.detach(), w0)
    with pytest.raises(DP4TLError, match="own weights is not finite"):
        epsilon_sharpness(model, ONE, loss_fn=lambda m, b: quad_loss(m, b) * float("inf"))


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal: where tqdm, left to decide, draws its bar."""

    def isatty(self) -> bool:
        return True


def test_both_measures_show_a_progress_bar_only_when_asked(capsys, monkeypatch):
    """The power iteration and the ε-box ascent ran for minutes on CPU with no output at all
    (`dp4tl evaluate flatness`: ~25 s of silence on a 40-image target). Each shows a bar of its
    products / steps when asked; none by default here, and with None only on a terminal."""
    model = Quadratic(2 * torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                      torch.ones(3, dtype=torch.float64))
    monkeypatch.setattr("ffcv_dp4tl.progress.LOG_EVERY_S", 0.0)  # (a log file's line a minute)
    hessian_top_eigenvalue(model, ONE, iters=3, loss_fn=quad_loss, progress=True, desc="hvp-bar")
    epsilon_sharpness(model, ONE, steps=4, loss_fn=quad_loss, progress=True, desc="ascent-bar")
    err = capsys.readouterr().err
    assert "hvp-bar" in err and "/3" in err and "ascent-bar" in err and "/4" in err
    for progress in (False, None):  # (None: stderr is no terminal under capsys)
        hessian_top_eigenvalue(model, ONE, iters=3, loss_fn=quad_loss, progress=progress)
        epsilon_sharpness(model, ONE, steps=4, loss_fn=quad_loss, progress=progress)
    hessian_top_eigenvalue(model, ONE, iters=3, loss_fn=quad_loss)  # (the defaults: no bar)
    epsilon_sharpness(model, ONE, steps=4, loss_fn=quad_loss)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    hessian_top_eigenvalue(model, ONE, iters=3, loss_fn=quad_loss, progress=None, desc="hvp-tty")
    assert "hvp-tty" in sys.stderr.getvalue()


def test_the_table_says_when_the_loss_was_over_some_of_the_samples_only():
    """`--batches 1` read 64 of the split's 144 samples, and the report said "split 'train'
    (all samples), 64 samples" (figures audit): it gives the share and the option."""
    from ffcv_dp4tl.evaluation.flatness import flatness_table

    row = {"loss": 0.1, "eps_sharpness": 1.0, "lambda_max": 2.0, "power_iterations": 3,
           "converged": True, "split": "train", "mask": None}
    part = flatness_table({"a": {**row, "samples": 64, "available": 144, "batches": 1}})
    assert "Loss over: a: split 'train' (all samples), 64 of 144 samples (--batches 1)." in part
    whole = flatness_table({"a": {**row, "samples": 144, "available": 144, "batches": None},
                            "old": {**row, "samples": 64}})  # (an entry from before: no count)
    assert "a: split 'train' (all samples), 144 samples; old: split 'train' (all samples), " \
           "64 samples." in whole
