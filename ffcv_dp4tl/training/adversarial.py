"""PGD adversarial training (Madry et al. 2018) as an engine objective: the paper's Tab. 5
DENSE-ADV / LM-ADV source models, after Salman et al. 2020 ("Do adversarially robust ImageNet
models transfer better?").

:class:`PGDAttack` perturbs a batch within an Linf or L2 ball; :class:`AdversarialObjective`
is the engine's objective (``objective(train_model, batch) -> (loss, correct, n)``, like
:class:`~.engine.CrossEntropyObjective`) that trains on the attacked batch. The trainer builds it
when the recipe's ``[adv] steps > 0``.

Choices, and why:

* **Pixel space.** Loader batches arrive ImageNet-normalised (``data.transforms.Normalize``:
  ``(uint8 - mean) / std``). The attack un-normalises to [0, 1] pixels, perturbs there, clamps to
  [0, 1] (a valid image) and normalises again, so ``eps`` means what it means in the literature
  (``3/255`` = three grey levels) for every channel alike. (The authors' released code takes its
  sign step and its random start in normalised units and projects in pixel units; ours is
  consistent in pixels. ``units="normalized"`` — recipe ``adv.units``, the ``paper-code``
  protocol — reproduces theirs: step and start scaled by each channel's std, ~0.225, so the
  3-step attack reaches at most ~2/255 with ~0.45/255 steps; docs/deviations.md.)
* **Model in eval mode during the attack** — what the robustness library does
  (``AttackerModel.forward``: ``self.eval()`` around the attacker, the training mode restored
  after), so BatchNorm uses and does *not* update its running statistics while the attack runs:
  one adversarial training step moves the running stats exactly as one clean step on the attacked
  images would (``num_batches_tracked`` + 1, not + steps + 1), and dropout is off. (The authors'
  released code attacks in train mode, so its BN statistics also absorb the attack's forwards.)
* **The plain module attacks.** The attack runs the unwrapped network (``StepParts.net``), not
  the DDP / ``torch.compile`` wrapper: gradients are taken w.r.t. the input only
  (``torch.autograd.grad``: no parameter ``.grad`` is touched, no DDP all-reduce fires), and a
  compiled graph never sees the mode switch. The training forward on the attacked batch goes
  through the wrapper as usual.
* **Attack loss.** Summed cross-entropy (no label smoothing) of the true labels, in float32: the
  sign (Linf) and the per-sample normalised step (L2) are invariant to the scale, and a sum keeps
  the per-sample gradients away from bf16/fp16 underflow. The PGD iterate after the last step is
  used (Madry et al.; the robustness library's ``use_best`` is not implemented).
* **No host synchronisation.** A fixed number of steps, random starts drawn on the device,
  norms and projections as tensor ops: no ``.item()``, no data-dependent Python branches, so the
  engine's step stays sync-free on a GPU. Autocast (bf16/fp16) and channels_last pass through:
  the attack runs inside the step's autocast, the perturbation is float32 and the attacked batch
  keeps the input's dtype and memory format.
* **Metrics.** ``top1_train`` of an adversarial run is the accuracy on the attacked batch (the
  robustness library's "adversarial train accuracy"); validation stays clean.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..contracts import AdvNorm, AdvUnits
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .engine import train_aug_for

def default_step_size(eps: float, steps: int) -> float:
    """2.5 × eps / steps: the step size Madry et al. and the robustness library recommend, so
    that the iterate can reach the ball's boundary from any start."""
    return 2.5 * eps / max(steps, 1)


class PGDAttack:
    """``steps`` projected-gradient steps maximising the cross-entropy within the ``norm`` ball of
    radius ``eps`` ([0, 1] pixel units) around a normalised batch; see the module doc."""

    def __init__(self, steps: int, eps: float, step_size: float = 0.0, norm: str = "linf",
                 random_start: bool = True,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 units: str = "pixel"):
        if norm not in AdvNorm.values():
            raise ValueError(f"norm must be one of {AdvNorm.values()}, got {norm!r}")
        if units not in AdvUnits.values() or (units == "normalized" and norm != "linf"):
            raise ValueError(f"units must be one of {AdvUnits.values()} (normalized: linf only), "
                             f"got {units!r}")
        self.units = units
        self.steps, self.eps, self.norm, self.random_start = int(steps), float(eps), norm, random_start
        self.step_size = float(step_size) if step_size > 0 else default_step_size(eps, steps)
        # the loaders' normalisation is in 0-255 units: pixel01 = (x * std + mean) / 255
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / 255.0
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) / 255.0
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_recipe(cls, adv) -> "PGDAttack":
        """From a recipe's ``[adv]`` section (:class:`~.recipe.AdvCfg`)."""
        return cls(adv.steps, adv.eps, adv.step_size, adv.norm, adv.random_start,
                   units=adv.units)

    # ---------------------------------------------------------------- pixel space <-> model input
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean/std on ``like``'s device, copied there once (a host→device copy per step would
        be a synchronising one from pageable memory)."""
        dev = like.device
        if dev not in self._on_device:
            self._on_device[dev] = (self._mean.to(dev), self._std.to(dev))
        return self._on_device[dev]

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised batch → float32 pixels in [0, 1] (clamped: float round-off of a uint8
        image stays inside the box)."""
        mean, std = self._stats(images)
        return (images.float() * std + mean).clamp_(0.0, 1.0)

    def from_pixels(self, pixels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels → a normalised batch with ``like``'s dtype and memory format."""
        mean, std = self._stats(pixels)
        x = (pixels - mean) / std
        if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) \
                and not like.is_contiguous():
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(like.dtype)

    # ---------------------------------------------------------------- the ball
    def _per_sample_norm(self, t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))

    def project(self, delta: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """``delta`` moved into the ball, then so that ``pixels + delta`` lies in [0, 1]. (The box
        clamp only shrinks each coordinate of ``delta`` towards 0, so it stays in the ball.)"""
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = delta * (self.eps / self._per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (pixels + delta).clamp_(0.0, 1.0) - pixels

    def _unit(self, like: torch.Tensor) -> torch.Tensor | float:
        """One step/start unit in pixels: 1, or each channel's std (a unit of the normalised
        input, as the authors' script steps)."""
        return self._stats(like)[1] if self.units == "normalized" else 1.0

    def _start(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return torch.zeros_like(pixels)
        if self.norm == "linf":  # uniform in the cube
            delta = (torch.rand_like(pixels) * 2 - 1) * self.eps * self._unit(pixels)
        else:  # a random direction at radius eps (the robustness library's L2 random start)
            g = torch.randn_like(pixels)
            delta = g * (self.eps / self._per_sample_norm(g).clamp_min(1e-12))
        return self.project(delta, pixels)

    def _ascend(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return delta + self.step_size * grad.sign() * self._unit(delta)
        return delta + self.step_size * grad / self._per_sample_norm(grad).clamp_min(1e-12)

    # ---------------------------------------------------------------- the attack
    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The attacked batch (normalised like ``images``, detached). ``model`` runs in eval mode
        during the attack and is put back in the mode it was in; no parameter gradient is
        accumulated and no BatchNorm statistic changes."""
        pixels = self.to_pixels(images.detach())
        delta = self._start(pixels)
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                for _ in range(self.steps):
                    delta.requires_grad_(True)
                    out = model(self.from_pixels(pixels + delta, images))
                    loss = F.cross_entropy(out.float(), labels, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, [delta])
                    with torch.no_grad():
                        delta = self.project(self._ascend(delta.detach(), grad), pixels)
        finally:
            model.train(was_training)
        return self.from_pixels(pixels + delta.detach(), images)


class AdversarialObjective:
    """Supervised cross-entropy on the PGD-attacked batch (Madry et al.'s min-max training):
    the engine's objective protocol, see :class:`~.engine.CrossEntropyObjective`. ``attack_model``
    is the plain network the attack differentiates (not the DDP/compile wrapper)."""

    name = "adversarial"
    supervised = True
    drop_last = False
    loader_views = 1

    def __init__(self, attack_model: nn.Module, attack: PGDAttack, label_smoothing: float = 0.0,
                 crop_scale: tuple[float, float] | None = None, augment: nn.Module | None = None,
                 crop_ratio: tuple[float, float] | None = None):
        self.train_aug = train_aug_for(crop_scale, crop_ratio)  # as the clean objective's
        self.attack_model = attack_model
        self.attack = attack
        self.crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        #: the recipe's photometric augmentation (train.color_jitter / white_balance), applied
        #: to the clean batch before the attack, as a loader's augmentation would be: the model
        #: is attacked on, and trains on, the images the clean objective would see
        self.augment = augment

    def __call__(self, train_model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        images = batch.images if self.augment is None else self.augment(batch.images)
        adv = self.attack.perturb(self.attack_model, images, batch.labels)
        out = train_model(adv)
        loss = self.crit(out, batch.labels)
        correct = (out.detach().argmax(1) == batch.labels).sum()
        return loss, correct, batch.labels.numel()

    def state_dict(self) -> dict[str, Any] | None:
        return None  # stateless (the attack's randomness is the global torch RNG, checkpointed)

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass
