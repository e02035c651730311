"""`mailpush analyze` as a user runs it: the installed console script in a subprocess, on real capture files.

Exit statuses 0 (ran) / 1 (--fail-on matched) / 2 (usage) / 3 (no capture readable), the four formats, --plots,
and end to end on the generated sample captures against their manifest.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from analyzer.pipeline import RESULT_COLUMNS
from analyzer.verdict.model import VERDICTS

ROOT = Path(__file__).resolve().parent.parent
MAILPUSH = Path(sys.executable).parent / "mailpush"
SHORT_MAPI = "wiki-ShortMAPI.pcapng"
SHORT_MAPI_CLIENT = "10.1.70.52"  # Outlook 2003 -> SBS 2003 (10.1.70.4) in the Wireshark wiki sample


def mailpush(*args, cwd=None) -> subprocess.CompletedProcess:
    if not MAILPUSH.exists():
        pytest.skip("mailpush console script not installed in this environment")
    return subprocess.run([str(MAILPUSH), "analyze", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def assert_no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def short_mapi_json(public_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("json") / "short.json"
    proc = mailpush(public_dir / SHORT_MAPI, "--format", "json", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the report went to -o
    return json.loads(out.read_text())


def test_text_on_a_real_capture_exit_0(public_dir):
    proc = mailpush(public_dir / SHORT_MAPI)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    out = proc.stdout
    assert out.startswith(f"{public_dir / SHORT_MAPI}: pcapng, 22 frames")
    assert "CLIENT" in out and "VERDICT" in out and "CAUSE" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(SHORT_MAPI_CLIENT + " "))
    assert "10.1.70.4" in line and "cn=David" in line
    assert "reason:" in out and "remedy:" in out and "filter:   frame.number" in out


def test_json_contract_on_a_real_capture(short_mapi_json, public_dir):
    doc = short_mapi_json
    assert doc["tool"] == "mailpush" and isinstance(doc["version"], str)
    [cap] = doc["captures"]
    assert cap["file"] == str(public_dir / SHORT_MAPI)  # as given
    assert (cap["format"], cap["compressed"], cap["frames"], cap["error"]) == ("pcapng", False, 22, None)
    assert isinstance(cap["duration_s"], float) and isinstance(cap["warnings"], list)
    assert cap["start"].endswith("Z") and cap["end"].endswith("Z")
    [client] = cap["clients"]
    assert client["client"] == SHORT_MAPI_CLIENT and client["server"] == "10.1.70.4"
    assert client["verdict"] in VERDICTS
    # no push registration in this capture: it must not be called working or blocked
    assert client["verdict"] in ("inconclusive", "not_registered"), client
    assert client["register_status"] is None and client["notifications"] == 0
    frames = [e["frame"] for e in client["evidence"]]
    assert frames and all(str(f) in client["filter"] for f in frames)


def test_fail_on_matches_the_verdict_got(short_mapi_json, public_dir):
    got = short_mapi_json["captures"][0]["clients"][0]["verdict"]
    others = [v for v in VERDICTS if v != got]
    assert mailpush(public_dir / SHORT_MAPI, "--fail-on", got, "--format", "csv").returncode == 1
    proc = mailpush(public_dir / SHORT_MAPI, "--fail-on", ",".join(others), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert list(rows[0]) == RESULT_COLUMNS and len(rows) == 1
    assert (rows[0]["client"], rows[0]["verdict"]) == (SHORT_MAPI_CLIENT, got)


def test_usage_errors_exit_2(public_dir):
    proc = mailpush(public_dir / SHORT_MAPI, "--fail-on", "udp_blocked,bogus")
    assert proc.returncode == 2 and "unknown verdict 'bogus'" in proc.stderr
    assert "registered, not_registered, udp_blocked, inconclusive" in proc.stderr
    assert mailpush().returncode == 2  # no capture given
    assert mailpush(public_dir / SHORT_MAPI, "--format", "pdf").returncode == 2
    assert mailpush(public_dir / SHORT_MAPI, "--vantage", "moon").returncode == 2


def test_unreadable_captures_exit_3_with_a_clear_message(tmp_path, public_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a capture\n" * 10)
    missing = tmp_path / "missing.pcap"
    proc = mailpush(notes, missing)
    assert proc.returncode == 3
    assert_no_traceback(proc)
    assert f"{notes}: error:" in proc.stderr and f"{missing}: error:" in proc.stderr
    assert f"{notes}: not analysed" in proc.stdout
    # the same broken file next to a readable one: the analysis ran (exit 0), the error is still reported
    proc = mailpush(notes, public_dir / SHORT_MAPI, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert f"{notes}: error:" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["captures"][0]["error"] and doc["captures"][0]["clients"] == []
    assert doc["captures"][1]["error"] is None


def test_plots_dir_and_html_report(tmp_path, public_dir):
    plots = tmp_path / "plots"
    report = tmp_path / "report.html"
    proc = mailpush(public_dir / SHORT_MAPI, "--format", "html", "-o", report, "--plots", plots)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in plots.iterdir())
    slug = SHORT_MAPI_CLIENT
    assert names == sorted(f"wiki-ShortMAPI.{kind}-{slug}.{ext}" for kind in ("timeline", "intervals")
                           for ext in ("png", "svg"))
    assert (plots / f"wiki-ShortMAPI.timeline-{slug}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ET.parse(plots / f"wiki-ShortMAPI.intervals-{slug}.svg").getroot().tag.endswith("svg")
    html = report.read_text()
    assert SHORT_MAPI_CLIENT in html and "data:image/png;base64," in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    # --plots pointing at a file is a usage error
    assert mailpush(public_dir / SHORT_MAPI, "--plots", report).returncode == 2


# ------------------------------------------------------------------------------- end to end on the samples


def _manifest():
    path = ROOT / "captures" / "manifest.json"
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    entries = doc["captures"] if isinstance(doc, dict) else doc
    return [e for e in entries if e.get("clients") and (ROOT / "captures" / e["file"]).is_file()]


def test_samples_end_to_end_verdicts_json_and_plots(tmp_path):
    entries = _manifest()
    if not entries:
        pytest.skip("sample captures not generated (make captures)")
    files = [f"captures/{e['file']}" for e in entries]
    plots = tmp_path / "plots"
    # one run does it all: any sample with a udp_blocked client fails it
    blocked = any(c["verdict"] == "udp_blocked" for e in entries for c in e["clients"])
    proc = mailpush(*files, "--format", "json", "--fail-on", "udp_blocked", cwd=ROOT)
    assert proc.returncode == (1 if blocked else 0), proc.stderr
    assert_no_traceback(proc)
    doc = json.loads(proc.stdout)
    # plots cost ~0.5 s CPU per client: draw them for a few samples, a gzip one and a multi-client one included
    plotted = [e for e in entries if e["file"].endswith(".gz") or len(e["clients"]) > 1][:2] + entries[:1]
    proc = mailpush(*[f"captures/{e['file']}" for e in plotted], "--format", "csv", "--plots", plots, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert len(list(plots.iterdir())) == 4 * sum(len(e["clients"]) for e in plotted)
    assert [c["file"] for c in doc["captures"]] == files
    for entry, cap in zip(entries, doc["captures"]):
        assert cap["error"] is None, cap["error"]
        got = {c["client"]: c for c in cap["clients"]}
        for exp in entry["clients"]:
            c = got[exp["client"]]
            assert (c["verdict"], c["cause"]) == (exp["verdict"], exp["cause"]), (entry["file"], c["reason"])
            cited = {e["frame"] for e in c["evidence"]}
            assert set(exp.get("evidence_frames") or []) <= cited, entry["file"]
            if entry not in plotted:
                continue
            stem = Path(entry["file"].removesuffix(".gz")).stem  # x.pcap.gz -> x, like x.pcap
            for kind in ("timeline", "intervals"):
                for ext in ("png", "svg"):
                    assert (plots / f"{stem}.{kind}-{exp['client'].replace(':', '-')}.{ext}").is_file()


# ------------------------------------------------------------------------------- progress bar


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal (tqdm then draws; the CLI's gate looks at isatty())."""

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_bar_only_for_long_files_on_a_terminal(public_dir, monkeypatch):
    from analyzer.cli import analyze as cli_analyze

    capture = str(public_dir / SHORT_MAPI)
    # a terminal, file above the threshold: the real pipeline's progress callbacks drive a tqdm bar
    term = _Terminal(tty=True)
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(cli_analyze, "PROGRESS_MIN_BYTES", 0)
    result = cli_analyze._analyze_one(capture, "native", "auto")
    assert result.error is None and result.clients
    size = (public_dir / SHORT_MAPI).stat().st_size
    drawn = term.getvalue()
    # named after the file, sized in bytes of the file (tqdm redraws at most every 0.1 s, so a small file
    # shows its first frame only), and wiped when done (leave=False: the report follows on a clean line)
    assert drawn.startswith(f"\r{SHORT_MAPI}:") and f"/{size / 1024:.2f}k" in drawn, drawn
    assert re.search(r"\r +\r$", drawn), drawn
    # not a terminal (a log, a pipe), or a short file on a terminal: nothing at all on stderr
    for tty, threshold in ((False, 0), (True, size + 1)):
        quiet = _Terminal(tty=tty)
        monkeypatch.setattr(sys, "stderr", quiet)
        monkeypatch.setattr(cli_analyze, "PROGRESS_MIN_BYTES", threshold)
        cli_analyze._analyze_one(capture, "native", "auto")
        assert quiet.getvalue() == ""


def test_the_console_script_skips_teardown_but_flushes_everything(tmp_path, capsys):
    """console_main ends analyze/events with os._exit after the exit handlers: the whole report still reaches
    a pipe and a file, the exit status is kept, and an atexit handler registered during the run still runs."""
    from analyzer.cli import main

    capture = ROOT / "captures" / "async_wait.pcap"
    assert main(["analyze", str(capture), "--format", "json"]) == 0
    expected = capsys.readouterr().out
    proc = mailpush(capture, "--format", "json")
    assert proc.returncode == 0 and proc.stdout == expected, proc.stderr
    # the same through `python -m analyzer`, with an exit handler planted by a startup hook
    marker = tmp_path / "atexit-ran"
    hook = (f"import atexit, pathlib; atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes'); "
            "import runpy, sys; sys.argv = ['mailpush', 'analyze', sys.argv[1], '--format', 'json', "
            f"'--fail-on', {','.join(VERDICTS)!r}]; runpy.run_module('analyzer', "
            "run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", hook, str(capture)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # --fail-on matched: the status survives the quick exit
    assert proc.stdout == expected
    assert marker.read_text() == "yes"
