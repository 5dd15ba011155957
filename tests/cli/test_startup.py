"""``dp4tl`` answers at once where it does no work: every command's ``--help`` and a mistyped
option come back without importing torch, torchvision, numba, ffcv or PIL (about 7 s on a
2-core machine before the package exports became lazy: ``ffcv_dp4tl.lazy``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "numba", "ffcv", "PIL", "webdataset", "cupy", "scipy", "matplotlib")

#: a fresh interpreter walks every command and sub-command, asks each for --help, then sends a
#: mistyped option to the first, and says what it ran, what exited how, and what it imported
_PROBE = """
import json, sys
import typer.main
from typer.testing import CliRunner
from ffcv_dp4tl.cli import app

def paths(cmd, prefix=()):
    yield prefix
    if hasattr(cmd, "commands"):  # (a group)
        for name, sub in sorted(cmd.commands.items()):
            if not sub.hidden:
                yield from paths(sub, (*prefix, name))

runner = CliRunner()
ran = {}
for p in paths(typer.main.get_command(app)):
    r = runner.invoke(app, [*p, "--help"])
    ran[" ".join(p)] = [r.exit_code, "Usage" in r.output, len(r.output)]
typo = runner.invoke(app, ["pipeline", "--ratoi", "0.6"])
ran["pipeline --ratoi"] = [typo.exit_code, "No such option" in typo.output, len(typo.output)]
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
print(json.dumps({"ran": ran, "heavy": heavy}))
""" % (HEAVY,)


def test_every_commands_help_and_a_typo_import_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ran = got["ran"]
    # the walk saw the command tree (top level, a group and its commands), each answering its help
    assert {"", "pipeline", "bench", "bench cost-table", "score", "train", "mask", "mask files"} <= set(ran), sorted(ran)
    assert all(code == 0 and usage for code, usage, _ in
               (v for k, v in ran.items() if k != "pipeline --ratoi")), ran
    assert ran["pipeline --ratoi"][:2] == [2, True], ran
    assert got["heavy"] == [], f"imported for --help: {got['heavy']}"


#: commands that read files only: listing and showing recipes (a bad override too) and the
#: docs, and re-rendering a published table from its results.json (matplotlib, with PIL, draws its plots;
#: scipy gives the tables' bounds): none needs torch, ffcv or a kernel library
_READERS = """
import json, sys
from typer.testing import CliRunner
from ffcv_dp4tl.cli import app

runner = CliRunner()
ran = {}
for args in (["recipes"], ["recipes", "resnet18_bench_cpu", "--set", "train.epochs=3"],
             ["recipes", "resnet18_bench_cpu", "--set", "train.epochz=3"],
             ["docs"], ["docs", "scorers"], ["bench", "render", sys.argv[1]]):
    r = runner.invoke(app, args)
    ran[" ".join(args[:2])] = ran.get(" ".join(args[:2]), []) + [[r.exit_code, r.output]]
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
print(json.dumps({"ran": ran, "heavy": heavy}))
""" % (tuple(h for h in HEAVY if h not in ("matplotlib", "PIL", "scipy")),)  # (plots, stats)


def test_reading_recipes_and_rendering_a_table_import_no_torch(tmp_path):
    """``dp4tl recipes``, ``dp4tl docs`` and ``bench render`` read files: they imported torch (about 7 s) through
    the training package's eager exports, the recipe's image constants and the scoring stage's
    process-state guard. A published cost table is rendered again from its results.json."""
    import shutil

    out = tmp_path / "table"
    shutil.copytree(REPO / "docs" / "no-loss" / "paper", out)
    (out / "report.md").unlink()
    proc = subprocess.run([sys.executable, "-c", _READERS, str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    ran = got["ran"]
    assert ran["recipes"][0][0] == 0 and "recipes in" in ran["recipes"][0][1]
    (shown, bad) = ran["recipes resnet18_bench_cpu"]
    assert shown[0] == 0 and "epochs = 3" in shown[1]
    assert bad[0] != 0  # (its one-line message goes to the real stderr)
    assert ran["docs"][0][0] == 0 and "pages in" in ran["docs"][0][1]
    assert ran["docs scorers"][0][0] == 0 and ran["docs scorers"][0][1].startswith("# Scoring")
    assert ran["bench render"][0][0] == 0 and (out / "report.md").is_file()
    assert got["heavy"] == [], f"imported to read files: {got['heavy']}"
