"""Contract between the transport layer of the dissector (link -> IP -> TCP reassembly / UDP / ICMP;
``analyzer.dissect.transport``) and the application analysers (DCE/RPC, EMSMDB, EPM, notification UDP;
``analyzer.dissect.collector``).

The transport calls a :class:`PacketSink` with in-order TCP bytes per direction, gaps, UDP datagrams and ICMP
errors. It never interprets application bytes except through :meth:`PacketSink.is_interesting_tcp`, the one
question that lets it skip bulk flows after a single dictionary lookup per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True, eq=False)
class TcpConnection:
    index: int  # connection number in order of first appearance (events column `conn`)
    client_ip: str  # side that sent the SYN; without a SYN in the capture, the sender of the first segment
    client_port: int  # seen (or the side with the higher port when that is clearer: an ephemeral port)
    server_ip: str
    server_port: int
    started_in_capture: bool  # the SYN (or SYN/ACK) was captured
    # free slot for the application analyser's per-connection state (the transport never touches it)
    app: object = None


class PacketSink(Protocol):
    """A sink may also offer ``known_ports`` (a live, read-only set of TCP ports known to carry DCE/RPC): the
    transport then takes flows on those ports without asking, and its numpy pre-filter keeps their segments."""

    def is_interesting_tcp(self, payload: bytes, sport: int, dport: int) -> bool:
        """Asked for TCP segments of flows not yet classified. True when the payload can carry DCE/RPC (it
        starts with, or contains, a plausible connection-oriented PDU header) or a port is known to carry
        DCE/RPC (135, ports learned from ept_map responses or bind_ack secondary addresses). Once True, the
        transport follows the flow (both directions) and calls tcp_data for it; flows never found interesting
        cost one lookup per frame."""

    def tcp_data(self, conn: TcpConnection, from_client: bool, data: bytes, frame: int, time: float) -> None:
        """New in-order bytes of one direction. ``frame``/``time`` are those of the frame that made these bytes
        contiguous (for reordered segments: the frame that filled the hole), which is where a PDU ending in
        them becomes complete, as Wireshark reports it."""

    def tcp_gap(self, conn: TcpConnection, from_client: bool, missing: int, frame: int, time: float) -> None:
        """``missing`` bytes of this direction were never captured (or the capture started mid-stream and the
        first bytes are not at a PDU boundary): the analyser drops partial state and resynchronises on the next
        valid PDU header, with a warning."""

    def tcp_close(self, conn: TcpConnection) -> None:
        """FIN/RST seen in both directions, or end of capture."""

    def udp(self, frame: int, time: float, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        """A UDP datagram that can be a push notification: both ports >= 1024 and not connectionless DCE/RPC
        (version 4, PTYPE <= 10, >= 80 bytes)."""

    def icmp_error(
        self,
        frame: int,
        time: float,
        src: str,
        dst: str,
        icmp_type: int,
        icmp_code: int,
        quoted_src: str,
        quoted_dst: str,
        quoted_sport: int,
        quoted_dport: int,
    ) -> None:
        """An ICMP destination-unreachable (v4 type 3, v6 type 1) that quotes a UDP datagram."""

    def warn(self, message: str) -> None:
        """A warning for CaptureInfo.warnings."""
