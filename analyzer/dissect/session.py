# SPDX-License-Identifier: GPL-2.0-or-later
"""Which interface each DCE/RPC PDU belongs to, capture-wide: the post-pass both engines share.

The session analyser both engines feed (:class:`analyzer.dissect.rpc_session.RpcSessionAnalyser`) labels a
request/response/fault itself when its presentation context was negotiated on its own connection in the capture
(``interface_source`` ``bind`` or ``alter_context``). Everything else goes through its
:class:`SessionLabeller`:

* ``lookup`` labels a PDU at once when its server endpoint is already known;
* otherwise the PDU is ``defer``-red: the labeller keeps the event, a few decoded fields per candidate interface
  (the stub itself is decoded at once as if it were EMSMDB and as if it were AsyncEMSMDB, and only the resulting
  fields are kept, never the stub bytes) and the connection's stub-shape evidence (:class:`EmsmdbShape`);
* ``finish`` labels every deferred PDU with what the whole capture taught, including what was learnt after the
  PDU's frame, and applies the kept fields of the interface it was given.

So an endpoint learnt anywhere labels the whole capture. What labels a PDU, in order of trust (the
``interface_source`` column, see :mod:`analyzer.dissect.model`):

1. ``bind`` / ``alter_context``: the context id was negotiated on this connection (the session analyser);
2. ``endpoint``: the same context id was bound to an interface later on this connection, or on another connection
   to the same server address and TCP port (bind, alter_context, or a bind_ack secondary address naming the port;
   context 0 for the latter), or the endpoint mapper's well-known port 135 (context 0);

   when one endpoint serves several interfaces at that context (Exchange's RPC Client Access serves EMSMDB and
   AsyncEMSMDB on one port), the connection's calls decide: EMSMDB when its stubs have EMSMDB's shape, AsyncEMSMDB
   when its only opnum is 0 (EcDoAsyncWaitEx); otherwise it stays unlabelled (same for ept_map answers);
3. ``epm``: an ept_map answer mapped the interface to this server address and TCP port (context 0 only: the
   context every Windows client binds first);
4. ``stub_shape``: EMSMDB recognised on this connection and context by the shape of its stubs (:class:`EmsmdbShape`).

Bounds: at most :data:`MAX_DEFERRED` deferred PDUs keep decoded fields (past that, with one warning, later ones
are still labelled but not decoded); stub-shape evidence is a fixed-size record per (connection, context) with at
most :data:`MAX_HANDLES` distinct context handles. The cost on traffic that is not DCE/RPC is nil (only PDUs of an
unknown interface reach this module), and per deferred PDU it is one or two stub decodes.
"""

from __future__ import annotations

import struct
from typing import Callable

from analyzer.dissect.codes import RpcHeaderExtFlags
from analyzer.dissect.emsmdb import AsyncEmsmdbOp, EmsmdbOp, decode_request_stub, decode_response_stub
from analyzer.dissect.interfaces import (
    ASYNC_EMSMDB,
    EMSMDB,
    EMSMDB_UUID,
    EPM_PORT,
    EPM_UUID,
    interface_name,
    opname,
)
from analyzer.dissect.model import INTERFACE_SOURCES, Event  # noqa: F401  (the column's values)
# Deferred PDUs that keep decoded fields until the end of the capture (a few hundred bytes each)
MAX_DEFERRED = 200_000
# Distinct context handles remembered per (connection, context) for the stub-shape rule
MAX_HANDLES = 64

NOTE_ENDPOINT = "bind not in the capture: interface learned from the endpoint mapper / port"
NOTE_STUB_SHAPE = "bind not in the capture: EMSMDB recognised by the shape of its stubs"

_SPECULATIVE = (EMSMDB, ASYNC_EMSMDB)
# The EMSMDB calls whose stub layout the shape rule checks
_SHAPED_OPS = frozenset({EmsmdbOp.EcDoConnect, EmsmdbOp.EcDoDisconnect, EmsmdbOp.EcDoRpc,
                         EmsmdbOp.EcRRegisterPushNotification, EmsmdbOp.EcDummyRpc, EmsmdbOp.EcDoConnectEx,
                         EmsmdbOp.EcDoRpcExt2, EmsmdbOp.EcDoAsyncConnectEx})
_CONNECT_OPS = (EmsmdbOp.EcDoConnect, EmsmdbOp.EcDoConnectEx)
_HEADER_EXT_FLAGS = int(RpcHeaderExtFlags.Compressed | RpcHeaderExtFlags.XorMagic | RpcHeaderExtFlags.Last)
_COMPRESSED = int(RpcHeaderExtFlags.Compressed)  # an int: an IntFlag & builds an enum member per test


class Label:
    """An interface as the events table shows it: name, uuid, version text, and whether NDR64 was negotiated."""

    __slots__ = ("name", "uuid", "ver", "ndr64")

    def __init__(self, uuid: str, major: int, minor: int, ndr64: bool = False):
        self.uuid = str(uuid).lower()
        self.ver = f"{major}.{minor}"
        self.name = interface_name(self.uuid, major, minor)
        self.ndr64 = ndr64

    @classmethod
    def of(cls, iface) -> "Label":
        """From either engine's interface object (uuid, ver "major.minor", ndr64)."""
        if isinstance(iface, Label):
            return iface
        major, minor = (int(x) for x in str(iface.ver).split("."))
        return cls(iface.uuid, major, minor, bool(getattr(iface, "ndr64", False)))


EPM_LABEL = Label(EPM_UUID, 3, 0)
EMSMDB_LABEL = Label(EMSMDB_UUID, 0, 81)


def _join(a: str | None, b: str | None) -> str | None:
    if a and b:
        return f"{a}; {b}"
    return a or b


# ---------------------------------------------------------------------------------------------- stub shape

_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}


def _handle(stub: bytes) -> bytes | None:
    """The 20-byte context handle at the stub start when it looks like one: attributes 0, a GUID not all zero."""
    if len(stub) < 20 or stub[0:4] != b"\x00\x00\x00\x00" or stub[4:20] == bytes(16):
        return None
    return bytes(stub[0:20])


def _xor_rop_buffer(data: bytes) -> bool:
    """A ROP buffer obfuscated with XOR 0xA5 (old EcDoRpc): de-obfuscated, it starts with RopSize (u16 LE,
    2..len) and zero bytes (0xA5 on the wire) make up at least a fifth of it."""
    if len(data) < 4:
        return False
    rop_size = (data[0] ^ 0xA5) | (data[1] ^ 0xA5) << 8
    return 2 <= rop_size <= len(data) and data.count(0xA5) * 5 >= len(data)


def _rpc_header_ext(data: bytes) -> bool:
    """rgbIn/rgbOut of EcDoRpcExt2 starts with an RPC_HEADER_EXT: Version 0, Flags made of Compressed (0x1),
    XorMagic (0x2) and Last (0x4) only and at least one of them, Size + 8 <= the buffer, SizeActual >= Size
    (equal when not compressed)."""
    if len(data) < 8:
        return False
    version, flags, size, size_actual = struct.unpack_from("<HHHH", data, 0)
    if version != 0 or flags & ~_HEADER_EXT_FLAGS or not flags or size + 8 > len(data):
        return False
    return size_actual >= size if flags & _COMPRESSED else size_actual == size


def _ecdorpc_request(stub: bytes, le: bool) -> bool | None:
    """EcDoRpc request: pcxh(20) max(4) offset(4)=0 actual(4) data[actual] | align 2: cbIn(2)=actual maxOut(2).
    None when the layout does not hold, else whether the ROP buffer shows the XOR 0xA5 obfuscation."""
    if len(stub) < 36:
        return None
    u32 = _U32[le].unpack_from
    max_count, offset, actual = u32(stub, 20)[0], u32(stub, 24)[0], u32(stub, 28)[0]
    end = 32 + actual
    end += end & 1
    if offset != 0 or actual > max_count or end + 4 != len(stub) or _U16[le].unpack_from(stub, end)[0] != actual:
        return None
    return _xor_rop_buffer(stub[32 : 32 + actual])


def _ecdorpc_response(stub: bytes, le: bool) -> bool | None:
    """EcDoRpc response: pcxh(20) max offset=0 actual data | align 2: length(2) | align 4: return(4)."""
    if len(stub) < 40:
        return None
    u32 = _U32[le].unpack_from
    max_count, offset, actual = u32(stub, 20)[0], u32(stub, 24)[0], u32(stub, 28)[0]
    end = 32 + actual
    end += end & 1
    end += 2
    end += -end & 3
    if offset != 0 or actual > max_count or end + 4 != len(stub):
        return None
    return _xor_rop_buffer(stub[32 : 32 + actual])


def _ecdorpcext2_request(stub: bytes, le: bool) -> bool | None:
    """EcDoRpcExt2 request: pcxh(20) pulFlags(4) max(4) rgbIn[max] | align 4: cbIn(4)=max pcbOut(4) max2(4)
    rgbAuxIn[max2] | align 4: cbAuxIn(4)=max2 pcbAuxOut(4)."""
    u32 = _U32[le].unpack_from
    if len(stub) < 52:
        return None
    n = u32(stub, 24)[0]
    pos = 28 + n
    pos += -pos & 3
    if pos + 12 > len(stub) or u32(stub, pos)[0] != n:
        return None
    m = u32(stub, pos + 8)[0]
    aux = pos + 12 + m
    aux += -aux & 3
    if aux + 8 != len(stub) or u32(stub, aux)[0] != m:
        return None
    return _rpc_header_ext(stub[28 : 28 + n])


def _ecdorpcext2_response(stub: bytes, le: bool) -> bool | None:
    fields = decode_response_stub(EMSMDB, 11, stub, le)
    if "status" not in fields:  # the walk did not end exactly at the return value
        return None
    n = _U32[le].unpack_from(stub, 32)[0]  # pcxh(20) pulFlags(4) max(4) offset(4) actual(4) rgbOut
    return _rpc_header_ext(stub[36 : 36 + n])


def _connect_request(stub: bytes, le: bool) -> bool | None:
    """EcDoConnect / EcDoConnectEx request: szUserDN (max, offset 0, actual, "/o=..." NUL-terminated)."""
    if len(stub) < 16:
        return None
    u32 = _U32[le].unpack_from
    max_count, offset, actual = u32(stub, 0)[0], u32(stub, 4)[0], u32(stub, 8)[0]
    if offset != 0 or not 1 <= actual <= max_count or 12 + actual > len(stub) or stub[11 + actual] != 0:
        return None
    return stub[12:13] == b"/" or None


# The ROP transports' layout checks: (opnum, request) -> check
_ROP_TRANSPORT_CHECKS = {(EmsmdbOp.EcDoRpc, True): _ecdorpc_request, (EmsmdbOp.EcDoRpc, False): _ecdorpc_response,
                         (EmsmdbOp.EcDoRpcExt2, True): _ecdorpcext2_request,
                         (EmsmdbOp.EcDoRpcExt2, False): _ecdorpcext2_response}


class EmsmdbShape:
    """Stub-shape evidence that one connection's context carries EMSMDB, fed one clear-text stub at a time.

    Per PDU (request or response of opnum 0, 1, 2, 4, 6, 10, 11 or 14) the stub must match that EMSMDB call's
    NDR layout exactly: the NDR conformant/varying counts agree with each other and with the stub length (EcDoRpc:
    max/offset 0/actual, the trailing cbIn equal to actual; EcDoRpcExt2: cbIn = the array's max_count, cbAuxIn
    likewise, the walk ending at the stub end; responses walked to the return value), and the calls that carry a
    context handle start with one (attributes 0, GUID not zero). A ROP buffer counts as EMSMDB's when it is
    XOR-0xA5 obfuscated (EcDoRpc: its first u16 de-obfuscated is a RopSize within the buffer and 0xA5 bytes are at
    least a fifth of it) or starts with a consistent RPC_HEADER_EXT (EcDoRpcExt2: Version 0, flags among
    Compressed / XorMagic / Last, Size within the buffer and equal to SizeActual unless compressed). Any other
    opnum, or a stub that misses its layout, counts against.

    The rule (:meth:`is_emsmdb`), decided per (connection, context id), never from one PDU:

    * at least 3 requests match (5 when the capture holds no response of this connection: a one-sided capture)
      and at most one in 10 requests does not;
    * the context handles repeat: the matching requests use at most half as many distinct handles as there are
      such requests;
    * at least 2 ROP buffers are EMSMDB's as above;
    * when responses of the connection are in the capture: at least 2 match, at most one in 10 does not, and at
      least 2 of them return a context handle that the requests used. (When only responses are in the capture,
      5 matching responses with repeated handles are needed.)

    Measured by tests/test_stub_shape.py on every (connection, context) with readable stubs of the public captures
    and the samples: 30 EMSMDB contexts recognised, 0 false positives among 75 others (EPM, Witness, NSPI, MGMT,
    decoys), 0 false negatives among EMSMDB contexts with 6+ readable PDUs (5 smaller ones left alone); 60
    generated decoys (random stubs under opnums 2/11, DRSUAPI/SAMR/LSA-like handle-bearing calls) never match.
    """

    __slots__ = ("req_ok", "req_bad", "resp_ok", "resp_bad", "obfuscated", "req_handles", "resp_handles",
                 "handle_overflow")

    def __init__(self):
        self.req_ok = self.req_bad = self.resp_ok = self.resp_bad = self.obfuscated = 0
        self.req_handles: dict[bytes, int] = {}
        self.resp_handles: dict[bytes, int] = {}
        self.handle_overflow = False

    def _count_handle(self, table: dict, handle: bytes) -> None:
        if handle in table:
            table[handle] += 1
        elif len(table) < MAX_HANDLES:
            table[handle] = 1
        else:
            self.handle_overflow = True

    def feed(self, request: bool, opnum: int | None, stub: bytes, little_endian: bool) -> None:
        ok, handle, obfuscated = self._check(request, opnum, stub, little_endian)
        if request:
            if ok:
                self.req_ok += 1
            else:
                self.req_bad += 1
        else:
            if ok:
                self.resp_ok += 1
            else:
                self.resp_bad += 1
        if ok:
            if handle is not None:
                self._count_handle(self.req_handles if request else self.resp_handles, handle)
            if obfuscated:
                self.obfuscated += 1

    @staticmethod
    def _check(request: bool, opnum, stub: bytes, le: bool) -> tuple[bool, bytes | None, bool]:
        """(layout matches, context handle, ROP buffer obfuscated)."""
        if opnum not in _SHAPED_OPS:
            return False, None, False
        try:
            if opnum in _CONNECT_OPS:
                if request:
                    return bool(_connect_request(stub, le)), None, False
                fields = decode_response_stub(EMSMDB, opnum, stub, le)
                handle = _handle(stub)
                return "status" in fields and handle is not None, handle, False
            if opnum == EmsmdbOp.EcDummyRpc:
                return (len(stub) == 0) if request else (len(stub) == 4), None, False
            if opnum == EmsmdbOp.EcDoDisconnect and not request:  # answered with the handle closed (all zero)
                return len(stub) == 24 and stub[:20] == bytes(20), None, False
            handle = _handle(stub)
            if handle is None:
                return False, None, False
            if opnum in (EmsmdbOp.EcDoDisconnect, EmsmdbOp.EcDoAsyncConnectEx):
                return (len(stub) == 20) if request else (len(stub) == 24), handle, False
            if opnum == EmsmdbOp.EcRRegisterPushNotification:
                if request:
                    fields = decode_request_stub(EMSMDB, opnum, stub, le)
                    return bool(fields.get("callback")) and "note" not in fields, handle, False
                return len(stub) == 28, handle, False
            check = _ROP_TRANSPORT_CHECKS[(opnum, request)]
            obfuscated = check(stub, le)
            return obfuscated is not None, handle, bool(obfuscated)
        except (struct.error, IndexError, ValueError):
            return False, None, False

    @staticmethod
    def _repeats(table: dict, matched: int) -> bool:
        return bool(table) and len(table) * 2 <= matched

    def is_emsmdb(self) -> bool:
        if self.handle_overflow or self.obfuscated < 2:
            return False
        responses = self.resp_ok + self.resp_bad
        requests = self.req_ok + self.req_bad
        if requests:
            if self.req_ok < (3 if responses else 5) or self.req_bad * 10 > requests:
                return False
            if not self._repeats(self.req_handles, sum(self.req_handles.values())):
                return False
        if responses:
            if self.resp_ok < (2 if requests else 5) or self.resp_bad * 10 > responses:
                return False
            if requests:
                echoed = sum(n for h, n in self.resp_handles.items() if h in self.req_handles)
                if echoed < 2:
                    return False
            elif not self._repeats(self.resp_handles, sum(self.resp_handles.values())):
                return False
        return bool(requests or responses)


# ---------------------------------------------------------------------------------------------- labeller


class _Deferred:
    __slots__ = ("event", "server", "fields", "undecoded", "endpoint_ok")

    def __init__(self, event: Event, server: tuple[str, int], fields: dict | None, undecoded: str | None,
                 endpoint_ok: bool):
        self.event = event
        self.server = server
        self.endpoint_ok = endpoint_ok
        self.fields = fields  # interface name -> decoded Event fields, for the candidates
        self.undecoded = undecoded  # why the stub could not be decoded (note), or None


class SessionLabeller:
    """Capture-wide interface knowledge and the deferred PDUs (module doc). One per capture and engine."""

    def __init__(self, warn: Callable[[str], None] | None = None):
        self._warn = warn or (lambda message: None)
        # (server ip, port) -> {uuid: interface}: one endpoint may serve several interfaces (Exchange's RPC Client
        # Access serves EMSMDB and AsyncEMSMDB on one port), so each source keeps every interface it named
        self._epm: dict[tuple[str, int], dict[str, Label]] = {}  # from ept_map answers
        self._sec_addr: dict[tuple[str, int], dict[str, Label]] = {}  # from bind_ack secondary addresses
        self._bound: dict[tuple[str, int], dict[int, dict[str, Label]]] = {}  # ctx id -> ... (binds)
        self._opnums: dict[tuple[int, int], set[int]] = {}  # (conn, ctx) of deferred PDUs -> opnums seen
        self._deferred: list[_Deferred] = []
        self._deferred_conns: set[int] = set()
        self._later_contexts: dict[int, dict[int, Label]] = {}  # conn -> ctx id -> interface bound after PDUs
        self._shapes: dict[tuple[int, int], EmsmdbShape] = {}
        self._decoded = 0
        self._limit_warned = False

    @property
    def decoded(self) -> int:
        """Stubs of deferred PDUs decoded so far (bounded by MAX_DEFERRED capture-wide)."""
        return self._decoded

    # ------------------------------------------------------------------------------------------------ learning

    def learn_ept_map(self, ip: str, port: int, iface) -> None:
        if port is not None and 0 < port < 65536:
            label = Label.of(iface)
            self._epm.setdefault((ip, port), {})[label.uuid] = label

    def learn_sec_addr(self, ip: str, port: int, iface) -> None:
        if port is not None and 0 < port < 65536 and port != EPM_PORT:
            label = Label.of(iface)
            self._sec_addr.setdefault((ip, port), {})[label.uuid] = label

    def learn_context(self, conn: int, server_ip: str, server_port: int, ctx_id: int | None, iface) -> None:
        """A bind / alter_context on ``conn`` offered (or its ack accepted) ``ctx_id`` -> ``iface``."""
        if ctx_id is None:
            return
        label = Label.of(iface)
        self._bound.setdefault((server_ip, server_port), {}).setdefault(ctx_id, {})[label.uuid] = label
        if conn in self._deferred_conns:
            self._later_contexts.setdefault(conn, {})[ctx_id] = label

    def forget_context(self, conn: int, server_ip: str, server_port: int, ctx_id: int | None, iface) -> None:
        """The bind_ack / alter_context_resp rejected this offered context: it teaches nothing."""
        bound = self._bound.get((server_ip, server_port))
        label = Label.of(iface)
        if bound is not None and ctx_id in bound:
            bound[ctx_id].pop(label.uuid, None)
            if not bound[ctx_id]:
                del bound[ctx_id]
        later = self._later_contexts.get(conn)
        if later is not None and ctx_id in later and later[ctx_id].uuid == label.uuid:
            del later[ctx_id]

    # ------------------------------------------------------------------------------------------------ labelling

    def _candidates(self, server_ip: str, server_port: int, ctx_id: int | None) -> tuple[list[Label], str | None]:
        """The interfaces the most trusted source that knows this endpoint and context names, and the source."""
        key = (server_ip, server_port)
        bound = self._bound.get(key)
        if bound is not None and bound.get(ctx_id):
            return list(bound[ctx_id].values()), "endpoint"
        if ctx_id == 0:
            if self._epm.get(key):
                return list(self._epm[key].values()), "epm"
            if self._sec_addr.get(key):
                return list(self._sec_addr[key].values()), "endpoint"
            if server_port == EPM_PORT:
                return [EPM_LABEL], "endpoint"
        return [], None

    def lookup(self, server_ip: str, server_port: int, ctx_id: int | None) -> tuple[Label | None, str | None]:
        """What the capture has taught so far about ``ctx_id`` at this server endpoint: (interface, source), or
        (None, None) when nothing is known or the endpoint serves several interfaces (then :meth:`finish`
        decides from the connection's calls)."""
        labels, source = self._candidates(server_ip, server_port, ctx_id)
        if len(labels) == 1:
            return labels[0], source
        return None, None

    def _choose(self, labels: list[Label], key: tuple, emsmdb_contexts: set) -> Label | None:
        """One endpoint, several interfaces: EMSMDB when the connection's stubs have its shape, AsyncEMSMDB when
        every call of the connection's context is opnum 0 (EcDoAsyncWaitEx, its only call), else undecided."""
        names = {label.name: label for label in labels}
        if EMSMDB in names and key in emsmdb_contexts:
            return names[EMSMDB]
        if ASYNC_EMSMDB in names and self._opnums.get(key) == {AsyncEmsmdbOp.EcDoAsyncWaitEx}:
            return names[ASYNC_EMSMDB]
        return None

    def defer(self, event: Event, server: tuple[str, int], request: bool, stub: bytes | None,
              little_endian: bool, endpoint_ok: bool = True) -> None:
        """``event`` (request, response or fault of an interface not known yet) is labelled at :meth:`finish`.
        ``stub``: its complete clear-text stub (None when encrypted, damaged, a fault or a non-last fragment).
        ``endpoint_ok``: False when the connection's own bind is in the capture (its contexts are then known
        from it alone: only a later bind/alter_context on it may label the PDU, never another connection)."""
        undecoded = None
        conn = event.conn
        self._deferred_conns.add(conn)
        fields = None
        if event.opnum is not None and event.ctx_id is not None:
            seen = self._opnums.setdefault((conn, event.ctx_id), set())
            if len(seen) < 16:
                seen.add(event.opnum)
        if stub is not None and event.opnum is not None and event.ctx_id is not None:
            shape = self._shapes.get((conn, event.ctx_id))
            if shape is None:
                shape = self._shapes[(conn, event.ctx_id)] = EmsmdbShape()
            shape.feed(request, event.opnum, stub, little_endian)
            if self._decoded < MAX_DEFERRED:
                self._decoded += 1
                decoder = decode_request_stub if request else decode_response_stub
                fields = {}
                for name in _SPECULATIVE:
                    decoded = decoder(name, event.opnum, stub, little_endian)
                    if decoded:
                        fields[name] = decoded
            else:
                if not self._limit_warned:
                    self._limit_warned = True
                    self._warn(f"more than {MAX_DEFERRED} DCE/RPC PDUs of connections whose interface was not "
                               "known when they were read: later ones are labelled at the end but their stubs "
                               "are not decoded")
                undecoded = f"stub not decoded: more than {MAX_DEFERRED} PDUs waited for their interface"
        self._deferred.append(_Deferred(event, server, fields, undecoded, endpoint_ok))

    def finish(self) -> None:
        """Label the deferred PDUs (module doc) and apply the decoded fields of the interface each one got."""
        emsmdb_contexts = {key for key, shape in self._shapes.items() if shape.is_emsmdb()}
        for item in self._deferred:
            ev = item.event
            label, source = None, None
            later = self._later_contexts.get(ev.conn)
            if later is not None and ev.ctx_id in later:
                label, source = later[ev.ctx_id], "endpoint"
            if label is None and item.endpoint_ok:
                labels, source = self._candidates(item.server[0], item.server[1], ev.ctx_id)
                label = labels[0] if len(labels) == 1 else self._choose(labels, (ev.conn, ev.ctx_id),
                                                                         emsmdb_contexts)
            if label is None and item.endpoint_ok and (ev.conn, ev.ctx_id) in emsmdb_contexts:
                label, source = EMSMDB_LABEL, "stub_shape"
            if label is None:
                continue
            apply_label(ev, label, source)
            ev.note = _join(NOTE_STUB_SHAPE if source == "stub_shape" else NOTE_ENDPOINT, ev.note)
            if item.undecoded:
                ev.note = _join(ev.note, item.undecoded)
            if item.fields and not label.ndr64:
                for name, value in item.fields.get(label.name, {}).items():
                    if name == "note":
                        ev.note = _join(ev.note, value)
                    else:
                        setattr(ev, name, value)
        self._deferred.clear()
        self._shapes.clear()
        self._opnums.clear()


def apply_label(ev: Event, label, source: str | None) -> None:
    """Set the interface columns (and the opname) of ``ev``."""
    ev.interface, ev.interface_uuid, ev.interface_ver = label.name, label.uuid, label.ver
    ev.interface_source = source
    ev.opname = opname(ev.interface, ev.opnum)
