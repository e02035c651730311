"""EMSMDB / AsyncEMSMDB stub decoders and interface names (analyzer.dissect.emsmdb, analyzer.dissect.interfaces).

Stubs are the docs/protocol.md §1.10 test vector verbatim, its IPv6 variant, and stubs built here field by field
from the MS-OXCRPC IDL: the fixed parts with the shared layouts of analyzer/dissect/layouts.py (checked
independently by the §1.10 vector and by tshark on the samples), the NDR arrays with plain struct.pack.
"""

import struct


import pytest

from analyzer.dissect import layouts
from analyzer.dissect.emsmdb import decode_request_stub, decode_response_stub, sockaddr_text
from analyzer.dissect.interfaces import interface_name, opname

VECTOR_REQUEST = bytes.fromhex(
    "000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000010000000000102030405060708090a0b0c0d0e0f10000000ffffffff"
    "10000000020004d20a00000500000000000000001000"
)
VECTOR_RESPONSE = bytes.fromhex("000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000002010480")
PCXH = bytes.fromhex("000000001a2b3c4d5e6f708192a3b4c5d6e7f809")


def test_vector_request_decodes_callback_context_and_advise_bits():
    assert len(VECTOR_REQUEST) == 74
    out = decode_request_stub("EMSMDB", 4, VECTOR_REQUEST)
    assert out == {
        "context_hex": "000102030405060708090a0b0c0d0e0f",
        "advise_bits": 0xFFFFFFFF,
        "callback": "10.0.0.5:1234",
    }


def test_vector_response_gives_hnotification_and_ecnotsupported():
    out = decode_response_stub("EMSMDB", 4, VECTOR_RESPONSE)
    assert out == {"hnotification": 0, "status": 0x80040102}


def test_ipv6_variant_uses_windows_af_inet6_23():
    # docs/protocol.md §1.10: same up to offset 0x34, then max_count 28, SOCKADDR_IN6, cbCallbackAddress 28
    stub = VECTOR_REQUEST[:0x34] + bytes.fromhex(
        "1c000000" "170004d2" "00000000" "20010db8000000000000000000000005" "00000000" "1c00")
    assert len(stub) == 86
    out = decode_request_stub("EMSMDB", 4, stub)
    assert out["callback"] == "[2001:db8::5]:1234"
    assert out["context_hex"] == "000102030405060708090a0b0c0d0e0f"
    assert "note" not in out


def test_linux_af_inet6_10_is_not_taken_for_an_address():
    callback, note = sockaddr_text(bytes.fromhex("0a0004d2") + bytes(24))
    assert callback is None and "family 10" in note


def _register_request(context: bytes, sockaddr: bytes, le: bool = True) -> bytes:
    """EcRRegisterPushNotification request built field by field (NDR20, aligned to the stub start)."""
    e = "<" if le else ">"
    out = bytearray(layouts.REGISTER_PUSH_REQUEST_HEAD.pack(le, cxh=PCXH, rpc=0))
    out += struct.pack(e + "I", len(context)) + context
    out += bytes((-len(out)) % 2) + struct.pack(e + "H", len(context))
    out += bytes((-len(out)) % 4) + struct.pack(e + "II", 0xFFFFFFFF, len(sockaddr)) + sockaddr
    out += bytes((-len(out)) % 2) + struct.pack(e + "H", len(sockaddr))
    return bytes(out)


def test_eight_byte_context_realigns_the_following_fields():
    sockaddr = bytes.fromhex("0200") + bytes.fromhex("09c4") + bytes([192, 168, 1, 20]) + bytes(8)
    stub = _register_request(b"libmapi\x01", sockaddr)
    assert _register_request(bytes(range(16)), bytes.fromhex("020004d20a000005") + bytes(8)) == VECTOR_REQUEST
    out = decode_request_stub("EMSMDB", 4, stub)
    assert out == {"context_hex": b"libmapi\x01".hex(), "advise_bits": 0xFFFFFFFF, "callback": "192.168.1.20:2500"}


def test_big_endian_drep_request_and_response():
    sockaddr = bytes.fromhex("020004d20a000005") + bytes(8)  # a byte array: same bytes in either drep
    stub = _register_request(bytes(range(16)), sockaddr, le=False)
    out = decode_request_stub("EMSMDB", 4, stub, little_endian=False)
    assert out["callback"] == "10.0.0.5:1234" and out["advise_bits"] == 0xFFFFFFFF
    assert out["context_hex"] == bytes(range(16)).hex() and "note" not in out
    response = layouts.REGISTER_PUSH_RESPONSE.pack(False, cxh=PCXH, hnotification=7, status=0x80040102)
    assert decode_response_stub("EMSMDB", 4, response, little_endian=False) == {"hnotification": 7,
                                                                               "status": 0x80040102}


def test_opnum_4_on_another_interface_is_nothing_special():
    assert decode_request_stub("NSPI", 4, VECTOR_REQUEST) == {}
    assert decode_response_stub("NSPI", 4, VECTOR_RESPONSE) == {}
    assert decode_request_stub("exchange_store_admin1", 4, VECTOR_REQUEST) == {}
    assert decode_request_stub("a4f1db00-ca47-1067-b31e-00dd010662da", 4, VECTOR_REQUEST) == {}


@pytest.mark.parametrize("cut", range(0, 74))
def test_truncated_request_never_raises_and_says_so(cut):
    out = decode_request_stub("EMSMDB", 4, VECTOR_REQUEST[:cut])
    assert "note" in out
    assert "callback" not in out or out["callback"] is None or cut >= 72


def test_truncated_and_garbage_responses_never_raise():
    import random

    rng = random.Random(5)
    for interface, opnum in (("EMSMDB", 0), ("EMSMDB", 2), ("EMSMDB", 4), ("EMSMDB", 10), ("EMSMDB", 11),
                             ("EMSMDB", 14), ("AsyncEMSMDB", 0)):
        for n in (0, 3, 19, 23, 27, 40, 200):
            blob = bytes(rng.randrange(256) for _ in range(n))
            assert isinstance(decode_response_stub(interface, opnum, blob), dict)
            assert isinstance(decode_request_stub(interface, opnum, blob), dict)
    assert "note" in decode_response_stub("EMSMDB", 4, VECTOR_RESPONSE[:26])


def _varying(data: bytes) -> bytes:
    return struct.pack("<III", len(data), 0, len(data)) + data + bytes((-len(data)) % 4)


def test_ecdoconnectex_request_user_dn():
    dn = b"/o=Contoso/ou=Exchange Administrative Group/cn=Recipients/cn=alice\x00"
    stub = _varying(dn) + struct.pack("<IIIIIII", 0, 0, 0, 1252, 1033, 1033, 0xFFFFFFFF)
    out = decode_request_stub("EMSMDB", 10, stub)
    assert out == {"user_dn": "/o=Contoso/ou=Exchange Administrative Group/cn=Recipients/cn=alice"}
    assert decode_request_stub("EMSMDB", 0, stub) == out
    assert "note" in decode_request_stub("EMSMDB", 10, stub[:20])


def _connect_response(poll_ms: int, status: int, ex: bool) -> bytes:
    out = bytearray(PCXH)
    out += struct.pack("<IIIH", poll_ms, 6, 10000, 0x1234) + b"\0\0"
    out += struct.pack("<I", 0x20000) + _varying(b"/o=Contoso/ou=First\x00")
    out += struct.pack("<I", 0x20004) + _varying(b"Alice\x00")
    out += struct.pack("<3H3H", 6, 5, 7638, 6, 5, 7638) + struct.pack("<I", 0)
    if ex:
        out += _varying(b"") + struct.pack("<I", 0)
    out += struct.pack("<I", status)
    return bytes(out)


def test_ecdoconnectex_response_poll_interval_and_status():
    assert decode_response_stub("EMSMDB", 10, _connect_response(60000, 0, ex=True)) == {"poll_max_ms": 60000,
                                                                                      "status": 0}
    assert decode_response_stub("EMSMDB", 0, _connect_response(90000, 0x970, ex=False)) == {"poll_max_ms": 90000,
                                                                                          "status": 0x970}
    # an opnum 10 response that does not walk to its end: poll interval still read, status withheld
    odd = _connect_response(60000, 0, ex=True) + b"\0\0\0\0"
    out = decode_response_stub("EMSMDB", 10, odd)
    assert out["poll_max_ms"] == 60000 and "status" not in out and "not confirmed" in out["note"]


def _ext2_response(rgb_out: bytes, status: int = 0) -> bytes:
    return (PCXH + struct.pack("<I", 0) + _varying(rgb_out) + struct.pack("<I", len(rgb_out)) + _varying(b"")
            + struct.pack("<III", 0, 15, status))


def _rpc_header_ext(payload: bytes, flags: int) -> bytes:
    body = bytes(x ^ 0xA5 for x in payload) if flags & 0x2 else payload
    return layouts.RPC_HEADER_EXT.pack(flags=flags, size=len(body), size_actual=len(body)) + body


def test_ecdorpcext2_rop_ids():
    pending_then_notify = struct.pack("<H", 2 + 3 + 8) + b"\x6e\x01\x00" + b"\x2a\x01\x00\x00\x00\x00\x02\x00"
    out = decode_response_stub("EMSMDB", 11, _ext2_response(_rpc_header_ext(pending_then_notify, 0x4)))
    assert out == {"rop_ids": "6e,2a", "status": 0}
    out = decode_response_stub("EMSMDB", 11, _ext2_response(_rpc_header_ext(pending_then_notify, 0x4 | 0x2)))
    assert out["rop_ids"] == "6e,2a"
    notify = struct.pack("<H", 2 + 8) + b"\x2a\x01\x00\x00\x00\x00\x02\x00"
    assert decode_response_stub("EMSMDB", 11, _ext2_response(_rpc_header_ext(notify, 0x4)))["rop_ids"] == "2a"
    empty = struct.pack("<H", 2)
    assert decode_response_stub("EMSMDB", 11, _ext2_response(_rpc_header_ext(empty, 0x4)))["rop_ids"] == ""
    compressed = decode_response_stub("EMSMDB", 11, _ext2_response(_rpc_header_ext(b"\x11\x22\x33", 0x5)))
    assert compressed.get("rop_ids") is None and "compressed" in compressed["note"]


def test_ecdorpc_legacy_buffer_is_xor_a5():
    rops = struct.pack("<H", 2 + 8) + b"\x2a\x01\x00\x00\x00\x00\x02\x00"
    xored = bytes(x ^ 0xA5 for x in rops)
    stub = PCXH + _varying(xored) + struct.pack("<H", len(xored)) + b"\0\0" + struct.pack("<I", 0)
    assert decode_response_stub("EMSMDB", 2, stub) == {"rop_ids": "2a"}
    empty = bytes(x ^ 0xA5 for x in struct.pack("<H", 2))
    assert decode_response_stub("EMSMDB", 2, PCXH + _varying(empty))["rop_ids"] == ""


def test_async_connect_and_wait():
    connected = layouts.HANDLE_AND_STATUS.pack(cxh=PCXH, status=0x7EE)
    assert decode_response_stub("EMSMDB", 14, connected) == {"status": 0x7EE}
    woken = layouts.ASYNC_WAIT_RESPONSE.pack(async_flags=1, status=0)
    assert decode_response_stub("AsyncEMSMDB", 0, woken) == {"async_flags": 1, "status": 0}
    woken_be = layouts.ASYNC_WAIT_RESPONSE.pack(False, async_flags=1, status=0)
    assert decode_response_stub("AsyncEMSMDB", 0, woken_be, little_endian=False) == {"async_flags": 1, "status": 0}
    assert decode_response_stub("EMSMDB", 0 + 100, b"") == {}


def test_interface_and_operation_names():
    assert interface_name("A4F1DB00-CA47-1067-B31F-00DD010662DA", 0, 81) == "EMSMDB"
    assert interface_name("5261574a-4572-206e-b268-6b199213b4e4", 0, 1) == "AsyncEMSMDB"
    assert interface_name("f5cc5a18-4264-101a-8c59-08002b2f8426", 56, 0) == "NSPI"
    assert interface_name("e1af8308-5d1f-11c9-91a4-08002b14a0fa", 3, 0) == "EPM"
    # one nibble away from EMSMDB: must not be EMSMDB
    assert interface_name("a4f1db00-ca47-1067-b31e-00dd010662da", 1, 0) != "EMSMDB"
    assert interface_name("01234567-89ab-cdef-0123-456789ABCDEF", 1, 0) == "01234567-89ab-cdef-0123-456789abcdef"
    expected = {0: "EcDoConnect", 1: "EcDoDisconnect", 2: "EcDoRpc", 4: "EcRRegisterPushNotification",
                5: "EcRUnregisterPushNotification", 6: "EcDummyRpc", 10: "EcDoConnectEx", 11: "EcDoRpcExt2",
                14: "EcDoAsyncConnectEx"}
    for opnum, name in expected.items():
        assert opname("EMSMDB", opnum) == name
    assert opname("EMSMDB", 12) is None
    assert opname("AsyncEMSMDB", 0) == "EcDoAsyncWaitEx"
    assert opname("EPM", 3) == "ept_map"
    assert opname("NSPI", 0) == "NspiBind" and opname("NSPI", 4) == "NspiSeekEntries"
    assert opname(None, 4) is None and opname("01234567-89ab-cdef-0123-456789abcdef", 4) is None
