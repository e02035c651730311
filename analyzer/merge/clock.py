# SPDX-License-Identifier: GPL-2.0-or-later
"""Clock offset and drift between two capturing machines, from packets seen by both.

For a packet sent by the server, ``client time - server time = offset + delay``; for one sent by the client it is
``offset - delay``. Delays are never negative and queueing only ever adds to them, so the useful information is
in the *extremes*: the lower envelope of the first set and the upper envelope of the second (the minimum one-way
delay in each direction, followed over time). Each envelope is the line that stays on its side of every point and
is as close to them as possible (sum of distances minimal, Moon, Skelly & Towsley, "Estimation and removal of clock
skew from network delay measurements", INFOCOM 1999); that line runs along an edge of the points' convex hull, so
trying each hull edge finds it without a linear-programming library.
"""

from __future__ import annotations

import numpy as np

from analyzer.merge.model import ClockEstimate

# A slope beyond this is no clock drift (quartz clocks stay within ~100 ppm) but an artefact of few points.
MAX_DRIFT = 500e-6


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    order = np.lexsort((y, x))
    hull: list[int] = []
    for i in order:
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (x[a] - x[o]) * (y[i] - y[o]) - (y[a] - y[o]) * (x[i] - x[o])
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(int(i))
    return hull


def lower_envelope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept at x=0, slope) of the line below every point that minimises the summed distance to them."""
    if len(x) == 1 or np.ptp(x) == 0:
        return float(y.min()), 0.0
    best = (float(y.min()), 0.0)  # flat line through the lowest point: always feasible
    best_cost = float(np.sum(y - best[0]))
    hull = _lower_hull(x, y)
    sx, sy, n = float(x.sum()), float(y.sum()), len(x)
    for a, b in zip(hull, hull[1:]):
        if x[b] == x[a]:
            continue
        slope = float((y[b] - y[a]) / (x[b] - x[a]))
        if abs(slope) > MAX_DRIFT:
            continue
        intercept = float(y[a] - slope * x[a])
        cost = sy - n * intercept - slope * sx
        if cost < best_cost - 1e-12:
            best, best_cost = (intercept, slope), cost
    return best


def _slope_jackknife(x: np.ndarray, y: np.ndarray) -> float:
    """How far the envelope's slope moves when one of the two points it rests on is left out."""
    if len(x) < 4:
        return 0.0
    intercept, slope = lower_envelope(x, y)
    resting = np.argsort(y - (intercept + slope * x))[:2]
    moved = 0.0
    for i in resting:
        keep = np.ones(len(x), dtype=bool)
        keep[i] = False
        moved = max(moved, abs(lower_envelope(x[keep], y[keep])[1] - slope))
    return moved


def estimate_clock(server_times_from_server: list[float], diffs_from_server: list[float],
                   server_times_from_client: list[float], diffs_from_client: list[float]) -> ClockEstimate:
    """``diffs_*`` are client time - server time of matched packets sent by the server / by the client, at the
    given server times. At least one packet in total is needed."""
    xs = np.asarray(server_times_from_server + server_times_from_client, dtype=float)
    ref = float(xs.min())
    span = float(xs.max() - ref)
    xs_s = np.asarray(server_times_from_server, dtype=float) - ref
    ys_s = np.asarray(diffs_from_server, dtype=float)
    xs_c = np.asarray(server_times_from_client, dtype=float) - ref
    ys_c = np.asarray(diffs_from_client, dtype=float)
    # Work relative to a rough offset so the hull arithmetic stays in the millisecond range (epoch-size numbers
    # would cost float precision).
    rough = float(np.median(np.concatenate([ys_s, ys_c])))
    lines = {}
    if len(xs_s):
        lines["s"] = lower_envelope(xs_s, ys_s - rough)
    if len(xs_c):
        a, b = lower_envelope(xs_c, -(ys_c - rough))
        lines["c"] = (-a, -b)  # upper envelope of the client-sent differences
    if "s" in lines and "c" in lines:
        (a_s, b_s), (a_c, b_c) = lines["s"], lines["c"]
        # The drift is best seen by the direction with the longer time span; average weighted by span.
        w_s, w_c = float(np.ptp(xs_s)) if len(xs_s) > 1 else 0.0, float(np.ptp(xs_c)) if len(xs_c) > 1 else 0.0
        drift = (b_s * w_s + b_c * w_c) / (w_s + w_c) if w_s + w_c > 0 else 0.0
        mid = span / 2
        # both envelope lines with the common drift, each through its own points' closest approach
        a_s2 = float(np.min(ys_s - rough - drift * xs_s))
        a_c2 = float(np.max(ys_c - rough - drift * xs_c))
        offset = rough + (a_s2 + a_c2) / 2
        half_gap = (a_s2 - a_c2) / 2
        # the two directions' slopes disagree by this much; and each envelope rests on two points: without either
        # of them (jackknife) its slope moves by this much
        drift_unc = max(abs(b_s - b_c) / 2, _slope_jackknife(xs_s, ys_s - rough), _slope_jackknife(xs_c, rough - ys_c))
        # Residual spread of the envelope points: the few closest points of each set lie this far off the line.
        unc = abs(half_gap) + drift_unc * mid
        d_sc = half_gap
        d_cs = half_gap
        n_s, n_c = len(xs_s), len(xs_c)
    else:
        key = "s" if "s" in lines else "c"
        a, drift = lines[key]
        offset = rough + a
        drift_unc = abs(drift)
        # one direction only: the offset is bounded on one side by the envelope, the delay is not known
        unc = None
        d_sc = d_cs = None
        n_s, n_c = len(xs_s), len(xs_c)
    return ClockEstimate(offset_s=offset, offset_uncertainty_s=unc, drift_ppm=drift * 1e6,
                         drift_uncertainty_ppm=drift_unc * 1e6, ref_time=ref, min_delay_server_to_client_s=d_sc,
                         min_delay_client_to_server_s=d_cs, samples_server_to_client=n_s,
                         samples_client_to_server=n_c, span_s=span)
