"""ClientActivity -> ClientVerdict: does push notification work for this client, and if not, why.

The decision follows issue 3 and docs/protocol.md §1.7-1.9, §2:

* An Outlook 2007+ client using EcDoAsyncConnectEx/EcDoAsyncWaitEx needs no UDP (``async_wait``).
* A DCE/RPC fault or a non-zero return to EcRRegisterPushNotification means the client is not registered.
* A registered client keeps polling about every pcmsPollsMax until its first datagram (MS-OXCNOTIF 3.2.5.4), so
  polling alone proves nothing: UDP trouble needs a datagram without a reaction, an ICMP error quoting it, a
  callback address the server cannot reach, or mail that arrived without any datagram.
* Packet privacy hides the return value and the callback address: then only behaviour can decide, and the reason
  says so.

The decision is an ordered list of small rules (``RULES``). Each looks at the client's :class:`Situation` and
returns a :class:`Finding` (cause, confidence, reason, evidence) or None; the first rule that returns a Finding
decides, so the list order is the precedence of the causes:

==  =================================  ============================================
 #  rule                               cause
==  =================================  ============================================
 1  uses_async_wait                    async_wait
 2  registration_faulted               registration_fault
 3  registration_refused               server_refused
 4  registered_datagram_answered       push_working
 5  registered_callback_behind_nat     callback_unreachable_nat
 6  registered_icmp_error              icmp_unreachable
 7  registered_datagram_ignored        udp_not_delivered
 8  registered_mail_without_datagram   udp_not_received
 9  registered_quiet                   registered_no_mail_seen
10  registration_hidden_quiet          encrypted_no_evidence
11  registration_answer_missing        capture_too_short
12  unregistered_datagram_answered     notification_seen_registration_not_captured
13  unregistered_icmp_error            icmp_unreachable
14  unregistered_push_pattern_ignored  udp_not_delivered
15  no_emsmdb_call                     no_emsmdb_session
16  logon_without_registration         client_did_not_register
17  logon_too_recent                   capture_too_short
18  mid_session_sealed                 encrypted_no_evidence
19  mid_session_datagrams_unanswered   mid_session_no_evidence
20  mid_session_nothing                mid_session_no_evidence
==  =================================  ============================================

Why this order: an async client needs no UDP, whatever else it did (1). A fault or a refusal decides only when no
registration succeeded (2, 3). For a registered client (4-11), a reaction proves delivery and outranks everything;
then the causes go from the most specific proof of where the datagram is lost (a callback the server cannot reach,
an ICMP error naming the device) to the weakest (mail without a datagram), and with no sign at all the outcome of
the registration decides (status 0, hidden, or not captured). Without a registration in the capture (12-20) the
same signs come first, then what the capture's start and length allow: a session that binds and makes no call, a
logon with or without time to register, and last a capture that starts mid-session, where polling alone proves
nothing. The table is checked against ``RULES`` by tests/test_causes.py; docs/architecture.md has it with each
rule's condition (``python -m analyzer.verdict.docs --rules``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from analyzer.correlate.model import (
    EC_REJECTED,
    EMSMDB,
    ClientActivity,
    CorrelationResult,
    Notification,
    Registration,
    RpcCall,
)
from analyzer.dissect.codes import STATUS_NAMES, AsyncFlags
from analyzer.verdict.causes import remedy_for
from analyzer.verdict.model import (
    CAUSES,
    CaptureResult,
    ClientVerdict,
    EvidenceItem,
    TimelineMark,
    utc_datetime,
)

# Outlook registers right after logon (EcDoConnect(Ex) -> opnum 4 within a few seconds). When the capture holds
# the logon and runs at least this long after it without an opnum 4, the client did not register; a shorter
# capture cannot tell (the short Outlook 2003 session in wiki-ShortMAPI.pcapng is such a case).
LOGON_GRACE_S = 30.0
# Evidence lists stay readable: at most this many polls / datagrams are cited per verdict.
MAX_CITED = 30

# What identified the client's MAPI interface (ClientActivity.interface_source, most trusted first), as the reason
# says it, and how much less sure a verdict is when its interface was not negotiated on the connection itself.
# None: the events do not say (older dissector output) and no bind of the client is in the capture, so the endpoint
# was learnt elsewhere in the capture.
INTERFACE_SOURCE_PHRASES = {
    "epm": "the endpoint mapper's ept_map answer naming the server's EMSMDB endpoint",
    "endpoint": "a bind to the same server endpoint on another connection",
    "stub_shape": "the EMSMDB stub layout alone (no bind and no endpoint in the capture)",
    None: "an endpoint learnt elsewhere in the capture (no bind on its own connections)",
}
INTERFACE_SOURCE_PENALTY = {"bind": 0.0, "alter_context": 0.0, "epm": 0.05, "endpoint": 0.05, "stub_shape": 0.2,
                            None: 0.1}


def status_text(status: int | None) -> str:
    if status is None:
        return "unknown"
    s = status & 0xFFFFFFFF
    name = STATUS_NAMES.get(s)
    return f"0x{s:08x}" + (f" ({name})" if name else "")


def display_filter(frames) -> str:
    """Wireshark display filter showing exactly these frames."""
    frames = sorted(set(int(f) for f in frames))
    if not frames:
        return ""
    if len(frames) == 1:
        return f"frame.number == {frames[0]}"
    return "frame.number in {" + ", ".join(str(f) for f in frames) + "}"  # commas: Wireshark 4 rejects space-separated sets


class _Evidence:
    """Evidence items keyed by frame (the first description of a frame wins), in frame order."""

    def __init__(self):
        self.items: dict[int, EvidenceItem] = {}

    def add(self, frame: int | None, time: float | None, what: str) -> None:
        if frame is None or frame in self.items:
            return
        self.items[int(frame)] = EvidenceItem(int(frame), float(time or 0.0), what)

    def sorted(self) -> list[EvidenceItem]:
        return [self.items[f] for f in sorted(self.items)]


def _name(call: RpcCall) -> str:
    return call.opname or f"{call.interface} opnum {call.opnum}"


def _cite_registration(ev: _Evidence, r: Registration) -> None:
    if r.encrypted and not r.callback:
        ev.add(r.frame, r.time, "EcRRegisterPushNotification request (stub encrypted: callback hidden)")
    else:
        ctx = f", context {r.context_hex}" if r.context_hex else ""
        ev.add(r.frame, r.time, f"EcRRegisterPushNotification request: callback {r.callback or 'unreadable'}{ctx}")
    if r.fault_frame is not None:
        ev.add(r.fault_frame, r.fault_time, f"DCE/RPC fault {status_text(r.fault_status)} to the registration")
    if r.response_frame is not None:
        if r.status is None:
            ev.add(r.response_frame, r.response_time,
                   "EcRRegisterPushNotification answer (status hidden by packet privacy)")
        else:
            ev.add(r.response_frame, r.response_time, f"EcRRegisterPushNotification answer: {status_text(r.status)}")


def _cite_notification(ev: _Evidence, n: Notification, with_reaction: bool = True) -> None:
    how = {"context": "payload = registered context", "port": "to the registered callback port",
           "timing": "client called the server right after", "icmp": "quoted by an ICMP error",
           "pattern": "the same bytes as the flow's other datagrams: push pattern"}.get(n.matched_by, "")
    ev.add(n.frame, n.time, f"UDP {n.src}:{n.sport} -> {n.dst}:{n.dport}" + (f" ({how})" if how else ""))
    if with_reaction and n.reaction_frame is not None:
        ev.add(n.reaction_frame, n.reaction_time,
               f"client calls the server {n.reaction_time - n.time:.2f} s after the datagram: Outlook reacted")
    if n.coincident_poll_frame is not None:
        ev.add(n.coincident_poll_frame, n.coincident_poll_time,
               f"client calls {n.coincident_poll_time - n.time:.2f} s after the datagram, but where its next poll was "
               "due while the flow's other datagrams get no call: a poll, not a reaction")


def _split_reactions(a: ClientActivity) -> tuple[list[Notification], list[Notification]]:
    """(reacted, ignored) notifications, judged per flow (server -> client port). A client that gets the datagram
    reacts to (nearly) every one, and the server stops repeating it once the client has fetched the events. Reactions
    to fewer than half of a flow's datagrams are polls that happened to fall within 2 s of a datagram."""
    flows: dict[tuple, list[Notification]] = {}
    for n in a.notifications:
        flows.setdefault(n.flow, []).append(n)
    reacted, ignored = [], []
    for members in flows.values():
        r = [n for n in members if n.reaction_frame is not None]
        if r and len(r) * 2 < len(members):
            ignored += members
        else:
            reacted += r
            ignored += [n for n in members if n.reaction_frame is None]
    return sorted(reacted, key=lambda n: n.frame), sorted(ignored, key=lambda n: n.frame)


def _coincidence_note(notes: list[Notification]) -> str:
    polls = [n for n in notes if n.coincident_poll_frame is not None]
    if not polls:
        return ""
    n = polls[0]
    more = f" (and {len(polls) - 1} more)" if len(polls) > 1 else ""
    return (f"; the call {n.coincident_poll_time - n.time:.1f} s after datagram frame {n.frame}{more} falls on the "
            "client's poll schedule: a poll, not a reaction")


def _cite_connect(ev: _Evidence, a: ClientActivity) -> None:
    for c in a.connect_calls[:3]:
        who = f" for {a.mailbox}" if a.mailbox else ""
        ev.add(c.frame, c.time, f"{_name(c)} request: Outlook logs on{who}")
        if c.response_frame is not None:
            pm = f", pcmsPollsMax {a.poll_max_ms} ms" if a.poll_max_ms else ""
            ev.add(c.response_frame, c.response_time, f"{_name(c)} answer{pm}")


def _cite_polls(ev: _Evidence, a: ClientActivity, after: float | None = None) -> None:
    polls = [c for c in a.polls if after is None or c.time > after]
    prev: dict = {}  # connection -> time of its previous poll (each session polls on its own schedule)
    for c in polls[:MAX_CITED]:
        gap = f", {c.time - prev[c.conn]:.1f} s after the previous" if c.conn in prev else ""
        ev.add(c.frame, c.time, f"unprompted {_name(c)} (polling{gap})")
        prev[c.conn] = c.time


def _poll_phrase(a: ClientActivity) -> str:
    if a.poll_interval_s is None:
        return f"{len(a.polls)} unprompted poll(s)"
    srv = f" (server's pcmsPollsMax {a.server_poll_interval_s:g} s)" if a.server_poll_interval_s else ""
    return f"polls every {a.poll_interval_s:.0f} s{srv}"


def _registration_outcome(a: ClientActivity):
    """(successful, refused, faulted, unknown) registrations."""
    ok = [r for r in a.registrations if r.status == 0 and r.fault_status is None]
    refused = [r for r in a.registrations if r.status not in (None, 0) and r.fault_status is None]
    faulted = [r for r in a.registrations if r.fault_status is not None]
    unknown = [r for r in a.registrations if r.status is None and r.fault_status is None]
    return ok, refused, faulted, unknown


# ---- the verdict rules ----
#
# Each rule looks at one client's Situation and returns a Finding or None; RULES lists them in order of precedence
# and the first Finding decides. A rule checks what it needs to hold (and never raises when called out of order),
# but it may take for granted that the rules before it did not hold (a registered client that reaches
# registered_quiet got no datagram, else an earlier rule would have decided).


@dataclass
class Situation:
    """What the rules look at for one client: its activity, the capture's vantage and end, and the figures several
    rules share (computed once)."""

    activity: ClientActivity
    vantage: str
    end: float | None  # capture end (or the client's last frame)
    reacted: list[Notification]  # datagrams Outlook reacted to (_split_reactions)
    ignored: list[Notification]  # datagrams it did not react to
    ok: list[Registration]  # registrations answered with status 0
    refused: list[Registration]  # answered with another status
    faulted: list[Registration]  # answered with a DCE/RPC fault
    unknown: list[Registration]  # answer not captured, or its status hidden by packet privacy
    hidden: bool  # every registration of unknown outcome is encrypted (packet privacy hides the status)
    privacy_note: str  # appended to reasons judged from behaviour because packet privacy hides the outcome

    @classmethod
    def of(cls, a: ClientActivity, corr: CorrelationResult) -> "Situation":
        reacted, ignored = _split_reactions(a)
        ok, refused, faulted, unknown = _registration_outcome(a)
        hidden = bool(unknown) and all(r.encrypted for r in unknown)
        privacy_note = "; packet privacy hides the registration's status and callback, judged from behaviour" \
            if (hidden and not ok) else ""
        return cls(activity=a, vantage=corr.vantage, end=corr.end if corr.end is not None else a.last_time,
                   reacted=reacted, ignored=ignored, ok=ok, refused=refused, faulted=faulted, unknown=unknown,
                   hidden=hidden, privacy_note=privacy_note)

    @property
    def registration(self) -> Registration | None:
        """The registration a registered client is judged by: its last successful one, else its last one of
        unknown outcome; None when no registration succeeded or could have."""
        return (self.ok or self.unknown or [None])[-1]

    @property
    def privacy_penalty(self) -> float:
        return 0.15 if self.privacy_note else 0.0


@dataclass
class Finding:
    """What a rule concluded: the cause (its verdict follows from the cause table), how sure, why in one line, and
    the frames the reason relies on."""

    cause: str
    confidence: float
    reason: str
    evidence: list[EvidenceItem]


Rule = Callable[[Situation], "Finding | None"]


def concludes(cause: str):
    """Marks a rule function with the one cause it concludes (for the precedence table and its test)."""

    def mark(func):
        func.cause = cause
        return func

    return mark


def rule_when(rule: Rule) -> str:
    """The rule's condition in words: the first paragraph of its docstring, on one line."""
    return " ".join((rule.__doc__ or "").strip().split("\n\n")[0].split())


def _cite_registered(ev: _Evidence, s: Situation) -> None:
    """The registration the client is judged by, and every successful one."""
    for reg in s.activity.registrations:
        if reg is s.registration or reg.status == 0:
            _cite_registration(ev, reg)


def _cite_notifications_and_icmp(ev: _Evidence, a: ClientActivity) -> None:
    for n in a.notifications[:MAX_CITED]:
        _cite_notification(ev, n)
    for e in a.icmp_errors[:MAX_CITED]:
        ev.add(e.frame, e.time, _icmp_what(e))


@concludes("async_wait")
def uses_async_wait(s: Situation) -> Finding | None:
    """Outlook waits with EcDoAsyncWaitEx, or its EcDoAsyncConnectEx was accepted and it made no registration.

    Outlook 2007+ against Exchange 2007+ long-polls over the async RPC instead of using UDP.
    """
    a = s.activity
    async_ok = [c for c in a.async_connect_calls if c.status != EC_REJECTED and c.fault_status is None]
    if not (a.async_waits or (async_ok and not a.registrations)):
        return None
    ev = _Evidence()
    for c in a.async_connect_calls[:3]:
        ev.add(c.frame, c.time, f"{_name(c)} request: asynchronous notification session")
        if c.response_frame is not None:
            ev.add(c.response_frame, c.response_time, f"{_name(c)} answer: {status_text(c.status)}")
    for w in a.async_waits[:MAX_CITED]:
        ev.add(w.frame, w.time, "EcDoAsyncWaitEx request (waits for server events)")
        if w.completion_frame is not None:
            pending = (w.flags or 0) & AsyncFlags.NotificationPending
            flags = "NotificationPending" if pending else f"flags {w.flags}"
            ev.add(w.completion_frame, w.completion_time, f"EcDoAsyncWaitEx completes: {flags}")
    for m in a.mail_evidence:
        ev.add(m.frame, m.time, m.what)
    done = [w for w in a.async_waits if w.completion_frame is not None]
    conf = 0.9 if a.async_waits else 0.7
    reason = (f"Outlook uses EcDoAsyncWaitEx ({len(a.async_waits)} wait(s), {len(done)} completed): "
              "notifications arrive over the async RPC, UDP push is not needed")
    if not a.async_waits:
        reason = ("EcDoAsyncConnectEx accepted but no EcDoAsyncWaitEx captured yet; async notification, "
                  "no UDP needed")
    return Finding("async_wait", conf, reason, ev.sorted())


@concludes("registration_fault")
def registration_faulted(s: Situation) -> Finding | None:
    """A registration was answered with a DCE/RPC fault and none succeeded."""
    if not (s.faulted and not s.ok):
        return None
    a, r, ev = s.activity, s.faulted[-1], _Evidence()
    _cite_registration(ev, r)
    _cite_polls(ev, a, after=r.time)
    return Finding("registration_fault", 0.9,
                   f"EcRRegisterPushNotification answered with DCE/RPC fault {status_text(r.fault_status)}; "
                   f"{_poll_phrase(a)} instead", ev.sorted())


@concludes("server_refused")
def registration_refused(s: Situation) -> Finding | None:
    """A registration was answered with a non-zero status and none succeeded."""
    if not (s.refused and not s.ok):
        return None
    a, r, ev = s.activity, s.refused[-1], _Evidence()
    _cite_registration(ev, r)
    _cite_polls(ev, a, after=r.time)
    return Finding("server_refused", 0.95,
                   f"server {r.server} refused EcRRegisterPushNotification with {status_text(r.status)}; "
                   f"Outlook falls back to polling: {_poll_phrase(a)}", ev.sorted())


@concludes("push_working")
def registered_datagram_answered(s: Situation) -> Finding | None:
    """Registered (status 0, or the answer is unknown), and Outlook reacted to the datagrams of a flow."""
    if s.registration is None or not s.reacted:
        return None
    a, ev = s.activity, _Evidence()
    _cite_registered(ev, s)
    for n in a.notifications[:MAX_CITED]:
        _cite_notification(ev, n)
    return Finding("push_working", 0.95 - s.privacy_penalty / 2,
                   f"{len(a.notifications)} UDP notification(s) from {a.server} reached the client and it called "
                   f"the server within 2 s each time{s.privacy_note}", ev.sorted())


@concludes("callback_unreachable_nat")
def registered_callback_behind_nat(s: Situation) -> Finding | None:
    """Registered, and the callback address differs from the client's address as the server sees it."""
    r = s.registration
    if r is None or not r.callback_differs_from(s.activity.client):
        return None
    a, ev = s.activity, _Evidence()
    _cite_registered(ev, s)
    _cite_notifications_and_icmp(ev, a)
    _cite_polls(ev, a, after=r.time)
    return Finding("callback_unreachable_nat", 0.85,
                   f"the client registered callback {r.callback} but the server sees it as {a.client} (NAT or VPN): "
                   f"{len(a.notifications)} datagram(s) to the callback, no reaction; {_poll_phrase(a)}", ev.sorted())


@concludes("icmp_unreachable")
def registered_icmp_error(s: Situation) -> Finding | None:
    """Registered, and an ICMP error quotes a datagram from the server."""
    a = s.activity
    if s.registration is None or not a.icmp_errors:
        return None
    ev = _Evidence()
    _cite_registered(ev, s)
    _cite_notifications_and_icmp(ev, a)
    first = a.icmp_errors[0]
    return Finding("icmp_unreachable", 0.9 - s.privacy_penalty,
                   f"{len(a.icmp_errors)} ICMP error(s) from {first.src} (type {first.icmp_type} code "
                   f"{first.icmp_code}) reject the server's UDP notification{s.privacy_note}", ev.sorted())


@concludes("udp_not_delivered")
def registered_datagram_ignored(s: Situation) -> Finding | None:
    """Registered, and the server sent datagrams that Outlook never reacted to."""
    a, ignored = s.activity, s.ignored
    if s.registration is None or not ignored:
        return None
    ev = _Evidence()
    _cite_registered(ev, s)
    for n in ignored[:MAX_CITED]:
        _cite_notification(ev, n)
    _cite_polls(ev, a, after=ignored[0].time)
    return Finding("udp_not_delivered", 0.85 - s.privacy_penalty,
                   f"the server sent {len(ignored)} UDP notification(s) to {ignored[0].dst}:{ignored[0].dport} and "
                   f"the client never reacted; {_poll_phrase(a)}{_coincidence_note(ignored)}{s.privacy_note}",
                   ev.sorted())


@concludes("udp_not_received")
def registered_mail_without_datagram(s: Situation) -> Finding | None:
    """Registered, mail arrived with no datagram, and packet privacy does not hide the registration's outcome."""
    a, r = s.activity, s.registration
    if r is None or not (a.mail_evidence and (s.ok or not s.hidden)):
        return None
    ev = _Evidence()
    _cite_registered(ev, s)
    for m in a.mail_evidence:
        ev.add(m.frame, m.time, m.what)
    _cite_polls(ev, a, after=r.time)
    conf = 0.8 if s.vantage in ("client", "unknown") else 0.55
    where = "" if s.vantage != "server" else " (odd on a server-side capture: the server sent nothing)"
    return Finding("udp_not_received", conf,
                   f"registered (status 0) and mail arrived ({len(a.mail_evidence)} sign(s)), yet no UDP "
                   f"notification reached the client; {_poll_phrase(a)}{where}", ev.sorted())


@concludes("registered_no_mail_seen")
def registered_quiet(s: Situation) -> Finding | None:
    """Registered with status 0, and nothing else happened: no datagram, ICMP error or mail.

    Polling until the first notification is normal (MS-OXCNOTIF 3.2.5.4), so this is no UDP trouble.
    """
    if not s.ok:
        return None
    a, r, ev = s.activity, s.registration, _Evidence()
    _cite_registered(ev, s)
    _cite_polls(ev, a, after=r.time)
    return Finding("registered_no_mail_seen", 0.6,
                   f"EcRRegisterPushNotification returned 0 (callback {r.callback or 'unreadable'}); no mail arrived "
                   "while capturing, and polling until the first notification is normal (MS-OXCNOTIF 3.2.5.4)",
                   ev.sorted())


@concludes("encrypted_no_evidence")
def registration_hidden_quiet(s: Situation) -> Finding | None:
    """A registration whose outcome packet privacy hides, and no datagram, ICMP error or reaction."""
    a, r = s.activity, s.registration
    if r is None or not s.hidden:
        return None
    ev = _Evidence()
    _cite_registered(ev, s)
    _cite_polls(ev, a, after=r.time)
    for m in a.mail_evidence:
        ev.add(m.frame, m.time, m.what)
    mail = (" Mail arrived without a datagram, which fits both a refused registration and blocked UDP."
            if a.mail_evidence else "")
    return Finding("encrypted_no_evidence", 0.4,
                   "packet privacy hides the registration's status and callback, and no datagram, ICMP error or "
                   f"reaction shows what happened; {_poll_phrase(a)}.{mail}", ev.sorted())


@concludes("capture_too_short")
def registration_answer_missing(s: Situation) -> Finding | None:
    """A registration whose answer is not in the capture, and nothing after it shows the outcome."""
    r = s.registration
    if r is None:
        return None
    ev = _Evidence()
    _cite_registered(ev, s)
    _cite_polls(ev, s.activity, after=r.time)
    return Finding("capture_too_short", 0.3,
                   "the answer to EcRRegisterPushNotification is not in the capture, and nothing after it shows the "
                   "outcome", ev.sorted())


@concludes("notification_seen_registration_not_captured")
def unregistered_datagram_answered(s: Situation) -> Finding | None:
    """No registration in the capture, and Outlook reacted to the datagrams of a flow."""
    a, reacted = s.activity, s.reacted
    if a.registrations or not reacted:
        return None
    ev = _Evidence()
    for n in a.notifications[:MAX_CITED]:
        _cite_notification(ev, n)
    return Finding("notification_seen_registration_not_captured", 0.85,
                   f"{len(reacted)} UDP datagram(s) from {reacted[0].src} each followed within 2 s by a call from the "
                   "client; the registration happened before the capture", ev.sorted())


@concludes("icmp_unreachable")
def unregistered_icmp_error(s: Situation) -> Finding | None:
    """No registration in the capture, and an ICMP error quotes a datagram from the server."""
    a = s.activity
    if a.registrations or not a.icmp_errors:
        return None
    ev = _Evidence()
    _cite_notifications_and_icmp(ev, a)
    first = a.icmp_errors[0]
    return Finding("icmp_unreachable", 0.75,
                   f"{len(a.icmp_errors)} ICMP error(s) from {first.src} (type {first.icmp_type} code "
                   f"{first.icmp_code}) reject UDP datagrams from the server to the client (registration not "
                   "captured)", ev.sorted())


@concludes("udp_not_delivered")
def unregistered_push_pattern_ignored(s: Situation) -> Finding | None:
    """No registration in the capture, datagrams that Outlook never reacted to, and it kept polling after them.

    The server sends datagrams only to a callback that registered successfully, so a flow of them that the client
    ignores while its session lives on (it keeps polling) is push that does not reach Outlook.
    """
    a, ignored = s.activity, s.ignored
    polling_on = [c for c in a.polls if ignored and c.time > ignored[0].time]
    if a.registrations or not (ignored and polling_on):
        return None
    ev = _Evidence()
    for n in ignored[:MAX_CITED]:
        _cite_notification(ev, n)
    _cite_polls(ev, a, after=ignored[0].time)
    for m in a.mail_evidence[:MAX_CITED]:
        ev.add(m.frame, m.time, m.what)
    n = ignored[0]
    size = f"the same {len(n.payload_hex) // 2} bytes" if n.payload_hex else "the same bytes"
    seen = (" The datagrams reach the client's network card: a firewall on the client drops them."
            if s.vantage == "client" else "")
    return Finding("udp_not_delivered", 0.75,
                   f"{len(ignored)} UDP datagram(s) from {n.src} to {n.dst}:{n.dport} carrying {size} each time (the "
                   "push notifications of a registration made before the capture) and no call from the client "
                   f"within 2 s of any, while it keeps polling ({len(polling_on)} poll(s) after the first datagram; "
                   f"{_poll_phrase(a)}){_coincidence_note(ignored)}.{seen}", ev.sorted())


@concludes("no_emsmdb_session")
def no_emsmdb_call(s: Situation) -> Finding | None:
    """No registration, no EMSMDB call and no datagram: the client only bound to the interface."""
    a = s.activity
    if a.registrations or any(c.interface == EMSMDB for c in a.calls) or a.unmatched_udp or a.notifications:
        return None
    ev = _Evidence()
    for c in a.connections[:3]:
        ev.add(c.bind_frame or c.first_frame, c.first_time, f"{c.interface} connection {a.client}:{c.client_port}"
               f" -> {c.server}:{c.server_port}, no EMSMDB call on it")
    return Finding("no_emsmdb_session", 0.5,
                   "the client bound to EMSMDB but made no EMSMDB call in the capture: no Outlook session to judge",
                   ev.sorted())


def _watched_after_logon(s: Situation) -> float:
    a = s.activity
    logon = a.logon_time if a.logon_time is not None else a.first_time
    return (s.end - logon) if (s.end is not None and logon is not None) else 0.0


@concludes("client_did_not_register")
def logon_without_registration(s: Situation) -> Finding | None:
    """The capture holds the logon and runs 30 s (LOGON_GRACE_S) or longer after it without a registration."""
    a = s.activity
    watched = _watched_after_logon(s)
    if a.registrations or not a.session_start_captured or watched < LOGON_GRACE_S:
        return None
    ev = _Evidence()
    _cite_connect(ev, a)
    _cite_polls(ev, a)
    conf = 0.85 if a.polls else 0.7
    return Finding("client_did_not_register", conf,
                   f"Outlook logged on and ran {watched:.0f} s without calling EcRRegisterPushNotification; "
                   f"{_poll_phrase(a)}", ev.sorted())


@concludes("capture_too_short")
def logon_too_recent(s: Situation) -> Finding | None:
    """The capture holds the logon but ends less than 30 s (LOGON_GRACE_S) after it, with no registration."""
    a = s.activity
    if a.registrations or not a.session_start_captured:
        return None
    watched = _watched_after_logon(s)
    ev = _Evidence()
    _cite_connect(ev, a)
    for c in a.calls[:MAX_CITED]:
        if c.interface == EMSMDB:
            ev.add(c.frame, c.time, f"{_name(c)} request")
    return Finding("capture_too_short", 0.5,
                   f"the capture covers only {_seconds(watched)} after the logon (Outlook registers shortly after "
                   f"logon; {LOGON_GRACE_S:.0f} s needed to tell), and no opnum 4 was seen", ev.sorted())


def _mid_session_evidence(a: ClientActivity) -> list[EvidenceItem]:
    ev = _Evidence()
    for c in [c for c in a.calls if c.interface == EMSMDB][:3]:
        ev.add(c.frame, c.time, f"{_name(c)} request (session already running at capture start)")
    _cite_polls(ev, a)
    for n in a.notifications[:MAX_CITED]:
        _cite_notification(ev, n)
    for n in a.unmatched_udp[:MAX_CITED]:
        ev.add(n.frame, n.time, f"UDP {n.src}:{n.sport} -> {n.dst}:{n.dport} (no reaction, no registration to match)")
    return ev.sorted()


@concludes("encrypted_no_evidence")
def mid_session_sealed(s: Situation) -> Finding | None:
    """The capture starts mid-session (no logon, no registration), and packet privacy hides every stub."""
    a = s.activity
    if a.registrations or a.session_start_captured or not a.all_encrypted:
        return None
    return Finding("encrypted_no_evidence", 0.35,
                   "the session started before the capture and packet privacy hides the stubs; no datagram, ICMP "
                   f"error or reaction decides; {_poll_phrase(a)}", _mid_session_evidence(a))


@concludes("mid_session_no_evidence")
def mid_session_datagrams_unanswered(s: Situation) -> Finding | None:
    """The capture starts mid-session, and datagrams got no reaction, but the client made no call after them."""
    a = s.activity
    if a.registrations or a.session_start_captured or not a.notifications:
        return None
    return Finding("mid_session_no_evidence", 0.4,
                   f"the capture starts mid-session (no logon, no registration); {len(a.notifications)} datagram(s) "
                   f"from {a.notifications[0].src} got no reaction, but the client makes no call after them (its "
                   "session may be gone), so they prove no UDP trouble", _mid_session_evidence(a))


@concludes("mid_session_no_evidence")
def mid_session_nothing(s: Situation) -> Finding | None:
    """The capture starts mid-session, and shows no registration, datagram, ICMP error or reaction: polling alone
    proves nothing. Always holds, so it comes last."""
    a = s.activity
    return Finding("mid_session_no_evidence", 0.4,
                   "the capture starts mid-session (no logon, no registration) and shows no datagram, ICMP error or "
                   f"reaction; {_poll_phrase(a)} proves nothing by itself (MS-OXCNOTIF 3.2.5.4)",
                   _mid_session_evidence(a))


# In order of precedence: the first rule that returns a Finding decides (the module docstring's table says why).
RULES: tuple[Rule, ...] = (
    uses_async_wait,
    registration_faulted,
    registration_refused,
    registered_datagram_answered,
    registered_callback_behind_nat,
    registered_icmp_error,
    registered_datagram_ignored,
    registered_mail_without_datagram,
    registered_quiet,
    registration_hidden_quiet,
    registration_answer_missing,
    unregistered_datagram_answered,
    unregistered_icmp_error,
    unregistered_push_pattern_ignored,
    no_emsmdb_call,
    logon_without_registration,
    logon_too_recent,
    mid_session_sealed,
    mid_session_datagrams_unanswered,
    mid_session_nothing,
)


def decide(a: ClientActivity, corr: CorrelationResult) -> Finding:
    """The Finding of the first rule in RULES that holds for this client (the last rule always holds)."""
    situation = Situation.of(a, corr)
    for rule in RULES:
        finding = rule(situation)
        if finding is not None:
            return finding
    raise AssertionError("the last rule always holds")  # pragma: no cover


def _seconds(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def _icmp_what(e) -> str:
    code = " (administratively prohibited)" if (e.icmp_type, e.icmp_code) in ((3, 13), (1, 1)) else ""
    return (f"ICMP type {e.icmp_type} code {e.icmp_code}{code} from {e.src} quoting UDP "
            f"{e.quoted_src}:{e.quoted_sport} -> {e.quoted_dst}:{e.quoted_dport}")


def _timeline(a: ClientActivity) -> list[TimelineMark]:
    marks: list[TimelineMark] = []
    for r in a.registrations:
        label = "opnum 4" + (f" -> {status_text(r.status)}" if r.status is not None else
                             " -> fault" if r.fault_status is not None else "")
        marks.append(TimelineMark(r.time, "registration", r.frame, label))
    for n in a.notifications:
        marks.append(TimelineMark(n.time, "notification", n.frame, f"UDP -> {n.dst}:{n.dport}"))
    for e in a.icmp_errors:
        marks.append(TimelineMark(e.time, "icmp", e.frame, f"ICMP {e.icmp_type}/{e.icmp_code} from {e.src}"))
    reg_frames = {r.frame for r in a.registrations}
    for c in a.calls:
        if c.interface != EMSMDB or c.frame in reg_frames:
            continue
        if not c.prompted and not c.is_poll_candidate:
            continue  # logon/disconnect calls are not polling: the unprompted lane must match the poll count
        marks.append(TimelineMark(c.time, "prompted" if c.prompted else "unprompted", c.frame, _name(c)))
    for w in a.async_waits:
        flags = "" if w.flags is None else ("NotificationPending" if w.flags & AsyncFlags.NotificationPending
                                            else f"flags {w.flags}")
        marks.append(TimelineMark(w.time, "async_wait", w.frame, f"EcDoAsyncWaitEx {flags}".strip(),
                                  end=w.completion_time))
    for m in a.mail_evidence:
        marks.append(TimelineMark(m.time, "mail", m.frame, m.what))
    marks.sort(key=lambda m: (m.time, m.frame or 0))
    return marks


def judge_client(a: ClientActivity, corr: CorrelationResult) -> ClientVerdict:
    finding = decide(a, corr)
    cause, confidence, reason = finding.cause, finding.confidence, finding.reason
    source = a.interface_source
    if source not in ("bind", "alter_context") and a.connections:
        # the reason names what identified the interface when it was not negotiated on the client's own connection
        reason = reason.rstrip(".") + f"; Outlook's MAPI interface identified by {INTERFACE_SOURCE_PHRASES[source]}"
        confidence -= INTERFACE_SOURCE_PENALTY[source]
    if a.decrypted:  # the decoders read the sealed stubs as on a plain session: same confidence, said here
        reason = f"{reason.rstrip('.')}; the session was sealed (packet privacy) and decrypted with --secrets"
    verdict = CAUSES[cause]
    evidence = finding.evidence
    reg = next((r for r in reversed(a.registrations) if r.status == 0), None) or \
        (a.registrations[-1] if a.registrations else None)
    return ClientVerdict(
        client=a.client,
        server=a.server,
        verdict=verdict,
        cause=cause,
        confidence=max(0.0, min(1.0, round(confidence, 3))),
        reason=reason,
        mailbox=a.mailbox,
        callback=reg.callback if reg else None,
        register_status=reg.status if reg else None,
        notifications=len(a.notifications),
        polls=len(a.polls),
        poll_interval_s=a.poll_interval_s,
        poll_interval_spread_s=a.poll_interval_spread_s,
        server_poll_interval_s=a.server_poll_interval_s,
        evidence=evidence,
        filter=display_filter(e.frame for e in evidence),
        remedy=remedy_for(cause),
        timeline=_timeline(a),
        logon_time=a.logon_time if a.logon_time is not None else a.first_time,
        poll_intervals=list(a.poll_intervals),
    )


def judge_clients(correlation: CorrelationResult) -> list[ClientVerdict]:
    """One verdict per client of the correlation, in the correlation's order (sorted by IP)."""
    return [judge_client(a, correlation) for a in correlation.clients]


def build_capture_result(info, correlation: CorrelationResult, verdicts: list[ClientVerdict]) -> CaptureResult:
    warnings = list(getattr(info, "warnings", []) or []) + list(correlation.warnings)
    if any(t is not None and utc_datetime(t) is None for t in (info.start, info.end)):
        warnings.append("frame times outside years 1-9999 (damaged timestamps or timestamp resolution): "
                        "start/end are not shown as dates; intervals between frames may still be right")
    return CaptureResult(
        file=str(info.path),
        format=info.format,
        compressed=bool(info.compressed),
        frames=int(info.frames),
        start=info.start,
        end=info.end,
        vantage=correlation.vantage,
        vantage_reason=correlation.vantage_reason,
        warnings=warnings,
        clients=list(verdicts),
    )
