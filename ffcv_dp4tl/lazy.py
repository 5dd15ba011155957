"""Package exports that load their module on first use (PEP 562).

Why: ``dp4tl --help`` and a mistyped option need none of torch, torchvision, numba or ffcv,
which take about 7 s to import on a 2-core machine. A package whose
``__init__`` imported every module eagerly made any ``from ffcv_dp4tl.data.masks import ...``
pay for all of them. With :func:`lazy_exports` a package lists what it exports and where each
name lives; the module is imported when the name is first read, and the name is then an
ordinary attribute.

A name may also be one of the package's modules' names, when the export is defined in the
module of that name (``ffcv_dp4tl.training.finetune``, the function, in ``training/finetune.py``).
Importing a submodule makes the import system bind it as an attribute of its package, which
would replace the export by the module for every later reader; such a package gets a module
class that declines that one binding (:class:`_KeepsExports`), so the attribute is the export,
as an eager ``from .finetune import finetune`` made it. ``from ffcv_dp4tl.training.finetune
import ...`` still finds the module; ``import ffcv_dp4tl.training.finetune as m`` binds the
function (as it did with the eager import): for the module itself use
``importlib.import_module("ffcv_dp4tl.training.finetune")``.

A package's modules are its attributes too (``ffcv_dp4tl.training.trainer`` after a plain
``import ffcv_dp4tl.training``), imported on first read as an eager ``__init__`` had them
imported already.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any, Callable


class _KeepsExports(types.ModuleType):
    """A package whose exports named like their own module stay the exports when the import
    system binds that module to the package (``_SHADOWED``: those names)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (isinstance(value, types.ModuleType) and name in self.__dict__.get("_SHADOWED", ())
                and value.__name__ == f"{self.__name__}.{name}"):
            return  # (the submodule stays in sys.modules; the name stays the export)
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` exporting ``name -> ".module"``.

    Use at the end of a package ``__init__``, after ``__all__`` (a literal list, as linters and
    type checkers read it) and the same imports under ``if TYPE_CHECKING:`` for editors:
    ``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)``. ``__all__`` must name exactly
    the exports: checked here, so a name added to one and not the other fails at import."""
    namespace = importlib.import_module(package).__dict__
    listed = set(namespace.get("__all__", ()))
    if listed != set(exports):
        raise ImportError(f"{package}: __all__ and the lazy exports differ: "
                          f"{sorted(listed ^ set(exports))}")
    shadowed = frozenset(n for n, mod in exports.items() if mod == f".{n}")
    if shadowed:
        namespace["_SHADOWED"] = shadowed
        sys.modules[package].__class__ = _KeepsExports

    def __getattr__(name: str) -> Any:
        if name not in exports:
            if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}"):
                return importlib.import_module(f"{package}.{name}")  # (a module of the package)
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value  # (once: later reads find it without this function)
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
