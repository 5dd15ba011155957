"""What a call of ``train``, ``finetune`` or ``score`` changes in the calling process for its
own run, put back when it returns or raises: the loaders it made are closed
(:func:`~ffcv_dp4tl.data.loaders.closing_loaders`), torch's and numba's thread counts
(:func:`~ffcv_dp4tl.lazy.threads_kept`, the one rule for them: torch's is pinned per stage,
:func:`~.trainer.pin_cpu_threads`, and ffcv's loaders set both within their epochs) and the
global random generators (reseeded every epoch, :func:`~.trainer.seed_epoch`). A notebook's
next cell ran with one thread and a reseeded ``torch.manual_seed``, unannounced (Python API
review). A run sets torch's count and the generators before it reads them (numba's kernels sum
alike at any count, ``kernels/cpu.py``), so its results are unchanged, but for one case
(CHANGELOG, 2026-12-06): GraNd and EL2N compute their scores after their early-training runs,
now at ``score``'s own thread count."""
from __future__ import annotations

import functools
import random
from typing import Any, Callable, TypeVar

import numpy as np

from ..lazy import threads_kept

F = TypeVar("F", bound=Callable[..., Any])


def keeps_process_state(fn: F) -> F:
    """Decorate a public entry point so the process leaves it with the loaders it made closed,
    and with the thread counts (torch's, and numba's where numba was imported before the call:
    :func:`~ffcv_dp4tl.lazy.threads_kept`) and the generator states (Python's, numpy's, torch's
    CPU one, and the current GPU's where CUDA was already in use: reading another GPU's would
    start a context on it) it entered with.
    torch is imported at the call, not when a module decorates its entry point: importing
    ``pipeline.score`` for its checks (``bench render``, the CLI's option parsing) loads no
    torch."""

    @functools.wraps(fn)
    def kept(*args: Any, **kwargs: Any) -> Any:
        import torch

        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        cuda = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = (torch.cuda.current_device(), torch.cuda.get_rng_state())
        from ..data.loaders import closing_loaders

        # (the counts come back last, after the loaders closed: an epoch they end restores its
        # own snapshot, lazy.threads_kept_overlapping)
        with threads_kept():
            try:
                with closing_loaders():  # (its loaders' workers and files end with the call)
                    return fn(*args, **kwargs)
            finally:
                random.setstate(states[0])
                np.random.set_state(states[1])
                torch.set_rng_state(states[2])
                if cuda is not None:
                    torch.cuda.set_rng_state(cuda[1], cuda[0])

    return kept  # type: ignore[return-value]


__all__ = ["keeps_process_state"]
