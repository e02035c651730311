#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""pcapng and NetMon input against pcap (issue 14: within 1.5x of pcap speed), same frames in each file.

    editcap -F pcapng benchmarks/data/mid.pcap benchmarks/data/mid.pcapng
    editcap -F netmon2 benchmarks/data/mid.pcap benchmarks/data/mid.cap
    .venv/bin/python benchmarks/bench_formats.py benchmarks/data/mid.pcap benchmarks/data/mid.pcapng \
        benchmarks/data/mid.cap [--rounds 3]

For each file: the reader alone (every FrameBatch of ``open_capture``) and the whole native dissection
(``dissect_capture``), in CPU seconds of this process (time.process_time: on a shared machine wall time measures the neighbours), best of --rounds, rounds interleaved over the files so that a busy
neighbour hurts all formats alike. The ratio column is against the first file. The load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analyzer.dissect import dissect_capture  # noqa: E402
from analyzer.ingest import open_capture  # noqa: E402


def read_all(path: str) -> int:
    n = 0
    with open_capture(path) as cap:
        for batch in cap.batches():
            n += len(batch)
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("captures", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"load average at the start {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    best: dict[tuple[str, str], float] = {}
    frames: dict[str, int] = {}
    events: dict[str, int] = {}
    for _ in range(args.rounds):
        for path in args.captures:
            t = time.process_time()
            frames[path] = read_all(path)
            dt = time.process_time() - t
            best[path, "read"] = min(best.get((path, "read"), dt), dt)
            t = time.process_time()
            found, _info = dissect_capture(path)
            dt = time.process_time() - t
            events[path] = len(found)
            best[path, "dissect"] = min(best.get((path, "dissect"), dt), dt)
    first = args.captures[0]
    print("| file | frames | events | reader CPU s | x first | dissect CPU s | x first |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in args.captures:
        r, d = best[path, "read"], best[path, "dissect"]
        print(f"| {Path(path).name} | {frames[path]:,} | {events[path]:,} | {r:.2f} | {r / best[first, 'read']:.2f} | "
              f"{d:.2f} | {d / best[first, 'dissect']:.2f} |")
    print(f"load average at the end {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
