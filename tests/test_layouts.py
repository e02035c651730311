"""The shared wire layouts (analyzer/dissect/layouts.py): sizes and offsets as C706 / MS-RPCE / MS-OXCRPC give
them, the §1.10 vector read through them, and the Layout helper's packing in both byte orders."""

import pytest

from analyzer.dissect import dcerpc, layouts

# docs/protocol.md §1.10: the opnum 4 request PDU, verbatim
VECTOR_REQUEST_PDU = bytes.fromhex(
    "05000003100000006200000002000000" "4a00000000000400"
    "000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000010000000000102030405060708090a0b0c0d0e0f10000000ffffffff"
    "10000000020004d20a00000500000000000000001000"
)
VECTOR_RESPONSE_STUB = bytes.fromhex("000000001a2b3c4d5e6f708192a3b4c5d6e7f8090000000002010480")


def test_sizes_and_offsets_are_the_specifications():
    assert layouts.COMMON_HEADER.size == 16
    assert (layouts.REQUEST_HEADER.offset, layouts.REQUEST_HEADER.size) == (16, 8)
    assert (layouts.RESPONSE_HEADER.offset, layouts.RESPONSE_HEADER.size) == (16, 8)
    assert (layouts.FAULT_STATUS.offset, layouts.FAULT_HEADER.end) == (24, 32)
    assert (layouts.OBJECT_UUID.offset, layouts.OBJECT_UUID.end) == (24, 40)
    assert layouts.HEADER_LENGTHS.offset == 8 and layouts.HEADER_LEADING.size == 8
    assert [layouts.BIND_HEADER.size, layouts.CONTEXT_ELEM.size, layouts.SYNTAX_ID.size] == [12, 24, 20]
    assert [layouts.BIND_ACK_HEADER.size, layouts.RESULT_LIST_HEADER.size, layouts.CONTEXT_RESULT.size] == [10, 4, 24]
    assert layouts.SEC_TRAILER.size == 8
    assert layouts.REGISTER_PUSH_RESPONSE.size == 28 and layouts.REGISTER_PUSH_RESPONSE.offset_of("status") == 24
    assert layouts.RPC_HEADER_EXT.size == 8 and layouts.EPT_MAP_RESPONSE_HEAD.end == 24


def test_minimum_fragment_lengths_per_ptype():
    # C706 12.6.4 / MS-RPCE 2.2.2: common header plus each PTYPE's fixed part
    assert dcerpc._MIN_FRAG == {0: 24, 2: 24, 3: 32, 11: 28, 12: 26, 13: 18, 14: 28, 15: 26, 16: 20, 17: 16, 18: 16,
                                19: 16, 20: 20}


def test_the_protocol_vector_read_through_the_layouts():
    head = layouts.COMMON_HEADER.unpack(VECTOR_REQUEST_PDU)
    assert head == {"rpc_vers": 5, "rpc_vers_minor": 0, "ptype": 0, "pfc_flags": 3, "drep_int_char": 0x10,
                    "drep_float": 0, "drep_reserved": 0, "frag_length": 0x62, "auth_length": 0, "call_id": 2}
    assert layouts.REQUEST_HEADER.unpack(VECTOR_REQUEST_PDU) == {"alloc_hint": 0x4A, "p_cont_id": 0, "opnum": 4}
    answer = layouts.REGISTER_PUSH_RESPONSE.unpack(VECTOR_RESPONSE_STUB)
    assert (answer["hnotification"], answer["status"]) == (0, 0x80040102)
    # and written back from the fields, byte for byte
    assert layouts.COMMON_HEADER.pack(**head) + layouts.REQUEST_HEADER.pack(alloc_hint=0x4A, opnum=4) \
        == VECTOR_REQUEST_PDU[:24]


def test_pack_in_both_byte_orders_with_defaults():
    le = layouts.COMMON_HEADER.pack(ptype=2, frag_length=0x1234, call_id=7)
    assert le[:4] == b"\x05\x00\x02\x03" and le[4] == 0x10 and le[8:10] == b"\x34\x12"
    be = layouts.COMMON_HEADER.pack(False, ptype=2, drep_int_char=layouts.DREP_BIG_ENDIAN, frag_length=0x1234,
                                    call_id=7)
    assert be[4] == 0 and be[8:10] == b"\x12\x34" and be[12:16] == b"\x00\x00\x00\x07"
    assert layouts.COMMON_HEADER.unpack(be, little_endian=False)["call_id"] == 7
    # byte order fixed by the specification: the same bytes whatever is asked
    assert layouts.RPC_HEADER_EXT.pack(False, flags=4, size=3) == layouts.RPC_HEADER_EXT.pack(flags=4, size=3)
    # if_version is one u32 = minor << 16 | major: major first in little-endian, minor first in big-endian
    elem = dict(p_cont_id=1, n_transfer_syn=1, if_uuid=bytes(16), if_version=81 << 16 | 0)
    assert layouts.CONTEXT_ELEM.pack(**elem)[20:24] == b"\x00\x00\x51\x00"
    assert layouts.CONTEXT_ELEM.pack(False, **elem)[20:24] == b"\x00\x51\x00\x00"


def test_unknown_field_is_refused():
    with pytest.raises(TypeError, match="no field opnum"):
        layouts.RESPONSE_HEADER.pack(opnum=4)
