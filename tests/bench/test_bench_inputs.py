"""Bad input to `dp4tl bench ...` (a sweep of ~230 cases, 2026-12-04): each case below ran work
or wrote files before; now it is one `error:` line before any run, and nothing is written."""
from __future__ import annotations

import json
import re

import pytest

from cli_runner import cli, one_line
from ffcv_dp4tl.bench import separation as sep
from ffcv_dp4tl.errors import DP4TLError

REFUSED = [
    # (arguments after `dp4tl bench`, what the line must say)
    (["cost-table", "--methods", "random@"], "'random@' must look like METHOD@R1/R2"),  # ran nothing
    (["cost-table", "--methods", "random", "--ratios", "0"], "no pruned ratio (above 0) to run"),
    (["cost-table", "--methods", "random", "--ratios", "0,1e-9"], "within 1e-6 of 0"),  # became 0
    (["cost-table", "--methods", "random", "--ratios", "0,0.9999999"], "within 1e-6 of 1"),
    (["cost-table", "--methods", "random,random"], "--methods lists 'random' twice"),  # deduplicated
    # the last entry won and the other's runs were dropped in silence
    (["cost-table", "--methods", "random@0.6,random@0.3", "--ratios", "0,0.6"],
     "--methods lists 'random' twice (random@0.6, random@0.3)"),
    (["cost-table", "--methods", "random,random@0.3"], "--methods lists 'random' twice"),
    (["cost-table", "--methods", "random", "--orders", "reversed,reversed"],
     "--orders lists 'reversed' twice; list each once"),  # deduplicated (audit)
    (["cost-table", "--methods", "random", "--ks", "16"], "--ks 16: none of the methods (random) "
                                                          "clusters"),
    (["cost-table", "--methods", "random", "--ff-methods", "random", "--finetune", "lp"],
     "--finetune lp runs no FF"),
    (["cost-table", "--methods", "random", "--seeds", "99999999999999999999"],
     "seeds are integers from 0 to 4294967295"),  # torch overflowed at pretraining
    (["cost-table", "--methods", "random", "--target", ","], "',' names no target"),
    (["cost-table", "--methods", "random", "--section", ""], "a section title is one non-empty line"),
    (["cost-table", "--methods", "random", "--section", "A\n## B"], "one non-empty line"),
    (["embedded", "--methods", "random"], "random is the baseline every method is paired with"),
    (["embedded", "--seeds", "0", "--reference-seeds", "5"], "--reference-seeds: 5 is not among "
                                                             "--seeds"),  # never ran
    (["embedded", "--ratios", "1"], "--ratios must lie in (0, 1) (RANDOM and each method"),
    (["embedded", "--ratios", "0"], "--ratios must lie in (0, 1) (RANDOM and each method"),
    (["surrogates", "--ratio", "1"], "--ratio must lie in (0, 1)"),
    (["surrogates", "--ratios", "1.5"], "--ratios must lie in (0, 1)"),
    (["surrogates", "--archs", "vgg2,nope"], "--archs: unknown model 'nope'"),
    (["surrogates", "--archs", "vgg2,vgg2"], "lists an architecture twice"),  # trained twice
    (["adversarial", "--ratio", "0"], "--ratio must lie in (0, 1)"),
    (["adversarial", "--section", " "], "one non-empty line"),
]


BEFORE_THE_DATA = [
    # each was refused only after the whole source (and its targets) was built (audit: 67
    # files, 14-37 s with synth:tiny; hours with ImageNet as the source)
    (["cost-table", "--methods", "random", "--set", "nope.x=1"], "--set nope.x=1: unknown section [nope]"),
    (["adversarial", "--method", "nope"], "unknown scoring method 'nope'"),
    (["adversarial", "--step-size", "abc"], "--step-size must be a number or a fraction such as "
                                            "3/255, got 'abc'"),
    (["embedded", "--methods", "nope", "--targets", "blur"], "unknown scoring method 'nope'"),
    (["adversarial", "--set-finetune", "optim.lr=1"], "--set-finetune optim.lr=1: unknown key optim.lr"),
    # duplicates merged in silence, where every other list refuses one (audit)
    (["cost-table", "--methods", "fm", "--ks", "8,8"], "--ks lists 8 twice; list each once"),
]


@pytest.mark.parametrize("args,needle", REFUSED + BEFORE_THE_DATA,
                         ids=[" ".join(a) for a, _ in REFUSED + BEFORE_THE_DATA])
def test_bad_bench_input_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, monkeypatch, "bench", *args, "--out", tmp_path / "out",
                       "--runs-root", tmp_path / "runs", "--data-root", tmp_path / "data",
                       "--report", "")
    one_line(code, err, needle)
    assert not any((tmp_path / d).exists() for d in ("out", "runs", "data"))


@pytest.mark.parametrize("methods", ["lm,lm@0.3", "lm@0.6,lm@0.3", "lm@0.6,lm", "fm[k=8]@0.4,fm[k=8]"])
def test_a_method_named_twice_with_or_without_ratios_is_refused_as_lm_lm_is(methods):
    """``lm@0.6,lm@0.3 --ratios 0,0.6`` planned 2 runs without a word: each entry replaced the
    ratios of the one before (audit). Other variants of a method are other entries."""
    from ffcv_dp4tl.bench.variants import plan_methods

    head = methods.split(",")[0].partition("@")[0]
    with pytest.raises(DP4TLError, match=rf"^--methods lists '{re.escape(head)}' twice \(") as e:
        plan_methods(methods)
    assert "list each once, its ratios in one entry" in str(e.value) and "\n" not in str(e.value)
    assert plan_methods("lm@0.3/0.6,fm,fm[k=8]@0.4") == (
        ["lm", "fm", "fm[k=8]"], {"lm": [0.3, 0.6], "fm[k=8]": [0.4]})


def _report_cases(tmp_path):
    binary = tmp_path / "bin.md"
    binary.write_bytes(b"\xf9\xfa# not text")
    read_only = tmp_path / "ro.md"
    read_only.write_text("# mine\n")
    read_only.chmod(0o444)
    (tmp_path / "afile").write_text("x")
    return [(binary, "is not UTF-8 text"), (read_only, "is read-only"),
            (tmp_path / "afile" / "B.md", "afile is a file, so no file can be made there")]


def test_a_report_that_cannot_take_a_section_is_refused_before_the_bench(tmp_path, capsys,
                                                                          monkeypatch):
    """A --report that is not UTF-8 crashed after the whole bench had run; a read-only one was
    replaced (the folder was writable) and made writable; a file in its path was named as if
    it were the --report itself."""
    for report, needle in _report_cases(tmp_path):
        before = report.read_bytes() if report.is_file() else None
        code, _, err = cli(capsys, monkeypatch, "bench", "embedded-pool", tmp_path / "a",
                           tmp_path / "b", "--out", tmp_path / "pooled", "--report", report)
        one_line(code, err, needle)
        assert not (tmp_path / "pooled").exists()
        if before is not None:
            assert report.read_bytes() == before


def test_a_replaced_file_keeps_its_mode(tmp_path):
    """An atomic replace keeps the mode of the file it replaces (a group-writable report stays
    so), and a new file gets the umask's."""
    import os
    import stat

    from ffcv_dp4tl.reporting import write_section

    path = tmp_path / "B.md"
    path.write_text("# B\n")
    path.chmod(0o664)
    write_section(path, "S", "body")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o664 and "## S" in path.read_text()


# ------------------------------------------------------------------ output folders
def _fill(folder, kind):
    folder.mkdir(parents=True)
    if kind == "embedded":
        (folder / "rows.jsonl").write_text("")
        (folder / "README.md").write_text("the run's record")
    elif kind == "embedded-pool":
        (folder / "summary.json").write_text("{}")
    else:
        (folder / "results.json").write_text(json.dumps({"bench": kind}))
    return folder


def test_benches_refuse_another_bench_folder_before_any_run(tmp_path, capsys, monkeypatch):
    surrogates = _fill(tmp_path / "sur", "surrogates")
    before = (surrogates / "results.json").read_text()
    code, _, err = cli(capsys, monkeypatch, "bench", "cost-table", "--methods", "random",
                       "--ratios", "0,0.5", "--out", surrogates, "--runs-root", tmp_path / "runs",
                       "--data-root", tmp_path / "data", "--report", "")
    one_line(code, err, "holds a surrogates report (written by `dp4tl bench surrogates`)")
    run = _fill(tmp_path / "run", "embedded")
    for args in ((), ("--report", "")):
        code, _, err = cli(capsys, monkeypatch, "bench", "embedded-pool", tmp_path / "a",
                           tmp_path / "b", "--out", run, *args)
        one_line(code, err, "holds an embedded-benchmark run (written by `dp4tl bench embedded`)")
    assert (surrogates / "results.json").read_text() == before
    assert (run / "README.md").read_text() == "the run's record"
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ rows.jsonl and pooling
def _run(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        sep.append_row(folder / "rows.jsonl", {**r, "settings_key": "k"})
    return folder


def _design(seeds, truth=True, lp=50.0):
    rows = []
    for s in seeds:
        for m in ("random", "lm"):
            rows.append({"seed": s, "target": "warm", "method": m, "ratio": 0.8, "lp": lp,
                         "truth": {"related_samples": 0.5, "chance": 0.3} if truth else None})
    return rows


def test_rows_of_the_wrong_type_or_encoding_are_one_line_naming_the_file(tmp_path):
    """A string accuracy was a TypeError deep in the summary; a non-UTF-8 file a
    UnicodeDecodeError; a folder named rows.jsonl 'does not exist'."""
    a = _run(tmp_path / "a", _design([0, 1]))
    b = _run(tmp_path / "b", [{**r, "lp": "50"} for r in _design([2, 3])])
    with pytest.raises(DP4TLError, match=r"b.rows.jsonl line 1: field 'lp' must be a percentage in "
                                         r"\[0, 100\], got '50'"):
        sep.pool_rows([a, b])
    c = tmp_path / "c"
    c.mkdir()
    (c / "rows.jsonl").write_bytes(b'{"seed": 2, "target": "\xf9"}\n')
    with pytest.raises(DP4TLError, match=r"c.rows.jsonl is not UTF-8 text"):
        sep.pool_rows([a, c])
    d = tmp_path / "d"
    (d / "rows.jsonl").mkdir(parents=True)
    with pytest.raises(DP4TLError, match=r"d.rows.jsonl is not a file"):
        sep.pool_rows([a, d])


@pytest.mark.parametrize("first,second,needle", [
    (True, False, "4 of its 4 pruned runs have no ground truth .* while the folders before it"),
    (False, True, "its runs have ground truth .* but the folders before it have none"),
])
def test_pooling_refuses_runs_with_and_without_ground_truth(tmp_path, first, second, needle):
    """The ground-truth table averaged the runs that had it, so its n was not the verdict's."""
    a = _run(tmp_path / "a", _design([0, 1], truth=first))
    b = _run(tmp_path / "b", _design([2, 3], truth=second))
    with pytest.raises(DP4TLError, match=needle):
        sep.pool_rows([a, b])
    mixed = _run(tmp_path / "m", _design([4], truth=True) + _design([5], truth=False))
    with pytest.raises(DP4TLError, match="2 of its 4 pruned runs have no ground truth .* while "
                                         "its other runs have it"):
        sep.pool_rows([mixed, a if first else b])
    assert sep.pool_rows([a if first else b, _run(tmp_path / "c", _design([6, 7]))])[0]


def test_render_of_a_results_file_without_its_settings_changes_nothing(tmp_path):
    """A results.json without its run's ``config``/``machine`` (hand-made, or cut down) was
    rewritten, then the plot crashed on it, and every rerun crashed the same way."""
    import ffcv_dp4tl.bench.cost_table as ct
    from ffcv_dp4tl.bench.stats import REFERENCE

    rows = [{"method": m, "ratio": r, "seed": 0, "total_s": 1.0, "pretrain_s": 1.0,
             **dict.fromkeys(("surrogate_s", "score_s", "prune_s", "selection_s"), 0.0),
             "lp_top1": 50.0, "lp_best_top1": 50.0, "ff_top1": None, "ff_best_top1": None}
            for m, r in ((REFERENCE, 0.0), ("lm", 0.6))]
    text = json.dumps({"rows": rows, "methods": ["lm"], "ratios": [0.0, 0.6], "seeds": [0],
                       "finetune": ["lp"]})
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(DP4TLError, match=r"results.json has no 'config' object .*rerun the cost "
                                         r"table"):
        ct.rerender(tmp_path)
    assert (tmp_path / "results.json").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]




@pytest.mark.parametrize("eps,hint", [("8", True), ("255", True), ("1e30", False), ("300", False),
                                      ("3/2", False)])
def test_an_eps_above_1_is_given_the_255_spelling_only_when_it_reads_as_a_pixel_value(eps, hint):
    """--eps 1e30 was told "for 1e30/255 pass --eps 1e30/255": no pixel value is 1e30."""
    from ffcv_dp4tl.bench.adversarial import adv_overrides

    with pytest.raises(DP4TLError) as e:
        adv_overrides(eps=eps)
    msg = str(e.value)
    assert msg.startswith(f"--eps {eps} is in [0, 1] pixel units for linf"), msg
    assert (f"pass --eps {eps}/255" in msg) is hint, msg
    assert hint or "give a number in (0, 1] or a fraction such as 8/255" in msg, msg
