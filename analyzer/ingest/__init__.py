"""Ingest stage: bytes on disk -> FrameBatch stream + CaptureInfo.

Public API (the contract later stages use)::

    cap = open_capture(path)          # sniffs the format from content (never the extension); gzip transparently
    cap.info                          # CaptureInfo: format, compressed, size; frames/start/end/warnings filled
                                      # while iterating and final after the iteration ends
    for batch in cap.batches():       # FrameBatch columns; constant memory whatever the file size
        ...
    for frame in cap.frames():        # convenience: Frame objects one by one
        ...
    cap.close()                       # also a context manager

``open_capture`` raises :class:`CaptureError` with a user-facing message when the file is not a capture at all
("not a capture file (pcap, pcapng, NetMon)") or cannot be opened. Damage found while reading never raises: the
frames before it are delivered and a warning naming the byte offset goes to ``cap.info.warnings``.
"""

from analyzer.ingest.model import (  # noqa: F401
    FORMATS,
    CaptureError,
    CaptureInfo,
    Frame,
    FrameBatch,
)
from analyzer.ingest.reader import Capture, open_capture  # noqa: F401
