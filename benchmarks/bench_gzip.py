#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""gzip input: zlib's own inflate speed beside mailpush's reader, with zlib and with ISA-L (isal) behind it.

    .venv/bin/python benchmarks/bench_gzip.py benchmarks/data/mid.pcap.gz [--rounds 3]

Prints one line per measurement (best of --rounds, wall seconds, decompressed MB/s) and the load average, for
benchmarks/results.md. The reader's inflate module is swapped in-process (``analyzer.ingest.reader.inflate``), so
both rows run the same code apart from the inflate library.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analyzer.ingest import open_capture  # noqa: E402
from analyzer.ingest import reader  # noqa: E402


def best(rounds: int, func) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        func()
        times.append(time.perf_counter() - t)
    return min(times)


def inflate_all(module, raw: bytes, step: int) -> int:
    d = module.decompressobj(16 + module.MAX_WBITS)
    view = memoryview(raw)
    return sum(len(d.decompress(view[i:i + step])) for i in range(0, len(raw), step))


def read_frames(path: str) -> int:
    n = 0
    with open_capture(path) as cap:
        for batch in cap.batches():
            n += len(batch)
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    raw = Path(args.capture).read_bytes()
    size = len(zlib.decompress(raw, 16 + zlib.MAX_WBITS))
    print(f"{args.capture}: {len(raw) / 1e6:.1f} MB compressed, {size / 1e6:.1f} MB decompressed; "
          f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    rows.append(("zcat > /dev/null", best(args.rounds, lambda: subprocess.run(
        ["zcat", args.capture], stdout=subprocess.DEVNULL, check=True))))
    rows.append(("zlib.decompress, one call", best(args.rounds, lambda: zlib.decompress(raw, 16 + zlib.MAX_WBITS))))
    rows.append(("zlib decompressobj, 2 KiB steps", best(args.rounds, lambda: inflate_all(zlib, raw, 2048))))
    try:
        from isal import isal_zlib
    except ImportError:
        isal_zlib = None
    if isal_zlib is not None:
        rows.append(("isal decompressobj, 2 KiB steps", best(args.rounds, lambda: inflate_all(isal_zlib, raw, 2048))))
    saved = reader.inflate
    try:
        for name, module in (("zlib", zlib), ("isal", isal_zlib)):
            if module is None:
                continue
            reader.inflate = module
            reader.INFLATE_ERRORS = (zlib.error, module.error)
            rows.append((f"mailpush reader (all frames), {name}", best(args.rounds, lambda: read_frames(args.capture))))
    finally:
        reader.inflate = saved
        reader.INFLATE_ERRORS = (zlib.error, saved.error)
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} s | {size / sec / 1e6:.0f} MB/s |")
    print(f"load average at the end {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
