"""Issue 9 items 1, 4 and 7 on the native engine (the tshark engine gives the same events: test_engines_compare).

* item 1: an endpoint learnt anywhere labels the whole capture, including PDUs before the frame that taught it:
  ept_map answers (``epm``), binds on other connections to the same endpoint and a later bind on the same
  connection (``endpoint``), and every interface_source value is one of the documented ones;
* item 4: a segment lost by the capture does not hold the later PDUs to the end of the capture;
* item 7: warnings about connections without MAPI traffic are counted in one line of the text report.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CAPTURES

import test_dcerpc as T
from analyzer.dissect import INTERFACE_SOURCES, dissect_capture
from analyzer.dissect import session as session_module

MANIFEST = {e["file"]: e for e in json.loads((CAPTURES / "manifest.json").read_text())}


def _requests_by_client(events):
    out = {}
    for e in events:
        if e.kind == "request":
            out.setdefault(e.src, []).append(e)
    return out


def test_server_side_sessions_labelled_from_their_first_pdu():
    entry = MANIFEST["server_side_endpoints_learnt_late.pcap"]
    events, _info = dissect_capture(CAPTURES / entry["file"])
    taught_by_epm = min(e.frame for e in events if e.kind == "response" and e.opname == "ept_map")
    taught_by_bind = min(e.frame for e in events if e.kind == "bind" and e.interface == "EMSMDB")
    by_client = _requests_by_client(events)
    for client, source in entry["interface_sources"].items():
        calls = by_client[client]
        assert {(e.interface, e.interface_source) for e in calls} == {("EMSMDB", source)}, client
        teacher = taught_by_epm if source == "epm" else taught_by_bind
        assert calls[0].frame < teacher, (client, calls[0].frame, teacher)  # labelled before it was taught
    # the decoded fields of the calls labelled at the end are there too (rop_ids of the EcDoRpcExt2 answers)
    answers = [e for e in events if e.kind == "response" and e.dst == "10.3.1.11" and e.opnum == 11]
    assert answers and all(e.rop_ids is not None for e in answers)
    assert {e.interface_source for e in events} <= set(INTERFACE_SOURCES) | {None}
    assert all((e.interface is None) == (e.interface_source is None) for e in events)


def test_stub_shape_sample_and_decoy():
    events, _ = dissect_capture(CAPTURES / "mid_session_stub_shape.pcap")
    calls = [e for e in events if e.kind in ("request", "response")]
    assert calls and {(e.interface, e.interface_source, e.opname) for e in calls} == {
        ("EMSMDB", "stub_shape", "EcDoRpc")}
    assert any(e.rop_ids for e in calls if e.kind == "response")  # decoded at the end with the label
    events, _ = dissect_capture(CAPTURES / "decoy_mid_session_dcerpc.pcap")
    assert [e for e in events if e.interface is not None] == []


def test_bind_later_on_the_same_connection_labels_the_earlier_calls():
    f = T.Feeder()
    c = T.conn(server_port=50123)
    first = f.send(c, True, T.request(40, 0, 4, T.VECTOR_STUB))  # mid-session: no bind yet
    f.send(c, False, T.response(40, 0, bytes(28)))
    f.send(c, True, T.bind(41, [(0, T.EMSMDB, 0, 81, [T.NDR])], ptype=14))  # alter_context names ctx 0
    events = f.events()
    request = next(e for e in events if e.frame == first)
    assert (request.interface, request.interface_source, request.opname, request.callback) == (
        "EMSMDB", "endpoint", "EcRRegisterPushNotification", "10.0.0.5:1234")
    alter = next(e for e in events if e.kind == "alter_context")
    assert alter.interface_source == "alter_context"


def test_bind_on_another_connection_labels_earlier_calls_of_this_one():
    f = T.Feeder()
    mid, other = T.conn(index=0, server_port=50124), T.conn(index=1, server_port=50124)
    early = f.send(mid, True, T.request(7, 0, 4, T.VECTOR_STUB))
    T.emsmdb_session(f, other)
    events = f.events()
    request = next(e for e in events if e.frame == early)
    assert (request.interface, request.interface_source, request.callback) == ("EMSMDB", "endpoint",
                                                                               "10.0.0.5:1234")


def test_deferred_bound_warns_and_still_labels(monkeypatch):
    monkeypatch.setattr(session_module, "MAX_DEFERRED", 1)
    f = T.Feeder()
    mid, other = T.conn(index=0, server_port=50125), T.conn(index=1, server_port=50125)
    f.send(mid, True, T.request(7, 0, 4, T.VECTOR_STUB))
    second = f.send(mid, True, T.request(8, 0, 4, T.VECTOR_STUB))
    T.emsmdb_session(f, other)
    events = f.events()
    late = next(e for e in events if e.frame == second)
    assert late.interface == "EMSMDB" and late.callback is None and "not decoded" in late.note
    assert any("more than 1 DCE/RPC PDUs" in w for w in f.warnings)


def test_lost_segment_after_bind_keeps_every_frame():
    entry = MANIFEST["lost_segment_after_bind.pcap"]
    events, info = dissect_capture(CAPTURES / entry["file"])
    listed = {(f, k, op) for f, k, op in entry["events"]}
    ours = {(e.frame, e.kind, e.opnum) for e in events if e.kind in ("bind", "alter_context", "request", "response")}
    assert ours == listed
    register = next(e for e in events if e.opname == "EcRRegisterPushNotification" and e.kind == "request")
    assert register.frame == min(entry["clients"][0]["evidence_frames"]) < entry["frames"]
    gaps = [w for w in info.warnings if "bytes missing" in w]
    assert len(gaps) == 1 and getattr(gaps[0], "capture_loss", False) and gaps[0].conn == register.conn


def _capture_with_unrelated_warning(tmp_path) -> Path:
    """The lost-segment sample plus an endpoint-mapper connection joined mid-PDU (a resynchronisation warning on
    a connection without MAPI traffic)."""
    from scapy.all import IP, TCP, Ether, rdpcap, wrpcap

    packets = list(rdpcap(str(CAPTURES / "lost_segment_after_bind.pcap")))
    last = float(packets[-1].time)
    epm = T.request(3, 0, 3, bytes(60))
    for k, data in enumerate((b"\x01" * 40 + epm, )):
        p = Ether() / IP(src="10.3.3.99", dst="10.0.0.10") / TCP(sport=50999, dport=135, flags="PA", seq=1000) / data
        p.time = last + 1 + k
        packets.append(p)
    path = tmp_path / "mixed.pcap"
    wrpcap(str(path), packets)
    return path


def _mailpush(*args):
    return subprocess.run([sys.executable, "-m", "analyzer", "analyze", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_warnings_about_non_mapi_connections_are_counted_in_one_line(tmp_path):
    path = _capture_with_unrelated_warning(tmp_path)
    plain = _mailpush(path)
    lines = [line for line in plain.stderr.splitlines() if "warning:" in line]
    assert any("capture loss on a MAPI connection of client 10.3.3.31" in line for line in lines), lines
    assert any("1 warning(s) about 1 connection(s) without MAPI traffic" in line for line in lines), lines
    assert not any("does not start at a DCE/RPC PDU boundary" in line for line in lines), lines
    verbose = _mailpush("--verbose", path)
    assert "does not start at a DCE/RPC PDU boundary" in verbose.stderr
    assert "without MAPI traffic" not in verbose.stderr
    doc = json.loads(_mailpush("--format", "json", path).stdout)
    captures = doc["captures"] if isinstance(doc, dict) else doc
    warnings = captures[0]["warnings"]
    assert any("does not start at a DCE/RPC PDU boundary" in w for w in warnings)
    assert any("bytes missing" in w for w in warnings)


ASYNC_EMSMDB = "5261574a-4572-206e-b268-6b199213b4e4"


def test_one_endpoint_serving_emsmdb_and_asyncemsmdb_is_decided_by_the_calls():
    """Exchange's RPC Client Access serves EMSMDB and AsyncEMSMDB on one port: two other connections bind each at
    context 0. A mid-session connection making only EcDoAsyncWaitEx calls (opnum 0) is AsyncEMSMDB; one whose stubs
    have EMSMDB's shape is EMSMDB; one with neither stays unlabelled."""
    import random

    from test_stub_shape import ROPS, _ecdorpc_request, _ecdorpc_response, _handle

    port = 50126
    f = T.Feeder()
    waiting, polling, unknown = T.conn(0, port), T.conn(1, port), T.conn(2, port)
    for k in range(3):
        f.send(waiting, True, T.request(60 + k, 0, 0, _handle(random.Random(k)) + bytes(4)))
        f.send(waiting, False, T.response(60 + k, 0, bytes(8)))
    cxh = _handle(random.Random(9))
    for k in range(3):
        f.send(polling, True, T.request(70 + k, 0, 2, _ecdorpc_request(cxh, ROPS)))
        f.send(polling, False, T.response(70 + k, 0, _ecdorpc_response(cxh, ROPS)))
    f.send(unknown, True, T.request(80, 0, 5, bytes(24)))
    for index, uuid, version in ((3, T.EMSMDB, (0, 81)), (4, ASYNC_EMSMDB, (0, 1))):
        c = T.conn(index, port)
        f.send(c, True, T.bind(1, [(0, uuid, *version, [T.NDR])]))
        f.send(c, False, T.bind_ack(1, str(port).encode() + b"\x00", [(0, 0, T.NDR)]))
    events = f.events()
    labels = {}
    for e in events:
        if e.kind in ("request", "response") and e.conn in (0, 1, 2):
            labels.setdefault(e.conn, set()).add((e.interface, e.interface_source))
    assert labels == {0: {("AsyncEMSMDB", "endpoint")}, 1: {("EMSMDB", "endpoint")}, 2: {(None, None)}}
    assert {e.opname for e in events if e.conn == 0} == {"EcDoAsyncWaitEx"}


def test_connection_warning_survives_pickling_and_json():
    """Batch workers pickle results; JSON writes warnings as plain text."""
    import pickle

    from analyzer.dissect import ConnectionWarning

    w = ConnectionWarning("frame 3: 10 bytes missing", 2, "10.0.0.5:50000", "10.0.0.10:6001", capture_loss=True)
    w.mapi, w.affects = True, "10.0.0.5"
    back = pickle.loads(pickle.dumps(w))
    assert back == w and (back.conn, back.capture_loss, back.mapi, back.affects) == (2, True, True, "10.0.0.5")
    assert json.loads(json.dumps([back])) == ["frame 3: 10 bytes missing"]
