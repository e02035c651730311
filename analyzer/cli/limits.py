"""The decompression/temporary-file options shared by `analyze`, `batch` and `serve`
(:mod:`analyzer.ingest.limits` says what they bound)."""

from __future__ import annotations

from analyzer.ingest.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_RATIO, GB


def add_limit_args(p, tmp_dir: bool = True) -> None:
    p.add_argument("--max-capture-gb", type=float, default=None, metavar="GB",
                   help=f"refuse a capture that decompresses to more than GB gigabytes "
                   f"(default {DEFAULT_MAX_BYTES / GB:g})")
    p.add_argument("--max-compression-ratio", type=float, default=None, metavar="R",
                   help=f"refuse a gzip capture that expands more than R:1 while reading: a decompression bomb "
                   f"(default {DEFAULT_MAX_RATIO:g}; 0 = no ratio check)")
    if tmp_dir:
        p.add_argument("--tmp-dir", metavar="DIR", default=None,
                       help="where temporary files go (the decompressed copy of a gzip'd NetMon capture, fetched "
                       "remote captures); default $TMPDIR or /tmp")


def limit_problem(args) -> str | None:
    gb = getattr(args, "max_capture_gb", None)
    ratio = getattr(args, "max_compression_ratio", None)
    if gb is not None and gb <= 0:
        return "--max-capture-gb must be greater than 0"
    if ratio is not None and ratio < 0:
        return "--max-compression-ratio must be 0 (off) or more"
    return None


def apply_limit_args(args, tmp_dir: str | None = None):
    """Make the options the process-wide limits (inherited by worker processes); returns the Limits."""
    from analyzer.ingest.limits import configure

    gb = getattr(args, "max_capture_gb", None)
    return configure(max_bytes=None if gb is None else int(gb * GB),
                     max_ratio=getattr(args, "max_compression_ratio", None),
                     tmp_dir=tmp_dir or getattr(args, "tmp_dir", None))
