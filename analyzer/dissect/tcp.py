# SPDX-License-Identifier: GPL-2.0-or-later
"""TCP connection tracking and per-direction stream reassembly for the native engine.

Rules (chosen to give the PDU frames ``tshark -o tcp.reassemble_out_of_order:TRUE`` reports):

* connections are numbered in order of first appearance (like ``tcp.stream``); a SYN on a 4-tuple whose
  connection was closed (FIN both ways or RST) starts a new one;
* bytes are delivered once they are contiguous, with the frame that made them contiguous (for a reordered
  segment: the frame that filled the hole);
* retransmissions are dropped; where segments overlap the bytes delivered first win (as Wireshark);
* a hole is given up (``tcp_gap``, the analyser warns and resynchronises on the next plausible PDU header) as soon
  as the capture shows it was lost by the capture and not by the network, or has waited long enough:

  - the peer acknowledges bytes beyond the hole (the ACK number of a segment of the other direction that passes
    the pre-filter: one with data, SYN, FIN or RST; the receiver got the bytes, the capture did not);
  - the hole has stayed open for :data:`HOLE_WINDOW` seconds of capture time (checked at every later segment of
    the connection): a real retransmission arrives within the sender's retransmission timeout (Windows: 300 ms
    minimum, 3 s initial), so 5 s waits for one retransmission round and a few RTO back-offs without holding a
    one-sided capture's later PDUs for long;
  - FIN/RST, end of capture, or the out-of-order buffer of one direction exceeding :data:`MAX_OOO_SEGMENTS` /
    :data:`MAX_OOO_BYTES` (memory per connection stays bounded);

  after such a gap every buffered segment is delivered with its OWN frame number and time, so a PDU after the
  hole is reported at the segment that completed it, never at the frame that revealed the loss (or the capture's
  last frame);
* a direction whose first bytes are not in the capture starts at its first seen segment, after a
  ``tcp_gap(missing=0)`` telling the analyser it may be mid-PDU;
* sequence numbers are unwrapped against the next expected byte, so a stream crossing 2**32 is one stream.

Flows the sink never finds interesting keep only a small :class:`TcpFlow` (for the connection number and the
SYN sequence numbers); their bytes are never looked at.
"""

from __future__ import annotations

from analyzer.dissect.model import ConnectionWarning
from analyzer.dissect.stream import PacketSink, TcpConnection

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
SEQ_MASK = 0xFFFFFFFF
HALF = 1 << 31
MAX_OOO_SEGMENTS = 64
MAX_OOO_BYTES = 1 << 20
# Seconds of capture time a hole may stay open before its bytes are declared lost (module doc)
HOLE_WINDOW = 5.0
# Flows remembered at once. Past this the oldest flows that the sink never found interesting (or already closed)
# are forgotten: their connection number is the only thing lost, and only if they turn interesting later.
MAX_FLOWS = 200_000


class _Direction:
    __slots__ = ("isn", "next", "ooo", "ooo_bytes", "fin", "skipped", "hole_since")

    def __init__(self):
        # True from the moment a flow is followed until this direction's first segment after it, when bytes of
        # this direction may have gone by unfollowed: a hole before that first segment is then a gap, not
        # reordering to wait for.
        self.skipped = False
        self.isn: int | None = None  # sequence number of this direction's SYN, when captured
        self.next: int | None = None  # unwrapped sequence number of the next byte to deliver
        # unwrapped start -> (bytes, frame, time) of the segment, beyond a hole
        self.ooo: dict[int, tuple[bytes, int, float]] = {}
        self.ooo_bytes = 0
        self.hole_since = 0.0  # capture time of the first segment buffered beyond the current hole
        self.fin = False

    def unwrap(self, seq: int) -> int:
        nxt = self.next
        return nxt + ((seq - nxt + HALF) & SEQ_MASK) - HALF


class TcpFlow:
    """One TCP connection as the transport sees it. Endpoint A is the lower (address, port) of the 4-tuple."""

    __slots__ = ("index", "a", "b", "dirs", "interesting", "conn", "syn_from_a", "first_from_a", "closed",
                 "rst", "client_side")

    def __init__(self, index: int, a: tuple[str, int], b: tuple[str, int], first_from_a: bool):
        self.index = index
        self.a, self.b = a, b
        self.dirs = (_Direction(), _Direction())  # [0]: sent by A, [1]: sent by B
        self.interesting = False
        self.conn: TcpConnection | None = None
        self.syn_from_a: bool | None = None  # who sent the SYN (client), when seen
        self.first_from_a = first_from_a
        self.closed = False
        self.rst = False
        # (A is the client, B is the client) once followed: the direction test per segment without building
        # tuples (both True for a connection from an endpoint to itself, as the tuple comparison said)
        self.client_side = (False, False)


class TcpTable:
    """All TCP flows of a capture; :meth:`segment` is called for every TCP segment the pre-filter lets through."""

    def __init__(self, sink: PacketSink, known_ports=None):
        self.sink = sink
        self.flows: dict[tuple, TcpFlow] = {}
        self.count = 0  # connections numbered so far
        # ports the sink already knows to carry DCE/RPC: their side is the server when no SYN says otherwise
        self.known_ports = known_ports if known_ports is not None else set()
        self.newly_interesting: list[TcpFlow] = []  # flows that turned interesting since the caller last looked
        self.ooo_overflows = 0

    # ------------------------------------------------------------------------------------------------ segments

    def segment(self, frame: int, time: float, src: str, sport: int, dst: str, dport: int, seq: int,
                flags: int, payload: bytes, ack: int | None = None) -> None:
        """One TCP segment. ``ack``: its acknowledgement number (used when the ACK flag is set) to tell capture
        loss from reordering in the other direction."""
        if (src, sport) <= (dst, dport):
            key, from_a = (src, sport, dst, dport), True
        else:
            key, from_a = (dst, dport, src, sport), False
        flow = self.flows.get(key)
        if flow is None or (flags & (SYN | ACK) == SYN and (flow.closed or self._reused(flow, from_a, seq))):
            if flow is not None:
                if flow.interesting and not flow.closed:
                    self._close(flow, frame, time)
                del self.flows[key]
            flow = self._new_flow(key, from_a)
        elif flow.closed:
            return  # stray segment after the close (final ACK, late retransmission)
        d = flow.dirs[0 if from_a else 1]
        if flags & SYN:
            if flags & ACK == 0:
                flow.syn_from_a = from_a
            elif flow.syn_from_a is None:
                flow.syn_from_a = not from_a
            if d.isn is None:
                d.isn = seq
                if flow.interesting and d.next is None:
                    d.next = seq + 1
            seq = (seq + 1) & SEQ_MASK  # the SYN takes one sequence number; any data follows it
        if not flow.interesting:
            if not self.sink.is_interesting_tcp(payload, sport, dport):
                if flags & (FIN | RST):
                    self._note_close(flow, d, flags, deliver=False)
                return
            self._start(flow, from_a, seq, payload, frame, time)
        # Only segments the transport's pre-filter lets through (data, SYN, FIN, RST) may end a hole: a pure ACK
        # never reaches here on the fast path, so it must not change anything on the per-frame path either.
        if payload or flags & (SYN | FIN | RST):
            other = flow.dirs[1 if from_a else 0]
            if other.ooo:
                self._check_hole(flow, not from_a, other, ack if flags & ACK else None, frame, time)
            if d.ooo and time - d.hole_since > HOLE_WINDOW:
                self._check_hole(flow, from_a, d, None, frame, time)
        if payload:
            self._data(flow, from_a, d, seq, payload, frame, time)
        if flags & (FIN | RST):
            self._note_close(flow, d, flags, deliver=True, frame=frame, time=time)

    def finish(self, frame: int, time: float) -> None:
        """End of capture (``frame``/``time``: the last frame): give up remaining holes, close every followed
        connection."""
        for flow in list(self.flows.values()):
            if flow.interesting and not flow.closed:
                self._close(flow, frame, time)
        self.flows.clear()

    # ------------------------------------------------------------------------------------------------ internals

    def _new_flow(self, key: tuple, from_a: bool) -> TcpFlow:
        flows = self.flows
        if len(flows) >= MAX_FLOWS:
            self._evict()
        flow = TcpFlow(self.count, (key[0], key[1]), (key[2], key[3]), from_a)
        self.count += 1
        flows[key] = flow
        return flow

    def _evict(self) -> None:
        # dicts keep insertion order: drop the oldest quarter of flows not being followed
        budget = MAX_FLOWS // 4
        for key in [k for k, f in self.flows.items() if not f.interesting or f.closed][:budget]:
            del self.flows[key]

    @staticmethod
    def _reused(flow: TcpFlow, from_a: bool, seq: int) -> bool:
        """A SYN on a 4-tuple whose connection was not seen closing: a new connection when it does not repeat
        the SYN already seen (another initial sequence number), or when the old connection carried data and
        had no SYN in the capture (it ended unseen, as Wireshark then starts a new tcp.stream too)."""
        d = flow.dirs[0 if from_a else 1]
        if d.isn is not None:
            return d.isn != seq
        return any(x.next is not None for x in flow.dirs) or not flow.interesting and flow.syn_from_a is None

    def _client_is_a(self, flow: TcpFlow, payload: bytes, from_a: bool) -> bool:
        if flow.syn_from_a is not None:
            return flow.syn_from_a
        pa, pb = flow.a[1], flow.b[1]
        if (pa < 1024) != (pb < 1024):  # a well-known port and an ephemeral one
            return pa >= 1024
        known = self.known_ports
        if (pa in known) != (pb in known):
            return pb in known
        # Mid-stream without port hints: a connection-oriented DCE/RPC PDU type says who speaks (requests,
        # binds, alter_context and auth3 go client -> server; responses, acks and faults come back).
        if len(payload) >= 3 and payload[0] == 5:
            ptype = payload[2]
            if ptype in (0, 11, 14, 16):
                return from_a
            if ptype in (2, 3, 12, 13, 15):
                return not from_a
        return flow.first_from_a

    def _start(self, flow: TcpFlow, from_a: bool, data_seq: int, payload: bytes, frame: int, time: float) -> None:
        """The sink wants this flow (from the segment at ``data_seq`` on): set up both directions."""
        client_is_a = self._client_is_a(flow, payload, from_a)
        client, server = (flow.a, flow.b) if client_is_a else (flow.b, flow.a)
        flow.conn = TcpConnection(index=flow.index, client_ip=client[0], client_port=client[1],
                                  server_ip=server[0], server_port=server[1],
                                  started_in_capture=flow.syn_from_a is not None)
        flow.client_side = (flow.a == client, flow.b == client)
        flow.interesting = True
        self.newly_interesting.append(flow)
        for i, d in enumerate(flow.dirs):
            if d.isn is not None:
                d.next = d.isn + 1
        if payload:  # followed from a data segment on: earlier segments of the other direction went by unseen
            flow.dirs[1 if from_a else 0].skipped = True
        d = flow.dirs[0 if from_a else 1]
        if d.isn is not None and (data_seq - d.next) & SEQ_MASK and not (data_seq - d.next) & HALF:
            # bytes of this direction went by before the flow looked interesting
            missing = (data_seq - d.next) & SEQ_MASK
            d.next = data_seq
            self.sink.tcp_gap(flow.conn, from_a == client_is_a, missing, frame, time)

    def _data(self, flow: TcpFlow, from_a: bool, d: _Direction, seq: int, payload: bytes, frame: int,
              time: float) -> None:
        conn = flow.conn
        from_client = flow.client_side[0 if from_a else 1]
        nxt = d.next
        if nxt is None:  # first bytes of a direction whose start was not captured
            d.next = nxt = seq
            self.sink.tcp_gap(conn, from_client, 0, frame, time)
        start = nxt + ((seq - nxt + HALF) & SEQ_MASK) - HALF  # d.unwrap(seq), inlined: once per segment
        end = start + len(payload)
        if d.skipped:
            d.skipped = False
            if start > nxt:  # this direction's bytes before the flow was followed were never looked at
                self.sink.tcp_gap(conn, from_client, start - nxt, frame, time)
                d.next = nxt = start
        if end <= nxt:
            return  # retransmission of delivered bytes
        if start > nxt:
            self._buffer(flow, d, from_client, start, payload, frame, time)
            return
        data = payload[nxt - start :] if start < nxt else payload
        d.next = end
        if d.ooo:  # a reordered segment filled the hole: everything now contiguous completes at this frame
            parts: list = []
            self._drain(d, parts)
            data = b"".join([data, *(p[0] for p in parts)])
        self.sink.tcp_data(conn, from_client, bytes(data), frame, time)

    @staticmethod
    def _drain(d: _Direction, parts: list) -> None:
        """Append to ``parts`` the buffered segments now contiguous, as (bytes, frame, time), advancing d.next."""
        ooo = d.ooo
        while ooo:
            first = min(ooo)
            if first > d.next:
                return
            seg, seg_frame, seg_time = ooo.pop(first)
            d.ooo_bytes -= len(seg)
            seg_end = first + len(seg)
            if seg_end > d.next:
                parts.append((seg[d.next - first :], seg_frame, seg_time))
                d.next = seg_end

    def _check_hole(self, flow: TcpFlow, from_a: bool, d: _Direction, ack: int | None, frame: int,
                    time: float) -> None:
        """Give up the hole(s) of direction ``d`` that the peer acknowledged (``ack``) or that are older than
        HOLE_WINDOW."""
        conn = flow.conn
        from_client = flow.client_side[0 if from_a else 1]
        if ack is not None:
            acked = d.unwrap(ack)
            while d.ooo and acked > d.next:
                self._skip_hole(conn, d, from_client, frame, time)
        while d.ooo and time - d.hole_since > HOLE_WINDOW:
            self._skip_hole(conn, d, from_client, frame, time)

    def _buffer(self, flow: TcpFlow, d: _Direction, from_client: bool, start: int, payload: bytes, frame: int,
                time: float) -> None:
        if not d.ooo:
            d.hole_since = time
        held = d.ooo.get(start)
        if held is None:
            d.ooo[start] = (bytes(payload), frame, time)
            d.ooo_bytes += len(payload)
        elif len(payload) > len(held[0]):  # same start, longer: keep the first copy, add the new tail
            d.ooo[start] = (held[0] + bytes(payload[len(held[0]) :]), frame, time)
            d.ooo_bytes += len(payload) - len(held[0])
        if len(d.ooo) > MAX_OOO_SEGMENTS or d.ooo_bytes > MAX_OOO_BYTES:
            self.ooo_overflows += 1
            conn = flow.conn
            self.sink.warn(ConnectionWarning(
                f"frame {frame}: TCP connection {flow.index}: more than {MAX_OOO_SEGMENTS} segments or "
                f"{MAX_OOO_BYTES} bytes beyond a hole; giving the missing bytes up", flow.index,
                f"{conn.client_ip}:{conn.client_port}", f"{conn.server_ip}:{conn.server_port}", True))
            while len(d.ooo) > MAX_OOO_SEGMENTS // 2 or d.ooo_bytes > MAX_OOO_BYTES // 2:
                self._skip_hole(flow.conn, d, from_client, frame, time)

    def _skip_hole(self, conn: TcpConnection, d: _Direction, from_client: bool, frame, time) -> None:
        """Declare the first hole lost and deliver what follows it, segment by segment with each one's own
        frame and time (the gap itself is reported at the first segment after the hole)."""
        first = min(d.ooo)
        _seg, seg_frame, seg_time = d.ooo[first]
        self.sink.tcp_gap(conn, from_client, first - d.next, seg_frame, seg_time)
        d.next = first
        parts: list = []
        self._drain(d, parts)
        for data, seg_frame, seg_time in parts:
            self.sink.tcp_data(conn, from_client, data, seg_frame, seg_time)
        if d.ooo:
            d.hole_since = min(t for _b, _f, t in d.ooo.values())

    def _note_close(self, flow: TcpFlow, d: _Direction, flags: int, deliver: bool, frame=None, time=None) -> None:
        if flags & RST:
            flow.rst = True
        else:
            d.fin = True
        if flow.rst or (flow.dirs[0].fin and flow.dirs[1].fin):
            if deliver:
                self._close(flow, frame, time)
            flow.closed = True

    def _close(self, flow: TcpFlow, frame, time) -> None:
        conn = flow.conn
        for i, d in enumerate(flow.dirs):
            if d.ooo:
                from_client = flow.client_side[i]
                while d.ooo:
                    self._skip_hole(conn, d, from_client, frame, time)
        flow.closed = True
        self.sink.tcp_close(conn)
