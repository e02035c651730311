"""Both engines over the same captures give the same events table.

Captures: every file in ../shared/captures/public/, every sample capture of captures/manifest.json, and two
sessions written here with scapy: the session of test_tshark_engine (fragmented opnum 4 with auth trailers,
two-fragment response in one segment, NSPI decoy, fault, packet privacy, UDP notification, ICMP error) and an
IPv6 session over 802.1Q whose EMSMDB connection has no bind in the capture: its server port (6001, Exchange's
classic RPC port) is learned only from an ept_map response, the opnum 4 carries an IPv6 callback (Windows
AF_INET6 = 23), and the datagram is refused with ICMPv6 administratively prohibited.

Compared: every column of every row, in order (time to the microsecond), except ``note``, which is free text
meant for people. In particular the key columns frame, kind, opnum, interface, call_id, callback, context_hex,
status and ctx_id, and the udp and icmp rows.

Intentional differences: one, capture loss (issue 9 item 4). tshark, with out-of-order reassembly on, waits for
a segment the capture lost forever and dissects none of that direction's later PDUs; the native engine declares the
gap and goes on. On such a capture (``lost_frames`` in the manifest) every row the tshark engine gives is compared
with the native row of the same frame and kind, and the native rows it lacks must all come after the declared gap;
the answers tshark keeps after the gap cannot be paired with requests it never saw, so those are compared on frame,
kind, addresses, ports and connection only. Otherwise none remain on these captures. Two would-be differences are removed in the tshark
engine, and this test holds them in place: (1) tshark does not learn ports from the endpoint mapper, so the
tshark engine maps interfaces itself from ept_map responses and bind_ack secondary addresses, as the native
engine does (the IPv6 session); (2) tshark registers TCP 6000-6063 to X11, which claims an EMSMDB connection on
6001 unless heuristics run first (``tcp.try_heuristic_first``). Out of scope for both engines: DCE/RPC in SMB
named pipes (ncacn_np) and connectionless DCE/RPC.
"""

import ipaddress
import json
import struct
from pathlib import Path

import pytest

from conftest import CAPTURES, PUBLIC

from analyzer.dissect.model import EVENT_COLUMNS  # noqa: E402
from analyzer.dissect.tshark_engine import dissect_with_tshark  # noqa: E402

import test_dcerpc as T  # noqa: E402
from test_tshark_engine import write_session  # noqa: E402

COMPARED_COLUMNS = [c for c in EVENT_COLUMNS if c not in ("note", "time")]


def _lost_segment_files() -> set[str]:
    manifest = CAPTURES / "manifest.json"
    if not manifest.is_file():
        return set()
    return {e["file"] for e in json.loads(manifest.read_text()) if e.get("lost_frames")}


def _files() -> list[Path]:
    files = sorted(p for p in PUBLIC.iterdir() if p.suffix in (".cap", ".pcap", ".pcapng", ".gz")) \
        if PUBLIC.is_dir() else []
    manifest = CAPTURES / "manifest.json"
    if manifest.is_file():
        files += [CAPTURES / e["file"] for e in json.loads(manifest.read_text())]
    return files


def write_ipv6_epm_session(path: Path) -> None:
    """See the module doc. Frames: 1 ept_map request (port 135, no bind), 2 its response naming EMSMDB at
    port 6001, 3 opnum 4 on 6001 (no bind), 4 its response, 5 the datagram, 6 the ICMPv6 error."""
    from scapy.all import UDP, Dot1Q, Ether, ICMPv6DestUnreach, IPv6, TCP, wrpcap

    client, server = "2001:db8::5", "2001:db8::10"
    sockaddr_in6 = struct.pack("<H", 23) + struct.pack(">H", 4000) + bytes(4) \
        + ipaddress.IPv6Address(client).packed + bytes(4)
    packets, seq = [], {}

    def send(src, sport, dst, dport, data):
        seq.setdefault((src, sport), 1000)
        packets.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7)
                       / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="PA", seq=seq[(src, sport)],
                                                      ack=1) / data)
        seq[(src, sport)] += len(data)

    send(client, 50001, server, 135, T.request(3, 0, 3, bytes(60)))
    send(server, 135, client, 50001,
         T.response(3, 0, T.ept_map_response_stub([T.tower_tcp(T.EMSMDB, 0, 81, 6001, "0.0.0.0")])))
    send(client, 50002, server, 6001, T.request(7, 0, 4, T.register_stub(bytes(range(8)), sockaddr_in6)))
    send(server, 6001, client, 50002, T.response(7, 0, bytes(28)))
    datagram = UDP(sport=61000, dport=4000) / bytes(range(8))
    l2 = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / Dot1Q(vlan=7)
    packets.append(l2 / IPv6(src=server, dst=client) / datagram)
    packets.append(l2 / IPv6(src=client, dst=server) / ICMPv6DestUnreach(code=1) / IPv6(src=server, dst=client)
                   / datagram)
    for i, p in enumerate(packets):
        p.time = 1_700_000_100 + i
    wrpcap(str(path), packets)


def rows(events):
    return [tuple(getattr(e, c) for c in COMPARED_COLUMNS) for e in events]


def assert_same_events(path: Path):
    from analyzer.dissect import engine
    native, native_info = engine.dissect_capture(str(path))
    second, tshark_info = dissect_with_tshark(path)
    assert tshark_info.frames == native_info.frames
    for i, (a, b) in enumerate(zip(native, second)):
        diff = {c: (getattr(a, c), getattr(b, c)) for c in COMPARED_COLUMNS if getattr(a, c) != getattr(b, c)}
        assert not diff, f"row {i} (frame {a.frame} {a.kind}): native vs tshark {diff}"
        assert a.time == pytest.approx(b.time, abs=1e-6)
    assert len(native) == len(second), (
        f"native {len(native)} rows, tshark {len(second)}: extra {(native + second)[min(len(native), len(second))]}")
    return native


def assert_tshark_subset_after_capture_loss(path: Path):
    """The documented difference (module doc) for a capture that lost a segment."""
    import re

    from analyzer.dissect import engine
    native, native_info = engine.dissect_capture(str(path))
    second, _tshark_info = dissect_with_tshark(path)
    gaps = {}
    for w in native_info.warnings:
        m = re.match(r"frame (\d+): \d+ bytes missing in TCP connection (\d+) ", str(w))
        if m:
            gaps.setdefault(int(m.group(2)), int(m.group(1)))
    assert gaps, "the capture loss must be declared with a warning"
    by_key = {(e.frame, e.kind, e.src, e.sport): e for e in native}
    after_gap = {(e.frame, e.kind, e.src, e.sport) for e in native if e.conn in gaps and e.frame >= gaps[e.conn]}
    for b in second:
        key = (b.frame, b.kind, b.src, b.sport)
        assert key in by_key, f"tshark row {key} not in the native events"
        a = by_key[key]
        columns = COMPARED_COLUMNS if key not in after_gap else ["frame", "kind", "src", "dst", "sport", "dport",
                                                                    "conn"]
        diff = {c: (getattr(a, c), getattr(b, c)) for c in columns if getattr(a, c) != getattr(b, c)}
        assert not diff, f"frame {b.frame} {b.kind}: native vs tshark {diff}"
    missing = {(e.frame, e.kind, e.src, e.sport) for e in native} - {(b.frame, b.kind, b.src, b.sport) for b in second}
    assert missing <= after_gap, sorted(missing - after_gap)
    return native


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in _files()])
def test_engines_agree_on_capture(path, tshark):
    if path.name in _lost_segment_files():
        assert_tshark_subset_after_capture_loss(path)
    else:
        assert_same_events(path)


def test_engines_agree_on_scapy_session(tmp_path, tshark):
    path = tmp_path / "session.pcap"
    write_session(path)
    events = assert_same_events(path)
    kinds = {e.kind for e in events}
    assert {"bind", "bind_ack", "request", "response", "fault", "udp", "icmp_unreachable"} <= kinds
    assert [e.callback for e in events if e.callback] == ["10.0.0.5:1234"] * 3


def test_engines_agree_on_ipv6_vlan_session_learned_from_epm(tmp_path, tshark):
    path = tmp_path / "ipv6.pcap"
    write_ipv6_epm_session(path)
    events = assert_same_events(path)
    assert [(e.frame, e.kind) for e in events] == [(1, "request"), (2, "response"), (3, "request"),
                                                   (4, "response"), (5, "udp"), (6, "icmp_unreachable")]
    register = events[2]
    assert (register.interface, register.dport, register.opname, register.callback, register.context_hex) == (
        "EMSMDB", 6001, "EcRRegisterPushNotification", "[2001:db8::5]:4000", bytes(range(8)).hex())
    assert (events[3].status, events[3].request_frame) == (0, 3)
    icmp = events[5]
    assert (icmp.icmp_type, icmp.icmp_code, icmp.quoted_dst, icmp.quoted_dport) == (1, 1, "2001:db8::5", 4000)


def test_engines_agree_on_udp_datagrams_starting_with_4(tmp_path, tshark):
    """Issue 10 item 1: a notification payload is opaque and may start with byte 4; only connectionless DCE/RPC
    (version 4, PTYPE <= 10, at least its 80-byte header) is left out, by both engines."""
    from scapy.all import IP, UDP, Ether, wrpcap

    cl_rpc = bytes([4, 0]) + bytes(78) + b"stub"
    packets = [Ether() / IP(src="10.0.0.10", dst="10.0.0.5") / UDP(sport=1030, dport=2512) / payload
               for payload in (bytes([4, 0, 1, 2, 3, 4, 5, 6]), bytes([4, 0x20]) + bytes(90), cl_rpc)]
    for i, p in enumerate(packets):
        p.time = 1_700_000_200 + i
    path = tmp_path / "udp4.pcap"
    wrpcap(str(path), packets)
    events = assert_same_events(path)
    assert [(e.frame, e.kind, e.stub_len) for e in events] == [(1, "udp", 8), (2, "udp", 92)]


def test_engines_agree_on_ip_in_ip_and_vxlan(tmp_path, tshark):
    """IPv4 in IPv6 (with a destination-options header) and IPv6 in IPv4: the datagram's addresses are the
    tunnelled header's. A VXLAN datagram (UDP carrying Ethernet) keeps the outer addresses: it is the UDP the
    hosts exchanged."""
    from scapy.all import IP, UDP, Ether, IPv6, IPv6ExtHdrDestOpt, wrpcap
    from scapy.layers.vxlan import VXLAN

    packets = [
        Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / IP(src="10.9.0.1", dst="10.9.0.2")
        / UDP(sport=1030, dport=2512) / b"ctx-4in6",
        Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / IPv6(src="2001:db8::10", dst="2001:db8::5")
        / UDP(sport=1031, dport=2513) / b"ctx-6in4",
        Ether() / IP(src="192.0.2.7", dst="192.0.2.8") / UDP(sport=40000, dport=4789) / VXLAN(vni=5)
        / Ether() / IP(src="10.1.1.1", dst="10.1.1.2") / UDP(sport=1032, dport=2514) / b"inner",
    ]
    for i, p in enumerate(packets):
        p.time = 1_700_000_300 + i
    path = tmp_path / "tunnels.pcap"
    wrpcap(str(path), packets)
    events = assert_same_events(path)
    assert [(e.src, e.dst, e.sport, e.dport) for e in events] == [
        ("10.9.0.1", "10.9.0.2", 1030, 2512), ("2001:db8::10", "2001:db8::5", 1031, 2513),
        ("192.0.2.7", "192.0.2.8", 40000, 4789)]
