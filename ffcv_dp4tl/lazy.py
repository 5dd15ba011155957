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

**Heavy imports** go through :func:`guarded_import` (a lazy export's module, which may import
torch, and :func:`import_ffcv`, the one place ffcv is first imported): a Ctrl-C during those
seconds waits until the import is complete (a ``KeyboardInterrupt`` cut torch's or numba's
import short and left half-initialized modules in ``sys.modules``, so the next library call
failed with ``partially initialized module 'torch'``; API audit), except in the ``dp4tl``
command, which ends on Ctrl-C and so has it raise at once (:func:`interrupts_cut_imports`), and
importing ffcv leaves torch's and numba's thread counts as they were (ffcv's import sets both
to 1).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import signal
import sys
import threading
import types
from typing import Any, Callable, Iterator


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
        value = getattr(guarded_import(exports[name], package), name)
        namespace[name] = value  # (once: later reads find it without this function)
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__


def _imported(name: str) -> types.ModuleType | None:
    """``sys.modules[name]`` when its import is complete (None while it runs, or before)."""
    module = sys.modules.get(name)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Within the block, SIGINT (Ctrl-C, ``_thread.interrupt_main``) is held; once the block
    ends, a held one is raised again under the handler that was there before (Python's:
    ``KeyboardInterrupt``), after the block's work, never within it. Only in the main thread
    (signal handlers live there; another thread's block runs as it is), and only where the
    handler is Python's to change (one installed from C, ``None``, is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    held: list[int] = []
    if previous is None:
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # (its handler runs here: KeyboardInterrupt)


@contextlib.contextmanager
def threads_kept() -> Iterator[None]:
    """torch's CPU thread count and numba's (this thread's) are the same after the block as
    before it, where those modules are imported already (read nothing otherwise: importing
    them is not this function's business). The one rule for them: around ffcv's import, an
    ffcv loader's construction, and a call of ``train``, ``finetune`` or ``score``
    (``training.process_state``)."""
    counts = _thread_counts()
    try:
        yield
    finally:
        _restore_thread_counts(counts)


def _thread_counts() -> tuple[int | None, int | None]:
    """torch's and numba's thread counts, None for a module not imported yet."""
    torch, numba = _imported("torch"), _imported("numba")
    return (torch.get_num_threads() if torch is not None else None,
            numba.get_num_threads() if numba is not None else None)


def _restore_thread_counts(counts: tuple[int | None, int | None]) -> None:
    torch, numba = _imported("torch"), _imported("numba")
    if counts[0] is not None and torch is not None and torch.get_num_threads() != counts[0]:
        torch.set_num_threads(counts[0])
    if counts[1] is not None and numba is not None and numba.get_num_threads() != counts[1]:
        numba.set_num_threads(counts[1])


_OVERLAPPING = {"depth": 0, "counts": (None, None)}
_OVERLAPPING_LOCK = threading.Lock()


@contextlib.contextmanager
def threads_kept_overlapping() -> Iterator[None]:
    """:func:`threads_kept` for blocks that may overlap without nesting, as the epochs of two
    loaders iterated in turn (``a = iter(train); next(a); b = iter(val); next(b)``, ``a`` ends
    first): the caller's counts are read when the first such block starts and restored when
    the last one ends. Each block restoring its own snapshot left the first loader's worker
    count set for the rest of the process (review)."""
    with _OVERLAPPING_LOCK:
        if _OVERLAPPING["depth"] == 0:
            _OVERLAPPING["counts"] = _thread_counts()
        _OVERLAPPING["depth"] += 1
    try:
        yield
    finally:
        with _OVERLAPPING_LOCK:
            _OVERLAPPING["depth"] -= 1
            if _OVERLAPPING["depth"] == 0:
                _restore_thread_counts(_OVERLAPPING["counts"])


#: whether a Ctrl-C during a heavy import waits for the import's end (True: library use, where
#: the process goes on after the ``KeyboardInterrupt`` and needs whole modules) or raises at once
#: (:func:`interrupts_cut_imports`: a process that ends on it)
_IMPORTS = {"hold_interrupts": True}


def interrupts_cut_imports() -> None:
    """From now on in this process, a Ctrl-C during a heavy import (:func:`guarded_import`,
    :func:`import_ffcv`) raises ``KeyboardInterrupt`` at once, as anywhere else. For a process
    that ends on it: the ``dp4tl`` command (``__main__.main``) prints its one line and exits,
    and no code after the interrupt reads a half-imported module. Holding the interrupt there
    made a Ctrl-C in a build's first beton write end the build ~5 s after it (the rest of
    ffcv's import, which compiles with numba), not the ~0.3 s it took before imports held it."""
    _IMPORTS["hold_interrupts"] = False


def _import_guard() -> contextlib.AbstractContextManager[None]:
    """What a heavy import runs under: SIGINT held (library use) or not (the command)."""
    return sigint_deferred() if _IMPORTS["hold_interrupts"] else contextlib.nullcontext()


def guarded_import(name: str, package: str | None = None) -> types.ModuleType:
    """``importlib.import_module(name, package)`` with SIGINT deferred until the import is
    complete (:func:`sigint_deferred`): the module the first library call imports (torch, numba
    and ffcv take seconds) is whole in ``sys.modules`` whenever Ctrl-C comes, and the
    interrupt is then raised as ``KeyboardInterrupt``; in a process that ends on Ctrl-C
    (:func:`interrupts_cut_imports`) it raises at once. Cheap once the module is imported."""
    full = importlib.util.resolve_name(name, package) if name.startswith(".") else name
    module = _imported(full)
    if module is not None:
        return module
    with _import_guard():
        return importlib.import_module(full)


def import_ffcv() -> types.ModuleType:
    """``import ffcv``, through :func:`guarded_import`, leaving torch's and numba's thread
    counts as they were (ffcv's ``Compiler.set_num_threads(1)`` at import set both to 1 for the
    rest of the process: a notebook's next CPU work ran on one thread; API audit). Call it
    before any ``from ffcv... import``: the first one imports the whole package here."""
    module = _imported("ffcv")
    if module is not None:
        return module
    with _import_guard():
        guarded_import("torch")
        guarded_import("numba")
        with threads_kept():
            return guarded_import("ffcv")
