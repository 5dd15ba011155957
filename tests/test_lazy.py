"""``ffcv_dp4tl.lazy``: every package that exports its names lazily resolves each of them to the
object its module defines, and lists it (one test over every such package and name, as timm
runs its model tests over ``list_models()``)."""
from __future__ import annotations

from importlib import import_module

import pytest

#: the packages whose ``__init__`` uses ``lazy_exports``
LAZY_PACKAGES = ("ffcv_dp4tl.data", "ffcv_dp4tl.pipeline", "ffcv_dp4tl.scoring", "ffcv_dp4tl.training")


def test_the_list_is_every_lazy_package():
    from pathlib import Path

    root = Path(import_module("ffcv_dp4tl").__file__).parent
    found = {"ffcv_dp4tl." + p.parent.name for p in root.glob("*/__init__.py")
             if "lazy_exports(__name__" in p.read_text()}
    assert found == set(LAZY_PACKAGES)


@pytest.mark.parametrize("package, name", [(p, n) for p in LAZY_PACKAGES
                                           for n in import_module(p).__all__])
def test_every_export_is_the_object_its_module_defines(package, name):
    pkg = import_module(package)
    module = import_module(pkg._EXPORTS[name], package)
    assert getattr(pkg, name) is getattr(module, name)
    assert name in dir(pkg)
