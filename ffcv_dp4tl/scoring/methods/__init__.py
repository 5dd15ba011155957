"""The built-in scoring methods, one module each; every module here is imported (and so
registered) on first use of the registry: adding a method = adding a file to this folder."""
from __future__ import annotations

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
