# SPDX-License-Identifier: GPL-2.0-or-later
"""Pair two captures of one incident: match packets, tell which capture is the client side, estimate the clocks,
and follow every notification datagram from the server capture to the client capture.

Matching keys (all must agree):

* TCP: payload hash, payload length and sequence number, and each connection (4-tuple) of one capture maps to a
  single connection of the other. The addresses and ports need not be equal, so a NAT between the capture points
  does not stop the match; the differences are then reported as rewrites.
  NATs keep TCP sequence numbers unless they randomise them, which would defeat this (then nothing matches and
  the merge is refused with a clear message rather than guessed).
* UDP: payload hash and length, plus timing: Outlook's notification repeats the same context bytes every time, so
  each server datagram is matched to the client datagram nearest to where the clock estimate says it must
  arrive. Where no NAT intervenes (same addresses on both sides) and both are IPv4, the IP ID must agree too.
"""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict

from analyzer.correlate.model import CorrelationResult
from analyzer.ingest import CaptureError
from analyzer.merge.clock import estimate_clock
from analyzer.merge.model import (
    DELIVERED,
    LOST_IN_TRANSIT,
    MERGED,
    NO_SHARED_PACKETS,
    NO_TIME_OVERLAP,
    NOT_COVERED,
    NOT_READ,
    ONLY_AT_CLIENT,
    SAME_CAPTURE,
    ClockEstimate,
    DatagramFate,
    MergeResult,
    Rewrite,
)
from analyzer.merge.packets import Packet, PacketTable, endpoint, read_packets

# Fewer packets in common than this is no evidence that two captures saw the same traffic.
MIN_SHARED_PACKETS = 2
# A datagram may arrive at most this long after it left (beyond, it is another datagram with the same bytes).
MAX_TRANSIT_S = 5.0
# A datagram that left while the client capture ran counts as lost only if the client capture went on at least
# this long after the datagram should have arrived.
ARRIVAL_SLACK_S = 1.0
# |half gap between the envelopes| below this cannot tell which capture sits nearer the client (same LAN, mirror
# port): then the vantage points, and finally the order given, decide.
SIDE_UNDECIDED_S = 20e-6


def _key(p: Packet):
    return (p.proto, p.digest, p.length, p.seq)


def _pair_tcp(a: PacketTable, b: PacketTable) -> list[tuple[Packet, Packet]]:
    """TCP segments of A and B with the same key; copies (retransmissions) paired in time order."""
    by_key: dict = defaultdict(list)
    for p in b.packets:
        if p.proto == "tcp":
            by_key[_key(p)].append(p)
    mine: dict = defaultdict(list)
    for p in a.packets:
        if p.proto == "tcp" and _key(p) in by_key:
            mine[_key(p)].append(p)
    pairs = [pair for k, ps in mine.items() for pair in zip(ps, by_key[k])]
    # The 4-tuples must map consistently (a NAT may rewrite them, always the same way): each connection of A is paired
    # with the B connection most of its segments matched, and segments that say otherwise are dropped.
    votes = Counter((_flow(pa), _flow(pb)) for pa, pb in pairs)
    best: dict = {}
    for (fa, fb), _n in votes.most_common():
        best.setdefault(fa, fb)
    return sorted(((pa, pb) for pa, pb in pairs if best[_flow(pa)] == _flow(pb)), key=lambda ab: ab[0].frame)


def _flow(p: Packet) -> tuple:
    return (p.src, p.sport, p.dst, p.dport)


def _hosts(corr: CorrelationResult | None) -> set[str] | None:
    """The addresses worth reading packets of in one capture: its Outlook clients, their servers and registered
    callback addresses. None (read everything) when its correlation found no client: a capture that starts
    mid-session may not know its client, and the merge must still see its packets."""
    if corr is None or not corr.clients:
        return None
    hosts = set()
    for a in corr.clients:
        hosts.add(a.client)
        hosts.update(a.servers or [a.server])
        hosts.update(r.callback_ip for r in a.registrations if r.callback_ip)
    return hosts


def _roles(*corrs: CorrelationResult | None) -> tuple[set[str], set[str]]:
    clients, servers = set(), set()
    for c in corrs:
        if c is None:
            continue
        for a in c.clients:
            clients.add(a.client)
            servers.update(a.servers or [a.server])
    return clients, servers


def _sent_by_client(pa: Packet, pb: Packet, clients: set[str], servers: set[str]) -> bool:
    if pa.src in clients or pb.src in clients:
        return True
    if pa.src in servers or pb.src in servers:
        return False
    return pa.sport > pa.dport  # the well-known (lower) port is the server's


def _fit(pairs, from_client: list[bool], client_is_a: bool) -> ClockEstimate:
    xs_s, ys_s, xs_c, ys_c = [], [], [], []
    for (pa, pb), fc in zip(pairs, from_client):
        pc, ps = (pa, pb) if client_is_a else (pb, pa)
        (xs_c if fc else xs_s).append(ps.time)
        (ys_c if fc else ys_s).append(pc.time - ps.time)
    return estimate_clock(xs_s, ys_s, xs_c, ys_c)


def _span_text(t0, t1) -> str:
    from datetime import datetime, timezone

    def fmt(t):
        try:
            return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (ValueError, OverflowError, OSError, TypeError):
            return "?"
    return f"{fmt(t0)} .. {fmt(t1)}"


def merge_captures(path_a: str, corr_a: CorrelationResult | None, path_b: str,
                   corr_b: CorrelationResult | None) -> MergeResult:
    """Merge two captures. Which is the client side is inferred (from the one-way delays, else the vantage
    points); with no evidence either way ``path_a`` is taken as the client side. Never raises for bad input: an
    unreadable capture gives status ``not_read``."""
    try:
        same = os.path.samefile(path_a, path_b)
    except (OSError, ValueError):
        same = False
    if same:
        return MergeResult(client_file=str(path_a), server_file=str(path_b), status=SAME_CAPTURE,
                           message=f"not merged: {path_a} and {path_b} are the same file")
    try:
        ta, tb = read_packets(path_a, _hosts(corr_a)), read_packets(path_b, _hosts(corr_b))
    except (CaptureError, OSError) as exc:
        return MergeResult(client_file=str(path_a), server_file=str(path_b), status=NOT_READ,
                           message=f"not merged: a capture could not be read ({exc})")
    pairs = _pair_tcp(ta, tb)
    if len(pairs) < MIN_SHARED_PACKETS:
        # UDP alone (without a shared TCP session) is no basis for a clock; but say what we see
        overlap = ta.start is not None and tb.start is not None and ta.start <= tb.end and tb.start <= ta.end
        status = NO_SHARED_PACKETS if overlap else NO_TIME_OVERLAP
        why = (f"{path_a} and {path_b} share no TCP segment" + (f" ({len(pairs)} in common)" if pairs else "")
               + ", so they are not two views of the same MAPI session")
        if not overlap:
            why += (f"; their time spans do not overlap either ({_span_text(ta.start, ta.end)} vs "
                    f"{_span_text(tb.start, tb.end)})")
        return MergeResult(client_file=str(path_a), server_file=str(path_b), status=status,
                           message=f"not merged: {why}. Capture both sides at the same time, of the same Outlook "
                           "session.", client_span=(ta.start, ta.end) if ta.start is not None else None,
                           server_span=(tb.start, tb.end) if tb.start is not None else None)

    tcp_a = sum(1 for p in ta.packets if p.proto == "tcp")
    tcp_b = sum(1 for p in tb.packets if p.proto == "tcp")
    if len(pairs) == tcp_a == tcp_b and all(pa.time == pb.time for pa, pb in pairs):
        return MergeResult(client_file=str(path_a), server_file=str(path_b), status=SAME_CAPTURE,
                           message=f"not merged: {path_a} and {path_b} hold the same packets at the same times "
                           "(copies of one capture, not one from each side)")
    clients, servers = _roles(corr_a, corr_b)
    from_client = [_sent_by_client(pa, pb, clients, servers) for pa, pb in pairs]
    clock_a = _fit(pairs, from_client, client_is_a=True)
    # Taking A as the client side, the minimum one-way delay comes out positive when A is the client side and
    # negative when it is the server side (the envelopes cross); None with packets in one direction only.
    gap = clock_a.min_delay_server_to_client_s
    if gap is not None and gap < -SIDE_UNDECIDED_S:
        client_is_a = False
        sides = "its client-sent packets appear earlier than in the other capture and its server-sent ones later"
    elif gap is not None and gap > SIDE_UNDECIDED_S:
        client_is_a = True
        sides = "its client-sent packets appear earlier than in the other capture and its server-sent ones later"
    else:
        va = corr_a.vantage if corr_a else "unknown"
        vb = corr_b.vantage if corr_b else "unknown"
        client_is_a = not (va == "server" or vb == "client")
        sides = ("the one-way delays do not tell the sides apart (both captures near the same point?); "
                 + (f"vantage points {va}/{vb}" if (va, vb) != ("unknown", "unknown") else "taken in the order given"))
    clock = clock_a if client_is_a else _fit(pairs, from_client, client_is_a=False)
    tc, ts = (ta, tb) if client_is_a else (tb, ta)
    corr_c, corr_s = (corr_a, corr_b) if client_is_a else (corr_b, corr_a)
    tcp_pairs = [(pa, pb) if client_is_a else (pb, pa) for pa, pb in pairs]  # (client side, server side)

    result = MergeResult(client_file=tc.path, server_file=ts.path, status=MERGED, message="",
                         sides_reason=f"{tc.path} is the client side: {sides}", clock=clock,
                         client_span=(tc.start, tc.end), server_span=(ts.start, ts.end))
    result.warnings = [f"{tc.path}: {w}" for w in tc.warnings] + [f"{ts.path}: {w}" for w in ts.warnings]
    lo, hi = max(ts.start, clock.to_server(tc.start)), min(ts.end, clock.to_server(tc.end))
    result.overlap = (lo, hi) if lo <= hi else None
    result.matched_tcp = len(tcp_pairs)

    udp_pairs = _pair_udp(tc, ts, clock)
    result.matched_udp = len(udp_pairs)
    result.rewrites = _rewrites(tcp_pairs + [(pc, ps) for ps, pc in udp_pairs.values()])
    _count_tcp_losses(result, tc, ts, tcp_pairs)
    seen_at_client = {ip for pc, _ in tcp_pairs for ip in (pc.src, pc.dst)}
    result.clients = _client_map(corr_s, corr_c, result.rewrites, seen_at_client)
    result.datagrams = _fates(result, tc, ts, corr_c, corr_s, udp_pairs)

    unc = clock.offset_uncertainty_s
    unc_text = "one-sided bound only" if unc is None else f"\u00b1 {unc * 1000:.1f} ms"
    counts = Counter(d.fate for d in result.datagrams)
    fate_text = ", ".join(f"{n} {f.replace('_', ' ')}" for f, n in sorted(counts.items())) or "no notification datagram"
    result.message = (f"merged: {result.matched_tcp} TCP segment(s) and {result.matched_udp} UDP datagram(s) seen in "
                      f"both; client clock {clock.offset_s:+.6f} s {unc_text} against the server's, drift "
                      f"{clock.drift_ppm:+.1f} ppm; datagrams: {fate_text}")
    return result


def _pair_udp(tc: PacketTable, ts: PacketTable, clock: ClockEstimate) -> dict[int, tuple[Packet, Packet]]:
    """server-side UDP frame -> (its server-side packet, its client-side packet), by payload and arrival time.

    Candidates are the client datagrams with the same payload that arrived between a little before the server
    sent it (the clock's uncertainty) and MAX_TRANSIT_S after; where no NAT rewrote the addresses, an IPv4
    candidate must also carry the same IP ID. The one nearest to "no delay" wins."""
    by_key: dict = defaultdict(list)
    for p in tc.packets:
        if p.proto == "udp":
            by_key[_key(p)].append(p)
    times = {k: [clock.to_server(p.time) for p in ps] for k, ps in by_key.items()}  # packets are in time order
    used: set[int] = set()
    slack = (clock.offset_uncertainty_s or 0.0) + 0.01
    out: dict[int, tuple[Packet, Packet]] = {}
    for ps in ts.packets:
        if ps.proto != "udp":
            continue
        key = _key(ps)
        cands_all = by_key.get(key)
        if not cands_all:
            continue
        t = times[key]
        lo, hi = bisect_left(t, ps.time - slack), bisect_right(t, ps.time + MAX_TRANSIT_S)
        cands = [(cands_all[i], t[i] - ps.time) for i in range(lo, hi) if cands_all[i].frame not in used]
        if not cands:
            continue
        # without NAT (same addresses) an IPv4 datagram keeps its IP ID: a different ID is another datagram
        cands = [(pc, d) for pc, d in cands if (pc.src, pc.dst) != (ps.src, ps.dst) or pc.ip_id is None
                 or ps.ip_id is None or pc.ip_id == ps.ip_id]
        if not cands:
            continue
        best, _delay = min(cands, key=lambda c: abs(c[1]))
        used.add(best.frame)
        out[ps.frame] = (ps, best)
    return out


def _rewrites(pairs) -> list[Rewrite]:
    seen: Counter = Counter()
    for pc, ps in pairs:
        for (s_ip, s_port), (c_ip, c_port) in (((ps.src, ps.sport), (pc.src, pc.sport)),
                                               ((ps.dst, ps.dport), (pc.dst, pc.dport))):
            if s_port == c_port and s_ip != c_ip:  # address only: one line per address, whatever the port
                seen[(ps.proto, s_ip, c_ip, "address")] += 1
            elif (s_ip, s_port) != (c_ip, c_port):
                seen[(ps.proto, endpoint(s_ip, s_port), endpoint(c_ip, c_port),
                      "address and port" if s_ip != c_ip else "port")] += 1
    return [Rewrite(proto, s, c, what, n) for (proto, s, c, what), n in sorted(seen.items())]


def _count_tcp_losses(result: MergeResult, tc: PacketTable, ts: PacketTable, tcp_pairs) -> None:
    """Payload segments of the shared TCP connections that only one capture holds (capture loss or network
    loss), counted within the time both captures ran."""
    if result.overlap is None or result.clock is None:
        return
    lo, hi = result.overlap
    flows_c = {(p.src, p.sport, p.dst, p.dport) for p, _ in tcp_pairs}
    flows_s = {(p.src, p.sport, p.dst, p.dport) for _, p in tcp_pairs}
    got_c = {id(p) for p, _ in tcp_pairs}
    got_s = {id(p) for _, p in tcp_pairs}
    clock = result.clock
    result.tcp_only_client = sum(1 for p in tc.packets if p.proto == "tcp" and id(p) not in got_c
                                 and (p.src, p.sport, p.dst, p.dport) in flows_c
                                 and lo <= clock.to_server(p.time) <= hi)
    result.tcp_only_server = sum(1 for p in ts.packets if p.proto == "tcp" and id(p) not in got_s
                                 and (p.src, p.sport, p.dst, p.dport) in flows_s and lo <= p.time <= hi)


def _client_map(corr_s, corr_c, rewrites: list[Rewrite], seen_at_client: set[str]) -> list[tuple[str, str]]:
    """(server-side IP, client-side IP) of each client of the server capture whose shared packets are in the
    client capture (the client capture may start mid-session, so its own correlation need not know the client)."""
    if corr_s is None:
        return []
    client_side = ({a.client for a in corr_c.clients} if corr_c else set()) | seen_at_client
    addr = {}
    for r in rewrites:
        s_ip, c_ip = _address(r.server_side), _address(r.client_side)
        if s_ip != c_ip:
            addr.setdefault(s_ip, c_ip)
    out = []
    for a in corr_s.clients:
        mapped = addr.get(a.client, a.client)
        if mapped in client_side:
            out.append((a.client, mapped))
    return out


def _address(text: str) -> str:
    """The IP of "ip", "ip:port" or "[ipv6]:port"."""
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _fates(result: MergeResult, tc: PacketTable, ts: PacketTable, corr_c, corr_s,
           udp_pairs: dict[int, tuple[Packet, Packet]]) -> list[DatagramFate]:
    clock = result.clock
    shared = dict(result.clients)
    fates: list[DatagramFate] = []
    client_notes = {}
    if corr_c is not None:
        for a in corr_c.clients:
            for n in a.notifications + a.unmatched_udp:
                client_notes[n.frame] = n
    server_udp = {p.frame: p for p in ts.packets if p.proto == "udp"}
    client_of = {frame: pc for frame, (_ps, pc) in udp_pairs.items()}
    claimed: set[int] = set()
    d_min = max(0.0, clock.min_delay_server_to_client_s or 0.0)
    unc = clock.offset_uncertainty_s
    for a in (corr_s.clients if corr_s is not None else []):
        if a.client not in shared:
            continue
        for n in sorted(a.notifications + a.unmatched_udp, key=lambda n: n.frame):
            ps = server_udp.get(n.frame)
            f = DatagramFate(fate=LOST_IN_TRANSIT, client=a.client, server_frame=n.frame, server_time=n.time,
                             server_src=endpoint(n.src, n.sport or 0), server_dst=endpoint(n.dst, n.dport or 0),
                             payload_hex=(n.payload_hex or "")[:64] or None)
            pc = client_of.get(n.frame)
            if pc is not None:
                claimed.add(pc.frame)
                f.fate = DELIVERED
                f.client_frame, f.client_time = pc.frame, pc.time
                f.client_src, f.client_dst = pc.src_text, pc.dst_text
                f.delay_s = clock.to_server(pc.time) - n.time
                f.delay_uncertainty_s = unc
                if ps is not None and (ps.src, ps.dst) == (pc.src, pc.dst):
                    f.ip_id_matched = (ps.ip_id == pc.ip_id) if ps.ip_id is not None else None
                changed = [w for w, x, y in (("source address", ps.src if ps else None, pc.src),
                                              ("source port", ps.sport if ps else None, pc.sport),
                                              ("destination address", ps.dst if ps else None, pc.dst),
                                              ("destination port", ps.dport if ps else None, pc.dport))
                           if ps is not None and x != y]
                f.rewritten = ", ".join(changed)
                cn = client_notes.get(pc.frame)
                if cn is not None and cn.reaction_frame is not None:
                    f.reaction_frame, f.reaction_time, f.reaction_side = cn.reaction_frame, cn.reaction_time, "client"
            else:
                arrival = clock.to_client(n.time + d_min)
                if not (tc.start <= arrival and arrival + ARRIVAL_SLACK_S <= tc.end):
                    f.fate = NOT_COVERED
            if f.reaction_frame is None and n.reaction_frame is not None:
                f.reaction_frame, f.reaction_time, f.reaction_side = n.reaction_frame, n.reaction_time, "server"
            fates.append(f)
    # datagrams the client saw that the server capture does not hold (capture loss there, or before it started)
    back = {c: s for s, c in shared.items()}
    if corr_c is not None:
        for a in corr_c.clients:
            if a.client not in back:
                continue
            for n in sorted(a.notifications, key=lambda n: n.frame):
                if n.frame in claimed:
                    continue
                fates.append(DatagramFate(
                    fate=ONLY_AT_CLIENT, client=back[a.client], client_frame=n.frame, client_time=n.time,
                    client_src=endpoint(n.src, n.sport or 0), client_dst=endpoint(n.dst, n.dport or 0),
                    payload_hex=(n.payload_hex or "")[:64] or None, reaction_frame=n.reaction_frame,
                    reaction_time=n.reaction_time, reaction_side="client" if n.reaction_frame else None))
    fates.sort(key=lambda f: f.server_time if f.server_time is not None else clock.to_server(f.client_time))
    return fates
