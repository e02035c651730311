"""``open_capture(path) -> Capture``: sniff the format, then stream FrameBatch objects in constant memory.

How bytes reach the format walkers:

* **Uncompressed files** are mmap'ed read-only. The walker works on the mmap in place; batch offsets are absolute
  file offsets and nothing is copied, so memory stays flat whatever the file size (mapped file pages are
  page cache, not process memory).
* **gzip (pcap, pcapng)** is decompressed in 1 MiB windows. The incomplete record at the end of a window is
  carried over in front of the next one; batch offsets are then offsets into that window's bytes object.
* **gzip (NetMon)** cannot be walked in one pass: the frame table that says where frames are sits at the *end*
  of the file. When the table lists the records in file order (the usual case) the file is read in two
  streaming passes, the first keeping only the header and the table (:mod:`analyzer.ingest.netmon_stream`), so
  no decompressed copy is made. Otherwise (table missing, cut or out of order) its decompressed bytes are spooled to an anonymous temporary file on disk (streaming, 1 MiB at a
  time) and that file is mmap'ed, so memory stays constant there too; the disk holds one decompressed copy
  until ``close()``. The spool lives only in the operator's temporary directory and is bounded by the
  decompression limits and the free space there (:mod:`analyzer.ingest.limits`).
* Every gzip stream is bounded: decompressed size and compression ratio (:mod:`analyzer.ingest.limits`); a
  bomb raises :class:`CaptureLimitError` (a :class:`CaptureError`) naming the limit.

Damage never raises once the file is open: the frames before it are delivered and ``info.warnings`` names the
byte offset (``info.truncated`` is set for a cut file or a cut gzip stream).

**Read-ahead.** The compiled record walks (pcap, pcapng) and gzip's inflate release the GIL, so on a machine with a
second core :meth:`Capture.batches` produces the next batch in a thread while the caller dissects this one
(:class:`_ReadAhead`). The caller sees exactly what a plain iteration gives: the same batches, and the reader's
warnings and ``info.truncated`` appear in ``info`` when the batch they follow is handed over, never earlier, so
their place among the dissector's own warnings is unchanged.
"""

from __future__ import annotations

import copy
import mmap
import os
import queue
import tempfile
import threading
import zlib
from array import array
from typing import Callable, Iterator

from analyzer.ingest.limits import CaptureLimitError, Limits  # noqa: F401  (CaptureLimitError re-exported)
from analyzer.ingest.limits import current as current_limits
from analyzer.ingest.model import CaptureError, CaptureInfo, Frame, FrameBatch
from analyzer.ingest.sniff import GZIP_MAGIC, SNIFF_BYTES, is_gzip, sniff_format
from analyzer.ingest.walk import MORE, NEED_DATA

NOT_A_CAPTURE = "not a capture file (pcap, pcapng, NetMon)"
GZIP_WINDOW = 1 << 20  # decompressed bytes per window
HEAD_BYTES = 64 * 1024  # enough for any file header (a pcapng SHB with long comments included)
try:  # ISA-L's inflate: 1.3x zlib's speed on the same steps (benchmarks/results.md); zlib where it is missing
    from isal import isal_zlib as inflate
except ImportError:  # pragma: no cover - isal is in install_requires
    inflate = zlib
INFLATE_ERRORS = (zlib.error, inflate.error)
GZIP_ERRORS = (OSError, EOFError) + INFLATE_ERRORS

Progress = Callable[[int, int], None]


class GzipStream:
    """Incremental gzip decompression that reads exactly what ``zcat`` reads and delivers every byte decoded
    before damage.

    ``gzip.GzipFile.read(n)`` raises on a cut or corrupt stream and drops what it decoded within that call, so a
    damaged file would lose up to a whole window of good frames. Here compressed data goes to zlib in 2 KiB
    steps with no output limit (2 KiB of deflate data expands to at most ~2 MiB), so no input is ever held back
    by zlib and re-fed; decoded bytes wait in an output buffer. The bytes decoded before a failing step are
    returned first and the error is raised on the *next* call.

    Members: several gzip members in a row (``cat a.gz b.gz``) are one stream, as with gzip(1). After the last
    member, zero padding is ignored silently; any other trailing data is ignored with a warning in
    ``warnings`` (zcat: "trailing garbage ignored").

    Limits (:mod:`analyzer.ingest.limits`): the decompressed size and the compression ratio are checked after
    every step; passing one raises :class:`CaptureLimitError` at once (a bomb is refused, not read).
    """

    RAW_CHUNK = 256 * 1024
    STEP = 2 * 1024  # small, so a failing step loses little; ~250 calls per decompressed MB, negligible

    def __init__(self, fh, limits: Limits | None = None):
        self.fh = fh
        self.limits = limits or current_limits()
        self._z = inflate.decompressobj(16 + inflate.MAX_WBITS)
        self._raw = b""  # compressed bytes read from the file
        self._pos = 0  # next byte of _raw to give to zlib
        self._out = bytearray()  # decoded bytes not yet returned
        self._error: BaseException | None = None
        self._eof = False
        self.compressed = 0  # compressed bytes given to zlib so far
        self.decompressed = 0
        self.members = 0
        self.warnings: list[str] = []

    def read(self, n: int) -> bytes:
        while len(self._out) < n and not self._eof and self._error is None:
            self._step()
        if not self._out and self._error is not None:
            err, self._error = self._error, None
            self._eof = True
            raise err
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def _fill(self, want: int) -> bool:
        """At least ``want`` unread compressed bytes buffered (False at the end of the file)."""
        while len(self._raw) - self._pos < want:
            more = self.fh.read(self.RAW_CHUNK)
            if not more:
                return False
            self._raw = self._raw[self._pos:] + more
            self._pos = 0
        return True

    def _step(self) -> None:
        if self._z is None:
            self._next_member()
            return
        if not self._fill(1):
            self._error = EOFError("compressed stream ended before its end marker")
            return
        piece = memoryview(self._raw)[self._pos : self._pos + self.STEP]  # no copy of the compressed bytes
        self._pos += len(piece)
        self.compressed += len(piece)
        try:
            data = self._z.decompress(piece)
        except INFLATE_ERRORS as exc:
            self._error = exc
            return
        if data:
            self._out += data
            self.decompressed += len(data)
            self.limits.check_decompressed(self.decompressed, self.compressed)
        if self._z.eof:
            rest = self._z.unused_data  # input after this member's trailer: given back, never re-fed twice
            self.compressed -= len(rest)
            self._pos -= len(rest)
            self._z = None
            self.members += 1

    def _next_member(self) -> None:
        """Between members: another member, zero padding, trailing garbage, or the end of the file."""
        if not self._fill(1):
            self._eof = True
            return
        self._fill(2)
        if self._raw[self._pos : self._pos + 2] == GZIP_MAGIC:
            self._z = inflate.decompressobj(16 + inflate.MAX_WBITS)
            return
        offset = self.compressed
        garbage = 0
        while True:
            chunk = self._raw[self._pos :]
            garbage += len(chunk.lstrip(b"\0")) if garbage == 0 else len(chunk)
            self._raw, self._pos = b"", 0
            if not self._fill(1):
                break
        if garbage:
            self.warnings.append(f"trailing data after the last gzip member (byte {offset} of the file) is not "
                                 "gzip and was ignored, as zcat does")
        self._eof = True


def open_capture(path) -> "Capture":
    """Open a pcap, pcapng or NetMon capture (optionally gzip-compressed), sniffing the format from its content.

    Raises :class:`CaptureError` (message meant for the user) when the file cannot be opened, is empty, is not a
    capture, or its file header is unusable.
    """
    return Capture(path)


class Capture:
    """An open capture. Iterate :meth:`batches` (or :meth:`frames`); ``info`` fills in while iterating."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._file = None
        self._mm = None
        self._spool = None
        self._walker = None
        try:
            self._file = open(self.path, "rb")
            size = os.fstat(self._file.fileno()).st_size
        except IsADirectoryError:
            self.close()
            raise CaptureError("is a directory, not a capture file") from None
        except OSError as exc:
            self.close()
            raise CaptureError(f"cannot open: {exc.strerror or exc}") from None
        try:
            self._open(size)
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------------------------------

    def _open(self, size: int) -> None:
        if size == 0:
            raise CaptureError(f"empty file (0 bytes): {NOT_A_CAPTURE}")
        try:
            raw_head = self._file.read(HEAD_BYTES)
        except OSError as exc:
            raise CaptureError(f"cannot read: {exc.strerror or exc}") from None
        compressed = is_gzip(raw_head)
        head = raw_head
        if compressed:
            head = self._gzip_head()
            if not head:
                raise CaptureError("gzip file holds no data (or its data is corrupt from the start)")
        fmt = sniff_format(head[:SNIFF_BYTES] if len(head) >= SNIFF_BYTES else head)
        if fmt is None:
            raise CaptureError(NOT_A_CAPTURE)
        self.info = CaptureInfo(path=self.path, format=fmt, compressed=compressed, size=size)

        if fmt == "pcap":
            from analyzer.ingest.pcap import PcapWalker

            self._walker = PcapWalker(head, self.info)
        elif fmt == "pcapng":
            from analyzer.ingest.pcapng import PcapngWalker

            self._walker = PcapngWalker(head, self.info)
        else:
            from analyzer.ingest.netmon import NetmonReader

            self._netmon_plan = None
            if compressed:
                from analyzer.ingest.netmon_stream import probe

                self._netmon_plan = probe(self._file, self._new_gzip_stream)
            if self._netmon_plan is not None:  # frame table in file order: stream, no decompressed copy
                plan = self._netmon_plan
                self._walker = NetmonReader(plan.header, self.info, size=plan.size, table=plan.table)
                self.info.warnings.extend(plan.warnings)
            else:
                self._walker = NetmonReader(self._map_for_random_access(compressed), self.info)
        # Problems found while opening (e.g. a NetMon frame table lost to truncation) are re-reported on every
        # iteration, which starts from a clean CaptureInfo.
        self._open_warnings = list(self.info.warnings)
        self._open_truncated = self.info.truncated

    @staticmethod
    def _new_gzip_stream(fh) -> GzipStream:
        return GzipStream(fh)

    def _gzip_head(self) -> bytes:
        self._file.seek(0)
        gz = GzipStream(self._file)
        parts, got = [], 0
        try:
            while got < HEAD_BYTES:
                chunk = gz.read(HEAD_BYTES - got)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
        except GZIP_ERRORS:
            pass  # whatever decompressed before the damage is still sniffed; iteration reports the damage
        return b"".join(parts)

    def _map_for_random_access(self, compressed: bool):
        """An mmap of the (decompressed) file, for formats that must seek (NetMon's frame table)."""
        if not compressed:
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            return self._mm
        limits = current_limits()
        spool_dir = limits.temp_dir()
        limits.check_spool_room(spool_dir)
        # Under the operator's temporary directory (--tmp-dir / TMPDIR, the server's DATA_DIR/tmp), never
        # elsewhere; bounded by the decompression limits, and by the free space of that disk.
        self._spool = tempfile.TemporaryFile(prefix="mailpush-netmon-", dir=spool_dir)
        self._file.seek(0)
        gz = GzipStream(self._file, limits)
        written = 0
        try:
            while True:
                chunk = gz.read(GZIP_WINDOW)
                if not chunk:
                    break
                self._spool.write(chunk)
                written += len(chunk)
                if written % (64 * GZIP_WINDOW) < len(chunk):
                    limits.check_spool_room(spool_dir)
        except GZIP_ERRORS as exc:
            self.info.truncated = True
            self.info.warnings.append(self._gzip_damage_text(exc, written))
        self.info.warnings.extend(gz.warnings)
        self._spool.flush()
        if written == 0:
            raise CaptureError("gzip file holds no data (or its data is corrupt from the start)")
        self._mm = mmap.mmap(self._spool.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    @staticmethod
    def _gzip_damage_text(exc: BaseException, decompressed: int) -> str:
        if isinstance(exc, EOFError):
            what = "gzip stream cut short (file truncated)"
        else:
            what = f"gzip data corrupt ({exc})"
        return f"{what} after {decompressed} decompressed bytes; frames up to there are read"

    # -- iteration ---------------------------------------------------------------------------------------------

    def batches(self, batch_size: int = 65536, progress: Progress | None = None,
                read_ahead: bool | None = None) -> Iterator[FrameBatch]:
        """Frames as :class:`FrameBatch` columns, in file order. ``progress(bytes_done, bytes_total)`` is called
        after every batch (bytes of the file on disk: compressed bytes for gzip). ``read_ahead``: produce the next
        batch in a thread meanwhile (module doc); None: when it can help (a compiled walk or gzip, two cores)."""
        if self._walker is None:
            raise CaptureError("capture is closed")
        batch_size = max(1, int(batch_size))
        info = self.info
        info.frames, info.start, info.end = 0, None, None
        info.linktypes = {}
        info.warnings = list(self._open_warnings)
        info.truncated = self._open_truncated
        total = info.size
        if info.format in ("netmon1", "netmon2") and getattr(self, "_netmon_plan", None) is not None:
            from analyzer.ingest.netmon_stream import stream_batches

            source = stream_batches(self._walker, self._file, self._new_gzip_stream, batch_size)
        elif info.format in ("netmon1", "netmon2"):
            source = self._walker.batches(batch_size)
        else:
            if read_ahead is None:
                read_ahead = READ_AHEAD and (os.cpu_count() or 1) > 1 and (
                    info.compressed or getattr(self._walker, "compiled_walk", False))
            if read_ahead:
                # the thread's walker reports into a copy of ``info``; _ReadAhead moves what it reports over
                shadow = copy.copy(info)
                shadow.warnings, shadow.truncated = [], False
                self._walker.info = shadow
                produce = self._gzip_batches(batch_size, shadow) if info.compressed else self._mmap_batches(batch_size)
                source = _ReadAhead(produce, shadow, info, restore=lambda: setattr(self._walker, "info", info)
                                    if self._walker is not None else None)
            elif info.compressed:
                source = self._gzip_batches(batch_size, info)
            else:
                source = self._mmap_batches(batch_size)
        for batch, done in source:
            self._account(batch)
            if progress is not None:
                progress(min(done, total) if not info.compressed else done, total)
            yield batch
        if progress is not None:
            progress(total, total)

    def frames(self) -> Iterator[Frame]:
        """Convenience: one :class:`Frame` at a time (slow path; the dissector uses :meth:`batches`)."""
        for batch in self.batches():
            yield from batch.frames()

    def _account(self, batch: FrameBatch) -> None:
        info = self.info
        n = len(batch)
        if not n:
            return
        info.frames += n
        if info.start is None:
            info.start = float(batch.time[0])
        info.end = float(batch.time[-1])
        lt = batch.linktype
        first = int(lt[0])
        if type(lt) is array:  # the compiled pcap walk's column: compared item by item in C, without numpy
            same = lt == array(lt.typecode, (first,)) * n
        else:
            same = bool((lt == first).all())
        if same:  # the common case, far cheaper than np.unique
            info.linktypes[first] = info.linktypes.get(first, 0) + n
        else:
            import numpy as np  # several link types: pcapng or NetMon, whose readers loaded numpy already

            values, counts = np.unique(np.asarray(lt), return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist()):
                info.linktypes[v] = info.linktypes.get(v, 0) + c

    def _mmap_batches(self, batch_size: int):
        if self._mm is None:
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        walker, buf = self._walker, self._mm
        walker.reset()
        pos, number = walker.start(), 1
        while True:
            batch, pos, status = walker.next_batch(buf, pos, True, 0, batch_size, number)
            if batch is not None and len(batch):
                number += len(batch)
                yield batch, pos
            if status != MORE:
                return

    def _gzip_batches(self, batch_size: int, info: CaptureInfo):
        walker = self._walker
        walker.reset()
        self._file.seek(0)
        gz = GzipStream(self._file)
        carry, base, pos, number = b"", 0, walker.start(), 1
        decompressed = 0
        while True:
            final = False
            try:
                chunk = gz.read(GZIP_WINDOW)
            except GZIP_ERRORS as exc:
                info.truncated = True
                info.warnings.append(self._gzip_damage_text(exc, decompressed))
                chunk = b""
            if not chunk:
                final = True
            decompressed += len(chunk)
            buf = carry + chunk if carry else chunk
            while True:
                batch, pos, status = walker.next_batch(buf, pos, final, base, batch_size, number)
                if batch is not None and len(batch):
                    number += len(batch)
                    yield batch, self._file.tell()
                if status != MORE:
                    break
            if status != NEED_DATA or final:
                info.warnings.extend(gz.warnings)
                return
            carry = buf[pos:]
            base += pos
            pos = 0

    # -- closing -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._walker = None  # first: it may hold numpy views on the map (NetMon frame table)
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # a caller still holds a view of a batch buffer; the map goes when that view does
        for name in ("_spool", "_file"):
            fh = getattr(self, name, None)
            setattr(self, name, None)
            if fh is not None:
                try:
                    fh.close()
                except OSError:
                    pass
        self._walker = None

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# Read ahead in a thread (module doc); tests switch it off to compare
READ_AHEAD = True


class _ReadAhead:
    """Iterate ``source`` (a generator of (batch, progress) that reports into ``shadow``) in a thread, one batch
    ahead, and hand its items over in order; at each handover the warnings ``shadow`` gained up to that item move
    to ``info`` (and ``truncated``), so they land where a plain iteration would have put them. Closing early (the
    caller stops, or raises) stops the thread before the capture can be closed under it."""

    _ITEM, _END, _ERROR = 0, 1, 2

    def __init__(self, source, shadow: CaptureInfo, info: CaptureInfo, restore):
        self._source, self._shadow, self._info, self._restore = source, shadow, info, restore
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._moved = 0
        self._thread = threading.Thread(target=self._produce, name="mailpush-read-ahead", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        put, shadow = self._queue.put, self._shadow
        try:
            for item in self._source:
                put((self._ITEM, item, len(shadow.warnings), shadow.truncated))
                if self._stop.is_set():
                    return
            put((self._END, None, len(shadow.warnings), shadow.truncated))
        except BaseException as exc:  # handed to the caller, who would have met it in a plain iteration
            put((self._ERROR, exc, len(shadow.warnings), shadow.truncated))
        finally:
            self._source.close()

    def __iter__(self):
        try:
            while True:
                kind, value, warned, truncated = self._queue.get()
                if warned > self._moved:
                    self._info.warnings.extend(self._shadow.warnings[self._moved : warned])
                    self._moved = warned
                if truncated:
                    self._info.truncated = True
                if kind == self._ITEM:
                    yield value
                elif kind == self._ERROR:
                    raise value
                else:
                    return
        finally:
            self._close()

    def _close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting to put its next item
            try:
                self._queue.get(timeout=0.01)
            except queue.Empty:
                pass
        self._thread.join()
        self._restore()
