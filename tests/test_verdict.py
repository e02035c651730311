"""Verdict stage on event lists built with test_correlate.Script: every cause, with expected verdict, cause and
evidence frames, plus the CaptureResult / JSON contract."""

from __future__ import annotations

import json

import pytest

from analyzer.verdict import (
    CAUSES,
    REMEDIES,
    TIMELINE_LANES,
    build_capture_result,
    display_filter,
    judge_clients,
)
from test_correlate import CLIENT, SERVER, Script


def judge(script: Script, vantage="auto", duration=None):
    corr = script.correlate(vantage=vantage, duration=duration)
    verdicts = judge_clients(corr)
    assert len(verdicts) == 1
    return verdicts[0]


def frames(v):
    return {e.frame for e in v.evidence}


def check_common(v, verdict, cause, must_cite):
    assert (v.verdict, v.cause) == (verdict, cause), v.reason
    assert CAUSES[v.cause] == v.verdict
    assert set(must_cite) <= frames(v), (sorted(must_cite), sorted(frames(v)))
    assert 0.0 <= v.confidence <= 1.0 and v.reason
    assert v.remedy == REMEDIES[cause]
    assert v.filter == display_filter(frames(v))
    assert all(m.lane in TIMELINE_LANES for m in v.timeline)
    assert all(e.what for e in v.evidence)


def test_push_working():
    s = Script()
    s.logon()
    req, resp = s.register(1.0)
    s.polls(60, 1)
    n = s.udp(100.0)
    reaction, _ = s.poll(100.2, resp_len=300, rop_ids="2a")
    v = judge(s)
    check_common(v, "registered", "push_working", [req, resp, n, reaction])
    assert v.callback == f"{CLIENT}:2500" and v.register_status == 0 and v.notifications == 1
    assert v.mailbox.endswith("cn=alice") and v.server == SERVER
    assert v.confidence >= 0.9
    lanes = {m.lane for m in v.timeline}
    assert {"registration", "notification", "prompted", "unprompted", "mail"} <= lanes


def test_server_refused_0x80040102():
    s = Script()
    s.logon()
    req, resp = s.register(1.0, status=0x80040102)
    polls = [f for f, _ in s.polls(60, 4)]
    v = judge(s)
    check_common(v, "not_registered", "server_refused", [req, resp] + polls)
    assert v.register_status == 0x80040102 and "0x80040102" in v.reason and "ecNotSupported" in v.reason
    assert "319572" in v.remedy and "Winsock Transports" in v.remedy and "EnumProt" in v.remedy
    assert v.polls == 4 and v.poll_interval_s == pytest.approx(60.0) and v.server_poll_interval_s == 60.0


def test_registration_fault():
    s = Script()
    s.logon()
    req, fault = s.register(1.0, fault=0x1C010002)
    v = judge(s)
    check_common(v, "not_registered", "registration_fault", [req, fault])
    assert "0x1c010002" in v.reason


def test_client_did_not_register():
    s = Script()
    _, connect_resp = s.logon()
    polls = [f for f, _ in s.polls(60, 3)]
    v = judge(s)
    check_common(v, "not_registered", "client_did_not_register", [connect_resp - 1, connect_resp] + polls)
    assert "PR_DISABLE_WINSOCK" in v.remedy and v.register_status is None and v.callback is None


def test_short_capture_after_logon_is_too_short():
    s = Script()
    s.logon()
    s.call(0.5, 11)
    s.call(1.0, 1)  # EcDoDisconnect, a few seconds in: the shape of wiki-ShortMAPI.pcapng
    v = judge(s)
    check_common(v, "inconclusive", "capture_too_short", [])


def test_udp_not_delivered_server_side():
    s = Script()
    s.logon()
    req, resp = s.register(1.0)
    d1 = s.udp(100.0)
    polls = [s.poll(120.0)[0]]
    d2 = s.udp(160.0)
    polls += [s.poll(180.0)[0], s.poll(240.0)[0]]  # never within 2 s of a datagram
    v = judge(s)
    check_common(v, "udp_blocked", "udp_not_delivered", [req, resp, d1, d2] + polls)
    assert v.notifications == 2
    assert "264035" in v.remedy and "1024" in v.remedy


def test_poll_coinciding_with_one_of_many_repeats_is_not_push_working():
    s = Script()
    s.logon()
    s.register(1.0)
    datagrams = []
    for k in range(4):  # the server repeats the datagram every 60 s; one poll happens to follow one of them
        datagrams.append(s.udp(100.0 + 60 * k))
        s.poll(100.0 + 60 * k + (1.0 if k == 2 else 30.0))
    v = judge(s)
    check_common(v, "udp_blocked", "udp_not_delivered", datagrams)


def test_icmp_unreachable():
    s = Script()
    s.logon()
    req, resp = s.register(1.0)
    d = s.udp(100.0)
    e = s.icmp(100.001, src="10.0.0.1", dst=SERVER, icmp_code=13)
    s.polls(120, 2)
    v = judge(s)
    check_common(v, "udp_blocked", "icmp_unreachable", [req, resp, d, e])
    assert "administratively prohibited" in " ".join(x.what for x in v.evidence)


def test_udp_not_received_client_side():
    s = Script()
    s.logon()
    req, resp = s.register(1.0)
    s.polls(60, 2)
    _, big = s.poll(180.0, resp_len=1200)
    s.call(180.2, 11, resp_len=8000)
    s.poll(240.0)
    v = judge(s)
    check_common(v, "udp_blocked", "udp_not_received", [req, resp, big])


def test_callback_unreachable_nat():
    s = Script(client="203.0.113.7")  # the NAT's public address, as the server sees it
    s.logon()
    req, resp = s.register(1.0, callback="192.168.1.20:2500")
    s.poll(60.0)
    d = s.udp(100.0, dst="192.168.1.20")
    s.polls(120, 3)
    v = judge(s)
    check_common(v, "udp_blocked", "callback_unreachable_nat", [req, resp, d])
    assert "FixedUDPPort" in v.remedy and v.callback == "192.168.1.20:2500"


def test_registered_no_mail_seen_polling_alone_proves_nothing():
    s = Script()
    s.logon()
    req, resp = s.register(1.0)
    s.polls(60, 5)
    v = judge(s, vantage="client")
    check_common(v, "registered", "registered_no_mail_seen", [req, resp])
    assert v.confidence < 0.8 and "3.2.5.4" in v.reason


def test_notification_seen_registration_not_captured():
    s = Script()
    s.poll(5.0)  # session already running
    d = s.udp(30.0, payload="0102030405060708", dport=3333)
    reaction, _ = s.poll(30.4)
    v = judge(s)
    check_common(v, "registered", "notification_seen_registration_not_captured", [d, reaction])


def test_async_wait():
    s = Script()
    s.logon()
    ac, ac_resp = s.call(1.0, 14, resp={"status": 0})
    w, done = s.call(2.0, 0, interface="AsyncEMSMDB", rtt=50.0, resp={"async_flags": 1, "status": 0})
    s.poll(52.2)
    v = judge(s)
    check_common(v, "registered", "async_wait", [ac, ac_resp, w, done])
    spans = [m for m in v.timeline if m.lane == "async_wait"]
    assert spans and spans[0].end == pytest.approx(s.events[-3].time)


def test_encrypted_registration_judged_from_behaviour():
    s = Script(encrypted=True)
    s.logon()
    req, resp = s.register(1.0)
    d = s.udp(100.0)
    reaction, _ = s.poll(100.3)
    v = judge(s)
    check_common(v, "registered", "push_working", [req, resp, d, reaction])
    assert "packet privacy" in v.reason and v.register_status is None and v.callback is None


def test_encrypted_no_evidence():
    s = Script(encrypted=True)
    s.logon()
    req, resp = s.register(1.0)
    s.polls(60, 3)
    v = judge(s)
    check_common(v, "inconclusive", "encrypted_no_evidence", [req, resp])
    assert "packet privacy" in v.reason


def test_encrypted_with_mail_but_no_datagram_stays_inconclusive():
    s = Script(encrypted=True)
    s.logon()
    req, resp = s.register(1.0)
    s.polls(60, 2)
    _, big = s.poll(180.0, resp_len=1500)  # answer sizes stay visible at packet privacy (alloc_hint)
    s.call(180.2, 11, resp_len=9000)
    s.poll(240.0)
    v = judge(s)
    check_common(v, "inconclusive", "encrypted_no_evidence", [req, resp, big])
    assert "refused" in v.reason


def test_mid_session_no_evidence():
    s = Script()
    polls = [f for f, _ in s.polls(5, 4)]
    v = judge(s)
    check_common(v, "inconclusive", "mid_session_no_evidence", polls[:1])


def test_display_filter():
    assert display_filter([]) == ""
    assert display_filter([7]) == "frame.number == 7"
    assert display_filter([40, 12, 13, 12]) == "frame.number in {12, 13, 40}"


def test_every_cause_has_a_remedy_citing_a_kb_where_it_is_a_fault():
    assert set(REMEDIES) == set(CAUSES)
    for cause in ("server_refused", "client_did_not_register", "udp_not_delivered", "icmp_unreachable",
                  "udp_not_received", "callback_unreachable_nat"):
        assert "KB" in REMEDIES[cause], cause


def test_capture_result_json_contract():
    s = Script()
    s.logon()
    s.register(1.0, status=0x80040102)
    s.polls(60, 2)
    corr = s.correlate()
    info = s.info()
    info.warnings.append("something odd")
    result = build_capture_result(info, corr, judge_clients(corr))
    d = json.loads(json.dumps(result.to_dict()))
    assert d["file"] == "synthetic.pcap" and d["format"] == "pcap" and d["vantage"] == corr.vantage
    assert d["warnings"] == ["something odd"] and d["error"] is None
    (c,) = d["clients"]
    assert c["register_status"] == "0x80040102" and c["verdict"] == "not_registered"
    assert c["callback"] == f"{CLIENT}:2500" and c["polls"] == 2
    assert {"client", "mailbox", "server", "verdict", "cause", "confidence", "reason", "callback", "register_status",
            "notifications", "polls", "poll_interval_s", "server_poll_interval_s", "evidence", "filter",
            "remedy"} <= set(c)


def test_ipv6_client_and_callback():
    server6, client6 = "2001:db8::10", "2001:db8::20"
    s = Script(client=client6, server=server6)
    s.logon()
    req, resp = s.register(1.0, callback=f"[{client6}]:2500")
    d = s.udp(100.0)
    reaction, _ = s.poll(100.1)
    v = judge(s)
    check_common(v, "registered", "push_working", [req, resp, d, reaction])
    assert v.callback == "[2001:db8::20]:2500" and v.client == client6


def test_fault_evidence_carries_its_time():
    s = Script()
    s.logon()
    _, fault = s.register(1.0, fault=0x1C00001A)
    v = judge(s)
    (item,) = [e for e in v.evidence if e.frame == fault]
    assert item.time == pytest.approx(s.events[fault - 1].time) and "fault" in item.what


def test_bind_without_any_call_is_no_session():
    s = Script()
    bind, _ = s.bind(0.0)
    v = judge(s, duration=120.0)
    check_common(v, "inconclusive", "no_emsmdb_session", [bind])


def test_async_connect_rejected_falls_back_to_push_registration():
    """Exchange 2007 answers EcDoAsyncConnectEx with ecRejected to tell the client to poll or use push instead."""
    s = Script()
    s.logon()
    ac, ac_resp = s.call(0.5, 14, resp={"status": 0x7EE})
    req, resp = s.register(1.0, status=0x80040102)
    s.polls(60, 3)
    v = judge(s)
    check_common(v, "not_registered", "server_refused", [req, resp])
    assert ac not in frames(v)


def test_async_connect_accepted_without_a_wait_yet():
    s = Script()
    s.logon()
    ac, ac_resp = s.call(0.5, 14, resp={"status": 0})
    v = judge(s)
    check_common(v, "registered", "async_wait", [ac, ac_resp])
    assert v.confidence < 0.9 and "no EcDoAsyncWaitEx" in v.reason


# --- issue 9: mid-session verdicts from the notification pattern, mail found by polling


def _mid_session_ignored(source="epm", polls_after=True):
    """A session running before the capture; the server sends the same 8 bytes to port 3333 three times, the
    client never calls within 2 s and (unless polls_after is False) keeps polling every 60 s."""
    s = Script(source=source)
    if source == "bind":  # negotiated on the connection itself (the capture holds the bind, but no logon)
        s.bind(0.0)
    polls = [s.poll(5.0)[0]]
    datagrams = []
    for k in range(3):
        datagrams.append(s.udp(30.0 + 60 * k, payload="0102030405060708", dport=3333))
        if polls_after:
            polls.append(s.poll(65.0 + 60 * k)[0])
    return s, datagrams, polls


def test_mid_session_datagrams_ignored_while_polling_is_udp_not_delivered():
    s, datagrams, polls = _mid_session_ignored()
    v = judge(s)
    check_common(v, "udp_blocked", "udp_not_delivered", datagrams + polls[1:])
    assert v.notifications == 3 and v.register_status is None
    assert "the same 8 bytes" in v.reason and "keeps polling" in v.reason
    assert "ept_map" in v.reason  # what identified the interface
    assert s.correlate().vantage == "server"  # seen leaving the server, never answered


def test_mid_session_datagrams_without_further_polling_decide_nothing():
    """No call after the datagrams: the session may be gone, so the ignored datagrams prove no UDP trouble."""
    s, datagrams, polls = _mid_session_ignored(polls_after=False)
    v = judge(s)
    check_common(v, "inconclusive", "mid_session_no_evidence", datagrams + polls)
    assert "no call after them" in v.reason


def test_mid_session_poll_coinciding_with_one_datagram_is_not_a_reaction():
    s = Script(source="endpoint")
    s.poll(5.0)
    s.poll(65.0)
    d1 = s.udp(100.0, payload="0102030405060708", dport=3333)
    d2 = s.udp(123.8, payload="0102030405060708", dport=3333)
    coincident, _ = s.poll(125.0)  # due anyway: 60 s after the previous poll
    later = s.poll(185.0)[0]
    d3 = s.udp(190.0, payload="0102030405060708", dport=3333)
    s.poll(245.0)
    v = judge(s)
    check_common(v, "udp_blocked", "udp_not_delivered", [d1, d2, d3, coincident, later])
    assert "a poll, not a reaction" in v.reason and "another connection" in v.reason
    assert v.polls == 5 and v.poll_interval_s == pytest.approx(60.0)
    what = {e.frame: e.what for e in v.evidence}
    assert "poll, not a reaction" in what[coincident]


def test_mid_session_datagrams_each_answered_are_push_working_without_registration():
    s = Script(source="epm")
    s.poll(5.0)
    cited = []
    for k in range(3):
        cited.append(s.udp(30.0 + 60 * k, payload="0102030405060708", dport=3333))
        cited.append(s.poll(30.3 + 60 * k)[0])
    v = judge(s)
    check_common(v, "registered", "notification_seen_registration_not_captured", cited)


@pytest.mark.parametrize("source, phrase", [
    ("bind", None),
    ("epm", "ept_map answer"),
    ("endpoint", "another connection"),
    ("stub_shape", "stub layout alone"),
    (None, "learnt elsewhere in the capture"),
])
def test_reason_names_what_identified_the_interface_and_confidence_reflects_it(source, phrase):
    s, datagrams, _ = _mid_session_ignored(source=source)
    v = judge(s)
    assert (v.verdict, v.cause) == ("udp_blocked", "udp_not_delivered")
    if phrase is None:
        assert "identified by" not in v.reason
    else:
        assert "identified by" in v.reason and phrase in v.reason
    trust = {"bind": 0.75, "epm": 0.70, "endpoint": 0.70, None: 0.65, "stub_shape": 0.55}
    assert v.confidence == pytest.approx(trust[source])


def test_client_side_most_polls_carry_mail_is_udp_not_received():
    """An engineer sends a test message every minute: four of five polls carry mail, the ROP buffers are compressed
    (rop_ids unreadable), registration succeeded and no datagram arrives."""
    s = Script()
    s.logon()
    req, resp = s.register(1.0)
    s.poll(60.0, resp_len=60, rop_ids=None)
    mail = []
    for k in range(1, 5):
        mail.append(s.poll(60.0 + 60 * k, resp_len=640 + 7 * k, rop_ids=None)[1])
        s.call(60.4 + 60 * k, 11, stub_len=110, resp_len=5000)
    v = judge(s)
    check_common(v, "udp_blocked", "udp_not_received", [req, resp] + mail)
    assert s.correlate().vantage == "client" and v.confidence >= 0.8


def test_registered_client_poll_coinciding_with_a_datagram_is_cited_as_a_poll():
    """The schedule rule with the registration in the capture: the server repeats the context datagram every 60 s,
    the client polls every 60 s; one poll comes 0.8 s after a datagram, exactly when it was due."""
    s = Script()
    s.logon()
    req, resp = s.register(1.0)
    polls = [s.poll(61.0)[0]]
    datagrams = [s.udp(100.0)]
    polls.append(s.poll(121.0)[0])
    datagrams.append(s.udp(160.0))
    datagrams.append(s.udp(180.2))  # the poll due at 181 follows 0.8 s later
    coincident, _ = s.poll(181.0)
    polls += [coincident, s.poll(241.0)[0]]
    datagrams.append(s.udp(270.0))
    polls.append(s.poll(301.0)[0])
    v = judge(s)
    check_common(v, "udp_blocked", "udp_not_delivered", [req, resp] + datagrams + polls[1:])  # polls after the 1st
    assert v.polls == 5 and "a poll, not a reaction" in v.reason and "identified by" not in v.reason
