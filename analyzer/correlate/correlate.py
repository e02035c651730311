"""events + CaptureInfo -> CorrelationResult: per Outlook client, everything the verdict needs, linked up.

One pass sorts events by kind; the per-client work is then linear in the client's own events. Nothing here
reads packet bytes: the events table (analyzer.dissect.model) is the only input besides CaptureInfo.
"""

from __future__ import annotations

import bisect
import functools
import operator
import ipaddress
import statistics
from collections import defaultdict

from analyzer.correlate.model import (
    ASYNC_EMSMDB,
    ASYNC_FLAG_NOTIFICATION_PENDING,
    BURST_GAP_S,
    CONNECT_OPNUMS,
    EMSMDB,
    INTERFACE_SOURCES,
    MAX_CONTEXT_BYTES,
    PROMPT_WINDOW_S,
    ROP_NOTIFY_PENDING,
    ROP_NOTIFY_PENDING_NAMES,
    ROP_OPNUMS,
    AsyncEmsmdbOp,
    EmsmdbOp,
    AsyncWait,
    ClientActivity,
    Connection,
    CorrelationResult,
    IcmpError,
    MailEvidence,
    Notification,
    Registration,
    RpcCall,
)

MAPI_INTERFACES = (EMSMDB, ASYNC_EMSMDB)
VANTAGE_CHOICES = ("auto", "client", "server", "between", "unknown")

# A poll answer counts as "much larger than an empty one" when it is at least this many times the smallest poll
# answer of the session and this many bytes above it (an empty EcDoRpcExt2 answer is a few dozen bytes; a RopNotify
# with a new-mail notification adds well over a hundred). The smallest, not the median: an engineer who sends a test
# message every minute makes most polls carry mail (issue 9).
LARGE_ANSWER_FACTOR = 3.0
LARGE_ANSWER_MIN_EXTRA = 100
# A poll is an empty ROP request: a call counts as poll-shaped when its request stub is at most this many bytes
# longer than the client's smallest poll-candidate request (a real Outlook 2002 capture: empty EcDoRpc polls of
# 38 bytes, the same poll with an extra ROP 52; user actions start with 60 bytes and more).
POLL_REQUEST_SLACK = 16
# A call within the prompt window of a datagram "falls on the poll schedule" when it comes this close (as a
# fraction of the client's polling period) to where the next poll was due.
POLL_SCHEDULE_TOLERANCE = 0.25


def split_endpoint(text: str | None) -> tuple[str | None, int | None]:
    """"1.2.3.4:1234" / "[2001:db8::5]:1234" -> (ip, port); anything unreadable -> (None, None)."""
    if not text:
        return None, None
    try:
        if text.startswith("["):
            host, _, port = text[1:].partition("]:")
        else:
            host, _, port = text.rpartition(":")
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None, None


_FRAME_TIME = operator.attrgetter("frame", "time")  # the events' order (a C getter: a lambda costs ~3x here)


@functools.lru_cache(maxsize=65536)
def _ip_key(ip: str):
    # cached: the same server addresses are sorted once per client (2,865 parses for 1,000 clients on the
    # benchmark capture, each a few microseconds in ipaddress)
    try:
        a = ipaddress.ip_address(ip)
        return (a.version, int(a))
    except ValueError:
        return (9, ip)


def correlate(events, info, vantage: str = "auto") -> CorrelationResult:
    """Gather per-client activity from the events table. ``vantage`` "client"/"server" overrides inference."""
    events = sorted(events, key=_FRAME_TIME)
    warnings: list[str] = []
    if vantage not in VANTAGE_CHOICES:
        warnings.append(f"unknown vantage {vantage!r}; inferring it from the capture instead")
        vantage = "auto"

    clients = _find_clients(events)
    # Index datagrams by destination and ICMP errors by the quoted destination, so each client looks only at
    # its own (a server-side capture can hold a thousand clients).
    udp_by_dst: dict[str, list] = defaultdict(list)
    icmp_by_quoted_dst: dict[str, list] = defaultdict(list)
    icmp = []
    rpc_peers: dict[str, set] = defaultdict(set)  # host -> hosts it exchanges DCE/RPC PDUs with (any interface)
    udp_flows: set = set()  # (src, sport, dst) of every datagram: tells one-way push from two-way UDP protocols
    for e in events:
        if e.kind == "udp":
            udp_by_dst[e.dst].append(e)
            udp_flows.add((e.src, e.sport, e.dst))
        elif e.kind == "icmp_unreachable":
            icmp_by_quoted_dst[e.quoted_dst].append(e)
            icmp.append(e)
        elif e.src != e.dst:
            rpc_peers[e.src].add(e.dst)
            rpc_peers[e.dst].add(e.src)
    claimed_udp: set[int] = set()  # id() of datagrams already given to a client
    result_clients = []
    for ip in sorted(clients, key=_ip_key):
        activity = _build_client(ip, clients[ip], events)
        targets = {ip} | {r.callback_ip for r in activity.registrations if r.callback_ip}
        _match_notifications(activity, sorted((e for t in targets for e in udp_by_dst.get(t, ())),
                                              key=lambda e: e.frame), claimed_udp, rpc_peers.get(ip, set()),
                             udp_flows)
        _match_icmp(activity, sorted((e for t in targets for e in icmp_by_quoted_dst.get(t, ())),
                                     key=lambda e: e.frame))
        _classify_calls(activity)
        _coincident_polls(activity)
        _poll_statistics(activity)
        _mail_evidence(activity)
        result_clients.append(activity)

    start = info.start if getattr(info, "start", None) is not None else (events[0].time if events else None)
    end = info.end if getattr(info, "end", None) is not None else (events[-1].time if events else None)
    if vantage in ("client", "server", "between", "unknown") and vantage != "auto":
        v, reason = vantage, f"set by the user (--vantage {vantage})"
    else:
        v, reason = infer_vantage(result_clients, icmp)
    return CorrelationResult(vantage=v, vantage_reason=reason, clients=result_clients, start=start, end=end,
                             warnings=warnings)


# ---------------------------------------------------------------------------------------------------------------
# clients and their calls


def _find_clients(events) -> dict[str, list]:
    """IP -> that client's MAPI events (binds/alter_contexts it sent, its requests, the answers it got)."""
    per_client: dict[str, list] = defaultdict(list)
    for e in events:
        if e.interface not in MAPI_INTERFACES:
            continue
        if e.kind in ("request", "bind", "alter_context"):
            per_client[e.src].append(e)
        elif e.kind in ("response", "fault", "bind_ack", "alter_context_resp", "bind_nak"):
            per_client[e.dst].append(e)
    # A client sent a bind or a request. A host that only received answers counts too (one-way capture of the
    # server's side), unless it is itself somebody's server.
    senders = {ip for ip, evs in per_client.items() if any(e.kind in ("request", "bind", "alter_context") for e in evs)}
    servers = {e.dst for ip in senders for e in per_client[ip] if e.kind in ("request", "bind", "alter_context")}
    return {ip: evs for ip, evs in per_client.items() if ip in senders or ip not in servers}


def _build_client(ip: str, evs: list, all_events) -> ClientActivity:
    # The loop below runs once per MAPI event of the client (26,000 times on the 1,000-client benchmark capture):
    # event attributes are read once into locals and the per-kind tests are plain string comparisons.
    server_count: dict = {}
    conns: dict = {}
    calls: list[RpcCall] = []
    pending: dict = {}  # (conn, call_id) -> RpcCall waiting for its answer
    by_request_frame: dict = {}
    registrations: list[Registration] = []
    reg_by_call: dict[int, Registration] = {}
    async_flags: dict[int, int | None] = {}  # id(call) -> pulFlagsOut of its EcDoAsyncWaitEx answer
    mailbox = None
    poll_max = None
    session_start = False
    logon_time = None
    for e in evs:
        src, interface, kind, conn_index = e.src, e.interface, e.kind, e.conn
        outbound = src == ip
        server = e.dst if outbound else src
        server_count[server] = server_count.get(server, 0) + 1
        if conn_index is not None:
            key = (conn_index, interface)
        else:
            key = (server, e.dport if outbound else e.sport, interface)
        conn = conns.get(key)
        if conn is None:
            conn = conns[key] = Connection(conn=conn_index, client=ip, client_port=e.sport if outbound else e.dport,
                                           server=server, server_port=e.dport if outbound else e.sport,
                                           interface=interface, first_frame=e.frame, first_time=e.time)
        source = getattr(e, "interface_source", None)
        if source is not None and source != conn.interface_source:  # (the call only when it may change)
            _note_interface_source(conn, source)
        if outbound:
            if kind == "request":
                call = RpcCall(e.frame, e.time, conn_index, interface, e.opnum, e.opname, e.call_id, e.stub_len,
                               bool(e.encrypted))
                calls.append(call)
                pending[(conn_index, e.call_id)] = call
                by_request_frame.setdefault(e.frame, call)
                if interface == EMSMDB:
                    opnum = e.opnum
                    if opnum in CONNECT_OPNUMS:
                        session_start = True
                        logon_time = e.time if logon_time is None else min(logon_time, e.time)
                        if e.user_dn and not mailbox:
                            mailbox = e.user_dn
                    if opnum == EmsmdbOp.EcRRegisterPushNotification:
                        cb_ip, cb_port = split_endpoint(e.callback)
                        reg = Registration(frame=e.frame, time=e.time, server=server, conn=conn_index,
                                           call_id=e.call_id, callback=e.callback, callback_ip=cb_ip,
                                           callback_port=cb_port, context_hex=(e.context_hex or None),
                                           advise_bits=e.advise_bits, encrypted=bool(e.encrypted))
                        registrations.append(reg)
                        reg_by_call[id(call)] = reg
            elif kind == "bind" or kind == "alter_context":
                conn.bind_frame = conn.bind_frame or e.frame
                # the connection negotiated the interface in the capture, whatever the dissector says of other PDUs
                _note_interface_source(conn, kind)
                if interface == EMSMDB:
                    session_start = True
                    logon_time = e.time if logon_time is None else logon_time
        elif kind == "response" or kind == "fault":
            call = pending.pop((conn_index, e.call_id), None)
            if call is None and e.request_frame is not None:
                call = by_request_frame.get(e.request_frame)
            if call is None:
                continue  # answer to a request sent before the capture started
            call.response_frame, call.response_time = e.frame, e.time
            call.response_len = e.stub_len
            if kind == "fault":
                call.fault_status = e.status
            else:
                call.status = e.status
                call.rop_ids = e.rop_ids
                async_flags[id(call)] = e.async_flags
            if e.poll_max_ms:
                poll_max = e.poll_max_ms
            if reg_by_call:
                reg = reg_by_call.get(id(call))
                if reg is not None:
                    if kind == "fault":
                        reg.fault_frame, reg.fault_time, reg.fault_status = e.frame, e.time, e.status
                    else:
                        reg.response_frame, reg.response_time = e.frame, e.time
                        reg.status = None if e.encrypted else e.status
                        # Packet privacy hides the return value; a fault or the behaviour that follows must tell.
                        reg.encrypted = reg.encrypted or bool(e.encrypted)
    calls.sort(key=lambda c: (c.frame, c.time))
    emsmdb_calls = [c for c in calls if c.interface == EMSMDB]
    activity = ClientActivity(
        client=ip,
        # the most frequent; the first seen among equals (as Counter.most_common)
        server=max(server_count, key=server_count.__getitem__) if server_count else "",
        servers=sorted(server_count, key=_ip_key),
        mailbox=mailbox,
        connections=sorted(conns.values(), key=lambda c: c.first_frame),
        registrations=registrations,
        calls=calls,
        connect_calls=[c for c in emsmdb_calls if c.opnum in CONNECT_OPNUMS],
        async_connect_calls=[c for c in emsmdb_calls if c.opnum == EmsmdbOp.EcDoAsyncConnectEx],
        poll_max_ms=poll_max,
        session_start_captured=session_start,
        logon_time=logon_time,
        first_time=evs[0].time if evs else None,
        last_time=evs[-1].time if evs else None,
        encrypted=any(c.encrypted for c in calls),
        all_encrypted=bool(emsmdb_calls) and all(c.encrypted for c in emsmdb_calls),
        decrypted=any(e.decrypted for e in evs),
    )
    activity.async_waits = [
        AsyncWait(frame=c.frame, time=c.time, completion_frame=c.response_frame, completion_time=c.response_time,
                  flags=async_flags.get(id(c)), status=c.status)
        for c in calls if c.interface == ASYNC_EMSMDB and c.opnum == AsyncEmsmdbOp.EcDoAsyncWaitEx
    ]
    return activity


def _note_interface_source(conn: Connection, source: str | None) -> None:
    """Keep the most trusted way the connection's interface was learnt."""
    if source not in INTERFACE_SOURCES:
        return
    if conn.interface_source is None or INTERFACE_SOURCES.index(source) < INTERFACE_SOURCES.index(
            conn.interface_source):
        conn.interface_source = source


# ---------------------------------------------------------------------------------------------------------------
# notifications and ICMP


def _match_notifications(a: ClientActivity, udp, claimed: set[int], rpc_peers=frozenset(),
                         udp_flows=frozenset()) -> None:
    """Give this client the UDP datagrams from its Exchange server(s) toward it or its callback address.

    Matching order (issues 3 and 9): registered context bytes, then the registered callback port, then timing (an
    EMSMDB call from the client within PROMPT_WINDOW_S), then the notification pattern, which needs no registration:
    two or more datagrams from a host the client talks DCE/RPC to, to one client port >= 1024, all carrying the same
    few bytes (at most MAX_CONTEXT_BYTES), and no datagram back from that port (push is one-way). Datagrams from any
    other host are never notifications.
    """
    servers = set(a.servers)
    senders = servers | set(rpc_peers)
    callback_ips = {r.callback_ip for r in a.registrations if r.callback_ip}
    targets = {a.client} | callback_ips
    by_context = {r.context_hex.lower(): r for r in a.registrations if r.context_hex}
    by_port = {}
    for r in a.registrations:
        if r.callback_port is not None:
            by_port.setdefault((r.callback_ip, r.callback_port), r)
    emsmdb = sorted((c.time, c.frame) for c in a.calls if c.interface == EMSMDB)
    emsmdb_times = [t for t, _ in emsmdb]
    emsmdb_frames = [f for _, f in emsmdb]
    unregistered: dict[tuple, list] = defaultdict(list)  # flow -> [(event, Notification)] not bound to a registration
    for e in udp:
        if id(e) in claimed or e.src not in senders or e.dst not in targets:
            continue
        payload = (e.context_hex or "").lower()
        reg, how = None, None
        if e.src in servers:
            if payload and payload in by_context:
                reg, how = by_context[payload], "context"
            elif (e.dst, e.dport) in by_port:
                reg, how = by_port[(e.dst, e.dport)], "port"
            elif e.dst == a.client and e.dport in {p for (_, p) in by_port}:
                reg, how = next(r for (_, p), r in by_port.items() if p == e.dport), "port"
        # the reaction: the client's first EMSMDB request after the datagram, within the prompt window
        i = bisect.bisect_left(emsmdb_times, e.time)
        while i < len(emsmdb) and emsmdb_frames[i] < e.frame:
            i += 1  # same timestamp but earlier in the file: not a reaction
        reaction = None
        if i < len(emsmdb) and emsmdb_times[i] - e.time <= PROMPT_WINDOW_S:
            reaction = i
        if how is None and reaction is not None and e.dst == a.client and e.src in servers:
            how = "timing"
        n = Notification(frame=e.frame, time=e.time, src=e.src, sport=e.sport, dst=e.dst, dport=e.dport,
                         payload_hex=e.context_hex, matched_by=how or "none",
                         registration_frame=reg.frame if reg else None)
        if reaction is not None:
            n.reaction_frame, n.reaction_time = emsmdb_frames[reaction], emsmdb_times[reaction]
        if reg is not None:
            claimed.add(id(e))
            a.notifications.append(n)
        else:
            unregistered[n.flow].append((e, n))
    for flow, members in unregistered.items():
        pattern = _is_push_pattern(members, udp_flows)
        for e, n in members:
            if pattern:  # the flow as a whole is what identifies them (a call right after may be a poll)
                n.matched_by = "pattern"
            if n.matched_by != "none":
                claimed.add(id(e))
                a.notifications.append(n)
            elif n.src in servers:
                a.unmatched_udp.append(n)
    a.notifications.sort(key=lambda n: n.frame)
    a.unmatched_udp.sort(key=lambda n: n.frame)


def _payload_len(e) -> int | None:
    if e.stub_len is not None:
        return e.stub_len
    return len(e.context_hex) // 2 if e.context_hex else None


def _is_push_pattern(members, udp_flows) -> bool:
    """Datagrams of one flow (server -> client port) look like push notifications of a registration not in the
    capture: at least two, the same few bytes each time, to a port >= 1024, and nothing sent back from that port."""
    if len(members) < 2:
        return False  # "the same bytes each time" needs more than one time
    first = members[0][0]
    if first.dport is None or first.dport < 1024:
        return False
    if len({(e.context_hex or "").lower() for e, _ in members}) != 1 or not first.context_hex:
        return False
    if any((_payload_len(e) or 0) > MAX_CONTEXT_BYTES for e, _ in members):
        return False
    return (first.dst, first.dport, first.src) not in udp_flows


def _match_icmp(a: ClientActivity, icmp) -> None:
    """ICMP errors that quote a datagram from the client's server to the client or its callback address."""
    servers = set(a.servers)
    targets = {a.client} | {r.callback_ip for r in a.registrations if r.callback_ip}
    callback_ports = {r.callback_port for r in a.registrations if r.callback_port is not None}
    datagrams = a.notifications + a.unmatched_udp
    for e in icmp:
        if e.quoted_src not in servers or e.quoted_dst not in targets:
            continue
        if e.quoted_dport is not None and e.quoted_dport < 1024:
            continue  # not a push datagram (those go to ports >= 1024)
        quoted = None
        for n in datagrams:
            if (n.src, n.sport, n.dst, n.dport) == (e.quoted_src, e.quoted_sport, e.quoted_dst, e.quoted_dport) \
                    and n.time <= e.time + 0.001:
                quoted = n  # latest matching datagram before the error
        if quoted is None and callback_ports and e.quoted_dport not in callback_ports:
            continue  # quotes some other UDP flow to the client
        err = IcmpError(frame=e.frame, time=e.time, src=e.src, dst=e.dst, icmp_type=e.icmp_type,
                        icmp_code=e.icmp_code, quoted_src=e.quoted_src, quoted_dst=e.quoted_dst,
                        quoted_sport=e.quoted_sport, quoted_dport=e.quoted_dport,
                        notification_frame=quoted.frame if quoted else None)
        if quoted is not None:
            quoted.icmp_frames.append(e.frame)
            if quoted in a.unmatched_udp:  # an error quoting it makes it a (failed) notification attempt
                a.unmatched_udp.remove(quoted)
                quoted.matched_by = "icmp"
                a.notifications.append(quoted)
                a.notifications.sort(key=lambda n: n.frame)
        a.icmp_errors.append(err)


# ---------------------------------------------------------------------------------------------------------------
# prompted / unprompted calls, polling period, mail evidence


def _classify_calls(a: ClientActivity) -> None:
    prompts = sorted([(n.time, n.frame) for n in a.notifications]
                     + [(w.completion_time, w.completion_frame) for w in a.async_waits
                        if w.completion_time is not None])
    prompt_times = [t for t, _ in prompts]
    # Bursts and polls are per connection: each EMSMDB session (a mailbox, a public-folder or delegate store on
    # another server) polls on its own schedule, and a poll of one must not hide the other's.
    last_time: dict = {}
    burst_prompted_by: dict = {}
    for c in a.calls:
        if c.interface != EMSMDB:
            continue  # AsyncEMSMDB waits have their own lane; they are neither polls nor reactions
        c.burst_start = c.conn not in last_time or c.time - last_time[c.conn] > BURST_GAP_S
        i = bisect.bisect_right(prompt_times, c.time) - 1
        if i >= 0 and c.time - prompt_times[i] <= PROMPT_WINDOW_S:
            c.prompted, c.prompted_by = True, prompts[i][1]
            if c.burst_start:
                burst_prompted_by[c.conn] = prompts[i][1]
        elif not c.burst_start and burst_prompted_by.get(c.conn) is not None:
            # the rest of a burst that a notification started (fetching the new message) is prompted too
            c.prompted, c.prompted_by = True, burst_prompted_by[c.conn]
        if c.burst_start and not c.prompted:
            burst_prompted_by[c.conn] = None
        last_time[c.conn] = c.time


def _coincident_polls(a: ClientActivity) -> None:
    """A call within the prompt window of a datagram is a poll, not a reaction, when it falls where the client's
    next poll was due while the other datagrams of the same flow get no reaction (issues 3 and 9).

    Only flows where reactions are not the majority are looked at: a client that gets its datagrams reacts to each.
    The call is then unprompted again (with the rest of its burst), so polling statistics and mail evidence see it.
    """
    flows: dict[tuple, list[Notification]] = defaultdict(list)
    for n in a.notifications:
        flows[n.flow].append(n)
    calls_by_frame = {c.frame: c for c in a.calls}
    for members in flows.values():
        reacted = [n for n in members if n.reaction_frame is not None]
        if not reacted or len(reacted) * 2 > len(members):
            continue
        for n in reacted:
            call = calls_by_frame.get(n.reaction_frame)
            if call is None or not call.is_poll_candidate or not _on_poll_schedule(a, call):
                continue
            n.coincident_poll_frame, n.coincident_poll_time = n.reaction_frame, n.reaction_time
            n.reaction_frame = n.reaction_time = None
            for c in a.calls:  # the call and the rest of its burst were prompted by this datagram
                if c.prompted_by == n.frame and c.time >= call.time:
                    c.prompted, c.prompted_by = False, None


def _on_poll_schedule(a: ClientActivity, call: RpcCall) -> bool:
    """The call comes about one polling period after the previous poll (or before the next one)."""
    polls = [c.time for c in a.polls if c is not call and c.conn == call.conn]
    intervals = [b - t for t, b in zip(polls, polls[1:])]
    # the period: the client's own single-period gaps (where this call was, the gap spans two periods), else the
    # server's pcmsPollsMax
    single = [i for i in intervals if intervals and i <= 1.5 * min(intervals)]
    period = statistics.median(single) if single else a.server_poll_interval_s
    if not period:
        return False
    before = [t for t in polls if t < call.time]
    after = [t for t in polls if t > call.time]
    gaps = ([call.time - before[-1]] if before else []) + ([after[0] - call.time] if after else [])
    return any(abs(g - period) <= POLL_SCHEDULE_TOLERANCE * period for g in gaps)


def _poll_statistics(a: ClientActivity) -> None:
    """Seconds between consecutive polls of the same connection, in the order of the later poll."""
    last: dict = {}
    intervals = []
    for c in a.polls:
        if c.conn in last:
            intervals.append(c.time - last[c.conn])
        last[c.conn] = c.time
    a.poll_intervals = intervals
    if intervals:
        a.poll_interval_s = statistics.median(intervals)
        if len(intervals) >= 2:
            q = statistics.quantiles(intervals, n=4, method="inclusive")
            a.poll_interval_spread_s = q[2] - q[0]
        else:
            a.poll_interval_spread_s = 0.0


@functools.lru_cache(maxsize=4096)
def _rop_set(rop_ids: str | None) -> frozenset:
    """The ROP ids of an answer ("6e,2a") as a set of lower-case names; a capture repeats a few such lists."""
    return frozenset(r.strip().lower() for r in (rop_ids or "").split(",") if r.strip())


def _mail_evidence(a: ClientActivity) -> None:
    """Signs that mail (or another event) arrived for the client, whether or not a datagram announced it.

    Besides RopNotify/RopPending in an answer and a completed EcDoAsyncWaitEx, a poll (an unprompted, poll-shaped
    call starting a burst) is mail-arrival evidence when either its answer is well above the smallest poll answers
    of the session (not the median: most polls may carry mail), or more ROP calls follow it at once (the client
    fetching the message). Both work when the ROP buffer cannot be read (compressed, packet privacy).
    """
    found: dict[int, MailEvidence] = {}
    emsmdb = [c for c in a.calls if c.interface == EMSMDB]
    smallest_request: dict = {}  # opnum -> smallest request stub
    for c in emsmdb:
        if c.stub_len is not None:
            smallest_request[c.opnum] = min(smallest_request.get(c.opnum, c.stub_len), c.stub_len)
    polls = [c for c in emsmdb if c.is_poll_candidate and c.burst_start
             and (c.stub_len is None or c.stub_len <= smallest_request[c.opnum] + POLL_REQUEST_SLACK)]
    smallest: dict = {}  # opnum -> smallest poll answer
    for c in polls:
        if c.response_len and c.fault_status is None and c.status in (None, 0):
            smallest[c.opnum] = min(smallest.get(c.opnum, c.response_len), c.response_len)
    poll_ids = {id(c) for c in polls}
    for idx, c in enumerate(emsmdb):
        rops = _rop_set(c.rop_ids)
        if c.response_frame is not None and rops & ROP_NOTIFY_PENDING:
            names = " and ".join(n for r, n in ROP_NOTIFY_PENDING_NAMES.items() if r in rops)
            found[c.response_frame] = MailEvidence(c.response_frame, c.response_time,
                                                   f"{names} in the answer to {c.opname or 'the call'}"
                                                   f" (frame {c.frame}): the server has events queued")
            continue
        if id(c) not in poll_ids:
            continue
        base = smallest.get(c.opnum)
        large = (base is not None and c.response_len is not None and c.fault_status is None
                 and c.response_len >= base * LARGE_ANSWER_FACTOR and c.response_len - base >= LARGE_ANSWER_MIN_EXTRA)
        done = c.response_time if c.response_time is not None else c.time
        fetches = []
        if not c.prompted:  # a prompted call's followers are the reaction to the datagram, not a poll's finding
            for nxt in emsmdb[idx + 1:]:  # the rest of the poll's burst, starting at once after its answer
                if nxt.conn != c.conn:
                    if nxt.time - done > PROMPT_WINDOW_S + BURST_GAP_S * len(fetches):
                        break  # bursts end within BURST_GAP_S of each call: nothing of this one is left
                    continue  # fetched over the session that polled
                if nxt.burst_start or (not fetches and nxt.time - done > PROMPT_WINDOW_S):
                    break
                if nxt.opnum in ROP_OPNUMS:
                    fetches.append(nxt)
        if not large and not fetches:
            continue
        what = _name_of(c)
        if large:
            what = f"answer of {c.response_len} bytes to {what} (smallest poll answer {base})"
        if fetches:
            what += (f" followed at once by {len(fetches)} more call(s) (frame {fetches[0].frame}"
                     + (f"-{fetches[-1].frame}" if len(fetches) > 1 else "") + ")")
        what += ": the client finding new mail by polling" if fetches else ": the server has events queued"
        frame = c.response_frame if c.response_frame is not None else c.frame
        found[frame] = MailEvidence(frame, c.response_time if c.response_frame is not None else c.time, what)
    for w in a.async_waits:
        if w.flags is not None and w.flags & ASYNC_FLAG_NOTIFICATION_PENDING and w.completion_frame is not None:
            found[w.completion_frame] = MailEvidence(w.completion_frame, w.completion_time,
                                                     "EcDoAsyncWaitEx completed with NotificationPending")
    a.mail_evidence = sorted(found.values(), key=lambda m: m.frame)


def _name_of(c: RpcCall) -> str:
    return f"{c.opname or f'opnum {c.opnum}'} (frame {c.frame})"


# ---------------------------------------------------------------------------------------------------------------
# vantage


def _is_private(ip: str | None) -> bool:
    try:
        return ipaddress.ip_address(ip).is_private
    except (TypeError, ValueError):
        return False


def infer_vantage(clients: list[ClientActivity], icmp) -> tuple[str, str]:
    """Where was the capture taken? Uses only what the events show (no TTLs): NAT mismatch, how many clients
    share the capture, who sent the ICMP errors, whether datagrams were seen and answered."""
    if not clients:
        return "unknown", "no Outlook client in the capture"
    nat = [(a, r) for a in clients for r in a.registrations if r.callback_differs_from(a.client)]
    if nat:
        a, r = nat[0]
        return "server", (f"client {a.client} registered callback {r.callback_ip}, an address the capture does not "
                          "see it use: the capture was taken beyond its NAT, on the server side")
    one_way = [a for a in clients if a.calls and not any(c.response_frame is not None for c in a.calls)]
    if one_way and len(one_way) == len(clients):
        return "between", (f"requests from {one_way[0].client} are in the capture but no answer from the server: only "
                           "one direction passes the capture point (a tap on an asymmetric route)")
    if len(clients) >= 2 and len({a.server for a in clients}) == 1:
        return "server", f"{len(clients)} clients talk to one Exchange server {clients[0].server}"
    servers = {s for a in clients for s in a.servers}
    client_ips = {a.client for a in clients}
    for a in clients:
        for err in a.icmp_errors:
            if err.src not in client_ips and err.dst in servers:
                return "server", (f"ICMP error frame {err.frame} from {err.src} reached the server {err.dst}: "
                                  "captured on the server side of the filtering device")
            # An error sent by the client itself is seen on both sides of the path: it tells nothing.
    for a in clients:
        if a.notifications and not any(n.reaction_frame for n in a.notifications):
            return "server", (f"datagrams from {a.server} to {a.client} are in the capture but the client never "
                              "reacts: seen leaving the server, not arriving")
    for a in clients:
        if (a.registrations and not a.notifications and not a.unmatched_udp and a.mail_evidence
                and any(r.status == 0 for r in a.registrations)):
            return "client", (f"mail arrived for {a.client} but no datagram is in the capture: seen from the "
                              "client's side of where the datagrams are lost")
    if len(servers) >= 2 and len(clients) == 1:
        return "client", f"one client ({clients[0].client}) talks to {len(servers)} servers"
    if len(clients) == 1:
        a = clients[0]
        if _is_private(a.client) and not _is_private(a.server):
            return "client", f"client {a.client} is on a private network and the server {a.server} is public"
    return "unknown", "one client and one server, nothing in the traffic tells the capture point"
