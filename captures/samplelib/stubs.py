# SPDX-License-Identifier: GPL-2.0-or-later
"""NDR stubs of the operations the samples carry: EMSMDB (MS-OXCRPC IDL, [in]/[out] parameters in IDL order),
the endpoint mapper, minimal NTLMSSP tokens, and the LZ77 compression of RPC_HEADER_EXT payloads."""

from __future__ import annotations

import ipaddress
import struct
import uuid

from analyzer.dissect.layouts import (
    ASYNC_WAIT_RESPONSE,
    FLOOR_MINOR_VERSION,
    FLOOR_PART_LENGTH,
    REGISTER_PUSH_RESPONSE,
    RPC_HEADER_EXT,
    TOWER_FLOOR_COUNT,
    UUID_FLOOR_LHS,
)
from captures.samplelib.constants import EC_NOT_SUPPORTED, NDR_UUID
from captures.samplelib.ndr import Ndr, sockaddr


# --- EMSMDB stubs (MS-OXCRPC IDL; [in]/[out] parameters in IDL order) --------------------------------------------


def register_push_request(cxh, context, cb_ip, cb_port):
    """EcRRegisterPushNotification (opnum 4) request, docs/protocol.md §1.4."""
    addr = sockaddr(cb_ip, cb_port)
    return (Ndr().raw(cxh).u32(0).conformant(context).u16(len(context)).u32(0xFFFFFFFF)
            .conformant(addr).u16(len(addr)).bytes())


def register_push_response(cxh, hnotification, status):
    return REGISTER_PUSH_RESPONSE.pack(cxh=cxh, hnotification=hnotification, status=status)  # §1.5: 28 bytes


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
    return RPC_HEADER_EXT.pack(flags=0x0004, size=len(payload), size_actual=len(payload)) + payload


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
    return ASYNC_WAIT_RESPONSE.pack(async_flags=flags, status=status)  # pulFlagsOut, return value


# --- endpoint mapper ----------------------------------------------------------------------------------------------


def tower(iface, port, ip):
    uuid_s, vmaj, vmin = iface

    def floor(lhs, rhs):
        return FLOOR_PART_LENGTH.pack(length=len(lhs)) + lhs + FLOOR_PART_LENGTH.pack(length=len(rhs)) + rhs

    def uuid_floor(u, major, minor):
        return floor(UUID_FLOOR_LHS.pack(uuid=uuid.UUID(u).bytes_le, version_major=major),
                     FLOOR_MINOR_VERSION.pack(version_minor=minor))

    floors = [
        uuid_floor(uuid_s, vmaj, vmin),
        uuid_floor(NDR_UUID, 2, 0),
        floor(b"\x0b", struct.pack("<H", 0)),  # RPC connection-oriented, minor version 0
        floor(b"\x07", struct.pack(">H", port)),  # TCP port, network order
        floor(b"\x09", ipaddress.IPv4Address(ip).packed),
    ]
    return TOWER_FLOOR_COUNT.pack(floor_count=len(floors)) + b"".join(floors)


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
