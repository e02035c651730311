# SPDX-License-Identifier: GPL-2.0-or-later
"""DCE/RPC connection-oriented PDUs (docs/protocol.md §4), packed with the layouts the dissector parses with
(analyzer/dissect/layouts.py). Little-endian drep throughout, as Windows sends them."""

from __future__ import annotations

import uuid

from analyzer.dissect.layouts import (
    BIND_ACK_HEADER,
    BIND_HEADER,
    COMMON_HEADER,
    CONTEXT_ELEM,
    CONTEXT_RESULT,
    FAULT_HEADER,
    REQUEST_HEADER,
    RESPONSE_HEADER,
    RESULT_LIST_HEADER,
    SEC_TRAILER,
    SYNTAX_ID,
)
from captures.samplelib.constants import PT_REQUEST, PT_RESPONSE

NIL_SYNTAX = ("00000000-0000-0000-0000-000000000000", 0)


def co_pdu(ptype, call_id, body, flags=0x03, auth=None):
    """auth = (auth_type, auth_level, token): the sec_trailer follows the body padded so that it starts 16-byte
    aligned relative to the stub (MS-RPCE); for request/response the body includes the 8-byte header."""
    auth_part = b""
    auth_len = 0
    if auth is not None:
        auth_type, auth_level, token = auth
        call = ptype in (PT_REQUEST, PT_RESPONSE)
        align = 16 if call else 4
        start = REQUEST_HEADER.size if call else 0  # stub offset within the body
        pad = (-(len(body) - start)) % align
        body = body + b"\x00" * pad
        auth_part = SEC_TRAILER.pack(auth_type=auth_type, auth_level=auth_level, auth_pad_length=pad) + token
        auth_len = len(token)
    frag_len = COMMON_HEADER.size + len(body) + len(auth_part)
    return COMMON_HEADER.pack(ptype=ptype, pfc_flags=flags, frag_length=frag_len, auth_length=auth_len,
                              call_id=call_id) + body + auth_part


def _syntax(u, version) -> bytes:
    return SYNTAX_ID.pack(if_uuid=uuid.UUID(u).bytes_le, if_version=version)


def bind_body(contexts, assoc=0):
    """contexts: [(ctx_id, iface, [transfer syntax uuid/version...])]."""
    b = BIND_HEADER.pack(assoc_group_id=assoc, n_context_elem=len(contexts))
    for ctx_id, (u, vmaj, vmin), syntaxes in contexts:
        b += CONTEXT_ELEM.pack(p_cont_id=ctx_id, n_transfer_syn=len(syntaxes), if_uuid=uuid.UUID(u).bytes_le,
                               if_version=vmin << 16 | vmaj)
        for su, sv in syntaxes:
            b += _syntax(su, sv)
    return b


def bind_ack_body(results, sec_addr, assoc):
    """results: [(result, reason, (syntax uuid, version))]."""
    sa = sec_addr.encode("ascii") + b"\x00" if sec_addr else b""
    b = BIND_ACK_HEADER.pack(assoc_group_id=assoc, sec_addr_length=len(sa)) + sa
    b += b"\x00" * ((-(BIND_ACK_HEADER.offset + len(b))) % 4)  # the result list is 4-aligned in the PDU
    b += RESULT_LIST_HEADER.pack(n_results=len(results))
    for result, reason, (su, sv) in results:
        b += CONTEXT_RESULT.pack(result=result, reason=reason, transfer_uuid=uuid.UUID(su).bytes_le,
                                 transfer_version=sv)
    return b


def request_body(ctx_id, opnum, stub, alloc_hint=None):
    return REQUEST_HEADER.pack(alloc_hint=len(stub) if alloc_hint is None else alloc_hint, p_cont_id=ctx_id,
                               opnum=opnum) + stub


def response_body(ctx_id, stub, alloc_hint=None):
    return RESPONSE_HEADER.pack(alloc_hint=len(stub) if alloc_hint is None else alloc_hint, p_cont_id=ctx_id) + stub


def fault_body(ctx_id, status):
    # alloc_hint: the whole fault PDU (common header + fault header), as Windows sends it
    return FAULT_HEADER.pack(alloc_hint=FAULT_HEADER.end, p_cont_id=ctx_id, status=status)
