"""The DCE/RPC session analyser both engines feed (analyzer.dissect.rpc_session), driven with PduRecords as an
engine hands them over, and the protocol tables it and the later stages read (codes, interfaces, emsmdb).

The records here are built the way the tshark engine builds them (parsed fields, no raw bytes), so these tests
pin what the tshark engine inherits from the shared analyser: the bind_nak fallback to the oldest outstanding
bind, the memory bounds, stubs it could not get, and stubs it unsealed itself.
"""

from analyzer.dissect.codes import STATUS_NAMES, AsyncFlags, PfcFlags, PType, RopId, Status, rop_id_text
from analyzer.dissect.dcerpc import BindAckPdu, BindPdu, Body, CallPdu, ContextItem, ContextResult, Header
from analyzer.dissect.emsmdb import EMSMDB_DECODERS, EmsmdbOp, decode_request_stub
from analyzer.dissect.interfaces import (
    EMSMDB,
    EMSMDB_UUID,
    INTERFACES,
    NDR_UUID,
    NSPI_UUID,
    interface_name,
    opname,
    operation,
)
from analyzer.dissect.model import PTYPE_KIND
from analyzer.dissect.rpc_session import MAX_OUTSTANDING_CALLS, PduRecord, RpcSessionAnalyser

CLIENT, SERVER = ("10.0.0.2", 50000), ("10.0.0.1", 6001)
BOTH = int(PfcFlags.FIRST_FRAG | PfcFlags.LAST_FRAG)


class Feed:
    def __init__(self):
        self.events = []
        self.warnings = []
        self.session = RpcSessionAnalyser(self.events, self.warnings.append)
        self.frame = 0

    def send(self, from_client, ptype, call_id, body, flags=BOTH, stub_len=0, **extra):
        self.frame += 1
        src, dst = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
        hdr = Header(0, int(ptype), flags, True, 0, 0, call_id)
        self.session.pdu(PduRecord(7, from_client, self.frame, float(self.frame), src[0], src[1], dst[0], dst[1],
                                   hdr, body, stub_len, **extra))
        return self.events[-1]


def _bind(f, call_id, *items):
    contexts = [ContextItem(ctx, uuid, major, minor, [(NDR_UUID, 2)]) for ctx, uuid, major, minor in items]
    return f.send(True, PType.bind, call_id, BindPdu(contexts, Body(b"")))


def _call(ptype, ctx, opnum, stub, alloc_hint=0, status=None, auth_level=0):
    return CallPdu(alloc_hint, ctx, opnum, None, status, Body(stub, 0, auth_level))


def test_bind_nak_without_matching_call_id_rejects_the_oldest_bind():
    f = Feed()
    _bind(f, 1, (0, EMSMDB_UUID, 0, 81))
    nak = f.send(False, PType.bind_nak, 99, Body(b""), reject_reason=4)
    assert (nak.kind, nak.interface, nak.ctx_id, nak.note) == ("bind_nak", EMSMDB, 0, "bind rejected, reason 4")
    # the rejected context is gone: a request on it is not labelled from the bind
    req = f.send(True, PType.request, 2, _call(PType.request, 0, 4, b""), stub_len=0)
    assert req.interface is None and req.interface_source is None


def test_bind_ack_accepts_in_order_and_responses_take_their_request():
    f = Feed()
    _bind(f, 1, (0, NSPI_UUID, 56, 0), (1, EMSMDB_UUID, 0, 81))
    ack = f.send(False, PType.bind_ack, 1, BindAckPdu("6001", [ContextResult(2, 0, "", 0),
                                                               ContextResult(0, 0, NDR_UUID, 2)], Body(b"")))
    assert (ack.interface, ack.ctx_id) == (EMSMDB, 1)
    req = f.send(True, PType.request, 5, _call(PType.request, 1, EmsmdbOp.EcDummyRpc, b""))
    resp = f.send(False, PType.response, 5, _call(PType.response, 1, None, b"\0\0\0\0"), stub_len=4)
    assert (req.opname, req.interface_source) == ("EcDummyRpc", "bind")
    assert (resp.opnum, resp.request_frame, resp.status) == (EmsmdbOp.EcDummyRpc, req.frame, 0)
    rejected = f.send(True, PType.request, 6, _call(PType.request, 0, 1, b""))
    assert rejected.interface is None  # context 0 was rejected (NSPI), and the connection's bind is in the capture


def test_outstanding_calls_are_bounded_for_every_engine():
    f = Feed()
    _bind(f, 1, (0, EMSMDB_UUID, 0, 81))
    for call_id in range(10, 10 + 3 * MAX_OUTSTANDING_CALLS):
        f.send(True, PType.request, call_id, _call(PType.request, 0, EmsmdbOp.EcDoRpcExt2, b""))
    state = f.session.connection(7)
    assert len(state.requests) == MAX_OUTSTANDING_CALLS
    for call_id in range(10, 10 + 3 * MAX_OUTSTANDING_CALLS):  # FIRST fragments that never end
        f.send(True, PType.request, call_id, _call(PType.request, 0, 11, b"x" * 8), flags=int(PfcFlags.FIRST_FRAG),
               stub_len=8)
    assert len(state.calls) == MAX_OUTSTANDING_CALLS


def test_a_stub_the_engine_could_not_get_is_not_decoded_and_says_why():
    f = Feed()
    _bind(f, 1, (0, EMSMDB_UUID, 0, 81))
    first = f.send(True, PType.request, 3, _call(PType.request, 0, 4, None), flags=int(PfcFlags.FIRST_FRAG),
                   stub_len=40, stub_missing="not given")
    last = f.send(True, PType.request, 3, _call(PType.request, 0, 4, b"y" * 30), flags=int(PfcFlags.LAST_FRAG),
                  stub_len=30)
    assert first.stub_len == 40 and "fragment 1 of call 3" in first.note
    assert last.stub_len == 70 and last.callback is None and "stub not decoded: not given" in last.note


def test_a_stub_the_engine_unsealed_reads_as_clear_with_decrypted_set():
    f = Feed()
    _bind(f, 1, (0, EMSMDB_UUID, 0, 81))
    ev = f.send(True, PType.request, 4, _call(PType.request, 0, EmsmdbOp.EcDoConnectEx, b"\0" * 8, auth_level=6),
                stub_len=8, clear=True)
    assert (ev.encrypted, ev.decrypted, ev.auth_level) == (False, True, 6)
    sealed = f.send(True, PType.request, 5, _call(PType.request, 0, EmsmdbOp.EcDoConnectEx, None, alloc_hint=99,
                                                  auth_level=6), stub_len=8)
    assert (sealed.encrypted, sealed.decrypted, sealed.stub_len) == (True, False, 99)


def test_interface_table_is_the_one_source_of_names_and_decoders():
    emsmdb = next(i for i in INTERFACES if i.name == EMSMDB)
    assert (emsmdb.uuid, emsmdb.version) == (EMSMDB_UUID, (0, 81))
    assert interface_name(EMSMDB_UUID, 0, 81) == EMSMDB
    for op in EmsmdbOp:
        assert opname(EMSMDB, int(op)) == op.name == emsmdb.operations[op].name
    register = operation(EMSMDB, 4)
    assert register.name == "EcRRegisterPushNotification"
    assert register.request is EMSMDB_DECODERS[EmsmdbOp.EcRRegisterPushNotification].request
    assert opname(EMSMDB, 12) is None and operation(EMSMDB, 12) is None and decode_request_stub(EMSMDB, 12, b"") == {}
    assert opname("EPM", 3) == "ept_map" and opname("NSPI", 19) == "NspiResolveNames"


def test_codes_keep_their_wire_values():
    # the values the specifications give (MS-RPCE 2.2.2.3, MS-OXCRPC 2.2.2.1 / 3.3.4.1, MS-OXCROPS, MS-OXCDATA)
    assert (PfcFlags.FIRST_FRAG, PfcFlags.LAST_FRAG, PfcFlags.OBJECT_UUID) == (1, 2, 0x80)
    assert AsyncFlags.NotificationPending == 1
    assert (RopId.RopNotify, RopId.RopPending) == (0x2A, 0x6E) and rop_id_text(RopId.RopNotify) == "2a"
    assert PTYPE_KIND[0] == "request" and PTYPE_KIND[13] == "bind_nak" and PTYPE_KIND[20] == "rts"
    assert STATUS_NAMES[0x80040102] == "ecNotSupported" and STATUS_NAMES[5] == "access denied"
    assert STATUS_NAMES[Status.ecRejected] == "ecRejected" and Status.ecRejected == 0x7EE
    assert len(STATUS_NAMES) == 13
