"""DCE/RPC connection-oriented PDU parsing (C706 chapter 12, MS-RPCE 2.2.2), one PDU at a time.

Everything here is a pure function of the PDU bytes; the per-connection state (stream buffers, contexts,
fragment reassembly, call matching) lives in :mod:`analyzer.dissect.rpc_session`.

Hand-written on purpose: scapy 2.8's ``DceRpc5(pdu)`` costs about 525 µs per PDU on this machine (measured on
the 98-byte opnum-4 request of docs/protocol.md §1.10, 2000 iterations), while the ``struct`` header parse below costs
about 1-2 µs; a capture with a million PDUs would take minutes with scapy. scapy's parser was used to check these
layouts (see tests/test_dcerpc.py, which compares the two on the same bytes).

The data representation (drep) byte order is honoured for every integer of the headers, the bind contexts and the
GUIDs (data1..data3 of a GUID follow the integer byte order).
"""

from __future__ import annotations

import uuid as _uuid
from dataclasses import dataclass, field
from functools import lru_cache

from analyzer.dissect.layouts import (
    AUTH3_HEADER,
    BIND_ACK_HEADER,
    BIND_HEADER,
    BIND_NAK_HEADER,
    COMMON_HEADER,
    CONTEXT_ELEM,
    CONTEXT_RESULT,
    FAULT_HEADER,
    FAULT_STATUS,
    HEADER_LEADING,
    HEADER_LENGTHS,
    NO_FIXED_PART,
    OBJECT_UUID,
    REQUEST_HEADER,
    RESPONSE_HEADER,
    RESULT_LIST_HEADER,
    RTS_HEADER,
    SEC_TRAILER,
    SYNTAX_ID,
)
from analyzer.dissect.codes import AuthLevel, PfcFlags, PType
from analyzer.dissect.model import PTYPE_KIND

# Plain-int copies of the codes (analyzer.dissect.codes) for the per-PDU tests: an enum member costs more per use
PTYPE_REQUEST = int(PType.request)
PTYPE_RESPONSE = int(PType.response)
PTYPE_FAULT = int(PType.fault)
PTYPE_BIND = int(PType.bind)
PTYPE_BIND_ACK = int(PType.bind_ack)
PTYPE_BIND_NAK = int(PType.bind_nak)
PTYPE_ALTER_CONTEXT = int(PType.alter_context)
PTYPE_ALTER_CONTEXT_RESP = int(PType.alter_context_resp)
PTYPE_AUTH3 = int(PType.auth3)
PTYPE_ORPHANED = int(PType.orphaned)

PFC_FIRST_FRAG = int(PfcFlags.FIRST_FRAG)
PFC_LAST_FRAG = int(PfcFlags.LAST_FRAG)
PFC_OBJECT_UUID = int(PfcFlags.OBJECT_UUID)

AUTH_LEVEL_PKT_PRIVACY = int(AuthLevel.PKT_PRIVACY)

HEADER_LEN = COMMON_HEADER.size
# Upper bound for a plausible frag_length. The field is a u16 so 65535 is the hard limit; Windows negotiates
# max_xmit_frag of 4280/5840 and never more than 65535, so any u16 is "sane" beyond the minimum per PTYPE.
MAX_FRAG_LEN = 0xFFFF
# The fixed part that follows the common header, per connection-oriented PTYPE (17 shutdown, 18 co_cancel,
# 20 rts have no constant of their own here).
FIXED_PART = {
    PTYPE_REQUEST: REQUEST_HEADER,
    PTYPE_RESPONSE: RESPONSE_HEADER,
    PTYPE_FAULT: FAULT_HEADER,
    PTYPE_BIND: BIND_HEADER,
    PTYPE_BIND_ACK: BIND_ACK_HEADER,
    PTYPE_BIND_NAK: BIND_NAK_HEADER,
    PTYPE_ALTER_CONTEXT: BIND_HEADER,
    PTYPE_ALTER_CONTEXT_RESP: BIND_ACK_HEADER,
    PTYPE_AUTH3: AUTH3_HEADER,
    17: NO_FIXED_PART,
    18: NO_FIXED_PART,
    PTYPE_ORPHANED: NO_FIXED_PART,
    20: RTS_HEADER,
}
# Minimum frag_length per PTYPE (common header + fixed part), used by the plausibility check.
_MIN_FRAG = {ptype: HEADER_LEN + part.size for ptype, part in FIXED_PART.items()}

# Precompiled structs of the per-PDU path (the layouts compile them; binding them here keeps each parse one
# global lookup and one unpack_from, as measured in benchmarks/results.md)
_LEADING = HEADER_LEADING.le  # rpc_vers, minor, ptype, flags, drep bytes 0 and 1, reserved (any order: bytes, 0)
_LE_HDR, _BE_HDR = HEADER_LENGTHS.le, HEADER_LENGTHS.be  # frag_len, auth_len, call_id
_LENGTHS_AT = HEADER_LENGTHS.offset
_LE_CALL, _BE_CALL = REQUEST_HEADER.le, REQUEST_HEADER.be  # alloc_hint, p_cont_id, opnum (response: cancel_count)
_CALL_AT, _STUB_AT = REQUEST_HEADER.offset, REQUEST_HEADER.end  # same offsets in response and fault
_OBJECT_AT, _OBJECT_END = OBJECT_UUID.offset, OBJECT_UUID.end
_SEC_TRAILER = SEC_TRAILER.le  # its fields are single bytes (and an ignored context id)
_TRAILER_LEN = SEC_TRAILER.size


@dataclass(slots=True)
class Header:
    ver_minor: int
    ptype: int
    flags: int
    little_endian: bool
    frag_len: int
    auth_len: int
    call_id: int

    @property
    def kind(self) -> str:
        return PTYPE_KIND.get(self.ptype, f"ptype{self.ptype}")

    @property
    def first(self) -> bool:
        return bool(self.flags & PFC_FIRST_FRAG)

    @property
    def last(self) -> bool:
        return bool(self.flags & PFC_LAST_FRAG)


def plausible_header(buf, off: int = 0) -> bool:
    """True when ``buf[off:off+16]`` looks like a connection-oriented PDU header: version 5.0/5.1, a
    connection-oriented PTYPE (0, 2, 3, 11-20; connectionless-only types 1, 4-10 never travel over TCP), a valid
    drep (integer order 0/1, character set ASCII/EBCDIC, float IEEE/VAX/Cray/IBM, last two bytes zero),
    frag_length at least the fixed size of that PTYPE, and an auth_length that fits inside the PDU."""
    if len(buf) - off < HEADER_LEN:
        return False
    vers, ver_minor, ptype, _flags, d0, d1, reserved = _LEADING.unpack_from(buf, off)
    if vers != 5 or ver_minor > 1:
        return False
    if ptype not in _MIN_FRAG:
        return False
    if d0 & 0xEE or d1 > 3 or reserved:
        return False
    frag_len, auth_len, _ = (_LE_HDR if d0 & 0x10 else _BE_HDR).unpack_from(buf, off + _LENGTHS_AT)
    if frag_len < _MIN_FRAG[ptype]:
        return False
    if auth_len and auth_len + _TRAILER_LEN + HEADER_LEN > frag_len:
        return False
    return True


def parse_header(buf, off: int = 0) -> Header:
    """Common header at ``off`` (caller checked :func:`plausible_header`)."""
    _vers, ver_minor, ptype, flags, d0, _d1, _reserved = _LEADING.unpack_from(buf, off)
    le = bool(d0 & 0x10)
    frag_len, auth_len, call_id = (_LE_HDR if le else _BE_HDR).unpack_from(buf, off + _LENGTHS_AT)
    return Header(ver_minor, ptype, flags, le, frag_len, auth_len, call_id)


def plausible_header_or_none(buf, off: int = 0) -> Header | None:
    """:func:`parse_header` when :func:`plausible_header` holds, else None: one call and one unpack for the
    collector's per-PDU loop (the same checks, in the same order)."""
    if len(buf) - off < HEADER_LEN or buf[off] != 5:
        return None
    _vers, ver_minor, ptype, flags, d0, d1, reserved = _LEADING.unpack_from(buf, off)
    if ver_minor > 1:
        return None
    min_frag = _MIN_FRAG.get(ptype)
    if min_frag is None or d0 & 0xEE or d1 > 3 or reserved:
        return None
    le = bool(d0 & 0x10)
    frag_len, auth_len, call_id = (_LE_HDR if le else _BE_HDR).unpack_from(buf, off + _LENGTHS_AT)
    if frag_len < min_frag or auth_len and auth_len + _TRAILER_LEN + HEADER_LEN > frag_len:
        return None
    return Header(ver_minor, ptype, flags, le, frag_len, auth_len, call_id)


def find_plausible_header(buf, start: int = 0) -> int:
    """Offset of the first plausible PDU header at or after ``start``, or -1. Used to resynchronise after a
    TCP gap or a damaged PDU."""
    n = len(buf)
    i = start
    find = buf.find if hasattr(buf, "find") else bytes(buf).find
    while True:
        i = find(b"\x05", i)
        if i < 0 or n - i < HEADER_LEN:
            return -1
        if plausible_header(buf, i):
            return i
        i += 1


def guid(b, little_endian: bool = True) -> str:
    """16 bytes of an NDR GUID -> lower-case UUID text (data1..data3 in the drep byte order)."""
    b = bytes(b)
    if len(b) != 16:
        return ""
    return _guid_text(b, little_endian)


@lru_cache(maxsize=1024)
def _guid_text(b: bytes, little_endian: bool) -> str:
    # cached: a capture repeats the same few interface and transfer-syntax GUIDs in every bind (uuid.UUID + str
    # measured at ~7 µs here, a cache hit (with the bytes() copy in guid) at ~0.8 µs)
    return str(_uuid.UUID(bytes_le=b) if little_endian else _uuid.UUID(bytes=b))


# ----------------------------------------------------------------------------------------------------------------
# auth verifier


@dataclass(slots=True)
class Body:
    """The body of a PDU after the PTYPE-specific fixed header, with the auth verifier taken off."""

    stub: bytes  # stub bytes (request/response/fault); the whole body for other PTYPEs
    auth_type: int = 0
    auth_level: int = 0
    auth_pad: int = 0
    note: str | None = None


def split_auth(pdu, hdr: Header, body_start: int) -> Body:
    """Remove ``[auth padding][sec_trailer 8][auth_value]`` from the end of a PDU (MS-RPCE 2.2.2.11). The
    sec_trailer starts at frag_len - auth_len - 8; auth_pad_length bytes before it are padding."""
    end = hdr.frag_len
    if not hdr.auth_len:
        return Body(bytes(pdu[body_start:end]))
    trailer = end - hdr.auth_len - _TRAILER_LEN
    if trailer < body_start:
        return Body(bytes(pdu[body_start:end]), note="auth trailer overlaps the PDU header")
    auth_type, auth_level, pad, _reserved, _context_id = _SEC_TRAILER.unpack_from(pdu, trailer)
    note = None
    if pad > trailer - body_start:
        note = f"auth_pad_length {pad} larger than the body"
        pad = 0
    return Body(bytes(pdu[body_start : trailer - pad]), auth_type, auth_level, pad, note)


# ----------------------------------------------------------------------------------------------------------------
# request / response / fault


@dataclass(slots=True)
class CallPdu:
    alloc_hint: int
    ctx_id: int
    opnum: int | None  # requests only
    object_uuid: str | None
    status: int | None  # faults only
    body: Body


def parse_call(pdu, hdr: Header) -> CallPdu:
    """Request (alloc_hint, p_cont_id, opnum, [object]), response (alloc_hint, p_cont_id, cancel_count) or fault
    (... status at 24). ``pdu`` holds exactly one PDU of ``hdr.frag_len`` bytes."""
    le = hdr.little_endian
    alloc_hint, ctx_id, opnum = (_LE_CALL if le else _BE_CALL).unpack_from(pdu, _CALL_AT)
    obj = None
    status = None
    body_start = _STUB_AT
    if hdr.ptype == PTYPE_REQUEST:
        if hdr.flags & PFC_OBJECT_UUID and hdr.frag_len >= _OBJECT_END:
            obj = guid(pdu[_OBJECT_AT:_OBJECT_END], hdr.little_endian)
            body_start = _OBJECT_END
    else:
        opnum = None
        if hdr.ptype == PTYPE_FAULT and hdr.frag_len >= FAULT_STATUS.end:
            (status,) = FAULT_STATUS.struct(le).unpack_from(pdu, FAULT_STATUS.offset)
            # fault body: status u32, reserved u32, then optional extended error information
            body_start = min(FAULT_HEADER.end, hdr.frag_len)
    return CallPdu(alloc_hint, ctx_id, opnum, obj, status, split_auth(pdu, hdr, body_start))


# ----------------------------------------------------------------------------------------------------------------
# bind / alter_context and their acks


@dataclass(slots=True)
class ContextItem:
    ctx_id: int
    if_uuid: str
    if_major: int
    if_minor: int
    transfer: list[tuple[str, int]] = field(default_factory=list)  # (uuid, version)


@dataclass(slots=True)
class ContextResult:
    result: int  # 0 acceptance, 1 user_rejection, 2 provider_rejection, 3 negotiate_ack (BTFN)
    reason: int
    transfer_uuid: str
    transfer_ver: int


@dataclass(slots=True)
class BindPdu:
    contexts: list[ContextItem]
    body: Body
    note: str | None = None


@dataclass(slots=True)
class BindAckPdu:
    sec_addr: str
    results: list[ContextResult]
    body: Body
    note: str | None = None


def parse_bind(pdu, hdr: Header) -> BindPdu:
    """bind / alter_context: max_xmit u16, max_recv u16, assoc_group u32, n_context_elem u8, 3 reserved, then
    p_cont_elem_t { p_cont_id u16, n_transfer_syn u8, reserved u8, abstract_syntax (GUID + u32 version
    <major u16, minor u16>), n x transfer_syntax (GUID + u32) }."""
    le = hdr.little_endian
    body = split_auth(pdu, hdr, BIND_HEADER.offset)
    b = body.stub  # here: the whole bind body from the end of the common header
    contexts: list[ContextItem] = []
    note = None
    if len(b) < BIND_HEADER.size:
        return BindPdu(contexts, body, "bind body too short")
    n_ctx = BIND_HEADER.struct(le).unpack_from(b, 0)[3]
    off = BIND_HEADER.size
    context_elem, syntax_id = CONTEXT_ELEM.struct(le), SYNTAX_ID.struct(le)
    for _ in range(n_ctx):
        if off + CONTEXT_ELEM.size > len(b):
            note = "bind context list truncated"
            break
        ctx_id, n_ts, _reserved, if_uuid, if_version = context_elem.unpack_from(b, off)
        # if_version is one u32 = minor << 16 | major: little-endian puts major first, big-endian minor first
        off += CONTEXT_ELEM.size
        item = ContextItem(ctx_id, guid(if_uuid, le), if_version & 0xFFFF, if_version >> 16)
        for _ in range(n_ts):
            if off + SYNTAX_ID.size > len(b):
                note = "bind transfer syntax list truncated"
                break
            ts_uuid, ts_ver = syntax_id.unpack_from(b, off)
            item.transfer.append((guid(ts_uuid, le), ts_ver))
            off += SYNTAX_ID.size
        contexts.append(item)
        if note:
            break
    return BindPdu(contexts, body, note)


def parse_bind_ack(pdu, hdr: Header) -> BindAckPdu:
    """bind_ack / alter_context_resp: max_xmit, max_recv, assoc_group, sec_addr (u16 length + ASCII port incl.
    NUL, possibly without the NUL), pad to 4 (relative to the PDU start), n_results u8 + 3 reserved, then per
    context in bind order: result u16, reason u16, transfer syntax (GUID + u32)."""
    le = hdr.little_endian
    body = split_auth(pdu, hdr, BIND_ACK_HEADER.offset)
    b = body.stub
    results: list[ContextResult] = []
    if len(b) < BIND_ACK_HEADER.size:
        return BindAckPdu("", results, body, "bind_ack body too short")
    sec_len = BIND_ACK_HEADER.struct(le).unpack_from(b, 0)[3]
    off = BIND_ACK_HEADER.size
    sec_raw = bytes(b[off : off + sec_len])
    sec_addr = sec_raw.split(b"\x00", 1)[0].decode("latin-1")
    off += sec_len
    off += (-(off + BIND_ACK_HEADER.offset)) % 4  # align relative to the PDU start, not the body
    if off + RESULT_LIST_HEADER.size > len(b):
        return BindAckPdu(sec_addr, results, body, "bind_ack result list missing")
    n_res = RESULT_LIST_HEADER.struct(le).unpack_from(b, off)[0]
    off += RESULT_LIST_HEADER.size
    note = None
    context_result = CONTEXT_RESULT.struct(le)
    for _ in range(n_res):
        if off + CONTEXT_RESULT.size > len(b):
            note = "bind_ack result list truncated"
            break
        result, reason, ts, ts_ver = context_result.unpack_from(b, off)
        results.append(ContextResult(result, reason, guid(ts, le), ts_ver))
        off += CONTEXT_RESULT.size
    return BindAckPdu(sec_addr, results, body, note)


def parse_auth_only(pdu, hdr: Header) -> Body:
    """Other PTYPEs (bind_nak, auth3, shutdown, co_cancel, orphaned, rts): only the auth level matters."""
    return split_auth(pdu, hdr, min(HEADER_LEN, hdr.frag_len))
