# SPDX-License-Identifier: GPL-2.0-or-later
"""The scenarios: each returns (Capture, manifest fields); the manifest's frame numbers all come from here."""

from __future__ import annotations

import ipaddress
import struct

from captures.samplelib.sealed import NtlmSealer
from captures.samplelib.constants import (ASYNC_EMSMDB, AUTH_LEVEL_PRIVACY, EC_NOT_SUPPORTED, EMSMDB, EXCHANGE,
    EXCHANGE_PORT, NCA_S_OP_RNG_ERROR, NSPI, OXABREF, PT_REQUEST, PT_RESPONSE)
from captures.samplelib.ndr import callback_text, handle
from captures.samplelib.stubs import (async_connect_request, async_connect_response, async_wait_request,
    async_wait_response, ecdorpcext2_request, ecdorpcext2_response_compressed, empty_rops, fetch_request_rops,
    fetch_response_rops, new_mail_rops_text, register_push_request, register_push_response)
from captures.samplelib.pdu import co_pdu, request_body, response_body
from captures.samplelib.simulate import (Capture, Host, Outlook, Outlook2002, Rpc, Tcp, bulk_noise, dns_noise,
    epm_lookup, icmp_prohibited, udp_datagram)


def client_entry(o: Outlook, verdict, cause, evidence, notifications=0, callback="auto", status="auto",
                 client_ip=None):
    if callback == "auto":
        callback = getattr(o, "callback", None)
    if status == "auto":
        status = None
    # at packet privacy the szUserDN of the logon is encrypted: no mailbox can be read
    mailbox = o.user_dn if o.auth_level < AUTH_LEVEL_PRIVACY else None
    return {"client": ipaddress.ip_address(client_ip or o.client.ip).compressed, "mailbox": mailbox,
            "server": o.server.ip, "verdict": verdict, "cause": cause, "callback": callback,
            "register_status": None if status is None else "0x%08x" % status,
            "evidence_frames": list(evidence), "notifications": notifications}




def push_working_entry(o, register_frames, datagrams):
    """The expectation for a client whose registration succeeded and who reacts to every datagram."""
    return client_entry(o, "registered", "push_working", list(register_frames) + datagrams,
                        notifications=len(datagrams), status=0)

def one_client(name, start_offset_s, seed, client_ip, user, **outlook):
    """The usual start of a scenario: a capture, one client host, the Exchange server and the client's Outlook."""
    cap = Capture(name, start_offset_s, seed)
    c, s = Host(client_ip), Host(EXCHANGE)
    return cap, c, s, Outlook(cap, c, s, user, **outlook)



def logon_and_register(o, logon_at, register_after, cb_port, context, polls=None, status=0, fault=None):
    """The middle of most one-client scenarios: log on, register the client's own address, then (``polls``) poll
    from ``polls[0]`` until ``polls[1]``. Returns the register call's (request, answer) frames."""
    t = o.logon(logon_at)
    reg = o.register(t + register_after, o.client.ip, cb_port, context, status=status, fault=fault)
    if polls:
        o.poll_until(*polls)
    return reg

def expectation(cap, vantage, description, clients, **fields):
    """What a scenario returns: the capture and its manifest fields (``clients``: :func:`client_entry` dicts;
    ``fields``: the optional manifest keys, e.g. ``format``, ``mid_session``, ``secrets``)."""
    return cap, dict(vantage=vantage, description=description, **fields, clients=clients)

def s_push_working():
    """Legacy Outlook (EcDoConnect/EcDoRpc) registers, gets three datagrams, fetches within a second each time."""
    cap = Capture("push_working", 0, 101)
    c, s = Host("10.1.20.31"), Host(EXCHANGE)
    dns_noise(cap, c, 0.0)
    o = Outlook(cap, c, s, "alice", legacy=True)
    ctx = bytes.fromhex("0c5e2a9177d3f0b4")
    reg = logon_and_register(o, 0.05, 0.4, 2512, ctx)
    ev = list(reg)
    # polls until the first datagram (MS-OXCNOTIF 3.2.5.4), then push only
    o.poll(61.3)
    notes = o.notified((95.2, 168.7, 241.9), (1030, 1031, 1032), react_after=0.35)
    bulk_noise(cap, c, 130.0)
    o.poll(300.0, mail=False)
    return expectation(
        cap, "client",
        "Outlook 2000-era client (EcDoConnect/EcDoRpc, XOR-obfuscated ROPs) "
        "registers 10.1.20.31:2512 (status 0); three UDP datagrams from the server, each followed within "
        "0.35 s by an EcDoRpc fetch; DNS and HTTPS noise",
        [client_entry(o, "registered", "push_working", ev + notes, notifications=3, status=0)])


def s_server_refused():
    """Outlook 2003 (EcDoConnectEx/EcDoRpcExt2) against Exchange 2010: opnum 4 -> 0x80040102, then polling."""
    cap, c, s, o = one_client("server_refused", 3600, 102, "10.1.20.45", "bob")
    reg = logon_and_register(o, 0.1, 0.5, 3087, bytes.fromhex("6f75746c6f6f6b00a1b2c3d4e5f60718"),
                             (60.8, 330), status=EC_NOT_SUPPORTED)
    return expectation(
        cap, "client",
        "Outlook 2003 (EcDoConnectEx/EcDoRpcExt2) registers callback "
        "10.1.20.45:3087; the server answers 0x80040102 ecNotSupported; the client polls every ~60 s",
        [client_entry(o, "not_registered", "server_refused", list(reg), status=EC_NOT_SUPPORTED)])


def s_client_did_not_register():
    cap = Capture("client_did_not_register", 7200, 103)
    c, s = Host("10.1.21.12"), Host(EXCHANGE)
    dns_noise(cap, c, 0.0)
    o = Outlook(cap, c, s, "carol")
    o.logon(0.02)
    o.poll_until(60.4, 320)
    bulk_noise(cap, c, 150.0)
    return expectation(
        cap, "client",
        "Outlook 2003 logs on (EcDoConnectEx, pcmsPollsMax 60000) and never "
        "calls EcRRegisterPushNotification (PR_DISABLE_WINSOCK or a VPN client); polls every ~60 s",
        [client_entry(o, "not_registered", "client_did_not_register", list(o.frames["connect"]))])


def s_udp_not_delivered():
    """Server-side capture: registration OK, the server sends the datagram every ~60 s, no reaction, polls go on."""
    cap, c, s, o = one_client("udp_not_delivered", 10800, 104, "10.1.30.77", "dave")
    ctx = bytes.fromhex("d1c2b3a4958677685a4b3c2d1e0f0011")
    reg = logon_and_register(o, 0.1, 0.3, 1755, ctx)
    polls = o.poll_times(60.5, 330)
    notes = []
    tn = 84.0
    while tn < 330:
        notes.append((tn, None))
        tn += 60.0
    # interleave in time order
    items = sorted([(tp, "poll") for tp in polls] + [(tn, "udp") for tn, _ in notes])
    frames = []
    for tt, what in items:
        if what == "poll":
            o.poll(tt)
        else:
            frames.append(udp_datagram(cap, s, 1041, c, 1755, ctx, tt))
    return expectation(
        cap, "server",
        "server-side capture: status 0 for callback 10.1.30.77:1755; the "
        f"server sends the context datagram {len(frames)} times, ~60 s apart; the client never reacts "
        "and keeps polling every ~60 s (a firewall drops the UDP)",
        [client_entry(o, "udp_blocked", "udp_not_delivered", list(reg) + frames,
                      notifications=len(frames), status=0)])


def s_udp_not_received():
    """Client-side capture: registered (status 0), polling; twice a poll answer carries RopNotify (mail arrived)
    and the client fetches at once, yet no datagram ever reaches the client."""
    cap, c, s, o = one_client("udp_not_received", 14400, 105, "10.1.31.8", "erin")
    reg = logon_and_register(o, 0.1, 0.4, 2231, bytes.fromhex("8e1f77a3c4d5e6f7"))
    mail = []
    for i, tp in enumerate(o.poll_times(61.0, 330)):
        if i in (1, 3):
            _req, resp = o.poll(tp, mail=True)
            mail.append(resp)
            o._rop_call(tp + 0.06, fetch_request_rops(cap.rng), fetch_response_rops(cap.rng), 0.008)
        else:
            o.poll(tp)
    dns_noise(cap, c, 200.0)
    return expectation(
        cap, "client",
        "client-side capture: status 0 for 10.1.31.8:2231; two poll answers "
        "are large and carry RopNotify (new mail) and the client fetches at once, yet no UDP datagram "
        "arrives: something between server and client drops it",
        [client_entry(o, "udp_blocked", "udp_not_received", list(reg) + mail, status=0)])


def s_icmp_unreachable():
    """Server-side: every datagram answered by ICMP 3/13 (administratively prohibited) from a router."""
    cap, c, s, o = one_client("icmp_unreachable", 18000, 106, "10.1.50.23", "frank")
    router = Host("10.0.0.1")
    ctx = bytes.fromhex("41c8d2e9f00b1a2b3c4d5e6f70819203")
    reg = logon_and_register(o, 0.1, 0.3, 1900, ctx)
    ev = list(reg)
    o.poll_until(60.2, 300)
    for tn in (75.0, 135.0, 195.0):
        d = udp_datagram(cap, s, 1105, c, 1900, ctx, tn)
        ev += [d, icmp_prohibited(cap, router, s, d, tn + 0.0011)]
    return expectation(
        cap, "server",
        "server-side capture, gzip-compressed: status 0 for 10.1.50.23:1900; "
        "each of three datagrams draws an ICMP type 3 code 13 (administratively prohibited) from the "
        "router 10.0.0.1 quoting it; the client polls",
        [client_entry(o, "udp_blocked", "icmp_unreachable", ev, notifications=3, status=0)])


def s_nat():
    """Server-side: the client registers its private address; the server sees it as a public NAT address."""
    cap, c, s, o = one_client("callback_unreachable_nat", 21600, 107, "203.0.113.45", "grace")
    inside = Host("192.168.1.23")
    t = o.logon(0.1)
    ctx = bytes.fromhex("5a5b5c5d5e5f60616263646566676869")
    reg = o.register(t + 0.5, inside.ip, 2890, ctx)
    ev = list(reg)
    o.poll_until(60.7, 310)
    for tn in (100.0, 160.0):
        ev.append(udp_datagram(cap, s, 1210, inside, 2890, ctx, tn))
    return expectation(
        cap, "server",
        "server-side capture: client seen as 203.0.113.45 registers callback "
        "192.168.1.23:2890 (its address behind NAT); the server's two datagrams go to the private address "
        "and never arrive; polling goes on",
        [client_entry(o, "udp_blocked", "callback_unreachable_nat", ev, notifications=2, status=0)])


def s_three_clients():
    """Server-side capture with three clients: legacy push working, modern refused, modern never registering."""
    cap = Capture("three_clients", 25200, 108)
    s = Host(EXCHANGE)
    a, b, c = Host("10.1.40.11"), Host("10.1.40.12"), Host("10.1.40.13")
    oa = Outlook(cap, a, s, "henry", legacy=True)
    ob = Outlook(cap, b, s, "irene")
    oc = Outlook(cap, c, s, "jack")
    ta = oa.logon(0.1)
    ctx_a = bytes.fromhex("a0a1a2a3a4a5a6a7")
    reg_a = oa.register(ta + 0.3, a.ip, 2600, ctx_a)
    tb = ob.logon(4.2)
    reg_b = ob.register(tb + 0.4, b.ip, 3101, bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"),
                        status=EC_NOT_SUPPORTED)
    oc.logon(9.7)
    oa.poll(60.9)
    notes = oa.notified((88.4, 177.1, 262.6), 1320, react_after=0.6)
    ob.poll_until(64.8, 310)
    oc.poll_until(70.3, 310)
    dns_noise(cap, a, 30.0)
    return expectation(
        cap, "server",
        "server-side capture, three clients of one server: 10.1.40.11 "
        "(legacy) registered and reacts to 3 datagrams; 10.1.40.12 refused 0x80040102 and polls; "
        "10.1.40.13 never registers and polls",
        [
push_working_entry(oa, reg_a, notes),
client_entry(ob, "not_registered", "server_refused", list(reg_b), status=EC_NOT_SUPPORTED),
client_entry(oc, "not_registered", "client_did_not_register", list(oc.frames["connect"])),
])


def s_netmon():
    """The push_working story (modern client) written as a Network Monitor 2.1 file."""
    cap, c, s, o = one_client("push_working", 28800, 109, "10.1.22.60", "kate")
    ctx = bytes.fromhex("1122334455667788")
    reg = logon_and_register(o, 0.1, 0.4, 3344, ctx)
    o.poll(61.2)
    notes = o.notified((90.5, 171.3), 1077, react_after=0.22)
    return expectation(
        cap, "client",
        "Network Monitor 2.1 file (GMBU, frame table, "
        "per-frame media type): Outlook 2003 registered 10.1.22.60:3344, two datagrams each followed by a "
        "fetch within 0.25 s",
        [push_working_entry(o, reg, notes)],
        format="netmon2")


def s_segmented():
    """The opnum 4 request is split over three TCP segments, sent out of order, one retransmitted."""
    cap, c, s, o = one_client("push_working", 32400, 110, "10.1.23.99", "liam")
    t = o.logon(0.1) + 0.4
    ctx = bytes.fromhex("77e0c1d2a3b4f5061728394a5b6c7d8e")
    rpc, tcp = o.rpc, o.tcp
    pdu = co_pdu(PT_REQUEST, rpc.call_id, request_body(0, 4, register_push_request(o.cxh, ctx, c.ip, 2777)))
    rpc.call_id += 1
    base = tcp.nxt[True]
    parts = [(0, pdu[:40]), (40, pdu[40:70]), (70, pdu[70:])]
    tcp.segment(t, True, parts[0][1], seq=base)
    tcp.segment(t + 0.0004, True, parts[2][1], seq=base + 70)  # arrives before the middle part
    seg_b = tcp.segment(t + 0.0009, True, parts[1][1], seq=base + 40)  # fills the hole: the PDU completes here
    tcp.segment(t + 0.2009, True, parts[2][1], seq=base + 70)  # retransmission of the last part
    tcp.nxt[True] = base + len(pdu)
    cap.record(seg_b, "request", 4)
    resp = rpc.pdu(t + 0.2015, False, co_pdu(PT_RESPONSE, rpc.call_id - 1,
                                             response_body(0, register_push_response(o.cxh, 0x3A1, 0))),
                   "response", 4)
    o.callback = callback_text(c.ip, 2777)
    o.poll(60.8)
    tn = 131.6
    d = udp_datagram(cap, s, 1090, c, 2777, ctx, tn)
    o.fetch(tn + 0.4)
    return expectation(
        cap, "client",
        "the EcRRegisterPushNotification request travels in three TCP "
        "segments sent out of order (1, 3, 2) with segment 3 retransmitted; status 0; one datagram "
        "followed by a fetch",
        [client_entry(o, "registered", "push_working", [seg_b, resp, d], notifications=1, status=0)])


NSPI_PORT = 49160


def nspi_bind_response(h):  # NspiBind [out]: pServerGuid (unique, NULL), contextHandle, return value
    return struct.pack("<I", 0) + h + struct.pack("<I", 0)


def s_nspi_decoy():
    """An NSPI connection carries an opnum 4 whose stub even looks like a registration; the EMSMDB session never
    registers."""
    cap = Capture("client_did_not_register", 36000, 111)
    c, s = Host("10.1.24.17"), Host(EXCHANGE)
    t = epm_lookup(cap, c, s, 0.1, iface=NSPI, port=NSPI_PORT)
    tcp = Tcp(cap, c, s, NSPI_PORT)
    tcp.handshake(t)
    nspi = Rpc(tcp)
    nspi.bind(t + 0.002, [(0, NSPI)], str(NSPI_PORT))
    stat = struct.pack("<IIIIIIIII", 0, 0, 0, 0, 0, 0, 1252, 1033, 1033)
    nspi.call(t + 0.01, 0, 0, struct.pack("<I", 0) + stat + struct.pack("<I", 0),
              nspi_bind_response(handle(cap.rng)))
    decoy = register_push_request(handle(cap.rng), bytes.fromhex("deadbeefdeadbeef"), c.ip, 2555)
    nspi.call(t + 0.05, 0, 4, decoy, b"\x00" * 8)
    o = Outlook(cap, c, s, "mia")
    o.logon(1.0)
    o.poll_until(61.0, 300)
    return expectation(
        cap, "client",
        "decoy: an NSPI connection (port 49160) carries an opnum 4 call whose "
        "stub even holds a callback address; it is not a push registration. The EMSMDB session never "
        "calls EcRRegisterPushNotification and polls",
        [client_entry(o, "not_registered", "client_did_not_register", list(o.frames["connect"]))])


def s_alter_context():
    """EMSMDB added to a connection by alter_context; the connection was first bound to the OXABREF interface."""
    cap = Capture("push_working", 39600, 112)
    c, s = Host("10.1.25.140"), Host(EXCHANGE)
    t = epm_lookup(cap, c, s, 0.1)
    o = Outlook(cap, c, s, "noah")
    o.tcp = Tcp(cap, c, s, EXCHANGE_PORT)
    o.tcp.handshake(t)
    o.rpc = Rpc(o.tcp)
    o.rpc.bind(t + 0.002, [(0, OXABREF)], str(EXCHANGE_PORT))
    o.rpc.bind(t + 0.01, [(1, EMSMDB)], "", alter=True)
    o.ctx = 1
    t = o.connect(t + 0.03)
    ctx = bytes.fromhex("c0ffee00c0ffee01")
    reg = o.register(t + 0.3, c.ip, 4100, ctx)
    o.poll(60.6)
    notes = o.notified((77.7, 140.2, 205.9), 1199, react_after=0.15)
    bulk_noise(cap, c, 100.0, segments=16)
    return expectation(
        cap, "client",
        "pcapng: the EMSMDB connection is first bound to "
        "OXABREF (ctx 0) and EMSMDB is added by alter_context (ctx 1); registered, three datagrams each "
        "followed by a fetch; HTTPS noise",
        [push_working_entry(o, reg, notes)],
        format="pcapng")


def s_vlan_ipv6():
    cap = Capture("push_working", 43200, 113, vlan=20)
    c, s = Host("2001:db8:1::25"), Host("2001:db8::10")
    o = Outlook(cap, c, s, "olivia")
    t = o.logon(0.1, epm=False)
    ctx = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    reg = o.register(t + 0.4, c.ip, 5050, ctx)
    o.poll(60.3)
    notes = o.notified((99.9, 222.2), 1400, react_after=0.5)
    return expectation(
        cap, "client",
        "802.1Q VLAN 20, IPv6 only: callback [2001:db8:1::25]:5050 as a "
        "28-byte SOCKADDR_IN6 (family 23); two datagrams each followed by a fetch (no EPM: the bind_ack "
        "names the port)",
        [push_working_entry(o, reg, notes)])


def s_privacy_push():
    cap, c, s, o = one_client("push_working", 46800, 114, "10.1.26.5", "paul", auth_level=AUTH_LEVEL_PRIVACY)
    reg = logon_and_register(o, 0.1, 0.4, 2020, bytes.fromhex("13572468ace0bdf19876543210fedcba"))
    o.poll(61.4)
    notes = o.notified((101.1, 178.8, 259.4), 1150, react_after=0.3)
    return expectation(
        cap, "client",
        "packet privacy (NTLMSSP, auth level 6): every stub is encrypted, so "
        "the registration's status and callback are hidden; three datagrams from the server each followed "
        "by calls within 0.3 s show push working (judged from behaviour)",
        [client_entry(o, "registered", "push_working", list(reg) + notes, notifications=3,
                      callback=None)])


def s_privacy_polling():
    cap, c, s, o = one_client("encrypted_no_evidence", 50400, 115, "10.1.26.6", "quinn",
                              auth_level=AUTH_LEVEL_PRIVACY)
    reg = logon_and_register(o, 0.1, 0.4, 2021, bytes.fromhex("2468ace013579bdf2468ace013579bdf"), (60.9, 320))
    return expectation(
        cap, "client",
        "packet privacy: an (encrypted) EcRRegisterPushNotification and then "
        "only polling; the outcome cannot be told from this capture",
        [client_entry(o, "inconclusive", "encrypted_no_evidence", list(reg), callback=None)])


def _sealed_client_entry(o, verdict, cause, evidence, **kw):
    """The expectation once the session is decrypted with the manifest's ``secrets``: as on a plain session."""
    entry = client_entry(o, verdict, cause, evidence, **kw)
    entry["mailbox"] = o.user_dn
    return entry


def s_sealed_ntlmv2_push():
    """Packet privacy with real NTLMv2 sealing (captures/sealed.py): push working. Without the password only the
    behaviour tells (as privacy_push_working); with it, the registration's callback and status are read."""
    cap = Capture("sealed_push_working", 57600, 124)
    c, s = Host("10.1.28.7"), Host(EXCHANGE)
    sealer = NtlmSealer(cap.rng, "sam", "CONTOSO", SEALED_PASSWORDS["sam"], version="v2")
    o = Outlook(cap, c, s, "sam", auth_level=AUTH_LEVEL_PRIVACY, sealer=sealer)
    ctx = bytes.fromhex("5ea1ed0a11ce0b0b")
    reg = logon_and_register(o, 0.1, 0.4, 2040, ctx)
    o.poll(61.2)
    notes = o.notified((97.4, 170.2, 244.8), 1160, react_after=0.3)
    entry = dict(vantage="client", secrets=f"CONTOSO\\sam:{SEALED_PASSWORDS['sam']}",
                 description="packet privacy sealed with NTLMv2 (real keys; password in 'secrets'): without the "
                 "password push working is judged from behaviour (three datagrams each followed by calls); with "
                 "--secrets the registration (callback 10.1.28.7:2040, status 0) and the mailbox are read")
    entry["clients"] = [client_entry(o, "registered", "push_working", list(reg) + notes, notifications=3,
                                     callback=None)]
    entry["clients_with_secrets"] = [_sealed_client_entry(o, "registered", "push_working", list(reg) + notes,
                                                          notifications=3, status=0)]
    return cap, entry


def s_sealed_ntlmv1_refused():
    """Packet privacy with real NTLMv1 sealing (with extended session security: tshark 4.0 cannot check NTLMv1
    without it, its NTLMv1 code accepts a password only on that path): the server refuses the registration
    (0x80040102), the client polls. Without the password: encrypted_no_evidence."""
    cap = Capture("sealed_server_refused", 61200, 125)
    c, s = Host("10.1.28.8"), Host(EXCHANGE)
    sealer = NtlmSealer(cap.rng, "tina", "CONTOSO", SEALED_PASSWORDS["tina"], version="v1-ess")
    o = Outlook(cap, c, s, "tina", auth_level=AUTH_LEVEL_PRIVACY, sealer=sealer)
    reg = logon_and_register(o, 0.1, 0.5, 3041, bytes.fromhex("0b5e55ed0a11ce00"),
                             (60.7, 320), status=EC_NOT_SUPPORTED)
    entry = dict(vantage="client", secrets=f"tina:{SEALED_PASSWORDS['tina']}",
                 description="packet privacy sealed with NTLMv1 with extended session security (real keys; "
                 "password in 'secrets'): the server answers 0x80040102 and the client polls; without the password "
                 "nothing can be told, with --secrets it reads as server_refused")
    entry["clients"] = [client_entry(o, "inconclusive", "encrypted_no_evidence", list(reg), callback=None)]
    entry["clients_with_secrets"] = [_sealed_client_entry(o, "not_registered", "server_refused", list(reg),
                                                          status=EC_NOT_SUPPORTED)]
    return cap, entry


# Known passwords of the sealed samples (test accounts of a lab that does not exist)
SEALED_PASSWORDS = {"sam": "Summer-2026!", "tina": "Tina:pass 26"}


def s_registration_fault():
    cap, c, s, o = one_client("registration_fault", 54000, 116, "10.1.27.200", "rachel")
    reg = logon_and_register(o, 0.1, 0.4, 3030, bytes.fromhex("99aabbccddeeff00"),
                             (60.5, 300), fault=NCA_S_OP_RNG_ERROR)
    return expectation(
        cap, "client",
        "EcRRegisterPushNotification answered by a DCE/RPC fault "
        "nca_s_op_rng_error (0x1c010002); the client polls",
        [client_entry(o, "not_registered", "registration_fault", list(reg))])


def s_async_wait():
    """Outlook 2007: EcDoAsyncConnectEx, then EcDoAsyncWaitEx long-polls on AsyncEMSMDB; each completes with
    NotificationPending when mail arrives and is followed by a fetch."""
    cap, c, s, o = one_client("async_wait", 57600, 117, "10.1.28.71", "sam")
    t = o.logon(0.1)
    acxh = handle(cap.rng)
    async_conn = o.rpc.call(t + 0.2, 0, 14, async_connect_request(o.cxh), async_connect_response(acxh))
    tcp = Tcp(cap, c, s, EXCHANGE_PORT)
    tcp.handshake(t + 0.3)
    arpc = Rpc(tcp)
    arpc.bind(t + 0.302, [(0, ASYNC_EMSMDB)], str(EXCHANGE_PORT))
    completions = []
    start = t + 0.31
    for done in (96.4, 203.9):
        f_req, f_resp = arpc.call(start, 0, 0, async_wait_request(acxh), async_wait_response(1), delay=done - start,
                                  ack_after=0)
        completions.append(f_resp)
        o.fetch(done + 0.12)
        start = done + 0.3
    # a third wait is still outstanding when the capture ends
    cid = arpc.call_id
    arpc.call_id += 1
    arpc.pdu(start, True, co_pdu(PT_REQUEST, cid, request_body(0, 0, async_wait_request(acxh))), "request", 0)
    tcp.ack(start + 0.2, False)
    return expectation(
        cap, "client",
        "Outlook 2007: EcDoConnectEx, EcDoAsyncConnectEx (opnum 14), then "
        "EcDoAsyncWaitEx (AsyncEMSMDB opnum 0) on a second connection; two waits complete with "
        "pulFlagsOut=1 when mail arrives and the client fetches; no UDP needed",
        [client_entry(o, "registered", "async_wait", [async_conn[0]] + completions)])


def s_mid_session_notified():
    """Capture starts mid-session; an EPM lookup in the capture names the EMSMDB port; datagrams + reactions."""
    cap, c, s, o = one_client("notification_seen_registration_not_captured", 61200, 118, "10.1.29.33", "tina")
    o.attach_mid_session()
    o.poll(2.5)
    epm_lookup(cap, c, s, 20.0)  # e.g. the address book asking the endpoint mapper again
    notes = o.notified((45.3, 131.0, 219.8), 1061, react_after=0.4, dport=2345,
                       context=bytes.fromhex("55aa55aa00112233"))
    entry = dict(vantage="client", description="capture starts mid-session (no handshake, no bind, no logon on the "
                 "EMSMDB connection); an EPM ept_map in the capture names port 49155; three datagrams each "
                 "followed by a fetch within 0.4 s. Without a bind tshark cannot pair "
                 "responses with requests (it shows no opnum on them); the events list gives the true opnum")
    entry["clients"] = [client_entry(o, "registered", "notification_seen_registration_not_captured", notes,
                                     notifications=3)]
    entry["clients"][0]["mailbox"] = None
    return cap, entry


def s_mid_session_polling():
    cap, c, s, o = one_client("mid_session_no_evidence", 64800, 119, "10.1.29.34", "uma")
    o.attach_mid_session()
    epm_lookup(cap, c, s, 5.0)
    o.poll_until(12.0, 300)
    entry = dict(vantage="client", description="capture starts mid-session (EPM lookup present, no bind or logon on "
                 "the EMSMDB connection); polling only: nothing decides. Without a bind tshark cannot pair "
                 "responses with requests (it shows no opnum on them); the events list gives the true opnum")
    entry["clients"] = [client_entry(o, "inconclusive", "mid_session_no_evidence", [])]
    entry["clients"][0]["mailbox"] = None
    return cap, entry


def s_most_polls_carry_mail():
    """Client side: registered (status 0); the engineer sends a test message every minute, so four of five polls
    find mail (compressed answers: RopNotify unreadable) and the client fetches at once; no datagram arrives."""
    cap, c, s, o = one_client("udp_not_received", 82800, 124, "10.1.36.41", "yvonne")
    reg = logon_and_register(o, 0.1, 0.4, 2790, bytes.fromhex("3b9e51c07a24d816"))
    mail = []
    for i, tp in enumerate(o.poll_times(60.7, 330)):
        if i == 2:
            o.poll(tp)  # the one minute without a message: the empty answer
            continue
        payload = new_mail_rops_text(cap.rng, f"Test message {i + 1} from the helpdesk", "Helpdesk Contoso")
        _req, resp = o.rpc.call(tp, o.ctx, 11, ecdorpcext2_request(o.cxh, empty_rops()),
                                ecdorpcext2_response_compressed(o.cxh, payload), delay=0.004)
        mail.append(resp)
        o.fetch(tp + 0.05, notify=False)  # opens the message: two more ROP calls at once
    dns_noise(cap, c, 150.0)
    return expectation(
        cap, "client",
        "client side: status 0 for 10.1.36.41:2790; a "
        "test message every minute makes four of five polls carry mail (answers LZ77-compressed, so "
        "RopNotify is unreadable; three times the empty answer) and the client fetches at once; no UDP datagram: "
        "mail found by polling, so something drops the datagram",
        [client_entry(o, "udp_blocked", "udp_not_received", list(reg) + mail, status=0)])


def _regular_polls_with_mail(o: Outlook, polls, datagram_times):
    """Polls at their regular times; the first poll after each datagram finds the mail it announced and the client
    fetches it at once (the datagram itself never prompted anything)."""
    pending = sorted(datagram_times)
    for tp in polls:
        found = bool(pending) and pending[0] < tp
        while pending and pending[0] < tp:
            pending.pop(0)
        o.poll(tp, mail=found)
        if found:
            o.fetch(tp + 0.05, notify=False)


def s_mid_session_udp_ignored():
    """Server side. 10.1.42.17's session began before the capture (no bind, no registration in it); another
    client's logon right at the start (its bind_ack names port 49155) lets the dissector label the connection.
    The server sends the same 8 bytes to 10.1.42.17:2845 three times; the client never calls within 2 s and keeps
    polling every ~60 s (its polls then find the mail). The other client gets its datagrams and reacts."""
    cap = Capture("udp_not_delivered", 86400, 125)
    s = Host(EXCHANGE)
    a_host, b_host = Host("10.1.42.17"), Host("10.1.42.5")
    b = Outlook(cap, b_host, s, "zoe")
    tb = b.logon(0.3, epm=False)
    ctx_b = bytes.fromhex("5a6f650000000001")
    reg_b = b.register(tb + 0.3, b_host.ip, 2650, ctx_b)
    b.poll(61.2)  # calls of one connection are generated in time order (TCP sequence numbers follow creation)
    b_notes = b.notified((96.4, 187.9), 1203, react_after=0.3)
    a = Outlook(cap, a_host, s, "adam")
    a.attach_mid_session(sport=1467)
    polls = a.poll_times(8.0, 320)
    sent = [polls[0] + 24.0, polls[2] + 31.0, polls[3] + 17.5]
    notes = [udp_datagram(cap, s, 1171, a_host, 2845, bytes.fromhex("adad0e0f10111213"), tn) for tn in sent]
    _regular_polls_with_mail(a, polls, sent)
    entry = dict(vantage="server", mid_session=True, description="server side: 10.1.42.17's session began before "
                 "the capture (no bind, no logon, no registration); 10.1.42.5 logs on at the start and its bind_ack "
                 "names port 49155. The server sends the same 8 bytes to 10.1.42.17:2845 three times; no call within "
                 "2 s, the client keeps polling every ~60 s and its next poll finds the mail: the datagrams do not "
                 "reach Outlook (udp_not_delivered: the server only sends to a registered callback). 10.1.42.5 "
                 "reacts to both of its datagrams (push_working)")
    ea = client_entry(a, "udp_blocked", "udp_not_delivered", notes, notifications=3)
    ea["mailbox"] = None
    eb = push_working_entry(b, reg_b, b_notes)
    entry["clients"] = [eb, ea]  # sorted by IP as the analyzer lists them
    return cap, entry


def s_mid_session_poll_coincides():
    """Server side, mid-session, an ept_map answer in the capture names port 49155. Four datagrams with the same 8
    bytes; one arrives 1.1 s before a poll that was due anyway. That call is a poll, not a reaction: the other three
    datagrams get none."""
    cap, c, s, o = one_client("udp_not_delivered", 90000, 126, "10.1.43.9", "brian")
    o.attach_mid_session(sport=1502)
    epm_lookup(cap, c, s, 2.0)  # the address book asks the endpoint mapper again
    polls = o.poll_times(9.0, 330)
    sent = [polls[0] + 27.0, polls[2] - 1.1, polls[3] + 22.0, polls[4] + 35.0]
    notes = [udp_datagram(cap, s, 1299, c, 3121, bytes.fromhex("b21a9c4400000003"), tn) for tn in sent]
    coincident = []
    pending = sorted(sent)
    for tp in polls:
        found = bool(pending) and pending[0] < tp
        while pending and pending[0] < tp:
            pending.pop(0)
        f = o.poll(tp, mail=found)
        if tp == polls[2]:
            coincident.append(f[0])
        if found:
            o.fetch(tp + 0.05, notify=False)
    entry = dict(vantage="server", mid_session=True, description="server side, mid-session (no bind, no logon, no "
                 "registration); an ept_map answer names port 49155. The server sends the same 8 bytes to "
                 "10.1.43.9:3121 four times; the second arrives 1.1 s before a poll that was due anyway (60 s after "
                 "the previous one). That call is a poll, not a reaction: the other three datagrams get none, so "
                 "udp_not_delivered, with the coincident poll cited as a poll")
    e = client_entry(o, "udp_blocked", "udp_not_delivered", notes + coincident, notifications=4)
    e["mailbox"] = None
    entry["clients"] = [e]
    return cap, entry


def s_capture_too_short():
    cap, c, s, o = one_client("capture_too_short", 68400, 120, "10.1.32.9", "victor")
    o.logon(0.1)
    dns_noise(cap, c, 3.9)
    return expectation(
        cap, "client",
        "a 4-second capture: EPM, bind and EcDoConnectEx only",
        [client_entry(o, "inconclusive", "capture_too_short", [o.frames["connect"][0]])])


def s_registered_no_mail_seen():
    cap, c, s, o = one_client("registered_no_mail_seen", 72000, 121, "10.1.33.14", "wendy")
    reg = logon_and_register(o, 0.1, 0.3, 2468, bytes.fromhex("0a0b0c0d0e0f1011"), (60.6, 310))
    bulk_noise(cap, c, 42.0, segments=12)
    return expectation(
        cap, "client",
        "client side: status 0 for 10.1.33.14:2468, polling, no mail arrives "
        "while capturing (polling until the first notification is normal)",
        [client_entry(o, "registered", "registered_no_mail_seen", list(reg), status=0)])


def s_truncated():
    """The server_refused story, the file cut in the middle of a late poll's record."""
    cap, c, s, o = one_client("server_refused", 75600, 122, "10.1.34.50", "xavier")
    reg = logon_and_register(o, 0.1, 0.5, 3999, bytes.fromhex("feedfacecafebeef"), status=EC_NOT_SUPPORTED)
    cut = None
    for i, tp in enumerate(o.poll_times(60.3, 330)):
        f = o.poll(tp)
        if i == 3:
            cut = f[1]  # the record of this response is cut in half
    return expectation(
        cap, "client",
        "the server_refused story in a file cut in the "
        "middle of a record (a poll answer): every frame before the cut is readable, a warning is expected",
        [client_entry(o, "not_registered", "server_refused", list(reg), status=EC_NOT_SUPPORTED)],
        truncate_frames=cut)


def s_no_emsmdb():
    cap = Capture("no_emsmdb_session", 79200, 123)
    c, s = Host("10.1.35.66"), Host(EXCHANGE)
    dns_noise(cap, c, 0.0)
    t = epm_lookup(cap, c, s, 0.1, iface=NSPI, port=NSPI_PORT)
    tcp = Tcp(cap, c, s, NSPI_PORT)
    tcp.handshake(t)
    nspi = Rpc(tcp)
    nspi.bind(t + 0.002, [(0, NSPI)], str(NSPI_PORT))
    stat = struct.pack("<IIIIIIIII", 0, 0, 0, 0, 0, 0, 1252, 1033, 1033)
    nspi.call(t + 0.01, 0, 0, struct.pack("<I", 0) + stat + struct.pack("<I", 0),
              nspi_bind_response(handle(cap.rng)))
    bulk_noise(cap, c, 5.0, segments=10)
    return expectation(
        cap, "client",
        "no EMSMDB at all: DNS, an address-book (NSPI) session, HTTPS; no "
        "Outlook client to judge (no_emsmdb_session)",
        [])


def s_server_side_endpoints_learnt_late():
    """Server-side capture of two Exchange servers; four Outlook clients already logged on when it starts. The
    EMSMDB endpoint of the first server becomes known from an ept_map answer to a fifth client at t=95 s, the
    second server's from a sixth client's bind at t=120 s; the earlier sessions' calls are labelled too."""
    cap = Capture("server_side_endpoints_learnt_late", 86400, 131)
    s1, s2 = Host(EXCHANGE), Host("10.0.0.11")
    port2 = 49160
    a = Outlook(cap, Host("10.3.1.11"), s1, "amy")
    b = Outlook(cap, Host("10.3.1.12"), s1, "ben")
    c = Outlook(cap, Host("10.3.1.13"), s2, "cid", port=port2)
    d = Outlook(cap, Host("10.3.1.14"), s2, "dee", port=port2)
    clients = []
    for o, udp_port in ((a, 2701), (c, 2703)):  # notified, each datagram fetched within half a second
        o.attach_mid_session()
        ctx = bytes(o.cap.rng.randrange(256) for _ in range(8))
        notes = o.notified((12.0 + udp_port % 7, 140.0 + udp_port % 5), (1040, 1041), react_after=0.45,
                           dport=udp_port, context=ctx)
        clients.append((o, notes))
    for o in (b, d):  # only polling (every 60 s): no evidence either way
        o.attach_mid_session()
        for tp in o.poll_times(5.0 + (o is d) * 7, 200.0):
            o.poll(tp)
    epm_lookup(cap, Host("10.3.1.15"), s1, 95.0)  # e.g. an address-book lookup: the ept_map answer names the port
    f = Outlook(cap, Host("10.3.1.16"), s2, "fay", port=port2)  # bind on s2's port, no endpoint mapper
    tf = f.logon(120.0, epm=False)
    f.poll(tf + 1.0)
    entry = dict(vantage="server", description="server side, two Exchange servers (10.0.0.10:49155, "
                 "10.0.0.11:49160); amy, ben (server 1) and cid, dee (server 2) are mid-session when the capture "
                 "starts (no handshake, no bind); server 1's EMSMDB port is learnt from an ept_map answer to "
                 "10.3.1.15 at 95 s, server 2's from fay's bind at 120 s: every earlier call of the four sessions is EMSMDB "
                 "(interface_source epm / endpoint). amy and cid get datagrams they react to; ben and dee only poll")
    entry["clients"] = [
        {**client_entry(a, "registered", "notification_seen_registration_not_captured", clients[0][1],
                        notifications=2), "mailbox": None},
        {**client_entry(b, "inconclusive", "mid_session_no_evidence", []), "mailbox": None},
        {**client_entry(c, "registered", "notification_seen_registration_not_captured", clients[1][1],
                        notifications=2), "mailbox": None},
        {**client_entry(d, "inconclusive", "mid_session_no_evidence", []), "mailbox": None},
        client_entry(f, "not_registered", "client_did_not_register", list(f.frames["connect"])),
    ]
    entry["interface_sources"] = {"10.3.1.11": "epm", "10.3.1.12": "epm", "10.3.1.13": "endpoint",
                                  "10.3.1.14": "endpoint"}
    return cap, entry


def s_mid_session_stub_shape():
    """Outlook 2002 mid-session on a port nothing in the capture names (no bind, no endpoint mapper): EMSMDB is
    recognised by its EcDoRpc stubs only; two datagrams, each fetched at once."""
    cap = Capture("mid_session_stub_shape", 90000, 132)
    c, s = Host("10.3.2.21"), Host("10.0.0.12")
    o = Outlook2002(cap, c, s, "gus", port=50001)
    o.attach_mid_session()
    o.poll(1.5)
    o.poll(62.0)
    ctx = bytes.fromhex("3c0f5aa500000001")
    notes = o.notified((80.4, 151.9), 1077, react_after=0.3, dport=3110, context=ctx)
    o.poll(185.0)
    entry = dict(vantage="client", description="Outlook 2002 (EcDoRpc with the ROP buffers of the public mgove413 "
                 "capture) mid-session on 10.0.0.12:50001; no bind, no ept_map, no known port: EMSMDB recognised "
                 "by stub shape (repeated context handle, consistent NDR counts, XOR-0xA5 ROP buffers in both "
                 "directions); two datagrams each followed by a fetch within 0.3 s")
    entry["clients"] = [{**client_entry(o, "registered", "notification_seen_registration_not_captured", notes,
                                        notifications=2), "mailbox": None}]
    entry["interface_sources"] = {"10.3.2.21": "stub_shape"}
    return cap, entry


def s_lost_segment_after_bind():
    """The capture lost the client's first segment after the bind (its EcDoConnectEx request): the server's answer
    acknowledges it, so the hole is capture loss; every later call keeps its own frame."""
    cap, c, s, o = one_client("lost_segment_after_bind", 93600, 133, "10.3.3.31", "hal")
    t = o.logon(0.05)
    lost_request, its_answer = o.frames["connect"]
    cap.lost.add(lost_request)
    cap.request_lost.add(its_answer)
    ctx = bytes.fromhex("77a0c3e1d2b4f596")
    reg = list(o.register(t + 0.4, c.ip, 2620, ctx))
    o.poll(61.0)
    notes = o.notified((90.5, 170.2), (1050, 1051), react_after=0.35)
    o.poll(240.0)
    entry = dict(vantage="client", description="the segment right after the EMSMDB bind (the EcDoConnectEx request) "
                 "is missing from the capture; the server's answer acknowledges it (capture loss, not network "
                 "loss). Registration (status 0), two datagrams each fetched within 0.35 s: every PDU after the "
                 "hole keeps its own frame (the file itself is whole: no reader warning)")
    # the mailbox (szUserDN) was in the lost EcDoConnectEx request
    entry["clients"] = [{**client_entry(o, "registered", "push_working", reg + notes, notifications=2, status=0),
                         "mailbox": None}]
    entry["lost_frames"] = 1
    return cap, entry


def s_decoy_mid_session_dcerpc():
    """Other DCE/RPC services mid-session, never Outlook: DRSUAPI-like (a context handle in every request, none
    returned), SAMR-like (handles both ways, no ROP buffer), and random stubs under opnums 2 and 11."""
    cap = Capture("decoy_mid_session_dcerpc", 97200, 134)
    c, dc = Host("10.3.4.41"), Host("10.0.0.20")
    rng = cap.rng

    def mid_rpc(port):
        tcp = Tcp(cap, c, dc, port)
        rpc = Rpc(tcp)
        rpc.call_id = 10 + rng.randrange(20)
        return rpc

    drs, hdrs = mid_rpc(49667), handle(rng)
    for k in range(6):  # IDL_DRSGetNCChanges-like (opnum 3) and IDL_DRSCrackNames (12): handle in, no handle out
        drs.call(1.0 + k * 2, 0, 3 if k % 2 else 12, hdrs + struct.pack("<II", 8, 1) + bytes(rng.randrange(256)
                 for _ in range(40)), struct.pack("<II", 1, 8) + bytes(rng.randrange(256) for _ in range(60))
                 + struct.pack("<I", 0), ack_after=0)
    samr, hsam = mid_rpc(49668), handle(rng)
    for k in range(6):  # SamrLookupDomain (5) / SamrOpenDomain (7)-like: handles both ways, opnums 2 and 11 too
        samr.call(2.0 + k * 2, 0, (2, 11, 7, 2, 11, 5)[k], hsam + struct.pack("<III", 0x20000, 8, 8)
                  + bytes(rng.randrange(256) for _ in range(24)), hsam + struct.pack("<I", 0), ack_after=0)
    noise = mid_rpc(49669)
    for k in range(8):  # random stubs under opnums 2 and 11
        noise.call(3.0 + k * 2, 0, 2 if k % 2 else 11, bytes(rng.randrange(256) for _ in range(56 + 8 * k)),
                   bytes(rng.randrange(256) for _ in range(48 + 4 * k)), ack_after=0)
    return expectation(
        cap, "client",
        "decoy: three DCE/RPC connections to a domain controller already "
        "running when the capture starts (no bind, no endpoint mapper): DRSUAPI-like calls (context "
        "handle in each request, none returned), SAMR-like calls under opnums 2/11/5/7 (handles both "
        "ways, no ROP buffer) and random stubs under opnums 2 and 11. None may become an Outlook client",
        [])


SCENARIOS = {
    "push_working.pcap": s_push_working,
    "server_refused.pcap": s_server_refused,
    "client_did_not_register.pcap": s_client_did_not_register,
    "udp_not_delivered.pcap": s_udp_not_delivered,
    "udp_not_received.pcap": s_udp_not_received,
    "icmp_unreachable.pcap.gz": s_icmp_unreachable,
    "callback_unreachable_nat.pcap": s_nat,
    "three_clients.pcap": s_three_clients,
    "netmon2_push_working.cap": s_netmon,
    "segmented_reordered_opnum4.pcap": s_segmented,
    "nspi_decoy.pcap": s_nspi_decoy,
    "alter_context.pcapng": s_alter_context,
    "vlan_ipv6.pcap": s_vlan_ipv6,
    "privacy_push_working.pcap": s_privacy_push,
    "privacy_polling.pcap": s_privacy_polling,
    "registration_fault.pcap": s_registration_fault,
    "async_wait.pcap": s_async_wait,
    "mid_session_notified.pcap": s_mid_session_notified,
    "mid_session_polling.pcap": s_mid_session_polling,
    "mid_session_udp_ignored.pcap": s_mid_session_udp_ignored,
    "mid_session_poll_coincides.pcap": s_mid_session_poll_coincides,
    "most_polls_carry_mail.pcap": s_most_polls_carry_mail,
    "capture_too_short.pcap": s_capture_too_short,
    "registered_no_mail_seen.pcap": s_registered_no_mail_seen,
    "truncated.pcap": s_truncated,
    "no_emsmdb.pcap": s_no_emsmdb,
    "server_side_endpoints_learnt_late.pcap": s_server_side_endpoints_learnt_late,
    "mid_session_stub_shape.pcap": s_mid_session_stub_shape,
    "lost_segment_after_bind.pcap": s_lost_segment_after_bind,
    "decoy_mid_session_dcerpc.pcap": s_decoy_mid_session_dcerpc,
    "sealed_ntlmv2_push_working.pcap": s_sealed_ntlmv2_push,
    "sealed_ntlmv1_server_refused.pcap": s_sealed_ntlmv1_refused,
}
