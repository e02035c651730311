"""NDR stub decoders for EMSMDB (MS-OXCRPC) and AsyncEMSMDB: the fields the push-notification diagnosis needs.

``decode_request_stub(interface, opnum, stub, little_endian)`` and ``decode_response_stub(...)`` return a dict of
:class:`analyzer.dissect.model.Event` field names -> values. They never raise: a short or garbled stub gives what
was readable plus ``note``. Both engines (native and tshark) call them with the reassembled, clear-text stub.

Only EMSMDB (``a4f1db00-ca47-1067-b31f-00dd010662da`` v0.81) opnum 4 is a push registration; an opnum 4 on NSPI
or any other interface decodes to nothing.

Layouts (docs/protocol.md §1.4-1.6, §2 and the MS-OXCRPC IDL; [in] and [out] parameters are marshalled in IDL order,
``handle_t`` binding handles are not on the wire, top-level [ref] pointers and conformant arrays take no
referent id, every scalar is aligned to its size relative to the stub start):

* opnum 4 request: pcxh(20) iRpc(4) max_count(4) rgbContext[n] | align 2: cbContext | align 4: grbitAdviseBits
  | align 4: max_count(4) rgbCallbackAddress[k] | align 2: cbCallbackAddress.
* opnum 4 response: pcxh(20) hNotification(4) return(4).
* EcDoConnect (0) / EcDoConnectEx (10) request: szUserDN first, a conformant varying string (max_count,
  offset, actual_count, then actual_count bytes including the terminating NUL).
* EcDoConnect / EcDoConnectEx response: pcxh(20) pcmsPollsMax(4) pcRetry(4) pcmsRetryDelay(4) picxr(2, +2
  pad) szDNPrefix and szDisplayName (unique pointers to conformant varying strings) rgwServerVersion[3]
  rgwBestVersion[3] pulTimeStamp(4) and, for EcDoConnectEx only, rgbAuxOut (conformant varying) pcbAuxOut(4);
  then the return value. The return value is reported only when this walk ends exactly 4 bytes before the stub
  end, i.e. when the layout is confirmed.
* EcDoRpc (2) response: pcxh(20), then the ROP buffer as a conformant varying byte array (max, offset, actual)
  XOR-0xA5 obfuscated (Wireshark's mapi dissector decodes it that way); the buffer starts with RopSize u16.
* EcDoRpcExt2 (11) response: pcxh(20) pulFlags(4) rgbOut (conformant varying) pcbOut(4) rgbAuxOut (conformant
  varying) pcbAuxOut(4) pulTransTime(4) return(4). rgbOut = RPC_HEADER_EXT {Version u16, Flags u16 (0x1
  Compressed, 0x2 XorMagic, 0x4 Last), Size u16, SizeActual u16} + payload {RopSize u16, ROP responses...}.
* EcDoAsyncConnectEx (14) response: pacxh(20) return(4). EcDoDisconnect (1): pcxh(20) return(4).
* AsyncEMSMDB EcDoAsyncWaitEx (0) response: pulFlagsOut(4) return(4).
"""

from __future__ import annotations

import ipaddress
import struct
from enum import IntEnum
from typing import Callable, NamedTuple

from analyzer.dissect.codes import RopId, RpcHeaderExtFlags, rop_id_text

# The interfaces' names as the events table shows them (the interface table, analyzer.dissect.interfaces, gives
# their UUIDs and versions)
EMSMDB = "EMSMDB"
ASYNC_EMSMDB = "AsyncEMSMDB"


class EmsmdbOp(IntEnum):
    """EMSMDB operations (MS-OXCRPC 3.1.4; 0 and 2 are Opnum0/2NotUsedOnWire there, named with their legacy names
    as tshark prints them). Member names are the operation names the events' ``opname`` column shows."""

    EcDoConnect = 0
    EcDoDisconnect = 1
    EcDoRpc = 2
    EcGetMoreRpc = 3
    EcRRegisterPushNotification = 4
    EcRUnregisterPushNotification = 5
    EcDummyRpc = 6
    EcRGetDCName = 7
    EcRNetGetDCName = 8
    EcDoRpcExt = 9
    EcDoConnectEx = 10
    EcDoRpcExt2 = 11
    EcDoAsyncConnectEx = 14


class AsyncEmsmdbOp(IntEnum):
    """AsyncEMSMDB operations (MS-OXCRPC 3.3.4)."""

    EcDoAsyncWaitEx = 0

from analyzer.dissect.layouts import (
    ASYNC_WAIT_RESPONSE,
    CONTEXT_HANDLE,
    DUMMY_RPC_RESPONSE,
    HANDLE_AND_STATUS,
    REGISTER_PUSH_REQUEST_HEAD,
    REGISTER_PUSH_RESPONSE,
    RPC_HEADER_EXT,
)

AF_INET = 2
AF_INET6_WINDOWS = 23  # Winsock's AF_INET6 (Linux uses 10)

# ROP responses whose size is fixed, so the walk over the ROP list can continue past them. Everything else
# (RopNotify's NotificationData in particular) has a variable layout: the walk stops there.
_FIXED_ROP_RESPONSE_SIZE = {int(RopId.RopPending): 3}  # RopId u8 + SessionIndex u16 (MS-OXCROPS 2.2.14.3)
# Plain-int copies of the RPC_HEADER_EXT flags for the per-response test (an IntFlag & builds an enum member)
_COMPRESSED = int(RpcHeaderExtFlags.Compressed)
_XOR_MAGIC = int(RpcHeaderExtFlags.XorMagic)
# ROP id -> its text in the rop_ids column, for every byte value
_ROP_TEXT = tuple(rop_id_text(rop) for rop in range(256))


class _Short(Exception):
    """The stub ended before the field being read (internal; turned into a ``note``)."""


_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}
# XOR-0xA5 de-obfuscation of ROP buffers as a bytes.translate table: 2.8 us for 4 KiB against 164 us for a
# generator over the bytes (measured with timeit); EcDoRpc/EcDoRpcExt2 responses carry such buffers.
_XOR_A5 = bytes(x ^ 0xA5 for x in range(256))
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}


class _Reader:
    """Aligned NDR20 reader over a stub. Alignment is relative to the stub start. (Inlined alignment and
    pre-compiled structs: this halves the cost of an EcDoRpcExt2 response walk, measured under cProfile
    at 60 -> 32 µs per response.)"""

    __slots__ = ("buf", "pos", "n", "_u16", "_u32")

    def __init__(self, buf: bytes, little_endian: bool, pos: int = 0):
        self.buf = buf
        self.pos = pos
        self.n = len(buf)
        self._u16 = _U16[little_endian].unpack_from
        self._u32 = _U32[little_endian].unpack_from

    def align(self, n: int) -> None:
        self.pos += (-self.pos) % n

    def u16(self) -> int:
        pos = self.pos + (self.pos & 1)
        if pos + 2 > self.n:
            raise _Short()
        self.pos = pos + 2
        return self._u16(self.buf, pos)[0]

    def u32(self) -> int:
        pos = self.pos + (-self.pos & 3)
        if pos + 4 > self.n:
            raise _Short()
        self.pos = pos + 4
        return self._u32(self.buf, pos)[0]

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.n:
            raise _Short()
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def varying_bytes(self) -> bytes:
        """Conformant varying array of bytes: max_count, offset, actual_count, data."""
        max_count = self.u32()
        offset = self.u32()
        actual = self.u32()
        if offset + actual > max_count:
            raise ValueError(f"varying array offset {offset} + count {actual} > max_count {max_count}")
        return self.take(actual)

    def unique_varying_string(self) -> bytes | None:
        """[unique, string] char*: referent id (0 = NULL) then a conformant varying string."""
        if self.u32() == 0:
            return None
        return self.varying_bytes()


# Control characters (C0, DEL) as \xNN. A DN is printable ASCII on the wire, but the bytes come from the capture:
# an ESC sequence or a newline would otherwise reach the engineer's terminal (text report) and split CSV lines.
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def _cstr(b: bytes) -> str:
    return b.split(b"\x00", 1)[0].decode("cp1252", errors="replace").translate(_CONTROL_ESCAPES)


def sockaddr_text(b: bytes) -> tuple[str | None, str | None]:
    """Windows SOCKADDR bytes -> ("ip:port" or "[ipv6]:port", note). The family is a little-endian u16 (a byte
    array on the wire, so the drep does not apply); port and address are in network order."""
    if len(b) < 2:
        return None, f"callback address too short ({len(b)} bytes)"
    family = int.from_bytes(b[0:2], "little")
    if family == AF_INET:
        if len(b) < 8:
            return None, f"SOCKADDR_IN too short ({len(b)} bytes)"
        port = int.from_bytes(b[2:4], "big")
        note = None if len(b) == 16 else f"SOCKADDR_IN of {len(b)} bytes (expected 16)"
        return f"{ipaddress.IPv4Address(bytes(b[4:8]))}:{port}", note
    if family == AF_INET6_WINDOWS:
        if len(b) < 24:
            return None, f"SOCKADDR_IN6 too short ({len(b)} bytes)"
        port = int.from_bytes(b[2:4], "big")
        note = None if len(b) == 28 else f"SOCKADDR_IN6 of {len(b)} bytes (expected 28)"
        return f"[{ipaddress.IPv6Address(bytes(b[8:24])).compressed}]:{port}", note
    return None, f"callback address family {family} is neither AF_INET (2) nor AF_INET6 (23)"


def _join_notes(*notes) -> str | None:
    parts = [n for n in notes if n]
    return "; ".join(parts) if parts else None


# ----------------------------------------------------------------------------------------------------------------
# requests


def _register_push_request(stub: bytes, le: bool) -> dict:
    out: dict = {}
    notes = []
    r = _Reader(stub, le, REGISTER_PUSH_REQUEST_HEAD.offset_of("rpc"))  # skip pcxh
    try:
        r.u32()  # iRpc
        n = r.u32()
        if n > 0xFFFF:
            return {"note": f"rgbContext max_count {n} larger than a u16 cbContext"}
        context = r.take(n)
        out["context_hex"] = context.hex()
        cb_context = r.u16()
        if cb_context != n:
            notes.append(f"cbContext {cb_context} != array size {n}")
        out["advise_bits"] = r.u32()
        k = r.u32()
        if k > 0xFFFF:
            notes.append(f"rgbCallbackAddress max_count {k} larger than a u16")
            return {**out, "note": _join_notes(*notes)}
        address = r.take(k)
        callback, note = sockaddr_text(address)
        out["callback"] = callback
        notes.append(note)
        cb_address = r.u16()
        if cb_address != k:
            notes.append(f"cbCallbackAddress {cb_address} != array size {k}")
    except _Short:
        notes.append(f"request stub ends at {len(stub)} bytes, before all of EcRRegisterPushNotification's fields")
    note = _join_notes(*notes)
    if note:
        out["note"] = note
    return out


def _connect_request(stub: bytes, le: bool) -> dict:
    r = _Reader(stub, le)
    try:
        return {"user_dn": _cstr(r.varying_bytes())}
    except _Short:
        return {"note": f"request stub ends at {len(stub)} bytes, before the end of szUserDN"}
    except ValueError as exc:
        return {"note": f"szUserDN: {exc}"}


def decode_request_stub(interface: str, opnum: int, stub: bytes, little_endian: bool = True) -> dict:
    """Decode an EMSMDB/AsyncEMSMDB request stub into Event fields (see module doc). Other interfaces and
    opnums give {}."""
    decoder = _REQUEST_DECODERS.get((interface, opnum))
    if decoder is None:
        return {}
    try:
        return decoder(bytes(stub), little_endian)
    except Exception as exc:  # defensive: a decoder bug must never stop the dissection of a capture
        return {"note": f"request stub not decoded ({type(exc).__name__}: {exc})"}


# ----------------------------------------------------------------------------------------------------------------
# responses


def _status_at_end(r: _Reader, stub: bytes, out: dict, what: str) -> None:
    """After walking all [out] parameters, the return value must be the last 4 bytes."""
    r.align(4)
    if r.pos + 4 == len(stub):
        out["status"] = r.u32()
    else:
        out["note"] = _join_notes(out.get("note"), f"{what} layout not confirmed (walk ended at {r.pos} of "
                                  f"{len(stub)} bytes): return value not reported")


def _connect_response(stub: bytes, le: bool, ex: bool) -> dict:
    out: dict = {}
    r = _Reader(stub, le, CONTEXT_HANDLE.size)
    try:
        out["poll_max_ms"] = r.u32()
        r.u32()  # pcRetry
        r.u32()  # pcmsRetryDelay
        r.u16()  # picxr (u16; OpenChange's u32 lands on the same offsets because the next field aligns to 4)
        r.unique_varying_string()  # szDNPrefix
        r.unique_varying_string()  # szDisplayName
        r.take(6)  # rgwServerVersion[3]
        r.take(6)  # rgwBestVersion[3]
        r.u32()  # pulTimeStamp
        if ex:
            r.varying_bytes()  # rgbAuxOut
            r.u32()  # pcbAuxOut
        _status_at_end(r, stub, out, "EcDoConnectEx" if ex else "EcDoConnect")
    except _Short:
        if "poll_max_ms" not in out:
            out["note"] = f"response stub of {len(stub)} bytes too short for pcmsPollsMax"
        else:
            out["note"] = "response stub ends before the return value"
    except ValueError as exc:
        out["note"] = f"response not fully decoded: {exc}"
    return out


def rop_ids_text(rop_buffer: bytes) -> tuple[str | None, str | None]:
    """ROP ids at the start of a (clear) ROP output buffer {RopSize u16, ROP responses...}: "" when the list is
    empty, "2a" / "6e" / "6e,2a" ... for the leading ROPs whose size can be stepped over, None when unreadable."""
    if len(rop_buffer) < 2:
        return None, "ROP buffer shorter than RopSize"
    rop_size = int.from_bytes(rop_buffer[0:2], "little")
    if rop_size < 2:
        return None, f"RopSize {rop_size} < 2"
    rops = rop_buffer[2 : min(rop_size, len(rop_buffer))]
    ids = []
    i = 0
    while i < len(rops):
        rop = rops[i]
        ids.append(_ROP_TEXT[rop])
        step = _FIXED_ROP_RESPONSE_SIZE.get(rop)
        if step is None:
            break
        i += step
    return ",".join(ids), None


def _ecdorpc_response(stub: bytes, le: bool) -> dict:
    r = _Reader(stub, le, CONTEXT_HANDLE.size)
    try:
        data = r.varying_bytes()
    except _Short:
        return {"note": "EcDoRpc response too short for its ROP buffer"}
    except ValueError as exc:
        return {"note": f"EcDoRpc ROP buffer: {exc}"}
    clear = bytes(data).translate(_XOR_A5)
    ids, note = rop_ids_text(clear)
    out = {"rop_ids": ids}
    if note:
        out["note"] = note
    return out


def _ecdorpcext2_response(stub: bytes, le: bool) -> dict:
    out: dict = {}
    rgb_out = None
    r = _Reader(stub, le, CONTEXT_HANDLE.size)
    try:
        r.u32()  # pulFlags
        rgb_out = r.varying_bytes()
        r.u32()  # pcbOut
        r.varying_bytes()  # rgbAuxOut
        r.u32()  # pcbAuxOut
        r.u32()  # pulTransTime
        _status_at_end(r, stub, out, "EcDoRpcExt2")
    except _Short:
        if rgb_out is None:
            return {"note": "EcDoRpcExt2 response too short for rgbOut"}
        out["note"] = "EcDoRpcExt2 response ends before the return value"
    except ValueError as exc:
        return {"note": f"EcDoRpcExt2 rgbOut: {exc}"}
    if len(rgb_out) == 0:
        out["rop_ids"] = ""
        return out
    if len(rgb_out) < RPC_HEADER_EXT.size:
        out["note"] = _join_notes(out.get("note"), "rgbOut shorter than RPC_HEADER_EXT")
        return out
    _version, flags, size, _size_actual = RPC_HEADER_EXT.le.unpack_from(rgb_out, 0)
    payload = rgb_out[RPC_HEADER_EXT.size : RPC_HEADER_EXT.size + size]
    if flags & _COMPRESSED:
        out["note"] = _join_notes(out.get("note"), "rgbOut compressed: ROP ids not read")
        return out
    if flags & _XOR_MAGIC:
        payload = bytes(payload).translate(_XOR_A5)
    ids, note = rop_ids_text(payload)
    out["rop_ids"] = ids
    if note:
        out["note"] = _join_notes(out.get("note"), note)
    return out


def _u32_fields(stub: bytes, le: bool, layout, names: tuple[str, ...], what: str) -> dict:
    """The u32 fields ``names`` of ``layout`` (in order, as event fields of the same names), as far as the stub
    holds them."""
    e = "<" if le else ">"
    out: dict = {}
    for name in names:
        off = layout.offset_of(name)
        if off + 4 > len(stub):
            out["note"] = f"{what} response stub of {len(stub)} bytes too short for {name}"
            break
        out[name] = struct.unpack_from(e + "I", stub, off)[0]
    return out


def decode_response_stub(interface: str, opnum: int, stub: bytes, little_endian: bool = True) -> dict:
    """Decode an EMSMDB/AsyncEMSMDB response stub into Event fields (see module doc). Other interfaces and
    opnums give {}."""
    decoder = _RESPONSE_DECODERS.get((interface, opnum))
    if decoder is None:
        return {}
    try:
        return decoder(bytes(stub), little_endian)
    except Exception as exc:  # defensive: a decoder bug must never stop the dissection of a capture
        return {"note": f"response stub not decoded ({type(exc).__name__}: {exc})"}


def _register_push_response(stub: bytes, le: bool) -> dict:
    out = _u32_fields(stub, le, REGISTER_PUSH_RESPONSE, ("hnotification", "status"), "EcRRegisterPushNotification")
    if "note" not in out and len(stub) != REGISTER_PUSH_RESPONSE.size:
        out["note"] = f"response stub of {len(stub)} bytes (expected {REGISTER_PUSH_RESPONSE.size})"
    return out


# ----------------------------------------------------------------------------------------------------------------
# the operation table: opnum -> (request decoder, response decoder). Adding a decoder is a function above and
# one line here; analyzer.dissect.interfaces lists these operations with their interface.


class Decoders(NamedTuple):
    """How one operation's stubs are read: ``(stub, little_endian) -> {Event field: value}``, None: not read."""

    request: Callable[[bytes, bool], dict] | None = None
    response: Callable[[bytes, bool], dict] | None = None


def _status_after_handle(stub: bytes, le: bool) -> dict:
    return _u32_fields(stub, le, HANDLE_AND_STATUS, ("status",), "EMSMDB")


EMSMDB_DECODERS: dict[EmsmdbOp, Decoders] = {
    EmsmdbOp.EcDoConnect: Decoders(_connect_request, lambda stub, le: _connect_response(stub, le, ex=False)),
    EmsmdbOp.EcDoDisconnect: Decoders(None, _status_after_handle),
    EmsmdbOp.EcDoRpc: Decoders(None, _ecdorpc_response),
    EmsmdbOp.EcRRegisterPushNotification: Decoders(_register_push_request, _register_push_response),
    EmsmdbOp.EcDummyRpc: Decoders(
        None, lambda stub, le: _u32_fields(stub, le, DUMMY_RPC_RESPONSE, ("status",), "EcDummyRpc")),
    EmsmdbOp.EcDoConnectEx: Decoders(_connect_request, lambda stub, le: _connect_response(stub, le, ex=True)),
    EmsmdbOp.EcDoRpcExt2: Decoders(None, _ecdorpcext2_response),
    EmsmdbOp.EcDoAsyncConnectEx: Decoders(None, _status_after_handle),
}

ASYNC_EMSMDB_DECODERS: dict[AsyncEmsmdbOp, Decoders] = {
    AsyncEmsmdbOp.EcDoAsyncWaitEx: Decoders(
        None, lambda stub, le: _u32_fields(stub, le, ASYNC_WAIT_RESPONSE, ("async_flags", "status"),
                                     "EcDoAsyncWaitEx")),
}

# (interface, opnum) -> decoder, one dict per direction (one lookup per stub)
_REQUEST_DECODERS = {(name, int(op)): d.request for name, table in ((EMSMDB, EMSMDB_DECODERS),
                                                                     (ASYNC_EMSMDB, ASYNC_EMSMDB_DECODERS))
                     for op, d in table.items() if d.request is not None}
_RESPONSE_DECODERS = {(name, int(op)): d.response for name, table in ((EMSMDB, EMSMDB_DECODERS),
                                                                       (ASYNC_EMSMDB, ASYNC_EMSMDB_DECODERS))
                      for op, d in table.items() if d.response is not None}
