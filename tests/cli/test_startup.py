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
