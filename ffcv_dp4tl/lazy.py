"""Package exports that load their module on first use (PEP 562).

Why: ``dp4tl --help`` and a mistyped option need none of torch, torchvision, numba or ffcv,
which take about 7 s to import on a 2-core machine. A package whose
``__init__`` imported every module eagerly made any ``from ffcv_dp4tl.data.masks import ...``
pay for all of them. With :func:`lazy_exports` a package lists what it exports and where each
name lives; the module is imported when the name is first read, and the name is then an
ordinary attribute.

A package may not lazily export a name that is also one of its modules' names: once anything
imports that module, the package attribute is the module, whatever was exported
(``ffcv_dp4tl.training`` keeps its eager imports for ``finetune`` for that reason).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


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

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value  # (once: later reads find it without this function)
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
