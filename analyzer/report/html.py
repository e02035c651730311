"""One self-contained HTML report (inline CSS, plots as base64 PNG, no scripts, no external resources) that can
be mailed or served under a strict Content-Security-Policy (``default-src 'none'; img-src data:;
style-src 'unsafe-inline'``, as the web service does)."""

from __future__ import annotations

import base64
import re
from typing import Iterable

import jinja2
import markupsafe

from analyzer import __version__
from analyzer.report.formats import capture_summary
from analyzer.report.plots import VERDICT_COLOURS, figure_bytes, plot_intervals, plot_timeline
from analyzer.verdict.model import VERDICTS, CaptureResult, utc_datetime

# Each plot costs ~0.2 s and ~60 kB of base64: beyond this many clients per report the page would take minutes
# and tens of MB, so later clients are listed without plots (`--plots DIR` still writes every one).
MAX_PLOTTED_CLIENTS = 60

_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="mailpush {{ version }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
 body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
        background: #f4f5f7; }
 main { max-width: 1180px; margin: 0 auto; padding: 18px 24px 40px; }
 h1 { font-size: 22px; margin: 6px 0 2px; } h2 { font-size: 18px; margin: 28px 0 6px; word-break: break-all; }
 h3 { font-size: 15px; margin: 0 0 6px; }
 .sub { color: #666; font-size: 12px; }
 table { border-collapse: collapse; background: #fff; }
 th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
 th { background: #eceef1; font-weight: 600; font-size: 12px; text-transform: uppercase; color: #555; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px; }
 .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-weight: 600;
          font-size: 12px; white-space: nowrap; }
{% for v, colour in colours.items() %} .verdict-{{ v }} .badge, .badge.verdict-{{ v }} { background: {{ colour }}; }
 .card.verdict-{{ v }} { border-left: 6px solid {{ colour }}; }
{% endfor %}
 .capture { margin-bottom: 10px; }
 .facts { color: #444; }
 .problems { background: #fff8e1; border: 1px solid #f0c36d; padding: 6px 12px; margin: 8px 0; border-radius: 4px; }
 .problems.error { background: #fdecea; border-color: #e57373; }
 .problems li { margin: 2px 0; }
 .card { background: #fff; border-radius: 6px; padding: 12px 16px; margin: 14px 0;
         box-shadow: 0 1px 2px rgba(0,0,0,.08); }
 .conf { display: inline-block; width: 90px; height: 8px; background: #e0e0e0; border-radius: 4px;
         vertical-align: middle; margin: 0 6px; overflow: hidden; }
 .conf span { display: block; height: 100%; background: #555; }
 .reason { font-size: 15px; margin: 8px 0; }
 .remedy { background: #eef6ee; border-left: 3px solid #2e7d32; padding: 6px 10px; margin: 10px 0; }
 .filter { display: block; background: #1e1e1e; color: #e8e8e8; padding: 8px 10px; border-radius: 4px;
           white-space: pre-wrap; word-break: break-all; user-select: all; -webkit-user-select: all;
           cursor: copy; margin: 4px 0 0; }
 .hint { color: #777; font-size: 11px; }
 .plots img { max-width: 100%; border: 1px solid #e3e3e3; margin: 6px 0; background: #fff; }
 .plots .intervals { max-width: 620px; }
 .evidence td:nth-child(1), .evidence td:nth-child(2) { white-space: nowrap; }
 footer { color: #888; font-size: 11px; margin-top: 30px; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<div class="sub">mailpush {{ version }} &middot; Outlook / Exchange push notification (EcRRegisterPushNotification,
 UDP notifications) versus the one-minute polling fallback &middot; {{ results|length }} capture(s),
 {{ n_clients }} client(s)</div>

{% if results|length > 1 %}
<h2>Summary</h2>
<table>
<tr><th>capture</th><th>client</th><th>verdict</th><th>cause</th><th>confidence</th></tr>
{% for r in results %}{% if r.error and not r.clients %}
<tr><td class="mono"><a href="#cap{{ loop.index }}">{{ r.file }}</a></td><td colspan="4">not analysed: {{ r.error }}</td></tr>
{% elif not r.clients %}
<tr><td class="mono"><a href="#cap{{ loop.index }}">{{ r.file }}</a></td><td>&ndash;</td>
 <td><span class="badge verdict-inconclusive">inconclusive</span></td><td>no_emsmdb_session</td><td></td></tr>
{% else %}{% set ci = loop.index %}{% for c in r.clients %}
<tr class="verdict-{{ c.verdict }}"><td class="mono"><a href="#cap{{ ci }}">{{ r.file }}</a></td>
 <td class="mono"><a href="#cap{{ ci }}-{{ loop.index }}">{{ c.client }}</a></td>
 <td><span class="badge">{{ c.verdict }}</span></td><td>{{ c.cause }}</td><td class="num">{{ '%.2f'|format(c.confidence) }}</td></tr>
{% endfor %}{% endif %}{% endfor %}
</table>
{% endif %}

{% for r in results %}{% set ci = loop.index %}
<section class="capture" id="cap{{ ci }}">
<h2>{{ r.file }}</h2>
<div class="facts">{{ summary(r) }}</div>
{% if r.error %}<div class="problems error"><strong>Error:</strong> {{ r.error }}</div>{% endif %}
{% if r.warnings %}<div class="problems"><strong>Warnings</strong><ul>
{% for w in r.warnings %}<li>{{ w }}</li>
{% endfor %}</ul></div>{% endif %}
{% if not (r.error and not r.format) %}
{% if not r.clients and not r.error %}
<p><span class="badge verdict-inconclusive">inconclusive</span> no_emsmdb_session: no Outlook (EMSMDB) client in this
 capture. Capture on the client or the Exchange server while Outlook starts.</p>
{% elif r.clients %}
<table>
<tr><th>client</th><th>mailbox</th><th>server</th><th>verdict</th><th>cause</th><th>confidence</th></tr>
{% for c in r.clients %}<tr class="verdict-{{ c.verdict }}">
 <td class="mono"><a href="#cap{{ ci }}-{{ loop.index }}">{{ c.client }}</a></td><td class="mono">{{ c.mailbox or '–' }}</td>
 <td class="mono">{{ c.server }}</td><td><span class="badge">{{ c.verdict }}</span></td><td>{{ c.cause }}</td>
 <td class="num">{{ '%.2f'|format(c.confidence) }}</td></tr>
{% endfor %}</table>
{% for c in r.clients %}
<div class="card verdict-{{ c.verdict }}" id="cap{{ ci }}-{{ loop.index }}">
<h3><span class="mono">{{ c.client }}</span> &rarr; <span class="mono">{{ c.server }}</span>
 &nbsp;<span class="badge">{{ c.verdict }}</span> <code>{{ c.cause }}</code>
 <span class="conf" title="confidence"><span style="width: {{ (c.confidence * 100)|round|int }}%"></span></span>
 {{ '%.2f'|format(c.confidence) }}</h3>
{% if c.mailbox %}<div class="facts">mailbox <span class="mono">{{ c.mailbox }}</span></div>{% endif %}
<div class="facts">{{ facts(c) }}</div>
<div class="reason">{{ c.reason }}</div>
{% if c.evidence %}
<table class="evidence">
<tr><th>frame</th><th>time</th><th>what</th></tr>
{% for e in c.evidence %}<tr><td class="num mono">{{ e.frame }}</td>
 <td class="mono" title="{{ utc(e.time) }}">{{ rel(e.time, r.start) }}</td><td>{{ e.what }}</td></tr>
{% endfor %}</table>
{% endif %}
{% if c.filter %}<div class="hint">Wireshark display filter for exactly these frames (click to select, then copy):</div>
<code class="filter" tabindex="0">{{ c.filter }}</code>{% else %}<div class="hint">no evidence frames</div>{% endif %}
<div class="remedy"><strong>Remedy:</strong> {{ c.remedy }}</div>
{% set p = plots.get((ci, loop.index)) %}{% if p %}
<div class="plots">
<img class="timeline" alt="timeline of {{ c.client }}" src="data:image/png;base64,{{ p[0] }}">
<img class="intervals" alt="intervals between unprompted calls of {{ c.client }}" src="data:image/png;base64,{{ p[1] }}">
</div>{% elif plots_skipped %}<div class="hint">plots left out (more than {{ max_plotted }} clients in this report; use
 <code>mailpush analyze --plots DIR</code>)</div>{% endif %}
</div>
{% endfor %}{% endif %}{% endif %}
</section>
{% endfor %}
{{ merged_html }}
<footer>Generated by mailpush {{ version }} (GPL-2.0-or-later). Times are seconds since the first frame of each
 capture (hover for UTC). Verdicts: registered (push set up), not_registered (no push: server refused or client never
 asked), udp_blocked (registered, but the UDP notification does not arrive), inconclusive (the capture cannot
 tell).</footer>
</main>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
_COMPILED = _ENV.from_string(_TEMPLATE)


def _utc(t: float | None) -> str:
    if t is None:
        return ""
    when = utc_datetime(t)
    return f"epoch {t:.6f} s (not a date)" if when is None else when.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _rel(t: float, start: float | None) -> str:
    return _utc(t) if start is None else f"+{t - start:.3f} s"


def _facts(c) -> str:
    parts = []
    if c.callback:
        parts.append(f"callback {c.callback}")
    if c.register_status is not None:
        parts.append(f"register status 0x{c.register_status & 0xFFFFFFFF:08x}")
    parts.append(f"{c.notifications} notification(s)")
    polls = f"{c.polls} unprompted call(s)"
    if c.poll_interval_s is not None:
        polls += f", median interval {c.poll_interval_s:.1f} s"
        if c.poll_interval_spread_s is not None:
            polls += f" (IQR {c.poll_interval_spread_s:.1f} s)"
    parts.append(polls)
    if c.server_poll_interval_s is not None:
        parts.append(f"server pcmsPollsMax {c.server_poll_interval_s:.0f} s")
    # a number keeps its unit on the same line ("60\u00a0s")
    return " \u00b7 ".join(re.sub(r"(\d) (s\b|notification|unprompted)", "\\1\u00a0\\2", p) for p in parts)


def _png_b64(fig) -> str:
    return base64.b64encode(figure_bytes(fig, "png")).decode("ascii")


def render_html(results: Iterable[CaptureResult], title: str | None = None, plots: bool = True,
                incidents=None) -> str:
    """One self-contained HTML page for these results: per capture its summary, warnings and errors, a verdict
    table, and per client a card with verdict colour, cause, confidence, reason, evidence frames with times, the
    display filter (one click selects it), the remedy and both timing plots (base64 PNG)."""
    results = list(results)
    if title is None:
        title = "mailpush report: " + (results[0].file if len(results) == 1 else f"{len(results)} captures")
    embedded: dict[tuple[int, int], tuple[str, str]] = {}
    plotted = 0
    skipped = False
    if plots:
        for ci, r in enumerate(results, 1):
            for k, c in enumerate(r.clients, 1):
                if plotted >= MAX_PLOTTED_CLIENTS:
                    skipped = True
                    continue
                embedded[(ci, k)] = (_png_b64(plot_timeline(r, c)), _png_b64(plot_intervals(r, c)))
                plotted += 1
    merged_html = ""
    if incidents:  # merged client/server captures (--merge), after the captures
        from analyzer.report.merged import render_merges_html

        merged_html = markupsafe.Markup(render_merges_html(incidents, plots=plots))
    return _COMPILED.render(
        merged_html=merged_html, title=title, version=__version__, results=results, n_clients=sum(len(r.clients) for r in results),
        colours={v: VERDICT_COLOURS[v] for v in VERDICTS}, summary=capture_summary, facts=_facts, utc=_utc,
        rel=_rel, plots=embedded, plots_skipped=skipped, max_plotted=MAX_PLOTTED_CLIENTS)
