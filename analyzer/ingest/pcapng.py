"""pcapng files: a sequence of blocks ``type u32, total_length u32, body, total_length u32``.

Handled as Wireshark does:

* **Section Header Block** (0x0A0D0D0A): sets the byte order of its section (byte-order magic 0x1A2B3C4D) and
  starts a new interface table; several sections may follow each other in one file.
* **Interface Description Block** (1): link type, snaplen, ``if_tsresol`` (option 9; power of 10, or of 2 when
  bit 7 is set; default microseconds) and ``if_tsoffset`` (option 14, seconds added to every timestamp).
  Interfaces in one file may have different link types; each frame carries its interface's.
* **Enhanced Packet Block** (6), **Simple Packet Block** (3; interface 0), **Obsolete Packet Block** (2) are
  frames, numbered in file order.
* tshark 4.0 also gives a frame number to **custom blocks** (0x0BAD, 0x40000BAD; data = the bytes after the
  Private Enterprise Number) and **systemd journal export blocks** (9), so they are frames here too, with the
  private link types :data:`LINKTYPE_PCAPNG_CUSTOM` / :data:`LINKTYPE_SYSTEMD_JOURNAL` that the dissector counts
  as unknown. Frame numbers then match tshark's.
* Frames without a timestamp (SPB, custom, journal; tshark shows none) repeat the previous frame's time (0.0 at
  the very start), so times stay ordered and durations meaningful.
* Everything else (name resolution, statistics, decryption secrets, unknown blocks) is skipped by its length.

Damage: a block length that is not a multiple of 4, below the minimum, or absurdly large (over 16 MiB), a
packet longer than its block, a reference to an undeclared interface: a warning naming the byte offset, and
reading stops there, as tshark stops. A block cut by the end of the file is reported as truncation.
"""

from __future__ import annotations

import struct

import numpy as np

from analyzer.ingest.model import CaptureError, CaptureInfo, FrameBatch
from analyzer.ingest.sniff import PCAPNG_BOM_BE, PCAPNG_BOM_LE
from analyzer.ingest.walk import (
    DONE,
    MORE,
    NEED_DATA,
    STOP,
    gather_words,
    normalise_linktype,
    warn_damaged,
    warn_truncated,
)

try:  # the EPB run compiled (setup.py builds it); without it the Python run below, same results
    from analyzer.ingest import _recordwalk
except ImportError:  # pragma: no cover - exercised only where the build failed (a warning says so)
    _recordwalk = None

SHB = 0x0A0D0D0A
IDB = 1
OPB = 2
SPB = 3
EPB = 6
JOURNAL = 9
CUSTOM = 0x0BAD
CUSTOM_NOCOPY = 0x40000BAD
FRAME_BLOCKS = (EPB, SPB, OPB, JOURNAL, CUSTOM, CUSTOM_NOCOPY)
LINKTYPE_PCAPNG_CUSTOM = 0x20BAD  # private: not a pcap LINKTYPE
LINKTYPE_SYSTEMD_JOURNAL = 0x20009  # private: not a pcap LINKTYPE
_KIND = {EPB: 0, SPB: 1, OPB: 2, JOURNAL: 3, CUSTOM: 4, CUSTOM_NOCOPY: 4}
MAX_BLOCK = 16 * 1024 * 1024  # Wireshark's limit on a block; anything larger is corruption

OPT_TSRESOL = 9
OPT_TSOFFSET = 14


class _Interface:
    __slots__ = ("linktype", "snaplen", "units", "tsoffset")

    def __init__(self, linktype: int, snaplen: int, units: int, tsoffset: int):
        self.linktype = linktype
        self.snaplen = snaplen
        self.units = units  # timestamp units per second
        self.tsoffset = tsoffset


def _merge_runs(runs, packets: list[int], kinds: list[int]):
    """Block offsets, kinds and EPB header fields (6 int64 per row, see ``_recordwalk.epb_run``; rows not from a
    compiled run: zeros, and ``known`` False) in file order, from the compiled EPB runs and the blocks the general
    loop added."""
    o_parts, k_parts, f_parts, known_parts, done = [], [], [], [], 0

    def general(lo, hi):
        o_parts.append(np.array(packets[lo:hi], dtype=np.int64))
        k_parts.append(np.array(kinds[lo:hi], dtype=np.int8))
        f_parts.append(np.zeros((hi - lo, 6), dtype=np.int64))
        known_parts.append(np.zeros(hi - lo, dtype=bool))

    for at, offsets, fields in runs:
        if at > done:
            general(done, at)
            done = at
        o_parts.append(offsets)
        k_parts.append(np.zeros(len(offsets), dtype=np.int8))
        f_parts.append(fields)
        known_parts.append(np.ones(len(offsets), dtype=bool))
    if done < len(packets):
        general(done, len(packets))
    if len(o_parts) == 1:
        return o_parts[0], k_parts[0], f_parts[0], known_parts[0]
    return np.concatenate(o_parts), np.concatenate(k_parts), np.concatenate(f_parts), np.concatenate(known_parts)


class PcapngWalker:
    format = "pcapng"
    compiled = True  # use the compiled EPB run when it is built (tests set False to compare with the Python one)

    @property
    def compiled_walk(self) -> bool:
        """The walk runs in C without the GIL (the reader then reads ahead in a thread)."""
        return _recordwalk is not None and self.compiled

    def __init__(self, head: bytes, info: CaptureInfo):
        if len(head) < 28:
            raise CaptureError(f"pcapng section header cut short ({len(head)} bytes): file truncated")
        if head[8:12] not in (PCAPNG_BOM_LE, PCAPNG_BOM_BE):
            raise CaptureError("pcapng section header without a valid byte-order magic: not a capture file "
                               "(pcap, pcapng, NetMon)")
        self.info = info
        self.reset()

    def reset(self) -> None:
        self.order = "<"
        self.interfaces: list[_Interface] = []
        self._last_time = 0.0
        self._set_order("<")

    def start(self) -> int:
        return 0

    def _set_order(self, order: str) -> None:
        self.order = order
        self._block_header = struct.Struct(order + "II").unpack_from
        self.words = order + "u4"

    # -- walking -----------------------------------------------------------------------------------------------

    def next_batch(self, buf, pos: int, final: bool, base: int, limit: int, first_number: int):
        """Up to ``limit`` packets from the complete blocks in ``buf[pos:]`` -> (batch or None, pos, status).

        A batch never spans a Section Header Block, so every frame of a batch is read with one interface table.
        """
        end = len(buf)
        block_header = self._block_header
        packets: list[int] = []  # block offsets of packet blocks
        kinds: list[int] = []  # their block types
        add_packet, add_kind = packets.append, kinds.append
        runs: list = []  # compiled EPB runs: (index in ``packets`` they go before, offsets, header fields)
        in_runs = 0
        compiled = _recordwalk is not None and self.compiled
        p = pos
        status = MORE
        while True:
            # Fast run over consecutive Enhanced Packet Blocks (nearly every block of a capture). Anything else
            # (another block type, a bad or cut length, the end of the buffer) is left to the general checks
            # below, from the same ``p``. Compiled: offsets straight into an array; in Python: one unpack and two
            # appends per block, like the Python pcap walk (measured on a 200,000-frame pcapng, editcap of
            # benchmarks' mid.pcap: 0.19 -> 0.13 s for the reader against the general loop alone).
            room = limit - len(packets) - in_runs
            if compiled:
                if room > 0:
                    size = min(room, (end - p) // 32 + 1)
                    run, fields = np.empty(size, dtype=np.int64), np.empty((size, 6), dtype=np.int64)
                    count, p = _recordwalk.epb_run(buf, p, size, self.order == ">", MAX_BLOCK, run, fields)
                    if count:
                        runs.append((len(packets), run[:count], fields[:count]))
                        in_runs += count
            else:
                try:
                    for _ in range(room):
                        btype, blen = block_header(buf, p)
                        if btype != EPB or blen < 12 or blen & 3 or blen > MAX_BLOCK or p + blen > end:
                            break
                        add_packet(p)
                        add_kind(0)
                        p += blen
                except struct.error:
                    pass
            if len(packets) + in_runs >= limit:
                break
            if p + 12 > end:
                status = self._tail(buf, p, end, final, base)
                if status == STOP:
                    p = end
                break
            btype, blen = block_header(buf, p)
            if btype == SHB:
                if packets or in_runs:
                    break  # finish this batch with the current section's interfaces
                bom = bytes(buf[p + 8 : p + 12])
                if bom == PCAPNG_BOM_LE:
                    self._set_order("<")
                elif bom == PCAPNG_BOM_BE:
                    self._set_order(">")
                else:
                    warn_damaged(self.info, base + p, "section header block without a byte-order magic")
                    status, p = STOP, end
                    break
                block_header = self._block_header
                btype, blen = block_header(buf, p)
                self.interfaces = []
            if blen < 12 or blen & 3 or blen > MAX_BLOCK:
                warn_damaged(self.info, base + p, f"block length {blen} is invalid")
                status, p = STOP, end
                break
            if p + blen > end:
                if final:
                    warn_truncated(self.info, base + p, blen, end - p)
                    status, p = STOP, end
                else:
                    status = NEED_DATA
                break
            if btype == EPB:
                add_packet(p)
                add_kind(0)
            elif btype in _KIND:
                add_packet(p)
                add_kind(_KIND[btype])
            elif btype == IDB:
                if not self._read_idb(buf, p, blen, base):
                    status, p = STOP, end
                    break
            p += blen

        batch = None
        parsed = None
        if runs:
            packets, kinds, *parsed = _merge_runs(runs, packets, kinds)
        if len(packets):
            batch, bad_at = self._build(buf, packets, kinds, base, first_number, parsed)
            if bad_at is not None:
                return batch, end, STOP
        if status == MORE and p >= end:
            status = DONE if final else NEED_DATA
        return batch, p, status

    def _tail(self, buf, p: int, end: int, final: bool, base: int) -> str:
        if p >= end:
            return DONE if final else NEED_DATA
        if not final:
            return NEED_DATA
        wanted = 12
        if end - p >= 8:
            wanted = max(12, self._block_header(buf, p)[1])
        warn_truncated(self.info, base + p, wanted, end - p)
        return STOP

    def _read_idb(self, buf, p: int, blen: int, base: int) -> bool:
        if blen < 20:
            warn_damaged(self.info, base + p, f"interface description block of {blen} bytes is too short")
            return False
        order = self.order
        linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, p + 8)
        units, tsoffset = 1_000_000, 0
        q, stop = p + 16, p + blen - 4
        while q + 4 <= stop:
            code, length = struct.unpack_from(order + "HH", buf, q)
            if code == 0:
                break
            value = q + 4
            if value + length > stop:
                break  # option runs past the block: ignore the rest of the options, as Wireshark does
            if code == OPT_TSRESOL and length >= 1:
                v = buf[value]
                exp = v & 0x7F
                if v & 0x80:
                    units = 1 << exp if exp <= 62 else 1_000_000
                else:
                    units = 10**exp if exp <= 18 else 1_000_000
            elif code == OPT_TSOFFSET and length >= 8:
                (tsoffset,) = struct.unpack_from(order + "q", buf, value)
            q = value + ((length + 3) & ~3)
        self.interfaces.append(_Interface(normalise_linktype(linktype), snaplen, units, tsoffset))
        return True

    # -- turning block offsets into columns --------------------------------------------------------------------

    def _build(self, buf, packets, kinds, base, first_number, parsed=None):
        """Columns for the packet blocks at ``packets``. Returns (batch, offset of a damaged block or None).

        ``parsed``: (fields, known) from the compiled EPB runs: the header words of the EPB rows where ``known``
        is set, so that only the other EPB rows are gathered here."""
        n = len(packets)
        o = np.array(packets, dtype=np.int64)
        k = np.array(kinds, dtype=np.int8)
        arr = np.frombuffer(buf, dtype=np.uint8)
        iface = np.zeros(n, dtype=np.int64)
        caplen = np.zeros(n, dtype=np.int64)
        origlen = np.zeros(n, dtype=np.int64)
        ts = np.zeros(n, dtype=np.uint64)
        data = np.zeros(n, dtype=np.int64)
        blen = np.zeros(n, dtype=np.int64)

        # A packet block shorter than its fixed header (28 bytes) at the very end of the buffer: its header cannot
        # be read (elsewhere the next block's bytes are read as its fields and the length check below fails it)
        cut = np.zeros(n, dtype=bool)
        epb = np.flatnonzero(k == 0)
        if epb.size and int(o[epb[-1]]) + 28 > len(arr):
            fits = o[epb] + 28 <= len(arr)
            for i in epb[~fits].tolist():
                cut[i] = True
                (blen[i],) = struct.unpack_from(self.order + "I", buf, int(o[i]) + 4)
            epb = epb[fits]
        if parsed is not None:
            fields, known = parsed
            rows = slice(None) if known.all() else np.flatnonzero(known)  # (a slice: no copies, the usual case)
            f = fields[rows]
            blen[rows], iface[rows], caplen[rows], origlen[rows] = f[:, 0], f[:, 1], f[:, 4], f[:, 5]
            ts[rows] = (f[:, 2].astype(np.uint64) << np.uint64(32)) | f[:, 3].astype(np.uint64)
            data[rows] = o[rows] + 28
            epb = epb[~known[epb]]
        if epb.size:
            # EPB: type, length, interface, ts high, ts low, caplen, origlen, data
            w = gather_words(arr, o[epb], 28, self.words).astype(np.int64)
            blen[epb], iface[epb], caplen[epb], origlen[epb] = w[:, 1], w[:, 2], w[:, 5], w[:, 6]
            ts[epb] = (w[:, 3].astype(np.uint64) << np.uint64(32)) | w[:, 4].astype(np.uint64)
            data[epb] = o[epb] + 28
        # Per-block header size, for "packet longer than its block"; -1 interface: needs none.
        header = np.full(n, 32, dtype=np.int64)
        others = np.flatnonzero(k != 0)
        if others.size:
            order = self.order
            snap0 = self.interfaces[0].snaplen if self.interfaces else 0
            for i in others.tolist():
                p = int(packets[i])
                kind = int(kinds[i])
                if kind == 1:  # SPB: origlen, data; the captured part is what fits in the block and snaplen
                    bl, orig = struct.unpack_from(order + "4xII", buf, p)
                    cap = min(orig, bl - 16)
                    if snap0:
                        cap = min(cap, snap0)
                    blen[i], iface[i], caplen[i], origlen[i], data[i], header[i] = bl, 0, cap, orig, p + 12, 16
                elif kind == 2 and p + 28 > len(arr):
                    cut[i] = True
                    (blen[i],) = struct.unpack_from(order + "I", buf, p + 4)
                elif kind == 2:  # OPB: interface u16, drops u16, ts high, ts low, caplen, origlen, data
                    bl, ifc, _drops, hi, lo, cap, orig = struct.unpack_from(order + "4xIHHIIII", buf, p)
                    blen[i], iface[i], caplen[i], origlen[i], data[i] = bl, ifc, cap, orig, p + 28
                    ts[i] = (hi << 32) | lo
                else:  # journal (whole body) or custom block (body after the 4-byte enterprise number)
                    (bl,) = struct.unpack_from(order + "4xI", buf, p)
                    skip = 12 if kind == 4 else 8
                    cap = bl - 4 - skip
                    blen[i], iface[i], caplen[i], origlen[i], data[i], header[i] = bl, -1, cap, cap, p + skip, 12

        # Validation, in file order: the first bad block ends the batch (and the walk).
        bad = (caplen > blen - header) | (iface >= len(self.interfaces)) | (caplen < 0) | cut
        bad_at = None
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            if cut[j]:
                what = f"packet block of {int(blen[j])} bytes is shorter than its header"
            elif int(iface[j]) >= len(self.interfaces):
                what = f"packet on interface {int(iface[j])}, but the section declares {len(self.interfaces)}"
            else:
                what = f"packet length {int(caplen[j])} exceeds its block of {int(blen[j])} bytes"
            bad_at = int(packets[j])
            warn_damaged(self.info, base + bad_at, what)
            n = j
            iface, caplen, origlen, ts, data = iface[:j], caplen[:j], origlen[:j], ts[:j], data[:j]
            k = k[:j]
        if n == 0:
            return None, bad_at

        time = np.empty(n, dtype=np.float64)
        linktype = np.empty(n, dtype=np.int32)
        linktype[:] = -1
        for idx, itf in enumerate(self.interfaces):
            sel = iface == idx
            if not sel.any():
                continue
            t = ts[sel]
            units = np.uint64(itf.units)
            # Whole seconds and the fraction separately, so nanosecond stamps keep their precision.
            time[sel] = (t // units).astype(np.float64) + (t % units).astype(np.float64) / itf.units + itf.tsoffset
            linktype[sel] = itf.linktype
        untimed = np.flatnonzero((k == 1) | (k >= 3))
        if untimed.size:
            for i in untimed.tolist():
                time[i] = time[i - 1] if i else self._last_time
            linktype[k == 3] = LINKTYPE_SYSTEMD_JOURNAL
            linktype[k == 4] = LINKTYPE_PCAPNG_CUSTOM
        self._last_time = float(time[-1])
        batch = FrameBatch(
            first_number=first_number,
            buf=buf,
            offset=data,
            caplen=caplen,
            origlen=origlen,
            time=time,
            linktype=linktype,
        )
        return batch, bad_at
