# SPDX-License-Identifier: GPL-2.0-or-later
"""One worker's share of a capture split over cores (``mailpush analyze --jobs N``; the runner is
:mod:`analyzer.dissect.parallel`).

Shares are made by a hash of the *unordered IP address pair* (:func:`share_of`), not of the 4-tuple: a client's
endpoint-mapper connection, its EMSMDB connections and the UDP datagrams between it and its server fall into one
share. ICMP errors go by the address pair of the datagram they quote.

What a worker must reproduce exactly is everything one core shares capture-wide, and the code shows three such
things besides the events themselves:

* **connection numbers.** :class:`analyzer.dissect.tcp.TcpTable` numbers every flow, and whether it *follows* a
  flow changes that numbering (``_reused`` and ``_evict`` look at ``flow.interesting``), as well as which frames the
  transport's pre-filter keeps (the followed flows in its flow sets). So every worker's transport follows exactly
  the flows one core follows, and the share is applied one level up, in the sink.
* **the ports learnt** from ``ept_map`` answers and bind_ack secondary addresses (the collector's
  ``known_ports``): they make the transport follow flows on that port from then on, in any share.
* **the endpoints learnt** by the :class:`analyzer.dissect.session.SessionLabeller` (binds, bind_acks, bind_naks,
  ``ept_map`` answers), which label PDUs of other connections at once or at the end.

:class:`ShareCollector` therefore frames the PDUs of *every* followed connection, and hands the session analyser
every PDU that can teach something capture-wide: all bind-type PDUs, and every request / response / fault unless
the interface of its context is already known and is not the endpoint mapper (only an ``ept_map`` answer teaches
from a call, and a call is labelled EPM only through its own request or context). Those skipped calls are most of
the DCE/RPC work (EMSMDB stubs); they are skipped only on connections of other shares. Events and warnings of
connections of other shares are dropped, so each worker returns its own share's rows and the facts every worker
learns are those one core learns, at the same frame. Where that argument does not hold (listed in
:attr:`ShareCollector.unsplittable`), the runner falls back to one core.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Callable, Iterator

from analyzer.dissect.collector import EventCollector
from analyzer.dissect.dcerpc import PTYPE_FAULT, PTYPE_REQUEST, PTYPE_RESPONSE
from analyzer.dissect.interfaces import EPM
from analyzer.dissect.model import ConnectionWarning
from analyzer.dissect.rpc_session import MAX_OUTSTANDING_CALLS
from analyzer.dissect.stream import TcpConnection

_CALL_PTYPES = (PTYPE_REQUEST, PTYPE_RESPONSE, PTYPE_FAULT)
_CTX_AT = 20  # p_cont_id of request, response and fault (C706 12.6.4.9-12.6.4.11)


def share_of(ip_a: str, ip_b: str, shares: int) -> int:
    """The share of the unordered address pair: the same in every process (CRC-32, not Python's salted hash)."""
    lo, hi = (ip_a, ip_b) if ip_a <= ip_b else (ip_b, ip_a)
    return zlib.crc32(f"{lo}|{hi}".encode("utf-8", "surrogatepass")) % shares


class ShareCollector(EventCollector):
    """The :class:`EventCollector` of worker ``share`` of ``shares`` (module doc)."""

    def __init__(self, share: int, shares: int, warn: Callable[[str], None]):
        super().__init__(warn=warn)
        self.share, self.shares = share, shares
        self._pairs: dict[tuple[str, str], bool] = {}
        self._other: dict[int, bool] = {}  # connection index -> of another share
        self._skipped: set[int] = set()  # connections of other shares with a call skipped
        self._muted = False
        self.unsplittable: str | None = None  # why this capture cannot be split exactly (then: one core)

    def _mine(self, a: str, b: str) -> bool:
        key = (a, b)
        mine = self._pairs.get(key)
        if mine is None:
            if len(self._pairs) >= 65536:
                self._pairs.clear()
            mine = self._pairs[key] = share_of(a, b, self.shares) == self.share
        return mine

    def _is_other(self, conn: TcpConnection) -> bool:
        other = self._other.get(conn.index)
        if other is None:
            other = self._other[conn.index] = not self._mine(conn.client_ip, conn.server_ip)
        return other

    # ------------------------------------------------------------------------------------------------ sink API

    def warn(self, message: str) -> None:
        if self._muted:
            return
        if isinstance(message, ConnectionWarning):
            other = self._other.get(message.conn)
            if other is None:  # e.g. TcpTable's out-of-order overflow before the connection's first bytes
                other = not self._mine(message.client.rsplit(":", 1)[0], message.server.rsplit(":", 1)[0])
            if other:
                return
        super().warn(message)

    def tcp_data(self, conn: TcpConnection, from_client: bool, data: bytes, frame: int, time: float) -> None:
        with self._muted_if_other(conn):
            super().tcp_data(conn, from_client, data, frame, time)

    def tcp_gap(self, conn: TcpConnection, from_client: bool, missing: int, frame: int, time: float) -> None:
        with self._muted_if_other(conn):
            super().tcp_gap(conn, from_client, missing, frame, time)

    def tcp_close(self, conn: TcpConnection) -> None:
        with self._muted_if_other(conn):
            super().tcp_close(conn)

    @contextmanager
    def _muted_if_other(self, conn: TcpConnection) -> Iterator[None]:
        """Another share's connection is still analysed (module doc), its warnings are not this worker's."""
        if not self._is_other(conn):
            yield
            return
        self._muted = True
        try:
            yield
        finally:
            self._muted = False

    def udp(self, frame: int, time: float, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        if self._mine(src, dst):
            super().udp(frame, time, src, sport, dst, dport, payload)

    def icmp_error(self, frame: int, time: float, src: str, dst: str, icmp_type: int, icmp_code: int,
                   quoted_src: str, quoted_dst: str, quoted_sport: int, quoted_dport: int) -> None:
        if self._mine(quoted_src, quoted_dst):
            super().icmp_error(frame, time, src, dst, icmp_type, icmp_code, quoted_src, quoted_dst, quoted_sport,
                               quoted_dport)

    def finish(self) -> list:
        events = super().finish()
        other = self._other
        return [e for e in events if e.conn is None or not other.get(e.conn, False)]

    # ------------------------------------------------------------------------------------------------ PDUs

    def _pdu(self, conn: TcpConnection, st, from_client: bool, hdr, pdu: bytes, frame: int, time: float) -> None:
        if hdr.ptype in _CALL_PTYPES and self._other.get(conn.index) and len(pdu) >= _CTX_AT + 2:
            if self._skip_call(conn, from_client, hdr, pdu):
                return
        super()._pdu(conn, st, from_client, hdr, pdu, frame, time)

    def _skip_call(self, conn: TcpConnection, from_client: bool, hdr, pdu: bytes) -> bool:
        """Whether a call PDU of another share's connection can teach nothing capture-wide (module doc): its
        interface is known now (as the session analyser would label it) and is not the endpoint mapper."""
        session = self.session
        st = session.existing_connection(conn.index)
        if st is None:
            return False
        ctx_id = int.from_bytes(pdu[_CTX_AT:_CTX_AT + 2], "little" if hdr.little_endian else "big")
        if from_client:
            server_ip, server_port = conn.server_ip, conn.server_port
        else:
            server_ip, server_port = conn.client_ip, conn.client_port
        req = None
        if hdr.ptype == PTYPE_REQUEST:
            iface = session.context_interface(st, ctx_id, server_ip, server_port)[0]
        else:  # a response's server is its sender
            req = st.requests.get(hdr.call_id)
            if req is not None:
                iface = req.iface
            else:
                iface = session.context_interface(st, ctx_id, *((conn.client_ip, conn.client_port) if from_client else
                                                          (conn.server_ip, conn.server_port)))[0]
        if iface is not None and iface.name != EPM:
            self._skipped.add(conn.index)
            return True
        if conn.index in self._skipped:
            # This connection's call tables now lack the skipped calls. They only matter for a call that can
            # teach (an EPM one, through its request), or when a table is full and one core would forget a
            # different call than this worker.
            if (iface is not None or (req is not None and req.iface is not None)
                    or len(st.requests) >= MAX_OUTSTANDING_CALLS - 1 or len(st.calls) >= MAX_OUTSTANDING_CALLS - 1):
                self.unsplittable = (f"TCP connection {conn.index} mixes endpoint-mapper calls with other calls "
                                     "or has more than a thousand outstanding calls")
        return False
