#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Generate the benchmark capture: a server-side pcap of about one million frames.

    .venv/bin/python benchmarks/make_big_capture.py benchmarks/data/big.pcap [--frames 1000000] [--clients 1000]
                                                    [--duration 600] [--seed 7]

1,000 Outlook clients talk to the Exchange server 10.0.0.10 over ten minutes, each with an endpoint-mapper
lookup (TCP 135), an EMSMDB connection (handshake, bind/bind_ack with sec_addr, EcDoConnect(Ex), opnum 4),
then polls every ~60 s and, for some, UDP notifications followed by fetches. The outcomes are mixed: push
working, server refused (0x80040102), never registers, datagrams that get no reaction, legacy (opnum 0/2) and
modern (10/11) clients. Around them, the rest of the frames are noise a filter must skip cheaply: bulk TCP flows
(HTTPS, SMB) and DNS lookups by the server.

Speed: frames are packed with struct from pre-built headers and payloads, not with scapy. scapy builds and
serialises about 10,000 simple TCP frames/s here (bytes(Ether()/IP()/TCP()/payload) measured at ~95 µs per frame
on this machine), i.e. close to two minutes per million frames; the struct path writes a million frames in a few
seconds. IPv4 header and TCP/UDP checksums are left 0, as a server-side capture with checksum offload shows them
(tshark does not validate them by default). The DCE/RPC PDUs and NDR stubs come from captures/generate.py (struct
too), so they are the same, already-checked layouts as in the sample captures. Per-flow generators yield frames
in time order and heapq.merge interleaves them, so memory stays small whatever --frames is.

Beside OUT it writes OUT.expected.json: the verdict and cause each client must get (bench_events.py --analyze
checks `mailpush analyze` against it). Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


sys.path.insert(0, str(ROOT))
from captures import samplelib as G  # noqa: E402  (the sample library: PDU and stub writers)

EPOCH = 1772600000  # 2026-03-04 04:53:20 UTC
SERVER_IP = bytes([10, 0, 0, 10])
DNS_IP = bytes([10, 0, 0, 2])
SERVER_MAC = bytes.fromhex("020000000a0a")
ROUTER_MAC = bytes.fromhex("0200000a0001")
ETH_IPV4 = b"\x08\x00"
EMSMDB_PORT = 49155

_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_REC = struct.Struct("<IIII")

FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10


class Flow:
    """One TCP connection: packs frames with running sequence numbers."""

    __slots__ = ("c_ip", "s_ip", "cport", "sport", "seq", "eth_c2s", "eth_s2c", "ipid")

    def __init__(self, c_ip: bytes, s_ip: bytes, cport: int, sport: int, rng: random.Random):
        self.c_ip, self.s_ip, self.cport, self.sport = c_ip, s_ip, cport, sport
        self.seq = [rng.getrandbits(32), rng.getrandbits(32)]  # next seq: [client, server]
        # Ethernet dst + src: the capture is taken at the server, every peer is behind the router
        self.eth_c2s = SERVER_MAC + ROUTER_MAC + ETH_IPV4
        self.eth_s2c = ROUTER_MAC + SERVER_MAC + ETH_IPV4
        self.ipid = rng.getrandbits(16)

    def frame(self, from_client: bool, flags: int, payload: bytes = b"") -> bytes:
        i = 0 if from_client else 1
        seq, ack = self.seq[i], self.seq[1 - i]
        self.ipid = (self.ipid + 1) & 0xFFFF
        if from_client:
            head = self.eth_c2s + _IP.pack(0x45, 0, 40 + len(payload), self.ipid, 0x4000, 128, 6, 0, self.c_ip,
                                          self.s_ip) + _TCP.pack(self.cport, self.sport, seq, ack, 0x50, flags,
                                                                 64240, 0, 0)
        else:
            head = self.eth_s2c + _IP.pack(0x45, 0, 40 + len(payload), self.ipid, 0x4000, 128, 6, 0, self.s_ip,
                                          self.c_ip) + _TCP.pack(self.sport, self.cport, seq, ack, 0x50, flags,
                                                                 65535, 0, 0)
        self.seq[i] = (seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        return head + payload


def udp_frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ipid: int) -> bytes:
    eth = (ROUTER_MAC + SERVER_MAC if src == SERVER_IP else SERVER_MAC + ROUTER_MAC) + ETH_IPV4
    return eth + _IP.pack(0x45, 0, 28 + len(payload), ipid, 0, 128, 17, 0, src, dst) + \
        _UDP.pack(sport, dport, 8 + len(payload), 0) + payload


def us(t: float) -> int:
    return int(t * 1_000_000)


# ------------------------------------------------------------------------------------------------------------------
# Outlook clients


# what each kind of client must be judged (verdict, cause)
EXPECTED = {"push": ("registered", "push_working"), "refused": ("not_registered", "server_refused"),
            "none": ("not_registered", "client_did_not_register"), "blocked": ("udp_blocked", "udp_not_delivered")}


def client_ip(idx: int) -> bytes:
    return bytes([10, 2 + idx // 250, (idx % 250) + 1, 10 + idx % 200])


def outlook_client(idx: int, rng: random.Random, duration: float, kind: str):
    """Yield (µs, frame bytes) of one client's traffic in time order."""
    c_ip = client_ip(idx)
    legacy = rng.random() < 0.25
    name = f"user{idx:04d}"
    cxh = b"\x00" * 4 + rng.getrandbits(128).to_bytes(16, "little")
    t = rng.uniform(0.0, 60.0)
    port = 49200 + rng.randrange(15000)

    # endpoint mapper lookup
    epm = Flow(c_ip, SERVER_IP, port, 135, rng)
    yield us(t), epm.frame(True, SYN)
    yield us(t + 0.0003), epm.frame(False, SYN | ACK)
    yield us(t + 0.0006), epm.frame(True, ACK)
    offered = [(0, G.EPM, [(G.NDR_UUID, 2)])]
    yield us(t + 0.001), epm.frame(True, PSH | ACK, G.co_pdu(G.PT_BIND, 1, G.bind_body(offered)))
    yield us(t + 0.0015), epm.frame(False, PSH | ACK, G.co_pdu(G.PT_BIND_ACK, 1, G.bind_ack_body(
        [(0, 0, (G.NDR_UUID, 2))], "135", 0x5000 + idx)))
    yield us(t + 0.002), epm.frame(True, PSH | ACK, G.co_pdu(G.PT_REQUEST, 2, G.request_body(
        0, 3, G.ept_map_request(G.EMSMDB))))
    yield us(t + 0.0025), epm.frame(False, PSH | ACK, G.co_pdu(G.PT_RESPONSE, 2, G.response_body(
        0, G.ept_map_response(G.EMSMDB, EMSMDB_PORT, "10.0.0.10"))))
    yield us(t + 0.003), epm.frame(True, FIN | ACK)
    yield us(t + 0.0033), epm.frame(False, FIN | ACK)
    yield us(t + 0.0036), epm.frame(True, ACK)

    # EMSMDB session
    t += 0.02
    f = Flow(c_ip, SERVER_IP, port + 1, EMSMDB_PORT, rng)
    yield us(t), f.frame(True, SYN)
    yield us(t + 0.0003), f.frame(False, SYN | ACK)
    yield us(t + 0.0006), f.frame(True, ACK)
    offered = [(0, G.EMSMDB, [(G.NDR_UUID, 2)])]
    yield us(t + 0.001), f.frame(True, PSH | ACK, G.co_pdu(G.PT_BIND, 1, G.bind_body(offered)))
    yield us(t + 0.0015), f.frame(False, PSH | ACK, G.co_pdu(G.PT_BIND_ACK, 1, G.bind_ack_body(
        [(0, 0, (G.NDR_UUID, 2))], str(EMSMDB_PORT), 0x9000 + idx)))
    call_id = 2

    def call(t, opnum, req, resp, delay=0.003):
        nonlocal call_id
        cid = call_id
        call_id += 1
        yield us(t), f.frame(True, PSH | ACK, G.co_pdu(G.PT_REQUEST, cid, G.request_body(0, opnum, req)))
        yield us(t + delay), f.frame(False, PSH | ACK, G.co_pdu(G.PT_RESPONSE, cid, G.response_body(0, resp)))
        yield us(t + delay + 0.2), f.frame(True, ACK)

    dn = G.DN % name
    yield from call(t + 0.01, 0 if legacy else 10, G.connect_request(dn, not legacy),
                    G.connect_response(cxh, 60000, not legacy, name), 0.02)
    t += 0.3
    context = rng.getrandbits(64).to_bytes(8, "little")
    cb_port = 1024 + rng.randrange(60000)
    if kind != "none":
        status = G.EC_NOT_SUPPORTED if kind == "refused" else 0
        yield from call(t, 4, G.register_push_request(cxh, context, ".".join(map(str, c_ip)), cb_port),
                        G.register_push_response(cxh, 0 if status else 0x100 + idx, status))
    empty = G.empty_rops()
    rop_op = 2 if legacy else 11
    poll_req = (G.ecdorpc_request if legacy else G.ecdorpcext2_request)(cxh, empty)
    poll_resp = (G.ecdorpc_response if legacy else G.ecdorpcext2_response)(cxh, empty)
    mail_resp = (G.ecdorpc_response if legacy else G.ecdorpcext2_response)(cxh, G.new_mail_rops(rng))
    fetch_req = (G.ecdorpc_request if legacy else G.ecdorpcext2_request)(cxh, G.fetch_request_rops(rng))
    fetch_resp = (G.ecdorpc_response if legacy else G.ecdorpcext2_response)(cxh, G.fetch_response_rops(rng))

    # schedule: polls every ~60 s (a push client stops after its first datagram), datagrams at random times
    # before 85 % of the duration (the merged stream is cut at --frames, a little before the end)
    notes = sorted(rng.uniform(t + 30, duration * 0.85) for _ in range(rng.randrange(1, 4))) \
        if kind in ("push", "blocked") else []
    polls = []
    tp = t + 60 + rng.uniform(0, 2)
    while tp < duration:
        if not (kind == "push" and notes and tp > notes[0]):
            polls.append(tp)
        tp += 60 + rng.uniform(0.2, 2.5)
    items = sorted([(x, "poll") for x in polls] + [(x, "udp") for x in notes])
    ipid = rng.getrandbits(16)
    last = 0.0
    for when, what in items:
        when = max(when, last + 2.5)  # keep each exchange's frames in order
        if what == "poll":
            yield from call(when, rop_op, poll_req, poll_resp)
            last = when + 0.21
        else:
            ipid = (ipid + 1) & 0xFFFF
            yield us(when), udp_frame(SERVER_IP, c_ip, 1024 + idx % 1000, cb_port, context, ipid)
            last = when
            if kind == "push":
                yield from call(when + rng.uniform(0.1, 1.0), rop_op, poll_req, mail_resp)
                yield from call(when + 1.3, rop_op, fetch_req, fetch_resp, 0.008)
                last = when + 1.6


# ------------------------------------------------------------------------------------------------------------------
# noise


def bulk_flow(idx: int, rng: random.Random, start: float, end: float, frames: int):
    """A bulk transfer (HTTPS or SMB) of about ``frames`` frames spread over [start, end): data from the server,
    an ACK from the peer every second segment."""
    peer = bytes([10, 3, idx // 200, 1 + idx % 200])
    dport = 443 if idx % 2 else 445
    f = Flow(peer, SERVER_IP, 50000 + idx, dport, rng)
    data = bytearray(rng.getrandbits(8) for _ in range(1460))
    data[0] = 0x17  # never a DCE/RPC version byte (5)
    data = bytes(data)
    step = (end - start) / max(1, frames)
    t = start
    yield us(t), f.frame(True, SYN)
    yield us(t + 0.0002), f.frame(False, SYN | ACK)
    yield us(t + 0.0004), f.frame(True, ACK)
    n = 3
    while n < frames:
        t += step
        yield us(t), f.frame(False, PSH | ACK, data)
        n += 1
        if n % 3 == 0:
            yield us(t + step / 2), f.frame(True, ACK)
            n += 1


def dns_noise(rng: random.Random, start: float, end: float, frames: int):
    """The server's own DNS lookups (UDP 53): never candidate notifications."""
    names = [b"\x02dc\x07contoso\x07example\x00", b"\x04mail\x07contoso\x07example\x00",
             b"\x03gc1\x07contoso\x07example\x00", b"\x05_ldap\x04_tcp\x07contoso\x07example\x00"]
    step = (end - start) / max(1, frames // 2)
    t = start
    ipid = 0
    for n in range(frames // 2):
        qid = rng.getrandbits(16)
        name = names[n % len(names)]
        q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
        a = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + name + b"\x00\x01\x00\x01" + \
            b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x0a\x00\x00\x14"
        sport = 49152 + (n % 16000)
        ipid = (ipid + 2) & 0xFFFF
        yield us(t), udp_frame(SERVER_IP, DNS_IP, sport, 53, q, ipid)
        yield us(t + 0.0004), udp_frame(DNS_IP, SERVER_IP, 53, sport, a, ipid + 1)
        t += step


# ------------------------------------------------------------------------------------------------------------------


def generate(out: Path, frames: int, clients: int, duration: float, seed: int) -> dict:
    rng = random.Random(seed)
    kinds = rng.choices(list(EXPECTED), weights=[40, 30, 15, 15], k=clients)
    client_gens = [outlook_client(i, random.Random(rng.getrandbits(64)), duration, kinds[i])
                   for i in range(clients)]
    # Clients produce about 55-75 frames each over ten minutes; noise fills the rest (10 % DNS, the remainder
    # in 40 bulk flows), with 3 % spare so the merged stream is cut at exactly --frames (when the client estimate
    # is too high for a small --frames the file has a few fewer).
    noise = max(0, frames - 65 * clients) * 1.03
    dns = int(noise * 0.10)
    bulk_n = 40
    per_bulk = int((noise - dns) / bulk_n)
    noise_gens = [dns_noise(random.Random(rng.getrandbits(64)), 0.0, duration, dns)]
    for i in range(bulk_n):
        start = rng.uniform(0, duration * 0.1)
        noise_gens.append(bulk_flow(i, random.Random(rng.getrandbits(64)), start, duration, per_bulk))
    merged = heapq.merge(*client_gens, *noise_gens, key=lambda x: x[0])
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb", buffering=1 << 20) as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        rec = _REC.pack
        base = EPOCH * 1_000_000
        chunk = []
        for ts, data in itertools.islice(merged, frames):
            ts += base
            n = len(data)
            chunk.append(rec(ts // 1_000_000, ts % 1_000_000, n, n))
            chunk.append(data)
            written += 1
            if len(chunk) >= 8192:
                fh.write(b"".join(chunk))
                chunk.clear()
        fh.write(b"".join(chunk))
    # the verdict each client must get, for checking an analysis of the big file (bench_events.py --analyze)
    expected = {".".join(map(str, client_ip(i))): {"verdict": EXPECTED[k][0], "cause": EXPECTED[k][1]}
                for i, k in enumerate(kinds)}
    expected_path(out).write_text(json.dumps({"frames": written, "clients": expected}, indent=0) + "\n")
    return {"frames": written, "bytes": out.stat().st_size}


def expected_path(out: Path) -> Path:
    return out.with_name(out.name + ".expected.json")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if args.frames < 1 or args.clients < 0:
        ap.error("--frames must be >= 1 and --clients >= 0")
    t0 = time.perf_counter()
    info = generate(args.out, args.frames, args.clients, args.duration, args.seed)
    dt = time.perf_counter() - t0
    print(f"{args.out}: {info['frames']} frames, {info['bytes'] / 1e6:.1f} MB, {args.clients} Outlook clients, "
          f"written in {dt:.1f} s ({info['frames'] / dt:,.0f} frames/s)")


if __name__ == "__main__":
    main()
