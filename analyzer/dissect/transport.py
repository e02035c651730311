# SPDX-License-Identifier: GPL-2.0-or-later
"""Transport layer of the native engine: FrameBatch stream -> PacketSink calls (TCP bytes, UDP, ICMP errors).

Two paths over each batch:

* a pre-filter over the batch's columns for the common frame, Ethernet (+ one 802.1Q tag) or Linux cooked
  capture v1 / IPv4 without options or fragmentation / TCP or UDP. It computes ports, TCP flags, payload offset
  and length and a direction-independent flow hash, and keeps only the frames that can matter: segments of flows
  the sink follows (with payload or SYN/FIN/RST), SYN/FIN/RST of any flow (connection numbering and ISNs), the
  first frame of every new flow, the first segment with payload of every flow, segments whose payload starts like
  a connection-oriented DCE/RPC header or that use a DCE/RPC port the sink knows, and UDP datagrams between ports
  >= 1024 that are not connectionless DCE/RPC. Ethernet frames that are not IP, and IPv4 protocols other than
  TCP/UDP/ICMP/IP-in-IP, are dropped there too. It is compiled (analyzer/dissect/_prefilter.c: one C loop over
  the frames, the flow sets in hash tables, the GIL released); :mod:`analyzer.dissect.prefilter_numpy` computes
  the same answers with numpy over the whole batch and is the fallback when the extension is not built and the
  reference the tests compare it with, batch by batch (tests/test_transport.py). That module is imported only
  when it is used: with the compiled walk and pre-filter a pcap is analysed without numpy, whose import alone
  costs ~0.1 s (issue 14); the compiled path works on ``array.array`` columns and outputs.
* a per-frame Python path (:mod:`link`, :mod:`net`, :mod:`tcp`) for the selected frames and for everything the
  pre-filter does not classify (QinQ, IPv6, SLL2, NULL/LOOP, raw IP, IP options, fragments, ICMP, truncated
  frames). It is complete on its own; the pre-filter only decides what it may skip.

Bulk flows therefore cost a few tens of nanoseconds of C per frame and no Python at all.

Measured 2026-12-01 on ``benchmarks/data/big.pcap`` from ``benchmarks/make_big_capture.py`` (1,000,000 frames,
920 MB, server side, 1,000 Outlook clients among bulk TCP and DNS; 32,097 frames kept), 2-core VM shared with
other sessions (load average 1.7-2.8; CPU seconds):

* the compiled pre-filter: 0.045-0.06 s for its C loop, 0.07-0.09 s with the Python around it (port table, output
  arrays, the dict of parsed fields for the kept segments); the ``pre-filter`` stage of ``analyze --profile``
  0.07 s, against 0.25-0.30 s for the numpy pre-filter. The loop is bound by the misses on the frame headers
  spread over the capture: a prefetch of the frame 8 rows ahead took it from ~0.10 to ~0.045 s, after reading the
  header words with one load + byte swap instead of a byte loop had taken ~0.03 s off. Batch sizes from 4,096 to
  65,536 frames made no measurable difference once the prefetch was in (the default stays 65,536);
* + the per-frame path for the kept frames, TCP reassembly included: ~0.25 s.

With every frame through the per-frame path (use_prefilter=False, null sink) reader + transport took 14.1 s CPU
(2026-11-25).
"""

from __future__ import annotations

import heapq
import socket
from array import array

from analyzer.dissect.link import SUPPORTED_LINKTYPES, ip_start
from analyzer.dissect.net import (
    ICMP_DEST_UNREACHABLE,
    ICMPV6_DEST_UNREACHABLE,
    IP_LATER_FRAGMENT,
    IP_OK,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    parse_ip,
    quoted_udp,
)
from analyzer.dissect.stream import PacketSink
from analyzer.dissect.tcp import TcpTable
from analyzer.ingest.model import FrameBatch

try:  # the pre-filter compiled (setup.py builds it); without it the numpy pre-filter, same results
    from analyzer.dissect import _prefilter as _compiled
except ImportError:  # pragma: no cover - exercised only where the build failed (a warning says so)
    _compiled = None

# A connectionless (UDP) DCE/RPC PDU: version byte 4, PTYPE 0..10, and at least its 80-byte header. Such datagrams
# are RPC, never a push notification. (Version byte alone would drop one notification in 256: the context blob the
# client registers is opaque and may start with 4; the cost showed in the benchmark, 30 of 5000 datagrams.)
DCERPC_CL_VERSION = 4
DCERPC_CL_MAX_PTYPE = 10
DCERPC_CL_HEADER_LEN = 80
MIN_NOTIFY_PORT = 1024
PROTO_IPIP, PROTO_IPV6_IN_IP = 4, 41
IP_IN_IP = (PROTO_IPIP, PROTO_IPV6_IN_IP)
MAX_IP_IN_IP = 2  # tunnel levels unwrapped
_MASK64 = (1 << 64) - 1
_MAX_CACHED_ADDRESSES = 65536
# Flow hashes remembered by the pre-filter (8 bytes each): 32 MB at most per set
_MAX_REMEMBERED_FLOWS = 4_000_000
# The pre-filter reads bytes 12..49 of a frame (Ethernet type, IPv4 header, TCP/UDP header)
_HEADER_SPAN = 50
# Header fields the compiled pre-filter parses per kept TCP segment (row, payload start and length, source, source
# port, destination, destination port, seq, flags, ack): its scratch space holds 10 int64 per frame
_FAST_FIELDS = 10
# Maximum distinct malformed-frame reasons quoted in the warning
_MAX_REASONS = 3


def _column(values, typecode: str):
    """A batch column as the compiled pre-filter reads it: a C-contiguous buffer of ``typecode`` items. The
    compiled pcap walk's columns are such arrays already; numpy columns (pcapng, NetMon, the Python walk) are
    converted if they are not (their readers imported numpy already)."""
    if type(values) is array and values.typecode == typecode:
        return values
    import numpy as np

    return np.ascontiguousarray(values, dtype={"q": np.int64, "i": np.int32, "d": np.float64}[typecode])


def flow_hash(src_ip: str, sport: int, dst_ip: str, dport: int) -> int | None:
    """The pre-filter's flow hash for an IPv4 4-tuple (same value in either direction); None for IPv6 (IPv6
    frames always take the per-frame path)."""
    try:
        a = int.from_bytes(socket.inet_aton(src_ip), "big") << 16 | sport
        b = int.from_bytes(socket.inet_aton(dst_ip), "big") << 16 | dport
    except OSError:
        return None
    lo, hi = (a, b) if a < b else (b, a)
    return ((lo * 0x9E3779B97F4A7C15) & _MASK64) ^ hi


class Transport:
    """Feeds a :class:`PacketSink` from FrameBatches. Call :meth:`feed` per batch, then :meth:`finish` once."""

    def __init__(self, sink: PacketSink, use_prefilter: bool = True, compiled: bool | None = None):
        """``compiled``: pre-filter with the C extension (None: when it is built; False: the numpy reference)."""
        self.sink = sink
        self.use_prefilter = use_prefilter
        if compiled is None:
            compiled = _compiled is not None
        elif compiled and _compiled is None:
            raise RuntimeError("the compiled pre-filter (analyzer.dissect._prefilter) is not built")
        self.compiled = compiled
        # The flow sets kept between batches (flows met, flows whose first payload was offered, flows the sink
        # follows), and the lookup of the later rows of flows that turn interesting inside a batch. numpy is
        # imported only for its pre-filter: a pcap read by the compiled walk never loads it (issue 14).
        if compiled:
            self._flows = _compiled.FlowState(_MAX_REMEMBERED_FLOWS)
            self._flow_rows = _compiled.FlowRows
        else:
            from analyzer.dissect import prefilter_numpy

            self._flows = prefilter_numpy.FlowSets(_MAX_REMEMBERED_FLOWS)
            self._flow_rows = prefilter_numpy.FlowRows
        # the compiled pre-filter's output buffers, reused from batch to batch (grown when a batch is longer)
        self._room = 0
        self._out: tuple[array, array, array, array, array] | None = None
        # the collector's set of ports known to carry DCE/RPC (135, 593, learned ones); it grows while we read
        self.known_ports = getattr(sink, "known_ports", None)
        self.tcp = TcpTable(sink, self.known_ports if self.known_ports is not None else set())
        self.unsupported: dict[int, int] = {}
        self.later_fragments = 0
        self.malformed = 0
        self.malformed_reasons: list[str] = []
        self.frames_seen = 0
        self.frames_parsed = 0  # frames that took the per-frame Python path
        self.last_frame = 0
        self.last_time = 0.0
        self._addresses: dict[int, str] = {}  # IPv4 address (int) -> text, for the pre-parsed segments

    # ------------------------------------------------------------------------------------------------ batches

    def feed(self, batch: FrameBatch) -> None:
        n = len(batch)
        if not n:
            return
        self.frames_seen += n
        self.last_frame = batch.first_number + n - 1
        self.last_time = float(batch.time[-1])
        if not self.use_prefilter:
            self._run(batch, range(n), None, None)
            return
        try:
            raw = memoryview(batch.buf)
            if raw.ndim != 1 or raw.itemsize != 1:
                raw = raw.cast("B")
        except (TypeError, ValueError):  # not a flat buffer of bytes: every frame takes the per-frame path
            self._run(batch, range(n), None, None)
            return
        selected, tcp_rows, tcp_hash, tcp_wanted, fast = self._prefilter(batch, raw)
        self._run(batch, selected, tcp_rows, (tcp_hash, tcp_wanted), fast)

    def _prefilter(self, batch: FrameBatch, raw: memoryview):
        """Which rows of the batch the per-frame path must see -> (selected rows, TCP rows, their flow hashes,
        their 'wanted' flags, {row: parsed TCP header fields}); see the module docstring for the rules.
        ``raw``: the batch's buffer, as bytes. The compiled pre-filter answers with ``array.array`` objects, the
        numpy one with numpy arrays."""
        if not self.compiled:
            from analyzer.dissect import prefilter_numpy

            return prefilter_numpy.prefilter(batch, raw, self._flows, self.known_ports)
        n = len(batch)
        if len(raw) < _HEADER_SPAN:  # a buffer shorter than one header: nothing to pre-filter
            return array("q", range(n)), None, None, None, {}
        ports = None
        if self.known_ports:  # a table indexed by port, rebuilt per batch (the set grows)
            ports = bytearray(65536)
            for port in self.known_ports:
                ports[port] = 1
        if n > self._room:
            # Allocated once, not per batch: the fields alone are 5 MB for 65,536 frames, and array.array fills
            # what it allocates (0.3 ms per batch for them; numpy's np.empty did not)
            self._room = n
            self._out = (array("q", (0,)) * n, array("q", (0,)) * n, array("Q", (0,)) * n, array("B", (0,)) * n,
                         array("q", (0,)) * (n * _FAST_FIELDS))
        selected, rows, hashes, wanted, fields = self._out
        # ``fast``, the dict of the kept segments' parsed header fields, is built by classify() itself: in Python
        # (tolist per field, zip, dict) it cost ~30 % more than numpy's tolist did (``fields`` is its scratch space)
        n_selected, n_tcp, fast = _compiled.classify(
            raw, _column(batch.offset, "q"), _column(batch.caplen, "q"), _column(batch.linktype, "i"),
            _column(batch.time, "d"), ports, self._flows, selected, rows, hashes, wanted, fields)
        # Views, not copies (numpy's slices were views too): valid until the next batch reuses the buffers, and
        # read within this batch only (_run, FlowRows copies what it keeps)
        selected, rows = memoryview(selected)[:n_selected], memoryview(rows)
        if not n_tcp:
            return selected, rows[:0], None, None, fast
        return selected, rows[:n_tcp], memoryview(hashes)[:n_tcp], memoryview(wanted)[:n_tcp], fast

    def _run(self, batch: FrameBatch, selected, tcp_rows, tcp_info, fast=None) -> None:
        """The per-frame path over the rows ``selected`` (in order), plus later rows of flows that turn
        interesting on the way. ``fast``: row -> TCP header fields the pre-filter parsed already (Ethernet/IPv4
        frames), which skips the link and IP parsing for them."""
        buf, offset, caplen, times, linktype = batch.buf, batch.offset, batch.caplen, batch.time, batch.linktype
        first = batch.first_number
        newly = self.tcp.newly_interesting
        order = selected.tolist() if hasattr(selected, "tolist") else list(selected)
        # Rows of flows that turned interesting inside this batch, merged in frame order with ``order``.
        extra: list[int] = []
        by_flow = None  # the later rows of a flow among the batch's TCP rows (FlowRows), built on first need
        pos, last, count = 0, -1, len(order)
        frame = self.frame
        segment = self.tcp.segment
        address = self._ipv4_text
        followed: list[int] = []  # hashes of flows followed from this batch on, merged once at the end (a merge
        # per flow cost 2 s for 4,000 flows on the benchmark)
        while True:
            if extra and (pos >= count or extra[0] < order[pos]):
                i = heapq.heappop(extra)
            elif pos < count:
                i = order[pos]
                pos += 1
            else:
                break
            if i <= last:  # selected by both routes
                continue
            last = i
            known = fast.get(i) if fast else None
            if known is None:
                start = int(offset[i])
                data = buf[start : start + int(caplen[i])]
                if not isinstance(data, bytes):
                    data = bytes(data)
                frame(first + i, float(times[i]), int(linktype[i]), data)
            else:
                payload_start, payload_len, time, src, sport, dst, dport, seq, flags, ack = known
                payload = buf[payload_start : payload_start + payload_len]
                if not isinstance(payload, bytes):
                    payload = bytes(payload)
                self.frames_parsed += 1
                try:
                    segment(first + i, time, address(src), sport, address(dst), dport, seq, flags, payload, ack)
                except Exception as exc:  # noqa: BLE001 - same rule as frame(): one odd frame is never fatal
                    self._malformed(first + i, f"{type(exc).__name__}: {exc}")
            if newly:
                hashes = [hh for hh in (flow_hash(f.a[0], f.a[1], f.b[0], f.b[1]) for f in newly) if hh is not None]
                newly.clear()
                if not hashes:
                    continue
                followed.extend(hashes)
                if tcp_rows is None or not len(tcp_rows):
                    continue
                if by_flow is None:
                    by_flow = self._flow_rows(tcp_rows, *tcp_info)
                for row in by_flow.later(hashes, i):  # rows after i with payload or control flags
                    heapq.heappush(extra, row)
        if followed:
            self._flows.follow(array("Q", followed))

    def _ipv4_text(self, value: int) -> str:
        text = self._addresses.get(value)
        if text is None:
            if len(self._addresses) >= _MAX_CACHED_ADDRESSES:
                self._addresses.clear()
            text = self._addresses[value] = socket.inet_ntoa(value.to_bytes(4, "big"))
        return text

    # ------------------------------------------------------------------------------------------------ one frame

    def frame(self, number: int, time: float, linktype: int, data: bytes) -> None:
        """The per-frame path: link -> IP -> TCP/UDP/ICMP for one frame. Never raises on bad bytes."""
        self.frames_parsed += 1
        try:
            self._frame(number, time, linktype, data)
        except Exception as exc:  # noqa: BLE001
            # A frame shorter than its headers claim, or bytes an application decoder chokes on: the frame is
            # skipped and named in the warning (type and message kept, so a decoder bug stays visible).
            self._malformed(number, f"{type(exc).__name__}: {exc}")

    def _malformed(self, number: int, reason: str) -> None:
        self.malformed += 1
        if len(self.malformed_reasons) < _MAX_REASONS:
            self.malformed_reasons.append(f"frame {number}: {reason}")

    def _frame(self, number: int, time: float, linktype: int, data: bytes) -> None:
        if linktype not in SUPPORTED_LINKTYPES:
            self.unsupported[linktype] = self.unsupported.get(linktype, 0) + 1
            return
        version, off = ip_start(linktype, data)
        if not version:
            return  # ARP, LLDP, ... nothing for us
        status, src, dst, proto, l4, end = parse_ip(data, off, version)
        for _ in range(MAX_IP_IN_IP):
            if status != IP_OK or proto not in IP_IN_IP:
                break
            # IP in IP (RFC 2003 / RFC 2473, 6in4): the tunnelled datagram is what the hosts exchanged
            version = 4 if proto == PROTO_IPIP else 6
            status, src, dst, proto, l4, end = parse_ip(data[:end], l4, version)
        if status != IP_OK:
            if status == IP_LATER_FRAGMENT:
                self.later_fragments += 1
            else:
                self._malformed(number, f"bad IPv{version} header")
            return
        if proto == PROTO_TCP:
            if end < l4 + 20:
                self._malformed(number, "TCP header cut short")
                return
            header_len = (data[l4 + 12] >> 4) * 4
            if header_len < 20 or l4 + header_len > end:
                self._malformed(number, "bad TCP header length")
                return
            sport = data[l4] << 8 | data[l4 + 1]
            dport = data[l4 + 2] << 8 | data[l4 + 3]
            seq = int.from_bytes(data[l4 + 4 : l4 + 8], "big")
            ack = int.from_bytes(data[l4 + 8 : l4 + 12], "big")
            self.tcp.segment(number, time, src, sport, dst, dport, seq, data[l4 + 13], data[l4 + header_len : end],
                             ack)
        elif proto == PROTO_UDP:
            if end < l4 + 8:
                self._malformed(number, "UDP header cut short")
                return
            sport = data[l4] << 8 | data[l4 + 1]
            dport = data[l4 + 2] << 8 | data[l4 + 3]
            if sport < MIN_NOTIFY_PORT or dport < MIN_NOTIFY_PORT:
                return
            udp_len = data[l4 + 4] << 8 | data[l4 + 5]
            # UDP length 0 is legal for IPv6 jumbograms; otherwise it bounds the payload (trailer bytes excluded).
            # An IPv4 datagram whose length field is below the header's 8 bytes has no payload Wireshark would
            # show (it flags the bad length): none here either, so that both engines report the same row.
            if udp_len < 8:
                stop = end if version == 6 else l4 + 8
            else:
                stop = min(end, l4 + udp_len)
            payload = data[l4 + 8 : stop]
            if len(payload) >= DCERPC_CL_HEADER_LEN and payload[0] == DCERPC_CL_VERSION and (
                    payload[1] <= DCERPC_CL_MAX_PTYPE):
                return  # connectionless DCE/RPC
            self.sink.udp(number, time, src, sport, dst, dport, payload)
        elif proto == PROTO_ICMP and version == 4 or proto == PROTO_ICMPV6 and version == 6:
            if end < l4 + 8:
                return
            icmp_type = data[l4]
            if icmp_type != (ICMP_DEST_UNREACHABLE if version == 4 else ICMPV6_DEST_UNREACHABLE):
                return
            quoted = quoted_udp(data[:end], l4 + 8, version)
            if quoted is not None:
                self.sink.icmp_error(number, time, src, dst, icmp_type, data[l4 + 1], *quoted)

    # ------------------------------------------------------------------------------------------------ the end

    def finish(self) -> None:
        self.tcp.finish(self.last_frame, self.last_time)
        warn = self.sink.warn
        for linktype, count in sorted(self.unsupported.items()):
            warn(f"{count} frames with unsupported link type {linktype} skipped")
        if self.later_fragments:
            warn(f"{self.later_fragments} IP fragments after the first ignored (fragments are not reassembled)")
        if self.malformed:
            warn(f"{self.malformed} malformed frames skipped ({'; '.join(self.malformed_reasons)})")
