"""benchmarks/compare_tables.py: one method's accuracy in two cost tables, paired by seed."""
from __future__ import annotations

import json

import pytest
from repo_scripts import load_script

cmp = load_script("benchmarks/compare_tables.py")

NOISE = [0.5, -0.5, 0.25, -0.25, 0.0, 0.75, -0.75, 0.1]


def _table(shift: dict[float, float], criterion: str = "final") -> dict:
    rows = []
    times = {f"{k}_s": 1.0 for k in ("surrogate", "score", "prune", "pretrain", "total",
                                      "selection")}
    for s in range(8):
        rows.append({"method": "0 %", "ratio": 0.0, "seed": s, "lp_top1": 80.0 + s,
                     "lp_best_top1": 81.0 + s, **times})
        for ratio, d in shift.items():
            acc = 70.0 + s + d + (NOISE[s] if d else 0.0)
            rows.append({"method": "lm", "ratio": ratio, "seed": s, "lp_top1": acc,
                         "lp_best_top1": acc + 1, **times})
    return {"bench": "cost-table", "rows": rows, "finetune": ["lp"], "methods": ["lm"],
            "ratios": [0.0, *shift], "seeds": list(range(8)), "criterion": criterion}


def test_a_shift_is_found_and_none_is_claimed_where_there_is_none():
    """B is 3 points above A at 60 % on every seed (with noise) and equal at 80 %: the first
    cell reads better after Holm, the second shows no difference; the shared references are
    named as the same runs."""
    res = cmp.compare(_table({0.6: 0.0, 0.8: 0.0}), _table({0.6: 3.0, 0.8: 0.0}), "lm")
    (c60, c80) = res["cells"]
    assert c60["ratio"] == 0.6 and c60["test"]["mean"] == pytest.approx(3.0 + sum(NOISE) / 8)
    assert c60["test"]["wins"] == 8 and c60["verdict"] == "better"
    assert c80["test"]["mean"] == 0 and c80["verdict"] == "no difference shown"
    text = cmp.markdown(res, ("epochs", "steps"), ("a", "b"))
    assert "| LP | 60 % |" in text and "better |" in text
    assert "the same runs in both tables (8 seeds" in text


def test_different_references_and_criteria_are_said_or_refused():
    b = _table({0.6: 1.0})
    for r in b["rows"]:
        if r["method"] == "0 %":
            r["lp_top1"] += 2.0
    text = cmp.markdown(cmp.compare(_table({0.6: 0.0}), b, "lm"), ("A", "B"), ("a", "b"))
    assert "**differs** between the tables (up to 2.00 points" in text
    with pytest.raises(cmp.DP4TLError, match="criterion final vs best"):
        cmp.compare(_table({0.6: 0.0}), _table({0.6: 0.0}, "best"), "lm")
    with pytest.raises(cmp.DP4TLError, match=r"no pruned ratio of method 'fm' in both tables \(A: none \(methods: lm\)"):
        cmp.compare(_table({0.6: 0.0}), _table({0.6: 0.0}), "fm")


def test_only_what_both_tables_ran_is_compared_and_nan_is_counted_apart():
    """A method or a ratio that one table lacks gave an empty cell reading "no difference
    shown" (review); a diverged run's NaN printed "nan" means over other seeds than the test's,
    and the same NaN reference in both tables read as "differs ... up to nan points"."""
    import math

    with pytest.raises(cmp.DP4TLError, match="no pruned ratio of method 'lm' in both tables"):
        cmp.compare(_table({0.6: 0.0}), {**_table({}), "rows": [
            r for r in _table({0.6: 0.0})["rows"] if r["method"] != "lm"]}, "lm")
    res = cmp.compare(_table({0.6: 0.0, 0.8: 0.0}), _table({0.6: 3.0}), "lm")
    assert [c["ratio"] for c in res["cells"]] == [0.6] and res["only_one_table"] == [0.8]
    assert "ratios in one table only, not compared: 80 %" in cmp.markdown(res, ("A", "B"), ("a", "b"))
    a, b = _table({0.6: 0.0}), _table({0.6: 3.0})
    for t in (a, b):
        for r in t["rows"]:
            if r["seed"] == 0:
                r["lp_top1"] = math.nan  # seed 0 diverged everywhere (the same reference run)
    b["rows"][3]["lp_top1"] = None  # (seed 1's LM run of B: no value)
    res = cmp.compare(a, b, "lm")
    (c,) = res["cells"]
    assert c["seeds"] == [2, 3, 4, 5, 6, 7] and c["not_finite"] == 2
    assert c["a_mean"] == pytest.approx(sum(70.0 + s for s in c["seeds"]) / 6)
    text = cmp.markdown(res, ("A", "B"), ("a", "b"))
    assert "nan" not in text and "(2 not finite)" in text
    assert "the same runs in both tables" in text


def test_tables_without_a_common_ratio_or_mode_say_what_each_has():
    """Two tables whose only difference was their ratios were told "no finetuning mode or
    pruned ratio" with their methods and modes listed, not the ratios that differed (audit)."""
    with pytest.raises(cmp.DP4TLError) as e:
        cmp.compare(_table({0.6: 0.0}), _table({0.8: 0.0, 0.9: 0.0}), "lm")
    assert str(e.value) == ("no pruned ratio of method 'lm' in both tables (A: 60 %; B: 80 %, "
                            "90 %): compare tables that ran a common ratio of 'lm'")
    with pytest.raises(cmp.DP4TLError, match=r"no finetuning mode in both tables \(A: lp; B: ff\)"):
        cmp.compare(_table({0.6: 0.0}), {**_table({0.6: 0.0}), "finetune": ["ff"]}, "lm")


def test_a_duplicated_row_is_refused_naming_the_file_and_both_rows(tmp_path):
    """A second row of the same method, ratio and seed let its last copy win silently (audit):
    it is one line naming the file and both rows, by the rule `bench render` checks a cost
    table's rows with (cost_results.check_row_once)."""
    t = _table({0.6: 0.0})
    t["rows"].append({**t["rows"][3], "lp_top1": 99.0})
    (tmp_path / "results.json").write_text(json.dumps(t))
    with pytest.raises(cmp.DP4TLError) as e:
        cmp.load_table(tmp_path)
    line = str(e.value)
    assert "\n" not in line and line.startswith(
        f"{tmp_path / 'results.json'} rows[16]: a second row of 'lm' at ratio 0.6, seed 1 "
        "(the first: rows[3])")


def test_a_damaged_row_is_one_line_naming_the_file(tmp_path):
    t = _table({0.6: 0.0})
    said = {0: "results.json rows[1] lacks field 'ratio'",
            1: "results.json rows[1] lacks field 'seed'",  # (null: no value)
            2: "results.json: field 'rows' must be a list of JSON objects"}
    for i, bad in enumerate(({"method": "lm", "seed": 0},
                             {"method": "lm", "ratio": 0.6, "seed": None}, "row")):
        t["rows"][1] = bad
        f = tmp_path / "results.json"
        f.write_text(json.dumps(t))
        with pytest.raises(cmp.DP4TLError) as e:
            cmp.load_table(tmp_path)
        assert said[i] in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_command_line_writes_the_table_and_says_bad_input_in_one_line(tmp_path, capsys):
    for name, shift in (("a", 0.0), ("b", 3.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_table({0.6: shift})))
    out = tmp_path / "cmp.md"
    assert cmp.main([str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "epochs,steps",
                     "--out", str(out)]) == 0
    assert "| mode | ratio | epochs (A) | steps (B) |" in out.read_text()
    (tmp_path / "bad.json").write_text("{")
    capsys.readouterr()
    assert cmp.main([str(tmp_path / "bad.json"), str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json is not valid JSON" in err and err.count("\n") == 1


def test_an_out_in_an_input_folder_or_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys):
    """--out B/results.json answered rc 0 and replaced table B with Markdown; --out a folder died
    with IsADirectoryError in os.replace (audit): one line each, rc 2, the inputs untouched."""
    for name, shift in (("a", 0.0), ("b", 3.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_table({0.6: shift})))
    (tmp_path / "c_big").mkdir()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.json")}
    a, b = str(tmp_path / "a"), str(tmp_path / "b" / "results.json")
    for out, said in ((tmp_path / "b" / "results.json", "lies in the folder of table"),
                      (tmp_path / "a" / "cmp.md", "lies in the folder of table"),
                      (tmp_path / "c_big", "is a folder, not a file")):
        capsys.readouterr()
        assert cmp.main([a, b, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out}") and said in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.json")} == before
    assert not (tmp_path / "a" / "cmp.md").exists() and list((tmp_path / "c_big").iterdir()) == []


@pytest.mark.parametrize("field,value,said", [
    ("finetune", None, "lacks field 'finetune'"),
    ("finetune", "lp", "field 'finetune' must be a list of strings, got 'lp'"),
    ("finetune", ["lp", 1], "field 'finetune' must be a list of strings"),
    ("lp_top1", True, "rows[1]: field 'lp_top1' must be a percentage in [0, 100], got True"),
    ("lp_top1", "71.5", "rows[1]: field 'lp_top1' must be a percentage in [0, 100], got '71.5'"),
    ("lp_top1", float("nan"), "rows[1]: field 'lp_top1' must be a percentage in [0, 100], got nan"),
    ("lp_top1", 250.0, "rows[1]: field 'lp_top1' must be a percentage in [0, 100], got 250.0"),
    ("seed", 9, "rows[1]: field 'seed' is 9, not one of the table's seeds"),
    ("method", "fm", "rows[1]: field 'method' is 'fm', neither one of the table's methods"),
])
def test_a_damaged_field_is_one_line_naming_the_file_and_the_field(tmp_path, capsys, field, value,
                                                                  said):
    """"finetune": null crashed with a TypeError in compare; "lp" compared by substring; a bool
    or string accuracy was counted as "not finite" (audit). The rows are checked by the rules
    `bench render` reads them with (cost_results.check_results): a top-1 outside [0, 100], NaN
    included (a diverged finetuning stops with an error: no run writes one), or a row of a seed
    or method the table does not list, is refused as it is there; this script read them."""
    t = _table({0.6: 0.0})
    if field == "finetune":
        t["finetune"] = value
    else:
        t["rows"][1][field] = value
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(t))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(json.dumps(_table({0.6: 1.0})))
    assert cmp.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'a' / 'results.json'}") and said in err, err
    assert err.count("\n") == 1
