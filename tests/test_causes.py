# SPDX-License-Identifier: GPL-2.0-or-later
"""The cause table (analyzer.verdict.causes) is the single source of every text about a cause, and the verdict rules
(analyzer.verdict.judge.RULES) are an ordered table whose precedence is documented.

* The documentation's causes table, found by its header row (``| verdict | cause | what it means | ...``) in README.md
  or any docs/*.md, has one row per cause with the verdict, cause and meaning word for word; every sample capture it
  names shows that cause according to the samples' manifests; a remedies list next to it (``- **`cause`**: ...``)
  quotes every remedy word for word.
* The precedence table in judge.py's docstring and the one in the docs (``| precedence | rule | cause | when |``) are
  RULES in order.
* Every rule concludes only its own cause, never raises when called out of order on real situations, and the rules
  together conclude every cause.
* ``python -m analyzer.verdict.docs`` prints tables that pass these checks (the docs are regenerated with it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.verdict import CAUSES, MEANINGS, REMEDIES, VERDICTS
from analyzer.verdict import judge as judge_module
from analyzer.verdict.causes import BY_NAME, CAUSE_TABLE
from analyzer.verdict.judge import RULES, Situation, decide, judge_clients, rule_when
from analyzer.verdict.transit import MERGE_RULES

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
CAUSES_HEADER = ("verdict", "cause", "what it means")
RULES_HEADER = ("precedence", "rule", "cause", "when")
REMEDY_ITEM = re.compile(r"^- \*\*`(\w+)`\*\*: (.*)$")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _unquote(cell: str) -> str:
    return cell.strip().strip("`")


def markdown_tables(text: str, header: tuple[str, ...]) -> list[tuple[int, list[list[str]]]]:
    """(line number of the header, rows as lists of cells) of every table whose header starts with *header*."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("|"):
            continue
        if tuple(c.lower() for c in _cells(line)[:len(header)]) != header:
            continue
        rows = []
        for row in lines[i + 2:]:  # after the separator row
            if not row.lstrip().startswith("|"):
                break
            rows.append(_cells(row))
        found.append((i + 1, rows))
    return found


def doc_tables(header):
    return [(path, line, rows) for path in DOC_FILES if path.is_file()
            for line, rows in markdown_tables(path.read_text(encoding="utf-8"), header)]


def _manifest_causes() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """file -> causes its clients get, pair scenario -> causes of its merged clients (from the manifests)."""
    files = {}
    for entry in json.loads((CAPTURES / "manifest.json").read_text(encoding="utf-8")):
        causes = {c["cause"] for c in entry["clients"]}
        files[entry["file"]] = causes or {entry["scenario"]}  # a capture without clients shows its scenario's cause
    pairs = {p["scenario"]: {c["cause"] for c in p["merged_clients"]}
             for p in json.loads((CAPTURES / "pairs" / "manifest.json").read_text(encoding="utf-8"))}
    return files, pairs


def check_causes_rows(where: str, rows: list[list[str]]) -> None:
    named = []
    for cells in rows:
        assert len(cells) >= 3, f"{where}: row {cells}"
        verdict, cause, meaning = _unquote(cells[0]), _unquote(cells[1]), cells[2]
        assert cause in BY_NAME, f"{where}: {cause!r} is not in the cause table"
        expected = BY_NAME[cause]
        assert verdict == expected.verdict, f"{where}: {cause} belongs to {expected.verdict}, the table says {verdict}"
        assert meaning == expected.meaning, f"{where}: the meaning of {cause} differs from the cause table"
        named.append(cause)
    assert sorted(named) == sorted(CAUSES), f"{where}: each cause needs exactly one row"


def check_sample_cells(where: str, rows: list[list[str]]) -> None:
    files, pairs = _manifest_causes()
    for cells in rows:
        if len(cells) < 4:
            continue
        cause = _unquote(cells[1])
        for name in re.findall(r"`([^`]+)`", cells[3]):
            if name.startswith("-"):
                continue  # a flag (`--merge`)
            pair = re.fullmatch(r"captures/pairs/(\w+)\.\*", name)
            if pair:
                assert cause in pairs.get(pair.group(1), set()), f"{where}: the pair {name} does not show {cause}"
            else:
                assert cause in files.get(name, set()), f"{where}: {name} does not show {cause} (manifest.json)"


def test_the_views_are_the_table():
    assert [c.name for c in CAUSE_TABLE] == list(CAUSES) == list(MEANINGS) == list(REMEDIES)
    for c in CAUSE_TABLE:
        assert (CAUSES[c.name], MEANINGS[c.name], REMEDIES[c.name]) == (c.verdict, c.meaning, c.remedy)
        assert c.verdict in VERDICTS and "\n" not in c.meaning and "|" not in c.meaning
    assert {c.verdict for c in CAUSE_TABLE} == set(VERDICTS)


def test_the_docs_causes_table_is_the_cause_table():
    tables = doc_tables(CAUSES_HEADER)
    assert tables, "no causes table (header row '| verdict | cause | what it means |') in README.md or docs/*.md"
    for path, line, rows in tables:
        where = f"{path.relative_to(ROOT)}:{line}"
        check_causes_rows(where, rows)
        check_sample_cells(where, rows)


def test_the_docs_remedies_list_quotes_the_cause_table():
    lists = 0
    for path in DOC_FILES:
        if not path.is_file():
            continue
        items = [REMEDY_ITEM.match(line) for line in path.read_text(encoding="utf-8").splitlines()]
        items = [m.groups() for m in items if m]
        if not items:
            continue
        lists += 1
        for cause, remedy in items:
            assert cause in BY_NAME and remedy == BY_NAME[cause].remedy, f"{path.name}: remedy of {cause}"
        assert sorted(c for c, _ in items) == sorted(CAUSES), f"{path.name}: each cause needs one remedy item"
    assert lists, "no remedies list ('- **`cause`**: remedy') in README.md or docs/*.md"


def test_the_rules_precedence_is_documented_in_order():
    expected = [(str(i), rule.__name__, rule.cause) for i, rule in enumerate(RULES, 1)]
    in_docstring = re.findall(r"^\s*(\d+)\s+([a-z_]+)\s+([a-z_]+)\s*$", judge_module.__doc__, re.MULTILINE)
    assert in_docstring == expected, "judge.py's docstring table is not RULES in order"
    tables = doc_tables(RULES_HEADER)
    assert tables, "no rules table (header row '| precedence | rule | cause | when |') in README.md or docs/*.md"
    for path, line, rows in tables:
        got = [(c[0], _unquote(c[1]), _unquote(c[2]), c[3]) for c in rows]
        assert got == [e + (rule_when(r),) for e, r in zip(expected, RULES)], \
            f"{path.relative_to(ROOT)}:{line}: regenerate with python -m analyzer.verdict.docs --rules"


def test_the_rules_conclude_every_cause_once_each_is_marked():
    concluded = [r.cause for r in RULES] + [r.cause for r in MERGE_RULES]
    assert set(concluded) == set(CAUSES), "a cause no rule concludes, or a rule with an unknown cause"
    assert all(rule_when(r) for r in RULES + MERGE_RULES), "every rule says its condition in its docstring"
    assert len({r.__name__ for r in RULES}) == len(RULES)


def _sample_correlations():
    from analyzer.correlate import correlate
    from analyzer.dissect import dissect_capture

    for entry in json.loads((CAPTURES / "manifest.json").read_text(encoding="utf-8")):
        events, info = dissect_capture(str(CAPTURES / entry["file"]))
        for vantage in ("auto", "client", "server"):
            yield entry, correlate(events, info, vantage=vantage)


def test_each_rule_concludes_only_its_cause_and_the_first_that_holds_decides():
    """Every rule is called on every client of every sample (out of order too, and from three vantage points): it
    never raises, it concludes only the cause it is marked with, and the verdict is the first rule's Finding."""
    fired = set()
    for entry, corr in _sample_correlations():
        verdicts = judge_clients(corr)
        for a, v in zip(corr.clients, verdicts):
            situation = Situation.of(a, corr)
            findings = [(rule, rule(situation)) for rule in RULES]
            for rule, finding in findings:
                if finding is not None:
                    assert finding.cause == rule.cause, (entry["file"], rule.__name__, finding.cause)
                    assert 0 < finding.confidence <= 1 and finding.reason
            assert findings[-1][1] is not None, "the last rule always holds"
            first_rule, first = next((r, f) for r, f in findings if f is not None)
            fired.add(first_rule.__name__)
            assert decide(a, corr) == first
            assert v.cause == first.cause and [e.frame for e in v.evidence] == [e.frame for e in first.evidence]
    assert len(fired) >= 12, sorted(fired)  # the samples exercise most rules (test_verdict.py covers each cause)


def _run_docs(*args) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "analyzer.verdict.docs", *args], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return out.stdout


def test_the_generator_prints_tables_that_pass_the_checks(tmp_path):
    text = _run_docs("--markdown")
    ((_, rows),) = markdown_tables(text, CAUSES_HEADER)
    assert len(rows) == len(CAUSE_TABLE) and all(len(cells) == 4 and cells[3] for cells in rows)
    check_causes_rows("generated", rows)
    check_sample_cells("generated", rows)
    remedies = [REMEDY_ITEM.match(line).groups() for line in text.splitlines() if REMEDY_ITEM.match(line)]
    assert remedies == [(c.name, c.remedy) for c in CAUSE_TABLE]
    assert "**Remedies** (printed with each verdict):" in text

    # without sample manifests the table leaves out the sample column
    (_, rows), = markdown_tables(_run_docs("--table", "--samples", str(tmp_path)), CAUSES_HEADER)
    assert all(len(cells) == 3 for cells in rows)
    check_causes_rows("generated without samples", rows)
    assert REMEDY_ITEM.match(_run_docs("--remedies").splitlines()[0])

    ((_, rows),) = markdown_tables(_run_docs("--rules"), RULES_HEADER)
    assert [(_unquote(c[1]), _unquote(c[2])) for c in rows] == [(r.__name__, r.cause) for r in RULES]


@pytest.mark.parametrize("args", [[], ["--table", "--rules"]])
def test_the_generator_needs_one_table(args):
    out = subprocess.run([sys.executable, "-m", "analyzer.verdict.docs", *args], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "usage:" in out.stderr
