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
        if not m.merged:
            out += [f"merge of {m.client_file} and {m.server_file}:", f"  {m.message}", ""]
            continue
        out.append(f"merged: {m.client_file} (client side) + {m.server_file} (server side)")
        out.append(f"  {m.message}")
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
            span = m.client_span if inc.side_of(v) == "client" else m.server_span
            out += client_detail(v, span[0] if span else None)
            out.append(f"    frames:   of {inc.file_of(v)}")
        out.append("")
    return out


def merges_document(incidents: Iterable) -> list[dict]:
    return [inc.to_dict() for inc in incidents]


def proposals_text(results, proposals) -> list[str]:
    return [f"{results[i].file} and {results[j].file} share a MAPI session ({why}): add --merge to merge them"
            for i, j, why in proposals]


_HTML = r"""
{% for inc in incidents %}{% set m = inc.merge %}{% set inc_index = loop.index0 %}
<section class="capture merged" id="merge{{ loop.index }}">
{% if m.status == 'merged' %}<h2>Merged: {{ m.client_file }} (client side) + {{ m.server_file }} (server side)</h2>
{% else %}<h2>Merge of {{ m.client_file }} and {{ m.server_file }}</h2>{% endif %}
<div class="{{ 'facts' if m.status == 'merged' else 'problems' }}">{{ m.message }}</div>
{% if m.status == 'merged' %}
<table>
<tr><th>sides</th><td>{{ m.sides_reason }}</td></tr>
<tr><th>clock</th><td>{{ clock(m) }}</td></tr>
<tr><th>NAT</th><td>{% if m.rewrites %}{% for r in m.rewrites %}<span class="mono">{{ r.server_side }}</span> (server side) =
 <span class="mono">{{ r.client_side }}</span> (client side): {{ r.proto }} {{ r.rewritten }} rewritten, {{ r.packets }}
 packet(s)<br>{% endfor %}{% else %}none: addresses and ports are equal on both sides{% endif %}</td></tr>
{% if m.tcp_only_server or m.tcp_only_client %}<tr><th>losses</th><td>TCP payload segments of the shared connections
 in one capture only: {{ m.tcp_only_server }} in the server capture, {{ m.tcp_only_client }} in the client
 capture</td></tr>{% endif %}
</table>
{% if m.warnings %}<div class="problems"><strong>Warnings</strong><ul>{% for w in m.warnings %}<li>{{ w }}</li>
{% endfor %}</ul></div>{% endif %}
{% if m.datagrams %}
<h3>Notification datagrams</h3>
<table class="evidence">
<tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows(m) %}<tr class="{{ 'verdict-udp_blocked' if 'LOST' in row[5] else '' }}">{% for cell in row %}
 <td class="mono">{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endif %}
{% for v in inc.verdicts %}
<div class="card verdict-{{ v.verdict }}">
<h3><span class="mono">{{ v.client }}</span> &rarr; <span class="mono">{{ v.server }}</span>
 &nbsp;<span class="badge">{{ v.verdict }}</span> <code>{{ v.cause }}</code> {{ '%.2f'|format(v.confidence) }}</h3>
<div class="reason">{{ v.reason }}</div>
{% set side_start = (m.client_span if inc.side_of(v) == 'client' else m.server_span)[0] %}
{% if v.evidence %}<table class="evidence"><tr><th>frame of {{ inc.file_of(v) }}</th><th>time</th><th>what</th></tr>
{% for e in v.evidence %}<tr><td class="num mono">{{ e.frame }}</td><td class="mono">{{ rel(e.time, side_start) }}</td>
 <td>{{ e.what }}</td></tr>{% endfor %}</table>{% endif %}
{% if v.filter %}<div class="hint">Wireshark display filter ({{ inc.file_of(v) }}):</div>
<code class="filter" tabindex="0">{{ v.filter }}</code>{% endif %}
<div class="remedy"><strong>Remedy:</strong> {{ v.remedy }}</div>
{% set p = plots.get((inc_index, v.client)) %}{% if p %}<div class="plots">
<img class="timeline" alt="merged timeline of {{ v.client }}" src="data:image/png;base64,{{ p }}"></div>{% endif %}
</div>
{% endfor %}{% endif %}
</section>
{% endfor %}
"""


def render_merges_html(incidents, plots: bool = True) -> str:
    """The merge sections of the HTML report (autoescaped; the page's CSS classes)."""
    import base64

    import jinja2

    incidents = list(incidents)
    embedded = {}
    if plots:
        from analyzer.report.merged_plot import plot_merged_timeline
        from analyzer.report.plots import figure_bytes

        for k, inc in enumerate(incidents):
            if inc.merge.merged:
                for v in inc.verdicts:
                    fig = plot_merged_timeline(inc, v.client)
                    embedded[(k, v.client)] = base64.b64encode(
                        figure_bytes(fig, "png")).decode("ascii")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(_HTML).render(incidents=incidents, clock=clock_text, rows=datagram_rows,
                                         header=DATAGRAM_HEADER, rel=_rel, plots=embedded)
    return html
