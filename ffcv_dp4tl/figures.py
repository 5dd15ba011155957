"""matplotlib figures that leave the user's matplotlib as it was.

``matplotlib.use("Agg")`` before ``import matplotlib.pyplot`` switches the backend of the
whole process: a notebook that called ``run_pipeline`` (which draws the selection gallery)
lost its inline plots, and every figure made through pyplot stays in pyplot's list until it
is closed (figures audit). A figure here is a :class:`matplotlib.figure.Figure` with its own
Agg canvas: no backend is chosen, pyplot is never imported, nothing is registered anywhere,
and the figure is freed like any object once its last reference goes.

What the plotting code uses instead of pyplot:

* ``fig, axes = subplots(nrows, ncols, figsize=..., squeeze=..., gridspec_kw=...)`` for
  ``plt.subplots(...)`` (same arguments: :meth:`Figure.subplots`' and the figure's own);
* ``fig = figure(figsize=...)`` for ``plt.figure(...)``;
* ``save(fig, path, dpi=...)`` for ``fig.savefig(path)`` (atomic:
  :func:`~ffcv_dp4tl.fsutil.atomic_save_figure`); no ``plt.close(fig)`` is needed;
* ``colormap("tab10")`` for ``plt.get_cmap("tab10")``.

A leaf: it imports matplotlib inside its functions only (``dp4tl --help`` imports none)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .fsutil import atomic_save_figure

__all__ = ["colormap", "figure", "save", "subplots"]


def figure(figsize: tuple[float, float] | None = None, **figure_kw: Any) -> Any:
    """A new :class:`matplotlib.figure.Figure` on its own Agg canvas (``figure_kw``: the
    Figure's arguments: ``dpi``, ``layout``, ...), outside pyplot: the process's backend and
    pyplot's figures are untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **figure_kw)
    FigureCanvasAgg(fig)  # (sets fig.canvas: draws, measures text and saves without pyplot)
    return fig


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             sharex: bool | str = False, sharey: bool | str = False, squeeze: bool = True,
             width_ratios: Any = None, height_ratios: Any = None,
             subplot_kw: dict[str, Any] | None = None, gridspec_kw: dict[str, Any] | None = None,
             **figure_kw: Any) -> tuple[Any, Any]:
    """``plt.subplots`` without pyplot: ``(fig, axes)``, a grid of ``nrows`` x ``ncols`` axes
    on a :func:`figure` (``axes`` a single Axes or an array, as ``squeeze`` says)."""
    fig = figure(figsize, **figure_kw)
    axes = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=squeeze,
                        width_ratios=width_ratios, height_ratios=height_ratios,
                        subplot_kw=subplot_kw, gridspec_kw=gridspec_kw)
    return fig, axes


def save(fig: Any, path: str | os.PathLike, **savefig_kw: Any) -> Path:
    """Write ``fig`` to ``path`` (the format from its suffix; ``savefig_kw``: ``dpi``,
    ``bbox_inches``, ...) atomically: :func:`~ffcv_dp4tl.fsutil.atomic_save_figure`."""
    return atomic_save_figure(fig, path, **savefig_kw)


def colormap(name: str) -> Any:
    """The registered colormap ``name`` (``plt.get_cmap(name)`` without pyplot)."""
    import matplotlib

    return matplotlib.colormaps[name]
