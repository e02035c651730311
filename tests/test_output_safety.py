"""Outputs are safe (issue 11 point 5): CSV cells a spreadsheet would run as formulas are neutralised with a
leading apostrophe (CLI, batch, web), and text output escapes control characters from capture and file names."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.pipeline import analyze_capture
from analyzer.report.formats import render_csv, render_text
from analyzer.report.safe_text import escape_controls, neutralise_cell

ROOT = Path(__file__).resolve().parent.parent
MAILPUSH = str(Path(sys.executable).with_name("mailpush"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("evil", ["=HYPERLINK(\"http://x\")", "+1+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_neutralise_cell_prefixes_formula_starts(evil):
    assert neutralise_cell(evil) == "'" + evil
    assert neutralise_cell("plain") == "plain" and neutralise_cell(-1.5) == -1.5


def test_csv_mailbox_dn_and_file_name_are_neutralised(captures_dir):
    result = analyze_capture(str(captures_dir / "push_working.pcap"))
    assert result.clients
    result.clients[0].mailbox = "=cmd|' /C calc'!A0"
    result.file = "@evil.pcap"
    (row,) = rows(render_csv([result]))[:1]
    assert row["mailbox"] == "'=cmd|' /C calc'!A0"
    assert row["file"] == "'@evil.pcap"
    assert all(not v.startswith(("=", "+", "@", "\t", "\r")) for v in row.values())
    # numbers keep their sign
    assert any(v.startswith("0") or v[:1].isdigit() for v in row.values())


def test_cli_csv_and_text_with_hostile_file_names(tmp_path, captures_dir):
    formula = tmp_path / "=HYPERLINK(1).pcap"
    shutil.copy(captures_dir / "push_working.pcap", formula)
    run = subprocess.run([MAILPUSH, "analyze", formula.name, "--format", "csv"], cwd=tmp_path,
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert run.returncode == 0, run.stderr
    assert rows(run.stdout)[0]["file"] == "'=HYPERLINK(1).pcap"

    esc = tmp_path / "a\x1b]0;owned\x07\x1b[2Jb.pcap"
    shutil.copy(captures_dir / "truncated.pcap", esc)
    run = subprocess.run([MAILPUSH, "analyze", str(esc)], capture_output=True, text=True, env=ENV, timeout=120)
    assert "\x1b" not in run.stdout and "\x07" not in run.stdout
    assert "\x1b" not in run.stderr and "\x07" not in run.stderr
    assert "a\\x1b]0;owned\\x07\\x1b[2Jb.pcap" in run.stdout


def test_text_output_escapes_strings_from_the_capture(captures_dir):
    result = analyze_capture(str(captures_dir / "push_working.pcap"))
    result.clients[0].mailbox = "/o=Org/cn=evil\x1b[31mRED\nforged line"
    result.warnings.append("bad\x1b]0;title\x07")
    text = render_text([result])
    assert "\x1b" not in text and "\x07" not in text
    assert "forged line" not in text.splitlines()[0] and not any(ln.startswith("forged") for ln in text.splitlines())
    assert "evil\\x1b[31mRED\\nforged line" in text and "bad\\x1b]0;title\\x07" in text
    assert escape_controls("ok\u009bx") == "ok\\x9bx"


def test_batch_csv_neutralised_and_resume_reads_it_back(tmp_path, captures_dir):
    shutil.copy(captures_dir / "push_working.pcap", tmp_path / "@evil.pcap")
    shutil.copy(captures_dir / "no_emsmdb.pcap", tmp_path / "plain.pcap")
    out = tmp_path / "results.csv"
    for extra in ([], ["--resume"]):
        run = subprocess.run([MAILPUSH, "batch", "@evil.pcap", "plain.pcap", "-o", str(out), "--jobs", "1", *extra],
                             cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
        assert run.returncode == 0, run.stderr
        table = rows(out.read_text())
        assert sorted(r["file"] for r in table) == ["'@evil.pcap", "plain.pcap"]
    assert "2 already in results" in run.stderr


def test_web_csv_neutralises_the_uploaded_file_name(tmp_path, captures_dir):
    from test_web import LiveServer, upload, wait_finished

    with LiveServer(tmp_path / "data", workers=1, plots_in_job=False) as srv:
        token = srv.add_user("alice")
        with srv.client(token) as c:
            cid = upload(c, captures_dir / "push_working.pcap", filename="=SUM(1+2)*cmd.pcap").json()["id"]
            assert wait_finished(c, cid)["status"] == "done"
            text = c.get(f"/api/captures/{cid}/results.csv").text
    assert rows(text)[0]["file"] == "'=SUM(1+2)*cmd.pcap"


def test_mailbox_dn_from_the_capture_bytes_is_neutralised_in_every_csv(tmp_path, captures_dir):
    """The DN inside the capture (EcDoConnect's user DN) rewritten in place to start with '=': the analyze CSV,
    the events CSV and the text output all carry it safely."""
    data = (captures_dir / "push_working.pcap").read_bytes()
    dn = b"/o=Contoso/ou=First Administrative Group/cn=Recipients/cn=alice"
    assert data.count(dn) == 1
    evil = b"=HYPERLINK(1)\x1b[2J" + dn[len(b"=HYPERLINK(1)\x1b[2J"):]
    hostile = tmp_path / "hostile.pcap"
    hostile.write_bytes(data.replace(dn, evil))
    run = subprocess.run([MAILPUSH, "analyze", str(hostile), "--format", "csv"], capture_output=True, text=True,
                         env=ENV, timeout=120)
    assert run.returncode == 0, run.stderr
    (row,) = rows(run.stdout)
    assert row["mailbox"].startswith("'=HYPERLINK(1)")
    events = subprocess.run([MAILPUSH, "events", str(hostile), "--format", "csv"], capture_output=True,
                            text=True, env=ENV, timeout=120)
    assert events.returncode == 0, events.stderr
    cells = [v for r in rows(events.stdout) for v in r.values() if v]
    assert any(v.startswith("'=HYPERLINK(1)") for v in cells)
    assert not any(v.startswith(("=", "+", "@", "\t", "\r")) for v in cells)
    text = subprocess.run([MAILPUSH, "analyze", str(hostile)], capture_output=True, text=True, env=ENV, timeout=120)
    assert "\x1b" not in text.stdout and "=HYPERLINK(1)\\x1b[2J" in text.stdout
