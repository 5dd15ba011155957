"""ffcv_dp4tl.training as a library: ``finetune`` stays the function although a module has that
name, and reading a recipe imports no torch (every export resolves: tests/test_lazy.py)."""
from __future__ import annotations

import subprocess
import sys


def test_finetune_stays_the_function_after_its_module_is_imported():
    """Importing ``ffcv_dp4tl.training.finetune`` (the module: the pipeline does, for its
    finetune stage) binds the module to the package's ``finetune`` attribute, which would make
    ``from ffcv_dp4tl.training import finetune`` the module for the rest of the process: a
    lazy export must keep the function, as the eager import did. A fresh interpreter; reading a
    recipe imports no torch."""
    code = ("import sys, types\n"
            "from ffcv_dp4tl.training.recipe import load_recipe\n"
            "load_recipe('resnet18_bench_cpu')\n"
            "assert 'torch' not in sys.modules\n"
            "from ffcv_dp4tl.training.finetune import load_pretrained\n"
            "from ffcv_dp4tl.training import finetune\n"
            "import ffcv_dp4tl.training as t\n"
            "assert callable(finetune) and not isinstance(finetune, types.ModuleType)\n"
            "assert t.finetune is finetune and finetune.__module__ == 'ffcv_dp4tl.training.finetune'\n"
            "assert isinstance(sys.modules['ffcv_dp4tl.training.finetune'], types.ModuleType)\n"
            "t.other = 1\n"  # (any other attribute is set as usual)
            "assert t.other == 1\n"
            # its other modules are attributes, as after the eager imports (review)
            "assert t.trainer is sys.modules['ffcv_dp4tl.training.trainer']\n"
            "assert isinstance(t.engine, types.ModuleType)\n"
            "assert not hasattr(t, 'no_such_module')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
