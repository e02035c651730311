# SPDX-License-Identifier: GPL-2.0-or-later
"""The session simulator: a capture, its hosts, TCP connections, DCE/RPC associations, and an Outlook client's
EMSMDB session, plus the other traffic a capture holds (UDP datagrams, ICMP errors, DNS and HTTPS noise)."""

from __future__ import annotations

import ipaddress
import random
import struct

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from analyzer.dissect.layouts import AUTH3_HEADER
from captures.samplelib.constants import (AUTH_LEVEL_PRIVACY, AUTH_NTLMSSP, BTFN_UUID, DN, EMSMDB, EPM, EPOCH_BASE,
    EXCHANGE, EXCHANGE_PORT, LISTED_KINDS, NDR_UUID, PT_ALTER, PT_ALTER_RESP, PT_AUTH3, PT_BIND, PT_BIND_ACK,
    PT_FAULT, PT_REQUEST, PT_RESPONSE)
from captures.samplelib.ndr import callback_text, handle
from captures.samplelib.stubs import (OUTLOOK2002_FETCH_ROPS, OUTLOOK2002_POLL_ROPS, connect_request,
    connect_response, ecdorpc_request, ecdorpc_request_2002, ecdorpc_response, ecdorpc_response_2002,
    ecdorpcext2_request, ecdorpcext2_response, empty_rops, ept_map_request, ept_map_response, fetch_request_rops,
    fetch_response_rops, new_mail_rops, ntlm_authenticate, ntlm_challenge, ntlm_negotiate, register_push_request,
    register_push_response, rop_payload)
from captures.samplelib.pdu import NIL_SYNTAX, bind_ack_body, bind_body, co_pdu, fault_body, request_body, response_body


class Host:
    def __init__(self, ip, mac=None):
        self.ip = ip
        self.v6 = ipaddress.ip_address(ip).version == 6
        if mac is None:
            packed = ipaddress.ip_address(ip).packed
            mac = "02:00:%02x:%02x:%02x:%02x" % tuple(packed[-4:])
        self.mac = mac


class Capture:
    def __init__(self, name, start_offset_s, seed, vlan=None):
        self.name = name
        self.base_us = (EPOCH_BASE + start_offset_s) * 1_000_000
        self.frames: list[tuple[int, bytes]] = []  # (timestamp µs since epoch, bytes)
        self.events: list[list] = []  # [frame, kind, opnum]
        self.rng = random.Random(seed)
        self.vlan = vlan
        self.next_port = 49700 + self.rng.randrange(200)
        self.lost: set[int] = set()  # creation indices of frames the capture lost (written nowhere)
        self.request_lost: set[int] = set()  # frames of answers whose request was lost: opnum not knowable

    def ephemeral_port(self):
        self.next_port += 1 + self.rng.randrange(3)
        return self.next_port

    def add(self, t, pkt) -> int:
        """Add a frame; returns its creation index. Frames are generated per conversation and put in time order
        (stable) at the end, so frame numbers are only known after :meth:`finish` (see :meth:`number`)."""
        ts = self.base_us + int(round(t * 1_000_000))
        self.frames.append((ts, bytes(pkt)))
        return len(self.frames) - 1

    def finish(self):
        order = sorted((k for k in range(len(self.frames)) if k not in self.lost), key=lambda k: self.frames[k][0])
        self._number = {k: n + 1 for n, k in enumerate(order)}
        self.sorted_frames = [self.frames[k] for k in order]
        self.events = sorted(([self._number[k], kind, None if k in self.request_lost else op]
                              for k, kind, op in self.events if k not in self.lost), key=lambda e: e[0])

    def number(self, k) -> int:
        return self._number[k]

    def l2(self, src: Host, dst: Host, l3):
        eth = Ether(src=src.mac, dst=dst.mac)
        if self.vlan is not None:
            return eth / Dot1Q(vlan=self.vlan) / l3
        return eth / l3

    def ip(self, src: Host, dst: Host, ttl=128):
        if src.v6:
            return IPv6(src=src.ip, dst=dst.ip, hlim=ttl)
        return IP(src=src.ip, dst=dst.ip, ttl=ttl, id=self.rng.randrange(65536), flags="DF")

    def record(self, frame, kind, opnum):
        if kind in LISTED_KINDS:
            self.events.append([frame, kind, opnum])

    @property
    def duration(self):
        return (self.sorted_frames[-1][0] - self.sorted_frames[0][0]) / 1e6 if self.frames else 0.0


class Tcp:
    MSS = 1460

    def __init__(self, cap: Capture, client: Host, server: Host, dport, sport=None):
        self.cap, self.c, self.s = cap, client, server
        self.cport = sport if sport is not None else cap.ephemeral_port()
        self.sport = dport
        self.nxt = {True: cap.rng.randrange(1 << 32), False: cap.rng.randrange(1 << 32)}  # next seq per side

    def segment(self, t, from_client, payload=b"", flags="PA", seq=None):
        src, dst = (self.c, self.s) if from_client else (self.s, self.c)
        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        seq = self.nxt[from_client] if seq is None else seq
        ack = self.nxt[not from_client] if "A" in flags else 0
        tcp = TCP(sport=sp, dport=dp, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF, flags=flags,
                  window=64240 if from_client else 65535)
        pkt = self.cap.l2(src, dst, self.cap.ip(src, dst) / tcp / payload) if payload else \
            self.cap.l2(src, dst, self.cap.ip(src, dst) / tcp)
        return self.cap.add(t, pkt)

    def handshake(self, t, rtt=0.0006):
        self.segment(t, True, flags="S")
        self.nxt[True] += 1
        self.segment(t + rtt / 2, False, flags="SA")
        self.nxt[False] += 1
        return self.segment(t + rtt, True, flags="A")

    def send(self, t, from_client, payload, gap=0.00002):
        """Send payload in MSS-sized segments; returns the frame carrying its last byte."""
        frame = None
        for i in range(0, len(payload), self.MSS):
            chunk = payload[i : i + self.MSS]
            frame = self.segment(t + gap * (i // self.MSS), from_client, chunk)
            self.nxt[from_client] += len(chunk)
        return frame

    def ack(self, t, from_client):
        return self.segment(t, from_client, flags="A")

    def close(self, t):
        self.segment(t, True, flags="FA")
        self.nxt[True] += 1
        self.segment(t + 0.0003, False, flags="FA")
        self.nxt[False] += 1
        return self.segment(t + 0.0006, True, flags="A")


class Rpc:
    """A DCE/RPC association over one TCP connection; records the listed PDUs in the capture's event list."""

    def __init__(self, tcp: Tcp, auth_level=0, user="alice", sealer=None):
        self.tcp = tcp
        self.sealer = sealer  # captures/sealed.py NtlmSealer: real NTLMSSP tokens and sealing (sealed_* samples)
        self.cap = tcp.cap
        self.call_id = 1
        self.auth_level = auth_level
        self.user = user
        self.ctx_iface = {}
        self.auth_seq = 0

    def pdu(self, t, from_client, data, kind, opnum=None):
        frame = self.tcp.send(t, from_client, data)
        self.cap.record(frame, kind, opnum)
        return frame

    def _verifier(self):
        """NTLMSSP message signature (version 1, checksum, sequence number) for a call at packet privacy."""
        self.auth_seq += 1
        token = struct.pack("<I", 1) + bytes(self.cap.rng.randrange(256) for _ in range(8)) + \
            struct.pack("<I", self.auth_seq - 1)
        return (AUTH_NTLMSSP, self.auth_level, token)

    def bind(self, t, contexts, sec_addr, results=None, alter=False, rtt=0.001):
        """contexts: [(ctx_id, iface)]: each offered with NDR; results default to acceptance. Windows also
        offers a bind-time feature negotiation context (answered with negotiate_ack) on the first bind."""
        offered = [(cid, iface, [(NDR_UUID, 2)]) for cid, iface in contexts]
        if not alter:
            offered.append((contexts[-1][0] + 1, contexts[0][1], [(BTFN_UUID, 1)]))
        acks = results or [(0, 0, (NDR_UUID, 2))] * len(contexts)
        if not alter:
            acks = acks + [(3, 3, NIL_SYNTAX)]
        for (cid, iface), (res, _r, _s) in zip(contexts, acks):
            if res == 0:
                self.ctx_iface[cid] = iface
        auth_req = auth_ack = None
        if self.auth_level and not alter and self.sealer is not None:
            auth_req = (AUTH_NTLMSSP, self.auth_level, self.sealer.negotiate())
            auth_ack = (AUTH_NTLMSSP, self.auth_level, self.sealer.challenge())
        elif self.auth_level and not alter:
            auth_req = (AUTH_NTLMSSP, self.auth_level, ntlm_negotiate())
            auth_ack = (AUTH_NTLMSSP, self.auth_level, ntlm_challenge(self.cap.rng))
        cid = self.call_id
        self.call_id += 1
        f1 = self.pdu(t, True, co_pdu(PT_ALTER if alter else PT_BIND, cid, bind_body(offered, 0), auth=auth_req),
                      "alter_context" if alter else "bind")
        f2 = self.pdu(t + rtt, False,
                      co_pdu(PT_ALTER_RESP if alter else PT_BIND_ACK, cid,
                             bind_ack_body(acks, "" if alter else sec_addr, 0x1234 + self.tcp.cport), auth=auth_ack),
                      "alter_context_resp" if alter else "bind_ack")
        if auth_req is not None:
            auth3 = AUTH3_HEADER.pack()  # the 4 pad bytes of an auth3 body
            if self.sealer is not None:
                token = self.sealer.authenticate()
            else:
                token = ntlm_authenticate(self.cap.rng, self.user)
            self.pdu(t + rtt + 0.0005, True, co_pdu(PT_AUTH3, cid, auth3, auth=(AUTH_NTLMSSP, self.auth_level, token)),
                     "auth3")
        return f1, f2

    def call(self, t, ctx_id, opnum, req_stub, resp_stub, delay=0.003, fault=None, ack_after=0.2):
        """Request and response (or fault). Returns (request frame, response/fault frame)."""
        cid = self.call_id
        self.call_id += 1
        enc = self.auth_level >= AUTH_LEVEL_PRIVACY
        rng = self.cap.rng
        placeholder = (AUTH_NTLMSSP, self.auth_level, b"\x00" * 16)
        if enc and self.sealer is not None:
            req = self.sealer.seal(co_pdu(PT_REQUEST, cid, request_body(ctx_id, opnum, req_stub), auth=placeholder),
                                   True)
        elif enc:
            body = request_body(ctx_id, opnum, bytes(rng.randrange(256) for _ in range(len(req_stub))),
                                alloc_hint=len(req_stub))
            req = co_pdu(PT_REQUEST, cid, body, auth=self._verifier())
        else:
            req = co_pdu(PT_REQUEST, cid, request_body(ctx_id, opnum, req_stub))
        f1 = self.pdu(t, True, req, "request", opnum)
        if fault is not None:
            f2 = self.pdu(t + delay, False, co_pdu(PT_FAULT, cid, fault_body(ctx_id, fault), flags=0x23), "fault",
                          opnum)
        elif enc and self.sealer is not None:
            f2 = self.pdu(t + delay, False, self.sealer.seal(co_pdu(PT_RESPONSE, cid, response_body(ctx_id, resp_stub),
                                                                    auth=placeholder), False), "response", opnum)
        elif enc:
            body = response_body(ctx_id, bytes(rng.randrange(256) for _ in range(len(resp_stub))),
                                 alloc_hint=len(resp_stub))
            f2 = self.pdu(t + delay, False, co_pdu(PT_RESPONSE, cid, body, auth=self._verifier()), "response",
                          opnum)
        else:
            f2 = self.pdu(t + delay, False, co_pdu(PT_RESPONSE, cid, response_body(ctx_id, resp_stub)), "response",
                          opnum)
        if ack_after:
            self.tcp.ack(t + delay + ack_after, True)
        return f1, f2


# ------------------------------------------------------------------------------------------------------------------
# Outlook building blocks


def epm_lookup(cap, client: Host, server: Host, t, iface=EMSMDB, port=EXCHANGE_PORT):
    """Endpoint mapper: connect to TCP 135, bind EPM, ept_map for the interface, close. Returns t after."""
    tcp = Tcp(cap, client, server, 135)
    tcp.handshake(t)
    rpc = Rpc(tcp)
    rpc.bind(t + 0.002, [(0, EPM)], "135")
    rpc.call(t + 0.005, 0, 3, ept_map_request(iface), ept_map_response(iface, port, server.ip), delay=0.001,
             ack_after=0)
    tcp.close(t + 0.010)
    return t + 0.02


class Outlook:
    """One Outlook client's EMSMDB session with the Exchange server (or the visible parts of it)."""

    def __init__(self, cap, client: Host, server: Host, name, legacy=False, auth_level=0, port=EXCHANGE_PORT,
                 display=None, sealer=None):
        self.cap, self.client, self.server = cap, client, server
        self.legacy = legacy
        self.name = name
        self.user_dn = DN % name
        self.display = display or name.capitalize() + " Example"
        self.port = port
        self.auth_level = auth_level
        self.sealer = sealer
        self.cxh = handle(cap.rng)
        self.ctx = 0
        self.rpc = None
        self.tcp = None
        self.frames = {}  # name -> frame, for the manifest

    # --- session start
    def logon(self, t, epm=True, sport=None):
        if epm:
            t = epm_lookup(self.cap, self.client, self.server, t, port=self.port)
        self.tcp = Tcp(self.cap, self.client, self.server, self.port, sport=sport)
        self.tcp.handshake(t)
        self.rpc = Rpc(self.tcp, auth_level=self.auth_level, user=self.name, sealer=self.sealer)
        self.rpc.bind(t + 0.002, [(0, EMSMDB)], str(self.port))
        return self.connect(t + 0.02)

    def attach_mid_session(self, sport=None):
        """The connection is already up when the capture starts: no handshake, no bind."""
        self.tcp = Tcp(self.cap, self.client, self.server, self.port, sport=sport)
        self.rpc = Rpc(self.tcp, auth_level=self.auth_level, user=self.name)
        self.rpc.call_id = 40 + self.cap.rng.randrange(50)
        self.rpc.ctx_iface[0] = EMSMDB

    def connect(self, t, poll_ms=60000):
        op = 0 if self.legacy else 10
        f = self.rpc.call(t, self.ctx, op, connect_request(self.user_dn, not self.legacy),
                          connect_response(self.cxh, poll_ms, not self.legacy, self.display), delay=0.03)
        self.frames["connect"] = f
        return t + 0.05

    def register(self, t, cb_ip, cb_port, context, status=0, fault=None):
        req = register_push_request(self.cxh, context, cb_ip, cb_port)
        resp = register_push_response(self.cxh, 0x2F1 if status == 0 else 0, status)  # handle echoed (§1.5)
        f = self.rpc.call(t, self.ctx, 4, req, resp, delay=0.002, fault=fault)
        self.frames["register"] = f
        self.callback = callback_text(cb_ip, cb_port)
        self.callback_port = cb_port
        self.context = context
        return f

    def notified(self, times, sport, react_after, dport=None, context=None, dst=None):
        """The server's notification datagrams at ``times`` (from UDP port ``sport``, or ``sport[i]`` for the i-th),
        to the registered callback port and context unless given, each followed by the client's fetch
        ``react_after`` seconds later. Returns the datagram frames."""
        frames = []
        for i, t in enumerate(times):
            port = sport if isinstance(sport, int) else sport[i]
            frames.append(udp_datagram(self.cap, self.server, port, dst or self.client,
                                       self.callback_port if dport is None else dport,
                                       self.context if context is None else context, t))
            self.fetch(t + react_after)
        return frames

    # --- ROP traffic
    def _rop_call(self, t, req_payload, resp_payload, delay):
        if self.legacy:
            return self.rpc.call(t, self.ctx, 2, ecdorpc_request(self.cxh, req_payload),
                                 ecdorpc_response(self.cxh, resp_payload), delay=delay)
        return self.rpc.call(t, self.ctx, 11, ecdorpcext2_request(self.cxh, req_payload),
                             ecdorpcext2_response(self.cxh, resp_payload), delay=delay)

    def poll(self, t, mail=False):
        """The polling call: an empty ROP request; the answer is empty, or carries RopNotify when mail is queued."""
        return self._rop_call(t, empty_rops(), new_mail_rops(self.cap.rng) if mail else empty_rops(), 0.004)

    def fetch(self, t, notify=True):
        """Reaction to new mail: fetch the notification details and the message."""
        f1 = self._rop_call(t, empty_rops(), new_mail_rops(self.cap.rng) if notify else empty_rops(), 0.005)
        f2 = self._rop_call(t + 0.03, fetch_request_rops(self.cap.rng), fetch_response_rops(self.cap.rng), 0.008)
        return f1, f2

    def poll_until(self, start, end):
        """Poll from ``start`` until ``end`` at the :meth:`poll_times` (all times drawn first, then the calls)."""
        for t in self.poll_times(start, end):
            self.poll(t)

    def poll_times(self, start, end, period=60.0):
        """Unprompted calls every pcmsPollsMax (60 s) plus a little deterministic jitter."""
        out = []
        t = start
        while t < end:
            out.append(t)
            t += period + self.cap.rng.uniform(0.2, 2.5)
        return out


def udp_datagram(cap, server: Host, sport, dst: Host, dport, payload, t):
    return cap.add(t, cap.l2(server, dst, cap.ip(server, dst) / UDP(sport=sport, dport=dport) / payload))


def icmp_prohibited(cap, router: Host, server: Host, datagram_frame, t):
    """ICMP type 3 code 13 (communication administratively prohibited) from a filtering router back to the
    server, quoting the IP header and first 8 bytes of the dropped datagram."""
    raw = cap.frames[datagram_frame][1]  # creation index
    ip_start = 14 + (4 if cap.vlan is not None else 0)
    quoted = raw[ip_start : ip_start + 20 + 8]
    return cap.add(t, cap.l2(router, server, IP(src=router.ip, dst=server.ip, ttl=254, id=0) /
                             ICMP(type=3, code=13) / quoted))


def dns_noise(cap, client: Host, t, name="mail.contoso.example"):
    dns_server = Host("10.0.0.2")
    q = cap.rng.randrange(65536)
    sport = cap.ephemeral_port()
    cap.add(t, cap.l2(client, dns_server, cap.ip(client, dns_server) / UDP(sport=sport, dport=53) /
                      DNS(id=q, rd=1, qd=DNSQR(qname=name))))
    ans = DNS(id=q, qr=1, rd=1, ra=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, ttl=3600, rdata=EXCHANGE))
    return cap.add(t + 0.0008, cap.l2(dns_server, client, cap.ip(dns_server, client) / UDP(sport=53, dport=sport)
                                      / ans))


def bulk_noise(cap, client: Host, t, segments=24):
    """A bulk HTTPS download: irrelevant to the analysis, must cost almost nothing."""
    web = Host("198.51.100.80")
    tcp = Tcp(cap, client, web, 443)
    tcp.handshake(t)
    tcp.send(t + 0.001, True, b"\x16\x03\x01\x00\x40" + bytes(cap.rng.randrange(256) for _ in range(64)))
    tt = t + 0.02
    for i in range(segments):
        data = bytearray(cap.rng.randrange(256) for _ in range(1200))
        data[0] = 0x17  # never looks like a DCE/RPC header (version 5) to a heuristic
        tcp.send(tt, False, bytes(data))
        if i % 2:
            tcp.ack(tt + 0.0002, True)
        tt += 0.001
    return tt


class Outlook2002(Outlook):
    """Outlook 2002: EcDoConnect / EcDoRpc with the request buffers of the real capture (answers shaped as the
    ROP responses they call for: zero-rich properties and a server object handle table)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, legacy=True, **kwargs)

    def _rop_call(self, t, req_payload, resp_payload, delay):
        return self.rpc.call(t, self.ctx, 2, ecdorpc_request_2002(self.cxh, req_payload),
                             ecdorpc_response_2002(self.cxh, resp_payload), delay=delay)

    def poll(self, t, mail=False):
        answer = new_mail_rops(self.cap.rng) if mail else rop_payload(bytes(12), handles=(0xFFFFFFFF,))
        return self._rop_call(t, OUTLOOK2002_POLL_ROPS, answer, 0.004)

    def fetch(self, t, notify=True):
        f1 = self._rop_call(t, OUTLOOK2002_POLL_ROPS, new_mail_rops(self.cap.rng) if notify else
                            rop_payload(bytes(12), handles=(0xFFFFFFFF,)), 0.005)
        f2 = self._rop_call(t + 0.03, OUTLOOK2002_FETCH_ROPS,
                            rop_payload(struct.pack("<BBI", 0x03, 1, 0) + bytes(40), handles=(0x31, 0x32)), 0.008)
        return f1, f2
