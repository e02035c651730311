# SPDX-License-Identifier: GPL-2.0-or-later
"""Capture file writers (by hand: fixed headers, no clocks)."""

from __future__ import annotations

import gzip
import io
import struct


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
