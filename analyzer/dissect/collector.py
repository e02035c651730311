"""The application analyser of the native engine: a :class:`analyzer.dissect.stream.PacketSink` that turns
reassembled TCP bytes, UDP datagrams and ICMP errors into :class:`analyzer.dissect.model.Event` rows.

Per TCP connection (state kept in ``TcpConnection.app``):

* one byte buffer per direction; several PDUs in one chunk and one PDU over several chunks both work. A PDU's
  row gets the frame of the chunk that completed it (as Wireshark reports it).
* after a gap (``tcp_gap``), at a connection whose first captured bytes are not a PDU boundary, or when the bytes
  at a PDU boundary are not a plausible header, the partial PDU is dropped and the stream is scanned for the next
  plausible header (version 5.0/5.1, connection-oriented PTYPE, valid drep, sane lengths), with a warning that
  names the frame.
* each complete PDU is parsed (:mod:`analyzer.dissect.dcerpc`) into a
  :class:`analyzer.dissect.rpc_session.PduRecord` and handed to the shared
  :class:`analyzer.dissect.rpc_session.RpcSessionAnalyser`, which keeps the per-connection DCE/RPC state
  (presentation contexts, fragments, call matching, memory bounds, NTLMSSP unsealing with ``--secrets``,
  capture-wide interface learning) and emits the events, for this engine and the tshark engine alike.
* warnings about one connection are :class:`analyzer.dissect.model.ConnectionWarning` (the text, plus the
  connection it concerns), so that later stages can group them; the collector itself judges nothing.

UDP datagrams (already filtered by the transport to ports >= 1024 and not connectionless DCE/RPC) become
``udp`` rows with the payload length and its first 64 bytes as hex; ICMP errors quoting a UDP datagram become
``icmp_unreachable`` rows.
"""

from __future__ import annotations

import functools
from collections.abc import Set
from typing import TYPE_CHECKING, Callable

from analyzer.dissect import dcerpc
from analyzer.dissect.dcerpc import (
    HEADER_LEN,
    PTYPE_ALTER_CONTEXT,
    PTYPE_ALTER_CONTEXT_RESP,
    PTYPE_BIND,
    PTYPE_BIND_ACK,
    PTYPE_BIND_NAK,
    PTYPE_FAULT,
    PTYPE_REQUEST,
    PTYPE_RESPONSE,
    find_plausible_header,
    plausible_header,
    plausible_header_or_none,
)
from analyzer.dissect.interfaces import EPM_PORT  # noqa: F401  (re-exported: the transport's well-known port)
from analyzer.dissect.model import ConnectionWarning, Event
from analyzer.dissect.rpc_session import (  # noqa: F401  (the bounds are re-exported for tests)
    MAX_CALL_BYTES,
    MAX_OUTSTANDING_CALLS,
    MAX_PENDING_BINDS,
    PduRecord,
    RpcSessionAnalyser,
)
from analyzer.dissect.stream import TcpConnection

if TYPE_CHECKING:  # imported by the engine only with --secrets: pycryptodome stays out of plain runs
    from analyzer.dissect.ntlmssp import SessionDecryptor

# Well-known DCE/RPC TCP ports: the endpoint mapper and its RPC-over-HTTP-free twin on 593 (ncacn_http
# endpoint mapper). Exchange's dynamic ports are learned from ept_map responses and bind_ack sec_addr.
KNOWN_DCERPC_PORTS = (EPM_PORT, 593)
# NetBIOS session service and SMB: their DCE/RPC is ncacn_np, not followed
SMB_PORTS = (139, 445)
# ncacn_http (RPC over HTTP v1 / direct RPC proxy connections) opens each direction with this ASCII greeting
# before the first PDU (MS-RPCH 2.1.2.1.1 "legacy server response"; C706 ncacn_http): skipped, not a gap.
NCACN_HTTP_GREETING = b"ncacn_http/1.0"
UDP_HEX_BYTES = 64
# PduRecord from a tuple without the keyword handling of its constructor (once per PDU)
_new_record = functools.partial(tuple.__new__, PduRecord)
# Warnings about one direction of one connection that keeps failing to parse are capped at this many.
MAX_WARNINGS_PER_DIRECTION = 3


class _Direction:
    __slots__ = ("buf", "resync", "started", "offset", "warnings")

    def __init__(self):
        self.buf = bytearray()
        self.resync = False  # scanning for the next plausible header
        self.started = False  # first bytes seen
        self.offset = 0  # stream offset of buf[0] (bytes of this direction consumed so far)
        self.warnings = 0


class _ConnState:
    """Framing state of one connection: one byte buffer per direction (the DCE/RPC state is the analyser's)."""

    __slots__ = ("dirs", "rpc")

    def __init__(self, rpc):
        self.dirs = {True: _Direction(), False: _Direction()}
        self.rpc = rpc  # the session analyser's state of this connection (for inspection)

    @property
    def requests(self) -> dict:
        return self.rpc.requests

    @property
    def calls(self) -> dict:
        return self.rpc.calls


def _default_warn(message: str) -> None:
    pass


class EventCollector:
    """PacketSink producing Events. ``finish()`` flushes per-connection state and returns the events sorted by
    frame (stable: PDUs of one frame keep their stream order)."""

    def __init__(self, warn: Callable[[str], None] = _default_warn, decryptor: "SessionDecryptor | None" = None):
        self._warn = warn
        self._decryptor = decryptor  # NTLMSSP unsealing (--secrets); None: sealed stubs stay encrypted
        self.warnings: list[str] = []
        self.events: list[Event] = []
        self._ports: set[int] = set(KNOWN_DCERPC_PORTS)
        # the subclass hook costs a call per PDU: handed over only when a subclass overrides it
        hook = self._finish_stub if type(self)._finish_stub is not EventCollector._finish_stub else None
        self.session = RpcSessionAnalyser(self.events, self.warn, decryptor, self._ports.add, hook)
        self.labels = self.session.labels
        self._live: dict[int, TcpConnection] = {}

    @property
    def open_connections(self) -> int:
        """Connections with framing state not yet closed (``finish`` closes them)."""
        return len(self._live)

    @property
    def known_ports(self) -> Set[int]:
        """TCP ports known to carry DCE/RPC: 135, 593 and the ports learned from ept_map responses and bind_ack
        secondary addresses. The live set, so it grows while the capture is read (the transport keeps a reference
        instead of asking per frame); read-only for callers."""
        return self._ports

    # ------------------------------------------------------------------------------------------------ sink API

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._warn(message)

    def is_interesting_tcp(self, payload: bytes, sport: int, dport: int) -> bool:
        if sport in self._ports or dport in self._ports:
            return True
        if sport in SMB_PORTS or dport in SMB_PORTS:
            # DCE/RPC inside SMB named pipes (ncacn_np) is out of scope (as in the tshark engine); its PDUs sit
            # at SMB offsets, so following the flow would only produce resynchronisation warnings
            return False
        if not isinstance(payload, (bytes, bytearray)):
            payload = bytes(payload)
        if plausible_header(payload, 0) or payload.startswith(NCACN_HTTP_GREETING):
            return True
        # A plausible header further in (the flow was joined mid-stream): stricter, to keep bulk flows out:
        # the PDU types of a call or bind and the drep every Windows/DCE stack sends (LE ASCII IEEE).
        i = 0
        while True:
            i = payload.find(b"\x05", i)
            if i < 0 or len(payload) - i < HEADER_LEN:
                return False
            if (payload[i + 2] in (0, 2, 3, 11, 12, 14, 15) and payload[i + 4 : i + 8] == b"\x10\x00\x00\x00"
                    and plausible_header(payload, i)):
                return True
            i += 1

    def tcp_data(self, conn: TcpConnection, from_client: bool, data: bytes, frame: int, time: float) -> None:
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        st = conn.app
        if st is None:
            st = conn.app = _ConnState(self.session.connection(conn.index))
            self._live[conn.index] = conn
        d = st.dirs[from_client]
        if not d.started:
            d.started = True
            if data.startswith(NCACN_HTTP_GREETING):
                data = data[len(NCACN_HTTP_GREETING):]
                d.offset += len(NCACN_HTTP_GREETING)
            if not plausible_header(data, 0) and len(data) >= HEADER_LEN:
                self._direction_warning(conn, from_client, d, f"frame {frame}: {self._flow(conn, from_client)} "
                                        "does not start at a DCE/RPC PDU boundary; resynchronising")
                d.resync = True
        if d.buf:
            d.buf += data
            work = d.buf
        else:
            work = data
        pos = 0
        n = len(work)
        while True:
            if d.resync:
                i = find_plausible_header(work, pos)
                if i < 0:
                    pos = max(pos, n - (HEADER_LEN - 1))  # a header may straddle the next chunk
                    break
                pos = i
                d.resync = False
            if n - pos < HEADER_LEN:
                break
            hdr = plausible_header_or_none(work, pos)
            if hdr is None:
                self._direction_warning(conn, from_client, d, f"frame {frame}: {self._flow(conn, from_client)}: "
                                        f"no DCE/RPC header at stream offset {d.offset + pos}; resynchronising")
                d.resync = True
                pos += 1
                continue
            frag_len = hdr.frag_len
            if n - pos < frag_len:
                break
            if pos == 0 and frag_len == n and work is data and isinstance(data, bytes):
                pdu = data  # the chunk is exactly one PDU (the common case): no copy
            else:
                pdu = bytes(work[pos : pos + frag_len])
            pos += frag_len
            try:
                self._pdu(conn, st, from_client, hdr, pdu, frame, time)
            except Exception as exc:  # a bug in one PDU's handling must not lose the rest of the capture
                self.warn(f"frame {frame}: DCE/RPC PDU not analysed ({type(exc).__name__}: {exc})")
        d.offset += pos
        if work is d.buf:
            del d.buf[:pos]
        elif pos < n:
            d.buf = bytearray(work[pos:])

    def tcp_gap(self, conn: TcpConnection, from_client: bool, missing: int, frame: int, time: float) -> None:
        st = conn.app
        if st is None:
            st = conn.app = _ConnState(self.session.connection(conn.index))
            self._live[conn.index] = conn
        d = st.dirs[from_client]
        if missing == 0 and not d.started:
            # The capture starts mid-connection (the transport's tcp_gap(missing=0) before the first bytes of a
            # direction whose start was not captured). Not a loss: tcp_data's first-chunk check warns only if
            # those bytes are not at a PDU boundary.
            return
        d.started = True
        dropped = len(d.buf)
        d.buf = bytearray()
        d.offset += dropped + missing
        d.resync = True
        self.session.gap(conn.index, from_client, f"{missing} bytes missing at frame {frame}")
        self.warn(self._about(conn, f"frame {frame}: {missing} bytes missing in {self._flow(conn, from_client)}"
                              + (f" (dropped {dropped} bytes of a partial PDU)" if dropped else "")
                              + "; resynchronising on the next DCE/RPC header", capture_loss=True))

    def tcp_close(self, conn: TcpConnection) -> None:
        st = conn.app
        if not isinstance(st, _ConnState):
            return
        for from_client, d in st.dirs.items():
            if d.buf and not d.resync:
                self.warn(self._about(conn, f"{self._flow(conn, from_client)} ended with an incomplete DCE/RPC PDU "
                                      f"({len(d.buf)} bytes buffered)"))
        conn.app = None
        self._live.pop(conn.index, None)
        self.session.close(conn.index)

    def udp(self, frame: int, time: float, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        self.events.append(Event(frame=frame, time=time, src=src, dst=dst, sport=sport, dport=dport, kind="udp",
                                 stub_len=len(payload), context_hex=bytes(payload[:UDP_HEX_BYTES]).hex()))

    def icmp_error(self, frame: int, time: float, src: str, dst: str, icmp_type: int, icmp_code: int,
                   quoted_src: str, quoted_dst: str, quoted_sport: int, quoted_dport: int) -> None:
        self.events.append(Event(frame=frame, time=time, src=src, dst=dst, sport=None, dport=None,
                                 kind="icmp_unreachable", icmp_type=icmp_type, icmp_code=icmp_code,
                                 quoted_src=quoted_src, quoted_dst=quoted_dst, quoted_sport=quoted_sport,
                                 quoted_dport=quoted_dport))

    def finish(self) -> list[Event]:
        for conn in list(self._live.values()):
            self.tcp_close(conn)
        self.session.finish()
        self.events.sort(key=lambda e: e.frame)  # stable: stream order within a frame is kept
        return self.events

    # ------------------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _flow(conn: TcpConnection, from_client: bool) -> str:
        if from_client:
            a, b = f"{conn.client_ip}:{conn.client_port}", f"{conn.server_ip}:{conn.server_port}"
        else:
            a, b = f"{conn.server_ip}:{conn.server_port}", f"{conn.client_ip}:{conn.client_port}"
        return f"TCP connection {conn.index} ({a} -> {b})"

    @staticmethod
    def _about(conn: TcpConnection, message: str, capture_loss: bool = False) -> ConnectionWarning:
        return ConnectionWarning(message, conn.index, f"{conn.client_ip}:{conn.client_port}",
                                 f"{conn.server_ip}:{conn.server_port}", capture_loss)

    def _direction_warning(self, conn, from_client, d: _Direction, message: str) -> None:
        d.warnings += 1
        if d.warnings <= MAX_WARNINGS_PER_DIRECTION:
            if d.warnings == MAX_WARNINGS_PER_DIRECTION:
                message += " (further warnings for this direction suppressed)"
            self.warn(self._about(conn, message))

    def _finish_stub(self, ev: Event, hdr, stub: bytes, call, iface, decoder) -> None:
        """The end of a complete request/response (the session analyser's): a hook for subclasses that watch the
        clear stubs (tests/test_stub_shape.py)."""
        RpcSessionAnalyser.finish_stub(ev, hdr, stub, call, iface, decoder)

    # ------------------------------------------------------------------------------------------------ PDUs

    def _pdu(self, conn: TcpConnection, st: _ConnState, from_client: bool, hdr, pdu: bytes, frame: int,
             time: float) -> None:
        """Parse one complete PDU into a record for the session analyser."""
        if from_client:
            src, sport, dst, dport = conn.client_ip, conn.client_port, conn.server_ip, conn.server_port
        else:
            src, sport, dst, dport = conn.server_ip, conn.server_port, conn.client_ip, conn.client_port
        ptype = hdr.ptype
        reason = None
        if ptype == PTYPE_REQUEST or ptype == PTYPE_RESPONSE or ptype == PTYPE_FAULT:
            body = dcerpc.parse_call(pdu, hdr)
            stub_len = len(body.body.stub)
        elif ptype == PTYPE_BIND or ptype == PTYPE_ALTER_CONTEXT:
            body, stub_len = dcerpc.parse_bind(pdu, hdr), 0
        elif ptype == PTYPE_BIND_ACK or ptype == PTYPE_ALTER_CONTEXT_RESP:
            body, stub_len = dcerpc.parse_bind_ack(pdu, hdr), 0
        else:
            body, stub_len = dcerpc.parse_auth_only(pdu, hdr), 0
            if ptype == PTYPE_BIND_NAK and len(pdu) >= 18:
                reason = int.from_bytes(pdu[16:18], "little" if hdr.little_endian else "big")
        self.session.pdu(_new_record((conn.index, from_client, frame, time, src, sport, dst, dport, hdr, body,
                                      stub_len, pdu, False, None, reason)))
