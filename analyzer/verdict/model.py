"""Typed output of the verdict stage: one :class:`ClientVerdict` per Outlook client, one :class:`CaptureResult`
per capture. Reports, batch scoring and the web service consume only these (never events or bytes).

``CaptureResult.to_dict()`` is exactly one element of the ``captures`` list of ``mailpush analyze --format json``
(a contract other tools depend on: keys may be added, never renamed or removed).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

# VERDICTS and CAUSES (cause -> its verdict) live with each cause's meaning and remedy in the cause table.
from analyzer.verdict.causes import CAUSES, VERDICTS  # noqa: F401

VANTAGES = ("client", "server", "between", "unknown")

# Swim lanes of the per-client timeline, top to bottom.
TIMELINE_LANES = (
    "registration",  # opnum 4 request/response (label says status)
    "notification",  # UDP datagram server -> client callback
    "icmp",  # ICMP error quoting a notification datagram
    "prompted",  # EMSMDB call within 2 s after a notification / async completion
    "unprompted",  # EMSMDB call not prompted by anything: the polling
    "async_wait",  # EcDoAsyncWaitEx request (start) / completion
    "mail",  # evidence that mail arrived (delivery, RopNotify, large poll answer followed by fetches)
)


@dataclass
class EvidenceItem:
    frame: int
    time: float  # epoch seconds
    what: str  # one line


@dataclass
class TimelineMark:
    time: float  # epoch seconds
    lane: str  # one of TIMELINE_LANES
    frame: int | None = None
    label: str = ""
    end: float | None = None  # for spans (an outstanding async wait): epoch seconds it completed


@dataclass
class ClientVerdict:
    client: str  # IP (IPv6 compressed form)
    server: str
    verdict: str  # one of VERDICTS
    cause: str  # one of CAUSES
    confidence: float  # 0..1
    reason: str  # one line: why this verdict and this confidence
    mailbox: str | None = None  # mailbox / user DN when readable
    callback: str | None = None  # "ip:port" or "[ipv6]:port"
    register_status: int | None = None  # opnum 4 return value
    notifications: int = 0
    polls: int = 0  # unprompted EMSMDB calls
    poll_interval_s: float | None = None  # median interval between unprompted calls
    poll_interval_spread_s: float | None = None  # interquartile range of those intervals
    server_poll_interval_s: float | None = None  # pcmsPollsMax / 1000
    evidence: list[EvidenceItem] = field(default_factory=list)
    filter: str = ""  # Wireshark display filter showing exactly the evidence frames
    remedy: str = ""
    # for plots and drill-down (not part of the JSON contract's required keys, but emitted as extras)
    timeline: list[TimelineMark] = field(default_factory=list)
    logon_time: float | None = None  # first EMSMDB connect/bind of the client in the capture
    poll_intervals: list[float] = field(default_factory=list)  # seconds between consecutive unprompted calls

    def to_dict(self) -> dict:
        return {
            "client": self.client,
            "mailbox": self.mailbox,
            "server": self.server,
            "verdict": self.verdict,
            "cause": self.cause,
            "confidence": round(float(self.confidence), 3),
            "reason": self.reason,
            "callback": self.callback,
            "register_status": None if self.register_status is None else "0x%08x" % (self.register_status & 0xFFFFFFFF),
            "notifications": int(self.notifications),
            "polls": int(self.polls),
            "poll_interval_s": _round(self.poll_interval_s),
            "server_poll_interval_s": _round(self.server_poll_interval_s),
            "evidence": [{"frame": int(e.frame), "time": float(e.time), "what": e.what} for e in self.evidence],
            "filter": self.filter,
            "remedy": self.remedy,
            # extensions (allowed: keys may be added)
            "poll_interval_spread_s": _round(self.poll_interval_spread_s),
            "logon_time": self.logon_time,
            "poll_intervals": [round(x, 3) for x in self.poll_intervals],
            "timeline": [
                {"time": m.time, "lane": m.lane, "frame": m.frame, "label": m.label, "end": m.end}
                for m in self.timeline
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ClientVerdict":
        rs = d.get("register_status")
        return cls(
            client=d["client"],
            server=d["server"],
            verdict=d["verdict"],
            cause=d["cause"],
            confidence=float(d["confidence"]),
            reason=d.get("reason", ""),
            mailbox=d.get("mailbox"),
            callback=d.get("callback"),
            register_status=None if rs is None else int(rs, 16),
            notifications=int(d.get("notifications", 0)),
            polls=int(d.get("polls", 0)),
            poll_interval_s=d.get("poll_interval_s"),
            poll_interval_spread_s=d.get("poll_interval_spread_s"),
            server_poll_interval_s=d.get("server_poll_interval_s"),
            evidence=[EvidenceItem(int(e["frame"]), float(e["time"]), e["what"]) for e in d.get("evidence", [])],
            filter=d.get("filter", ""),
            remedy=d.get("remedy", ""),
            timeline=[
                TimelineMark(m["time"], m["lane"], m.get("frame"), m.get("label", ""), m.get("end"))
                for m in d.get("timeline", [])
            ],
            logon_time=d.get("logon_time"),
            poll_intervals=list(d.get("poll_intervals", [])),
        )


@dataclass
class CaptureResult:
    file: str  # as given
    format: str | None = None  # pcap|pcapng|netmon1|netmon2 (None when unreadable)
    compressed: bool = False
    frames: int = 0
    start: float | None = None  # epoch seconds
    end: float | None = None
    vantage: str = "unknown"  # client|server|between|unknown
    vantage_reason: str = ""
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # set when the capture could not be analysed at all
    clients: list[ClientVerdict] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return max(0.0, self.end - self.start)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "format": self.format,
            "compressed": bool(self.compressed),
            "frames": int(self.frames),
            "start": _iso(self.start),
            "end": _iso(self.end),
            "duration_s": round(self.duration_s, 6),
            "vantage": self.vantage,
            "warnings": list(self.warnings),
            "error": self.error,
            "clients": [c.to_dict() for c in self.clients],
            "vantage_reason": self.vantage_reason,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CaptureResult":
        return cls(
            file=d["file"],
            format=d.get("format"),
            compressed=bool(d.get("compressed", False)),
            frames=int(d.get("frames", 0)),
            start=_from_iso(d.get("start")),
            end=_from_iso(d.get("end")),
            vantage=d.get("vantage", "unknown"),
            vantage_reason=d.get("vantage_reason", ""),
            warnings=list(d.get("warnings", [])),
            error=d.get("error"),
            clients=[ClientVerdict.from_dict(c) for c in d.get("clients", [])],
        )


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def utc_datetime(t: float | None) -> _dt.datetime | None:
    """Epoch seconds as an aware UTC datetime; None when there is no time or it is no calendar date (before year 1
    or after 9999: a damaged pcapng timestamp or if_tsresol easily says year 586524, and datetime raises)."""
    if t is None:
        return None
    try:
        return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def _iso(t: float | None) -> str | None:
    when = utc_datetime(t)
    return None if when is None else when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _from_iso(s: str | None) -> float | None:
    if not s:
        return None
    return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
