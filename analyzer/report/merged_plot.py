# SPDX-License-Identifier: GPL-2.0-or-later
"""The merged timeline of two captures of one incident: a server lane and a client lane on the server's clock.

Each notification datagram is drawn where it left (server lane) and where it arrived (client lane, its client
time mapped through the clock estimate); a line joins the two when both captures saw it. A datagram lost in
transit gets a red cross on the server lane and a dashed line that stops half way; one that left while the client
capture was not running is drawn hollow. The light bars behind each lane show when that capture was running, so a
partial overlap is visible at once. The client's reaction (its call to the server) is a green triangle just below
the client lane.
"""

from __future__ import annotations

from pathlib import Path

from analyzer.merge.model import DELIVERED, LOST_IN_TRANSIT, NOT_COVERED, ONLY_AT_CLIENT
from analyzer.report.plots import VERDICT_COLOURS, _new_figure, client_slug, figure_bytes

Y_SERVER, Y_CLIENT, Y_REACTION = 1.0, 0.0, -0.27
COLOUR_DATAGRAM = "#1565c0"
COLOUR_LOST = "#c62828"
COLOUR_REACTION = "#2e7d32"
COLOUR_UNKNOWN = "#9e9e9e"


def plot_merged_timeline(incident, client: str | None = None):
    """Figure of the merged captures (one client of the incident: ``client`` as the server capture sees it, by
    default the first)."""
    m = incident.merge
    clock = m.clock
    verdict = next((v for v in incident.verdicts if client is None or v.client == client), None)
    who = client or (verdict.client if verdict else None)
    fates = [f for f in m.datagrams if who is None or f.client == who]
    origin = m.server_span[0]

    fig = _new_figure(11.5, 4.2, dict(left=0.2, right=0.98, top=0.8, bottom=0.15))
    ax = fig.add_subplot(1, 1, 1)

    def x(t):
        return t - origin

    def on_server(t_client):
        return clock.to_server(t_client)

    # when each capture ran
    ax.barh(Y_SERVER, x(m.server_span[1]) - x(m.server_span[0]), left=x(m.server_span[0]), height=0.34,
            color="#eceff1", zorder=0)
    c0, c1 = on_server(m.client_span[0]), on_server(m.client_span[1])
    ax.barh(Y_CLIENT, x(c1) - x(c0), left=x(c0), height=0.34, color="#eceff1", zorder=0)

    # registration(s) on the server lane, from the merged verdict's evidence (server-capture frames)
    if verdict is not None:
        regs = [e for e in verdict.evidence if "EcRRegisterPushNotification request" in e.what]
        if regs:
            client_frames = incident.side_of(verdict) == "client"
            ax.scatter([x(on_server(e.time) if client_frames else e.time) for e in regs],
                       [Y_CLIENT if client_frames else Y_SERVER] * len(regs), marker="D", s=40, color="#6a1b9a",
                       zorder=3, label="registration (opnum 4)")

    labelled = set()

    def once(key, text):
        if key in labelled:
            return None
        labelled.add(key)
        return text

    for f in fates:
        if f.fate == DELIVERED:
            xs, xc = x(f.server_time), x(on_server(f.client_time))
            ax.plot([xs, xc], [Y_SERVER, Y_CLIENT], color=COLOUR_DATAGRAM, lw=1.2, zorder=2)
            ax.scatter([xs], [Y_SERVER], marker="v", s=60, color=COLOUR_DATAGRAM, zorder=4,
                       label=once("d", "datagram, seen on both sides"))
            ax.scatter([xc], [Y_CLIENT], marker="v", s=60, color=COLOUR_DATAGRAM, zorder=4)
            if f.delay_s is not None:
                ax.annotate(f"{f.delay_s * 1000:.1f} ms", (xc, 0.5), xytext=(4, 0), textcoords="offset points",
                            fontsize=7.5, color=COLOUR_DATAGRAM, va="center")
        elif f.fate == LOST_IN_TRANSIT:
            xs = x(f.server_time)
            ax.plot([xs, xs], [Y_SERVER, 0.45], color=COLOUR_LOST, lw=1.2, ls="--", zorder=2)
            ax.scatter([xs], [Y_SERVER], marker="v", s=60, color=COLOUR_LOST, zorder=4,
                       label=once("l", "datagram lost in transit"))
            ax.scatter([xs], [0.45], marker="X", s=80, color=COLOUR_LOST, zorder=4)
        elif f.fate == NOT_COVERED:
            ax.scatter([x(f.server_time)], [Y_SERVER], marker="v", s=60, facecolors="none",
                       edgecolors=COLOUR_UNKNOWN, zorder=4, label=once("n", "datagram, client capture not running"))
        elif f.fate == ONLY_AT_CLIENT:
            ax.scatter([x(on_server(f.client_time))], [Y_CLIENT], marker="v", s=60, color=COLOUR_UNKNOWN, zorder=4,
                       label=once("o", "datagram seen at the client only"))
        if f.reaction_frame is not None and f.reaction_time is not None:
            t = on_server(f.reaction_time) if f.reaction_side == "client" else f.reaction_time
            # just below the client lane: at 300 s per axis a reaction 0.3 s after the arrival would hide behind it
            ax.scatter([x(t)], [Y_REACTION], marker="^", s=55, color=COLOUR_REACTION, zorder=5,
                       label=once("r", "client's reaction (call to the server)"))

    ax.set_yticks([Y_CLIENT, Y_SERVER])
    ax.set_yticklabels([_lane_label("client side", m.client_file), _lane_label("server side", m.server_file)],
                       fontsize=8.5)
    ax.set_ylim(-0.45, 1.45)
    lo = min(x(m.server_span[0]), x(c0))
    hi = max(x(m.server_span[1]), x(c1))
    pad = max(1.0, (hi - lo) * 0.02)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("seconds since the server capture's first frame (server clock; client times mapped by the "
                  "clock estimate)", fontsize=8.5)
    ax.grid(axis="x", color="#e0e0e0", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    title = "merged timeline"
    colour = "#222"
    if verdict is not None:
        title = (f"{verdict.client} \u2192 {verdict.server}: {verdict.verdict} / {verdict.cause} "
                 f"(confidence {verdict.confidence:.2f})")
        colour = VERDICT_COLOURS.get(verdict.verdict, colour)
    unc = clock.offset_uncertainty_s
    sub = (f"client clock {clock.offset_s:+.6f} s" + (f" \u00b1 {unc * 1000:.1f} ms" if unc is not None else "")
           + f", drift {clock.drift_ppm:+.1f} ppm \u00b7 {m.matched_tcp} TCP segments, {m.matched_udp} datagrams "
           "matched")
    if m.rewrites:  # a line of its own: two rewrites already fill the width
        sub += "\nNAT (server side \u2192 client side): " + ", ".join(
            f"{r.server_side} \u2192 {r.client_side}" for r in m.rewrites[:3])
    ax.set_title(f"{title}\n{sub}", fontsize=9.5, color=colour, loc="left")
    if labelled or ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, fontsize=7.5, frameon=False)
        fig.subplots_adjust(bottom=0.3)
    return fig


def _lane_label(side: str, path: str) -> str:
    name = Path(path).name
    if len(name) > 34:
        name = "\u2026" + name[-33:]
    return f"{side}\n{name}"


def merged_plot_stem(incident) -> str:
    """'{client capture stem}+{server capture stem}.'"""
    def stem(p):
        name = Path(p).name
        for suffix in (".gz", ".gzip"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        return Path(name).stem
    return f"{stem(incident.merge.client_file)}+{stem(incident.merge.server_file)}."


def write_merged_plots(incident, out_dir) -> list[Path]:
    """``{client stem}+{server stem}.merged-{client}.png/.svg`` per client of a merged incident."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    clients = [v.client for v in incident.verdicts] or [None]
    for client in clients:
        fig = plot_merged_timeline(incident, client)
        for fmt in ("png", "svg"):
            path = out / f"{merged_plot_stem(incident)}merged-{client_slug(client or 'all')}.{fmt}"
            path.write_bytes(figure_bytes(fig, fmt))
            written.append(path)
    return written
