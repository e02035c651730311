"""Typed output of the correlate stage: what each Outlook client did, gathered from the events table.

The correlate stage only gathers and links (registration -> notification -> reaction, datagram -> ICMP error,
call -> prompted/unprompted); it passes no judgement. The verdict stage (analyzer.verdict) decides from these.

A *client* is a host that holds an EMSMDB (or AsyncEMSMDB) connection, identified by IP (IPv6 compressed form).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from analyzer.dissect.codes import AsyncFlags, RopId, Status, rop_id_text
from analyzer.dissect.emsmdb import ASYNC_EMSMDB, EMSMDB, AsyncEmsmdbOp, EmsmdbOp  # noqa: F401  (re-exported)

# Interface names, operations and codes come from the dissector's protocol tables (analyzer.dissect.interfaces,
# analyzer.dissect.emsmdb, analyzer.dissect.codes): the numbers are written once, there.
CONNECT_OPNUMS = (EmsmdbOp.EcDoConnect, EmsmdbOp.EcDoConnectEx)
# The calls a polling client makes: an (empty) ROP transport call, or the keep-alive EcDummyRpc.
POLL_OPNUMS = (EmsmdbOp.EcDoRpc, EmsmdbOp.EcDoRpcExt2, EmsmdbOp.EcDummyRpc)
# The calls that carry ROPs (a poll's fetches)
ROP_OPNUMS = (EmsmdbOp.EcDoRpc, EmsmdbOp.EcDoRpcExt2)

ASYNC_FLAG_NOTIFICATION_PENDING = AsyncFlags.NotificationPending
# RopNotify and RopPending as they appear in the events' rop_ids column (lower-case hex) -> their names
ROP_NOTIFY_PENDING_NAMES = {rop_id_text(rop): rop.name for rop in (RopId.RopNotify, RopId.RopPending)}
ROP_NOTIFY_PENDING = frozenset(ROP_NOTIFY_PENDING_NAMES)
EC_REJECTED = Status.ecRejected  # EcDoAsyncConnectEx answer of Exchange 2007 meaning "poll or use push instead"

# A datagram or async completion "prompts" the client's calls that start within this many seconds (issue 3).
PROMPT_WINDOW_S = 2.0
# Calls of one client closer than this to the previous call belong to the same burst (one poll plus the
# fetches it triggers); only the first call of a burst counts as a poll when measuring the polling period.
BURST_GAP_S = 2.0

# How each PDU's interface was learnt (the events' interface_source column), most trusted first (issue 9):
# negotiated on the connection itself, then the server's endpoint mapper naming the endpoint, then a bind on another
# connection to the same server endpoint, then the EMSMDB stub layout alone.
INTERFACE_SOURCES = ("bind", "alter_context", "epm", "endpoint", "stub_shape")
# A client's push datagrams carry its registered rgbContext and nothing else, at most 16 bytes (cbContext > 16 is
# refused with ecTooBig, MS-OXCRPC; docs/protocol.md §1.7, §1.9).
MAX_CONTEXT_BYTES = 16


@dataclass
class Connection:
    conn: int | None  # TCP connection index (events' `conn`)
    client: str
    client_port: int | None
    server: str
    server_port: int | None
    interface: str  # EMSMDB or AsyncEMSMDB
    first_frame: int
    first_time: float
    bind_frame: int | None = None  # bind/alter_context offering the interface on this connection (session start)
    # how the interface of this connection's PDUs was learnt (one of INTERFACE_SOURCES, the most trusted seen on
    # it); None when the events do not say (a dissector without the interface_source column) and no bind is seen
    interface_source: str | None = None


@dataclass
class Registration:
    """One EcRRegisterPushNotification call (EMSMDB opnum 4) of a client."""

    frame: int
    time: float
    server: str
    conn: int | None
    call_id: int | None
    callback: str | None = None  # "ip:port" / "[ipv6]:port"; None when the stub is encrypted or undecodable
    callback_ip: str | None = None
    callback_port: int | None = None
    context_hex: str | None = None
    advise_bits: int | None = None
    encrypted: bool = False
    response_frame: int | None = None
    response_time: float | None = None
    status: int | None = None  # return value; None when not captured or hidden by packet privacy
    fault_frame: int | None = None
    fault_time: float | None = None
    fault_status: int | None = None  # DCE/RPC fault status when the call faulted

    def callback_differs_from(self, client_ip: str) -> bool:
        """The registered callback is another address of the same family than the one the capture sees the
        client use: the server will send the datagram somewhere the client is not (NAT, VPN)."""
        if not self.callback_ip or self.callback_ip == client_ip:
            return False
        return (":" in self.callback_ip) == (":" in client_ip)


@dataclass
class Notification:
    """A UDP datagram from the client's Exchange server that is a push notification for this client."""

    frame: int
    time: float
    src: str
    sport: int | None
    dst: str
    dport: int | None
    payload_hex: str | None
    # "context" | "port" (the registration's), "timing" (the client called at once), "pattern" (no registration:
    # two or more datagrams of one flow carrying the same few bytes), "icmp" (quoted by an ICMP error)
    matched_by: str
    registration_frame: int | None = None  # the opnum 4 request it belongs to, when matched by context/port
    reaction_frame: int | None = None  # first EMSMDB request of the client within PROMPT_WINDOW_S after it
    reaction_time: float | None = None
    icmp_frames: list[int] = field(default_factory=list)  # ICMP errors quoting this datagram
    # A call within PROMPT_WINDOW_S after the datagram that falls on the client's poll schedule while most datagrams
    # of the same flow are ignored: a poll, not a reaction (reaction_frame is then None)
    coincident_poll_frame: int | None = None
    coincident_poll_time: float | None = None

    @property
    def flow(self) -> tuple:
        """(server, client address, client port): the datagrams of one registration."""
        return (self.src, self.dst, self.dport)


@dataclass
class IcmpError:
    frame: int
    time: float
    src: str  # who reported the error (a router, a firewall, the client)
    dst: str
    icmp_type: int | None
    icmp_code: int | None
    quoted_src: str | None
    quoted_dst: str | None
    quoted_sport: int | None
    quoted_dport: int | None
    notification_frame: int | None = None  # the captured datagram it quotes, if any


@dataclass
class RpcCall:
    """One EMSMDB or AsyncEMSMDB request of the client, with its answer."""

    frame: int
    time: float
    conn: int | None
    interface: str
    opnum: int | None
    opname: str | None
    call_id: int | None
    stub_len: int | None
    encrypted: bool
    response_frame: int | None = None
    response_time: float | None = None
    response_len: int | None = None
    status: int | None = None
    fault_status: int | None = None
    rop_ids: str | None = None  # of the response
    prompted: bool = False
    prompted_by: int | None = None  # frame of the notification / async completion that prompted it
    burst_start: bool = True  # first call of a burst (see BURST_GAP_S)

    @property
    def is_poll_candidate(self) -> bool:
        return self.interface == EMSMDB and self.opnum in POLL_OPNUMS


@dataclass
class AsyncWait:
    """An EcDoAsyncWaitEx (AsyncEMSMDB opnum 0) call: outstanding from request until its completion."""

    frame: int
    time: float
    completion_frame: int | None = None
    completion_time: float | None = None
    flags: int | None = None  # pulFlagsOut: 1 = NotificationPending
    status: int | None = None


@dataclass
class MailEvidence:
    frame: int
    time: float
    what: str  # one line


@dataclass
class ClientActivity:
    client: str
    server: str  # the Exchange server it talks EMSMDB to most
    servers: list[str] = field(default_factory=list)  # every EMSMDB/AsyncEMSMDB server of this client
    mailbox: str | None = None  # user DN from EcDoConnect(Ex), when readable
    connections: list[Connection] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    unmatched_udp: list[Notification] = field(default_factory=list)  # server -> client datagrams that match nothing
    icmp_errors: list[IcmpError] = field(default_factory=list)
    calls: list[RpcCall] = field(default_factory=list)  # EMSMDB + AsyncEMSMDB requests, in frame order
    async_waits: list[AsyncWait] = field(default_factory=list)
    mail_evidence: list[MailEvidence] = field(default_factory=list)
    connect_calls: list[RpcCall] = field(default_factory=list)  # EcDoConnect / EcDoConnectEx
    async_connect_calls: list[RpcCall] = field(default_factory=list)  # EcDoAsyncConnectEx
    poll_max_ms: int | None = None  # pcmsPollsMax advertised by the server
    session_start_captured: bool = False  # EMSMDB bind or EcDoConnect(Ex) of the client is in the capture
    logon_time: float | None = None
    first_time: float | None = None  # first EMSMDB/AsyncEMSMDB event of the client
    last_time: float | None = None
    encrypted: bool = False  # some EMSMDB stub of the client is hidden by packet privacy
    all_encrypted: bool = False  # every EMSMDB request stub of the client is hidden
    decrypted: bool = False  # some stub of the client was sealed (packet privacy) and decrypted with --secrets

    @property
    def interface_source(self) -> str | None:
        """What identified the client's MAPI interface: the most trusted source over its connections."""
        seen = [c.interface_source for c in self.connections if c.interface_source in INTERFACE_SOURCES]
        return min(seen, key=INTERFACE_SOURCES.index) if seen else None

    @property
    def prompted_calls(self) -> list[RpcCall]:
        return [c for c in self.calls if c.prompted]

    @property
    def unprompted_calls(self) -> list[RpcCall]:
        return [c for c in self.calls if not c.prompted and c.interface == EMSMDB]

    @property
    def polls(self) -> list[RpcCall]:
        """Unprompted poll calls that start a burst: the client checking for news on its own."""
        return [c for c in self.calls if c.is_poll_candidate and not c.prompted and c.burst_start]

    poll_intervals: list[float] = field(default_factory=list)  # seconds between consecutive polls
    poll_interval_s: float | None = None  # median of poll_intervals
    poll_interval_spread_s: float | None = None  # interquartile range of poll_intervals

    @property
    def server_poll_interval_s(self) -> float | None:
        return None if self.poll_max_ms is None else self.poll_max_ms / 1000.0


@dataclass
class CorrelationResult:
    vantage: str  # client | server | between | unknown
    vantage_reason: str
    clients: list[ClientActivity] = field(default_factory=list)  # sorted by IP
    start: float | None = None
    end: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return max(0.0, self.end - self.start)
