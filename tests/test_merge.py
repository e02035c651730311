# SPDX-License-Identifier: GPL-2.0-or-later
"""Merging a client-side and a server-side capture of one incident (issue 13), on the generated pairs in
captures/pairs/ whose truth (clock offset and drift, every datagram's fate, NAT rewrites, merged verdict) is in
captures/pairs/manifest.json.

Stated tolerances: the estimated clock offset lies within OFFSET_TOLERANCE_S of the true offset (the pairs have a
3 ms minimum one-way delay with ~1 ms of random queueing on top) and the truth lies inside the reported
uncertainty; the drift within DRIFT_TOLERANCE_PPM (or the reported drift uncertainty, when larger: the partial
pair overlaps for 150 s only).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analyzer.merge import DELIVERED, LOST_IN_TRANSIT, MERGED, NO_SHARED_PACKETS, NO_TIME_OVERLAP, merge_captures
from analyzer.merge.clock import estimate_clock
from analyzer.pipeline import merge_pair, propose_pairs, analyze
from analyzer.verdict.model import CAUSES
from captures.samplelib import pairs

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "captures" / "pairs"
MAILPUSH = Path(sys.executable).parent / "mailpush"
OFFSET_TOLERANCE_S = 0.001
DRIFT_TOLERANCE_PPM = 3.0

MANIFEST = json.loads((PAIRS / "manifest.json").read_text())
MERGED_PAIRS = [m for m in MANIFEST if m["status"] == MERGED]


def _entry(name):
    return next(m for m in MANIFEST if m["scenario"] == name)


def _paths(m):
    return str(PAIRS / m["client_file"]), str(PAIRS / m["server_file"])


@pytest.fixture(scope="module")
def incidents():
    """Each merged pair, merged once in each order (the sides must be inferred, not taken from the order)."""
    out = {}
    for m in MERGED_PAIRS:
        c, s = _paths(m)
        out[m["scenario"]] = (merge_pair(c, s), merge_pair(s, c))
    return out


def test_pairs_regenerate_byte_for_byte(tmp_path):
    pairs.build(tmp_path)
    for m in MANIFEST:
        for name in (m["client_file"], m["server_file"]):
            assert (tmp_path / name).read_bytes() == (PAIRS / name).read_bytes(), name
    assert json.loads((tmp_path / "manifest.json").read_text()) == MANIFEST
    # the pairs cover the cases and formats
    assert {m["scenario"] for m in MANIFEST} == {"firewall_drop", "nat_rewrite", "partial_overlap", "unrelated"}
    assert {"netmon2", "pcapng", "pcap"} <= {m["client_format"] for m in MANIFEST} | {m["server_format"] for m in MANIFEST}


@pytest.mark.parametrize("name", [m["scenario"] for m in MERGED_PAIRS])
def test_sides_and_clock(incidents, name):
    m = _entry(name)
    c, s = _paths(m)
    truth = m["clock"]
    for inc in incidents[name]:
        merge = inc.merge
        assert merge.status == MERGED, merge.message
        assert (merge.client_file, merge.server_file) == (c, s), merge.sides_reason
        clock = merge.clock
        true_offset = truth["offset_s"] + truth["drift_ppm"] * 1e-6 * (clock.ref_time - truth["t0"])
        error = clock.offset_s - true_offset
        assert abs(error) <= OFFSET_TOLERANCE_S, (name, error)
        assert clock.offset_uncertainty_s is not None and abs(error) <= clock.offset_uncertainty_s
        assert clock.offset_uncertainty_s < 0.01  # a few ms: the minimum one-way delay of the path
        assert abs(clock.drift_ppm - truth["drift_ppm"]) <= max(DRIFT_TOLERANCE_PPM, clock.drift_uncertainty_ppm)
        assert clock.samples_server_to_client >= 5 and clock.samples_client_to_server >= 5
        # at the end of the capture the drift has moved the offset by up to 15 ms: the line must follow it
        t_end = merge.server_span[1]
        true_end = truth["offset_s"] + truth["drift_ppm"] * 1e-6 * (t_end - truth["t0"])
        assert abs(clock.offset_at(t_end) - true_end) <= 2 * OFFSET_TOLERANCE_S


@pytest.mark.parametrize("name", [m["scenario"] for m in MERGED_PAIRS])
def test_every_datagram_fate(incidents, name):
    m = _entry(name)
    for inc in incidents[name]:
        got = [(f.server_frame, f.client_frame, f.fate, f.reaction_frame if f.reaction_side == "client" else None)
               for f in inc.merge.datagrams]
        want = [(d["server_frame"], d["client_frame"], d["fate"], d["reaction_frame"]) for d in m["datagrams"]]
        assert got == want
        for f in inc.merge.datagrams:
            if f.fate == DELIVERED:
                # 3 ms base delay + up to 5 ms queueing, measured through the clock estimate
                assert 0.0 < f.delay_s < 0.012, f
            else:
                assert f.client_frame is None and f.delay_s is None


@pytest.mark.parametrize("name", [m["scenario"] for m in MERGED_PAIRS])
def test_merged_verdict(incidents, name):
    m = _entry(name)
    for inc in incidents[name]:
        got = [(v.client, v.verdict, v.cause) for v in inc.verdicts]
        assert got == [(c["client"], c["verdict"], c["cause"]) for c in m["merged_clients"]]
        for v in inc.verdicts:
            assert CAUSES[v.cause] == v.verdict
            if v.cause == "udp_lost_in_transit":
                assert inc.side_of(v) == "server"
                lost = [d["server_frame"] for d in m["datagrams"] if d["fate"] == LOST_IN_TRANSIT]
                frames = [e.frame for e in v.evidence]
                # the registration as the server saw it, and every datagram that left the server
                assert set(m["server_register_frames"]) | set(lost) <= set(frames)
                assert set(frames) == set(m["server_register_frames"]) | {
                    d["server_frame"] for d in m["datagrams"]}
                assert v.filter == "frame.number in {" + ", ".join(map(str, sorted(frames))) + "}"
                assert f"server capture frame {lost[0]}" in v.reason and "never reached the client" in v.reason
                assert "firewalls" in v.remedy and "NAT devices" in v.remedy


def test_firewall_drop_is_more_than_either_capture_alone(incidents):
    """Alone, neither capture says where the datagrams are lost; merged, the three dropped ones are named."""
    c, s = _paths(_entry("firewall_drop"))
    alone = {r.file: r.clients[0].cause for r in analyze([c, s])}
    assert "udp_lost_in_transit" not in alone.values()
    inc = incidents["firewall_drop"][0]
    assert [f.fate for f in inc.merge.datagrams].count(LOST_IN_TRANSIT) == 3
    delivered = inc.merge.fates(DELIVERED)[0]
    assert delivered.ip_id_matched is True and delivered.rewritten == ""  # no NAT: the IP ID was compared
    assert inc.merge.rewrites == []
    # each capture lost a frame of its own: one payload segment only in the other capture, each way
    assert (inc.merge.tcp_only_client, inc.merge.tcp_only_server) == (1, 1)


def test_nat_rewrites_reported(incidents):
    m = _entry("nat_rewrite")
    for inc in incidents["nat_rewrite"]:
        rw = {(r.proto, r.server_side, r.client_side, r.rewritten) for r in inc.merge.rewrites}
        assert rw == {("tcp", "10.0.0.10", "192.0.2.10", "address"),
                      ("udp", "10.0.0.10:1044", "192.0.2.10:61044", "address and port")}, rw
        for f in inc.merge.datagrams:
            assert f.rewritten == "source address, source port"
            assert f.ip_id_matched is None  # the NAT rewrites IP IDs: not compared
            assert (f.server_src, f.client_src) == ("10.0.0.10:1044", "192.0.2.10:61044")
        assert inc.merge.clients == [(m["merged_clients"][0]["client"], m["merged_clients"][0]["client"])]
        assert "192.0.2.10:61044 (udp address and port)" in inc.verdicts[0].reason


def test_partial_overlap_makes_no_claim_outside_the_client_capture(incidents):
    inc = incidents["partial_overlap"][0]
    fates = [f.fate for f in inc.merge.datagrams]
    assert fates == ["not_covered", "delivered", "lost_in_transit", "not_covered"]
    lo, hi = inc.merge.overlap
    assert 140 < hi - lo < 150  # the client capture ran ~150 s of the server's 330
    assert "1 of 4 UDP notification(s)" in inc.verdicts[0].reason


def test_unrelated_captures_are_never_merged():
    m = _entry("unrelated")
    c, s = _paths(m)
    inc = merge_pair(c, s)
    assert inc.merge.status == NO_SHARED_PACKETS and inc.verdicts == [] and inc.merge.clock is None
    assert "share no TCP segment" in inc.merge.message and "not merged" in inc.merge.message
    # captures of different incidents at different times: told apart by the time spans too
    other = merge_pair(str(PAIRS / "firewall_drop.client.cap"), str(PAIRS / "nat_rewrite.server.pcap"))
    assert other.merge.status == NO_TIME_OVERLAP and "do not overlap" in other.merge.message
    # one file given twice is no pair
    same = merge_pair(s, s)
    assert same.merge.status == "same_capture" and same.verdicts == []


def test_truncated_and_unreadable_inputs(tmp_path):
    c, s = _paths(_entry("nat_rewrite"))
    data = Path(s).read_bytes()
    cut = tmp_path / "server-cut.pcap"
    cut.write_bytes(data[: len(data) * 3 // 4 + 7])
    inc = merge_pair(c, str(cut))
    assert inc.merge.status == MERGED
    assert any("truncated" in w for w in inc.merge.warnings)
    assert [f.fate for f in inc.merge.datagrams][:2] == [DELIVERED, DELIVERED]
    junk = tmp_path / "notes.txt"
    junk.write_text("not a capture\n")
    bad = merge_pair(c, str(junk))
    assert bad.merge.status == "not_read" and "not a capture file" in bad.merge.message
    # gzip-compressed and NetMon: the same merge
    import gzip

    gz = tmp_path / "server.pcap.gz"
    gz.write_bytes(gzip.compress(data))
    assert [f.fate for f in merge_pair(str(gz), c).merge.datagrams] == [DELIVERED] * 3
    # a copy of one capture is no second side
    copy = tmp_path / "copy.pcap"
    copy.write_bytes(data)
    assert merge_pair(s, str(copy)).merge.status == "same_capture"
    # merge_captures without correlations (no roles known) still pairs by payload and infers the sides
    raw = merge_captures(s, None, c, None)
    assert raw.status == MERGED and raw.client_file == c


def test_clock_estimate_is_robust_to_queueing():
    """Envelope fit against a known line: 30 % of the packets queue for 50-500 ms, the rest for ~1 ms."""
    rng = np.random.default_rng(13)
    offset, drift, delay = -7.25, 40e-6, 0.004
    t = np.sort(rng.uniform(0, 600, 400))
    queue = np.where(rng.random(400) < 0.3, rng.uniform(0.05, 0.5, 400), rng.exponential(0.001, 400))
    from_client = rng.random(400) < 0.5
    true = offset + drift * t
    diff = np.where(from_client, true - delay - queue, true + delay + queue)
    base = 1.7e9
    est = estimate_clock(list(base + t[~from_client]), list(diff[~from_client]),
                         list(base + t[from_client]), list(diff[from_client]))
    true_at_ref = offset + drift * (est.ref_time - base)
    assert abs(est.offset_s - true_at_ref) < 0.0005
    assert abs(est.offset_s - true_at_ref) <= est.offset_uncertainty_s
    assert abs(est.drift_ppm - 40.0) < 2.0
    assert abs(est.min_delay_server_to_client_s - delay) < 0.0005


def test_pairs_proposed_by_shared_session():
    files = [str(PAIRS / m[k]) for m in MANIFEST for k in ("client_file", "server_file")]
    results = analyze(files)
    proposed = {(Path(files[i]).name, Path(files[j]).name) for i, j, _why in propose_pairs(results)}
    expected = {(m["client_file"], m["server_file"]) for m in MERGED_PAIRS}
    assert proposed == expected  # the unrelated pair (two mailboxes) is not proposed


# ------------------------------------------------------------------------------------------------ the CLI


def mailpush(*args):
    if not MAILPUSH.exists():
        pytest.skip("mailpush console script not installed in this environment")
    return subprocess.run([str(MAILPUSH), "analyze", *map(str, args)], capture_output=True, text=True, timeout=180)


def test_cli_merge_json_and_fail_on():
    m = _entry("firewall_drop")
    c, s = _paths(m)
    proc = mailpush(s, c, "--merge", "--format", "json", "--fail-on", "udp_blocked")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr  # the merged verdict is udp_blocked
    doc = json.loads(proc.stdout)
    assert len(doc["captures"]) == 2 and len(doc["merges"]) == 1
    merged = doc["merges"][0]
    assert merged["status"] == "merged" and merged["client_file"] == c and merged["server_file"] == s
    assert abs(merged["clock"]["offset_s"] - m["clock"]["offset_s"]) < 0.01
    assert [d["fate"] for d in merged["datagrams"]] == [d["fate"] for d in m["datagrams"]]
    v = merged["verdicts"][0]
    assert (v["cause"], v["verdict"], v["frames_of"]) == ("udp_lost_in_transit", "udp_blocked", s)
    assert "merged:" in proc.stderr


def test_cli_text_html_and_plot(tmp_path):
    c, s = _paths(_entry("partial_overlap"))
    proc = mailpush(c, s, "--merge", "--plots", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"merged: {c} (client side) + {s} (server side)" in text
    assert "clock:    client clock - server clock = +3600.2" in text
    assert "LOST in transit" in text and "left; client capture not running" in text
    assert "udp_blocked / udp_lost_in_transit" in text
    overview = [ln.split() for ln in text.splitlines()[:8]]
    assert [f"{c}", "+", f"{s}", "10.1.62.47", "udp_blocked", "udp_lost_in_transit", "0.90"] in overview
    png = tmp_path / "plots" / "partial_overlap.client+partial_overlap.server.merged-10.1.62.47.png"
    assert png.stat().st_size > 10_000 and png.with_suffix(".svg").exists()
    html = mailpush(c, s, "--merge", "--format", "html", "-o", tmp_path / "r.html")
    assert html.returncode == 0, html.stderr
    page = (tmp_path / "r.html").read_text()
    assert "Merged: " in page and 'alt="merged timeline of 10.1.62.47"' in page and "LOST in transit" in page


def test_cli_proposes_without_merge_and_usage():
    c, s = _paths(_entry("nat_rewrite"))
    proc = mailpush(c, s, "--format", "json")
    assert proc.returncode == 0
    assert "share a MAPI session (mailbox /o=Contoso" in proc.stderr and "add --merge" in proc.stderr
    doc = json.loads(proc.stdout)
    assert "merges" not in doc and doc["merge_proposals"][0]["files"] == [c, s]
    one = mailpush(c, "--merge")
    assert one.returncode == 2 and "--merge needs two captures" in one.stderr
    # the unrelated pair: a clear message, no merged verdict, exit 0
    uc, us = _paths(_entry("unrelated"))
    proc = mailpush(uc, us, "--merge")
    assert proc.returncode == 0 and "not merged:" in proc.stdout and "share no TCP segment" in proc.stderr


def test_tshark_reads_the_pairs(tshark):
    for m in MANIFEST:
        for name, frames in ((m["client_file"], m["client_frames"]), (m["server_file"], m["server_frames"])):
            out = subprocess.run([tshark, "-r", str(PAIRS / name), "-T", "fields", "-e", "frame.number"],
                                 capture_output=True, text=True, timeout=60, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})
            assert out.returncode == 0, out.stderr
            assert len(out.stdout.split()) == frames, name


def test_udp_matching_uses_the_ip_id_without_nat_and_timing_always():
    """The same notification bytes every time: only timing and (without NAT) the IP ID tell datagrams apart."""
    from analyzer.merge.merge import _pair_udp
    from analyzer.merge.model import ClockEstimate
    from analyzer.merge.packets import Packet, PacketTable

    def udp(frame, t, ip_id, src="10.0.0.10", sport=1030):
        return Packet(frame, t, "udp", src, sport, "10.1.1.1", 2600, ip_id, None, 8, b"samebyte")

    clock = ClockEstimate(offset_s=100.0, offset_uncertainty_s=0.002, drift_ppm=0.0, drift_uncertainty_ppm=0.0,
                          ref_time=0.0, min_delay_server_to_client_s=0.003, min_delay_client_to_server_s=0.003,
                          samples_server_to_client=10, samples_client_to_server=10, span_s=300.0)
    server = PacketTable("s", [udp(1, 10.0, 7), udp(2, 70.0, 8), udp(3, 130.0, 9)])
    # the client got the first; at 70 s another datagram with the same bytes but another IP ID arrived (not
    # the server's second one); the third arrived through a NAT that rewrote source and IP ID
    client = PacketTable("c", [udp(11, 110.004, 7), udp(12, 170.004, 99),
                               udp(13, 230.005, 5, src="192.0.2.10", sport=61030)])
    pairs = _pair_udp(client, server, clock)
    assert {s: pc.frame for s, (_ps, pc) in pairs.items()} == {1: 11, 3: 13}
    # a client datagram outside the transit window is never taken for the server's
    late = PacketTable("c", [udp(21, 110.0 + 6.0, 7)])
    assert _pair_udp(late, server, clock) == {}


def test_no_public_capture_pair_is_merged(public_dir):
    """Real captures of unrelated sessions (17 files, 136 pairs): none may be merged."""
    import itertools

    files = sorted(str(p) for p in public_dir.iterdir() if p.is_file() and not p.name.endswith((".md", ".txt")))
    assert len(files) >= 10
    merged = [(a, b) for a, b in itertools.combinations(files, 2)
              if merge_captures(a, None, b, None).status == MERGED]
    assert merged == []
