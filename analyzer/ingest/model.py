"""Typed output of the ingest stage.

The ingest stage turns bytes on disk into a stream of :class:`FrameBatch` objects plus one :class:`CaptureInfo`.
Batches are columnar (arrays of numbers over one shared buffer) rather than one object per frame: the dissector's
pre-filter looks at a million frames per second, and building a Python object per frame alone would cost more
than that budget. :meth:`FrameBatch.frames` gives per-frame :class:`Frame` objects for code where speed does
not matter (tests, tools).

This module does not import numpy: the compiled pcap path (walk, pre-filter) never needs it, and importing it
costs ~0.1 s of start-up (issue 14).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Union

if TYPE_CHECKING:
    from array import array

    import numpy as np

    Column = Union[np.ndarray, array]

# pcap LINKTYPE_* values (https://www.tcpdump.org/linktypes.html). NetMon media types are mapped onto these.
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4 or IPv6, version from the first nibble
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family, network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# DLT 12 and 14 also mean raw IP on some platforms; readers normalise them to LINKTYPE_RAW.

FORMATS = ("pcap", "pcapng", "netmon1", "netmon2")


class CaptureError(Exception):
    """A capture cannot be read at all (not a capture, unsupported version, unreadable file).

    The message is meant for the user as it stands, e.g. "not a capture file (pcap, pcapng, NetMon)".
    """


@dataclass(slots=True)
class Frame:
    """One captured frame, for convenience code. The hot path uses :class:`FrameBatch` columns instead."""

    number: int  # 1-based, file order, as Wireshark numbers frames
    time: float  # epoch seconds (UTC)
    linktype: int  # LINKTYPE_* of this frame (pcapng and NetMon 2.1+ vary it per frame)
    data: bytes  # captured bytes (incl_len of them)
    orig_len: int  # length on the wire


@dataclass(slots=True)
class FrameBatch:
    """A run of consecutive frames, as columns over one buffer.

    Frame ``i`` of the batch is ``buf[offset[i] : offset[i] + caplen[i]]``, its number is ``first_number + i``.
    ``buf`` may be an mmap, bytes or a memoryview; it is only valid until the next batch is requested
    (readers reuse buffers), so dissectors copy what they keep.

    The columns are one-dimensional, C-contiguous arrays of the types below, either numpy arrays (the Python
    walks, pcapng, NetMon) or ``array.array`` (the compiled pcap walk: typecodes ``'q'``, ``'d'``, ``'i'``), so
    that a plain pcap is read and pre-filtered without importing numpy (~0.1 s of start-up). Consumers use only
    what both offer: ``len()``, ``[i]``, ``[-1]``, ``.tolist()`` and the buffer protocol; code that needs numpy
    operations converts with ``np.asarray(column)`` (no copy), importing numpy itself.
    """

    first_number: int
    buf: object  # bytes-like supporting the buffer protocol and slicing
    offset: Column  # int64
    caplen: Column  # int64, bytes captured
    origlen: Column  # int64, bytes on the wire
    time: Column  # float64 epoch seconds
    linktype: Column  # int32 LINKTYPE_* per frame

    def __len__(self) -> int:
        return len(self.offset)

    def frames(self) -> Iterator[Frame]:
        buf = self.buf
        for i in range(len(self.offset)):
            start = int(self.offset[i])
            yield Frame(
                number=self.first_number + i,
                time=float(self.time[i]),
                linktype=int(self.linktype[i]),
                data=bytes(buf[start : start + int(self.caplen[i])]),
                orig_len=int(self.origlen[i]),
            )


@dataclass
class CaptureInfo:
    """What the reader learned about the file. Filled while reading: ``frames``, ``start``, ``end`` and
    ``warnings`` are final only once the batch iterator is exhausted."""

    path: str  # as given by the caller
    format: str  # one of FORMATS
    compressed: bool  # gzip
    frames: int = 0
    start: float | None = None  # epoch seconds of the first frame
    end: float | None = None  # epoch seconds of the last frame
    size: int = 0  # bytes on disk
    linktypes: dict[int, int] = field(default_factory=dict)  # LINKTYPE -> frame count
    warnings: list[str] = field(default_factory=list)  # truncation, resync, unknown link types, ...
    truncated: bool = False

    @property
    def duration(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return max(0.0, self.end - self.start)
