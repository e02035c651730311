"""Report stage: text / JSON / CSV / HTML renderings and timing plots of CaptureResult objects.

The report stage's real input is the verdict stage's CaptureResult, so these tests build CaptureResults the way
the verdict stage does (timelines in TIMELINE_LANES, logon time, poll intervals, evidence, filter, remedy) for
realistic situations: a client that fell back to one-minute polling because UDP never arrives, a healthy push
client, an ICMP-rejected client, an async (Outlook 2007+) client, an IPv6 client and clients with almost no data.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET

import pytest

from analyzer import __version__
from analyzer.pipeline import RESULT_COLUMNS
from analyzer.verdict.model import CAUSES, VERDICTS, CaptureResult, ClientVerdict, EvidenceItem, TimelineMark
from analyzer.verdict.causes import remedy_for

T0 = 1_700_000_000.0  # capture start (epoch seconds)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _filter(frames):
    frames = sorted(set(frames))
    return "frame.number in {" + ", ".join(map(str, frames)) + "}" if len(frames) > 1 else f"frame.number == {frames[0]}"


def polling_client() -> ClientVerdict:
    """Server-side capture: registered at logon, the server's UDP notifications get no reaction and Outlook keeps
    polling about every 60 s for ten minutes."""
    logon = T0 + 5.0
    marks = [TimelineMark(logon + 2.1, "registration", 14, "opnum 4 -> 0x00000000")]
    frame = 20
    polls = []
    t = logon + 3.0
    jitter = [0.4, -0.3, 0.8, 0.1, -0.6, 0.5, 0.2, -0.2, 0.7, 0.0]
    for j in jitter:
        t += 60.0 + j
        polls.append((t, frame))
        marks.append(TimelineMark(t, "unprompted", frame, "EcDoRpcExt2"))
        frame += 4
    notes = [(logon + 95.0, 31), (logon + 230.0, 55), (logon + 400.0, 83)]
    for tn, fn in notes:
        marks.append(TimelineMark(tn, "notification", fn, "UDP -> 10.1.2.30:3412"))
    marks.append(TimelineMark(logon + 228.0, "mail", 54, "message delivered (large poll answer, then fetches)"))
    marks.sort(key=lambda m: m.time)
    intervals = [b[0] - a[0] for a, b in zip(polls, polls[1:])]
    evidence = [EvidenceItem(14, logon + 2.1, "EcRRegisterPushNotification callback 10.1.2.30:3412 -> 0x00000000")]
    evidence += [EvidenceItem(fn, tn, f"UDP 10.1.0.5:1045 -> 10.1.2.30:3412, no call from the client within 2 s")
                 for tn, fn in notes]
    return ClientVerdict(
        client="10.1.2.30", server="10.1.0.5", verdict="udp_blocked", cause="udp_not_delivered", confidence=0.9,
        reason="3 UDP notifications sent to 10.1.2.30:3412 got no reaction; the client keeps polling every 60.4 s",
        mailbox="/o=Contoso/ou=First Administrative Group/cn=Recipients/cn=alice", callback="10.1.2.30:3412",
        register_status=0, notifications=3, polls=len(polls), poll_interval_s=60.3, poll_interval_spread_s=0.6,
        server_poll_interval_s=60.0, evidence=evidence, filter=_filter(e.frame for e in evidence),
        remedy=remedy_for("udp_not_delivered"), timeline=marks, logon_time=logon, poll_intervals=intervals)


def healthy_client() -> ClientVerdict:
    """Client-side capture: registered, each UDP notification is followed within 0.3 s by a prompted call; one
    unprompted poll before the first notification (MS-OXCNOTIF 3.2.5.4), none after."""
    logon = T0 + 12.0
    marks = [TimelineMark(logon + 1.8, "registration", 40, "opnum 4 -> 0x00000000"),
             TimelineMark(logon + 61.0, "unprompted", 60, "EcDoRpcExt2")]
    frame = 70
    evidence = [EvidenceItem(40, logon + 1.8, "EcRRegisterPushNotification callback 10.1.2.31:2190 -> 0x00000000")]
    for dt in (80.0, 210.0, 330.0, 505.0):
        marks.append(TimelineMark(logon + dt, "notification", frame, "UDP -> 10.1.2.31:2190"))
        marks.append(TimelineMark(logon + dt + 0.25, "prompted", frame + 1, "EcDoRpcExt2"))
        marks.append(TimelineMark(logon + dt + 0.4, "prompted", frame + 3, "EcDoRpcExt2"))
        evidence.append(EvidenceItem(frame, logon + dt, "UDP notification to 10.1.2.31:2190, call 0.25 s later"))
        frame += 10
    marks.sort(key=lambda m: m.time)
    return ClientVerdict(
        client="10.1.2.31", server="10.1.0.5", verdict="registered", cause="push_working", confidence=0.95,
        reason="4 UDP notifications, each followed within 0.3 s by a call from the client", mailbox=None,
        callback="10.1.2.31:2190", register_status=0, notifications=4, polls=1, poll_interval_s=None,
        server_poll_interval_s=60.0, evidence=evidence, filter=_filter(e.frame for e in evidence),
        remedy=remedy_for("push_working"), timeline=marks, logon_time=logon, poll_intervals=[])


def icmp_client() -> ClientVerdict:
    logon = T0 + 1.0
    marks = [TimelineMark(logon + 2.0, "registration", 8, "opnum 4 -> 0x00000000")]
    evidence = [EvidenceItem(8, logon + 2.0, "EcRRegisterPushNotification -> 0x00000000")]
    for i, dt in enumerate((50.0, 170.0)):
        marks.append(TimelineMark(logon + dt, "notification", 30 + 2 * i, "UDP -> 192.0.2.7:1400"))
        marks.append(TimelineMark(logon + dt + 0.001, "icmp", 31 + 2 * i, "ICMP 3/13 from 192.0.2.1"))
        evidence.append(EvidenceItem(31 + 2 * i, logon + dt + 0.001, "ICMP type 3 code 13 from 192.0.2.1"))
    for k in range(1, 5):
        marks.append(TimelineMark(logon + 3 + 60 * k, "unprompted", 40 + k, "EcDoRpcExt2"))
    marks.sort(key=lambda m: m.time)
    return ClientVerdict(
        client="192.0.2.7", server="10.1.0.5", verdict="udp_blocked", cause="icmp_unreachable", confidence=0.9,
        reason="2 ICMP errors from 192.0.2.1 (type 3 code 13) reject UDP datagrams from the server to the client",
        callback="192.0.2.7:1400", register_status=0, notifications=2, polls=4, poll_interval_s=60.0,
        server_poll_interval_s=None, evidence=evidence, filter=_filter(e.frame for e in evidence),
        remedy=remedy_for("icmp_unreachable"), timeline=marks, logon_time=logon, poll_intervals=[60.0, 60.0, 60.0])


def async_client() -> ClientVerdict:
    """IPv6 Outlook 2007+ client: EcDoAsyncWaitEx waits outstanding for minutes, the last one still open."""
    logon = T0 + 3.0
    marks = []
    starts = [(10.0, 190.0), (190.5, 420.0), (420.4, None)]
    for i, (a, b) in enumerate(starts):
        marks.append(TimelineMark(logon + a, "async_wait", 100 + 10 * i, "EcDoAsyncWaitEx",
                                  end=None if b is None else logon + b))
        if b is not None:
            marks.append(TimelineMark(logon + b + 0.2, "prompted", 105 + 10 * i, "EcDoRpcExt2"))
    marks.sort(key=lambda m: m.time)
    return ClientVerdict(
        client="2001:db8::20", server="2001:db8::5", verdict="registered", cause="async_wait", confidence=0.9,
        reason="EcDoAsyncWaitEx waits outstanding; completions followed by calls", notifications=0, polls=0,
        evidence=[EvidenceItem(100, logon + 10.0, "EcDoAsyncWaitEx request")], filter="frame.number == 100",
        remedy=remedy_for("async_wait"), timeline=marks, logon_time=logon, poll_intervals=[])


def bare_clients() -> list[ClientVerdict]:
    """Thin data: no marks at all; one call and no logon time; refused registration, nothing else."""
    quiet = ClientVerdict(client="10.9.9.1", server="10.9.9.9", verdict="inconclusive", cause="capture_too_short",
                          confidence=0.3, reason="nothing after the bind", remedy=remedy_for("capture_too_short"))
    one = ClientVerdict(client="10.9.9.2", server="10.9.9.9", verdict="inconclusive", cause="mid_session_no_evidence",
                        confidence=0.4, reason="one call", polls=1,
                        timeline=[TimelineMark(T0 + 30.0, "unprompted", 3, "EcDoRpcExt2")],
                        evidence=[EvidenceItem(3, T0 + 30.0, "EcDoRpcExt2 request")], filter="frame.number == 3",
                        remedy=remedy_for("mid_session_no_evidence"))
    refused = ClientVerdict(
        client="10.9.9.3", server="10.9.9.9", verdict="not_registered", cause="server_refused", confidence=0.97,
        reason="EcRRegisterPushNotification returned 0x80040102 (ecNotSupported)", register_status=0x80040102,
        callback="10.9.9.3:1111", timeline=[TimelineMark(T0 + 2.0, "registration", 9, "opnum 4 -> 0x80040102")],
        logon_time=T0 + 1.0, evidence=[EvidenceItem(9, T0 + 2.0, "opnum 4 response 0x80040102")],
        filter="frame.number == 9", remedy=remedy_for("server_refused"))
    return [quiet, one, refused]


def server_side_result() -> CaptureResult:
    return CaptureResult(file="captures/site-a.pcapng", format="pcapng", compressed=False, frames=1234, start=T0,
                         end=T0 + 620.0, vantage="server", vantage_reason="EMSMDB server address is local",
                         warnings=["3 frames truncated by the snap length"],
                         clients=[polling_client(), healthy_client(), icmp_client()])


def all_results() -> list[CaptureResult]:
    return [
        server_side_result(),
        CaptureResult(file="captures/v6.cap.gz", format="netmon2", compressed=True, frames=88, start=T0,
                      end=T0 + 500.0, vantage="client", clients=[async_client()]),
        CaptureResult(file="captures/thin.pcap", format="pcap", frames=20, start=T0, end=T0 + 40.0,
                      clients=bare_clients()),
        CaptureResult(file="notes.txt", error="notes.txt: not a capture file (unknown magic 0x6e6f7465)"),
        CaptureResult(file="captures/web.pcap", format="pcap", frames=500, start=T0, end=T0 + 60.0,
                      vantage="unknown", clients=[]),
    ]


# ---------------------------------------------------------------------------------------------------- JSON


def test_render_json_is_the_contract_document_key_by_key():
    from analyzer.report import render_json

    doc = json.loads(render_json(all_results()))
    assert doc["tool"] == "mailpush" and doc["version"] == __version__
    assert len(doc["captures"]) == 5
    capture_types = {"file": str, "format": (str, type(None)), "compressed": bool, "frames": int,
                     "start": (str, type(None)), "end": (str, type(None)), "duration_s": float, "vantage": str,
                     "warnings": list, "error": (str, type(None)), "clients": list}
    client_types = {"client": str, "mailbox": (str, type(None)), "server": str, "verdict": str, "cause": str,
                    "confidence": float, "reason": str, "callback": (str, type(None)),
                    "register_status": (str, type(None)), "notifications": int, "polls": int,
                    "poll_interval_s": (float, type(None)), "server_poll_interval_s": (float, type(None)),
                    "evidence": list, "filter": str, "remedy": str}
    for cap in doc["captures"]:
        for key, typ in capture_types.items():
            assert key in cap, key
            assert isinstance(cap[key], typ) and not (typ is float and isinstance(cap[key], bool)), (key, cap[key])
        if cap["start"]:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", cap["start"]), cap["start"]
        for cl in cap["clients"]:
            for key, typ in client_types.items():
                assert key in cl, key
                assert isinstance(cl[key], typ), (key, cl[key])
            assert cl["verdict"] in VERDICTS and CAUSES[cl["cause"]] == cl["verdict"]
            assert 0.0 <= cl["confidence"] <= 1.0
            if cl["register_status"] is not None:
                assert re.fullmatch(r"0x[0-9a-f]{8}", cl["register_status"])
            if cl["callback"] is not None:
                assert re.fullmatch(r"(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):\d+", cl["callback"])
            for ev in cl["evidence"]:
                assert set(ev) == {"frame", "time", "what"}
                assert isinstance(ev["frame"], int) and isinstance(ev["time"], float) and isinstance(ev["what"], str)
    first = doc["captures"][0]
    assert first["file"] == "captures/site-a.pcapng" and first["duration_s"] == 620.0
    assert first["warnings"] == ["3 frames truncated by the snap length"]
    polling = first["clients"][0]
    assert (polling["client"], polling["verdict"], polling["cause"]) == ("10.1.2.30", "udp_blocked",
                                                                       "udp_not_delivered")
    assert polling["register_status"] == "0x00000000" and polling["callback"] == "10.1.2.30:3412"
    assert [e["frame"] for e in polling["evidence"]] == [14, 31, 55, 83]
    assert doc["captures"][2]["clients"][2]["register_status"] == "0x80040102"
    assert doc["captures"][3]["error"].startswith("notes.txt: not a capture file")
    assert doc["captures"][3]["clients"] == []


def test_render_json_round_trips_to_the_same_results():
    from analyzer.pipeline import results_document
    from analyzer.report import render_json

    results = all_results()
    doc = json.loads(render_json(results))
    assert doc == json.loads(json.dumps(results_document(results)))
    again = [CaptureResult.from_dict(c) for c in doc["captures"]]
    assert json.loads(render_json(again)) == doc


# ---------------------------------------------------------------------------------------------------- CSV


def test_render_csv_one_row_per_client_with_the_contract_columns():
    from analyzer.report import render_csv

    rows = list(csv.DictReader(io.StringIO(render_csv(all_results()))))
    assert list(rows[0].keys()) == RESULT_COLUMNS
    # 3 + 1 + 3 clients, one row for the unreadable file, one for the capture without clients
    assert len(rows) == 9
    by_client = {r["client"]: r for r in rows if r["client"]}
    assert by_client["10.1.2.30"]["cause"] == "udp_not_delivered"
    assert by_client["10.1.2.30"]["evidence_frames"] == "14 31 55 83"
    assert by_client["10.1.2.31"]["verdict"] == "registered"
    assert by_client["2001:db8::20"]["cause"] == "async_wait"
    assert by_client["10.9.9.3"]["register_status"] == "0x80040102"
    err = next(r for r in rows if r["file"] == "notes.txt")
    assert err["error"].startswith("notes.txt: not a capture file") and err["verdict"] == ""
    empty = next(r for r in rows if r["file"] == "captures/web.pcap")
    assert (empty["verdict"], empty["cause"]) == ("inconclusive", "no_emsmdb_session")


# ---------------------------------------------------------------------------------------------------- text


def test_render_text_table_reasons_evidence_and_remedy():
    from analyzer.report import render_text

    text = render_text(all_results())
    # several captures: an overview of every client first, a row for the unreadable and the empty capture
    assert text.startswith("5 captures, 7 client(s)\nCAPTURE")
    overview = text.split("\n\n\n")[0].splitlines()
    assert len(overview) == 3 + 7 + 2
    assert re.fullmatch(r"captures/thin\.pcap\s+10\.9\.9\.3\s+not_registered\s+server_refused\s+0\.97", overview[9])
    assert re.fullmatch(r"notes\.txt\s+-\s+not analysed\s+\(error\)", overview[10])
    assert render_text(all_results()[:1]).startswith("captures/site-a.pcapng: pcapng, 1234 frames")  # one: no overview
    # the table header and one line per client with verdict and cause
    assert re.search(r"CLIENT\s+MAILBOX\s+SERVER\s+VERDICT\s+CAUSE\s+CONF", text)
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("10.1.2.30 "))
    assert "udp_blocked" in line and "udp_not_delivered" in line and "0.90" in line
    assert "2001:db8::20" in text and "async_wait" in text
    # reason, evidence frames with times relative to capture start, filter and remedy
    flat = " ".join(text.split())  # long lines are wrapped
    assert "got no reaction; the client keeps polling every 60.4 s" in flat
    assert re.search(r"frame\s+14\s+\+7\.100 s", text), text
    assert "frame.number in {14, 31, 55, 83}" in text
    assert "open UDP from the Exchange server" in flat
    # problems of each capture are visible
    assert "notes.txt: not a capture file" in text
    assert "3 frames truncated by the snap length" in text
    assert "no Outlook (EMSMDB) client" in text
    # callers that print problems elsewhere (the CLI's stderr) can leave them out
    quiet = render_text(all_results(), include_problems=False)
    assert "3 frames truncated" not in quiet
    # ... but a capture that could not be read at all still says why, in place of its table
    assert "notes.txt: not analysed: notes.txt: not a capture file" in quiet


# ---------------------------------------------------------------------------------------------------- HTML


def test_render_html_is_self_contained_and_complete():
    from analyzer.report import render_html

    html = render_html(all_results(), title="Site A <push> check")
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "<title>Site A &lt;push&gt; check</title>" in html  # escaped
    # no external resources at all: no http(s) src/href, no <script src>, no <link rel=stylesheet>
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "<link" not in html.lower() and "<script" not in html.lower()
    assert "@import" not in html and "url(http" not in html
    # every client of every capture appears with verdict, cause, reason, remedy, evidence and filter
    for result in all_results():
        assert result.file in html
        for c in result.clients:
            assert c.client in html and c.cause in html
            assert c.reason.replace("<", "&lt;") in html
            assert c.filter in html
    assert html.count("class=\"filter\"") == 6  # every client with evidence frames (one has none)
    assert "frame.number in {14, 31, 55, 83}" in html and "Winsock Transports" in html
    assert "3 frames truncated by the snap length" in html and "not a capture file" in html
    # plots embedded as data: PNG, two per client with activity, each decodable
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 2 * 7
    import base64

    assert all(base64.b64decode(b)[:8] == PNG_MAGIC for b in imgs)
    # verdict colours
    assert "verdict-udp_blocked" in html and "verdict-registered" in html and "verdict-not_registered" in html


def test_render_html_escapes_capture_supplied_text():
    from analyzer.report import render_html

    c = polling_client()
    c.mailbox = "<script>alert(1)</script>"
    html = render_html([CaptureResult(file="x<y>.pcap", format="pcap", start=T0, end=T0 + 5, clients=[c])],
                       plots=False)
    assert "<script>" not in html and "&lt;script&gt;" in html and "x&lt;y&gt;.pcap" in html


# ---------------------------------------------------------------------------------------------------- plots


def test_write_plots_stable_names_valid_png_and_svg(tmp_path):
    from analyzer.report import write_plots

    result = all_results()[0]
    result.clients.append(async_client())  # IPv6 slug
    paths = write_plots(result, tmp_path / "plots", prefix="site-a.")
    names = sorted(p.name for p in paths)
    expected = sorted(f"site-a.{kind}-{slug}.{ext}" for kind in ("timeline", "intervals")
                      for slug in ("10.1.2.30", "10.1.2.31", "192.0.2.7", "2001-db8--20") for ext in ("png", "svg"))
    assert names == expected
    for p in paths:
        data = p.read_bytes()
        if p.suffix == ".png":
            assert data[:8] == PNG_MAGIC and len(data) > 5000
        else:
            root = ET.fromstring(data)
            assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # same input, same SVG bytes (stable names and stable content: diffs of reruns are meaningful)
    one = CaptureResult(file=result.file, start=result.start, end=result.end, clients=[polling_client()])
    again = write_plots(one, tmp_path / "again", prefix="site-a.")
    assert len(again) == 4
    for name in ("site-a.timeline-10.1.2.30.svg", "site-a.intervals-10.1.2.30.svg"):
        assert (tmp_path / "plots" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def _lane_points(fig, lane_label):
    """x positions of the markers drawn in the lane whose y tick label is lane_label."""
    ax = fig.axes[0]
    ticks = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    y = ticks[lane_label]
    xs = []
    for line in ax.get_lines():
        ydata = list(line.get_ydata())
        if ydata and all(v == y for v in ydata) and line.get_marker() not in ("None", None, ""):
            xs += list(line.get_xdata())
    return sorted(xs)


def test_timeline_shows_polling_fallback_vs_healthy_push():
    from analyzer.report import plot_timeline

    result = server_side_result()
    polling = plot_timeline(result, "10.1.2.30")
    healthy = plot_timeline(result, "10.1.2.31")
    ax = polling.axes[0]
    assert "udp_blocked / udp_not_delivered" in ax.get_title(loc="left")
    # x axis counts from logon: ten unprompted ticks, about one per minute, in the polling lane
    ticks = _lane_points(polling, "unprompted call\n(polling)")
    assert len(ticks) == 10
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert all(58 < g < 62 for g in gaps)
    assert ticks[0] == pytest.approx(63.4)
    # the faint one-minute grid from logon (x = 0, 60, 120 ...)
    grid = sorted({round(line.get_xdata()[0], 6) for line in ax.get_lines()
                   if line.get_linestyle() == "-" and len(set(line.get_xdata())) == 1})
    assert {0.0, 60.0, 120.0, 600.0} <= set(grid)
    # the healthy client: four notifications, each joined to a prompted call, only one unprompted tick
    assert len(_lane_points(healthy, "UDP\nnotification")) == 4
    assert len(_lane_points(healthy, "prompted call\n(reaction)")) == 8
    assert len(_lane_points(healthy, "unprompted call\n(polling)")) == 1
    arrows = [t for t in healthy.axes[0].texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 4
    assert not [t for t in polling.axes[0].texts if getattr(t, "arrow_patch", None) is not None]


def test_interval_histogram_reference_line_server_or_assumed():
    from analyzer.report import plot_intervals

    result = server_side_result()
    fig = plot_intervals(result, "10.1.2.30")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "server poll interval (pcmsPollsMax) 60 s" in labels
    assert sum(p.get_height() for p in fig.axes[0].patches) == 9  # nine intervals between ten polls
    fig = plot_intervals(result, "192.0.2.7")  # pcmsPollsMax not captured
    assert "assumed 60 s (pcmsPollsMax not captured)" in fig.axes[0].get_legend_handles_labels()[1]


def test_plots_of_thin_clients_are_explanatory_not_errors(tmp_path):
    from analyzer.report import plot_intervals, plot_timeline, write_plots

    result = all_results()[2]
    texts = []
    for c in result.clients:
        for fig in (plot_timeline(result, c.client), plot_intervals(result, c.client)):
            texts.append(" ".join(t.get_text() for t in fig.axes[0].texts))
            fig.canvas.draw()  # actually renders
    assert "no EMSMDB activity of this client" in texts[0]
    assert "no unprompted calls" in texts[1]
    assert "only one unprompted call" in texts[3]
    assert "no unprompted calls" in texts[5]
    # the one-call client without logon counts from capture start
    fig = plot_timeline(result, "10.9.9.2")
    assert "since capture start" in fig.axes[0].get_xlabel()
    assert _lane_points(fig, "unprompted call\n(polling)") == [30.0]
    assert len(write_plots(result, tmp_path)) == 12
    # no capture times at all still gives a plot
    c = bare_clients()[1]
    fig = plot_timeline(CaptureResult(file="x", clients=[c]), c.client)
    assert "since first event" in fig.axes[0].get_xlabel()
    with pytest.raises(ValueError, match="not in"):
        plot_timeline(result, "10.0.0.99")


def test_render_html_caps_embedded_plots_and_says_so(monkeypatch):
    import analyzer.report.html as html_mod

    monkeypatch.setattr(html_mod, "MAX_PLOTTED_CLIENTS", 2)
    html = html_mod.render_html(all_results())
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 4  # the first two clients only
    assert html.count("plots left out (more than 2 clients in this report") == 5
    assert "10.9.9.3" in html and "server_refused" in html  # clients past the cap keep their verdict card


def test_capture_read_in_part_then_failed_shows_its_error_not_a_verdict():
    from analyzer.report import render_html, render_text

    broken = CaptureResult(file="cut.pcapng", format="pcapng", frames=7, start=T0, end=T0 + 1,
                           error="pcapng block at byte 912 has length 0")
    text = render_text([broken])
    assert "error: pcapng block at byte 912 has length 0" in text and "no_emsmdb_session" not in text
    html = render_html([broken, all_results()[4]], plots=False)
    assert "not analysed: pcapng block at byte 912 has length 0" in html
    assert html.count("no_emsmdb_session") == 2  # the clean capture without clients: summary row and section
