# SPDX-License-Identifier: GPL-2.0-or-later
"""The merge stage's own light pass over a capture: one row per TCP segment with payload and per UDP datagram.

The events table has no TCP sequence numbers, IP IDs or per-segment rows (it is one row per reassembled PDU), and
matching two captures needs exactly those. Reading goes through :mod:`analyzer.ingest` (every format, gzip,
damage handled there) and the native engine's link and IP parsers; payloads are kept only as a 64-bit hash, so
memory is about 150 bytes per packet kept. ``hosts`` limits the rows to packets from or to those addresses (the
Outlook clients and Exchange servers the capture's correlation found), so bulk traffic costs no memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from analyzer.dissect.link import SUPPORTED_LINKTYPES, ip_start
from analyzer.dissect.net import IP_OK, PROTO_TCP, PROTO_UDP, parse_ip
from analyzer.ingest import open_capture

TCP_SYN = 0x02


@dataclass(slots=True)
class Packet:
    frame: int
    time: float  # epoch seconds, the capturing machine's clock
    proto: str  # "tcp" | "udp"
    src: str
    sport: int
    dst: str
    dport: int
    ip_id: int | None  # IPv4 identification; None for IPv6
    seq: int | None  # TCP sequence number of the first payload byte
    length: int  # payload bytes
    digest: bytes  # blake2b-64 of the payload

    @property
    def src_text(self) -> str:
        return endpoint(self.src, self.sport)

    @property
    def dst_text(self) -> str:
        return endpoint(self.dst, self.dport)


def endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass
class PacketTable:
    path: str
    packets: list[Packet] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    frames: int = 0
    warnings: list[str] = field(default_factory=list)


def read_packets(path: str, hosts: set[str] | frozenset[str] | None = None) -> PacketTable:
    """Every TCP segment carrying payload and every UDP datagram of the capture. Raises
    :class:`analyzer.ingest.CaptureError` when the file is no capture; damage gives the packets before it plus the
    reader's warning."""
    table = PacketTable(path=str(path))
    out = table.packets
    blake = hashlib.blake2b
    with open_capture(path) as cap:
        for batch in cap.batches():
            for frame in batch.frames():
                if frame.linktype not in SUPPORTED_LINKTYPES:
                    continue
                data = frame.data
                version, off = ip_start(frame.linktype, data)
                if not version:
                    continue
                status, src, dst, proto, l4, end = parse_ip(data, off, version)
                if status != IP_OK or hosts is not None and src not in hosts and dst not in hosts:
                    continue
                ip_id = (data[off + 4] << 8 | data[off + 5]) if version == 4 else None
                if proto == PROTO_TCP:
                    if end < l4 + 20:
                        continue
                    hlen = (data[l4 + 12] >> 4) * 4
                    if hlen < 20 or l4 + hlen > end:
                        continue
                    payload = data[l4 + hlen : end]
                    if not payload:
                        continue
                    seq = int.from_bytes(data[l4 + 4 : l4 + 8], "big")
                    if data[l4 + 13] & TCP_SYN:
                        seq = (seq + 1) & 0xFFFFFFFF
                elif proto == PROTO_UDP:
                    if end < l4 + 8:
                        continue
                    udp_len = data[l4 + 4] << 8 | data[l4 + 5]
                    payload = data[l4 + 8 : end if udp_len < 8 else min(end, l4 + udp_len)]
                    seq = None
                else:
                    continue
                out.append(Packet(frame.number, frame.time, "tcp" if proto == PROTO_TCP else "udp", src,
                                  data[l4] << 8 | data[l4 + 1], dst, data[l4 + 2] << 8 | data[l4 + 3], ip_id, seq,
                                  len(payload), blake(payload, digest_size=8).digest()))
        info = cap.info
    table.start, table.end, table.frames = info.start, info.end, info.frames
    table.warnings = list(info.warnings)
    return table
