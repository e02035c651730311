"""DCE/RPC connection-oriented analysis (analyzer.dissect.dcerpc + analyzer.dissect.collector).

PDUs are built here as bytes (the docs/protocol.md §1.10 vector verbatim, and builders that follow C706/MS-RPCE
field by field with the shared layouts of analyzer/dissect/layouts.py; the vector, scapy and tshark are the
independent checks of those layouts) and fed to EventCollector through its PacketSink methods with a
TcpConnection, in chunks cut at awkward places, the way the TCP transport delivers them.
"""

import random
import struct
import uuid


from analyzer.dissect import dcerpc, layouts
from analyzer.dissect.collector import EventCollector
from analyzer.dissect.epm import parse_ept_map_response
from analyzer.dissect.stream import TcpConnection

EMSMDB = "a4f1db00-ca47-1067-b31f-00dd010662da"
NSPI = "f5cc5a18-4264-101a-8c59-08002b2f8426"
EPM = "e1af8308-5d1f-11c9-91a4-08002b14a0fa"
NDR = "8a885d04-1ceb-11c9-9fe8-08002b104860"
NDR64 = "71710533-beba-4937-8319-b5dbef9ccc36"
BTFN = "6cb71c2c-9812-4540-0300-000000000000"

VECTOR_REQUEST_PDU = bytes.fromhex(
    "05000003100000006200000002000000" "4a00000000000400"
    "000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000010000000000102030405060708090a0b0c0d0e0f10000000ffffffff"
    "10000000020004d20a00000500000000000000001000"
)
VECTOR_RESPONSE_PDU = bytes.fromhex(
    "05000203100000003400000002000000" "1c00000000000000" "000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000002010480"
)
VECTOR_STUB = VECTOR_REQUEST_PDU[24:]


# ----------------------------------------------------------------------------------------------------- builders


def guid_bytes(text: str, le: bool = True) -> bytes:
    return uuid.UUID(text).bytes_le if le else uuid.UUID(text).bytes


def pdu(ptype: int, call_id: int, body: bytes, flags: int = 3, le: bool = True, auth=None) -> bytes:
    """Common header + body [+ auth padding + sec_trailer + verifier]. auth = (type, level, verifier)."""
    trailer = b""
    auth_len = 0
    if auth is not None:
        auth_type, level, verifier = auth
        pad = (-(layouts.COMMON_HEADER.size + len(body))) % 16  # MS-RPCE: sec_trailer 16-byte aligned
        body = body + b"\xbb" * pad
        trailer = layouts.SEC_TRAILER.pack(le, auth_type=auth_type, auth_level=level, auth_pad_length=pad) + verifier
        auth_len = len(verifier)
    frag_len = layouts.COMMON_HEADER.size + len(body) + len(trailer)
    drep = layouts.DREP_LITTLE_ENDIAN if le else layouts.DREP_BIG_ENDIAN
    return layouts.COMMON_HEADER.pack(le, ptype=ptype, pfc_flags=flags, drep_int_char=drep, frag_length=frag_len,
                                      auth_length=auth_len, call_id=call_id) + body + trailer


def request(call_id, ctx, opnum, stub, flags=3, le=True, auth=None, alloc_hint=None, obj=None):
    body = layouts.REQUEST_HEADER.pack(le, alloc_hint=len(stub) if alloc_hint is None else alloc_hint, p_cont_id=ctx,
                                       opnum=opnum)
    if obj is not None:
        flags |= 0x80
        body += guid_bytes(obj, le)
    return pdu(0, call_id, body + stub, flags, le, auth)


def response(call_id, ctx, stub, flags=3, le=True, auth=None, alloc_hint=None):
    body = layouts.RESPONSE_HEADER.pack(le, alloc_hint=len(stub) if alloc_hint is None else alloc_hint, p_cont_id=ctx)
    return pdu(2, call_id, body + stub, flags, le, auth)


def fault(call_id, ctx, status, le=True):
    return pdu(3, call_id, layouts.FAULT_HEADER.pack(le, alloc_hint=32, p_cont_id=ctx, status=status), 3, le)


def bind(call_id, contexts, ptype=11, le=True, auth=None):
    """contexts: [(ctx_id, if_uuid, major, minor, [transfer uuids])]."""
    body = layouts.BIND_HEADER.pack(le, n_context_elem=len(contexts))
    for ctx_id, if_uuid, major, minor, transfers in contexts:
        body += layouts.CONTEXT_ELEM.pack(le, p_cont_id=ctx_id, n_transfer_syn=len(transfers),
                                          if_uuid=guid_bytes(if_uuid, le), if_version=minor << 16 | major)
        for ts in transfers:
            body += layouts.SYNTAX_ID.pack(le, if_uuid=guid_bytes(ts, le), if_version=1 if ts == NDR64 else 2)
    return pdu(ptype, call_id, body, 3, le, auth)


def bind_ack(call_id, sec_addr: bytes, results, ptype=12, le=True):
    """results: [(result, reason, transfer uuid)]."""
    body = layouts.BIND_ACK_HEADER.pack(le, assoc_group_id=0x1234, sec_addr_length=len(sec_addr)) + sec_addr
    body += bytes((-(layouts.COMMON_HEADER.size + len(body))) % 4)
    body += layouts.RESULT_LIST_HEADER.pack(le, n_results=len(results))
    for result, reason, ts in results:
        body += layouts.CONTEXT_RESULT.pack(le, result=result, reason=reason, transfer_uuid=guid_bytes(ts, le),
                                            transfer_version=2)
    return pdu(ptype, call_id, body, 3, le)


def register_stub(context: bytes, sockaddr: bytes, le=True) -> bytes:
    e = "<" if le else ">"
    out = bytearray(bytes(20)) + struct.pack(e + "II", 0, len(context)) + context
    out += bytes((-len(out)) % 2) + struct.pack(e + "H", len(context))
    out += bytes((-len(out)) % 4) + struct.pack(e + "II", 0xFFFFFFFF, len(sockaddr)) + sockaddr
    out += bytes((-len(out)) % 2) + struct.pack(e + "H", len(sockaddr))
    return bytes(out)


def sockaddr_in(ip: str, port: int) -> bytes:
    return b"\x02\x00" + struct.pack(">H", port) + bytes(int(x) for x in ip.split(".")) + bytes(8)


def tower_tcp(if_uuid: str, major: int, minor: int, port: int, ip: str) -> bytes:
    """ncacn_ip_tcp tower, 5 floors (docs/protocol.md §4)."""
    def uuid_floor(u, major, minor):
        return (layouts.UUID_FLOOR_LHS.pack(uuid=guid_bytes(u), version_major=major),
                layouts.FLOOR_MINOR_VERSION.pack(version_minor=minor))

    floors = [
        uuid_floor(if_uuid, major, minor),
        uuid_floor(NDR, 2, 0),
        (b"\x0b", struct.pack("<H", 0)),
        (b"\x07", struct.pack(">H", port)),
        (b"\x09", bytes(int(x) for x in ip.split("."))),
    ]
    out = layouts.TOWER_FLOOR_COUNT.pack(floor_count=len(floors))
    for lhs, rhs in floors:
        out += layouts.FLOOR_PART_LENGTH.pack(length=len(lhs)) + lhs + layouts.FLOOR_PART_LENGTH.pack(length=len(rhs))
        out += rhs
    return out


def ept_map_response_stub(towers) -> bytes:
    out = bytes(20) + struct.pack("<I", len(towers)) + struct.pack("<III", 4, 0, len(towers))
    out += b"".join(struct.pack("<I", 0x20000 + 4 * i) for i in range(len(towers)))
    for tower in towers:
        out += struct.pack("<II", len(tower), len(tower)) + tower + bytes((-len(tower)) % 4)
    return out + struct.pack("<I", 0)


def conn(index=0, server_port=49155):
    return TcpConnection(index=index, client_ip="10.0.0.5", client_port=50000 + index, server_ip="10.0.0.10",
                         server_port=server_port, started_in_capture=True)


class Feeder:
    """Delivers PDUs to a collector, frame numbers increasing per delivered chunk."""

    def __init__(self):
        self.warnings = []
        self.sink = EventCollector(warn=self.warnings.append)
        self.frame = 0

    def send(self, c, from_client, data: bytes, chunks=None) -> int:
        """Deliver data in one chunk or cut at the given sizes; returns the last frame used."""
        pieces = [data] if chunks is None else _cut(data, chunks)
        for piece in pieces:
            self.frame += 1
            self.sink.tcp_data(c, from_client, piece, self.frame, 1000.0 + self.frame)
        return self.frame

    def events(self):
        return self.sink.finish()


def _cut(data, sizes):
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        out.append(data[pos:])
    return [p for p in out if p]


def emsmdb_session(f: Feeder, c, ctx=0):
    f.send(c, True, bind(1, [(ctx, EMSMDB, 0, 81, [NDR])]))
    f.send(c, False, bind_ack(1, b"49155\x00", [(0, 0, NDR)]))


def by_kind(events, kind):
    return [e for e in events if e.kind == kind]


# ----------------------------------------------------------------------------------------------------- header


def test_header_parse_matches_scapy():
    from scapy.layers.dcerpc import DceRpc5

    for raw in (VECTOR_REQUEST_PDU, bind(7, [(0, EMSMDB, 0, 81, [NDR])], le=False),
                response(9, 1, bytes(28), le=False, auth=(10, 5, bytes(16)))):
        ours = dcerpc.parse_header(raw)
        theirs = DceRpc5(raw)
        assert dcerpc.plausible_header(raw)
        assert (ours.ptype, ours.flags, ours.frag_len, ours.auth_len, ours.call_id) == (
            theirs.ptype, int(theirs.pfc_flags), theirs.frag_len, theirs.auth_len, theirs.call_id)
        assert ours.little_endian == (theirs.endian == 1)


def test_plausibility_rejects_non_dcerpc():
    assert not dcerpc.plausible_header(b"GET / HTTP/1.1\r\nHost: x\r\n")
    bad_version = bytearray(VECTOR_REQUEST_PDU)
    bad_version[1] = 2
    assert not dcerpc.plausible_header(bad_version)
    connectionless_type = bytearray(VECTOR_REQUEST_PDU)
    connectionless_type[2] = 9
    assert not dcerpc.plausible_header(connectionless_type)
    bad_drep = bytearray(VECTOR_REQUEST_PDU)
    bad_drep[4] = 0x20
    assert not dcerpc.plausible_header(bad_drep)
    short = bytearray(VECTOR_REQUEST_PDU)
    short[8:10] = struct.pack("<H", 12)
    assert not dcerpc.plausible_header(short)
    assert dcerpc.find_plausible_header(b"\x05\x05junk" + VECTOR_REQUEST_PDU) == 6


def test_bind_parse_big_endian_versions_and_uuids():
    raw = bind(3, [(0, EMSMDB, 0, 81, [NDR, NDR64]), (1, NSPI, 56, 0, [NDR])], le=False)
    b = dcerpc.parse_bind(raw, dcerpc.parse_header(raw))
    assert [(c.ctx_id, c.if_uuid, c.if_major, c.if_minor) for c in b.contexts] == [(0, EMSMDB, 0, 81), (1, NSPI, 56, 0)]
    assert [t for t, _ in b.contexts[0].transfer] == [NDR, NDR64]


# ----------------------------------------------------------------------------------------------------- calls


def test_vector_call_register_push_refused():
    f = Feeder()
    c = conn()
    emsmdb_session(f, c)
    req_frame = f.send(c, True, VECTOR_REQUEST_PDU)
    resp_frame = f.send(c, False, VECTOR_RESPONSE_PDU)
    events = f.events()
    assert [e.kind for e in events] == ["bind", "bind_ack", "request", "response"]
    req, resp = events[2], events[3]
    assert (req.frame, req.interface, req.interface_uuid, req.interface_ver) == (req_frame, "EMSMDB", EMSMDB, "0.81")
    assert (req.opnum, req.opname, req.call_id, req.ctx_id) == (4, "EcRRegisterPushNotification", 2, 0)
    assert (req.callback, req.context_hex, req.advise_bits) == ("10.0.0.5:1234", bytes(range(16)).hex(), 0xFFFFFFFF)
    assert req.stub_len == 74 and not req.encrypted and req.auth_level == 0
    assert (req.src, req.sport, req.dst, req.dport, req.conn) == ("10.0.0.5", 50000, "10.0.0.10", 49155, 0)
    assert (resp.frame, resp.opnum, resp.request_frame) == (resp_frame, 4, req_frame)
    assert (resp.status, resp.hnotification, resp.interface) == (0x80040102, 0, "EMSMDB")
    assert (resp.src, resp.dst) == ("10.0.0.10", "10.0.0.5")
    assert f.warnings == []


def test_pdus_split_and_merged_across_chunks():
    f = Feeder()
    c = conn()
    stream = bind(1, [(0, EMSMDB, 0, 81, [NDR])]) + VECTOR_REQUEST_PDU
    # byte by byte: every PDU completes at the frame delivering its last byte
    frames_before = f.frame
    f.send(c, True, stream, chunks=[1] * len(stream))
    f.send(c, False, bind_ack(1, b"49155\x00", [(0, 0, NDR)]) + VECTOR_RESPONSE_PDU)
    events = f.events()
    bind_ev, req = by_kind(events, "bind")[0], by_kind(events, "request")[0]
    assert bind_ev.frame == frames_before + len(bind(1, [(0, EMSMDB, 0, 81, [NDR])]))
    assert req.frame == frames_before + len(stream)
    ack, resp = by_kind(events, "bind_ack")[0], by_kind(events, "response")[0]
    assert ack.frame == resp.frame  # two PDUs in one chunk
    assert req.callback == "10.0.0.5:1234" and resp.status == 0x80040102


def test_big_endian_drep_call():
    f = Feeder()
    c = conn()
    f.send(c, True, bind(1, [(0, EMSMDB, 0, 81, [NDR])], le=False))
    f.send(c, False, bind_ack(1, b"49155\x00", [(0, 0, NDR)], le=False))
    stub = register_stub(b"libmapi\x07", sockaddr_in("192.168.7.9", 2500), le=False)
    f.send(c, True, request(5, 0, 4, stub, le=False))
    f.send(c, False, response(5, 0, bytes(20) + struct.pack(">II", 0x1234, 0), le=False))
    events = f.events()
    req, resp = by_kind(events, "request")[0], by_kind(events, "response")[0]
    assert (req.interface, req.interface_ver, req.opnum, req.call_id) == ("EMSMDB", "0.81", 4, 5)
    assert (req.callback, req.context_hex) == ("192.168.7.9:2500", b"libmapi\x07".hex())
    assert (resp.status, resp.hnotification, resp.opnum) == (0, 0x1234, 4)


def test_fragmented_call_with_auth_trailer():
    f = Feeder()
    c = conn()
    emsmdb_session(f, c)
    stub = VECTOR_STUB
    verifier = bytes(range(16))
    first = request(9, 0, 4, stub[:40], flags=0x01, auth=(10, 5, verifier), alloc_hint=74)
    last = request(9, 0, 4, stub[40:], flags=0x02, auth=(10, 5, verifier), alloc_hint=34)
    assert dcerpc.parse_header(first).auth_len == 16
    # first fragment cut over two chunks, second fragment shares the second chunk and spills into a third
    f.send(c, True, first + last, chunks=[30, len(first) - 30 + 10])
    events = f.events()
    reqs = by_kind(events, "request")
    assert len(reqs) == 2  # one row per PDU, as tshark lists them
    frag1, frag2 = reqs
    assert (frag1.frame, frag1.opnum, frag1.stub_len, frag1.callback) == (4, 4, 40, None)  # 2nd chunk completes it
    assert "fragment 1" in frag1.note
    assert (frag2.frame, frag2.opnum, frag2.stub_len) == (5, 4, 74)
    assert (frag2.callback, frag2.context_hex, frag2.auth_level) == ("10.0.0.5:1234", bytes(range(16)).hex(), 5)
    assert not frag2.encrypted and frag2.note is None


def test_packet_privacy_is_not_decoded():
    f = Feeder()
    c = conn()
    emsmdb_session(f, c)
    ciphertext = bytes(random.Random(1).randrange(256) for _ in range(74))
    f.send(c, True, request(4, 0, 4, ciphertext, auth=(10, 6, bytes(16)), alloc_hint=74))
    f.send(c, False, response(4, 0, bytes(28), auth=(10, 6, bytes(16)), alloc_hint=28))
    req, resp = by_kind(f.events(), "request")[0], by_kind(f.events(), "response")[0]
    assert (req.encrypted, req.auth_level, req.stub_len, req.opnum, req.call_id) == (True, 6, 74, 4, 4)
    assert req.callback is None and req.context_hex is None
    assert (resp.encrypted, resp.stub_len, resp.opnum, resp.status) == (True, 28, 4, None)


def test_object_uuid_request():
    f = Feeder()
    c = conn()
    emsmdb_session(f, c)
    f.send(c, True, request(6, 0, 4, VECTOR_STUB, obj="11111111-2222-3333-4444-555555555555"))
    req = by_kind(f.events(), "request")[0]
    assert req.callback == "10.0.0.5:1234" and req.stub_len == 74


def test_fault_matched_to_request():
    f = Feeder()
    c = conn()
    emsmdb_session(f, c)
    req_frame = f.send(c, True, request(8, 0, 11, b""))
    f.send(c, False, fault(8, 0, 0x1C010002))
    flt = by_kind(f.events(), "fault")[0]
    assert (flt.status, flt.opnum, flt.opname, flt.request_frame, flt.interface) == (
        0x1C010002, 11, "EcDoRpcExt2", req_frame, "EMSMDB")


# ----------------------------------------------------------------------------------------------------- contexts


def test_bind_with_three_contexts_one_rejected():
    f = Feeder()
    c = conn()
    f.send(c, True, bind(1, [(0, EMSMDB, 0, 81, [NDR64]), (1, EMSMDB, 0, 81, [NDR]), (2, EMSMDB, 0, 81, [BTFN])]))
    f.send(c, False, bind_ack(1, b"49155\x00", [(2, 2, "00000000-0000-0000-0000-000000000000"), (0, 0, NDR),
                                                (3, 3, "00000000-0000-0000-0000-000000000000")]))
    f.send(c, True, request(2, 1, 4, VECTOR_STUB))
    f.send(c, True, request(3, 0, 4, VECTOR_STUB))  # rejected context: not EMSMDB
    events = f.events()
    b, ack = by_kind(events, "bind")[0], by_kind(events, "bind_ack")[0]
    assert (b.interface, b.ctx_id) == ("EMSMDB", 0)  # first offered
    assert (ack.interface, ack.ctx_id) == ("EMSMDB", 1)  # first accepted
    on_accepted, on_rejected = by_kind(events, "request")
    assert (on_accepted.interface, on_accepted.callback) == ("EMSMDB", "10.0.0.5:1234")
    assert (on_rejected.interface, on_rejected.opname, on_rejected.callback) == (None, None, None)


def test_alter_context_adds_emsmdb_next_to_an_nspi_decoy():
    f = Feeder()
    c = conn()
    f.send(c, True, bind(1, [(0, NSPI, 56, 0, [NDR])]))
    f.send(c, False, bind_ack(1, b"6004\x00", [(0, 0, NDR)]))
    f.send(c, True, bind(2, [(1, EMSMDB, 0, 81, [NDR])], ptype=14))
    f.send(c, False, bind_ack(2, b"", [(0, 0, NDR)], ptype=15))
    f.send(c, True, request(3, 0, 4, VECTOR_STUB))  # NSPI opnum 4 = NspiSeekEntries: a decoy
    f.send(c, True, request(4, 1, 4, VECTOR_STUB))
    events = f.events()
    assert [e.kind for e in events] == ["bind", "bind_ack", "alter_context", "alter_context_resp", "request",
                                        "request"]
    alter = events[2]
    assert (alter.interface, alter.ctx_id) == ("EMSMDB", 1)
    decoy, real = events[4], events[5]
    assert (decoy.interface, decoy.opname, decoy.callback) == ("NSPI", "NspiSeekEntries", None)
    assert (real.interface, real.opname, real.callback) == ("EMSMDB", "EcRRegisterPushNotification", "10.0.0.5:1234")


def test_bind_nak():
    f = Feeder()
    c = conn()
    f.send(c, True, bind(1, [(0, EMSMDB, 0, 81, [NDR])]))
    f.send(c, False, pdu(13, 1, struct.pack("<HB", 4, 1) + b"\x05\x00"))
    nak = by_kind(f.events(), "bind_nak")[0]
    assert nak.interface == "EMSMDB" and "reason 4" in nak.note


# ----------------------------------------------------------------------------------------------------- EPM


def test_ept_map_tower_parses_with_scapy():
    tower = tower_tcp(EMSMDB, 0, 81, 49155, "10.0.0.10")
    assert len(tower) == 75  # docs/protocol.md §4
    endpoints, status, note = parse_ept_map_response(ept_map_response_stub([tower]))
    assert status == 0 and note is None
    assert [(e.if_uuid, e.if_major, e.if_minor, e.protocol, e.port, e.ip) for e in endpoints] == [
        (EMSMDB, 0, 81, "tcp", 49155, "10.0.0.10")]


def test_tower_parse_agrees_with_scapy():
    from scapy.layers.msrpce.ept import protocol_tower_t

    from analyzer.dissect.epm import parse_tower

    towers = [tower_tcp(EMSMDB, 0, 81, 49155, "10.0.0.10"), tower_tcp(NSPI, 56, 0, 6004, "192.168.1.2"),
              NDR64_EPT_MAP_RESPONSE[76:151]]
    for octets in towers:
        ours = parse_tower(octets)
        floors = protocol_tower_t(octets).floors
        assert (ours.if_uuid, ours.if_major, ours.if_minor) == (str(floors[0].uuid), floors[0].version, floors[0].rhs)
        assert (ours.protocol, ours.port, ours.ip) == ("tcp", floors[3].rhs, floors[4].rhs)
    for cut in range(len(towers[0])):  # truncated towers: None or an endpoint, never an exception
        parse_tower(towers[0][:cut])
    assert parse_tower(towers[0][:40]) is None


def test_ept_map_teaches_port_for_connection_without_bind():
    f = Feeder()
    sink = f.sink
    not_dce = b"\x16\x03\x01\x02\x00" + bytes(60)
    assert not sink.is_interesting_tcp(not_dce, 50001, 49155)
    assert sink.is_interesting_tcp(not_dce, 50001, 135)  # the endpoint mapper port
    epm_conn = conn(0, server_port=135)
    f.send(epm_conn, True, bind(1, [(0, EPM, 3, 0, [NDR])]))
    f.send(epm_conn, False, bind_ack(1, b"135\x00", [(0, 0, NDR)]))
    f.send(epm_conn, True, request(2, 0, 3, bytes(60)))
    f.send(epm_conn, False, response(2, 0, ept_map_response_stub([tower_tcp(EMSMDB, 0, 81, 49155, "10.0.0.10")])))
    assert sink.is_interesting_tcp(not_dce, 50001, 49155)
    # the EMSMDB connection's bind happened before the capture started
    late = conn(1, server_port=49155)
    f.send(late, True, VECTOR_REQUEST_PDU)
    f.send(late, False, VECTOR_RESPONSE_PDU)
    events = f.events()
    epm_resp = [e for e in events if e.conn == 0 and e.kind == "response"][0]
    assert (epm_resp.interface, epm_resp.opname) == ("EPM", "ept_map")
    req, resp = [e for e in events if e.conn == 1]
    assert (req.interface, req.opname, req.callback) == ("EMSMDB", "EcRRegisterPushNotification", "10.0.0.5:1234")
    assert resp.status == 0x80040102 and "bind not in the capture" in req.note


def test_unknown_port_without_bind_stays_unattributed():
    f = Feeder()
    late = conn(1, server_port=6001)
    f.send(late, True, VECTOR_REQUEST_PDU)
    req = f.events()[0]
    assert (req.kind, req.opnum, req.interface, req.callback) == ("request", 4, None, None)


def test_bind_ack_secondary_address_teaches_the_port():
    f = Feeder()
    emsmdb_session(f, conn(0))
    assert f.sink.is_interesting_tcp(b"\x00" * 40, 50099, 49155)
    late = conn(1)
    f.send(late, True, VECTOR_REQUEST_PDU)
    assert [e for e in f.events() if e.conn == 1][0].interface == "EMSMDB"


# ----------------------------------------------------------------------------------------------------- damage


def test_gap_resynchronises_on_next_header_with_a_warning():
    f = Feeder()
    c = conn()
    emsmdb_session(f, c)
    f.send(c, True, VECTOR_REQUEST_PDU[:50])
    f.frame += 1
    f.sink.tcp_gap(c, True, 48, f.frame, 2000.0)
    # the rest of a lost PDU, then a valid one
    after_gap = b"\x00\x05\x00\x00garbage" + request(3, 0, 4, VECTOR_STUB)
    last = f.send(c, True, after_gap)
    events = f.events()
    reqs = by_kind(events, "request")
    assert len(reqs) == 1 and reqs[0].frame == last and reqs[0].call_id == 3 and reqs[0].callback == "10.0.0.5:1234"
    assert any(f"frame {last - 1}" in w and "48 bytes missing" in w for w in f.warnings)


def test_gap_inside_fragmented_call_leaves_stub_undecoded():
    f = Feeder()
    c = conn()
    emsmdb_session(f, c)
    f.send(c, True, request(9, 0, 4, VECTOR_STUB[:40], flags=0x01))
    f.frame += 1
    f.sink.tcp_gap(c, True, 10, f.frame, 2000.0)
    f.send(c, True, request(9, 0, 4, VECTOR_STUB[40:], flags=0x02))
    reqs = by_kind(f.events(), "request")
    assert len(reqs) == 2 and reqs[1].callback is None and "not decoded" in reqs[1].note


def test_midstream_start_is_resynchronised():
    f = Feeder()
    c = conn()
    f.send(c, True, VECTOR_REQUEST_PDU[30:] + VECTOR_REQUEST_PDU)
    events = f.events()
    assert [e.kind for e in events] == ["request"] and events[0].opnum == 4
    assert any("does not start at a DCE/RPC PDU boundary" in w for w in f.warnings)


def test_garbage_never_raises():
    rng = random.Random(7)
    f = Feeder()
    good = bind(1, [(0, EMSMDB, 0, 81, [NDR])]) + VECTOR_REQUEST_PDU + VECTOR_RESPONSE_PDU
    for i in range(200):
        c = conn(i)
        data = bytearray(good)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        sizes = [rng.randrange(1, 40) for _ in range(10)]
        f.send(c, bool(i % 2), bytes(data), chunks=sizes)
        f.sink.tcp_close(c)
    events = f.events()  # no exception; damaged PDUs become warnings or notes
    assert len(events) > 100
    assert not [w for w in f.warnings if "not analysed" in w]  # no handler raised inside the collector


# ----------------------------------------------------------------------------------------------------- UDP / ICMP


def test_udp_and_icmp_rows():
    f = Feeder()
    f.sink.udp(10, 5.0, "10.0.0.10", 61000, "10.0.0.5", 1234, bytes(range(16)))
    f.sink.udp(11, 6.0, "10.0.0.10", 61000, "10.0.0.5", 1234, bytes(100))
    f.sink.icmp_error(12, 6.5, "10.0.0.5", "10.0.0.10", 3, 13, "10.0.0.10", "10.0.0.5", 61000, 1234)
    udp1, udp2, icmp = f.events()
    assert (udp1.kind, udp1.stub_len, udp1.context_hex, udp1.dport) == ("udp", 16, bytes(range(16)).hex(), 1234)
    assert udp2.stub_len == 100 and udp2.context_hex == "00" * 64
    assert (icmp.kind, icmp.icmp_type, icmp.icmp_code, icmp.quoted_dst, icmp.quoted_dport, icmp.sport) == (
        "icmp_unreachable", 3, 13, "10.0.0.5", 1234, None)


# ept_map response stub of netmon23-authsod-ex3-2.cap frame 29 (Windows Server 2016, NDR64 context), as printed by
# `tshark --disable-protocol epm -T fields -e dcerpc.stub_data`: two NETLOGON towers, ports 49670 and 49668
NDR64_EPT_MAP_RESPONSE = bytes.fromhex(
    "0000000000000000000000000000000000000000020000000400000000000000"
    "0000000000000000020000000000000003000000000000000400000000000000"
    "4b000000000000004b000000050013000d785634123412cdabef0001234567cf"
    "fb01000200000013000d045d888aeb1cc9119fe808002b104860020002000000"
    "01000b020000000100070200c2060100090400c0a80001004b00000000000000"
    "4b000000050013000d785634123412cdabef0001234567cffb01000200000013"
    "000d045d888aeb1cc9119fe808002b10486002000200000001000b0200000001"
    "00070200c2040100090400c0a800010000000000"
)


def test_ept_map_response_in_ndr64():
    endpoints, status, note = parse_ept_map_response(NDR64_EPT_MAP_RESPONSE, ndr64=True)
    assert (status, note) == (0, None)
    assert [(e.if_uuid, e.protocol, e.port, e.ip) for e in endpoints] == [
        ("12345678-1234-abcd-ef00-01234567cffb", "tcp", 49670, "192.168.0.1"),
        ("12345678-1234-abcd-ef00-01234567cffb", "tcp", 49668, "192.168.0.1")]
    # read as NDR20 the same bytes give no endpoint, never an exception
    assert parse_ept_map_response(NDR64_EPT_MAP_RESPONSE, ndr64=False)[0] == []


def test_ept_map_over_ndr64_context_teaches_ports():
    f = Feeder()
    epm_conn = conn(0, server_port=135)
    f.send(epm_conn, True, bind(1, [(0, EPM, 3, 0, [NDR]), (1, EPM, 3, 0, [NDR64])]))
    f.send(epm_conn, False, bind_ack(1, b"135\x00", [(2, 2, NDR), (0, 0, NDR64)]))
    f.send(epm_conn, True, request(2, 1, 3, bytes(144)))
    f.send(epm_conn, False, response(2, 1, NDR64_EPT_MAP_RESPONSE))
    assert f.sink.is_interesting_tcp(b"\x00" * 20, 52649, 49670)
    late = TcpConnection(index=1, client_ip="192.168.0.2", client_port=52649, server_ip="192.168.0.1",
                         server_port=49668, started_in_capture=False)
    f.send(late, True, request(3, 0, 21, bytes(40)))
    ev = [e for e in f.events() if e.conn == 1][0]
    assert (ev.interface, ev.opname) == ("NETLOGON", "NetrLogonGetCapabilities")


def test_ncacn_http_greeting_is_skipped_quietly():
    f = Feeder()
    c = conn(0, server_port=6001)
    assert f.sink.is_interesting_tcp(b"ncacn_http/1.0", 50000, 6001)
    f.send(c, True, b"ncacn_http/1.0" + VECTOR_REQUEST_PDU)
    events = f.events()
    assert [(e.kind, e.opnum) for e in events] == [("request", 4)] and f.warnings == []


def test_is_interesting_tcp_finds_a_header_inside_a_segment_but_not_in_bulk_data():
    sink = EventCollector()
    assert sink.is_interesting_tcp(VECTOR_REQUEST_PDU, 50000, 49155)
    assert sink.is_interesting_tcp(memoryview(b"\x00" * 30 + VECTOR_REQUEST_PDU), 50000, 49155)
    rng = random.Random(3)
    bulk = [bytes(rng.randrange(256) for _ in range(1460)) for _ in range(200)]
    assert sum(sink.is_interesting_tcp(b, 50000, 8080) for b in bulk) == 0
    assert not sink.is_interesting_tcp(b"\x05\x00\x00\x03\x10\x00\x00\x00", 50000, 8080)  # too short for a header


def test_one_sided_capture_keeps_bounded_state():
    from analyzer.dissect.collector import MAX_OUTSTANDING_CALLS

    f = Feeder()
    c = conn()
    emsmdb_session(f, c)
    stream = b"".join(request(i, 0, 11, bytes(8)) for i in range(10, 10 + 3 * MAX_OUTSTANDING_CALLS))
    f.send(c, True, stream)
    assert len(c.app.requests) == MAX_OUTSTANDING_CALLS
    f.send(c, False, response(10 + 3 * MAX_OUTSTANDING_CALLS - 1, 0, bytes(8)))  # the newest is still matched
    assert f.events()[-1].opnum == 11


def test_orphaned_call_drops_its_fragments():
    f = Feeder()
    c = conn()
    emsmdb_session(f, c)
    f.send(c, True, request(9, 0, 4, VECTOR_STUB[:40], flags=0x01))
    f.send(c, True, pdu(19, 9, b""))
    assert c.app.calls == {}
    assert [e.kind for e in f.events()][-2:] == ["request", "orphaned"]


ASYNC_EMSMDB = "5261574a-4572-206e-b268-6b199213b4e4"


def test_async_emsmdb_wait_on_its_own_context():
    f = Feeder()
    c = conn()
    f.send(c, True, bind(1, [(0, EMSMDB, 0, 81, [NDR]), (1, ASYNC_EMSMDB, 0, 1, [NDR])]))
    f.send(c, False, bind_ack(1, b"49155\x00", [(0, 0, NDR), (0, 0, NDR)]))
    f.send(c, True, request(2, 0, 14, bytes(20)))
    f.send(c, False, response(2, 0, bytes(20) + struct.pack("<I", 0)))
    wait_frame = f.send(c, True, request(3, 1, 0, bytes(24)))
    f.send(c, False, response(3, 1, struct.pack("<II", 1, 0)))
    ipv6 = register_stub(bytes(range(16)), b"\x17\x00\x04\xd2" + bytes(4) + bytes.fromhex("20010db8" + "00" * 11 + "05")
                         + bytes(4))
    f.send(c, True, request(4, 0, 4, ipv6))
    events = f.events()
    connect, connected, wait, woken, register = events[2:]
    assert (connect.opname, connected.status) == ("EcDoAsyncConnectEx", 0)
    assert (wait.interface, wait.interface_ver, wait.opname) == ("AsyncEMSMDB", "0.1", "EcDoAsyncWaitEx")
    assert (woken.async_flags, woken.status, woken.request_frame) == (1, 0, wait_frame)
    assert register.callback == "[2001:db8::5]:1234" and register.stub_len == 86


def test_midstream_start_signalled_by_the_transport_is_quiet_at_a_pdu_boundary():
    f = Feeder()
    late = conn(1)
    f.sink.tcp_gap(late, True, 0, 1, 1.0)  # what the transport sends before a direction whose start is missing
    f.frame = 1
    f.send(late, True, VECTOR_REQUEST_PDU)
    assert [e.opnum for e in f.events()] == [4] and f.warnings == []
    # not at a boundary: resynchronised, with one warning naming the frame
    g = Feeder()
    g.sink.tcp_gap(late, False, 0, 1, 1.0)
    g.frame = 1
    g.send(late, False, VECTOR_RESPONSE_PDU[7:] + VECTOR_RESPONSE_PDU)
    assert [e.kind for e in g.events()] == ["response"]
    assert len(g.warnings) == 1 and g.warnings[0].startswith("frame 2:")
