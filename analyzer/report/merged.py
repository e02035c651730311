# SPDX-License-Identifier: GPL-2.0-or-later
"""Text, JSON and HTML parts of a report about two merged captures (:class:`analyzer.verdict.transit.MergedIncident`).

Times are given the way each capture's Wireshark window shows them: server-capture frames as seconds since the
server capture's first frame, client-capture frames as seconds since the client capture's first frame; the
one-way delay is the client time mapped onto the server clock minus the server time.
"""

from __future__ import annotations

from typing import Iterable

from analyzer.merge.model import DELIVERED, LOST_IN_TRANSIT, NOT_COVERED, ONLY_AT_CLIENT

FATE_TEXT = {
    DELIVERED: "delivered",
    LOST_IN_TRANSIT: "LOST in transit",
    NOT_COVERED: "left; client capture not running",
    ONLY_AT_CLIENT: "seen at the client only",
}


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms"


def _rel(t: float | None, start: float | None) -> str:
    if t is None:
        return "-"
    return f"{t:.3f}" if start is None else f"+{t - start:.3f} s"


def clock_text(merge) -> str:
    c = merge.clock
    if c is None:
        return "-"
    unc = "one-sided bound only (matched packets in one direction)" if c.offset_uncertainty_s is None else \
        f"\u00b1 {_ms(c.offset_uncertainty_s)}"
    text = (f"client clock - server clock = {c.offset_s:+.6f} s {unc}, drift {c.drift_ppm:+.1f} "
            f"\u00b1 {c.drift_uncertainty_ppm:.1f} ppm (from {c.samples_server_to_client} server-sent and "
            f"{c.samples_client_to_server} client-sent packets over {c.span_s:.0f} s)")
    if c.min_delay_server_to_client_s is not None:
        text += f"; minimum one-way delay {_ms(c.min_delay_server_to_client_s)} (assumed equal both ways)"
    return text


def datagram_rows(merge) -> list[tuple[str, ...]]:
    server_start = merge.server_span[0] if merge.server_span else None
    client_start = merge.client_span[0] if merge.client_span else None
    rows = []
    for f in merge.datagrams:
        reaction = "-"
        if f.reaction_frame is not None:
            reaction = f"{f.reaction_side} frame {f.reaction_frame}"
        rows.append((
            "-" if f.server_frame is None else str(f.server_frame), _rel(f.server_time, server_start),
            "-" if f.client_frame is None else str(f.client_frame), _rel(f.client_time, client_start),
            _ms(f.delay_s), FATE_TEXT.get(f.fate, f.fate), reaction, f.rewritten or "-"))
    return rows


DATAGRAM_HEADER = ("SERVER FRAME", "LEFT", "CLIENT FRAME", "ARRIVED", "DELAY", "FATE", "REACTION", "REWRITTEN")


def render_merges_text(incidents: Iterable, client_detail) -> list[str]:
    """Lines of the text report's merge section. ``client_detail(verdict, start)`` renders one verdict block (the
    text report's own, so merged verdicts read like the others)."""
    out: list[str] = []
    for inc in incidents:
        m = inc.merge
        out.append(f"merged: {m.client_file} (client side) + {m.server_file} (server side)")
        out.append(f"  {m.message}")
        if not m.merged:
            out.append("")
            continue
        if m.sides_reason:
            out.append(f"  sides:    {m.sides_reason}")
        out.append(f"  clock:    {clock_text(m)}")
        if m.overlap:
            lo, hi = m.overlap
            out.append(f"  overlap:  {hi - lo:.1f} s (server clock {_rel(lo, m.server_span[0])} .. "
                       f"{_rel(hi, m.server_span[0])})")
        if m.rewrites:
            out.append("  NAT:      " + "; ".join(f"{r.server_side} (server side) = {r.client_side} (client side), "
                                                 f"{r.proto} {r.rewritten} rewritten, {r.packets} packet(s)"
                                                 for r in m.rewrites))
        else:
            out.append("  NAT:      none (addresses and ports equal on both sides)")
        if m.tcp_only_server or m.tcp_only_client:
            out.append(f"  losses:   TCP payload segments of the shared connections in one capture only: "
                       f"{m.tcp_only_server} in the server capture, {m.tcp_only_client} in the client capture")
        for w in m.warnings:
            out.append(f"  warning:  {w}")
        if m.datagrams:
            out.append("  datagrams (times since each capture's first frame):")
            rows = [DATAGRAM_HEADER, *datagram_rows(m)]
            widths = [max(len(r[i]) for r in rows) for i in range(len(DATAGRAM_HEADER))]
            fmt = "    " + "  ".join(f"{{:<{w}}}" for w in widths)
            out.append(fmt.format(*rows[0]).rstrip())
            out += [fmt.format(*r).rstrip() for r in rows[1:]]
        else:
            out.append("  datagrams: none from the server to a shared client in either capture")
        for v in inc.verdicts:
            out.append("")
            out += client_detail(v, m.server_span[0] if m.server_span else None)
        out.append("")
    return out


def merges_document(incidents: Iterable) -> list[dict]:
    return [inc.to_dict() for inc in incidents]


def proposals_text(results, proposals) -> list[str]:
    return [f"{results[i].file} and {results[j].file} share a MAPI session ({why}): add --merge to merge them"
            for i, j, why in proposals]
