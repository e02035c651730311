"""events + CaptureInfo -> CorrelationResult: per Outlook client, everything the verdict needs, linked up.

One pass sorts events by kind; the per-client work is then linear in the client's own events. Nothing here
reads packet bytes: the events table (analyzer.dissect.model) is the only input besides CaptureInfo.
"""

from __future__ import annotations

import bisect
import ipaddress
import statistics
from collections import Counter, defaultdict

from analyzer.correlate.model import (
    ASYNC_EMSMDB,
    ASYNC_OP_WAIT,
    BURST_GAP_S,
    CONNECT_OPNUMS,
    EMSMDB,
    OP_ASYNC_CONNECT_EX,
    OP_REGISTER_PUSH,
    PROMPT_WINDOW_S,
    ROP_NOTIFY_PENDING,
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

# A poll answer counts as "much larger than the usual empty one" when it is at least this many times the
# median poll answer and this many bytes above it (an empty EcDoRpcExt2 answer is a few dozen bytes; a
# RopNotify with a new-mail notification adds well over a hundred).
LARGE_ANSWER_FACTOR = 3.0
LARGE_ANSWER_MIN_EXTRA = 100


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


def _ip_key(ip: str):
    try:
        a = ipaddress.ip_address(ip)
        return (a.version, int(a))
    except ValueError:
        return (9, ip)


def correlate(events, info, vantage: str = "auto") -> CorrelationResult:
    """Gather per-client activity from the events table. ``vantage`` "client"/"server" overrides inference."""
    events = sorted(events, key=lambda e: (e.frame, e.time))
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
    for e in events:
        if e.kind == "udp":
            udp_by_dst[e.dst].append(e)
        elif e.kind == "icmp_unreachable":
            icmp_by_quoted_dst[e.quoted_dst].append(e)
            icmp.append(e)
    claimed_udp: set[int] = set()  # id() of datagrams already given to a client
    result_clients = []
    for ip in sorted(clients, key=_ip_key):
        activity = _build_client(ip, clients[ip], events)
        targets = {ip} | {r.callback_ip for r in activity.registrations if r.callback_ip}
        _match_notifications(activity, sorted((e for t in targets for e in udp_by_dst.get(t, ())),
                                              key=lambda e: e.frame), claimed_udp)
        _match_icmp(activity, sorted((e for t in targets for e in icmp_by_quoted_dst.get(t, ())),
                                     key=lambda e: e.frame))
        _classify_calls(activity)
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
    server_count: Counter = Counter()
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
        outbound = e.src == ip
        server = e.dst if outbound else e.src
        server_count[server] += 1
        key = (e.conn, e.interface) if e.conn is not None else (server, e.dport if outbound else e.sport, e.interface)
        if key not in conns:
            conns[key] = Connection(conn=e.conn, client=ip, client_port=e.sport if outbound else e.dport,
                                    server=server, server_port=e.dport if outbound else e.sport,
                                    interface=e.interface, first_frame=e.frame, first_time=e.time)
        if e.kind in ("bind", "alter_context") and outbound:
            conns[key].bind_frame = conns[key].bind_frame or e.frame
            if e.interface == EMSMDB:
                session_start = True
                logon_time = e.time if logon_time is None else logon_time
        elif e.kind == "request" and outbound:
            call = RpcCall(frame=e.frame, time=e.time, conn=e.conn, interface=e.interface, opnum=e.opnum,
                           opname=e.opname, call_id=e.call_id, stub_len=e.stub_len, encrypted=bool(e.encrypted))
            calls.append(call)
            pending[(e.conn, e.call_id)] = call
            by_request_frame.setdefault(e.frame, call)
            if e.interface == EMSMDB and e.opnum in CONNECT_OPNUMS:
                session_start = True
                logon_time = e.time if logon_time is None else min(logon_time, e.time)
                if e.user_dn and not mailbox:
                    mailbox = e.user_dn
            if e.interface == EMSMDB and e.opnum == OP_REGISTER_PUSH:
                cb_ip, cb_port = split_endpoint(e.callback)
                reg = Registration(frame=e.frame, time=e.time, server=server, conn=e.conn, call_id=e.call_id,
                                   callback=e.callback, callback_ip=cb_ip, callback_port=cb_port,
                                   context_hex=(e.context_hex or None), advise_bits=e.advise_bits,
                                   encrypted=bool(e.encrypted))
                registrations.append(reg)
                reg_by_call[id(call)] = reg
        elif e.kind in ("response", "fault") and not outbound:
            call = pending.pop((e.conn, e.call_id), None)
            if call is None and e.request_frame is not None:
                call = by_request_frame.get(e.request_frame)
            if call is None:
                continue  # answer to a request sent before the capture started
            call.response_frame, call.response_time = e.frame, e.time
            call.response_len = e.stub_len
            if e.kind == "fault":
                call.fault_status = e.status
            else:
                call.status = e.status
                call.rop_ids = e.rop_ids
                async_flags[id(call)] = e.async_flags
            if e.poll_max_ms:
                poll_max = e.poll_max_ms
            reg = reg_by_call.get(id(call))
            if reg is not None:
                if e.kind == "fault":
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
        server=server_count.most_common(1)[0][0] if server_count else "",
        servers=sorted(server_count, key=_ip_key),
        mailbox=mailbox,
        connections=sorted(conns.values(), key=lambda c: c.first_frame),
        registrations=registrations,
        calls=calls,
        connect_calls=[c for c in emsmdb_calls if c.opnum in CONNECT_OPNUMS],
        async_connect_calls=[c for c in emsmdb_calls if c.opnum == OP_ASYNC_CONNECT_EX],
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
        for c in calls if c.interface == ASYNC_EMSMDB and c.opnum == ASYNC_OP_WAIT
    ]
    return activity


# ---------------------------------------------------------------------------------------------------------------
# notifications and ICMP


def _match_notifications(a: ClientActivity, udp, claimed: set[int]) -> None:
    """Give this client the UDP datagrams from its Exchange server(s) toward it or its callback address.

    Matching order (issue 3): registered context bytes, then the registered callback port, then timing (an EMSMDB
    call from the client within PROMPT_WINDOW_S). Datagrams from any other host are never notifications.
    """
    servers = set(a.servers)
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
    for e in udp:
        if id(e) in claimed or e.src not in servers or e.dst not in targets:
            continue
        payload = (e.context_hex or "").lower()
        reg, how = None, None
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
        if how is None and reaction is not None and e.dst == a.client:
            how = "timing"
        n = Notification(frame=e.frame, time=e.time, src=e.src, sport=e.sport, dst=e.dst, dport=e.dport,
                         payload_hex=e.context_hex, matched_by=how or "none",
                         registration_frame=reg.frame if reg else None)
        if reaction is not None:
            n.reaction_frame, n.reaction_time = emsmdb_frames[reaction], emsmdb_times[reaction]
        if how is None:
            a.unmatched_udp.append(n)
        else:
            claimed.add(id(e))
            a.notifications.append(n)


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
    last_time = None
    burst_prompted_by = None
    for c in a.calls:
        if c.interface != EMSMDB:
            continue  # AsyncEMSMDB waits have their own lane; they are neither polls nor reactions
        c.burst_start = last_time is None or c.time - last_time > BURST_GAP_S
        i = bisect.bisect_right(prompt_times, c.time) - 1
        if i >= 0 and c.time - prompt_times[i] <= PROMPT_WINDOW_S:
            c.prompted, c.prompted_by = True, prompts[i][1]
            burst_prompted_by = prompts[i][1] if c.burst_start else burst_prompted_by
        elif not c.burst_start and burst_prompted_by is not None:
            # the rest of a burst that a notification started (fetching the new message) is prompted too
            c.prompted, c.prompted_by = True, burst_prompted_by
        if c.burst_start and not c.prompted:
            burst_prompted_by = None
        last_time = c.time
    poll_times = [c.time for c in a.polls]
    intervals = [b - t for t, b in zip(poll_times, poll_times[1:])]
    a.poll_intervals = intervals
    if intervals:
        a.poll_interval_s = statistics.median(intervals)
        if len(intervals) >= 2:
            q = statistics.quantiles(intervals, n=4, method="inclusive")
            a.poll_interval_spread_s = q[2] - q[0]
        else:
            a.poll_interval_spread_s = 0.0


def _mail_evidence(a: ClientActivity) -> None:
    """Signs that mail (or another event) arrived for the client, whether or not a datagram announced it."""
    found: dict[int, MailEvidence] = {}
    polls = [c for c in a.calls if c.is_poll_candidate and c.response_frame is not None]
    sizes = [c.response_len for c in polls if c.response_len]
    usual = statistics.median(sizes) if sizes else None
    emsmdb = [c for c in a.calls if c.interface == EMSMDB]
    for idx, c in enumerate(emsmdb):
        if c.response_frame is None:
            continue
        rops = {r.strip().lower() for r in (c.rop_ids or "").split(",") if r.strip()}
        if rops & ROP_NOTIFY_PENDING:
            names = " and ".join(n for r, n in (("2a", "RopNotify"), ("6e", "RopPending")) if r in rops)
            found[c.response_frame] = MailEvidence(c.response_frame, c.response_time,
                                                   f"{names} in the answer to {c.opname or 'the call'}"
                                                   f" (frame {c.frame}): the server has events queued")
            continue
        if (c.is_poll_candidate and usual and c.response_len and c.burst_start
                and c.response_len >= usual * LARGE_ANSWER_FACTOR
                and c.response_len - usual >= LARGE_ANSWER_MIN_EXTRA):
            nxt = emsmdb[idx + 1] if idx + 1 < len(emsmdb) else None
            if nxt is not None and nxt.time - c.response_time <= PROMPT_WINDOW_S:
                found[c.response_frame] = MailEvidence(
                    c.response_frame, c.response_time,
                    f"poll answer of {c.response_len} bytes (usual {int(usual)}) followed at once by more calls"
                    f" (frame {nxt.frame}): the client fetching new mail")
    for w in a.async_waits:
        if w.flags is not None and w.flags & 1 and w.completion_frame is not None:
            found[w.completion_frame] = MailEvidence(w.completion_frame, w.completion_time,
                                                     "EcDoAsyncWaitEx completed with NotificationPending")
    a.mail_evidence = sorted(found.values(), key=lambda m: m.frame)


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
