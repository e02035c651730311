# SPDX-License-Identifier: GPL-2.0-or-later
"""The documentation's tables about verdicts, generated from the code so that they are regenerated, never
hand-copied::

    python -m analyzer.verdict.docs --markdown     # causes table (verdict, cause, meaning, samples) + remedies list
    python -m analyzer.verdict.docs --table        # the causes table only
    python -m analyzer.verdict.docs --remedies     # the remedies list only
    python -m analyzer.verdict.docs --rules        # the verdict rules in order of precedence

The words come from :data:`analyzer.verdict.causes.CAUSE_TABLE` and :data:`analyzer.verdict.judge.RULES`; the
sample-capture column from the bundled samples' manifests (``captures/manifest.json`` and
``captures/pairs/manifest.json``). ``tests/test_causes.py`` checks the copies in README.md and docs/*.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analyzer.verdict.causes import BY_NAME, CAUSE_TABLE

CAUSES_TABLE_HEADER = ("verdict", "cause", "what it means", "sample capture")
RULES_TABLE_HEADER = ("precedence", "rule", "cause", "when")
REMEDIES_HEADING = "**Remedies** (printed with each verdict):"
_REPOSITORY_CAPTURES = Path(__file__).resolve().parents[2] / "captures"


def sample_captures(captures_dir: Path) -> dict[str, list[str]]:
    """cause -> the bundled sample captures that show it, as the documentation names them, read from the samples'
    manifests in *captures_dir* (a missing manifest gives no names)."""
    found: dict[str, list[str]] = {}
    manifest = captures_dir / "manifest.json"
    if manifest.is_file():
        for entry in json.loads(manifest.read_text(encoding="utf-8")):
            causes = [c["cause"] for c in entry.get("clients", [])]
            if not causes and entry.get("scenario") in BY_NAME:  # a capture that shows there is no client to judge
                causes = [entry["scenario"]]
            for cause in causes:
                names = found.setdefault(cause, [])
                if f"`{entry['file']}`" not in names:
                    names.append(f"`{entry['file']}`")
    pairs = captures_dir / "pairs" / "manifest.json"
    if pairs.is_file():
        merged: dict[str, list[str]] = {}
        for pair in json.loads(pairs.read_text(encoding="utf-8")):
            for c in pair.get("merged_clients", []):
                merged.setdefault(c["cause"], []).append(f"`captures/pairs/{pair['scenario']}.*`")
        for cause, names in merged.items():
            what = "the pair" if len(names) == 1 else "the pairs"
            found.setdefault(cause, []).append(f"{what} {', '.join(names)} (with `--merge`)")
    return found


def _markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def causes_markdown(samples: dict[str, list[str]] | None = None) -> str:
    """The causes table: verdict, cause, meaning and, when *samples* is given, the sample captures showing it."""
    header = CAUSES_TABLE_HEADER if samples is not None else CAUSES_TABLE_HEADER[:3]
    rows = []
    for c in CAUSE_TABLE:
        cells = [f"`{c.verdict}`", f"`{c.name}`", c.meaning]
        if samples is not None:
            cells.append(", ".join(samples.get(c.name, [])))
        rows.append(cells)
    return _markdown(header, rows)


def remedies_markdown() -> str:
    """The remedies list, one item per cause in table order."""
    return "\n".join(f"- **`{c.name}`**: {c.remedy}" for c in CAUSE_TABLE) + "\n"


def rules_markdown() -> str:
    """The verdict rules of :mod:`analyzer.verdict.judge` in order of precedence: the first that holds decides."""
    from analyzer.verdict.judge import RULES, rule_when

    return _markdown(RULES_TABLE_HEADER, [[str(i), f"`{r.__name__}`", f"`{r.cause}`", rule_when(r)]
                                          for i, r in enumerate(RULES, 1)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analyzer.verdict.docs",
        description="Print the documentation's tables about verdicts, generated from the cause table and the rules.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true",
                      help="the causes table (verdict, cause, meaning, sample captures) and the remedies list")
    what.add_argument("--table", action="store_true", help="the causes table only")
    what.add_argument("--remedies", action="store_true", help="the remedies list only")
    what.add_argument("--rules", action="store_true", help="the verdict rules in order of precedence")
    parser.add_argument("--samples", metavar="DIR", type=Path, default=_REPOSITORY_CAPTURES,
                        help="sample captures whose manifest.json fills the causes table's last column (default: "
                             "the repository's captures/; without a manifest.json there the column is left out)")
    args = parser.parse_args(argv)
    if args.rules:
        sys.stdout.write(rules_markdown())
        return 0
    samples = sample_captures(args.samples) if (args.samples / "manifest.json").is_file() else None
    parts = []
    if args.markdown or args.table:
        parts.append(causes_markdown(samples))
    if args.markdown:
        parts.append(REMEDIES_HEADING + "\n")
    if args.markdown or args.remedies:
        parts.append(remedies_markdown())
    sys.stdout.write("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
