"""The benches draw their figures without touching the user's matplotlib: no backend chosen,
no figure left in pyplot's list (``ffcv_dp4tl.figures``). They called ``matplotlib.use("Agg")``
and drew through pyplot, so a notebook that rendered a table lost its inline plots (figures
audit)."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ffcv_dp4tl.cli import app

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ffcv_dp4tl"


@pytest.mark.parametrize("published, figure", [
    ("docs/cost-table", "cost.png"),  # plot_accuracy and plot_cost
    ("docs/ablations/fig-a5-targets", "accuracy-targets.png"),  # plot_targets
    ("docs/embedded-benchmark/replicate-seeds-20-29", "paired.png"),  # separation.plot_tests
])
def test_a_render_leaves_the_users_matplotlib_as_it_was(tmp_path, published, figure):
    import matplotlib
    import matplotlib.pyplot as plt

    out = tmp_path / "out"
    shutil.copytree(REPO / published, out)
    (out / figure).unlink()
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        figures = plt.get_fignums()
        res = CliRunner().invoke(app, ["bench", "render", str(out), "--report", ""])
        assert res.exit_code == 0, res.output
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == figures
    finally:
        matplotlib.use(before)


def _draws_through_pyplot(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "matplotlib" and any(
                a.name == "pyplot" for a in node.names):
            found.append(f"{path.name}:{node.lineno} from matplotlib import pyplot")
        elif isinstance(node, ast.Import) and any(a.name == "matplotlib.pyplot" for a in node.names):
            found.append(f"{path.name}:{node.lineno} import matplotlib.pyplot")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "use" and isinstance(node.func.value, ast.Name)
              and node.func.value.id == "matplotlib"):
            found.append(f"{path.name}:{node.lineno} matplotlib.use(...)")
    return found


def test_no_module_of_the_package_chooses_a_backend_or_draws_through_pyplot():
    """One rule for figures: :mod:`ffcv_dp4tl.figures` (a Figure on its own Agg canvas)."""
    found = [hit for p in sorted(PACKAGE.rglob("*.py")) for hit in _draws_through_pyplot(p)]
    assert found == []
