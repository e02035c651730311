"""libpcap files: 24-byte file header, then records of a 16-byte header + captured bytes.

Both byte orders, microsecond and nanosecond magics, and Kuznetzov's "modified" pcap (24-byte record headers).
Records are walked in place on the mmap (or gzip window); nothing is copied.

Speed: the record chain is inherently sequential (each header gives the next offset), so numpy cannot walk it.
The walk is compiled (``_recordwalk.walk_pcap``, analyzer/ingest/_recordwalk.c): a C loop over the mmap that
writes offsets, lengths and timestamps straight into the batch's columns, with the GIL released. Measured
2026-12-01 on benchmarks/data/big.pcap (1,000,000 records, 920 MB, page cache warm; 2 shared cores at load
1.7-2.5): the walk alone 0.08-0.10 s of CPU (~80-100 ns per record: the cache and TLB misses on records spread
over 920 MB; a software prefetch 4 KiB ahead gains ~10 %), the whole ``Capture.batches()`` iteration 0.09-0.11 s,
against 0.48-0.51 s for the Python walk below in the same process (one ``unpack_from`` and one list append per
record, then a numpy gather of the headers). The Python walk stays as the fallback when the extension is not
built and as the reference the tests compare the compiled walk with (tests/test_speed_paths.py).

The compiled walk's columns are ``array.array`` objects, not numpy arrays: with the compiled pre-filter a pcap is
then analysed without importing numpy, which alone costs ~0.1 s of start-up (issue 14). The Python walk imports
numpy when it runs and gives numpy columns (:class:`FrameBatch` takes either).
"""

from __future__ import annotations

import struct
from array import array
from sys import getrefcount

from analyzer.ingest.model import CaptureError, CaptureInfo, FrameBatch
from analyzer.ingest.sniff import PCAP_MAGICS
from analyzer.ingest.walk import (
    DONE,
    MAX_RECORD,
    MORE,
    NEED_DATA,
    STOP,
    gather_words,
    normalise_linktype,
    warn_damaged,
    warn_truncated,
)

try:  # the record walk compiled (setup.py builds it); without it the Python walk below, same results
    from analyzer.ingest import _recordwalk
except ImportError:  # pragma: no cover - exercised only where the build failed (a warning says so)
    _recordwalk = None

FILE_HEADER = 24
_FULL, _LEFTOVER, _ABSURD = 0, 1, 2  # _recordwalk.walk_pcap outcomes
_ZERO_Q, _ZERO_D = array("q", (0,)), array("d", (0.0,))  # the compiled walk's int64 and float64 columns
_SPARE_SETS = 4  # column sets the compiled walk keeps for reuse (the consumer holds one or two batches at a time)


def _references(columns) -> list[int]:
    """The reference count of each column, counted the same way for the spare sets and for _FREE."""
    return [getrefcount(column) for column in columns]


# What _references gives for an array that only its tuple refers to. Computed, not assumed: the interpreter's own
# references while counting (the loop variable, the argument) are an implementation detail.
_FREE = _references((array("q"),))[0]


class PcapWalker:
    format = "pcap"
    compiled = True  # use the compiled walk when it is built (tests set False to compare with the Python one)

    @property
    def compiled_walk(self) -> bool:
        """The walk runs in C without the GIL (the reader then reads ahead in a thread)."""
        return _recordwalk is not None and self.compiled

    def __init__(self, head: bytes, info: CaptureInfo):
        if len(head) < FILE_HEADER:
            raise CaptureError(f"pcap file header cut short ({len(head)} of {FILE_HEADER} bytes): file truncated")
        magic_le = int.from_bytes(head[:4], "little")
        if magic_le in PCAP_MAGICS:
            order = "<"
            magic = magic_le
        else:
            order = ">"
            magic = int.from_bytes(head[:4], "big")
        self.info = info
        self.order = order
        self.units = PCAP_MAGICS[magic]
        self.record_header = 24 if magic == 0xA1B2CD34 else 16
        _vmaj, _vmin, _zone, _sigfigs, snaplen, linktype = struct.unpack_from(order + "HHiIII", head, 4)
        self.snaplen = snaplen
        self.linktype = normalise_linktype(linktype)
        # "Absurd" record: over Wireshark's own limit, or far over the file's declared snapshot length. The
        # 64 KiB floor keeps files with a small but wrong snaplen readable (tshark ignores snaplen here).
        self.max_caplen = MAX_RECORD
        if snaplen:
            self.max_caplen = min(MAX_RECORD, max(2 * snaplen, 65_536))
        self.words = order + "u4"
        self._spare: list[tuple[array, array, array, array]] = []  # the compiled walk's column sets (_columns)
        self._length_at = struct.Struct(order + "I").unpack_from

    def reset(self) -> None:
        """Forget walk state before a new iteration (a pcap walk has none)."""

    def start(self) -> int:
        """Offset of the first record."""
        return FILE_HEADER

    def next_batch(self, buf, pos: int, final: bool, base: int, limit: int, first_number: int):
        """Up to ``limit`` complete records from ``buf[pos:]`` -> (FrameBatch or None, new pos, status).

        ``buf`` holds bytes ``[base, base + len(buf))`` of the file; ``final`` says no more bytes follow it.
        """
        if _recordwalk is None or not self.compiled:
            return self._next_batch_python(buf, pos, final, base, limit, first_number)
        end = len(buf)
        # No more records than headers fit in the rest of the buffer: bounds the arrays whatever ``limit`` is.
        room = min(limit, max(1, (end - pos) // self.record_header + 1))
        offset, caplen, origlen, time = self._columns(room)
        count, p, outcome, at, value = _recordwalk.walk_pcap(
            buf, pos, room, self.record_header, self.order == ">", self.max_caplen, self.units,
            offset, caplen, origlen, time)
        batch = None
        if count:
            if count < len(offset):  # a short batch: copies (slices), so the whole arrays stay free for reuse
                offset, caplen, origlen, time = offset[:count], caplen[:count], origlen[:count], time[:count]
            batch = FrameBatch(first_number=first_number, buf=buf, offset=offset, caplen=caplen, origlen=origlen,
                               time=time, linktype=array("i", (self.linktype,)) * count)
        if outcome == _FULL:  # (``room`` < ``limit`` never ends so: ``room`` records do not fit in the rest)
            return batch, p, MORE
        if outcome == _ABSURD:
            warn_damaged(self.info, base + at, f"record length {value} bytes exceeds the maximum of {self.max_caplen}")
            return batch, end, STOP
        return self._ending(batch, buf, at, value or self.record_header, final, base)

    def _columns(self, room: int) -> tuple[array, array, array, array]:
        """array.array columns (offset, caplen, origlen: int64; time: float64) of at least ``room`` items for the
        compiled walk to fill: a set handed out with an earlier batch once nothing but this walker refers to it
        (its batch, and any column or view of it, is gone), else new arrays.

        array.array has no uninitialised allocation: new columns are zero-filled first (repeating a one-item
        array, 12 us for 65,536 items; ``array('q', bytes(...))`` took 280 us), 2.3 MB of writes per 65,536-frame
        batch that numpy's ``np.empty`` did not make: +4 ms per million frames of big.pcap (paired runs). Reused
        columns are neither filled nor new to the cache: -7 ms against numpy's fresh arrays (60 paired runs).
        Nothing can observe the reuse: an array is taken again only when no reference to it exists outside this
        walker (a numpy or memoryview view holds one too)."""
        for columns in self._spare:
            if len(columns[0]) >= room and _references(columns) == [_FREE] * 4:
                return columns
        columns = (_ZERO_Q * room, _ZERO_Q * room, _ZERO_Q * room, _ZERO_D * room)
        self._spare.append(columns)
        if len(self._spare) > _SPARE_SETS:
            del self._spare[0]
        return columns

    def _ending(self, batch, buf, leftover: int, wanted: int, final: bool, base: int):
        """Status once the walk met bytes at ``leftover`` that do not form a complete record."""
        end = len(buf)
        if leftover >= end:
            return batch, end, DONE if final else NEED_DATA
        if not final:
            return batch, leftover, NEED_DATA
        warn_truncated(self.info, base + leftover, wanted, end - leftover)
        return batch, end, STOP

    def _next_batch_python(self, buf, pos: int, final: bool, base: int, limit: int, first_number: int):
        """:meth:`next_batch` in Python and numpy: the reference for the compiled walk, and the fallback when
        the extension is not built."""
        import numpy as np  # only this walk needs it (see the module doc)

        end = len(buf)
        length_at = self._length_at
        hs = self.record_header
        offsets: list[int] = []
        append = offsets.append
        p = pos
        try:
            for _ in range(limit):
                (n,) = length_at(buf, p + 8)
                append(p)
                p += hs + n
            full = True
        except struct.error:  # a read beyond the buffer: the end of the window
            full = False

        # ``leftover``: where bytes start that did not form a complete record (None: batch simply full).
        leftover = None
        wanted = hs
        if offsets and offsets[-1] + hs > end:  # last header cut by the window end
            leftover = offsets.pop()
        elif not full:
            leftover = p  # 0..11 bytes of a header, or exactly the end

        batch = None
        if offsets:
            o = np.array(offsets, dtype=np.int64)
            words = gather_words(np.frombuffer(buf, dtype=np.uint8), o, hs, self.words)
            ts_sec, ts_frac, caplen, origlen = words[:, 0], words[:, 1], words[:, 2], words[:, 3]
            absurd = np.flatnonzero(caplen > self.max_caplen)
            if absurd.size:
                k = int(absurd[0])
                warn_damaged(self.info, base + int(o[k]),
                             f"record length {int(caplen[k])} bytes exceeds the maximum of {self.max_caplen}")
                batch = self._batch(buf, first_number, o[:k], ts_sec[:k], ts_frac[:k], caplen[:k], origlen[:k])
                return batch, end, STOP
            last = int(o[-1])
            last_end = last + hs + int(caplen[-1])
            if last_end > end:  # last record's data cut by the window end
                leftover, wanted = last, last_end - last
                o, ts_sec, ts_frac, caplen, origlen = o[:-1], ts_sec[:-1], ts_frac[:-1], caplen[:-1], origlen[:-1]
            if len(o):
                batch = self._batch(buf, first_number, o, ts_sec, ts_frac, caplen, origlen)

        if leftover is None:
            return batch, p, MORE
        if leftover >= end:
            return batch, end, DONE if final else NEED_DATA
        if not final:
            return batch, leftover, NEED_DATA
        if wanted == hs and end - leftover >= 12:
            wanted = hs + length_at(buf, leftover + 8)[0]
        warn_truncated(self.info, base + leftover, wanted, end - leftover)
        return batch, end, STOP

    def _batch(self, buf, first_number, o, ts_sec, ts_frac, caplen, origlen) -> FrameBatch:
        import numpy as np

        return FrameBatch(
            first_number=first_number,
            buf=buf,
            offset=o + self.record_header,
            caplen=caplen.astype(np.int64),
            origlen=origlen.astype(np.int64),
            time=ts_sec.astype(np.float64) + ts_frac.astype(np.float64) / self.units,
            linktype=np.full(len(o), self.linktype, dtype=np.int32),
        )
