# SPDX-License-Identifier: GPL-2.0-or-later
"""Verdicts from two merged captures (analyzer.merge): where exactly the notification is lost.

A single capture can only say "the server sent it and nothing happened" (server side, ``udp_not_delivered``) or
"mail arrived and no datagram did" (client side, ``udp_not_received``). With both sides merged, a datagram seen
leaving the server and never arriving while the client capture ran was dropped *between the two capture points*:
``udp_lost_in_transit``. Otherwise the client side's verdict stands (it sees the reaction), with the merge's
figures added to its reason.

The judgement has the shape of :mod:`analyzer.verdict.judge`'s: ``MERGE_RULES`` is an ordered tuple of rule functions,
each taking a :class:`MergedSituation` (one client both captures share) and returning a ``Finding`` or None; the
first Finding decides, and when none holds the single capture's verdict stands.

Evidence frames and the display filter of a ``udp_lost_in_transit`` verdict are frames of the **server** capture
(where the datagrams left); the reason names the client capture's frames where they arrived. Otherwise they are the
frames of the capture whose verdict stands (``MergedIncident.frames_of``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from analyzer.merge.model import DELIVERED, LOST_IN_TRANSIT, DatagramFate, MergeResult, merge_result_from_dict
from analyzer.verdict.causes import remedy_for
from analyzer.verdict.judge import Finding, concludes, display_filter
from analyzer.verdict.model import CAUSES, CaptureResult, ClientVerdict, EvidenceItem, utc_datetime

MAX_CITED = 30
# The datagram matching is only as good as the clock; beyond this uncertainty the verdict is less sure.
LOOSE_CLOCK_S = 0.5


@dataclass
class MergedIncident:
    """Two captures of one incident and the verdict of the merge, per client they share."""

    merge: MergeResult
    verdicts: list[ClientVerdict] = field(default_factory=list)
    # client -> "server" | "client": whose capture the verdict's evidence frames (and filter) belong to
    frames_of: dict[str, str] = field(default_factory=dict)

    def side_of(self, v: ClientVerdict) -> str:
        return self.frames_of.get(v.client, "server")

    def file_of(self, v: ClientVerdict) -> str:
        return self.merge.client_file if self.side_of(v) == "client" else self.merge.server_file

    @property
    def client_file(self) -> str:
        return self.merge.client_file

    @property
    def server_file(self) -> str:
        return self.merge.server_file

    def to_dict(self) -> dict:
        d = self.merge.to_dict()
        d["verdicts"] = [dict(v.to_dict(), frames_of=self.file_of(v)) for v in self.verdicts]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MergedIncident":
        merge = merge_result_from_dict(d)
        verdicts = [ClientVerdict.from_dict(v) for v in d.get("verdicts", [])]
        frames_of = {v["client"]: "client" if v.get("frames_of") == merge.client_file else "server"
                     for v in d.get("verdicts", [])}
        return cls(merge=merge, verdicts=verdicts, frames_of=frames_of)


def _clock_time(t: float | None) -> str:
    when = utc_datetime(t)
    return "?" if when is None else when.strftime("%H:%M:%S.%f")[:-3] + " UTC"


def _rewrites_text(merge: MergeResult) -> str:
    if not merge.rewrites:
        return ""
    parts = [f"{r.server_side} \u2194 {r.client_side} ({r.proto} {r.rewritten})" for r in merge.rewrites]
    return "; a NAT between the capture points rewrote " + ", ".join(parts)


@dataclass
class MergedSituation:
    """What the merge rules look at for one client that both captures share."""

    merge: MergeResult
    server_verdict: ClientVerdict | None  # the client's verdict from the server capture alone
    client_verdict: ClientVerdict | None  # ... from the client capture alone
    fates: list[DatagramFate]  # the datagrams from the server to this client, as the merge matched them

    @property
    def lost(self) -> list[DatagramFate]:
        return [f for f in self.fates if f.fate == LOST_IN_TRANSIT]

    @property
    def delivered(self) -> list[DatagramFate]:
        return [f for f in self.fates if f.fate == DELIVERED]


@concludes("udp_lost_in_transit")
def datagram_lost_between_captures(s: MergedSituation) -> Finding | None:
    """A datagram left the server while the client capture was running, and the client capture does not have it.

    Its evidence frames are the server capture's: the registration as the server saw it and every datagram's fate.
    """
    lost, delivered, merge = s.lost, s.delivered, s.merge
    if not lost:
        return None
    first = lost[0]
    evidence: dict[int, EvidenceItem] = {}
    if s.server_verdict is not None:  # the registration as the server saw it
        for e in s.server_verdict.evidence:
            if "EcRRegisterPushNotification" in e.what:
                evidence[e.frame] = e
    for f in s.fates[:MAX_CITED]:
        if f.server_frame is None:
            continue
        if f.fate == LOST_IN_TRANSIT:
            what = (f"UDP {f.server_src} -> {f.server_dst} left the server; not in {merge.client_file} "
                    "(dropped between the capture points)")
        elif f.fate == DELIVERED:
            what = (f"UDP {f.server_src} -> {f.server_dst} arrived: {merge.client_file} frame {f.client_frame}, "
                    f"{f.delay_s * 1000:.1f} ms later" + (f", reaction frame {f.reaction_frame}"
                                                           f" ({f.reaction_side} capture)" if f.reaction_frame else ""))
        else:
            what = f"UDP {f.server_src} -> {f.server_dst} left while {merge.client_file} was not running"
        evidence[f.server_frame] = EvidenceItem(f.server_frame, f.server_time, what)
    unc = merge.clock.offset_uncertainty_s if merge.clock else None
    confidence = 0.9 if unc is not None and unc <= LOOSE_CLOCK_S else 0.75
    reason = (f"{len(lost)} of {len(s.fates)} UDP notification(s) left the server and never reached the client: the "
              f"first at {_clock_time(first.server_time)} (server capture frame {first.server_frame}, "
              f"{first.server_src} -> {first.server_dst}), while {merge.client_file} was running; dropped between "
              "the two capture points")
    if delivered:
        reason += f"; {len(delivered)} other(s) arrived"
    reason += _rewrites_text(merge)
    if unc is None or unc > LOOSE_CLOCK_S:
        reason += "; the clocks are only loosely aligned, so the datagram matching is less certain"
    return Finding("udp_lost_in_transit", confidence, reason, sorted(evidence.values(), key=lambda e: e.frame))


# In order of precedence, as judge.RULES. When none holds, the client capture's verdict stands (it sees the
# reaction), else the server capture's, with the merge's figures added to its reason.
MERGE_RULES: tuple[Callable[[MergedSituation], Finding | None], ...] = (
    datagram_lost_between_captures,
)


def judge_merged(merge: MergeResult, client_result: CaptureResult, server_result: CaptureResult) -> MergedIncident:
    incident = MergedIncident(merge=merge)
    if not merge.merged:
        return incident
    by_client_c = {c.client: c for c in client_result.clients}
    by_client_s = {c.client: c for c in server_result.clients}
    for server_ip, client_ip in merge.clients:
        sv, cv = by_client_s.get(server_ip), by_client_c.get(client_ip)
        base = sv or cv
        if base is None:
            continue
        situation = MergedSituation(merge, sv, cv, [f for f in merge.datagrams if f.client == server_ip])
        finding = next((f for f in (rule(situation) for rule in MERGE_RULES) if f is not None), None)
        if finding is not None:
            incident.verdicts.append(_verdict_of(base, finding, situation))
            incident.frames_of[base.client] = "server"
        else:
            delivered = situation.delivered
            from_client = cv is not None
            v = copy.deepcopy(cv or sv)
            figures = (f"merged with {merge.server_file if from_client else merge.client_file}: "
                       f"{len(delivered)} datagram(s) seen on both sides")
            if delivered:
                delays = sorted(f.delay_s for f in delivered if f.delay_s is not None)
                if delays:
                    figures += f", one-way delay {delays[0] * 1000:.1f}..{delays[-1] * 1000:.1f} ms"
            v.reason = f"{v.reason}; {figures}{_rewrites_text(merge)}"
            incident.verdicts.append(v)
            incident.frames_of[v.client] = "client" if from_client else "server"
    return incident


def _verdict_of(base: ClientVerdict, finding: Finding, s: MergedSituation) -> ClientVerdict:
    """The client's verdict as a merge rule found it; the rest (client, mailbox, callback, polls ...) from *base*.
    A merge finding cites the server capture's frames, so its notifications are the datagrams that left the server."""
    v = copy.deepcopy(base)
    v.cause, v.verdict, v.confidence, v.reason = finding.cause, CAUSES[finding.cause], finding.confidence, \
        finding.reason
    v.evidence = finding.evidence
    v.filter = display_filter(e.frame for e in finding.evidence)
    v.remedy = remedy_for(finding.cause)
    v.notifications = len([f for f in s.fates if f.server_frame is not None])
    return v
