# SPDX-License-Identifier: GPL-2.0-or-later
"""The documentation in docs/ stays reachable from the code that cites it.

* Every ``protocol.md §X.Y`` citation in analyzer/, README.md, captures/, benchmarks/, docs/, notebooks/ and
  tests/ names a section that docs/protocol.md has a heading for. Ranges (``§1.4-1.10``) need every section in between, and a list
  (``protocol.md §1.4-1.6, §2 and the IDL``) is read to its end.
* Nothing in analyzer/, docs/ or README.md points at ``../shared`` (the maintainers' reference folder, which users
  of the project do not have).
* Relative links in docs/ lead to files that exist inside docs/ (MkDocs builds only that folder).
* The layer table of docs/architecture.md is what the code does: no package under analyzer/ imports a package of
  the same or a later rank (imports inside functions included), and every package is in the table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROTOCOL = DOCS / "protocol.md"
ARCHITECTURE = DOCS / "architecture.md"

CITING = ("analyzer", "README.md", "captures", "benchmarks", "docs", "notebooks", "tests")
NO_SHARED = ("analyzer", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".txt", ".html", ".js", ".css", ".ipynb", ".cfg", ".toml", ".json", ".yml", ".yaml"}

SECTION = r"\d+(?:\.\d+)*"
DASH = r"\s*[-–]\s*"
# "protocol.md §1.4-1.10, §4 and §5": the first reference, then more joined by commas/"and"
CITATION = re.compile(
    rf"protocol\.md\s*§\s*(?P<refs>{SECTION}(?:{DASH}{SECTION})?"
    rf"(?:\s*(?:,|and|,\s*and)\s*§\s*{SECTION}(?:{DASH}{SECTION})?)*)"
)
ONE_REF = re.compile(rf"({SECTION})(?:{DASH}({SECTION}))?")
HEADING = re.compile(rf"^#{{1,6}}\s+({SECTION})\.?\s", re.MULTILINE)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text_files(names):
    for name in names:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts:
                    yield p


def _expand(first: str, last: str | None) -> list[str]:
    """'1.4', '1.10' -> 1.4 ... 1.10; a range whose ends differ above the last level is kept as its two ends."""
    if last is None:
        return [first]
    a, b = first.split("."), last.split(".")
    if len(a) == len(b) and a[:-1] == b[:-1] and int(a[-1]) <= int(b[-1]):
        return [".".join(a[:-1] + [str(i)]) for i in range(int(a[-1]), int(b[-1]) + 1)]
    return [first, last]


def citations() -> list[tuple[str, int, str]]:
    """(file relative to the repository, line, section) for every protocol.md section citation."""
    found = []
    for path in _text_files(CITING):
        if path == Path(__file__).resolve():
            continue  # this file's own examples
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in CITATION.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            for first, last in ONE_REF.findall(m.group("refs")):
                for section in _expand(first, last or None):
                    found.append((str(path.relative_to(ROOT)), line, section))
    return found


def protocol_sections() -> set[str]:
    return set(HEADING.findall(PROTOCOL.read_text(encoding="utf-8")))


def test_citation_parser_reads_ranges_lists_and_dashes():
    text = ("see protocol.md §1.4-1.6, §2 and the IDL; protocol.md §1.4–1.10 and §4; protocol.md §3.1)"
            " and protocol.md §1.7-1.9, §2: done")
    refs = [set(ONE_REF.findall(m.group("refs"))) for m in CITATION.finditer(text)]
    assert refs == [{("1.4", "1.6"), ("2", "")}, {("1.4", "1.10"), ("4", "")}, {("3.1", "")},
                    {("1.7", "1.9"), ("2", "")}]
    assert _expand("1.4", "1.10") == ["1.4", "1.5", "1.6", "1.7", "1.8", "1.9", "1.10"]
    assert _expand("2", None) == ["2"]


def test_the_code_cites_protocol_md():
    # the check below must have something to check: the code cites the reference about twenty times
    assert len({(f, line) for f, line, _ in citations()}) >= 10


def test_every_protocol_md_citation_has_a_heading():
    sections = protocol_sections()
    missing = sorted({f"{f}:{line}: protocol.md §{s}" for f, line, s in citations() if s not in sections})
    assert not missing, "citations of sections docs/protocol.md has no heading for:\n" + "\n".join(missing)


def test_protocol_md_keeps_the_numbering_the_code_relies_on():
    # chapters the code cites by number (ingest, dissectors, generator, tshark engine), with what they must hold
    text = PROTOCOL.read_text(encoding="utf-8")
    headings = {num: line for num, line in re.findall(rf"^#{{1,6}}\s+({SECTION})\.?\s+(.*)$", text, re.MULTILINE)}
    assert "request" in headings["1.4"].lower()
    assert "response" in headings["1.5"].lower()
    assert "sockaddr" in headings["1.6"].lower()
    assert "datagram" in headings["1.7"].lower()
    assert "vector" in headings["1.10"].lower()
    assert "tshark" in headings["3"].lower() and "opnum 4" in headings["3.1"].lower()
    assert "dce/rpc" in headings["4"].lower()
    assert "network monitor" in headings["5"].lower()
    # the §1.10 vector is the one the tests and the generator use verbatim
    assert ("000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000010000000000102030405060708090a0b0c0d0e0f10000000"
            "ffffffff10000000020004d20a00000500000000000000001000") in text
    assert "000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000002010480" in text


@pytest.mark.parametrize("area", NO_SHARED)
def test_nothing_points_at_the_shared_folder(area):
    offenders = []
    for path in _text_files([area]):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if "../shared" in line or "/work/shared" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offenders, "references to the maintainers' shared folder:\n" + "\n".join(offenders)


def test_relative_links_in_docs_lead_to_files_inside_docs():
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # web links and anchors within the page
            path = target.split("#", 1)[0]
            resolved = (page.parent / path).resolve()
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif DOCS.resolve() not in resolved.parents and resolved != DOCS.resolve():
                broken.append(f"{page.name}: {target} (outside docs/: MkDocs cannot follow it)")
    assert not broken, "bad links:\n" + "\n".join(broken)


# ------------------------------------------------------------------------------------------------- layering

LAYER_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`analyzer\.(\w+)`\s*\|", re.MULTILINE)


def layer_ranks() -> dict[str, int]:
    """package (or top-level module) name -> rank, from the table in docs/architecture.md."""
    return {name: int(rank) for rank, name in LAYER_ROW.findall(ARCHITECTURE.read_text(encoding="utf-8"))}


def _analyzer_imports(path: Path) -> set[str]:
    """Names of the analyzer packages/modules that a module imports (absolute and relative, anywhere in it)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                here = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
                base = here[: len(here) - (node.level - 1)]
                names = [".".join(base + ([node.module] if node.module else [a.name for a in node.names][:1]))]
            else:
                names = [node.module or ""]
                if node.module == "analyzer":  # "from analyzer import x": x may be a sub-package
                    names = [f"analyzer.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "analyzer" and len(parts) > 1:
                out.add(parts[1])
    return out


def _units() -> dict[str, list[Path]]:
    """analyzer's packages and top-level modules -> their .py files (__init__ and __main__ of analyzer aside)."""
    base = ROOT / "analyzer"
    units: dict[str, list[Path]] = {}
    for p in sorted(base.iterdir()):
        if p.is_dir() and (p / "__init__.py").is_file():
            units[p.name] = sorted(p.rglob("*.py"))
        elif p.suffix == ".py" and p.stem not in ("__init__", "__main__"):
            units[p.stem] = [p]
    return units


def test_layer_table_is_read():
    ranks = layer_ranks()
    assert ranks["ingest"] < ranks["dissect"] < ranks["correlate"] < ranks["verdict"] < ranks["report"]
    assert ranks["report"] < ranks["pipeline"] < ranks["cli"]


def test_every_analyzer_package_is_in_the_layer_table():
    ranks = layer_ranks()
    missing = sorted(set(_units()) - set(ranks))
    assert not missing, f"add a row for {missing} to the layer table in docs/architecture.md"


def test_no_stage_imports_a_later_one():
    ranks = layer_ranks()
    wrong = []
    for unit, files in _units().items():
        if unit not in ranks:
            continue  # reported by test_every_analyzer_package_is_in_the_layer_table
        for path in files:
            for target in sorted(_analyzer_imports(path) - {unit}):
                if target == "__init__" or target not in ranks and target not in _units():
                    continue  # "from analyzer import __version__"
                if ranks.get(target, 10**6) >= ranks[unit]:
                    wrong.append(f"{path.relative_to(ROOT)} ({unit}, rank {ranks[unit]}) imports analyzer.{target}"
                                 f" (rank {ranks.get(target, 'not in the table')})")
    assert not wrong, "imports against the layer order of docs/architecture.md:\n" + "\n".join(wrong)
