# SPDX-License-Identifier: GPL-2.0-or-later
"""Fixed wire layouts, declared once: the parsers (dcerpc.py, emsmdb.py, epm.py), the sample generator
(captures/samplelib) and the test builders all read and write these records through the same tables.

A :class:`Layout` is a dpkt-style header table, ``(name, struct code, default)`` per field, compiled once to a
``struct.Struct`` for each byte order. Most DCE/RPC records follow the PDU's data representation (drep), so a
layout has a little-endian and a big-endian form; records whose byte order is fixed by their specification
(tower floors, RPC_HEADER_EXT) say so with ``order``. ``offset`` is where the record starts in its PDU (or stub)
when that place is fixed, so no offset is written by hand outside this module.

Speed: the per-PDU paths of dcerpc.py use the precompiled ``Layout.le`` / ``Layout.be`` structs directly (a
bound ``unpack_from`` costs the same as before: the layouts only say where the structs come from).
``pack``/``unpack`` by field name are for the generator and tests, where a microsecond does not matter.

Sources: C706 chapter 12 and MS-RPCE 2.2.2 (connection-oriented PDUs), MS-RPCE 2.2.1.1.7 (towers),
MS-OXCRPC 2.2.2.1 and 3.1.4.5 (RPC_HEADER_EXT, EcRRegisterPushNotification); docs/protocol.md §1.4-1.10, §4.
"""

from __future__ import annotations

import struct

# first byte of the data representation (drep): integer byte order in the high nibble, character set in the low
DREP_LITTLE_ENDIAN = 0x10  # integers little-endian, ASCII (the float byte after it: IEEE)
DREP_BIG_ENDIAN = 0x00


class Layout:
    """A fixed-size record: named fields in wire order, compiled to ``struct.Struct`` in both byte orders."""

    __slots__ = ("name", "fields", "names", "defaults", "offset", "le", "be", "size", "_starts")

    def __init__(self, name: str, fields, offset: int = 0, order: str | None = None):
        self.name = name
        self.fields = tuple((f[0], f[1], f[2] if len(f) > 2 else (b"" if f[1].endswith("s") else 0)) for f in fields)
        self.names = tuple(f[0] for f in self.fields)
        self.defaults = {f[0]: f[2] for f in self.fields}
        self.offset = offset
        code = "".join(f[1] for f in self.fields)
        self.le = struct.Struct((order or "<") + code)
        self.be = struct.Struct((order or ">") + code)
        self.size = self.le.size
        starts, pos = {}, 0
        for fname, fcode, _ in self.fields:
            starts[fname] = pos
            pos += struct.calcsize("<" + fcode)
        self._starts = starts

    @property
    def end(self) -> int:
        """Offset of the first byte after the record (in its PDU or stub)."""
        return self.offset + self.size

    def struct(self, little_endian: bool = True) -> struct.Struct:
        return self.le if little_endian else self.be

    def offset_of(self, field_name: str) -> int:
        """Offset of a field in the PDU (or stub): the record's offset plus the field's place in it."""
        return self.offset + self._starts[field_name]

    def tail(self, first: str, name: str | None = None) -> "Layout":
        """The fields from ``first`` to the end, as a layout at their own offset (for a parser that has already
        read the bytes before them)."""
        i = self.names.index(first)
        return Layout(name or f"{self.name}.{first}", self.fields[i:], self.offset_of(first), self._order())

    def head(self, last: str, name: str | None = None) -> "Layout":
        """The fields up to and including ``last``, as a layout at the record's offset."""
        i = self.names.index(last)
        return Layout(name or f"{self.name} to {last}", self.fields[: i + 1], self.offset, self._order())

    def field(self, field_name: str) -> "Layout":
        """One field as a layout at its own offset."""
        i = self.names.index(field_name)
        return Layout(f"{self.name}.{field_name}", self.fields[i : i + 1], self.offset_of(field_name), self._order())

    def _order(self) -> str | None:
        return self.le.format[0] if self.le.format[0] == self.be.format[0] else None

    def pack(self, little_endian: bool = True, **values) -> bytes:
        """The record's bytes; fields not given take their defaults."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise TypeError(f"{self.name} has no field {', '.join(sorted(unknown))}")
        defaults = self.defaults
        return self.struct(little_endian).pack(*[values[n] if n in values else defaults[n] for n in self.names])

    def unpack(self, buf, offset: int | None = None, little_endian: bool = True) -> dict:
        """Fields by name, read at ``offset`` (default: the record's own offset)."""
        values = self.struct(little_endian).unpack_from(buf, self.offset if offset is None else offset)
        return dict(zip(self.names, values))

    def __repr__(self) -> str:
        return f"Layout({self.name}, {self.size} bytes at {self.offset})"


# ----------------------------------------------------------------------------------------------------------------
# DCE/RPC connection-oriented PDUs (C706 12.6, MS-RPCE 2.2.2)

COMMON_HEADER = Layout("common header", [
    ("rpc_vers", "B", 5),
    ("rpc_vers_minor", "B", 0),
    ("ptype", "B"),
    ("pfc_flags", "B", 0x03),  # PFC_FIRST_FRAG | PFC_LAST_FRAG
    ("drep_int_char", "B", DREP_LITTLE_ENDIAN),  # the 4-byte drep: integer order | character set,
    ("drep_float", "B", 0),  # float representation (0 IEEE, 1 VAX, 2 Cray, 3 IBM),
    ("drep_reserved", "H", 0),  # two reserved bytes, zero
    ("frag_length", "H"),
    ("auth_length", "H"),
    ("call_id", "I"),
])
# The per-PDU hot path reads the header in two unpacks: the bytes that do not depend on the drep (version, PTYPE,
# flags, drep) and then, in the drep's byte order, the lengths and call id.
HEADER_LEADING = COMMON_HEADER.head("drep_reserved", "common header up to the drep")
HEADER_LENGTHS = COMMON_HEADER.tail("frag_length", "common header lengths")

# PTYPE-specific fixed parts, right after the common header
REQUEST_HEADER = Layout("request", [("alloc_hint", "I"), ("p_cont_id", "H"), ("opnum", "H")], COMMON_HEADER.end)
RESPONSE_HEADER = Layout("response", [("alloc_hint", "I"), ("p_cont_id", "H"), ("cancel_count", "B"),
                                      ("reserved", "B")], COMMON_HEADER.end)
FAULT_HEADER = Layout("fault", [("alloc_hint", "I"), ("p_cont_id", "H"), ("cancel_count", "B"), ("reserved", "B"),
                                ("status", "I"), ("reserved2", "I")], COMMON_HEADER.end)
FAULT_STATUS = FAULT_HEADER.field("status")
# a request with PFC_OBJECT_UUID carries the object UUID between its header and the stub
OBJECT_UUID = Layout("object uuid", [("object", "16s")], REQUEST_HEADER.end)

BIND_HEADER = Layout("bind / alter_context", [("max_xmit_frag", "H", 5840), ("max_recv_frag", "H", 5840),
                                              ("assoc_group_id", "I"), ("n_context_elem", "B"), ("reserved", "B"),
                                              ("reserved2", "H")], COMMON_HEADER.end)
# p_cont_elem_t: the abstract syntax's version is one u32 = minor << 16 | major (so little-endian puts major first)
CONTEXT_ELEM = Layout("p_cont_elem_t", [("p_cont_id", "H"), ("n_transfer_syn", "B"), ("reserved", "B"),
                                        ("if_uuid", "16s"), ("if_version", "I")])
SYNTAX_ID = Layout("p_syntax_id_t", [("if_uuid", "16s"), ("if_version", "I")])

# bind_ack / alter_context_resp: then sec_addr (sec_addr_length bytes), padding to 4 in the PDU, the result list
BIND_ACK_HEADER = Layout("bind_ack / alter_context_resp", [("max_xmit_frag", "H", 5840), ("max_recv_frag", "H", 5840),
                                                           ("assoc_group_id", "I"), ("sec_addr_length", "H")],
                         COMMON_HEADER.end)
RESULT_LIST_HEADER = Layout("p_result_list_t", [("n_results", "B"), ("reserved", "B"), ("reserved2", "H")])
CONTEXT_RESULT = Layout("p_result_t", [("result", "H"), ("reason", "H"), ("transfer_uuid", "16s"),
                                       ("transfer_version", "I")])

BIND_NAK_HEADER = Layout("bind_nak", [("provider_reject_reason", "H")], COMMON_HEADER.end)
AUTH3_HEADER = Layout("auth3", [("pad", "I")], COMMON_HEADER.end)
RTS_HEADER = Layout("rts", [("flags", "H"), ("number_of_commands", "H")], COMMON_HEADER.end)
NO_FIXED_PART = Layout("no fixed part", [], COMMON_HEADER.end)  # shutdown, co_cancel, orphaned

# the auth verifier's sec_trailer (MS-RPCE 2.2.2.11), followed by auth_length bytes of auth_value
SEC_TRAILER = Layout("sec_trailer", [("auth_type", "B"), ("auth_level", "B"), ("auth_pad_length", "B"),
                                     ("auth_reserved", "B"), ("auth_context_id", "I")])

# ----------------------------------------------------------------------------------------------------------------
# NDR stubs: the fixed parts the decoders and the generator share

# NDR context handle (policy_handle): attributes u32 + UUID; the first [in]/[out] of most EMSMDB calls
CONTEXT_HANDLE = Layout("context handle", [("attributes", "I"), ("uuid", "16s")])
# EcRRegisterPushNotification (opnum 4): [in] CXH, iRpc, then the conformant rgbContext ... (docs/protocol.md §1.4)
REGISTER_PUSH_REQUEST_HEAD = Layout("EcRRegisterPushNotification request head",
                                    [("cxh", "20s"), ("rpc", "I")])
# [out] CXH, hNotification, return value: always 28 bytes (docs/protocol.md §1.5)
REGISTER_PUSH_RESPONSE = Layout("EcRRegisterPushNotification response",
                                [("cxh", "20s"), ("hnotification", "I"), ("status", "I")])
# the calls that answer only CXH + return value (EcDoDisconnect 1, EcDoAsyncConnectEx 14 gives ACXH + status)
HANDLE_AND_STATUS = Layout("context handle + return value", [("cxh", "20s"), ("status", "I")])
# pulFlagsOut, named as the event field it becomes
ASYNC_WAIT_RESPONSE = Layout("EcDoAsyncWaitEx response", [("async_flags", "I"), ("status", "I")])
DUMMY_RPC_RESPONSE = Layout("EcDummyRpc response", [("status", "I")])
# RPC_HEADER_EXT before each rgbIn/rgbOut payload (MS-OXCRPC 2.2.2.1): little-endian whatever the drep
RPC_HEADER_EXT = Layout("RPC_HEADER_EXT", [("version", "H"), ("flags", "H"), ("size", "H"), ("size_actual", "H")],
                        order="<")

# ept_map response (C706 appendix O): entry_handle (a 20-byte context handle), num_towers, then the towers
EPT_MAP_RESPONSE_HEAD = Layout("ept_map response head", [("entry_handle", "20s"), ("num_towers", "I")])

# Protocol towers (MS-RPCE 2.2.1.1.7): little-endian counts and lengths whatever the drep; the floor data is
# protocol-specific (a TCP/UDP port is big-endian, see epm.py).
TOWER_FLOOR_COUNT = Layout("tower floor count", [("floor_count", "H")], order="<")
FLOOR_PART_LENGTH = Layout("floor lhs/rhs length", [("length", "H")], order="<")
# left-hand side of an interface or transfer-syntax floor: protocol 0x0d, UUID, major version; the right-hand
# side holds the minor version (u16)
UUID_FLOOR_LHS = Layout("uuid floor lhs", [("protocol", "B", 0x0D), ("uuid", "16s"), ("version_major", "H")],
                        order="<")
FLOOR_MINOR_VERSION = Layout("uuid floor rhs", [("version_minor", "H")], order="<")
