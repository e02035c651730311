"""Resource limits of reading one capture: decompressed size, compression ratio, and where temporary files go.

A small gzip file can expand to terabytes (a *decompression bomb*: 10 MB of gzip'd zeros is 10 GB). Reading is
therefore bounded by

* ``max_bytes``: decompressed bytes per capture (CLI ``--max-capture-gb``, server ``--max-capture-gb``);
* ``max_ratio``: decompressed / compressed bytes, checked *while reading* once ``ratio_grace`` bytes have been
  decompressed (so small files with a high ratio, e.g. a header-only capture, are never refused). Real gzip'd
  captures compress 2-20x; a file of zeros compresses ~1000x. 0 switches the check off
  (``--max-compression-ratio``);
* ``tmp_dir``: the only place temporary files are written (the NetMon spool, fetched remote captures):
  ``--tmp-dir`` / ``TMPDIR`` for the CLI, ``DATA_DIR/tmp`` for the server, so they count against the operator's
  disk checks. ``min_free_bytes`` of that disk are never used by a spool.

The limits in force are process-wide (:func:`current`), set by the CLI and the server (:func:`configure`) and
handed to child processes through the environment (``MAILPUSH_MAX_CAPTURE_BYTES``,
``MAILPUSH_MAX_COMPRESSION_RATIO``, ``MAILPUSH_RATIO_GRACE_BYTES``, ``MAILPUSH_TMP_DIR``), so pool workers and
Dask workers on this machine read with the same limits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass

from analyzer.ingest.model import CaptureError

GB = 1024**3
DEFAULT_MAX_BYTES = 16 * GB  # a day of busy Exchange traffic is a few GB; 16 GB leaves room and stops bombs
DEFAULT_MAX_RATIO = 200.0
DEFAULT_RATIO_GRACE = 32 * 1024 * 1024
DEFAULT_MIN_FREE = 256 * 1024 * 1024

_ENV = {
    "max_bytes": "MAILPUSH_MAX_CAPTURE_BYTES",
    "max_ratio": "MAILPUSH_MAX_COMPRESSION_RATIO",
    "ratio_grace": "MAILPUSH_RATIO_GRACE_BYTES",
    "tmp_dir": "MAILPUSH_TMP_DIR",
}


class CaptureLimitError(CaptureError):
    """Reading stopped because a resource limit was reached (message names the limit and how to raise it)."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    ratio_grace: int = DEFAULT_RATIO_GRACE
    tmp_dir: str | None = None  # None: TMPDIR / the system default
    min_free_bytes: int = DEFAULT_MIN_FREE

    def temp_dir(self) -> str:
        path = self.tmp_dir or tempfile.gettempdir()
        os.makedirs(path, exist_ok=True)
        return path

    def check_decompressed(self, decompressed: int, compressed: int) -> None:
        """Raise :class:`CaptureLimitError` when ``decompressed`` bytes (from ``compressed`` input bytes) pass
        a limit."""
        if decompressed > self.max_bytes:
            raise CaptureLimitError(
                f"refused: the capture decompresses to more than the limit of {_size(self.max_bytes)} "
                f"(--max-capture-gb); a decompression bomb, or raise the limit")
        if self.max_ratio and decompressed > self.ratio_grace and decompressed > self.max_ratio * max(1, compressed):
            raise CaptureLimitError(
                f"refused: compression ratio above the limit of {self.max_ratio:g}:1 "
                f"({decompressed} bytes from {compressed} compressed bytes; --max-compression-ratio): "
                "a decompression bomb, or raise the limit")

    def check_spool_room(self, directory: str) -> None:
        free = shutil.disk_usage(directory).free
        if free < self.min_free_bytes:
            raise CaptureLimitError(
                f"refused: the temporary directory {directory} has only {_size(free)} free "
                f"(keeps {_size(self.min_free_bytes)} free; --tmp-dir chooses another)")


def _size(n: int) -> str:
    if n >= GB:
        return f"{n / GB:g} GB"
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):g} MB"
    return f"{n} bytes"


def current() -> Limits:
    """The limits in force in this process (environment, else defaults)."""
    env = os.environ
    try:
        return Limits(
            max_bytes=int(env.get(_ENV["max_bytes"]) or DEFAULT_MAX_BYTES),
            max_ratio=float(env.get(_ENV["max_ratio"]) or DEFAULT_MAX_RATIO),
            ratio_grace=int(env.get(_ENV["ratio_grace"]) or DEFAULT_RATIO_GRACE),
            tmp_dir=env.get(_ENV["tmp_dir"]) or None,
            min_free_bytes=DEFAULT_MIN_FREE,
        )
    except ValueError:
        return Limits()


def configure(limits: Limits | None = None, **changes) -> Limits:
    """Set the limits of this process and of the processes it starts from now on (through the environment)."""
    base = limits or current()
    values = {**asdict(base), **{k: v for k, v in changes.items() if v is not None}}
    new = Limits(**values)
    for field, var in _ENV.items():
        value = getattr(new, field)
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = str(int(value)) if field in ("max_bytes", "ratio_grace") else str(value)
    return new


def as_dict(limits: Limits) -> dict:
    return asdict(limits)
