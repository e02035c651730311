"""Issue 9 item 2: EMSMDB recognised by the shape of its stubs (rule in analyzer.dissect.session.EmsmdbShape).

* ground truth: the public wiki capture mgove413 (real Outlook 2002 EcDoRpc stubs with their binds). With every
  bind and alter_context frame cut out (a filtered copy written by tshark in a temp dir) its EMSMDB connections are
  still recognised, and nothing else is;
* false positives / negatives measured on every public capture and every sample: each (connection, context) whose
  stubs are readable is run through the rule whatever labelled it, and compared with what its bind, the endpoint
  mapper or another connection's bind says (the one unlabelled EMSMDB connection of mgove413 is named below);
* generated decoys: random stubs under opnums 2 and 11, DRSUAPI/SAMR-like calls with context handles, EMSMDB
  requests whose answers do not return the handle, a single EMSMDB call.
"""

import random
import shutil
import struct
import subprocess
from collections import defaultdict

import pytest

from conftest import CAPTURES, PUBLIC

from analyzer.dissect.collector import EventCollector
from analyzer.dissect.session import EmsmdbShape
from analyzer.dissect.transport import Transport
from analyzer.ingest import open_capture

MGOVE = PUBLIC / "wiki-mgove413-outlook2002-egress-only.pcap"
# mgove413's connection 3 (146.243.253.109:1583 -> 146.243.20.165:50001) has no bind in the capture; by hand it
# is the same Outlook's EMSMDB session with a second server: EcDoRpc stubs with Outlook's 0x7fff sizes, four
# context handles each used many times, XOR-0xA5 ROP buffers (read with Wireshark's mapi dissector)
KNOWN_EMSMDB_WITHOUT_BIND = {("wiki-mgove413-outlook2002-egress-only.pcap", "146.243.20.165", 50001),
                             # the sample built for this rule (captures/samplelib/scenarios.py s_mid_session_stub_shape)
                             ("mid_session_stub_shape.pcap", "10.0.0.12", 50001)}


class _ShapeRecorder(EventCollector):
    """The native engine's collector, also feeding every readable stub to an EmsmdbShape per (conn, ctx)."""

    def __init__(self, warn):
        super().__init__(warn=warn)
        self.shapes = defaultdict(EmsmdbShape)
        self.server_of = {}

    def _finish_stub(self, ev, hdr, stub, call, iface, decoder):
        super()._finish_stub(ev, hdr, stub, call, iface, decoder)
        if not ev.encrypted and call.damaged is None and ev.opnum is not None and ev.ctx_id is not None:
            self.shapes[(ev.conn, ev.ctx_id)].feed(ev.kind == "request", ev.opnum, stub, hdr.little_endian)
            server = (ev.dst, ev.dport) if ev.kind == "request" else (ev.src, ev.sport)
            self.server_of[(ev.conn, ev.ctx_id)] = server


def shape_groups(path):
    """[(server, true interface name or None, recognised as EMSMDB, readable PDUs)] per (conn, ctx)."""
    with open_capture(str(path)) as cap:
        rec = _ShapeRecorder(warn=cap.info.warnings.append)
        transport = Transport(rec)
        for batch in cap.batches():
            transport.feed(batch)
        transport.finish()
        events = rec.finish()
    truth = {}
    for e in events:
        if e.kind in ("request", "response") and e.ctx_id is not None and e.interface_source not in (None,
                                                                                                    "stub_shape"):
            truth[(e.conn, e.ctx_id)] = e.interface
    out = []
    for key, shape in rec.shapes.items():
        server = rec.server_of[key]
        name = truth.get(key)
        if (path.name, *server) in KNOWN_EMSMDB_WITHOUT_BIND:
            name = "EMSMDB"
        pdus = shape.req_ok + shape.req_bad + shape.resp_ok + shape.resp_bad
        out.append((server, name, shape.is_emsmdb(), pdus))
    return out


def _all_captures():
    files = sorted(p for p in PUBLIC.iterdir() if p.suffix in (".cap", ".pcap", ".pcapng", ".gz")) \
        if PUBLIC.is_dir() else []
    import json
    files += [CAPTURES / e["file"] for e in json.loads((CAPTURES / "manifest.json").read_text())]
    return files


def test_no_false_positive_and_measured_false_negatives_on_every_capture(public_dir):
    """The figures docs/output.md quotes: false positives 0; false negatives only on connections with fewer than 3
    readable EMSMDB calls (one EcDoConnect, one opnum 4...), which the rule leaves alone by design."""
    fp, fn, tp, tn, fn_small, tn_big = [], [], 0, 0, 0, 0
    for path in _all_captures():
        for server, name, recognised, pdus in shape_groups(path):
            if recognised and name != "EMSMDB":
                fp.append((path.name, server, name))
            elif name == "EMSMDB" and not recognised:
                if pdus < 6:
                    fn_small += 1
                else:
                    fn.append((path.name, server, pdus))
            elif recognised:
                tp += 1
            else:
                tn += 1
                tn_big += pdus >= 6
    print(f"stub shape: {tp} EMSMDB contexts recognised, {tn} others rejected ({tn_big} with 6+ readable PDUs), "
          f"{len(fp)} false positives, "
          f"{len(fn)} false negatives with 6+ readable PDUs, {fn_small} EMSMDB contexts with fewer left alone")
    assert fp == []
    assert fn == [], fn
    assert tp >= 20 and tn_big >= 5  # the measurement covered a population (decoys: the generated tests below)


def _cut_binds(tmp_path):
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed")
    out = tmp_path / "mgove413-no-binds.pcap"
    subprocess.run([tshark, "-r", str(MGOVE), "-o", "tcp.try_heuristic_first:TRUE", "-Y",
                    "!(dcerpc.pkt_type == 11 || dcerpc.pkt_type == 14 || dcerpc.pkt_type == 12 "
                    "|| dcerpc.pkt_type == 15)", "-F", "pcap", "-w", str(out)], check=True, capture_output=True)
    return out


def test_mgove413_emsmdb_recognised_with_its_binds_cut_out(tmp_path, public_dir):
    from analyzer.dissect import dissect_capture

    original, _ = dissect_capture(str(MGOVE))
    cut = _cut_binds(tmp_path)
    events, info = dissect_capture(str(cut))
    assert not [e for e in events if e.kind in ("bind", "alter_context")]
    emsmdb_servers = {(e.dst, e.dport) for e in original if e.kind == "request" and e.interface == "EMSMDB"}
    by_conn = defaultdict(set)
    for e in events:
        if e.kind == "request":
            by_conn[(e.src, e.sport, e.dst, e.dport)].add((e.interface, e.interface_source))
    # the bound EcDoRpc connection (116 EcDoRpc) and the one that never had a bind in the capture
    assert by_conn[("146.243.253.109", 2282, "146.243.20.184", 50001)] == {("EMSMDB", "stub_shape")}
    assert by_conn[("146.243.253.109", 1583, "146.243.20.165", 50001)] == {("EMSMDB", "stub_shape")}
    for (src, sport, dst, dport), labels in by_conn.items():
        for name, source in labels:
            if name == "EMSMDB":
                assert (dst, dport) in emsmdb_servers, (sport, dst, dport, labels)
            assert source != "stub_shape" or name == "EMSMDB"
    # the NSPI connections of the same Outlook (handles repeated too, no ROP buffers) are not EMSMDB
    assert ("EMSMDB", "stub_shape") not in by_conn[("146.243.253.109", 2180, "146.243.22.22", 1025)]


# ---------------------------------------------------------------------------------------------- decoys


def _feed(shape, calls):
    for request, opnum, stub in calls:
        shape.feed(request, opnum, stub, True)
    return shape.is_emsmdb()


def _handle(rng):
    return b"\0\0\0\0" + bytes(rng.randrange(256) for _ in range(16))


def _ecdorpc_request(cxh, rops):
    body = bytes(b ^ 0xA5 for b in rops)
    stub = cxh + struct.pack("<III", 0x7FFF, 0, len(body)) + body
    stub += b"\0" * (len(stub) & 1)
    return stub + struct.pack("<HH", len(body), 0x7FFF)


def _ecdorpc_response(cxh, rops):
    body = bytes(b ^ 0xA5 for b in rops)
    stub = cxh + struct.pack("<III", 0x7FFF, 0, len(body)) + body
    stub += b"\0" * (len(stub) & 1)
    stub += struct.pack("<H", len(body))
    stub += b"\0" * (-len(stub) & 3)
    return stub + struct.pack("<I", 0)


ROPS = bytes.fromhex("1000fe00000006040000000000000000ffffffff")


def test_real_shaped_ecdorpc_session_is_recognised_from_both_directions():
    rng = random.Random(1)
    cxh = _handle(rng)
    calls = []
    for _ in range(3):
        calls += [(True, 2, _ecdorpc_request(cxh, ROPS)), (False, 2, _ecdorpc_response(cxh, ROPS + bytes(8)))]
    assert _feed(EmsmdbShape(), calls)
    # never from one PDU, nor from one call
    assert not _feed(EmsmdbShape(), calls[:1])
    assert not _feed(EmsmdbShape(), calls[:2])


def test_answers_that_do_not_return_the_handle_are_not_emsmdb():
    rng = random.Random(2)
    cxh = _handle(rng)
    calls = []
    for _ in range(5):
        calls += [(True, 2, _ecdorpc_request(cxh, ROPS)), (False, 2, _ecdorpc_response(_handle(rng), ROPS))]
    assert not _feed(EmsmdbShape(), calls)


@pytest.mark.parametrize("seed", range(40))
def test_random_stubs_under_opnums_2_and_11_are_never_emsmdb(seed):
    rng = random.Random(seed)
    calls = []
    for k in range(12):
        opnum = rng.choice((2, 11))
        calls.append((True, opnum, bytes(rng.randrange(256) for _ in range(rng.randrange(20, 400)))))
        calls.append((False, opnum, bytes(rng.randrange(256) for _ in range(rng.randrange(8, 400)))))
    assert not _feed(EmsmdbShape(), calls)


@pytest.mark.parametrize("seed", range(20))
def test_handle_bearing_services_are_never_emsmdb(seed):
    """DRSUAPI / SAMR / LSA-like: the same context handle on every request (and on some answers), NDR bodies
    without an EcDoRpc layout, opnums 2 and 11 among others."""
    rng = random.Random(100 + seed)
    cxh = _handle(rng)
    calls = []
    for k in range(12):
        opnum = rng.choice((2, 3, 11, 5, 7, 12))
        body = struct.pack("<III", rng.randrange(1, 9), rng.randrange(0x20000), rng.randrange(64)) + bytes(
            rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        calls.append((True, opnum, cxh + body))
        calls.append((False, opnum, (cxh if rng.random() < 0.5 else b"") + struct.pack("<I", 0)))
    assert not _feed(EmsmdbShape(), calls)
