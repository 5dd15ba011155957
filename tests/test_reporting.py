"""reporting.py: hand-written notes in a rendered report survive a render of the same rows."""
from __future__ import annotations

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.reporting import NOTE_CLOSE, NOTE_OPEN, carry_notes, write_section

OLD = f"""# Report

## Cost

| a | 1 |

{NOTE_OPEN}
Measured before the fix.
{NOTE_CLOSE}

### Accuracy

| b | 2 |
{NOTE_OPEN}
Read with care.
{NOTE_CLOSE}
"""


def test_notes_go_back_under_their_heading_in_their_order():
    new = "# Report\n\n## Cost\n\n| a | 3 |\n\n### Accuracy\n\n| b | 4 |\n\n### Added\n\nx\n"
    got = carry_notes(OLD, new)
    assert got == ("# Report\n\n## Cost\n\n| a | 3 |\n\n"
                   f"{NOTE_OPEN}\nMeasured before the fix.\n{NOTE_CLOSE}\n\n"
                   "### Accuracy\n\n| b | 4 |\n\n"
                   f"{NOTE_OPEN}\nRead with care.\n{NOTE_CLOSE}\n\n### Added\n\nx\n")
    assert carry_notes(OLD, got) == got  # (a second render does not repeat them)


def test_a_note_whose_heading_is_gone_is_kept_at_the_end_and_no_note_changes_nothing():
    got = carry_notes(OLD, "# Report\n\n## Cost\n\n| a | 3 |\n")
    assert got.endswith(f"| a | 3 |\n\n{NOTE_OPEN}\nMeasured before the fix.\n{NOTE_CLOSE}\n\n"
                        f"{NOTE_OPEN}\nRead with care.\n{NOTE_CLOSE}\n")
    assert carry_notes("# Report\n\nno notes\n", "# New") == "# New"


def test_an_unclosed_note_is_one_line_naming_the_file():
    with pytest.raises(DP4TLError, match=r"BENCHMARKS.md: the note opened at line 3 .* add a "
                                         r"<!-- /note --> line") as e:
        carry_notes(f"# R\n\n{NOTE_OPEN}\nhalf\n", "# R\n", "BENCHMARKS.md")
    assert "\n" not in str(e.value)


def test_write_section_keeps_the_sections_notes_only_when_asked(tmp_path):
    """A render (``keep_notes``) keeps a section's notes; a new run's section replaces them:
    they described the numbers it replaced. Other sections are left as they were."""
    path = tmp_path / "B.md"
    write_section(path, "Cost", "| a | 1 |")
    write_section(path, "Other", f"o\n\n{NOTE_OPEN}\nmine\n{NOTE_CLOSE}")
    text = path.read_text().replace("| a | 1 |", f"| a | 1 |\n\n{NOTE_OPEN}\nnote\n{NOTE_CLOSE}")
    path.write_text(text)
    write_section(path, "Cost", "| a | 2 |", keep_notes=True)
    assert f"| a | 2 |\n\n{NOTE_OPEN}\nnote\n{NOTE_CLOSE}\n\n## Other" in path.read_text()
    write_section(path, "Cost", "| a | 3 |")
    assert "\nnote\n" not in path.read_text() and "\nmine\n" in path.read_text()


def test_a_note_is_kept_in_its_place_and_markers_in_a_code_fence_are_text():
    """A note above every heading stays above the first; the same note under two headings is
    kept under both; note markers shown in a code fence are an example, not a note (they came
    back as a note without their fence; diff review)."""
    old = (f"{NOTE_OPEN}\ntop\n{NOTE_CLOSE}\n\n# R\n\n## A\n\n{NOTE_OPEN}\nsame\n{NOTE_CLOSE}\n\n"
           f"## B\n\n```\n{NOTE_OPEN}\nexample\n{NOTE_CLOSE}\n```\n\n{NOTE_OPEN}\nsame\n{NOTE_CLOSE}\n")
    got = carry_notes(old, "# R\n\n## A\n\na\n\n## B\n\nb\n")
    assert got == (f"{NOTE_OPEN}\ntop\n{NOTE_CLOSE}\n\n# R\n\n## A\n\na\n\n{NOTE_OPEN}\nsame\n"
                   f"{NOTE_CLOSE}\n\n## B\n\nb\n\n{NOTE_OPEN}\nsame\n{NOTE_CLOSE}\n")
    assert carry_notes(old, got) == got


@pytest.mark.parametrize("device,gpu,want", [
    ("cpu", "NVIDIA H200", "CPU"), ("auto", None, "CPU"), ("auto", "NVIDIA H200", "GPU (NVIDIA H200)"),
    ("cuda:1", "NVIDIA H100 80GB HBM3", "GPU (NVIDIA H100 80GB HBM3)"), ("cuda", None, "GPU")])
def test_a_report_says_where_its_run_trained(device, gpu, want):
    """Every bench header said "CPU run", a GPU run's too; results recorded before the machine's
    GPU was (no ``gpu`` key: all CPU runs) still read as CPU."""
    from ffcv_dp4tl.reporting import ran_on

    assert ran_on(device, {"cores": 16, "gpu": gpu}) == want
    if gpu is None:
        assert ran_on(device, {"cores": 2}) == want


def test_the_machine_record_names_its_gpu_or_none():
    import torch

    from ffcv_dp4tl.reporting import machine_info

    got = machine_info()["gpu"]
    assert got == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def _cost_table_folder(tmp_path):
    """A bench's output folder: its results.json (the record a render reads) and report.md."""
    out = tmp_path / "rr"
    out.mkdir()
    (out / "results.json").write_text('{"bench": "cost-table"}\n')
    (out / "report.md").write_text("# Cost table\n")
    return out


@pytest.mark.parametrize("name,why", [
    ("rr/results.json", "is not a Markdown file (.md)"),
    ("notes.txt", "is not a Markdown file (.md)"),
    ("rr/report.md", "lies in {tmp}/rr, which holds a cost table (written by `dp4tl bench cost-table`)"),
    ("rr/notes.md", "lies in {tmp}/rr, which holds a cost table (written by `dp4tl bench cost-table`)"),
    ("new/notes.md", "lies in the bench's own --out {tmp}/new"),
])
def test_a_section_goes_into_no_file_a_command_writes_and_only_into_markdown(tmp_path, name, why):
    """publish_section (every bench's, a Python caller's) refuses, in one line and before
    writing, a report that is not Markdown or is a command's output: a section written into a
    bench's results.json replaced it with Markdown, and the next render failed (audit)."""
    from ffcv_dp4tl.reporting import publish_section

    out = _cost_table_folder(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "new").mkdir()
    before = {p: p.read_bytes() for p in out.iterdir()}
    bench_out = tmp_path / "new" if name.startswith("new/") else out
    with pytest.raises(DP4TLError) as e:
        publish_section(tmp_path / name, "Cost", bench_out, lambda prefix: "body", log=print)
    assert why.format(tmp=tmp_path) in str(e.value) and "BENCHMARKS.md" in str(e.value)
    assert "\n" not in str(e.value)
    assert {p: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / name).exists() or name.startswith("rr/")
    publish_section(tmp_path / "B.md", "Cost", out, lambda prefix: f"see {prefix}report.md",
                    log=print)  # (a Markdown file of no command's: written)
    assert "see rr/report.md" in (tmp_path / "B.md").read_text()
    # a project's README.md is no command's output outside a command's folder (review)
    publish_section(tmp_path / "elsewhere" / "README.md", "Cost", out, lambda prefix: "body",
                    log=print)


def test_a_section_replaced_through_a_link_keeps_the_link(tmp_path):
    """--report lnk.md -> docs/B.md: the section goes into docs/B.md and the link stays (the
    atomic rename replaced the user's link by a regular file; audit); the link's target is
    checked as the report (a link into a bench's folder is refused)."""
    from ffcv_dp4tl.reporting import check_report

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "B.md").write_text("# Mine\n")
    link = tmp_path / "lnk.md"
    link.symlink_to("docs/B.md")
    write_section(link, "Cost", "| a | 1 |")
    assert link.is_symlink() and "| a | 1 |" in (tmp_path / "docs" / "B.md").read_text()
    assert (tmp_path / "docs" / "B.md").read_text().startswith("# Mine\n")
    out = _cost_table_folder(tmp_path)
    bad = tmp_path / "bad.md"
    bad.symlink_to(out / "results.json")
    with pytest.raises(DP4TLError, match=r"bad.md \(a link to .*results.json\) is not a Markdown"):
        check_report(bad)
    inside = tmp_path / "in.md"
    inside.symlink_to(out / "report.md")
    with pytest.raises(DP4TLError, match=r"in.md \(a link to .*rr/report.md\) lies in .*which holds a cost table"):
        check_report(inside)


def test_a_file_holding_a_section_twice_is_refused_naming_it_and_the_title(tmp_path):
    """Two ``## Cost`` sections: only the first was replaced and the stale second stayed
    (audit); refused in one line naming the file and the title, the file unchanged. A heading
    shown in a code fence is text, not a second section."""
    from ffcv_dp4tl.reporting import check_sections

    path = tmp_path / "B.md"
    text = "# B\n\n## Cost\n\nold 1\n\n## Other\n\no\n\n## Cost\n\nold 2\n"
    path.write_text(text)
    for call in (lambda: write_section(path, "Cost", "new"), lambda: check_sections(path, "Cost")):
        with pytest.raises(DP4TLError) as e:
            call()
        assert str(path) in str(e.value) and "'## Cost' 2 times" in str(e.value)
        assert "\n" not in str(e.value)
    assert path.read_text() == text
    check_sections(tmp_path / "new.md", "Cost")  # (no file yet: nothing to refuse)
    path.write_text("# B\n\n## Cost\n\nold\n\n```\n## Cost\n```\n\n## Other\n\no\n")
    write_section(path, "Cost", "new")
    assert path.read_text() == "# B\n\n## Cost\n\nnew\n\n## Other\n\no\n"


def test_a_fence_closes_only_on_its_own_marker(tmp_path):
    """A ```` fence holding a ``` line (valid Markdown: an example of a fence) stayed open to
    the end of the file, so the section after it was never found and a new copy was appended on
    every run (review); a ~~~ fence is one too, and a section inside any fence is text."""
    path = tmp_path / "r.md"
    path.write_text("# R\n\n## A\n\n````md\n```\n## B\n```\n````\n\n~~~\n## B\n~~~\n\n"
                    "## B\n\nold b\n")
    for body in ("b1", "b2"):
        write_section(path, "B", body)
    text = path.read_text()
    assert text.count("\n## B\n") == 3 and text.endswith("## B\n\nb2\n") and "old b" not in text
    assert "b1" not in text  # (replaced, not appended)


@pytest.mark.parametrize("title,why", [("## x", "without '#'"), ("#x", "without '#'"),
                                       ("x\u2028## y", "one non-empty line"),
                                       ("x\x0c## y", "one non-empty line"), (" ", "one non-empty line")])
def test_a_section_title_is_one_line_without_hashes(tmp_path, title, why):
    """``--section "## x"`` wrote the heading ``## ## x``; a line separator other than \\n
    split the title into a heading of its own (the file is written line by line)."""
    from ffcv_dp4tl.reporting import check_one_line, check_section_title

    with pytest.raises(DP4TLError, match=why):
        check_section_title(title)
    with pytest.raises(DP4TLError, match=why):
        write_section(tmp_path / "B.md", title, "body")
    assert not (tmp_path / "B.md").exists()
    if "#" not in title.strip()[:1]:
        with pytest.raises(DP4TLError, match="--note"):
            check_one_line(title, "--note")
    assert check_section_title("Cost (x #1)") == "Cost (x #1)"


HOSTILE = ["warm` <script>alert(1)</script> `", "`x`", "a``b", "[click](javascript:alert(1))",
           '<img src=x onerror="alert(1)">', "p\nq", "", " padded ", "a|b", "plain/path_1.toml",
           # backtick runs of several lengths: the fence outruns the longest, not the shortest
           "a`b``c <img src=x onerror=alert(1)>",
           # a backslash of its own: unescaped, it would escape md_text's escape of the "<"
           "\\<img src=x onerror=alert(1)\\>"]


@pytest.mark.parametrize("value", HOSTILE)
def test_md_code_holds_any_text_as_one_code_span(value):
    """A path, command or name in a report is someone else's text: rendered by a CommonMark
    parser, its code span is one ``<code>`` holding exactly that text (control characters
    shown escaped, as ``printable`` shows them), and nothing else becomes markup."""
    from markdown_it import MarkdownIt

    from ffcv_dp4tl.reporting import md_code

    html = MarkdownIt("commonmark").renderInline(md_code(value))
    shown = value.replace("\n", "\\n")
    assert html.startswith("<code>") and html.endswith("</code>") and html.count("<code>") == 1
    assert html[len("<code>"):-len("</code>")] == (
        shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace('"', "&quot;") or " ")  # ('' shows as one space: an empty span is no span)


@pytest.mark.parametrize("value", HOSTILE)
def test_md_text_is_read_as_written_and_keeps_a_tables_columns(value):
    from markdown_it import MarkdownIt

    from ffcv_dp4tl.reporting import md_text

    md = MarkdownIt("commonmark").enable("table")
    inline = md.renderInline(md_text(value))
    assert "<" not in inline.replace("&lt;", "") and "href" not in inline
    table = md.render(f"| a | b |\n|---|---|\n| {md_text(value)} | 2 |\n")
    assert table.count("<td>") == 2


@pytest.mark.parametrize("value", ["cars|x", "a|b|c", "`|`"])
def test_md_code_in_a_table_cell_keeps_the_rows_columns_and_its_text(value):
    """A GFM table cell ends at a ``|`` even inside a code span: a target or recipe named
    ``cars|x`` in a report's table split its row into one column too many. In a cell the ``|``
    is escaped, and the span still shows the name as written."""
    from markdown_it import MarkdownIt

    from ffcv_dp4tl.reporting import md_code

    html = MarkdownIt("commonmark").enable("table").render(
        f"| target | acc |\n|---|---:|\n| {md_code(value, cell=True)} | 90 |\n")
    assert html.count("<td") == 2 and html.count("<code>") == 1, html
    assert f"<code>{value}</code>" in html.replace("<code> ", "<code>").replace(" </code>", "</code>")
