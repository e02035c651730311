"""Timing plots of one client: a swim-lane timeline and a histogram of the polling intervals.

Input is only the verdict stage's :class:`~analyzer.verdict.model.CaptureResult` (``timeline`` marks,
``logon_time``, ``poll_intervals``, ``server_poll_interval_s``). Figures are built on the Agg canvas directly
(``matplotlib.figure.Figure``, not pyplot), so nothing needs a display and a long-running web server does not
accumulate pyplot's global figures.

The timeline's x axis is seconds since the client's logon (else since capture start), with a faint grid every
60 s from that origin: the one-minute polling fallback shows as unprompted ticks falling one per grid cell, while
a healthy client shows notifications each followed by a prompted call and little or no polling.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analyzer.verdict.model import TIMELINE_LANES, CaptureResult, ClientVerdict

ASSUMED_POLL_INTERVAL_S = 60.0  # Outlook's fallback when the server's pcmsPollsMax was not captured
PROMPT_WINDOW_S = 2.0  # a call within this time after a notification is a reaction to it (correlate stage rule)
GRID_STEPS_S = (60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
MAX_REACTION_ARROWS = 300  # more notification -> reaction arrows than this are unreadable (and ~1 ms each)

VERDICT_COLOURS = {
    "registered": "#2e7d32",
    "not_registered": "#c62828",
    "udp_blocked": "#ef6c00",
    "inconclusive": "#616161",
}

# lane -> (y-axis label, colour, marker); marker None = drawn as spans
LANE_STYLE = {
    "registration": ("registration\n(opnum 4)", "#6a1b9a", "D"),
    "notification": ("UDP\nnotification", "#1565c0", "v"),
    "icmp": ("ICMP error", "#c62828", "X"),
    "prompted": ("prompted call\n(reaction)", "#2e7d32", "|"),
    "unprompted": ("unprompted call\n(polling)", "#ef6c00", "|"),
    "async_wait": ("async wait\n(EcDoAsyncWaitEx)", "#00838f", None),
    "mail": ("mail arrived", "#8d6e63", "*"),
}
# Lanes top to bottom in the contract's order; any lane a newer verdict stage adds goes below.
assert set(LANE_STYLE) >= set(TIMELINE_LANES), "a lane of TIMELINE_LANES has no style"

_SLUG_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")


def client_slug(client: str) -> str:
    """File-name part for a client: its IP with ':' replaced by '-' (stable; IPv6 too)."""
    return _SLUG_UNSAFE.sub("_", client.replace(":", "-")) or "unknown"


def _find_client(result: CaptureResult, client: str | ClientVerdict) -> ClientVerdict:
    if isinstance(client, ClientVerdict):
        return client
    for c in result.clients:
        if c.client == client:
            return c
    known = ", ".join(c.client for c in result.clients) or "none"
    raise ValueError(f"client {client!r} is not in {result.file} (clients: {known})")


def _new_figure(width: float, height: float, margins: dict) -> Figure:
    # Fixed margins, not constrained layout: the lane labels, title and x label have known sizes, and
    # constrained layout costs one extra full draw per save (0.29 of 0.87 s CPU per timeline PNG, profiled).
    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(**margins)
    FigureCanvasAgg(fig)
    return fig


def _title(result: CaptureResult, c: ClientVerdict) -> str:
    title = f"{c.client} \u2192 {c.server}: {c.verdict} / {c.cause} (confidence {c.confidence:.2f})"
    if c.mailbox:  # second line; a DN's tail (cn=user) identifies the mailbox
        mailbox = c.mailbox if len(c.mailbox) <= 90 else "\u2026" + c.mailbox[-89:]
        title += f"\nmailbox {mailbox}"
    return title


def _origin(result: CaptureResult, c: ClientVerdict) -> tuple[float | None, str]:
    if c.logon_time is not None:
        return c.logon_time, "seconds since logon"
    if result.start is not None:
        return result.start, "seconds since capture start (logon not captured)"
    if c.timeline:
        return min(m.time for m in c.timeline), "seconds since first event (capture times unknown)"
    return None, "seconds"


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="#555555",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_timeline(result: CaptureResult, client: str | ClientVerdict) -> Figure:
    """Swim-lane timeline of one client (by IP, or the ClientVerdict itself). Never fails on thin data: a client
    without marks gets an explanatory empty plot. Raises ValueError only for a client that is not in ``result``."""
    c = _find_client(result, client)
    fig = _new_figure(12, 4.8, dict(left=0.125, right=0.985, top=0.87 if c.mailbox else 0.925, bottom=0.16))
    ax = fig.add_subplot()
    ax.set_title(_title(result, c), fontsize=11, color=VERDICT_COLOURS.get(c.verdict, "black"), loc="left")
    origin, xlabel = _origin(result, c)
    marks = [m for m in c.timeline if m.time is not None]
    if origin is None or not marks:
        _empty(ax, "no EMSMDB activity of this client in the capture\n(nothing to place on a timeline)")
        return fig

    lanes = list(TIMELINE_LANES) + [m.lane for m in marks if m.lane not in TIMELINE_LANES]
    lanes = list(dict.fromkeys(lanes))
    ypos = {lane: len(lanes) - 1 - i for i, lane in enumerate(lanes)}  # first lane on top

    # x range: the whole capture (so an idle tail is visible), widened to any mark outside it
    times = [m.time - origin for m in marks] + [m.end - origin for m in marks if m.end is not None]
    if result.start is not None:
        times.append(result.start - origin)
    if result.end is not None:
        times.append(result.end - origin)
    x_lo, x_hi = min(times), max(times)
    span = max(x_hi - x_lo, 1.0)
    pad = span * 0.02
    ax.set_xlim(x_lo - pad, x_hi + pad)

    # faint grid every 60 s from the origin: one-minute polling puts one orange tick in each cell
    ax.set_axisbelow(True)
    step = next((s for s in GRID_STEPS_S if span / s <= 60), None)  # hours-long: coarser, whole minutes
    if step is None:
        # Days or more (in practice one damaged timestamp far from the rest): whole days, still at most ~60 lines.
        # A fixed one-day step drew 50,000 lines for a 40 KB capture with one timestamp in 2106: 100 s, 500 MB.
        step = GRID_STEPS_S[-1] * math.ceil(span / GRID_STEPS_S[-1] / 60)
    k = int((x_lo - pad) // step)
    while k * step <= x_hi + pad:
        ax.axvline(k * step, color="#cfcfcf", linewidth=0.7, zorder=0)
        k += 1
    if c.logon_time is not None:
        ax.axvline(0.0, color="#333333", linewidth=1.2, linestyle="--", zorder=1)
        ax.annotate("logon", (0.0, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 4),
                    textcoords="offset points", fontsize=8, color="#333333")

    by_lane: dict[str, list] = {lane: [] for lane in lanes}
    for m in marks:
        by_lane[m.lane].append(m)

    capture_end = (result.end - origin) if result.end is not None else x_hi
    for lane, items in by_lane.items():
        if not items:
            continue
        label, colour, marker = LANE_STYLE.get(lane, (lane, "#444444", "o"))
        y = ypos[lane]
        if marker is None:  # spans: an outstanding async wait from its request to its completion
            done = [(m.time - origin, (m.end - m.time)) for m in items if m.end is not None]
            open_ = [(m.time - origin, max(capture_end - (m.time - origin), 0.0)) for m in items if m.end is None]
            if done:  # dark edges keep back-to-back waits (Outlook re-issues at once) apart
                ax.broken_barh(done, (y - 0.25, 0.5), facecolors=colour, alpha=0.5, edgecolor="#004d55",
                               linewidth=1.2)
            if open_:  # still outstanding when the capture ended
                ax.broken_barh(open_, (y - 0.25, 0.5), facecolors="none", edgecolor=colour, hatch="///")
                start_x, width = open_[-1]
                right_half = start_x > x_lo + span / 2  # keep the words inside the axes
                ax.annotate("outstanding at capture end", (start_x + (width if right_half else 0), y + 0.25),
                            xytext=(-2 if right_half else 2, 3), textcoords="offset points", fontsize=8,
                            color=colour, ha="right" if right_half else "left").set_in_layout(False)
            ax.plot([m.time - origin for m in items], [y] * len(items), "|", color=colour, markersize=14)
            continue
        dense = len(items) > 150  # hours of calls: thinner ticks so the rhythm's gaps stay visible
        size = (10 if dense else 16) if marker == "|" else (5 if dense else 8)
        groups = [(items, colour)]
        if lane == "registration":  # a refused or faulted registration is drawn red, an accepted one purple
            failed = [m for m in items if _registration_failed(m.label)]
            groups = [([m for m in items if m not in failed], colour), (failed, VERDICT_COLOURS["not_registered"])]
        for group, group_colour in groups:
            if group:
                ax.plot([m.time - origin for m in group], [y] * len(group), linestyle="none", marker=marker,
                        color=group_colour, markersize=size,
                        markeredgewidth=(0.6 if dense else 2) if marker == "|" else 1)
        if lane in ("registration", "icmp") and len(items) <= 6:  # few and decisive: say what they were
            for m in items:
                if m.label:
                    ax.annotate(m.label, (m.time - origin, y), xytext=(6, 6), textcoords="offset points",
                                fontsize=8, color=colour).set_in_layout(False)  # never shrinks the axes

    # a notification followed within 2 s by a prompted call: join them, so a reaction reads at a glance
    prompted = sorted(m.time for m in by_lane.get("prompted", []))
    notifications = by_lane.get("notification", [])
    if len(notifications) > MAX_REACTION_ARROWS:  # hours of traffic: arrows would only blot; the lanes still tell
        notifications = []
    for n in notifications:
        react = next((t for t in prompted if n.time <= t <= n.time + PROMPT_WINDOW_S), None)
        if react is not None:
            ax.annotate("", xy=(react - origin, ypos["prompted"]), xytext=(n.time - origin, ypos["notification"]),
                        arrowprops=dict(arrowstyle="->", color="#1565c0", linewidth=0.8, shrinkA=4, shrinkB=6))

    ax.set_yticks([ypos[lane] for lane in lanes])
    ax.set_yticklabels([LANE_STYLE.get(lane, (lane,))[0] for lane in lanes], fontsize=9)
    for tick, lane in zip(ax.get_yticklabels(), lanes):
        tick.set_color(LANE_STYLE.get(lane, (lane, "#444444"))[1])
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    minutes = f" ({step / 60:.0f} min)" if step > 60 else ""
    ax.set_xlabel(f"{xlabel}; grid every {step:.0f} s{minutes}\n{_poll_summary(c)}", fontsize=9)
    ax.grid(False)
    # x ticks on grid lines ("60, 120, 180" reads as minutes at once), at most ~12 of them
    from matplotlib.ticker import MultipleLocator

    ax.xaxis.set_major_locator(MultipleLocator(step * max(1, math.ceil(span / step / 12))))
    # name the polling rhythm where the eye already is (from 3 calls on: 2 make no rhythm)
    if c.poll_interval_s is not None and len(by_lane.get("unprompted", [])) >= 3:
        ax.annotate(f"every ~{c.poll_interval_s:.0f} s", (1.0, ypos["unprompted"]),
                    xycoords=("axes fraction", "data"), xytext=(-4, 9), textcoords="offset points",
                    ha="right", fontsize=8, color=LANE_STYLE["unprompted"][1]).set_in_layout(False)
    return fig


def _registration_failed(label: str) -> bool:
    """The verdict stage labels registrations 'opnum 4 -> 0x%08x (name)' or 'opnum 4 -> fault'."""
    status = label.partition("->")[2].strip()
    return bool(status) and not status.startswith("0x00000000") and status != "unknown"


def _poll_summary(c: ClientVerdict) -> str:
    parts = [f"{c.notifications} notification(s)", f"{c.polls} unprompted call(s)"]
    if c.poll_interval_s is not None:
        parts.append(f"median interval {c.poll_interval_s:.1f} s")
    if c.server_poll_interval_s is not None:
        parts.append(f"server pcmsPollsMax {c.server_poll_interval_s:.0f} s")
    return ", ".join(parts)


def plot_intervals(result: CaptureResult, client: str | ClientVerdict) -> Figure:
    """Histogram of the intervals between consecutive unprompted calls, with a line at the server's poll interval
    (pcmsPollsMax) or at an assumed 60 s when the server's value was not captured."""
    c = _find_client(result, client)
    fig = _new_figure(7, 4, dict(left=0.09, right=0.97, top=0.91, bottom=0.13))
    ax = fig.add_subplot()
    ax.set_title(f"{c.client}: intervals between unprompted calls", fontsize=11, loc="left")
    intervals = [float(x) for x in c.poll_intervals if x is not None and x >= 0]
    if not intervals:
        n = c.polls
        why = ("no unprompted calls" if n == 0 else "only one unprompted call") if n <= 1 else \
            "no intervals recorded"
        _empty(ax, f"{why}: no polling intervals to show\n"
                   f"({c.verdict} / {c.cause})")
        return fig

    if c.server_poll_interval_s is not None:
        ref, ref_label, ref_style = c.server_poll_interval_s, \
            f"server poll interval (pcmsPollsMax) {c.server_poll_interval_s:.0f} s", "-"
    else:
        ref, ref_label, ref_style = ASSUMED_POLL_INTERVAL_S, \
            f"assumed {ASSUMED_POLL_INTERVAL_S:.0f} s (pcmsPollsMax not captured)", "--"
    hi = max(max(intervals), ref) * 1.1
    # 5 s bins centred on multiples of 5 s (a 60 s rhythm with jitter lands in one bar, not split at 60);
    # they resolve "about a minute" from "every few seconds"
    width = 5.0 if hi <= 300 else hi / 60
    bins = [max(0.0, (i - 0.5) * width) for i in range(int(hi // width) + 3)]
    ax.hist(intervals, bins=bins, color=LANE_STYLE["unprompted"][1], edgecolor="white", alpha=0.9,
            label=f"{len(intervals)} interval(s)")
    ax.axvline(ref, color="#1565c0", linestyle=ref_style, linewidth=1.8, label=ref_label)
    if c.poll_interval_s is not None:
        spread = f" (IQR {c.poll_interval_spread_s:.1f} s)" if c.poll_interval_spread_s is not None else ""
        ax.axvline(c.poll_interval_s, color="#333333", linestyle=":", linewidth=1.5,
                   label=f"median {c.poll_interval_s:.1f} s{spread}")
    ax.set_xlim(0, hi)
    ax.set_xlabel("seconds between consecutive unprompted EMSMDB calls", fontsize=9)
    ax.set_ylabel("count", fontsize=9)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """The figure rendered as PNG or SVG bytes (reproducible: no date in the metadata, fixed SVG ids)."""
    import io

    import matplotlib

    buf = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": "mailpush"}):
        fig.savefig(buf, format=fmt, metadata=metadata)
    return buf.getvalue()


def write_plots(result: CaptureResult, out_dir, prefix: str = "") -> list[Path]:
    """For each client write ``{prefix}timeline-{slug}.png/.svg`` and ``{prefix}intervals-{slug}.png/.svg``
    into ``out_dir`` (created if missing); slug = client IP with ':' replaced by '-'. Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for c in result.clients:
        slug = client_slug(c.client)
        for kind, draw in (("timeline", plot_timeline), ("intervals", plot_intervals)):
            fig = draw(result, c)
            for fmt in ("png", "svg"):
                path = out / f"{prefix}{kind}-{slug}.{fmt}"
                path.write_bytes(figure_bytes(fig, fmt))
                written.append(path)
    return written
