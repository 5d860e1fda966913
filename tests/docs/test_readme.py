"""The README's promises: its commands are the command line's and parse as written, its
Python example runs as written, its results rows are copied from the sections they link
to, and every link of the README and the docs pages leads to a file and a heading."""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "RESULTS.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
NUMBER = re.compile(r"[−+-]?\d+\.\d+(?: ± \d+\.\d+)?")


def block(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]


def table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of the markdown tables in ``text``."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]
    return [row for row in rows if not set("".join(row)) <= set("-: ")][1:]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(
        c for c in heading.strip().lower() if c in " -_" or unicodedata.category(c)[0] in "LN"
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    inline = re.findall(r"\]\(([^)\s]+)\)", text)
    defined = re.findall(r"^\[[^\]]+\]: (\S+)$", text, re.M)
    return [t for t in inline + defined if not re.match(r"[a-z]+:", t)]


def section(path: Path, anchor: str) -> str:
    """The text under the heading with this anchor, up to the next heading of any level
    (a `#` line inside a code block is a comment, not a heading)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    in_code = False
    for line in path.read_text().splitlines():
        in_code ^= line.startswith("```")
        heading = re.match(r"#{1,6} (.+)$", line)
        if heading and not in_code:
            current = sections.setdefault(slug(heading.group(1)), [])
        else:
            current.append(line)
    assert anchor in sections, f"{path.name} has no heading #{anchor}"
    return "\n".join(sections[anchor])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_to_a_file_and_a_heading(page):
    for target in links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name}: {target} leads nowhere"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: {target}: no such heading"


def test_the_commands_table_is_the_command_line():
    from fassl.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    rows = table_rows(block(README.read_text(), "commands"))
    assert sorted(row[0].strip("`") for row in rows) == sorted(commands)
    for name, _, example in rows:
        argv = shlex.split(example.strip("`"))
        assert argv[:2] == [".venv/bin/fassl", name.strip("`")], example
        # as fassl.cli.main parses: key=value overrides may follow the options
        _, extra = parser.parse_known_args(argv[1:])  # exits on a malformed flag
        assert all("=" in a and not a.startswith("-") for a in extra), (example, extra)


def test_the_commands_overrides_are_config_keys():
    import fassl

    for _, _, example in table_rows(block(README.read_text(), "commands")):
        argv = shlex.split(example.strip("`"))
        if argv[1] in ("pretrain", "pipeline", "compare"):
            fassl.make_config(argv[2], *argv[3:])  # a mistyped key or value is an error


def test_the_results_rows_are_copied_from_what_they_link_to():
    text = README.read_text()
    refs = dict(re.findall(r"^\[([^\]]+)\]: (\S+)$", text, re.M))
    results = RESULTS.read_text()
    rows = table_rows(block(text, "results"))
    assert len(rows) >= 10
    for method, where, *cells in rows:
        numbers = [c for c in cells if NUMBER.fullmatch(c.strip("*"))]
        assert numbers, method
        if where == "*paper*":  # the paper's row, as RESULTS.md sets it beside its own
            name = method.strip("*")
            paper = re.findall(rf"^\| \*{re.escape(name)} \(paper\)\*.*$", results, re.M | re.I)
            assert any(
                all(f"| {number.strip('*')} |" in row for number in numbers) for row in paper
            ), f"{name}: no paper row of RESULTS.md holds {numbers}"
            continue
        ref = re.match(r"\[[^\]]+\](?:\[([^\]]+)\]|\(([^)]+)\))", where)
        assert ref, f"{method}: the row links to no section"
        target = refs[ref.group(1)] if ref.group(1) else ref.group(2)
        assert target.startswith("docs/RESULTS.md#"), target
        body = section(RESULTS, target.partition("#")[2])
        for number in numbers:
            assert number in body, f"{method} ({where}): {number} is not in its section"


@pytest.mark.slow
@pytest.mark.trains
def test_the_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", block(README.read_text(), "api-example"), re.S)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.group(1), "README.md", "exec"), scope)  # as written
    features, results = scope["features"], scope["results"]
    assert features.shape[0] == 600 and features.dtype.is_floating_point
    assert {"standard", "few_shot", "knn"} <= set(results)
    printed = capsys.readouterr().out
    assert str(results["standard"]["rare"]) in printed


def test_the_readme_fits_on_a_page():
    assert len(README.read_bytes()) < 12_000, "README.md: move details to docs/"
