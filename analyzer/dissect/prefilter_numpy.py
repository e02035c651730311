# SPDX-License-Identifier: GPL-2.0-or-later
"""The transport pre-filter with numpy: the reference for the compiled pre-filter (analyzer/dissect/_prefilter.c)
and the fallback when that extension is not built. The rules are described in :mod:`analyzer.dissect.transport`;
tests/test_transport.py compares both pre-filters batch by batch.

:class:`analyzer.dissect.transport.Transport` imports this module only when it does not use the compiled
pre-filter, so that a pcap read by the compiled walk and pre-filter never imports numpy (issue 14: ``import numpy``
alone costs 0.10-0.12 s of start-up, ~10 % of the budget for a million frames). Its three pieces take the place
of the compiled ones: :func:`prefilter` (``_prefilter.classify``), :class:`FlowSets` (``_prefilter.FlowState``)
and :class:`FlowRows` (``_prefilter.FlowRows``).
"""

from __future__ import annotations

import numpy as np

from analyzer.dissect.net import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from analyzer.dissect.transport import (
    DCERPC_CL_HEADER_LEN,
    DCERPC_CL_MAX_PTYPE,
    DCERPC_CL_VERSION,
    MIN_NOTIFY_PORT,
    PROTO_IPIP,
    PROTO_IPV6_IN_IP,
    _HEADER_SPAN,
)
from analyzer.ingest.model import FrameBatch

# Ethertypes the slow path must see (IPv4, IPv6 and VLAN tags that may hide them); other Ethernet frames are dropped
_IP_OR_VLAN = np.array([0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100], dtype=np.uint16)
# ... as a lookup table indexed by ethertype (one gather instead of np.isin: 0.1 vs 0.6 ms per 65k-frame batch)
_IP_OR_VLAN_TABLE = np.zeros(65536, dtype=bool)
_IP_OR_VLAN_TABLE[_IP_OR_VLAN] = True
# Multiplier of the flow hash (2**64 / golden ratio): spreads the lower endpoint before the XOR with the higher
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)
# Bytes 12..49 of a frame as overlapping big-endian words named by their first byte: w12 = Ethernet type + IPv4
# bytes 0-5, w20 = IPv4 bytes 6-13, w26 = addresses, w34 = ports + seq (UDP: ports, length, checksum),
# w42 = TCP ack, data offset, flags, window (UDP: first payload bytes).
_HEADER_DTYPE = np.dtype({"names": ["w12", "w20", "w26", "w34", "w42"], "formats": [">u8"] * 5,
                          "offsets": [0, 8, 14, 22, 30], "itemsize": _HEADER_SPAN - 12})


def _unique_flows(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(h, return_index=True, return_inverse=True)`` for a 1-D array: the distinct values (sorted),
    the index of each one's first occurrence, and each element's position among the distinct values.

    np.unique needs a stable sort for the first occurrences (2.4 ms per 60,000 hashes here); an unstable argsort
    (0.8 ms) and the smallest index per run of equal values give the same answer: 1.2 against 3.1 ms per batch.
    """
    perm = np.argsort(h)
    ordered = h[perm]
    starts_run = np.empty(len(ordered), dtype=bool)
    starts_run[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_run[1:])
    starts = np.flatnonzero(starts_run)
    inverse = np.empty(len(h), dtype=np.intp)
    inverse[perm] = np.cumsum(starts_run) - 1
    return ordered[starts], np.minimum.reduceat(perm, starts), inverse


def _in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """np.isin for a sorted, unique ``sorted_set`` by binary search (no re-sort of the set per batch)."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_set, values)
    np.minimum(pos, len(sorted_set) - 1, out=pos)
    return sorted_set[pos] == values


def _remember(seen: np.ndarray, fresh: np.ndarray, limit: int) -> np.ndarray:
    """``seen`` plus the sorted unique hashes ``fresh``, within ``limit`` (Transport's _MAX_REMEMBERED_FLOWS)."""
    if len(seen) + len(fresh) > limit:
        # Constant memory whatever the capture: forget the flows met so far. Their next frame is offered
        # again as a "first" one, which costs one dictionary lookup in the TCP table.
        return fresh
    return np.union1d(seen, fresh)


class FlowSets:
    """The pre-filter's flow sets, kept between batches, as sorted arrays of unique flow hashes (the compiled
    ``FlowState`` keeps them in hash sets, with the same forgetting rule)."""

    def __init__(self, max_remembered: int):
        self.max_remembered = max_remembered
        self.seen = np.empty(0, dtype=np.uint64)  # flows met so far (sorted)
        self.seen_data = np.empty(0, dtype=np.uint64)  # flows whose first payload was offered (sorted)
        self.followed = np.empty(0, dtype=np.uint64)  # flows the sink follows

    def follow(self, hashes) -> None:
        """Add flow hashes the sink follows (any sequence or buffer of uint64)."""
        self.followed = np.union1d(self.followed, np.asarray(hashes, dtype=np.uint64))

    def sizes(self) -> tuple[int, int, int]:
        return len(self.seen), len(self.seen_data), len(self.followed)


class FlowRows:
    """The later rows of flows that turn interesting inside a batch, looked up among the batch's TCP rows (frame
    rows, flow hashes, 'wanted' flags: the pre-filter's answer) by one stable argsort of the hashes, built once."""

    def __init__(self, tcp_rows, tcp_hash, tcp_wanted):
        self.rows, self.wanted = tcp_rows, tcp_wanted
        self.sort_index = np.argsort(tcp_hash, kind="stable")
        self.sorted_hash = tcp_hash[self.sort_index]

    def later(self, hashes, row: int) -> list[int]:
        """Rows after ``row`` of the flows ``hashes`` that carry payload or control flags, in frame order per
        flow."""
        out = []
        sort_index, sorted_hash, rows, wanted = self.sort_index, self.sorted_hash, self.rows, self.wanted
        for hh in hashes:
            key = np.uint64(hh)
            lo, hi = np.searchsorted(sorted_hash, key, "left"), np.searchsorted(sorted_hash, key, "right")
            for k in sort_index[lo:hi].tolist():  # in frame order (stable sort)
                r = int(rows[k])
                if r > row and wanted[k]:
                    out.append(r)
        return out


def prefilter(batch: FrameBatch, raw, state: FlowSets, known_ports) -> tuple:
    """:meth:`Transport._prefilter` with numpy over the whole batch (``raw``: the batch's buffer, any bytes-like
    object; ``state``: the flow sets, updated; ``known_ports``: the sink's DCE/RPC ports or None) -> (selected rows,
    TCP rows, their flow hashes, their 'wanted' flags, {row: parsed TCP header fields}), numpy arrays."""
    raw = np.frombuffer(raw, dtype=np.uint8)
    # The columns may be array.array (the compiled pcap walk): numpy views of them, no copy
    offset, caplen, linktype = np.asarray(batch.offset), np.asarray(batch.caplen), np.asarray(batch.linktype)
    if len(raw) < 8:
        return np.arange(len(offset)), None, None, None, {}
    # Views of the buffer starting at EVERY byte (stride 1; numpy handles the unaligned loads): ``records``
    # gathers bytes 12..49 of every frame (Ethernet type, IPv4 header, TCP/UDP header) in one fancy-index
    # pass, read as big-endian words by the overlapping fields of _HEADER_DTYPE. Measured per 65,536-frame
    # batch: 5 word gathers 25.8 ms, one 38-byte record gather 4-6 ms; 54 one-byte gathers took 0.67 s per
    # million frames. Bytes past a short frame's end belong to the next frame; the caplen tests mask them out.
    records = np.ndarray(shape=(len(raw) - _HEADER_SPAN + 1,), dtype=f"V{_HEADER_SPAN - 12}",
                         buffer=raw[12:], strides=(1,)) if len(raw) >= _HEADER_SPAN else None
    last_start = len(raw) - 3  # last position with three bytes after it (payload starts)
    if records is None:  # a buffer shorter than one header: nothing to pre-filter
        return np.arange(len(offset)), None, None, None, {}
    top = len(records) - 1
    head_bytes = records[np.minimum(offset, top)]
    # Two more link layers take the same layout a few bytes further on: Ethernet with one 802.1Q tag (4
    # bytes; SPAN ports of servers often tag) and Linux cooked capture v1 (16-byte header, the protocol in
    # its last two bytes: 2 bytes further). Their frames are re-gathered at the shifted position and from
    # here on ``offset``/``caplen`` are those of the shifted frame. QinQ, SLL2, raw IP take the per-frame path.
    outer_type = head_bytes.view(_HEADER_DTYPE)["w12"] >> np.uint64(48)
    vlan = (linktype == 1) & (outer_type == 0x8100) & (caplen >= 18)
    cooked = (linktype == 113) & (caplen >= 16)
    framed = ((linktype == 1) & (caplen >= 14)) | cooked
    if vlan.any() or cooked.any():
        shift = np.where(vlan, 4, np.where(cooked, 2, 0))
        offset, caplen = offset + shift, caplen - shift
        moved = np.flatnonzero(shift)
        head_bytes[moved] = records[np.minimum(offset[moved], top)]
    # A short frame within the buffer's last 50 bytes (end of the file or of a gzip window) was read at the
    # clamped position, i.e. from another frame's bytes: the per-frame path classifies it (a 48-byte UDP
    # datagram there was dropped before).
    framed &= offset <= top
    head = head_bytes.view(_HEADER_DTYPE)
    w12 = head["w12"].astype(np.uint64)  # ethertype, IPv4 version/IHL, TOS, total length, id
    w20 = head["w20"].astype(np.uint64)  # flags/fragment offset, TTL, protocol, checksum, 2 bytes of source
    eth = framed
    ethertype = (w12 >> np.uint64(48)).astype(np.uint16)
    ipv4 = eth & (ethertype == 0x0800) & (caplen >= 34) & ((w12 >> np.uint64(40)) & np.uint64(0xFF) == 0x45)
    # MF flag or a fragment offset: fragments go to the per-frame path
    ipv4 &= (w20 >> np.uint64(48)) & np.uint64(0x3FFF) == 0
    proto = ((w20 >> np.uint64(32)) & np.uint64(0xFF)).astype(np.uint8)
    ip_total = ((w12 >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int64)  # bytes 16-17
    tcp = ipv4 & (proto == PROTO_TCP) & (caplen >= 54)
    udp = ipv4 & (proto == PROTO_UDP) & (caplen >= 42)
    drop = (eth & ~_IP_OR_VLAN_TABLE[ethertype]) | (
        ipv4 & (proto != PROTO_TCP) & (proto != PROTO_UDP) & (proto != PROTO_ICMP) & (proto != PROTO_IPIP)
        & (proto != PROTO_IPV6_IN_IP))
    # Fields used by both TCP and UDP rows, converted for the whole batch and then taken per row: 0.5 ms per
    # batch against 3.3 ms for taking the 38-byte records of the rows first (``head[rows]["w34"]``).
    w34_all = head["w34"].astype(np.uint64)
    w42_all = head["w42"].astype(np.uint64)
    slow = ~(tcp | udp | drop)
    parts = [np.flatnonzero(slow)]
    fast = {}

    # --- TCP
    rows = np.flatnonzero(tcp)
    h = wanted = None
    if len(rows):
        base = offset[rows]
        ip_end = np.minimum(ip_total[rows] + 14, caplen[rows])
        w26 = head["w26"].astype(np.uint64)[rows]  # source, destination
        w34 = w34_all[rows]  # ports, sequence number
        w42 = w42_all[rows]  # ack, data offset, flags, window
        src = w26 >> np.uint64(32)
        dst = w26 & np.uint64(0xFFFFFFFF)
        sport = w34 >> np.uint64(48)
        dport = (w34 >> np.uint64(32)) & np.uint64(0xFFFF)
        data_offset = ((w42 >> np.uint64(28)) & np.uint64(0xF)).astype(np.int64) * 4  # byte 46, high nibble
        flags = ((w42 >> np.uint64(16)) & np.uint64(0xFF)).astype(np.uint8)  # byte 47
        pstart = data_offset + 34
        plen = ip_end - pstart
        ea = src << np.uint64(16) | sport
        eb = dst << np.uint64(16) | dport
        h = (np.minimum(ea, eb) * _HASH_MULT) ^ np.maximum(ea, eb)
        has_data = plen > 0
        control = (flags & 0x07) != 0  # FIN, SYN, RST
        # The payload's first three bytes (version 5, minor 0/1, PTYPE <= 20), three one-byte gathers: 0.7 ms
        # per batch against 3.5 ms for one unaligned big-endian 8-byte gather when the bytes are in cache; in
        # the engine both take ~5 ms per 65k-frame batch, the cost of the cache misses on these bytes. Frames
        # with fewer than three payload bytes are masked by ``plen >= 3``; the clamp only keeps their index
        # inside the buffer.
        at = base + pstart
        np.minimum(at, last_start, out=at)
        looks_dcerpc = (plen >= 3) & (raw[at] == 5) & (raw[at + 1] <= 1) & (raw[at + 2] <= 20)
        interesting = looks_dcerpc
        if known_ports:
            # a table indexed by port, rebuilt per batch (the set grows): 0.4 ms against 1.5 ms for np.isin
            port_table = np.zeros(65536, dtype=bool)
            port_table[np.fromiter(known_ports, dtype=np.int64, count=len(known_ports))] = True
            interesting = interesting | port_table[sport] | port_table[dport]
        # Membership tests run on the batch's distinct flows (a few hundred) and are mapped back to frames:
        # one sort of the batch instead of a binary search per frame and per set (~10 ms saved per batch).
        flows, first_row, flow_of_row = _unique_flows(h)
        if len(state.followed):
            interesting = interesting | _in_sorted(flows, state.followed)[flow_of_row]
        take = control | (has_data & interesting)
        # The first frame of every flow numbers it (connection index in order of appearance); the first
        # segment with payload lets the sink look for a PDU header anywhere inside it (a flow joined mid-PDU).
        # Later segments are offered only when they start like a header: the one thing the per-frame path
        # alone would do differently is find a header in the middle of a later segment of a flow that is
        # not followed yet.
        unseen = ~_in_sorted(flows, state.seen)
        if unseen.any():
            take[first_row[unseen]] = True
            state.seen = _remember(state.seen, flows[unseen], state.max_remembered)
        first_payload = has_data & ~_in_sorted(flows, state.seen_data)[flow_of_row]
        if first_payload.any():
            fresh, first = np.unique(h[first_payload], return_index=True)
            take[np.flatnonzero(first_payload)[first]] = True
            state.seen_data = _remember(state.seen_data, fresh, state.max_remembered)
        wanted = control | has_data  # for flows that turn interesting inside this batch
        # Hand the selected well-formed segments' header fields to the per-frame path, parsed already.
        k = np.flatnonzero(take & (data_offset >= 20) & (plen >= 0))
        if len(k):
            seq = w34[k] & np.uint64(0xFFFFFFFF)
            ack = w42[k] >> np.uint64(32)
            chosen = rows[k]
            fast = dict(zip(chosen.tolist(), zip(
                (base[k] + pstart[k]).tolist(), plen[k].tolist(), np.asarray(batch.time)[chosen].tolist(),
                src[k].tolist(), sport[k].tolist(), dst[k].tolist(), dport[k].tolist(), seq.tolist(),
                flags[k].tolist(), ack.tolist())))
        parts.append(rows[take])

    # --- UDP
    urows = np.flatnonzero(udp)
    if len(urows):
        w34 = w34_all[urows]  # ports, length, checksum
        w42 = w42_all[urows]  # payload
        sport = w34 >> np.uint64(48)
        dport = (w34 >> np.uint64(32)) & np.uint64(0xFFFF)
        clean = (sport >= MIN_NOTIFY_PORT) & (dport >= MIN_NOTIFY_PORT)
        udp_payload = np.minimum(ip_total[urows] + 14, caplen[urows]) - 42
        cl_rpc = ((udp_payload >= DCERPC_CL_HEADER_LEN) & (w42 >> np.uint64(56) == DCERPC_CL_VERSION)
                  & ((w42 >> np.uint64(48)) & np.uint64(0xFF) <= DCERPC_CL_MAX_PTYPE))
        parts.append(urows[clean & ~cl_rpc])
    selected = np.sort(np.concatenate(parts))
    return selected, rows, h, wanted, fast
