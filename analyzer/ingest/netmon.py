"""Microsoft Network Monitor captures: 1.x (magic ``RTSS``) and 2.0-2.3 (magic ``GMBU``; NetMon 3.x and Message
Analyzer write 2.x files). Neither scapy nor dpkt reads them. Follows Wireshark's ``wiretap/netmon.c`` so frame
numbers, bytes and times match tshark.

Layout (all little-endian): a 128-byte file header (version, media type, capture start as a SYSTEMTIME, offset
and length of the *frame table*), the frame records, and the frame table: one u32 absolute offset per frame.
Frames are read in frame-table order, not file order; records need not be contiguous nor start at byte 128.
The table is read with numpy in one go and all record headers are gathered vectorised.

Record: 1.x ``ts_delta u32 ms, orig_len u16, incl_len u16``; 2.x ``ts_delta u64 µs, orig_len u32, incl_len u32``;
then the data; from 2.1 a trailer: media type u16 (2.1), + process index u32 (2.2), + UTC FILETIME u64 and a time
zone index u8 (2.3).

Media types become pcap LINKTYPE values: NetMon 0/1 Ethernet -> 1, 2 Token Ring -> 6, 3 FDDI -> 10, 7-9 raw IP ->
101, ``0xE000 | LT`` (converted pcap data) -> LT, 0xE080 802.11 -> 105. Types with no LINKTYPE equivalent get a
private number ``0x10000 | type`` (NetMon ATM, NetMon 802.11 with its metadata header, Message Analyzer WFP
captures, and the NetMon metadata records that Wireshark shows as frames: 0xFFE0 NetEvent/ETW, 0xFFFB network
info, 0xFFFF filter string); the dissector counts them as unknown link types. 0xFFFC payload header, 0xFFFD
network info and 0xFFFE DNS cache are metadata that Wireshark skips without giving them a frame number, and so
do we. A media type Wireshark rejects stops reading there, as in tshark.

**Time-zone rule.** NetMon 2.0-2.2 (and 1.x) store the capture start as a SYSTEMTIME in the capturing machine's
*local* time, with no zone; each frame is start + delta. The zone is not in the file, so we interpret the
SYSTEMTIME as **UTC**: times then equal tshark's when tshark runs with ``TZ=UTC`` (tshark uses ``mktime()`` in
the reader's own zone). For a capture taken in another zone, absolute times are off by that zone's UTC offset;
intervals between frames are exact. NetMon 2.3 stores a UTC FILETIME (100 ns since 1601) per frame, which we use
(as Wireshark does), so 2.3 times are exact whatever the zone.

Damage: frames are checked in frame-table order; the first record that lies outside the file, is longer than
256 KiB, or has an unsupported media type ends the capture with a warning naming its offset. When the frame
table itself is missing (the usual result of a truncated file: the table is written last) or unusable, the
records are read sequentially from byte 128 instead, with a warning.
"""

from __future__ import annotations

import calendar
import itertools
import struct

import numpy as np

from analyzer.ingest.model import CaptureError, CaptureInfo, FrameBatch
from analyzer.ingest.walk import MAX_RECORD, normalise_linktype, warn_damaged, warn_truncated, where

HEADER = 128
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000  # 100 ns ticks from 1601-01-01 to 1970-01-01
PRIVATE = 0x10000  # base for media types that have no pcap LINKTYPE

# NetMon header/per-frame media types 0..11 -> LINKTYPE (None: Wireshark rejects it)
_NETMON_MEDIA = {
    0: 1,  # NetMon 3.4 VPN captures use 0 for Ethernet
    1: 1,
    2: 6,  # Token Ring (LINKTYPE_IEEE802_5)
    3: 10,  # FDDI
    4: PRIVATE | 4,  # NDIS WAN, used for ATM with a 16-byte NetMon pseudo-header
    6: PRIVATE | 6,  # 802.11 with NetMon's metadata header
    7: 101,
    8: 101,
    9: 101,
}
LINKTYPE_NETMON_ATM = PRIVATE | 4
ATM_PSEUDO_HEADER = 16

_SKIPPED = (0xFFFC, 0xFFFD, 0xFFFE)  # metadata records without a frame number
_SPECIAL_FRAMES = (0xFFE0, 0xFFFB, 0xFFFF)
_MA_TYPES = {0xE080: 105, 0xE083: PRIVATE | 0xE083, 0xE084: PRIVATE | 0xE084, 0xE085: PRIVATE | 0xE085,
             0xE086: PRIVATE | 0xE086, 0xE087: PRIVATE | 0xE087, 0xE088: PRIVATE | 0xE088}
_SKIP = -1
_REJECT = -2


def media_to_linktype(media: int) -> int:
    """Per-frame media type -> LINKTYPE, or ``_SKIP`` (metadata, no frame) or ``_REJECT`` (tshark stops)."""
    if media in _SKIPPED:
        return _SKIP
    if 0xE080 <= media <= 0xE08A:
        return _MA_TYPES.get(media, _REJECT)
    if media & 0xF000 == 0xE000:
        return normalise_linktype(media & 0x0FFF)
    if media in _SPECIAL_FRAMES:
        return PRIVATE | media
    return _NETMON_MEDIA.get(media, _REJECT)


_HDR_1 = np.dtype([("ts", "<u4"), ("orig", "<u2"), ("incl", "<u2")])
_HDR_2 = np.dtype([("ts", "<u8"), ("orig", "<u4"), ("incl", "<u4")])


class NetmonReader:
    """Reads from ``mm`` (the whole file, mapped). For a streamed gzip file (analyzer.ingest.netmon_stream),
    ``mm`` is only the 128-byte header and ``size``/``table`` come from a first streaming pass."""

    def __init__(self, mm, info: CaptureInfo, size: int | None = None, table: np.ndarray | None = None):
        self.mm = mm
        self.info = info
        size = len(mm) if size is None else size
        self.size = size
        if size < HEADER:
            raise CaptureError(f"NetMon file header cut short ({size} of {HEADER} bytes): file truncated")
        (_magic, vmin, vmaj, network, year, month, _dow, day, hour, minute, sec, msec,
         ft_off, ft_len) = struct.unpack_from("<4sBBH8HII", mm, 0)
        if vmaj not in (1, 2):
            raise CaptureError(f"NetMon major version {vmaj} is not supported (only 1.x and 2.x)")
        self.major, self.minor = vmaj, vmin
        info.format = "netmon1" if vmaj == 1 else "netmon2"
        self.per_packet = vmaj == 2 and vmin >= 1
        self.header_linktype = _NETMON_MEDIA.get(network, _REJECT)
        if not self.per_packet and self.header_linktype == _REJECT:
            raise CaptureError(f"NetMon network type {network} is not supported")
        if not self.per_packet:
            pass
        elif vmin == 1:
            self.trailer = 2
        elif vmin == 2:
            self.trailer = 6
        else:
            self.trailer = 15
        if not self.per_packet:
            self.trailer = 0
        self.utc_per_frame = self.per_packet and vmin >= 3
        try:
            self.start = float(calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))) + msec / 1000.0
        except (ValueError, OverflowError):
            info.warnings.append(f"NetMon capture start time {year}-{month}-{day} {hour}:{minute}:{sec} is "
                                 "invalid; frame times count from 1970-01-01")
            self.start = 0.0
        self.header_size = 8 if vmaj == 1 else 16

        self.table = None
        if table is not None:
            self.table = table
        elif ft_len == 0 or ft_len % 4:
            info.warnings.append(f"NetMon frame table length {ft_len} is invalid; frames read in file order")
        elif ft_off < HEADER or ft_off + ft_len > size:
            info.truncated = True
            info.warnings.append(
                f"file truncated at {where(info, size)}: NetMon frame table ({ft_len} bytes at byte {ft_off}) "
                f"is missing; frames read in file order")
        else:
            # a view on the map (no copy): converted to int64 one batch-sized chunk at a time
            self.table = np.frombuffer(mm, dtype="<u4", count=ft_len // 4, offset=ft_off)

    def reset(self) -> None:
        pass

    # -- iteration ---------------------------------------------------------------------------------------------

    def batches(self, batch_size: int):
        """Yields (FrameBatch, progress offset). Batch offsets are absolute offsets into the mmap.

        The frame table is decoded one batch-sized chunk at a time, so memory does not grow with the number of
        frames (a batch can be a little shorter than ``batch_size`` where metadata records were skipped)."""
        number = 1
        for offs in self._offset_chunks(batch_size):
            cols, stopped = self._columns(offs)
            if cols is not None and len(cols[0]):
                data, caplen, origlen, time, linktype, rec_start = cols
                batch = FrameBatch(first_number=number, buf=self.mm, offset=data, caplen=caplen, origlen=origlen,
                                   time=time, linktype=linktype)
                number += len(batch)
                yield batch, int(rec_start[-1])
            if stopped:
                return

    def _offset_chunks(self, size: int):
        if self.table is not None:
            for s in range(0, len(self.table), size):
                yield self.table[s : s + size].astype(np.int64)
            return
        best: list[int] = []
        best_start = HEADER
        for start in (HEADER, 72, 64, 80, 88, 96, 104, 112, 120):
            chain = list(itertools.islice(self._chain(start), 16))
            if len(chain) > len(best):
                best, best_start = chain, start
        if not best:
            return
        it = self._chain(best_start)
        while chunk := list(itertools.islice(it, size)):
            yield np.array(chunk, dtype=np.int64)

    def _chain(self, p: int):
        """Record offsets from ``p`` on, in file order (no usable frame table), up to the first implausible
        record. Where the first record starts is not recorded anywhere but in the lost table: 128 is usual, but
        some writers start at 72 (e.g. the public NetMon 2.3 captures), so :meth:`_offset_chunks` tries each
        plausible start and keeps the one giving the longest chain. :meth:`_columns` then validates the records
        like table entries (a record cut by the end of the file is yielded, and reported there)."""
        mm, size = self.mm, len(self.mm)
        hs, trailer = self.header_size, self.trailer
        lengths = struct.Struct("<HH" if self.major == 1 else "<II").unpack_from
        len_at = 4 if self.major == 1 else 8
        while p + hs <= size:
            orig, incl = lengths(mm, p + len_at)
            if incl > MAX_RECORD or incl > orig or incl == 0:
                return
            end = p + hs + incl + trailer
            if self.per_packet and end <= size:
                (media,) = struct.unpack_from("<H", mm, p + hs + incl)
                if media_to_linktype(media) == _REJECT:
                    return
            yield p
            p = end

    def _columns(self, offs: np.ndarray, buf=None, buf_base: int = 0):
        """Vectorised header decoding and validation for the records at ``offs`` (frame-table order; absolute
        offsets). ``buf`` holds the file's bytes from offset ``buf_base`` on (default: the whole mapped file); the
        data offsets returned are positions in ``buf``."""
        info = self.info
        mm = self.mm if buf is None else buf
        size = self.size
        hs, trailer = self.header_size, self.trailer
        n = len(offs)
        if n == 0:
            return None, False
        # The first failing record (in table order) ends the capture, as in tshark.
        stop = n
        stop_why = None
        outside = np.flatnonzero(offs + hs > size)
        if outside.size:
            stop, stop_why = int(outside[0]), "header"
        arr = np.frombuffer(mm, dtype=np.uint8)
        offs = offs - buf_base  # positions in buf; offsets in warnings add buf_base back
        size = size - buf_base
        o = offs[:stop]
        idx = o[:, None] + np.arange(hs, dtype=np.int64)
        hdr = arr[idx].view(_HDR_1 if self.major == 1 else _HDR_2)[:, 0]
        incl = hdr["incl"].astype(np.int64)
        orig = hdr["orig"].astype(np.int64)
        absurd = np.flatnonzero(incl > MAX_RECORD)
        if absurd.size and int(absurd[0]) < stop:
            stop, stop_why = int(absurd[0]), "absurd"
        if not self.per_packet and self.header_linktype == LINKTYPE_NETMON_ATM:
            short = np.flatnonzero(incl < ATM_PSEUDO_HEADER)  # Wireshark: too small for the ATM pseudo-header
            if short.size and int(short[0]) < stop:
                stop, stop_why = int(short[0]), "atm"
        rec_end = o + hs + incl + trailer
        cut = np.flatnonzero(rec_end > size)
        if cut.size and int(cut[0]) < stop:
            stop, stop_why = int(cut[0]), "cut"
        o, incl, orig, hdr, rec_end = o[:stop], incl[:stop], orig[:stop], hdr[:stop], rec_end[:stop]

        if self.per_packet:
            tpos = o + hs + incl
            media = (arr[tpos].astype(np.int64) | (arr[tpos + 1].astype(np.int64) << 8))
            linktype = np.empty(len(o), dtype=np.int64)
            for m in np.unique(media).tolist():
                linktype[media == m] = media_to_linktype(m)
            rejected = np.flatnonzero(linktype == _REJECT)
            if rejected.size:
                j = int(rejected[0])
                warn_damaged(info, int(o[j]) + buf_base, f"NetMon media type 0x{int(media[j]):04X} is not supported")
                stop, stop_why = j, "reported"
                o, incl, orig, hdr, rec_end, linktype, tpos = (o[:j], incl[:j], orig[:j], hdr[:j], rec_end[:j],
                                                             linktype[:j], tpos[:j])
        else:
            linktype = np.full(len(o), self.header_linktype, dtype=np.int64)

        if stop_why == "header":
            warn_truncated(info, int(offs[stop]) + buf_base, hs, max(0, size - int(offs[stop])))
        elif stop_why == "absurd":
            j = stop
            warn_damaged(info, int(offs[j]) + buf_base, f"record length {int(self._incl_at(int(offs[j]), mm))} bytes exceeds "
                         f"the maximum of {MAX_RECORD}")
        elif stop_why == "atm":
            warn_damaged(info, int(offs[stop]) + buf_base, f"ATM record of {int(self._incl_at(int(offs[stop]), mm))} bytes is "
                         f"shorter than its {ATM_PSEUDO_HEADER}-byte NetMon ATM header")
        elif stop_why == "cut":
            j = stop
            start = int(offs[j])
            wanted = hs + int(self._incl_at(start, mm)) + trailer
            warn_truncated(info, start + buf_base, wanted, size - start)

        if self.major == 1:
            time = self.start + hdr["ts"].astype(np.float64) / 1000.0
        else:
            # Wireshark: "multiply the unsigned µs count by 10, then read it as a signed 100 ns count".
            delta = (hdr["ts"].astype(np.uint64) * np.uint64(10)).view(np.int64)
            time = self.start + delta.astype(np.float64) / 1e7
        if self.utc_per_frame and len(o):
            ft = np.zeros(len(o), dtype=np.uint64)
            ft_pos = tpos + 6
            for b in range(8):
                ft |= arr[ft_pos + b].astype(np.uint64) << np.uint64(8 * b)
            ticks = ft.astype(np.int64) - FILETIME_UNIX_EPOCH
            time = (ticks // 10_000_000).astype(np.float64) + (ticks % 10_000_000).astype(np.float64) / 1e7

        data = o + hs
        if not self.per_packet and self.header_linktype == LINKTYPE_NETMON_ATM:
            # Wireshark turns the 16-byte NetMon ATM header into a pseudo-header: not part of the frame.
            data = data + ATM_PSEUDO_HEADER
            incl = incl - ATM_PSEUDO_HEADER
            orig = orig - ATM_PSEUDO_HEADER
        keep = linktype != _SKIP
        del arr, idx
        cols = (data[keep], incl[keep], orig[keep], time[keep], linktype[keep].astype(np.int32), o[keep])
        return cols, stop_why is not None

    def _incl_at(self, start: int, buf=None) -> int:
        buf = self.mm if buf is None else buf
        if self.major == 1:
            return struct.unpack_from("<H", buf, start + 6)[0]
        return struct.unpack_from("<I", buf, start + 12)[0]
