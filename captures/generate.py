#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Generate the sample captures in this directory and their manifest.

    python captures/generate.py [OUTDIR]          (default: the directory of this script)

Every file is deterministic: fixed timestamps, a fixed random seed per scenario, hand-written file headers (no
wall-clock time anywhere), so running the generator twice gives identical bytes (tests/test_captures_manifest.py
checks it). Link, network and transport layers are built with scapy (Ether/Dot1Q/IP/IPv6/TCP/UDP/ICMP); the
DCE/RPC PDUs and NDR stubs are packed with struct following docs/protocol.md §1.4-1.10 and §4 and the MS-OXCRPC IDL
(scapy has no EMSMDB definitions, and packing by hand keeps every byte under control, including the deliberately
segmented, reordered and retransmitted opnum 4 request). The opnum 4 stub is checked against the §1.10 vector at
import time.

The manifest (manifest.json) says, per file, what any correct analysis must conclude for each Outlook client
(verdict, cause, evidence frames) and lists every DCE/RPC bind / alter_context / request / response PDU as
(frame, kind, opnum), frame = the frame carrying the PDU's last byte (for the reordered case: the frame that fills
the hole), as Wireshark numbers frames. Frame numbers are computed here, never written by hand.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import json
import random
import struct
import sys
import uuid
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.l2 import Dot1Q, Ether

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------------------------------------------
# constants (docs/protocol.md)

EMSMDB_UUID = "a4f1db00-ca47-1067-b31f-00dd010662da"  # v0.81
ASYNC_EMSMDB_UUID = "5261574a-4572-206e-b268-6b199213b4e4"  # v0.01
NSPI_UUID = "f5cc5a18-4264-101a-8c59-08002b2f8426"  # v56.0
EPM_UUID = "e1af8308-5d1f-11c9-91a4-08002b14a0fa"  # v3.0
OXABREF_UUID = "1544f5e0-613c-11d1-93df-00c04fd7bd09"  # v1.0, Exchange address-book referral
NDR_UUID = "8a885d04-1ceb-11c9-9fe8-08002b104860"  # v2
BTFN_UUID = "6cb71c2c-9812-4540-0300-000000000000"  # bind-time feature negotiation, bitmask 3

EMSMDB = (EMSMDB_UUID, 0, 81)
ASYNC_EMSMDB = (ASYNC_EMSMDB_UUID, 0, 1)
NSPI = (NSPI_UUID, 56, 0)
EPM = (EPM_UUID, 3, 0)
OXABREF = (OXABREF_UUID, 1, 0)

PT_REQUEST, PT_RESPONSE, PT_FAULT = 0, 2, 3
PT_BIND, PT_BIND_ACK, PT_ALTER, PT_ALTER_RESP, PT_AUTH3 = 11, 12, 14, 15, 16
KIND = {PT_REQUEST: "request", PT_RESPONSE: "response", PT_FAULT: "fault", PT_BIND: "bind",
        PT_BIND_ACK: "bind_ack", PT_ALTER: "alter_context", PT_ALTER_RESP: "alter_context_resp", PT_AUTH3: "auth3"}
# PDUs the manifest lists (the set the events table must reproduce, issue 2)
LISTED_KINDS = {"bind", "alter_context", "request", "response"}

EC_NOT_SUPPORTED = 0x80040102
NCA_S_OP_RNG_ERROR = 0x1C010002
AUTH_NTLMSSP = 10
AUTH_LEVEL_PRIVACY = 6

EXCHANGE = "10.0.0.10"
EXCHANGE_PORT = 49155  # dynamic EMSMDB endpoint learned through the endpoint mapper
DN = "/o=Contoso/ou=First Administrative Group/cn=Recipients/cn=%s"
EPOCH_BASE = 1772442000  # 2026-03-02 09:00:00 UTC; each scenario starts at its own offset from here

# ------------------------------------------------------------------------------------------------------------------
# NDR writer


class Ndr:
    """NDR20 little-endian writer; every scalar aligned to its size relative to the stub start."""

    def __init__(self):
        self.b = bytearray()

    def align(self, n):
        self.b += b"\x00" * ((-len(self.b)) % n)

    def u8(self, v):
        self.b += struct.pack("<B", v)
        return self

    def u16(self, v):
        self.align(2)
        self.b += struct.pack("<H", v)
        return self

    def u32(self, v):
        self.align(4)
        self.b += struct.pack("<I", v & 0xFFFFFFFF)
        return self

    def raw(self, data):
        self.b += data
        return self

    def conformant(self, data):  # [size_is] array: max_count, elements
        self.u32(len(data))
        self.b += data
        return self

    def varying(self, data, max_count=None):  # conformant varying array: max_count, offset, actual_count, elements
        self.u32(len(data) if max_count is None else max_count).u32(0).u32(len(data))
        self.b += data
        return self

    def string(self, text):  # [string] char*: conformant varying, NUL included
        return self.varying(text.encode("ascii") + b"\x00")

    def unique_string(self, text, referent=0x00020000):
        self.u32(referent)
        return self.string(text)

    def bytes(self):
        return bytes(self.b)


def sockaddr(ip: str, port: int) -> bytes:
    """Windows SOCKADDR_IN / SOCKADDR_IN6 (family little-endian, AF_INET6 = 23; port and address big-endian)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return struct.pack("<H", 2) + struct.pack(">H", port) + addr.packed + b"\x00" * 8
    return struct.pack("<H", 23) + struct.pack(">H", port) + b"\x00" * 4 + addr.packed + b"\x00" * 4


def callback_text(ip: str, port: int) -> str:
    addr = ipaddress.ip_address(ip)
    return f"{addr.compressed}:{port}" if addr.version == 4 else f"[{addr.compressed}]:{port}"


def handle(rng) -> bytes:
    """NDR context handle: attributes u32 (0) + 16-byte UUID."""
    return b"\x00" * 4 + bytes(rng.randrange(256) for _ in range(16))


# --- EMSMDB stubs (MS-OXCRPC IDL; [in]/[out] parameters in IDL order) --------------------------------------------


def register_push_request(cxh, context, cb_ip, cb_port):
    """EcRRegisterPushNotification (opnum 4) request, docs/protocol.md §1.4."""
    addr = sockaddr(cb_ip, cb_port)
    return (Ndr().raw(cxh).u32(0).conformant(context).u16(len(context)).u32(0xFFFFFFFF)
            .conformant(addr).u16(len(addr)).bytes())


def register_push_response(cxh, hnotification, status):
    return cxh + struct.pack("<II", hnotification, status)  # §1.5: always 28 bytes


# Check the opnum 4 layout against the docs/protocol.md §1.10 worked example.
_VEC_CXH = b"\x00" * 4 + bytes.fromhex("1a2b3c4d5e6f708192a3b4c5d6e7f809")
assert register_push_request(_VEC_CXH, bytes(range(16)), "10.0.0.5", 1234).hex() == (
    "000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000010000000000102030405060708090a0b0c0d0e0f10000000ffffffff"
    "10000000020004d20a00000500000000000000001000")
assert register_push_request(_VEC_CXH, bytes(range(16)), "2001:db8::5", 1234)[0x34:].hex() == (
    "1c000000170004d20000000020010db80000000000000000000000050000000" "01c00")
assert register_push_response(_VEC_CXH, 0, EC_NOT_SUPPORTED).hex() == \
    "000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000002010480"


def connect_request(user_dn, ex):
    """EcDoConnect (0) / EcDoConnectEx (10) request: szUserDN, ulFlags, ulConMod, cbLimit, ulCpid, ulLcidString,
    ulLcidSort, ulIcxrLink, usFCanConvertCodePages, rgwClientVersion[3], pulTimeStamp (+ rgbAuxIn, cbAuxIn,
    pcbAuxOut for Ex)."""
    w = Ndr().string(user_dn)
    for v in (0, 0x4B6A2F13, 0, 1252, 1033, 1033, 0xFFFFFFFF):
        w.u32(v)
    w.u16(1)
    for v in ((0x000B, 0x0000, 0x1FE9) if ex else (0x000A, 0x0000, 0x0A2F)):
        w.u16(v)
    w.u32(0)
    if ex:
        aux = bytes.fromhex("1000010401000000") + b"OUTLOOK.EXE\x00"  # AUX_HEADER + a client-name block
        w.conformant(aux).u32(len(aux)).u32(0x1008)
    return w.bytes()


def connect_response(cxh, poll_ms, ex, display):
    w = Ndr().raw(cxh).u32(poll_ms).u32(6).u32(10000).u16(0x2A1)
    w.unique_string("/o=Contoso/ou=First Administrative Group", 0x00020000)
    w.unique_string(display, 0x00020004)
    for v in (6, 5, 7638, 6, 5, 7638) if not ex else (8, 0, 685, 8, 0, 685):
        w.u16(v)
    w.u32(0x3A2B1C0D)
    if ex:
        w.varying(b"", max_count=0).u32(0)
    w.u32(0)  # return value
    return w.bytes()


def rop_payload(rops: bytes, handles=(0xFFFFFFFF,)) -> bytes:
    """ROP buffer {RopSize u16 (incl. itself), ROPs, server object handle table}."""
    return struct.pack("<H", 2 + len(rops)) + rops + b"".join(struct.pack("<I", h) for h in handles)


def empty_rops() -> bytes:
    return rop_payload(b"", handles=())


def new_mail_rops(rng) -> bytes:
    """A poll/fetch answer announcing new mail: RopNotify (NewMail) + two RopNotify (TableModified, row added)
    + RopPending: well over a hundred bytes, as MS-OXCNOTIF describes."""
    fid, mid = rng.getrandbits(64), rng.getrandbits(64)
    new_mail = (struct.pack("<BIBH", 0x2A, 0x00000011, 0, 0x0002) + struct.pack("<QQIB", fid, mid, 0x0000, 0)
                + b"IPM.Note\x00")
    rows = b""
    for h in (0x21, 0x22):
        row = bytes(rng.randrange(256) for _ in range(48))
        rows += (struct.pack("<BIBHH", 0x2A, h, 0, 0x0100, 0x0003) + struct.pack("<QQIQQIH", fid, mid, 0, fid, 0,
                                                                                   0, len(row)) + row)
    pending = struct.pack("<BH", 0x6E, 0)
    return rop_payload(new_mail + rows + pending, handles=(0x11, 0x21, 0x22))


def fetch_request_rops(rng) -> bytes:
    # RopOpenMessage (0x03) + RopGetPropertiesSpecific (0x07) for the new message
    ops = (struct.pack("<BBBBH", 0x03, 0, 0, 1, 1252) + struct.pack("<QBQ", rng.getrandbits(64), 0,
                                                                     rng.getrandbits(64))
           + struct.pack("<BBBHHH", 0x07, 0, 1, 0x1000, 0, 3) + struct.pack("<III", 0x0037001F, 0x0E060040,
                                                                           0x1000001F))
    return rop_payload(ops, handles=(0x11, 0xFFFFFFFF))


def fetch_response_rops(rng) -> bytes:
    body = bytes(rng.randrange(32, 127) for _ in range(420))
    return rop_payload(struct.pack("<BBI", 0x03, 1, 0) + struct.pack("<BBIB", 0x07, 1, 0, 0) + body,
                       handles=(0x31, 0x32))


def rpc_header_ext(payload: bytes) -> bytes:
    """RPC_HEADER_EXT {Version 0, Flags 0x04 Last, Size, SizeActual} + payload (not compressed, not XORed)."""
    return struct.pack("<HHHH", 0, 0x0004, len(payload), len(payload)) + payload


def ecdorpcext2_request(cxh, payload):
    """EcDoRpcExt2 (11): pcxh, pulFlags, rgbIn (conformant), cbIn, pcbOut, rgbAuxIn (conformant), cbAuxIn,
    pcbAuxOut."""
    rgb_in = rpc_header_ext(payload)
    return (Ndr().raw(cxh).u32(0).conformant(rgb_in).u32(len(rgb_in)).u32(0x40000).conformant(b"").u32(0)
            .u32(0x1008).bytes())


def ecdorpcext2_response(cxh, payload):
    """pcxh, pulFlags, rgbOut (conformant varying), pcbOut, rgbAuxOut (conformant varying), pcbAuxOut,
    pulTransTime, return value."""
    rgb_out = rpc_header_ext(payload)
    # [out, length_is(*pcbOut), size_is(*pcbOut)]: the server marshals max_count = actual_count = *pcbOut
    return (Ndr().raw(cxh).u32(0).varying(rgb_out).u32(len(rgb_out))
            .varying(b"").u32(0).u32(16).u32(0).bytes())


def xor_a5(b: bytes) -> bytes:
    return bytes(x ^ 0xA5 for x in b)


def ecdorpc_request(cxh, payload):
    """Legacy EcDoRpc (2) as Wireshark/OpenChange marshal it: handle, size, offset, ROP request buffer (u32
    length + XOR-0xA5 obfuscated bytes), length u16, max_data u16."""
    return (Ndr().raw(cxh).u32(0x8000).u32(0).u32(len(payload)).raw(xor_a5(payload)).u16(len(payload))
            .u16(0x8000).bytes())


def ecdorpc_response(cxh, payload):
    return (Ndr().raw(cxh).u32(0x8000).u32(0).u32(len(payload)).raw(xor_a5(payload)).u16(len(payload))
            .u32(0).bytes())


def async_connect_request(cxh):
    return cxh  # EcDoAsyncConnectEx (14): [in] pcxh


def async_connect_response(acxh, status=0):
    return acxh + struct.pack("<I", status)  # [out] pacxh, return value


def async_wait_request(acxh):
    return acxh + struct.pack("<I", 0)  # EcDoAsyncWaitEx: acxh, ulFlagsIn


def async_wait_response(flags, status=0):
    return struct.pack("<II", flags, status)  # pulFlagsOut, return value


# --- endpoint mapper ----------------------------------------------------------------------------------------------


def tower(iface, port, ip):
    uuid_s, vmaj, vmin = iface

    def floor(lhs, rhs):
        return struct.pack("<H", len(lhs)) + lhs + struct.pack("<H", len(rhs)) + rhs

    floors = [
        floor(b"\x0d" + uuid.UUID(uuid_s).bytes_le + struct.pack("<H", vmaj), struct.pack("<H", vmin)),
        floor(b"\x0d" + uuid.UUID(NDR_UUID).bytes_le + struct.pack("<H", 2), struct.pack("<H", 0)),
        floor(b"\x0b", struct.pack("<H", 0)),
        floor(b"\x07", struct.pack(">H", port)),
        floor(b"\x09", ipaddress.IPv4Address(ip).packed),
    ]
    return struct.pack("<H", len(floors)) + b"".join(floors)


def ept_map_request(iface):
    t = tower(iface, 0, "0.0.0.0")
    w = Ndr().u32(1).raw(b"\x00" * 16)  # [ptr] object: referent + nil UUID
    w.u32(2).u32(len(t)).u32(len(t)).raw(t)  # [ptr] map_tower: referent, twr_t {max_count, tower_length, octets}
    w.align(4)
    w.raw(b"\x00" * 20).u32(4)  # entry_handle, max_towers
    return w.bytes()


def ept_map_response(iface, port, ip):
    t = tower(iface, port, ip)
    w = Ndr().raw(b"\x00" * 20).u32(1)  # entry_handle, num_towers
    w.u32(4).u32(0).u32(1).u32(3)  # towers: max_count, offset, actual_count, referent of tower 0
    w.u32(len(t)).u32(len(t)).raw(t)
    w.align(4)
    w.u32(0)  # status
    return w.bytes()


# --- NTLMSSP tokens (minimal, well-formed; the captures never need to be decryptable) -----------------------------

NTLM_FLAGS = 0xE2088297


def ntlm_negotiate():
    return b"NTLMSSP\x00" + struct.pack("<II", 1, NTLM_FLAGS) + b"\x00" * 16 + bytes.fromhex("0a00614a0000000f")


def ntlm_challenge(rng):
    target = "CONTOSO".encode("utf-16-le")
    info = struct.pack("<HH", 2, len(target)) + target + struct.pack("<HH", 0, 0)
    off = 56
    return (b"NTLMSSP\x00" + struct.pack("<I", 2) + struct.pack("<HHI", len(target), len(target), off)
            + struct.pack("<I", NTLM_FLAGS) + bytes(rng.randrange(256) for _ in range(8)) + b"\x00" * 8
            + struct.pack("<HHI", len(info), len(info), off + len(target)) + bytes.fromhex("0a00614a0000000f")
            + target + info)


def ntlm_authenticate(rng, user):
    dom, usr, ws = ("CONTOSO".encode("utf-16-le"), user.encode("utf-16-le"), "WS01".encode("utf-16-le"))
    lm = b"\x00" * 24
    nt = bytes(rng.randrange(256) for _ in range(16)) + bytes.fromhex("0101000000000000") + b"\x00" * 24
    key = bytes(rng.randrange(256) for _ in range(16))
    off = 88
    fields = []
    payload = b""
    for item in (lm, nt, dom, usr, ws, key):
        fields.append(struct.pack("<HHI", len(item), len(item), off + len(payload)))
        payload += item
    lm_f, nt_f, dom_f, usr_f, ws_f, key_f = fields
    return (b"NTLMSSP\x00" + struct.pack("<I", 3) + lm_f + nt_f + dom_f + usr_f + ws_f + key_f
            + struct.pack("<I", NTLM_FLAGS) + bytes.fromhex("0a00614a0000000f") + b"\x00" * 16 + payload)


# ------------------------------------------------------------------------------------------------------------------
# DCE/RPC connection-oriented PDUs (docs/protocol.md §4)


def co_pdu(ptype, call_id, body, flags=0x03, auth=None):
    """auth = (auth_type, auth_level, token): the sec_trailer follows the body padded so that it starts 16-byte
    aligned relative to the PDU body (MS-RPCE); for request/response the body includes the 8-byte header."""
    auth_part = b""
    auth_len = 0
    if auth is not None:
        auth_type, auth_level, token = auth
        align = 16 if ptype in (PT_REQUEST, PT_RESPONSE) else 4
        start = 8 if ptype in (PT_REQUEST, PT_RESPONSE) else 0  # stub offset within the body
        pad = (-(len(body) - start)) % align
        body = body + b"\x00" * pad
        auth_part = struct.pack("<BBBBI", auth_type, auth_level, pad, 0, 0) + token
        auth_len = len(token)
    frag_len = 16 + len(body) + len(auth_part)
    return struct.pack("<BBBB4sHHI", 5, 0, ptype, flags, b"\x10\x00\x00\x00", frag_len, auth_len, call_id) + body \
        + auth_part


def bind_body(contexts, assoc=0):
    """contexts: [(ctx_id, iface, [transfer syntax uuid/version...])]."""
    b = struct.pack("<HHIBBH", 5840, 5840, assoc, len(contexts), 0, 0)
    for ctx_id, (u, vmaj, vmin), syntaxes in contexts:
        b += struct.pack("<HBB", ctx_id, len(syntaxes), 0) + uuid.UUID(u).bytes_le + struct.pack("<HH", vmaj, vmin)
        for su, sv in syntaxes:
            b += uuid.UUID(su).bytes_le + struct.pack("<I", sv)
    return b


def bind_ack_body(results, sec_addr, assoc):
    """results: [(result, reason, (syntax uuid, version))]."""
    sa = sec_addr.encode("ascii") + b"\x00" if sec_addr else b""
    b = struct.pack("<HHIH", 5840, 5840, assoc, len(sa)) + sa
    b += b"\x00" * ((-(16 + len(b))) % 4)
    b += struct.pack("<BBH", len(results), 0, 0)
    for result, reason, (su, sv) in results:
        b += struct.pack("<HH", result, reason) + uuid.UUID(su).bytes_le + struct.pack("<I", sv)
    return b


NIL_SYNTAX = ("00000000-0000-0000-0000-000000000000", 0)


def request_body(ctx_id, opnum, stub, alloc_hint=None):
    return struct.pack("<IHH", len(stub) if alloc_hint is None else alloc_hint, ctx_id, opnum) + stub


def response_body(ctx_id, stub, alloc_hint=None):
    return struct.pack("<IHBB", len(stub) if alloc_hint is None else alloc_hint, ctx_id, 0, 0) + stub


def fault_body(ctx_id, status):
    return struct.pack("<IHBBII", 32, ctx_id, 0, 0, status, 0)


# ------------------------------------------------------------------------------------------------------------------
# capture, hosts, TCP


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
            auth3 = struct.pack("<I", 0)
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
        self.context = context
        return f

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


# ------------------------------------------------------------------------------------------------------------------
# scenarios: each returns (Capture, manifest fields); the manifest's frame numbers all come from here


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


def s_push_working():
    """Legacy Outlook (EcDoConnect/EcDoRpc) registers, gets three datagrams, fetches within a second each time."""
    cap = Capture("push_working", 0, 101)
    c, s = Host("10.1.20.31"), Host(EXCHANGE)
    dns_noise(cap, c, 0.0)
    o = Outlook(cap, c, s, "alice", legacy=True)
    t = o.logon(0.05)
    ctx = bytes.fromhex("0c5e2a9177d3f0b4")
    reg = o.register(t + 0.4, c.ip, 2512, ctx)
    ev = list(reg)
    # polls until the first datagram (MS-OXCNOTIF 3.2.5.4), then push only
    o.poll(61.3)
    udp_port = 1030
    notes = []
    for i, tn in enumerate((95.2, 168.7, 241.9)):
        f = udp_datagram(cap, s, udp_port + i, c, 2512, ctx, tn)
        notes.append(f)
        o.fetch(tn + 0.35)
    bulk_noise(cap, c, 130.0)
    o.poll(300.0, mail=False)
    entry = dict(vantage="client", description="Outlook 2000-era client (EcDoConnect/EcDoRpc, XOR-obfuscated ROPs) "
                 "registers 10.1.20.31:2512 (status 0); three UDP datagrams from the server, each followed within "
                 "0.35 s by an EcDoRpc fetch; DNS and HTTPS noise")
    entry["clients"] = [client_entry(o, "registered", "push_working", ev + notes, notifications=3, status=0)]
    return cap, entry


def s_server_refused():
    """Outlook 2003 (EcDoConnectEx/EcDoRpcExt2) against Exchange 2010: opnum 4 -> 0x80040102, then polling."""
    cap = Capture("server_refused", 3600, 102)
    c, s = Host("10.1.20.45"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "bob")
    t = o.logon(0.1)
    reg = o.register(t + 0.5, c.ip, 3087, bytes.fromhex("6f75746c6f6f6b00a1b2c3d4e5f60718"), status=EC_NOT_SUPPORTED)
    for tp in o.poll_times(60.8, 330):
        o.poll(tp)
    entry = dict(vantage="client", description="Outlook 2003 (EcDoConnectEx/EcDoRpcExt2) registers callback "
                 "10.1.20.45:3087; the server answers 0x80040102 ecNotSupported; the client polls every ~60 s")
    entry["clients"] = [client_entry(o, "not_registered", "server_refused", list(reg), status=EC_NOT_SUPPORTED)]
    return cap, entry


def s_client_did_not_register():
    cap = Capture("client_did_not_register", 7200, 103)
    c, s = Host("10.1.21.12"), Host(EXCHANGE)
    dns_noise(cap, c, 0.0)
    o = Outlook(cap, c, s, "carol")
    o.logon(0.02)
    for tp in o.poll_times(60.4, 320):
        o.poll(tp)
    bulk_noise(cap, c, 150.0)
    entry = dict(vantage="client", description="Outlook 2003 logs on (EcDoConnectEx, pcmsPollsMax 60000) and never "
                 "calls EcRRegisterPushNotification (PR_DISABLE_WINSOCK or a VPN client); polls every ~60 s")
    entry["clients"] = [client_entry(o, "not_registered", "client_did_not_register", list(o.frames["connect"]))]
    return cap, entry


def s_udp_not_delivered():
    """Server-side capture: registration OK, the server sends the datagram every ~60 s, no reaction, polls go on."""
    cap = Capture("udp_not_delivered", 10800, 104)
    c, s = Host("10.1.30.77"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "dave")
    t = o.logon(0.1)
    ctx = bytes.fromhex("d1c2b3a4958677685a4b3c2d1e0f0011")
    reg = o.register(t + 0.3, c.ip, 1755, ctx)
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
    entry = dict(vantage="server", description="server-side capture: status 0 for callback 10.1.30.77:1755; the "
                 f"server sends the context datagram {len(frames)} times, ~60 s apart; the client never reacts "
                 "and keeps polling every ~60 s (a firewall drops the UDP)")
    entry["clients"] = [client_entry(o, "udp_blocked", "udp_not_delivered", list(reg) + frames,
                                     notifications=len(frames), status=0)]
    return cap, entry


def s_udp_not_received():
    """Client-side capture: registered (status 0), polling; twice a poll answer carries RopNotify (mail arrived)
    and the client fetches at once, yet no datagram ever reaches the client."""
    cap = Capture("udp_not_received", 14400, 105)
    c, s = Host("10.1.31.8"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "erin")
    t = o.logon(0.1)
    reg = o.register(t + 0.4, c.ip, 2231, bytes.fromhex("8e1f77a3c4d5e6f7"))
    mail = []
    for i, tp in enumerate(o.poll_times(61.0, 330)):
        if i in (1, 3):
            _req, resp = o.poll(tp, mail=True)
            mail.append(resp)
            o._rop_call(tp + 0.06, fetch_request_rops(cap.rng), fetch_response_rops(cap.rng), 0.008)
        else:
            o.poll(tp)
    dns_noise(cap, c, 200.0)
    entry = dict(vantage="client", description="client-side capture: status 0 for 10.1.31.8:2231; two poll answers "
                 "are large and carry RopNotify (new mail) and the client fetches at once, yet no UDP datagram "
                 "arrives: something between server and client drops it")
    entry["clients"] = [client_entry(o, "udp_blocked", "udp_not_received", list(reg) + mail, status=0)]
    return cap, entry


def s_icmp_unreachable():
    """Server-side: every datagram answered by ICMP 3/13 (administratively prohibited) from a router."""
    cap = Capture("icmp_unreachable", 18000, 106)
    c, s, router = Host("10.1.50.23"), Host(EXCHANGE), Host("10.0.0.1")
    o = Outlook(cap, c, s, "frank")
    t = o.logon(0.1)
    ctx = bytes.fromhex("41c8d2e9f00b1a2b3c4d5e6f70819203")
    reg = o.register(t + 0.3, c.ip, 1900, ctx)
    ev = list(reg)
    for tp in o.poll_times(60.2, 300):
        o.poll(tp)
    for tn in (75.0, 135.0, 195.0):
        d = udp_datagram(cap, s, 1105, c, 1900, ctx, tn)
        ev += [d, icmp_prohibited(cap, router, s, d, tn + 0.0011)]
    entry = dict(vantage="server", description="server-side capture, gzip-compressed: status 0 for 10.1.50.23:1900; "
                 "each of three datagrams draws an ICMP type 3 code 13 (administratively prohibited) from the "
                 "router 10.0.0.1 quoting it; the client polls")
    entry["clients"] = [client_entry(o, "udp_blocked", "icmp_unreachable", ev, notifications=3, status=0)]
    return cap, entry


def s_nat():
    """Server-side: the client registers its private address; the server sees it as a public NAT address."""
    cap = Capture("callback_unreachable_nat", 21600, 107)
    c, s = Host("203.0.113.45"), Host(EXCHANGE)
    inside = Host("192.168.1.23")
    o = Outlook(cap, c, s, "grace")
    t = o.logon(0.1)
    ctx = bytes.fromhex("5a5b5c5d5e5f60616263646566676869")
    reg = o.register(t + 0.5, inside.ip, 2890, ctx)
    ev = list(reg)
    for tp in o.poll_times(60.7, 310):
        o.poll(tp)
    for tn in (100.0, 160.0):
        ev.append(udp_datagram(cap, s, 1210, inside, 2890, ctx, tn))
    entry = dict(vantage="server", description="server-side capture: client seen as 203.0.113.45 registers callback "
                 "192.168.1.23:2890 (its address behind NAT); the server's two datagrams go to the private address "
                 "and never arrive; polling goes on")
    entry["clients"] = [client_entry(o, "udp_blocked", "callback_unreachable_nat", ev, notifications=2, status=0)]
    return cap, entry


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
    notes = []
    for tn in (88.4, 177.1, 262.6):
        notes.append(udp_datagram(cap, s, 1320, a, 2600, ctx_a, tn))
        oa.fetch(tn + 0.6)
    for tp in ob.poll_times(64.8, 310):
        ob.poll(tp)
    for tp in oc.poll_times(70.3, 310):
        oc.poll(tp)
    dns_noise(cap, a, 30.0)
    entry = dict(vantage="server", description="server-side capture, three clients of one server: 10.1.40.11 "
                 "(legacy) registered and reacts to 3 datagrams; 10.1.40.12 refused 0x80040102 and polls; "
                 "10.1.40.13 never registers and polls")
    entry["clients"] = [
        client_entry(oa, "registered", "push_working", list(reg_a) + notes, notifications=3, status=0),
        client_entry(ob, "not_registered", "server_refused", list(reg_b), status=EC_NOT_SUPPORTED),
        client_entry(oc, "not_registered", "client_did_not_register", list(oc.frames["connect"])),
    ]
    return cap, entry


def s_netmon():
    """The push_working story (modern client) written as a Network Monitor 2.1 file."""
    cap = Capture("push_working", 28800, 109)
    c, s = Host("10.1.22.60"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "kate")
    t = o.logon(0.1)
    ctx = bytes.fromhex("1122334455667788")
    reg = o.register(t + 0.4, c.ip, 3344, ctx)
    o.poll(61.2)
    notes = []
    for tn in (90.5, 171.3):
        notes.append(udp_datagram(cap, s, 1077, c, 3344, ctx, tn))
        o.fetch(tn + 0.22)
    entry = dict(vantage="client", format="netmon2", description="Network Monitor 2.1 file (GMBU, frame table, "
                 "per-frame media type): Outlook 2003 registered 10.1.22.60:3344, two datagrams each followed by a "
                 "fetch within 0.25 s")
    entry["clients"] = [client_entry(o, "registered", "push_working", list(reg) + notes, notifications=2, status=0)]
    return cap, entry


def s_segmented():
    """The opnum 4 request is split over three TCP segments, sent out of order, one retransmitted."""
    cap = Capture("push_working", 32400, 110)
    c, s = Host("10.1.23.99"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "liam")
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
    entry = dict(vantage="client", description="the EcRRegisterPushNotification request travels in three TCP "
                 "segments sent out of order (1, 3, 2) with segment 3 retransmitted; status 0; one datagram "
                 "followed by a fetch")
    entry["clients"] = [client_entry(o, "registered", "push_working", [seg_b, resp, d], notifications=1, status=0)]
    return cap, entry


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
    for tp in o.poll_times(61.0, 300):
        o.poll(tp)
    entry = dict(vantage="client", description="decoy: an NSPI connection (port 49160) carries an opnum 4 call whose "
                 "stub even holds a callback address; it is not a push registration. The EMSMDB session never "
                 "calls EcRRegisterPushNotification and polls")
    entry["clients"] = [client_entry(o, "not_registered", "client_did_not_register", list(o.frames["connect"]))]
    return cap, entry


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
    notes = []
    for tn in (77.7, 140.2, 205.9):
        notes.append(udp_datagram(cap, s, 1199, c, 4100, ctx, tn))
        o.fetch(tn + 0.15)
    bulk_noise(cap, c, 100.0, segments=16)
    entry = dict(vantage="client", format="pcapng", description="pcapng: the EMSMDB connection is first bound to "
                 "OXABREF (ctx 0) and EMSMDB is added by alter_context (ctx 1); registered, three datagrams each "
                 "followed by a fetch; HTTPS noise")
    entry["clients"] = [client_entry(o, "registered", "push_working", list(reg) + notes, notifications=3, status=0)]
    return cap, entry


def s_vlan_ipv6():
    cap = Capture("push_working", 43200, 113, vlan=20)
    c, s = Host("2001:db8:1::25"), Host("2001:db8::10")
    o = Outlook(cap, c, s, "olivia")
    t = o.logon(0.1, epm=False)
    ctx = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    reg = o.register(t + 0.4, c.ip, 5050, ctx)
    o.poll(60.3)
    notes = []
    for tn in (99.9, 222.2):
        notes.append(udp_datagram(cap, s, 1400, c, 5050, ctx, tn))
        o.fetch(tn + 0.5)
    entry = dict(vantage="client", description="802.1Q VLAN 20, IPv6 only: callback [2001:db8:1::25]:5050 as a "
                 "28-byte SOCKADDR_IN6 (family 23); two datagrams each followed by a fetch (no EPM: the bind_ack "
                 "names the port)")
    entry["clients"] = [client_entry(o, "registered", "push_working", list(reg) + notes, notifications=2, status=0)]
    return cap, entry


def s_privacy_push():
    cap = Capture("push_working", 46800, 114)
    c, s = Host("10.1.26.5"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "paul", auth_level=AUTH_LEVEL_PRIVACY)
    t = o.logon(0.1)
    reg = o.register(t + 0.4, c.ip, 2020, bytes.fromhex("13572468ace0bdf19876543210fedcba"))
    o.poll(61.4)
    notes = []
    for tn in (101.1, 178.8, 259.4):
        notes.append(udp_datagram(cap, s, 1150, c, 2020, bytes.fromhex("13572468ace0bdf19876543210fedcba"), tn))
        o.fetch(tn + 0.3)
    entry = dict(vantage="client", description="packet privacy (NTLMSSP, auth level 6): every stub is encrypted, so "
                 "the registration's status and callback are hidden; three datagrams from the server each followed "
                 "by calls within 0.3 s show push working (judged from behaviour)")
    entry["clients"] = [client_entry(o, "registered", "push_working", list(reg) + notes, notifications=3,
                                     callback=None)]
    return cap, entry


def s_privacy_polling():
    cap = Capture("encrypted_no_evidence", 50400, 115)
    c, s = Host("10.1.26.6"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "quinn", auth_level=AUTH_LEVEL_PRIVACY)
    t = o.logon(0.1)
    reg = o.register(t + 0.4, c.ip, 2021, bytes.fromhex("2468ace013579bdf2468ace013579bdf"))
    for tp in o.poll_times(60.9, 320):
        o.poll(tp)
    entry = dict(vantage="client", description="packet privacy: an (encrypted) EcRRegisterPushNotification and then "
                 "only polling; the outcome cannot be told from this capture")
    entry["clients"] = [client_entry(o, "inconclusive", "encrypted_no_evidence", list(reg), callback=None)]
    return cap, entry


def _sealed():
    """captures/sealed.py, loaded by path (the generator itself is loaded by path in the tests)."""
    import importlib.util

    mod = sys.modules.get("captures_sealed")
    if mod is None:
        spec = importlib.util.spec_from_file_location("captures_sealed", HERE / "sealed.py")
        mod = sys.modules["captures_sealed"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


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
    sealer = _sealed().NtlmSealer(cap.rng, "sam", "CONTOSO", SEALED_PASSWORDS["sam"], version="v2")
    o = Outlook(cap, c, s, "sam", auth_level=AUTH_LEVEL_PRIVACY, sealer=sealer)
    t = o.logon(0.1)
    ctx = bytes.fromhex("5ea1ed0a11ce0b0b")
    reg = o.register(t + 0.4, c.ip, 2040, ctx)
    o.poll(61.2)
    notes = []
    for tn in (97.4, 170.2, 244.8):
        notes.append(udp_datagram(cap, s, 1160, c, 2040, ctx, tn))
        o.fetch(tn + 0.3)
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
    sealer = _sealed().NtlmSealer(cap.rng, "tina", "CONTOSO", SEALED_PASSWORDS["tina"], version="v1-ess")
    o = Outlook(cap, c, s, "tina", auth_level=AUTH_LEVEL_PRIVACY, sealer=sealer)
    t = o.logon(0.1)
    reg = o.register(t + 0.5, c.ip, 3041, bytes.fromhex("0b5e55ed0a11ce00"), status=EC_NOT_SUPPORTED)
    for tp in o.poll_times(60.7, 320):
        o.poll(tp)
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
    cap = Capture("registration_fault", 54000, 116)
    c, s = Host("10.1.27.200"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "rachel")
    t = o.logon(0.1)
    reg = o.register(t + 0.4, c.ip, 3030, bytes.fromhex("99aabbccddeeff00"), fault=NCA_S_OP_RNG_ERROR)
    for tp in o.poll_times(60.5, 300):
        o.poll(tp)
    entry = dict(vantage="client", description="EcRRegisterPushNotification answered by a DCE/RPC fault "
                 "nca_s_op_rng_error (0x1c010002); the client polls")
    entry["clients"] = [client_entry(o, "not_registered", "registration_fault", list(reg))]
    return cap, entry


def s_async_wait():
    """Outlook 2007: EcDoAsyncConnectEx, then EcDoAsyncWaitEx long-polls on AsyncEMSMDB; each completes with
    NotificationPending when mail arrives and is followed by a fetch."""
    cap = Capture("async_wait", 57600, 117)
    c, s = Host("10.1.28.71"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "sam")
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
    entry = dict(vantage="client", description="Outlook 2007: EcDoConnectEx, EcDoAsyncConnectEx (opnum 14), then "
                 "EcDoAsyncWaitEx (AsyncEMSMDB opnum 0) on a second connection; two waits complete with "
                 "pulFlagsOut=1 when mail arrives and the client fetches; no UDP needed")
    entry["clients"] = [client_entry(o, "registered", "async_wait", [async_conn[0]] + completions)]
    return cap, entry


def s_mid_session_notified():
    """Capture starts mid-session; an EPM lookup in the capture names the EMSMDB port; datagrams + reactions."""
    cap = Capture("notification_seen_registration_not_captured", 61200, 118)
    c, s = Host("10.1.29.33"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "tina")
    o.attach_mid_session()
    o.poll(2.5)
    epm_lookup(cap, c, s, 20.0)  # e.g. the address book asking the endpoint mapper again
    notes = []
    for tn in (45.3, 131.0, 219.8):
        notes.append(udp_datagram(cap, s, 1061, c, 2345, bytes.fromhex("55aa55aa00112233"), tn))
        o.fetch(tn + 0.4)
    entry = dict(vantage="client", description="capture starts mid-session (no handshake, no bind, no logon on the "
                 "EMSMDB connection); an EPM ept_map in the capture names port 49155; three datagrams each "
                 "followed by a fetch within 0.4 s. Without a bind tshark cannot pair "
                 "responses with requests (it shows no opnum on them); the events list gives the true opnum")
    entry["clients"] = [client_entry(o, "registered", "notification_seen_registration_not_captured", notes,
                                     notifications=3)]
    entry["clients"][0]["mailbox"] = None
    return cap, entry


def s_mid_session_polling():
    cap = Capture("mid_session_no_evidence", 64800, 119)
    c, s = Host("10.1.29.34"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "uma")
    o.attach_mid_session()
    epm_lookup(cap, c, s, 5.0)
    for tp in o.poll_times(12.0, 300):
        o.poll(tp)
    entry = dict(vantage="client", description="capture starts mid-session (EPM lookup present, no bind or logon on "
                 "the EMSMDB connection); polling only: nothing decides. Without a bind tshark cannot pair "
                 "responses with requests (it shows no opnum on them); the events list gives the true opnum")
    entry["clients"] = [client_entry(o, "inconclusive", "mid_session_no_evidence", [])]
    entry["clients"][0]["mailbox"] = None
    return cap, entry


# --- issue 9 items 3 and 5: the notification pattern mid-session, mail found by polling ----------------------------


def lz77_compress(data: bytes) -> bytes:
    """MS-OXCRPC 3.1.4.1.1.2 LZ77 + DIRECT2 encoding (the same stream as MS-XCA 2.3 "plain LZ77"): 32-bit
    little-endian indicator words read from the top bit (0 literal, 1 match), a match as u16 (offset-1) << 3 |
    min(length-3, 7), longer lengths in a shared half byte, then a byte. Greedy longest match within 8 KiB."""
    out = bytearray()
    indicator, bits, indicator_pos = 0, 0, 0
    out += b"\x00\x00\x00\x00"
    nibble_pos = None
    i = 0

    def flag(bit):
        nonlocal indicator, bits, indicator_pos
        indicator = (indicator << 1) | bit
        bits += 1
        if bits == 32:
            struct.pack_into("<I", out, indicator_pos, indicator)
            indicator, bits = 0, 0
            indicator_pos = len(out)
            out.extend(b"\x00\x00\x00\x00")

    while i < len(data):
        best_len, best_off = 0, 0
        for j in range(max(0, i - 8192), i):
            n = 0
            while i + n < len(data) and n < 3 + 7 + 15 + 254 and data[j + n] == data[i + n]:
                n += 1
            if n > best_len:
                best_len, best_off = n, i - j
        if best_len < 3:
            out.append(data[i])
            flag(0)
            i += 1
            continue
        extra = best_len - 3
        out += struct.pack("<H", ((best_off - 1) << 3) | min(extra, 7))
        if extra >= 7:
            extra -= 7
            if nibble_pos is None:
                nibble_pos = len(out)
                out.append(min(extra, 15))
            else:
                out[nibble_pos] |= min(extra, 15) << 4
                nibble_pos = None
            if extra >= 15:
                out.append(extra - 15)  # < 255: lengths are capped above
        flag(1)
        i += best_len
    # the unused indicator bits are set, as the reference compressor does (a decoder stops at the input's end)
    indicator = (indicator << (32 - bits)) | ((1 << (32 - bits)) - 1)
    struct.pack_into("<I", out, indicator_pos, indicator & 0xFFFFFFFF)
    return bytes(out)


def lz77_decompress(data: bytes) -> bytes:
    """Inverse of lz77_compress (MS-XCA 2.4 decoding), to check every compressed buffer the generator writes."""
    out = bytearray()
    pos, indicator, bits, nibble_pos = 0, 0, 0, None
    while True:
        if bits == 0:
            indicator = struct.unpack_from("<I", data, pos)[0]
            pos += 4
            bits = 32
        bits -= 1
        if pos >= len(data):
            return bytes(out)
        if not (indicator >> bits) & 1:
            out.append(data[pos])
            pos += 1
            continue
        meta = struct.unpack_from("<H", data, pos)[0]
        pos += 2
        offset, length = (meta >> 3) + 1, meta & 7
        if length == 7:
            if nibble_pos is None:
                nibble_pos = pos
                length = data[pos] & 15
                pos += 1
            else:
                length = data[nibble_pos] >> 4
                nibble_pos = None
            if length == 15:
                length = data[pos] + 15
                pos += 1
            length += 7
        for _ in range(length + 3):
            out.append(out[-offset])


def new_mail_rops_text(rng, subject: str, sender: str) -> bytes:
    """A poll answer announcing a test message as Outlook 2003 gets it from Exchange 2003: RopNotify NewMail, two
    RopNotify TableModified rows carrying the subject and sender in UTF-16 (so it compresses), RopPending."""
    fid, mid = rng.getrandbits(64), rng.getrandbits(64)
    new_mail = (struct.pack("<BIBH", 0x2A, 0x00000011, 0, 0x0002) + struct.pack("<QQIB", fid, mid, 0x0000, 0)
                + b"IPM.Note\x00")
    rows = b""
    for h in (0x21, 0x22):
        row = (subject + "\x00" + sender + "\x00").encode("utf-16-le") + struct.pack("<QI", fid, 0x0001)
        rows += (struct.pack("<BIBHH", 0x2A, h, 0, 0x0100, 0x0003) + struct.pack("<QQIQQIH", fid, mid, 0, fid, 0,
                                                                                   0, len(row)) + row)
    return rop_payload(new_mail + rows + struct.pack("<BH", 0x6E, 0), handles=(0x11, 0x21, 0x22))


def ecdorpcext2_response_compressed(cxh, payload):
    """EcDoRpcExt2 answer whose rgbOut payload is compressed (RPC_HEADER_EXT flags Compressed | Last): the ROP ids
    cannot be read without decompressing, only the size shows."""
    packed = lz77_compress(payload)
    assert lz77_decompress(packed) == payload and len(packed) < len(payload), "compression must pay off"
    rgb_out = struct.pack("<HHHH", 0, 0x0005, len(packed), len(payload)) + packed
    return (Ndr().raw(cxh).u32(0).varying(rgb_out).u32(len(rgb_out))
            .varying(b"").u32(0).u32(16).u32(0).bytes())


def s_most_polls_carry_mail():
    """Client side: registered (status 0); the engineer sends a test message every minute, so four of five polls
    find mail (compressed answers: RopNotify unreadable) and the client fetches at once; no datagram arrives."""
    cap = Capture("udp_not_received", 82800, 124)
    c, s = Host("10.1.36.41"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "yvonne")
    t = o.logon(0.1)
    reg = o.register(t + 0.4, c.ip, 2790, bytes.fromhex("3b9e51c07a24d816"))
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
    entry = dict(vantage="client", description="client side: status 0 for 10.1.36.41:2790; a "
                 "test message every minute makes four of five polls carry mail (answers LZ77-compressed, so "
                 "RopNotify is unreadable; three times the empty answer) and the client fetches at once; no UDP datagram: "
                 "mail found by polling, so something drops the datagram")
    entry["clients"] = [client_entry(o, "udp_blocked", "udp_not_received", list(reg) + mail, status=0)]
    return cap, entry


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
    b_notes = []
    for tn in (96.4, 187.9):
        b_notes.append(udp_datagram(cap, s, 1203, b_host, 2650, ctx_b, tn))
        b.fetch(tn + 0.3)
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
    eb = client_entry(b, "registered", "push_working", list(reg_b) + b_notes, notifications=2, status=0)
    entry["clients"] = [eb, ea]  # sorted by IP as the analyzer lists them
    return cap, entry


def s_mid_session_poll_coincides():
    """Server side, mid-session, an ept_map answer in the capture names port 49155. Four datagrams with the same 8
    bytes; one arrives 1.1 s before a poll that was due anyway. That call is a poll, not a reaction: the other three
    datagrams get none."""
    cap = Capture("udp_not_delivered", 90000, 126)
    c, s = Host("10.1.43.9"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "brian")
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
    cap = Capture("capture_too_short", 68400, 120)
    c, s = Host("10.1.32.9"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "victor")
    o.logon(0.1)
    dns_noise(cap, c, 3.9)
    entry = dict(vantage="client", description="a 4-second capture: EPM, bind and EcDoConnectEx only")
    entry["clients"] = [client_entry(o, "inconclusive", "capture_too_short", [o.frames["connect"][0]])]
    return cap, entry


def s_registered_no_mail_seen():
    cap = Capture("registered_no_mail_seen", 72000, 121)
    c, s = Host("10.1.33.14"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "wendy")
    t = o.logon(0.1)
    reg = o.register(t + 0.3, c.ip, 2468, bytes.fromhex("0a0b0c0d0e0f1011"))
    for tp in o.poll_times(60.6, 310):
        o.poll(tp)
    bulk_noise(cap, c, 42.0, segments=12)
    entry = dict(vantage="client", description="client side: status 0 for 10.1.33.14:2468, polling, no mail arrives "
                 "while capturing (polling until the first notification is normal)")
    entry["clients"] = [client_entry(o, "registered", "registered_no_mail_seen", list(reg), status=0)]
    return cap, entry


def s_truncated():
    """The server_refused story, the file cut in the middle of a late poll's record."""
    cap = Capture("server_refused", 75600, 122)
    c, s = Host("10.1.34.50"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "xavier")
    t = o.logon(0.1)
    reg = o.register(t + 0.5, c.ip, 3999, bytes.fromhex("feedfacecafebeef"), status=EC_NOT_SUPPORTED)
    cut = None
    for i, tp in enumerate(o.poll_times(60.3, 330)):
        f = o.poll(tp)
        if i == 3:
            cut = f[1]  # the record of this response is cut in half
    entry = dict(vantage="client", truncate_frames=cut, description="the server_refused story in a file cut in the "
                 "middle of a record (a poll answer): every frame before the cut is readable, a warning is expected")
    entry["clients"] = [client_entry(o, "not_registered", "server_refused", list(reg), status=EC_NOT_SUPPORTED)]
    return cap, entry


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
    entry = dict(vantage="client", description="no EMSMDB at all: DNS, an address-book (NSPI) session, HTTPS; no "
                 "Outlook client to judge (no_emsmdb_session)")
    entry["clients"] = []
    return cap, entry


# ------------------------------------------------------------------------------------------------------------------
# issue 9 items 1, 2, 4 (helper H1): endpoints learnt late, EMSMDB by stub shape, capture loss, a decoy

# ROP request buffers of Outlook 2002's EcDoRpc calls, de-obfuscated from the public wiki capture mgove413_3_5_10
# (frames 1300 and 1302 of the egress-only copy): RopSize, the ROPs, then the server object handle table.
OUTLOOK2002_POLL_ROPS = bytes.fromhex("1000fe00000006040000000000000000ffffffff")
OUTLOOK2002_FETCH_ROPS = bytes.fromhex("0f0002000001010000000000000400def50000ffffffff")


def ecdorpc_request_2002(cxh, payload):
    """EcDoRpc (2) request as Outlook 2002 marshals it (mgove413): handle, size 0x7fff, offset 0, ROP buffer (u32
    length + XOR-0xA5 bytes), cbIn u16 = length, max u16 0x7fff."""
    return (Ndr().raw(cxh).u32(0x7FFF).u32(0).u32(len(payload)).raw(xor_a5(payload)).u16(len(payload))
            .u16(0x7FFF).bytes())


def ecdorpc_response_2002(cxh, payload):
    return (Ndr().raw(cxh).u32(0x7FFF).u32(0).u32(len(payload)).raw(xor_a5(payload)).u16(len(payload))
            .u32(0).bytes())


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
        notes = []
        for k, tn in enumerate((12.0 + udp_port % 7, 140.0 + udp_port % 5)):
            notes.append(udp_datagram(cap, o.server, 1040 + k, o.client, udp_port, ctx, tn))
            o.fetch(tn + 0.45)
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
    notes = []
    for tn in (80.4, 151.9):
        notes.append(udp_datagram(cap, s, 1077, c, 3110, ctx, tn))
        o.fetch(tn + 0.3)
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
    cap = Capture("lost_segment_after_bind", 93600, 133)
    c, s = Host("10.3.3.31"), Host(EXCHANGE)
    o = Outlook(cap, c, s, "hal")
    t = o.logon(0.05)
    lost_request, its_answer = o.frames["connect"]
    cap.lost.add(lost_request)
    cap.request_lost.add(its_answer)
    ctx = bytes.fromhex("77a0c3e1d2b4f596")
    reg = list(o.register(t + 0.4, c.ip, 2620, ctx))
    o.poll(61.0)
    notes = []
    for i, tn in enumerate((90.5, 170.2)):
        notes.append(udp_datagram(cap, s, 1050 + i, c, 2620, ctx, tn))
        o.fetch(tn + 0.35)
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
    entry = dict(vantage="client", description="decoy: three DCE/RPC connections to a domain controller already "
                 "running when the capture starts (no bind, no endpoint mapper): DRSUAPI-like calls (context "
                 "handle in each request, none returned), SAMR-like calls under opnums 2/11/5/7 (handles both "
                 "ways, no ROP buffer) and random stubs under opnums 2 and 11. None may become an Outlook client")
    entry["clients"] = []
    return cap, entry


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

# ------------------------------------------------------------------------------------------------------------------
# file writers (by hand: fixed headers, no clocks)


def write_pcap(frames, linktype=1) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
    for ts, data in frames:
        out.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(data), len(data)))
        out.write(data)
    return out.getvalue()


def write_pcapng(frames, linktype=1) -> bytes:
    def block(btype, body):
        body += b"\x00" * ((-len(body)) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    def opt(code, value):
        return struct.pack("<HH", code, len(value)) + value + b"\x00" * ((-len(value)) % 4)

    shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + opt(4, b"mailpush captures/generate.py") + opt(0, b"")
    idb = struct.pack("<HHI", linktype, 0, 262144) + opt(2, b"eth0") + opt(9, b"\x06") + opt(0, b"")
    out = [block(0x0A0D0D0A, shb), block(1, idb)]
    for ts, data in frames:
        out.append(block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data))
    return b"".join(out)


def write_netmon2(frames) -> bytes:
    """Network Monitor 2.1 file (docs/protocol.md §5, Wireshark wiretap/netmon.c): 128-byte header ('GMBU', 2.1,
    Ethernet, SYSTEMTIME of the first frame), per-frame records {ts_delta u64 µs since start, orig_len u32,
    incl_len u32, data, media type u16 (2.1 trailer)}, then the frame table (u32 file offsets). The SYSTEMTIME is
    written in UTC (NetMon writes local time without a zone; readers in UTC see the right times)."""
    import datetime as dt

    start_us = frames[0][0]
    st = dt.datetime.fromtimestamp(start_us // 1_000_000, tz=dt.timezone.utc)
    ms = (start_us % 1_000_000) // 1000
    body = io.BytesIO()
    offsets = []
    pos = 128
    for ts, data in frames:
        rec = struct.pack("<QII", ts - (start_us - (start_us % 1000)), len(data), len(data)) + data + \
            struct.pack("<H", 1)
        offsets.append(pos)
        body.write(rec)
        pos += len(rec)
    table = b"".join(struct.pack("<I", o) for o in offsets)
    header = b"GMBU" + struct.pack("<BBH", 1, 2, 1)
    header += struct.pack("<8H", st.year, st.month, (st.weekday() + 1) % 7, st.day, st.hour, st.minute, st.second, ms)
    header += struct.pack("<II", pos, len(table))  # frame table offset, length
    header += struct.pack("<IIIIIIII", 0, 0, 0, 0, 0, 0, 0, 0)
    header += b"\x00" * (128 - len(header))
    return header + body.getvalue() + table


def gzip_bytes(data: bytes, name: str) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------------------


def build(outdir: Path, times: dict | None = None) -> list[dict]:
    """Write every scenario's file and manifest.json into outdir; returns the manifest. If ``times`` is a dict it
    receives file name -> list of frame timestamps (µs since the epoch) of the frames in the file."""
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for fname, fn in SCENARIOS.items():
        cap, entry = fn()
        cap.finish()
        for cl in entry["clients"] + entry.get("clients_with_secrets", []):
            cl["evidence_frames"] = sorted({cap.number(k) for k in cl["evidence_frames"]})
        fmt = entry.pop("format", "pcap")
        compressed = fname.endswith(".gz")
        if fmt == "pcapng":
            data = write_pcapng(cap.sorted_frames)
        elif fmt == "netmon2":
            data = write_netmon2(cap.sorted_frames)
        else:
            data = write_pcap(cap.sorted_frames)
        frames = len(cap.sorted_frames)
        events = cap.events
        truncate_at = entry.pop("truncate_frames", None)
        warning = False
        if truncate_at is not None:
            data, frames = truncate(data, cap.sorted_frames, cap.number(truncate_at) - 1)
            events = [e for e in events if e[0] <= frames]
            warning = True
            entry["cut_at_byte"] = len(data)  # file size: the record of frame frames+1 starts but is incomplete
        if times is not None:
            times[fname] = [ts for ts, _ in cap.sorted_frames[:frames]]
        if compressed:
            data = gzip_bytes(data, fname[:-3])
        (outdir / fname).write_bytes(data)
        manifest.append({
            "file": fname,
            "scenario": entry.pop("scenario", cap.name),
            "description": entry.pop("description"),
            "format": fmt,
            "compressed": compressed,
            "vantage": entry.pop("vantage"),
            "frames": frames,
            "warning_expected": warning or entry.pop("warning_expected", False),
            "start": cap.sorted_frames[0][0] / 1e6,
            "end": cap.sorted_frames[frames - 1][0] / 1e6,
            "clients": entry.pop("clients"),
            "events": events,
            **entry,
        })
    (outdir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def truncate(data: bytes, frames, keep: int):
    """Cut a pcap in the middle of the record of frame keep+1: keep whole frames survive."""
    pos = 24
    for i in range(keep):
        pos += 16 + len(frames[i][1])
    cut = pos + 16 + len(frames[keep][1]) // 2
    return data[:cut], keep


def main(argv):
    outdir = Path(argv[1]) if len(argv) > 1 else HERE
    manifest = build(outdir)
    for m in manifest:
        print(f"{m['file']:42s} {m['frames']:5d} frames  {m['scenario']}")


if __name__ == "__main__":
    main(sys.argv)
