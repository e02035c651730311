# SPDX-License-Identifier: GPL-2.0-or-later
"""NDR20 little-endian writer and the small NDR values the stubs share (SOCKADDR, context handles)."""

from __future__ import annotations

import ipaddress
import struct


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
