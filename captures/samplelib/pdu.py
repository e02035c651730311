# SPDX-License-Identifier: GPL-2.0-or-later
"""DCE/RPC connection-oriented PDUs (docs/protocol.md §4), packed with the layouts of analyzer/dissect/layouts.py."""

from __future__ import annotations

import struct
import uuid

from captures.samplelib.constants import PT_REQUEST, PT_RESPONSE


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
