"""Correlate stage on event lists built here (events are the stage's real input; the sample captures are covered
end to end by test_verdict_samples.py).

``Script`` writes an Outlook/Exchange conversation as the dissector would report it: one Event per PDU, datagram
and ICMP error, frames numbered in order.
"""

from __future__ import annotations

import pytest

from analyzer.correlate import correlate, split_endpoint
from analyzer.dissect.model import Event
from analyzer.ingest.model import CaptureInfo

CLIENT = "192.168.1.20"
SERVER = "10.0.0.10"
T0 = 1_700_000_000.0

OPNAMES = {0: "EcDoConnect", 1: "EcDoDisconnect", 2: "EcDoRpc", 4: "EcRRegisterPushNotification", 6: "EcDummyRpc",
           10: "EcDoConnectEx", 11: "EcDoRpcExt2", 14: "EcDoAsyncConnectEx"}


class Script:
    def __init__(self, client=CLIENT, server=SERVER, conn=0, sport=50000, dport=6001, encrypted=False,
                 source=None):
        self.events: list[Event] = []
        self.source = source  # interface_source of the connection's requests and answers (binds say "bind")
        self.frame = 0
        self.client, self.server, self.conn = client, server, conn
        self.sport, self.dport = sport, dport
        self.encrypted = encrypted
        self.call_id = 0
        self.t_end = T0

    def _next(self, t):
        self.frame += 1
        self.t_end = max(self.t_end, T0 + t)
        return self.frame

    def bind(self, t, interface="EMSMDB"):
        f = self._next(t)
        self.events.append(Event(f, T0 + t, self.client, self.server, self.sport, self.dport, "bind", conn=self.conn,
                                 interface=interface, interface_ver="0.81", interface_source="bind"))
        f2 = self._next(t + 0.01)
        self.events.append(Event(f2, T0 + t + 0.01, self.server, self.client, self.dport, self.sport, "bind_ack",
                                 conn=self.conn, interface=interface, interface_source="bind"))
        return f, f2

    def call(self, t, opnum, interface="EMSMDB", rtt=0.02, req=None, resp=None, fault=None, answer=True,
             stub_len=40, resp_len=60):
        """Request at t and (unless answer=False) its response rtt later; returns (request frame, answer frame)."""
        self.call_id += 1
        opname = "EcDoAsyncWaitEx" if interface == "AsyncEMSMDB" else OPNAMES.get(opnum)
        enc = self.encrypted
        f = self._next(t)
        self.events.append(Event(f, T0 + t, self.client, self.server, self.sport, self.dport, "request", conn=self.conn,
                                 interface=interface, opnum=opnum, opname=opname, ctx_id=0, call_id=self.call_id,
                                 auth_level=6 if enc else 0, encrypted=enc, stub_len=stub_len,
                                 interface_source=self.source, **(req or {})))
        if not answer:
            return f, None
        f2 = self._next(t + rtt)
        kind = "fault" if fault is not None else "response"
        extra = dict(resp or {})
        if fault is not None:
            extra["status"] = fault
        self.events.append(Event(f2, T0 + t + rtt, self.server, self.client, self.dport, self.sport, kind,
                                 conn=self.conn, interface=interface, opnum=opnum, opname=opname, ctx_id=0,
                                 call_id=self.call_id, auth_level=6 if enc else 0, encrypted=enc and fault is None,
                                 stub_len=resp_len, request_frame=f, interface_source=self.source, **extra))
        return f, f2

    def logon(self, t=0.0, poll_max_ms=60000, user_dn="/o=Org/ou=Site/cn=Recipients/cn=alice"):
        self.bind(t)
        return self.call(t + 0.1, 10, req={"user_dn": user_dn}, resp={"poll_max_ms": poll_max_ms, "status": 0})

    def register(self, t, status=0, callback=None, context="6c69626d61706900", fault=None, answer=True):
        callback = callback or f"{self.client}:2500"
        req = {} if self.encrypted else {"callback": callback, "context_hex": context, "advise_bits": 0xFFFFFFFF}
        resp = {} if self.encrypted else {"status": status, "hnotification": 1 if status == 0 else 0}
        return self.call(t, 4, req=req, resp=resp, fault=fault, answer=answer, stub_len=74, resp_len=28)

    def poll(self, t, resp_len=60, rop_ids="", stub_len=40):
        return self.call(t, 11, resp={"rop_ids": None if self.encrypted else rop_ids}, resp_len=resp_len,
                         stub_len=stub_len)

    def polls(self, start, count, every=60.0):
        return [self.poll(start + i * every) for i in range(count)]

    def udp(self, t, payload="6c69626d61706900", dst=None, dport=2500, src=None, sport=40001):
        f = self._next(t)
        self.events.append(Event(f, T0 + t, src or self.server, dst or self.client, sport, dport, "udp",
                                 context_hex=payload, stub_len=len(payload) // 2))
        return f

    def icmp(self, t, src, dst, quoted_dst=None, quoted_dport=2500, icmp_type=3, icmp_code=13, quoted_sport=40001):
        f = self._next(t)
        self.events.append(Event(f, T0 + t, src, dst, None, None, "icmp_unreachable", icmp_type=icmp_type,
                                 icmp_code=icmp_code, quoted_src=self.server, quoted_dst=quoted_dst or self.client,
                                 quoted_sport=quoted_sport, quoted_dport=quoted_dport))
        return f

    def info(self, duration=None):
        end = T0 + duration if duration is not None else self.t_end
        return CaptureInfo(path="synthetic.pcap", format="pcap", compressed=False, frames=self.frame, start=T0, end=end)

    def correlate(self, vantage="auto", duration=None):
        return correlate(self.events, self.info(duration), vantage=vantage)


def test_split_endpoint():
    assert split_endpoint("10.0.0.5:1234") == ("10.0.0.5", 1234)
    assert split_endpoint("[2001:db8::5]:1234") == ("2001:db8::5", 1234)
    assert split_endpoint("garbage") == (None, None)
    assert split_endpoint(None) == (None, None)


def test_client_server_mailbox_registration_and_push():
    s = Script()
    s.logon()
    reg_req, reg_resp = s.register(1.0)
    s.polls(60, 2)
    n1 = s.udp(150.0)
    reaction, _ = s.poll(150.3, resp_len=400, rop_ids="2a")
    corr = s.correlate()
    assert [a.client for a in corr.clients] == [CLIENT]
    a = corr.clients[0]
    assert a.server == SERVER and a.mailbox.endswith("cn=alice")
    assert a.session_start_captured and a.logon_time == pytest.approx(T0)
    assert a.poll_max_ms == 60000 and a.server_poll_interval_s == 60.0
    (r,) = a.registrations
    assert (r.frame, r.response_frame, r.status, r.callback_ip, r.callback_port) == (reg_req, reg_resp, 0, CLIENT, 2500)
    (n,) = a.notifications
    assert (n.frame, n.matched_by, n.registration_frame, n.reaction_frame) == (n1, "context", reg_req, reaction)
    assert [c.frame for c in a.prompted_calls] == [reaction]
    assert len(a.polls) == 2 and a.poll_intervals == [pytest.approx(60.0)]
    assert [m.frame for m in a.mail_evidence] == [reaction + 1]  # the RopNotify answer


def test_notification_matching_order_context_then_port_then_timing():
    s = Script()
    s.logon()
    s.register(1.0, context="00112233")
    by_port = s.udp(100.0, payload="ffff")  # wrong payload, registered port
    s.poll(100.5)
    by_timing = s.udp(200.0, payload="eeee", dport=3000)  # other port, client calls right after
    s.poll(200.4)
    ignored = s.udp(300.0, payload="dddd", dport=3001)  # other port, no reaction: not a notification
    s.poll(330.0)
    a = s.correlate().clients[0]
    assert [(n.frame, n.matched_by) for n in a.notifications] == [(by_port, "port"), (by_timing, "timing")]
    assert [n.frame for n in a.unmatched_udp] == [ignored]


def test_datagrams_from_other_hosts_are_not_notifications():
    s = Script()
    s.logon()
    s.register(1.0)
    s.udp(100.0, src="10.0.0.99")  # same payload and port, but not from the client's Exchange server
    s.poll(100.2)
    a = s.correlate().clients[0]
    assert a.notifications == [] and a.unmatched_udp == []


def test_nspi_opnum4_is_not_a_registration_nor_a_client():
    s = Script()
    s.bind(0.0, interface="NSPI")
    s.call(0.1, 4, interface="NSPI")
    corr = s.correlate()
    assert corr.clients == []
    assert corr.vantage == "unknown"


def test_icmp_error_linked_to_the_datagram_it_quotes():
    s = Script()
    s.logon()
    s.register(1.0)
    d = s.udp(100.0)
    e = s.icmp(100.001, src="10.0.0.1", dst=SERVER)
    s.icmp(100.002, src="10.0.0.1", dst=SERVER, quoted_dport=53)  # quotes DNS, not a push datagram
    corr = s.correlate()
    a = corr.clients[0]
    assert [(i.frame, i.notification_frame) for i in a.icmp_errors] == [(e, d)]
    assert a.notifications[0].icmp_frames == [e]
    assert corr.vantage == "server"


def test_bursts_prompted_and_poll_statistics():
    s = Script()
    s.logon()
    s.register(1.0)
    s.polls(60, 5, every=61.0)  # 60, 121, 182, 243, 304
    s.call(304.5, 11)  # same burst as the 304 poll: not a separate poll
    corr = s.correlate()
    a = corr.clients[0]
    assert len(a.polls) == 5
    assert a.poll_interval_s == pytest.approx(61.0) and a.poll_interval_spread_s == pytest.approx(0.0)


def test_large_poll_answer_followed_by_fetches_is_mail_evidence():
    s = Script()
    s.logon()
    s.register(1.0)
    s.polls(60, 3)
    _, big = s.poll(240.0, resp_len=900)
    s.call(240.3, 11, resp_len=5000)  # fetching the message
    s.poll(300.0)
    a = s.correlate().clients[0]
    assert [m.frame for m in a.mail_evidence] == [big]


def test_vantage_inference_and_override():
    s = Script()
    s.logon()
    s.register(1.0, callback="192.168.50.7:2500")  # callback differs from the address the capture sees
    corr = s.correlate()
    assert corr.vantage == "server" and "NAT" in corr.vantage_reason
    assert s.correlate(vantage="client").vantage == "client"
    assert "--vantage" in s.correlate(vantage="client").vantage_reason


def test_async_wait_is_gathered():
    s = Script()
    s.logon()
    s.call(1.0, 14, resp={"status": 0})
    w, done = s.call(2.0, 0, interface="AsyncEMSMDB", rtt=90.0, resp={"async_flags": 1, "status": 0})
    s.poll(92.1)
    a = s.correlate().clients[0]
    assert [(x.frame, x.completion_frame, x.flags) for x in a.async_waits] == [(w, done, 1)]
    assert len(a.async_connect_calls) == 1
    assert [c.prompted for c in a.calls if c.interface == "EMSMDB" and c.opnum == 11] == [True]


def test_encrypted_registration_hides_status_and_callback():
    s = Script(encrypted=True)
    s.logon()
    s.register(1.0)
    a = s.correlate().clients[0]
    (r,) = a.registrations
    assert r.encrypted and r.status is None and r.callback is None
    assert a.all_encrypted


def test_two_clients_sorted_by_ip_and_server_side_vantage():
    s = Script(client="10.1.0.30")
    s.logon()
    other = Script(client="10.1.0.4", conn=1, sport=50001)
    other.frame = s.frame
    other.logon(5.0)
    s.events += other.events
    corr = correlate(s.events, s.info(duration=10))
    assert [a.client for a in corr.clients] == ["10.1.0.4", "10.1.0.30"]
    assert corr.vantage == "server"


def test_one_direction_only_is_a_capture_in_between():
    s = Script()
    for t in (0.0, 60.0, 120.0):
        s.call(t, 11, answer=False)
    corr = s.correlate()
    assert corr.vantage == "between" and "one direction" in corr.vantage_reason
    assert [c.response_frame for c in corr.clients[0].calls] == [None, None, None]


# --- issue 9: the notification pattern without a registration, polls that coincide with a datagram, mail evidence
# when most polls carry mail, and what identified the interface


def test_notification_pattern_needs_no_registration():
    s = Script(source="epm")  # mid-session: no bind, no logon, no registration
    s.poll(5.0)
    datagrams = []
    for k in range(3):
        datagrams.append(s.udp(30.0 + 60 * k, payload="0102030405060708", dport=3333))
        s.poll(65.0 + 60 * k)  # never within 2 s of a datagram
    a = s.correlate().clients[0]
    assert [(n.frame, n.matched_by, n.reaction_frame) for n in a.notifications] == \
        [(d, "pattern", None) for d in datagrams]
    assert a.unmatched_udp == [] and a.registrations == []
    assert a.interface_source == "epm"


@pytest.mark.parametrize("case", ["payloads differ", "longer than a context", "two-way flow", "single datagram",
                                  "sender without DCE/RPC"])
def test_what_is_not_the_notification_pattern(case):
    s = Script(source="epm")
    s.poll(5.0)
    payloads = {"payloads differ": ["0102030405060708", "0102030405060709", "010203040506070a"],
                "longer than a context": ["00" * 17] * 3}.get(case, ["0102030405060708"] * 3)
    count = 1 if case == "single datagram" else 3
    src = "10.0.0.99" if case == "sender without DCE/RPC" else None
    for k in range(count):
        s.udp(30.0 + 60 * k, payload=payloads[k], dport=3333, src=src)
        s.poll(65.0 + 60 * k)
    if case == "two-way flow":  # the client answers from that port: some UDP protocol, not a one-way push
        s.udp(31.0, payload="aabb", src=CLIENT, sport=3333, dst=SERVER, dport=40001)
    a = s.correlate().clients[0]
    assert a.notifications == []
    expected_unmatched = 0 if case == "sender without DCE/RPC" else count
    assert len(a.unmatched_udp) == expected_unmatched


def test_pattern_from_another_dce_rpc_peer_of_the_client():
    """The datagrams may come from another host the client talks DCE/RPC to (its second Exchange server, whose
    connection is not labelled EMSMDB), and the client's reaction may go to its first server."""
    s = Script(source="epm")
    s.poll(5.0)
    other = "10.0.0.11"
    f = s._next(6.0)
    s.events.append(Event(f, T0 + 6.0, CLIENT, other, 50002, 49160, "request", conn=5, opnum=3, call_id=9,
                          stub_len=60))
    datagrams = []
    for k in range(2):
        datagrams.append(s.udp(30.0 + 60 * k, payload="aa55aa55", dport=2800, src=other))
        s.poll(30.5 + 60 * k)
    a = s.correlate().clients[0]
    assert [(n.frame, n.src, n.matched_by) for n in a.notifications] == [(d, other, "pattern") for d in datagrams]
    assert all(n.reaction_frame is not None for n in a.notifications)


def test_single_call_on_the_poll_schedule_is_a_poll_not_a_reaction():
    s = Script(source="epm")
    polls = [s.poll(5.0)[0], s.poll(65.0)[0]]
    d1 = s.udp(100.0, payload="0102030405060708", dport=3333)
    d2 = s.udp(123.8, payload="0102030405060708", dport=3333)  # 1.2 s before the poll due at 125
    coincident, _ = s.poll(125.0)
    polls += [coincident, s.poll(185.0)[0]]
    d3 = s.udp(190.0, payload="0102030405060708", dport=3333)
    polls.append(s.poll(245.0)[0])
    a = s.correlate().clients[0]
    assert [(n.frame, n.reaction_frame, n.coincident_poll_frame) for n in a.notifications] == \
        [(d1, None, None), (d2, None, coincident), (d3, None, None)]
    assert [c.frame for c in a.polls] == polls and not any(c.prompted for c in a.calls)
    assert a.poll_intervals == [pytest.approx(60.0)] * 4


def test_call_off_the_poll_schedule_stays_a_reaction():
    """Only a call where the next poll was due is taken for a poll; another call right after a datagram stays a
    reaction (the verdict stage then weighs the flow's reactions against its ignored datagrams)."""
    s = Script(source="epm")
    s.poll(5.0)
    s.poll(65.0)
    d1 = s.udp(100.0, payload="0102030405060708", dport=3333)
    user, _ = s.poll(100.5)  # 35 s after the last poll: not a poll that was due
    s.poll(125.0)
    d2 = s.udp(150.0, payload="0102030405060708", dport=3333)
    s.poll(185.0)
    d3 = s.udp(210.0, payload="0102030405060708", dport=3333)
    s.poll(245.0)
    a = s.correlate().clients[0]
    assert [(n.frame, n.reaction_frame, n.coincident_poll_frame) for n in a.notifications] == \
        [(d1, user, None), (d2, None, None), (d3, None, None)]


def test_mail_evidence_when_most_polls_carry_mail():
    """Answers well above the SMALLEST poll answer are mail, even when they are most of the polls (the median
    answer then carries mail); compressed ROP buffers make rop_ids unreadable (None)."""
    s = Script()
    s.logon()
    s.register(1.0)
    s.poll(60.0, resp_len=60, rop_ids=None)
    big = [s.poll(60.0 + 60 * k, resp_len=700 + k, rop_ids=None)[1] for k in range(1, 5)]
    a = s.correlate().clients[0]
    assert [m.frame for m in a.mail_evidence] == big
    assert "smallest poll answer 60" in a.mail_evidence[0].what


def test_poll_followed_at_once_by_fetches_is_mail_evidence_even_when_every_poll_carries_mail():
    s = Script()
    s.logon()
    s.register(1.0)
    answers = []
    for k in range(4):
        _, ans = s.poll(60.0 + 60 * k, resp_len=650, rop_ids=None)  # every poll finds mail: no small answer
        answers.append(ans)
        s.call(60.3 + 60 * k, 11, stub_len=120, resp_len=4000)  # fetching the message
        s.call(60.5 + 60 * k, 11, stub_len=90, resp_len=900)
    a = s.correlate().clients[0]
    assert [m.frame for m in a.mail_evidence] == answers
    assert "followed at once by 2 more call(s)" in a.mail_evidence[0].what


def test_user_action_bursts_are_not_mail_evidence():
    """A burst that starts with a ROP request well above the empty poll's size is the user at work, not a poll
    that found mail; polls on their own with equal answers are nothing either."""
    s = Script()
    s.logon()
    s.register(1.0)
    s.polls(60, 4)
    s.poll(270.0, stub_len=140, resp_len=3000, rop_ids=None)  # the user opens a folder
    s.call(270.2, 11, stub_len=200, resp_len=6000)
    a = s.correlate().clients[0]
    assert a.mail_evidence == []


def test_interface_source_of_a_client_is_its_most_trusted_connection():
    s = Script(source="stub_shape")
    s.poll(5.0)
    other = Script(conn=1, sport=50001, source="epm")
    other.frame = s.frame
    other.poll(6.0)
    s.events += other.events
    assert correlate(s.events, s.info()).clients[0].interface_source == "epm"
    bound = Script()
    bound.logon()
    for e in bound.events:  # a dissector that does not fill the column: the bind in the capture still tells
        e.interface_source = None
    (a,) = bound.correlate().clients
    assert a.interface_source == "bind" and a.connections[0].interface_source == "bind"


def test_each_session_polls_on_its_own_schedule():
    """Outlook with a second Exchange session (public folders or another mailbox on another server): both poll
    every 80 s, 40 s apart. The polling period is 80 s, and a poll of one session never hides the other's."""
    s = Script(source="bind")
    other = Script(server="10.0.0.11", conn=1, sport=50001, source="stub_shape")
    for k in range(5):
        s.poll(10.0 + 80 * k)
        other.frame = s.frame
        other.poll(11.0 + 80 * k)  # 1 s later: within a burst gap, but another connection
        s.frame = other.frame
    events = sorted(s.events + other.events, key=lambda e: e.frame)
    a = correlate(events, s.info()).clients[0]
    assert len(a.polls) == 10
    assert a.poll_interval_s == pytest.approx(80.0) and a.poll_intervals == [pytest.approx(80.0)] * 8
    assert a.servers == [SERVER, "10.0.0.11"] and a.interface_source == "bind"
