"""``ffcv_dp4tl.lazy``: every package that exports its names lazily resolves each of them to the
object its module defines, and lists it (one test over every such package and name, as timm
runs its model tests over ``list_models()``)."""
from __future__ import annotations

from importlib import import_module

import pytest

#: the packages whose ``__init__`` uses ``lazy_exports``
LAZY_PACKAGES = ("ffcv_dp4tl.data", "ffcv_dp4tl.pipeline", "ffcv_dp4tl.scoring", "ffcv_dp4tl.training",
                 "beton_builders")


def test_the_list_is_every_lazy_package():
    from pathlib import Path

    root = Path(import_module("ffcv_dp4tl").__file__).parent
    found = {"ffcv_dp4tl." + p.parent.name for p in root.glob("*/__init__.py")
             if "lazy_exports(__name__" in p.read_text()}
    found |= {"beton_builders"} if "lazy_exports(__name__" in (
        root.parent / "beton_builders" / "__init__.py").read_text() else set()
    assert found == set(LAZY_PACKAGES)


@pytest.mark.parametrize("package, name", [(p, n) for p in LAZY_PACKAGES
                                           for n in import_module(p).__all__])
def test_every_export_is_the_object_its_module_defines(package, name):
    pkg = import_module(package)
    module = import_module(pkg._EXPORTS[name], package)
    assert getattr(pkg, name) is getattr(module, name)
    assert name in dir(pkg)


# ------------------------------------------------------------- Ctrl-C during a heavy import
SLOW_MODULE = '''
import signal, time
signal.raise_signal(signal.SIGINT)  # Ctrl-C in the middle of the import
time.sleep(0.05)
WHOLE = True
'''


def _fake_package(tmp_path, monkeypatch, name):
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from ffcv_dp4tl.lazy import lazy_exports\n"
        "__all__ = ['WHOLE']\n"
        "_EXPORTS = {'WHOLE': '.slow'}\n"
        "__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)\n")
    (pkg / "slow.py").write_text(SLOW_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_ctrl_c_during_a_lazy_exports_import_comes_after_it_with_the_module_whole(
        tmp_path, monkeypatch):
    import sys

    _fake_package(tmp_path, monkeypatch, "dp4tl_fake_heavy")
    import dp4tl_fake_heavy

    with pytest.raises(KeyboardInterrupt):
        dp4tl_fake_heavy.WHOLE
    assert sys.modules["dp4tl_fake_heavy.slow"].WHOLE is True  # (complete, not half-imported)
    assert dp4tl_fake_heavy.WHOLE is True  # the next read works


def test_guarded_import_raises_an_interrupt_from_interrupt_main_after_the_import(
        tmp_path, monkeypatch):
    import signal
    import sys

    from ffcv_dp4tl.lazy import guarded_import

    (tmp_path / "dp4tl_fake_slow2.py").write_text(
        "import _thread, time\n_thread.interrupt_main()\ntime.sleep(0.05)\nWHOLE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        guarded_import("dp4tl_fake_slow2")
    assert sys.modules["dp4tl_fake_slow2"].WHOLE is True
    assert signal.getsignal(signal.SIGINT) is handler  # (the caller's handler is back)


def test_in_a_process_that_ends_on_ctrl_c_it_cuts_the_import_short(tmp_path, monkeypatch):
    """The dp4tl command (``interrupts_cut_imports``) exits on Ctrl-C: it is raised at once,
    not after the seconds the rest of the import takes."""
    import sys

    from ffcv_dp4tl import lazy

    monkeypatch.setitem(lazy._IMPORTS, "hold_interrupts", True)  # (restored after the test)
    lazy.interrupts_cut_imports()
    (tmp_path / "dp4tl_fake_slow3.py").write_text(SLOW_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        lazy.guarded_import("dp4tl_fake_slow3")
    assert "dp4tl_fake_slow3" not in sys.modules  # (cut short: Python drops a failed import)


def test_the_dp4tl_command_has_ctrl_c_cut_imports_short():
    import subprocess
    import sys

    code = ("import ffcv_dp4tl.cli as cli, ffcv_dp4tl.lazy as lazy, ffcv_dp4tl.__main__ as m\n"
            "cli.main = lambda: print('held' if lazy._IMPORTS['hold_interrupts'] else 'cut')\n"
            "m.main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, "cut", "")
