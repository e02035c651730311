# SPDX-License-Identifier: GPL-2.0-or-later
"""The DCE/RPC session analyser both engines feed: one place for the per-connection state and the events.

An engine's job ends at the PDU: the native engine (:mod:`analyzer.dissect.collector`) frames TCP bytes into PDUs
and parses them with :mod:`analyzer.dissect.dcerpc`; the tshark engine (:mod:`analyzer.dissect.tshark_engine`)
walks tshark's JSON. Both hand each connection-oriented PDU to :meth:`RpcSessionAnalyser.pdu` as a
:class:`PduRecord`: the connection and direction, frame, time, addresses, the common header (a
:class:`analyzer.dissect.dcerpc.Header`) and the parsed body (:class:`~analyzer.dissect.dcerpc.CallPdu`,
:class:`~analyzer.dissect.dcerpc.BindPdu`, :class:`~analyzer.dissect.dcerpc.BindAckPdu` or, for the other PTYPEs,
a :class:`~analyzer.dissect.dcerpc.Body`), plus what only one engine has: the raw PDU bytes (native, for NTLMSSP
unsealing), a stub already unsealed by tshark, or a stub tshark could not give.

Everything after that is here, once, for both engines:

* presentation contexts: bind / alter_context offer contexts, bind_ack / alter_context_resp accept or reject them
  in order; only accepted contexts map ``ctx_id`` -> interface. When the ack is not in the capture, the offered
  context is used (with a note). bind_nak rejects the offered contexts (an ack or nak without a matching call_id
  answers the oldest outstanding bind). Bind and alter_context rows report the FIRST OFFERED abstract syntax;
  bind_ack / alter_context_resp rows the FIRST ACCEPTED one.
* fragments: one row per PDU. A multi-fragment call (FIRST..LAST, keyed by direction and call_id) is joined; the
  decoded fields go on the LAST fragment's row, whose ``stub_len`` is the joined length. Earlier fragment rows
  carry their own stub length and a note.
* call matching: responses and faults take the opnum and ``request_frame`` of their request (same connection and
  call_id).
* memory bounds: at most :data:`MAX_OUTSTANDING_CALLS` unanswered requests and calls in progress and
  :data:`MAX_PENDING_BINDS` unacknowledged binds per connection (the oldest are forgotten first), and no call
  larger than :data:`MAX_CALL_BYTES` is kept.
* packet privacy (auth level 6): the stub is not decoded and ``encrypted`` is True, ``stub_len`` is the
  alloc_hint of the first fragment (the clear size), unless the engine's decryption opened it: the native engine's
  :class:`analyzer.dissect.ntlmssp.SessionDecryptor` is called from here (``decryptor``), tshark's clear stub comes
  in the record (``clear``). Either way the row then reads as on a plain session, with ``decrypted`` set.
* interface learning: ept_map answers and bind_ack secondary addresses teach server ports; the capture-wide
  labelling of PDUs whose bind is not in the capture (retroactive labelling, stub shape) is
  :class:`analyzer.dissect.session.SessionLabeller`, fed from here.
* stub decoding with the operation table (:mod:`analyzer.dissect.interfaces`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, NamedTuple

from analyzer.dissect.dcerpc import (
    AUTH_LEVEL_PKT_PRIVACY,
    PFC_FIRST_FRAG,
    PFC_LAST_FRAG,
    PTYPE_ALTER_CONTEXT,
    PTYPE_ALTER_CONTEXT_RESP,
    PTYPE_AUTH3,
    PTYPE_BIND,
    PTYPE_BIND_ACK,
    PTYPE_BIND_NAK,
    PTYPE_FAULT,
    PTYPE_ORPHANED,
    PTYPE_REQUEST,
    PTYPE_RESPONSE,
    CallPdu,
    Header,
)
from analyzer.dissect.emsmdb import decode_request_stub, decode_response_stub
from analyzer.dissect.epm import parse_ept_map_response
from analyzer.dissect.interfaces import EPM, EPM_PORT, NDR64_UUID, EpmOp, opname
from analyzer.dissect.model import PTYPE_KIND, Event
from analyzer.dissect.session import NOTE_ENDPOINT, Label, SessionLabeller

if TYPE_CHECKING:  # imported by the engine only with --secrets: pycryptodome stays out of plain runs
    from analyzer.dissect.ntlmssp import SessionDecryptor

# The Event is built positionally (the per-PDU hot path): the leading fields must stay in this order
_EVENT_LEAD = ("frame", "time", "src", "dst", "sport", "dport", "kind", "conn", "interface", "interface_uuid",
               "interface_ver", "opnum", "opname", "ctx_id", "call_id")
if tuple(Event.__dataclass_fields__)[: len(_EVENT_LEAD)] != _EVENT_LEAD:
    raise ImportError("analyzer.dissect.model.Event field order changed: update RpcSessionAnalyser.pdu")

# A joined call larger than this is not kept (EcDoRpcExt2 buffers are at most 256 KiB, MS-OXCRPC 3.1.4.2)
MAX_CALL_BYTES = 4 * 1024 * 1024
# Per-connection tables are bounded so that memory stays constant when one direction is missing (a capture that
# sees only requests would otherwise remember every unanswered call): the oldest entries are forgotten first.
MAX_OUTSTANDING_CALLS = 1024
MAX_PENDING_BINDS = 64

NOTE_UNACKED = "context not acknowledged in the capture (bind_ack missing): offered interface assumed"
# The PTYPEs whose auth trailer carries an NTLMSSP leg (NEGOTIATE / CHALLENGE / AUTHENTICATE)
_AUTH_LEG_PTYPES = frozenset((PTYPE_BIND, PTYPE_BIND_ACK, PTYPE_ALTER_CONTEXT, PTYPE_ALTER_CONTEXT_RESP,
                              PTYPE_AUTH3))


class PduRecord(NamedTuple):
    """One connection-oriented PDU as an engine hands it over.

    ``conn``: the engine's connection number (native connection index, tshark ``tcp.stream``); ``from_client``:
    direction; ``hdr``: the common header; ``body``: the parsed PTYPE body (see the module doc). For request /
    response / fault PDUs ``body.body.stub`` is this fragment's stub without the auth trailer, or None when the
    engine could not get it (``stub_missing`` says why); ``stub_len`` is this fragment's stub length either way.
    ``raw``: the PDU's bytes (native engine; NTLMSSP unsealing needs the whole PDU). ``clear``: the stub was
    already unsealed by the engine (tshark with a keytab). ``reject_reason``: a bind_nak's reason, when read.

    A tuple because one is built per PDU: about a quarter of the cost of a class instance."""

    conn: int
    from_client: bool
    frame: int
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    hdr: Header
    body: object
    stub_len: int = 0
    raw: bytes | None = None
    clear: bool = False
    stub_missing: str | None = None
    reject_reason: int | None = None


class _Call:
    """Fragments of one call in one direction, FIRST..LAST."""

    __slots__ = ("parts", "size", "alloc_hint", "count", "damaged")

    def __init__(self, alloc_hint: int, damaged: str | None = None):
        self.parts: list[bytes] = []
        self.size = 0
        self.alloc_hint = alloc_hint
        self.count = 0
        self.damaged = damaged  # reason the stub cannot be decoded, or None


class _Request:
    __slots__ = ("opnum", "ctx_id", "frame", "iface", "source")

    def __init__(self, opnum, ctx_id, frame, iface, source=None):
        self.opnum = opnum
        self.ctx_id = ctx_id
        self.frame = frame
        self.iface = iface
        self.source = source


class _Connection:
    """DCE/RPC state of one connection."""

    __slots__ = ("contexts", "context_source", "pending_binds", "requests", "calls", "bind_seen")

    def __init__(self):
        self.contexts: dict[int, Label] = {}
        self.context_source: dict[int, str] = {}  # ctx_id -> "bind" / "alter_context"
        # call_id -> (offered ContextItems in bind order, "bind" / "alter_context")
        self.pending_binds: dict[int, tuple[list, str]] = {}
        self.requests: dict[int, _Request] = {}  # call_id -> request awaiting its response
        self.calls: dict[tuple[bool, int], _Call] = {}  # (from_client, call_id) -> fragments so far
        # the connection's bind is in the capture: its contexts are known from it, never from other connections
        self.bind_seen = False


def _join(a: str | None, b: str | None) -> str | None:
    if a and b:
        return f"{a}; {b}"
    return a or b


@functools.lru_cache(maxsize=1024)
def _label(uuid: str, major: int, minor: int, ndr64: bool = False) -> Label:
    """The shared Label of an interface: every bind of a capture names the same few (a Label is never changed)."""
    return Label(uuid, major, minor, ndr64)


def _offers_only_ndr64(item) -> bool:
    return bool(item.transfer) and all(ts == NDR64_UUID for ts, _ in item.transfer)


def _flow(rec: PduRecord) -> str:
    """The connection as warnings name it: sender -> receiver of this PDU."""
    return f"TCP connection {rec.conn} ({rec.src}:{rec.sport} -> {rec.dst}:{rec.dport})"


class RpcSessionAnalyser:
    """Per-connection DCE/RPC state and the events. ``pdu(record)`` for each PDU in capture order,
    ``close(conn)`` when a connection ends (frees its state), ``finish()`` once at the end (labels what the
    capture taught; the caller sorts the events)."""

    def __init__(self, events: list[Event], warn: Callable[[str], None],
                 decryptor: "SessionDecryptor | None" = None, learn_port: Callable[[int], None] | None = None,
                 finish_stub: Callable | None = None):
        self.events = events
        self.labels = SessionLabeller(warn=warn)
        self._decryptor = decryptor  # NTLMSSP unsealing (--secrets, native engine); None: sealed stays sealed
        self._learn_port = learn_port  # told every server port learned (the native transport's port set)
        self._conns: dict[int, _Connection] = {}
        if finish_stub is not None:  # an engine's wrapper around finish_stub (tests record the decoded stubs)
            self._finish_stub = finish_stub

    def existing_connection(self, conn: int) -> _Connection | None:
        """The state of connection ``conn``, or None when none of its PDUs was seen (nothing is created)."""
        return self._conns.get(conn)

    def connection(self, conn: int) -> _Connection:
        """The state of connection ``conn`` (created empty when new)."""
        st = self._conns.get(conn)
        if st is None:
            st = self._conns[conn] = _Connection()
        return st

    def gap(self, conn: int, from_client: bool, reason: str) -> None:
        """Bytes of one direction were lost: the calls in progress in that direction cannot be decoded."""
        st = self._conns.get(conn)
        if st is None:
            return
        for key, call in st.calls.items():
            if key[0] == from_client and call.damaged is None:
                call.damaged = reason

    def close(self, conn: int) -> None:
        self._conns.pop(conn, None)
        if self._decryptor is not None:
            self._decryptor.close(conn)

    def finish(self) -> None:
        self.labels.finish()

    # ------------------------------------------------------------------------------------------------ PDUs

    def pdu(self, rec: PduRecord) -> None:
        st = self._conns.get(rec.conn)
        if st is None:
            st = self._conns[rec.conn] = _Connection()
        hdr = rec.hdr
        ptype = hdr.ptype
        # positional: (frame, time, src, dst, sport, dport, kind, conn, 6 x None, call_id); 0.55 against 0.97 us
        # with keywords, once per PDU
        ev = Event(rec.frame, rec.time, rec.src, rec.dst, rec.sport, rec.dport, PTYPE_KIND.get(ptype) or hdr.kind,
                   rec.conn, None, None, None, None, None, None, hdr.call_id)
        if self._decryptor is not None and rec.raw is not None and hdr.auth_len and ptype in _AUTH_LEG_PTYPES:
            self._decryptor.auth_leg(rec.conn, rec.from_client, rec.raw, hdr.frag_len, hdr.auth_len,
                                     hdr.little_endian, _flow(rec))
        if ptype == PTYPE_REQUEST:
            self._request(st, rec, ev)
        elif ptype == PTYPE_RESPONSE or ptype == PTYPE_FAULT:
            self._response(st, rec, ev)
        elif ptype == PTYPE_BIND or ptype == PTYPE_ALTER_CONTEXT:
            self._bind(st, rec, ev)
        elif ptype == PTYPE_BIND_ACK or ptype == PTYPE_ALTER_CONTEXT_RESP:
            self._bind_ack(st, rec, ev)
        elif ptype == PTYPE_BIND_NAK:
            self._bind_nak(st, rec, ev)
        else:
            ev.auth_level = rec.body.auth_level
            if ptype == PTYPE_ORPHANED:  # the client abandoned the call: forget its fragments and request
                st.calls.pop((rec.from_client, hdr.call_id), None)
                st.requests.pop(hdr.call_id, None)
        self.events.append(ev)

    # ------------------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _set_iface(ev: Event, iface: Label | None, source: str | None = None) -> None:
        if iface is not None:
            ev.interface, ev.interface_uuid, ev.interface_ver = iface.name, iface.uuid, iface.ver
            ev.interface_source = source

    def context_interface(self, st: _Connection, ctx_id: int, server_ip: str,
                          server_port: int) -> tuple[Label | None, str | None, str | None]:
        """(interface, note, interface_source) of ``ctx_id`` on this connection as known now."""
        iface = st.contexts.get(ctx_id)
        if iface is not None:
            return iface, None, st.context_source.get(ctx_id, "bind")
        for offered, source in st.pending_binds.values():
            for item in offered:
                if item.ctx_id == ctx_id:
                    return _label(item.if_uuid, item.if_major, item.if_minor, _offers_only_ndr64(item)), \
                        NOTE_UNACKED, source
        if not st.bind_seen:
            label, source = self.labels.lookup(server_ip, server_port, ctx_id)
            if label is not None:
                return label, NOTE_ENDPOINT, source
        return None, None, None

    def _port(self, port: int | None) -> None:
        if self._learn_port is not None and port is not None and 0 < port < 65536:
            self._learn_port(port)

    # ------------------------------------------------------------------------------------------------ calls

    def _open(self, rec: PduRecord, cp: CallPdu, ev: Event) -> int:
        """A sealed stub (packet privacy): the engine's or our decryption. Returns this fragment's stub length
        (the clear one once unsealed here)."""
        ev.auth_level = cp.body.auth_level
        ev.encrypted = True
        if rec.clear:  # the engine unsealed it: from here on as on a plain session
            ev.encrypted, ev.decrypted = False, True
        elif self._decryptor is not None and rec.raw is not None:
            # faults too: every sealed PDU advances the session's RC4 stream
            if self._unseal(rec, cp, ev):
                return len(cp.body.stub)
        return rec.stub_len

    def _unseal(self, rec: PduRecord, cp: CallPdu, ev: Event) -> bool:
        """Packet privacy with secrets: replace the sealed stub by the clear one (the row then reads as on a plain
        session, with ``decrypted`` set), or note why it stays encrypted."""
        hdr = rec.hdr
        body_start = hdr.frag_len - hdr.auth_len - 8 - cp.body.auth_pad - len(cp.body.stub)
        ends = [f"{ev.src}:{ev.sport}", f"{ev.dst}:{ev.dport}"]
        client, server = ends if rec.from_client else ends[::-1]
        flow = f"TCP connection {ev.conn} ({client} -> {server})"
        result = self._decryptor.unseal(ev.conn, rec.from_client, rec.raw, hdr.frag_len, hdr.auth_len,
                                        hdr.little_endian, body_start, flow)
        if getattr(result, "stub", None) is not None:  # ntlmssp.Unsealed (else a SealFailure)
            cp.body.stub = result.stub
            ev.encrypted, ev.decrypted = False, True
            return True
        # the body's note reaches the row with the other decode notes
        cp.body.note = _join(cp.body.note, f"not decrypted: {result.reason}")
        return False

    def _fragment(self, st: _Connection, rec: PduRecord, cp: CallPdu, ev: Event,
                  stub_len: int) -> tuple[bytes | None, _Call | None]:
        """Fragment bookkeeping. Returns (complete stub, call) at the LAST fragment, (None, None) before it."""
        hdr = rec.hdr
        stub = cp.body.stub
        missing = None if stub is not None or ev.encrypted else (rec.stub_missing or "stub bytes not available")
        flags = hdr.flags  # read as an int once (Header.first / .last are properties: twice the cost per PDU)
        first = flags & PFC_FIRST_FRAG
        if first and flags & PFC_LAST_FRAG:
            call = _Call(cp.alloc_hint, missing)
            call.size, call.count = stub_len, 1
            return stub, call
        key = (rec.from_client, hdr.call_id)
        call = st.calls.get(key)
        if first or call is None:
            if call is not None:
                ev.note = _join(ev.note, "new FIRST fragment before the previous call's LAST: previous fragments "
                                         "dropped")
            if len(st.calls) >= MAX_OUTSTANDING_CALLS:
                del st.calls[next(iter(st.calls))]
            call = st.calls[key] = _Call(cp.alloc_hint, None if first else "first fragment(s) not in the capture")
        call.count += 1
        if call.damaged is None:
            if missing is not None:
                call.damaged = missing
                call.parts = []
            elif call.size + stub_len > MAX_CALL_BYTES:
                call.damaged = f"call larger than {MAX_CALL_BYTES} bytes"
                call.parts = []
            else:
                call.parts.append(stub if stub is not None else b"")
        call.size += stub_len
        if not flags & PFC_LAST_FRAG:
            ev.stub_len = stub_len
            ev.note = _join(ev.note, f"fragment {call.count} of call {hdr.call_id} (reassembled at its LAST fragment)")
            return None, None
        del st.calls[key]
        return (b"".join(call.parts) if call.damaged is None else b""), call

    def _defer(self, st: _Connection, ev: Event, server, request: bool, stub: bytes | None, call: _Call | None,
               little_endian: bool) -> None:
        """A PDU whose interface is not known yet: labelled at finish (session module), its stub decoded then."""
        readable = call is not None and stub is not None and not ev.encrypted and call.damaged is None
        self.labels.defer(ev, server, request, stub if readable else None, little_endian,
                          endpoint_ok=not st.bind_seen)

    def _request(self, st: _Connection, rec: PduRecord, ev: Event) -> None:
        cp = rec.body
        hdr = rec.hdr
        server = (ev.dst, ev.dport)
        ev.ctx_id, ev.opnum = cp.ctx_id, cp.opnum
        if cp.body.auth_level == AUTH_LEVEL_PKT_PRIVACY:
            stub_len = self._open(rec, cp, ev)
        else:
            ev.auth_level, stub_len = cp.body.auth_level, rec.stub_len
        iface, note, source = self.context_interface(st, cp.ctx_id, *server)
        self._set_iface(ev, iface, source)
        ev.opname = opname(ev.interface, ev.opnum)
        ev.note = _join(note, cp.body.note)
        stub, call = self._fragment(st, rec, cp, ev, stub_len)
        if call is None:
            if iface is None:
                self._defer(st, ev, server, True, None, None, hdr.little_endian)
            return
        if len(st.requests) >= MAX_OUTSTANDING_CALLS:
            del st.requests[next(iter(st.requests))]
        st.requests[hdr.call_id] = _Request(cp.opnum, cp.ctx_id, ev.frame, iface, source)
        self._finish_stub(ev, hdr, stub, call, iface, decode_request_stub)
        if iface is None:
            self._defer(st, ev, server, True, stub, call, hdr.little_endian)

    def _response(self, st: _Connection, rec: PduRecord, ev: Event) -> None:
        cp = rec.body
        hdr = rec.hdr
        server = (ev.src, ev.sport)
        ev.ctx_id = cp.ctx_id
        if cp.body.auth_level == AUTH_LEVEL_PKT_PRIVACY:
            stub_len = self._open(rec, cp, ev)
        else:
            ev.auth_level, stub_len = cp.body.auth_level, rec.stub_len
        req = st.requests.get(hdr.call_id)
        if req is not None and req.iface is not None:
            iface, note, source = req.iface, None, req.source
            ev.opnum, ev.request_frame = req.opnum, req.frame
        elif req is not None:  # the request waits for its interface: its answer is labelled with it, at the end
            iface, note, source = None, None, None
            ev.opnum, ev.request_frame = req.opnum, req.frame
        else:
            iface, note, source = self.context_interface(st, cp.ctx_id, *server)
            note = _join(note, "request not in the capture")
            ev.opnum = cp.opnum  # the engine's own match, when it has one (tshark); None from the native parser
        self._set_iface(ev, iface, source)
        ev.opname = opname(ev.interface, ev.opnum)
        ev.note = _join(note, cp.body.note)
        if hdr.ptype == PTYPE_FAULT:
            ev.status = cp.status
            ev.stub_len = stub_len
            st.requests.pop(hdr.call_id, None)
            st.calls.pop((rec.from_client, hdr.call_id), None)
            if iface is None:
                self._defer(st, ev, server, False, None, None, hdr.little_endian)
            return
        stub, call = self._fragment(st, rec, cp, ev, stub_len)
        if call is None:
            if iface is None:
                self._defer(st, ev, server, False, None, None, hdr.little_endian)
            return
        st.requests.pop(hdr.call_id, None)
        if (ev.interface == EPM and ev.opnum == EpmOp.ept_map and not ev.encrypted and call.damaged is None
                and stub is not None):
            self._learn_from_ept_map(ev, stub, hdr.little_endian, iface.ndr64, server[0])
        self._finish_stub(ev, hdr, stub, call, iface, decode_response_stub)
        if iface is None:
            self._defer(st, ev, server, False, stub, call, hdr.little_endian)

    @staticmethod
    def finish_stub(ev: Event, hdr, stub: bytes | None, call: _Call, iface: Label | None, decoder) -> None:
        """Common end of a complete request/response: stub_len, and the decoded fields when readable."""
        if ev.encrypted:
            ev.stub_len = call.alloc_hint or call.size
            return
        ev.stub_len = call.size
        if call.damaged is not None:
            ev.note = _join(ev.note, f"stub not decoded: {call.damaged}")
            return
        if iface is None or ev.opnum is None:
            return
        if iface.ndr64:
            if iface.name != EPM:  # EPM responses are read in NDR64 too (_learn_from_ept_map)
                ev.note = _join(ev.note, "NDR64 transfer syntax: stub not decoded")
            return
        fields = decoder(iface.name, ev.opnum, stub, hdr.little_endian)
        for name, value in fields.items():
            if name == "note":
                ev.note = _join(ev.note, value)
            else:
                setattr(ev, name, value)

    _finish_stub = finish_stub

    def _learn_from_ept_map(self, ev: Event, stub: bytes, little_endian: bool, ndr64: bool,
                            epm_server_ip: str) -> None:
        endpoints, _status, note = parse_ept_map_response(stub, little_endian, ndr64)
        if note:
            ev.note = _join(ev.note, note)
        for ep in endpoints:
            if ep.protocol != "tcp" or ep.port is None:
                continue
            ip = ep.ip if ep.ip and ep.ip != "0.0.0.0" else epm_server_ip
            self.labels.learn_ept_map(ip, ep.port, _label(ep.if_uuid, ep.if_major, ep.if_minor))
            self._port(ep.port)

    # ------------------------------------------------------------------------------------------------ binds

    def _bind(self, st: _Connection, rec: PduRecord, ev: Event) -> None:
        bp = rec.body
        ptype = rec.hdr.ptype
        ev.auth_level = bp.body.auth_level
        ev.note = _join(bp.note, bp.body.note)
        if len(st.pending_binds) >= MAX_PENDING_BINDS:
            del st.pending_binds[next(iter(st.pending_binds))]
        source = "bind" if ptype == PTYPE_BIND else "alter_context"
        if ptype == PTYPE_BIND:
            st.bind_seen = True
        st.pending_binds[rec.hdr.call_id] = (bp.contexts, source)
        for item in bp.contexts:  # offered: teaches the endpoint until an ack says otherwise
            self.labels.learn_context(ev.conn, ev.dst, ev.dport, item.ctx_id,
                                      _label(item.if_uuid, item.if_major, item.if_minor, _offers_only_ndr64(item)))
        if bp.contexts:
            first = bp.contexts[0]
            ev.ctx_id = first.ctx_id
            self._set_iface(ev, _label(first.if_uuid, first.if_major, first.if_minor), source)

    @staticmethod
    def _take_pending(st: _Connection, call_id: int):
        """(offered contexts, "bind" / "alter_context") of the bind this ack answers, or (None, None)."""
        offered = st.pending_binds.pop(call_id, None)
        if offered is None and st.pending_binds:
            # Acks carry the bind's call_id; a stack that does not: take the oldest outstanding bind
            offered = st.pending_binds.pop(next(iter(st.pending_binds)))
        return offered if offered is not None else (None, None)

    def _bind_ack(self, st: _Connection, rec: PduRecord, ev: Event) -> None:
        ap = rec.body
        ev.auth_level = ap.body.auth_level
        ev.note = _join(ap.note, ap.body.note)
        offered, source = self._take_pending(st, rec.hdr.call_id)
        if offered is None:
            ev.note = _join(ev.note, "bind not in the capture: contexts unknown")
            return
        first_accepted = None
        for item, res in zip(offered, ap.results):
            iface = _label(item.if_uuid, item.if_major, item.if_minor, res.transfer_uuid == NDR64_UUID)
            if res.result != 0:
                self.labels.forget_context(ev.conn, ev.src, ev.sport, item.ctx_id, iface)
                continue
            st.contexts[item.ctx_id] = iface
            st.context_source[item.ctx_id] = source
            self.labels.learn_context(ev.conn, ev.src, ev.sport, item.ctx_id, iface)
            if first_accepted is None:
                first_accepted = (item.ctx_id, iface)
        if len(ap.results) != len(offered):
            ev.note = _join(ev.note, f"{len(ap.results)} results for {len(offered)} offered contexts")
        if first_accepted is None:
            ev.note = _join(ev.note, "no presentation context accepted")
            if offered:
                self._set_iface(ev, _label(offered[0].if_uuid, offered[0].if_major, offered[0].if_minor), source)
                ev.ctx_id = offered[0].ctx_id
            return
        ev.ctx_id, iface = first_accepted
        self._set_iface(ev, iface, source)
        # The secondary address is the server's port for ncacn_ip_tcp: one more way to learn port -> interface
        if ap.sec_addr.isdigit() and int(ap.sec_addr) != EPM_PORT:
            self.labels.learn_sec_addr(ev.src, int(ap.sec_addr), iface)
            self._port(int(ap.sec_addr))

    def _bind_nak(self, st: _Connection, rec: PduRecord, ev: Event) -> None:
        ev.auth_level = rec.body.auth_level
        offered, source = self._take_pending(st, rec.hdr.call_id)
        for item in offered or ():
            self.labels.forget_context(ev.conn, ev.src, ev.sport, item.ctx_id,
                                       _label(item.if_uuid, item.if_major, item.if_minor))
        if offered:
            ev.ctx_id = offered[0].ctx_id
            self._set_iface(ev, _label(offered[0].if_uuid, offered[0].if_major, offered[0].if_minor), source)
        if rec.reject_reason is not None:
            ev.note = f"bind rejected, reason {rec.reject_reason}"
