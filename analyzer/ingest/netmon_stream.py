"""gzip'd NetMon without a decompressed copy on disk: two streaming passes.

NetMon's frame table sits at the end of the file, so a gzip'd NetMon file cannot be walked in one pass. But in
practice (NetMon 3.x, Message Analyzer, the public samples) the table lists the records in file order. Then:

1. **probe**: decompress once, streaming, keeping only the 128-byte header and the frame table (4 bytes per
   frame, at most :data:`MAX_TABLE_BYTES`), and count the decompressed size;
2. **read**: decompress again, walking the records in table order over a sliding window (records never span
   more than the window plus one record, so memory stays at about one window).

When the table is missing (a truncated file), unusable, too large, or not in file order, or the gzip stream is
damaged, :func:`probe` returns None and the reader falls back to the bounded spool (a decompressed copy in the
operator's temporary directory). Both passes run under the decompression limits.
"""

from __future__ import annotations

import struct
from typing import Iterator

import numpy as np

from analyzer.ingest.netmon import HEADER

MAX_TABLE_BYTES = 256 * 1024 * 1024  # 64 M frames
WINDOW = 1 << 20


class StreamPlan:
    def __init__(self, header: bytes, table: np.ndarray, size: int, warnings: list[str]):
        self.header = header
        self.table = table
        self.size = size
        self.warnings = warnings


def probe(fh, stream_factory) -> StreamPlan | None:
    """First pass over a gzip'd NetMon file (``stream_factory(fh)`` gives a fresh GzipStream at byte 0)."""
    fh.seek(0)
    gz = stream_factory(fh)
    header = b""
    table = bytearray()
    pos = 0
    ft_off = ft_len = None
    try:
        while chunk := gz.read(WINDOW):
            end = pos + len(chunk)
            if len(header) < HEADER:
                header += chunk[: HEADER - len(header)]
                if len(header) == HEADER:
                    ft_off, ft_len = struct.unpack_from("<II", header, 24)
                    if ft_len == 0 or ft_len % 4 or ft_off < HEADER or ft_len > MAX_TABLE_BYTES:
                        return None
            if ft_off is not None and len(table) < ft_len and end > ft_off:
                lo = max(ft_off, pos) - pos
                hi = min(ft_off + ft_len, end) - pos
                table += chunk[lo:hi]
            pos = end
    except (OSError, EOFError, ValueError, __import__("zlib").error):
        return None  # damaged stream: the spool path reads what it can and reports where it broke
    if ft_off is None or len(table) != ft_len:
        return None  # table cut off (a truncated file)
    offsets = np.frombuffer(bytes(table), dtype="<u4").astype(np.int64)
    if len(offsets) > 1 and (np.diff(offsets) <= 0).any():
        return None  # not in file order: needs random access
    return StreamPlan(header, offsets, pos, list(gz.warnings))


def stream_batches(reader, fh, stream_factory, batch_size: int) -> Iterator[tuple]:
    """Second pass: (FrameBatch, compressed bytes read) in table order; ``reader`` is a NetmonReader built on
    the header with the probed table and size."""
    from analyzer.ingest.model import FrameBatch

    fh.seek(0)
    gz = stream_factory(fh)
    table = reader.table
    n = len(table)
    hs, trailer = reader.header_size, reader.trailer
    size = reader.size
    len_at, len_fmt = (6, "<H") if reader.major == 1 else (12, "<I")
    i = 0  # next record (table index)
    number = 1
    buf, base = b"", 0  # buf holds the file's bytes from offset base on
    done = False
    while i < n and not done:
        chunk = gz.read(WINDOW)
        final = not chunk
        buf = buf + chunk if buf else chunk
        end = base + len(buf)
        # the records lying wholly in buf (a record's length is in its header, so look at headers in buf)
        j = i
        if final:
            j = n  # the rest: _columns reports a record cut by the end of the file, as with the mapped file
        else:
            limit = int(np.searchsorted(table, end - hs, side="right"))
            while j < limit:
                start = int(table[j]) - base
                (incl,) = struct.unpack_from(len_fmt, buf, start + len_at)
                if int(table[j]) + hs + incl + trailer > end:
                    break
                j += 1
        while i < j:
            offs = table[i : min(j, i + batch_size)]
            cols, stopped = reader._columns(offs, buf, base)
            i += len(offs)
            if cols is not None and len(cols[0]):
                data, caplen, origlen, time, linktype, _rec = cols
                batch = FrameBatch(first_number=number, buf=buf, offset=data, caplen=caplen, origlen=origlen,
                                   time=time, linktype=linktype)
                number += len(batch)
                yield batch, fh.tell()
            if stopped:
                done = True
                break
        if final or done:
            break
        keep_from = min(int(table[i]), end) if i < n else end
        buf = buf[keep_from - base:]
        base = keep_from
    if size and base > size:  # pragma: no cover - defensive: the file changed between the passes
        return
