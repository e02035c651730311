# SPDX-License-Identifier: GPL-2.0-or-later
"""Typed output of the merge stage: two captures of one incident (one near the Outlook client, one near the
Exchange server) lined up packet by packet.

The merge stage sits after correlate and before verdict: it needs each capture's packets (its own light pass over
the files, :mod:`analyzer.merge.packets`) and each capture's correlation (which datagrams are notifications, which
call reacted). It passes no judgement; :mod:`analyzer.verdict.transit` turns a :class:`MergeResult` into verdicts.
Nothing here holds packet bytes, so the reports can read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# MergeResult.status
MERGED = "merged"
NO_SHARED_PACKETS = "no_shared_packets"  # the captures have no packet in common: never merged
NO_TIME_OVERLAP = "no_time_overlap"  # their time spans cannot be made to overlap: never merged
NOT_READ = "not_read"  # one of the captures could not be read
SAME_CAPTURE = "same_capture"  # both are the same file: two views of one capture point tell nothing

# DatagramFate.fate
DELIVERED = "delivered"  # seen leaving the server and arriving at the client
LOST_IN_TRANSIT = "lost_in_transit"  # seen leaving the server; the client capture was running and never saw it
NOT_COVERED = "not_covered"  # seen leaving the server while the client capture was not running
ONLY_AT_CLIENT = "only_at_client"  # seen at the client only (the server capture missed it or was not running)
FATES = (DELIVERED, LOST_IN_TRANSIT, NOT_COVERED, ONLY_AT_CLIENT)


@dataclass
class ClockEstimate:
    """Client clock minus server clock, as a line in server time: ``offset_s + drift_ppm*1e-6*(t - ref_time)``.

    Each matched packet sent by the server bounds the offset from above (client time - server time = offset +
    one-way delay >= offset); each packet sent by the client bounds it from below (= offset - delay). The lower
    envelope of the first set and the upper envelope of the second are fitted as lines (robust to queueing, which
    only ever adds delay); the offset is their middle, which assumes the two directions' *minimum* delays are
    equal. ``offset_uncertainty_s`` is half the gap between the two lines (any asymmetry of the minimum delays
    hides in it) plus the spread of the points on the envelopes.
    """

    offset_s: float  # client clock - server clock at ref_time
    offset_uncertainty_s: float | None  # None: matched packets in one direction only (no delay bound)
    drift_ppm: float  # how fast the client clock runs against the server's, parts per million
    drift_uncertainty_ppm: float
    ref_time: float  # epoch seconds on the server clock (first matched packet)
    min_delay_server_to_client_s: float | None  # one-way, after removing the offset (symmetric by assumption)
    min_delay_client_to_server_s: float | None
    samples_server_to_client: int
    samples_client_to_server: int
    span_s: float  # server-clock time between the first and last matched packet

    def offset_at(self, server_time: float) -> float:
        return self.offset_s + self.drift_ppm * 1e-6 * (server_time - self.ref_time)

    def to_client(self, server_time: float) -> float:
        return server_time + self.offset_at(server_time)

    def to_server(self, client_time: float) -> float:
        # inverse of to_client; the drift term is tiny, so one fixed-point step is exact to well under 1 ns
        t = client_time - self.offset_s
        return client_time - self.offset_at(t)


@dataclass
class Rewrite:
    """One endpoint that a NAT between the capture points rewrote: what the server side saw vs the client side."""

    proto: str  # "tcp" | "udp"
    server_side: str  # "ip:port" as the server capture shows it ("ip" when only the address changed)
    client_side: str  # "ip:port" as the client capture shows it ("ip" when only the address changed)
    rewritten: str  # "address", "port" or "address and port"
    packets: int  # matched packets showing this mapping


@dataclass
class DatagramFate:
    """One UDP notification datagram (or a datagram from the server to the client's callback), both sides."""

    fate: str  # one of FATES
    client: str  # the client as the server capture sees it
    server_frame: int | None = None
    server_time: float | None = None  # epoch seconds, server clock
    server_src: str | None = None  # "ip:port" in the server capture
    server_dst: str | None = None
    client_frame: int | None = None
    client_time: float | None = None  # epoch seconds, client clock (as the client capture shows it)
    client_src: str | None = None  # "ip:port" in the client capture
    client_dst: str | None = None
    delay_s: float | None = None  # one-way delay, client time mapped to the server clock minus server time
    delay_uncertainty_s: float | None = None
    reaction_frame: int | None = None  # the client's call within 2 s (client capture), else the server capture's
    reaction_time: float | None = None  # epoch seconds, on the clock of the capture the frame is from
    reaction_side: str | None = None  # "client" | "server": which capture reaction_frame is in
    ip_id_matched: bool | None = None  # the IP ID agreed (None: not compared, e.g. NAT or IPv6)
    payload_hex: str | None = None  # first 32 bytes
    rewritten: str = ""  # "" or what a NAT rewrote for this datagram

    def server_time_of_client(self, clock: ClockEstimate | None) -> float | None:
        if self.client_time is None or clock is None:
            return None
        return clock.to_server(self.client_time)


@dataclass
class MergeResult:
    client_file: str  # the capture taken near the Outlook client
    server_file: str  # the capture taken near the Exchange server
    status: str  # MERGED | NO_SHARED_PACKETS | NO_TIME_OVERLAP | NOT_READ | SAME_CAPTURE
    message: str  # one line for the user: what was merged, or why not
    sides_reason: str = ""  # why client_file is the client side
    clock: ClockEstimate | None = None
    matched_tcp: int = 0  # TCP segments with payload seen in both captures
    matched_udp: int = 0
    tcp_only_server: int = 0  # TCP payload segments of the shared connections seen in one capture only
    tcp_only_client: int = 0
    rewrites: list[Rewrite] = field(default_factory=list)
    clients: list[tuple[str, str]] = field(default_factory=list)  # (as the server sees it, as the client sees it)
    datagrams: list[DatagramFate] = field(default_factory=list)
    client_span: tuple[float, float] | None = None  # client capture start/end, client clock
    server_span: tuple[float, float] | None = None
    overlap: tuple[float, float] | None = None  # on the server clock
    warnings: list[str] = field(default_factory=list)

    @property
    def merged(self) -> bool:
        return self.status == MERGED

    def fates(self, fate: str) -> list[DatagramFate]:
        return [d for d in self.datagrams if d.fate == fate]

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("client_span", "server_span", "overlap"):
            d[key] = None if d[key] is None else list(d[key])
        d["clients"] = [{"server_side": s, "client_side": c} for s, c in self.clients]
        return d


def merge_result_from_dict(d: dict) -> MergeResult:
    """Inverse of :meth:`MergeResult.to_dict` (the web service stores the JSON and re-renders reports from it)."""
    def pair(x):
        return None if x is None else tuple(x)
    clock = d.get("clock")
    return MergeResult(
        client_file=d["client_file"], server_file=d["server_file"], status=d["status"], message=d["message"],
        sides_reason=d.get("sides_reason", ""), clock=None if clock is None else ClockEstimate(**clock),
        matched_tcp=d.get("matched_tcp", 0), matched_udp=d.get("matched_udp", 0),
        tcp_only_server=d.get("tcp_only_server", 0), tcp_only_client=d.get("tcp_only_client", 0),
        rewrites=[Rewrite(**r) for r in d.get("rewrites", [])],
        clients=[(c["server_side"], c["client_side"]) for c in d.get("clients", [])],
        datagrams=[DatagramFate(**f) for f in d.get("datagrams", [])],
        client_span=pair(d.get("client_span")), server_span=pair(d.get("server_span")),
        overlap=pair(d.get("overlap")), warnings=list(d.get("warnings", [])))
