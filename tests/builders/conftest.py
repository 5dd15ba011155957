"""Fixtures shared by the builder's tests."""
from __future__ import annotations

import pytest

from beton_builders import BuildOptions, build_dataset

try:  # rootdir-relative import (no tests/__init__.py) or package-relative
    from tiny_builds import OPTS, mem_spec
except ImportError:  # pragma: no cover
    from .tiny_builds import OPTS, mem_spec  # type: ignore[no-redef]


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    """Same input built twice (serial and with 2 workers), once with one image changed."""
    base = tmp_path_factory.mktemp("writer")
    a, b, c = base / "a", base / "b", base / "c"
    summary = build_dataset(mem_spec(), a, OPTS, source="mem")
    build_dataset(mem_spec(), b, BuildOptions(**{**OPTS.__dict__, "workers": 2}), source="mem")
    build_dataset(mem_spec(changed=21), c, OPTS, source="mem")
    return {"a": a, "b": b, "c": c, "summary": summary}
