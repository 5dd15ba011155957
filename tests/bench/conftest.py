"""Shared fixtures of the bench tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib Figures a plotting function saves, in order (they stay readable after
    ``plt.close``): the tests assert on colours, titles, line data and legend places, not on
    pixels."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def record(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures
