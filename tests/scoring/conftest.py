"""Shared fixtures for the scoring tests; registers the ``gpu`` marker."""
from __future__ import annotations

import numpy as np
import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs CuPy and a CUDA device (skipped otherwise)")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
