#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Benchmark (not a test): `mailpush events` (native engine) against tshark on the same big capture.

    .venv/bin/python benchmarks/bench_events.py [CAPTURE] [--frames 1000000] [--tshark-limit N] [--no-tshark]
                                                [--analyze] [--jobs N[,N...]] [--results benchmarks/results.md]

Without CAPTURE it generates benchmarks/data/big.pcap (git-ignored) with make_big_capture.py first, unless it
is already there with the requested frame count. For each tool it runs one child process and reports:

* wall time and CPU time (user + sys of the child, from wait4), and frames/s on each;
* peak RSS (ru_maxrss from wait4: includes file pages the child mapped or touched);
* peak anonymous memory: the largest RssAnon seen in /proc/PID/status, sampled every 20 ms while it runs
  (heap and other private memory; mmap'ed file pages don't count), summed over the child and its own children
  (the workers of ``analyze --jobs``). Sampling can miss a spike shorter than 20 ms.

``--jobs 2,3`` (with ``--analyze``) adds a row per N for ``mailpush analyze --format json --jobs N`` (one capture
split over N processes, analyzer/dissect/parallel.py); its CPU time includes the workers' (wait4 counts the
children the command waited for), and the report is checked byte-identical to the one-core report.

tshark runs as `tshark -r F -o tcp.reassemble_out_of_order:TRUE -Y dcerpc -T fields -e frame.number` (the PDU
frames the events table must reproduce). tshark needs minutes on a million frames; --tshark-limit N makes it read
only the first N frames (-c N), and its frames/s is then computed on N. A bare Python walk over the pcap records
(mmap + struct, no dissection) is timed too, as the floor a Python reader cannot beat. The machine's load average
and core count are printed with the results: on a shared machine the wall times are only indicative, CPU times
are the better figure.
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CAPTURE = HERE / "data" / "big.pcap"


def pcap_frame_count(path: Path) -> tuple[int, float]:
    """Count records with a bare record walk (classic little-endian pcap only); returns (frames, seconds)."""
    t0 = time.perf_counter()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"\xd4\xc3\xb2\xa1":
            raise SystemExit(f"{path}: the record walk handles little-endian classic pcap only")
        unpack = struct.Struct("<I").unpack_from
        pos, n, end = 24, 0, len(m)
        while pos + 16 <= end:
            pos += 16 + unpack(m, pos + 8)[0]
            n += 1
    return n, time.perf_counter() - t0


def _status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        return []


def run_measured(cmd: list[str], stdout_path: str) -> dict:
    """Run cmd as a child; wall/CPU time, ru_maxrss and sampled peak RssAnon."""
    load = os.getloadavg()[0]
    with open(stdout_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        peak_anon = 0
        done = threading.Event()

        def sample():
            nonlocal peak_anon
            while not done.is_set():
                kb = _status_kb(proc.pid, "RssAnon")
                if kb is not None:
                    kb += sum(_status_kb(child, "RssAnon") or 0 for child in _children(proc.pid))
                    peak_anon = max(peak_anon, kb)
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stderr = proc.stderr.read()
        _pid, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"cmd": cmd, "rc": proc.returncode, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime,
            "maxrss_mb": ru.ru_maxrss / 1024, "peak_anon_mb": peak_anon / 1024,
            "stderr": stderr.decode("utf-8", "replace")[-2000:], "load": load}


def verdict_agreement(capture: Path, report: str) -> str:
    """'N/M clients get the generated verdict and cause' against make_big_capture.py's sidecar file."""
    import json

    sidecar = capture.with_name(capture.name + ".expected.json")
    if not sidecar.is_file():
        return "no expected verdicts beside the capture"
    expected = json.loads(sidecar.read_text())["clients"]
    clients = json.loads(Path(report).read_text())["captures"][0]["clients"]
    got = {c["client"]: (c["verdict"], c["cause"]) for c in clients}
    same = sum(1 for ip, e in expected.items() if got.get(ip) == (e["verdict"], e["cause"]))
    extra = len(set(got) - set(expected))
    return (f"{same}/{len(expected)} clients get the generated verdict and cause"
            + (f", {extra} unexpected" if extra else ""))


def event_kinds(csv_path: str) -> str:
    """'N event rows (M DCE/RPC PDUs)': M is comparable with tshark's count of DCE/RPC frames when every frame
    carries at most one PDU, as in make_big_capture.py's files."""
    import csv

    with open(csv_path, newline="") as fh:
        kinds = [row["kind"] for row in csv.DictReader(fh)]
    pdus = sum(1 for k in kinds if k not in ("udp", "icmp_unreachable"))
    return f"{len(kinds)} event rows ({pdus} DCE/RPC PDUs)"


def parquet_rows(path: str) -> str:
    import pyarrow.parquet as pq

    return f"{pq.ParquetFile(path).metadata.num_rows} event rows"


def count_lines(path: str) -> int:
    with open(path, "rb") as fh:
        return sum(buf.count(b"\n") for buf in iter(lambda: fh.read(1 << 20), b""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path)
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames of the generated capture")
    ap.add_argument("--tshark-limit", type=int, default=0, help="tshark reads only the first N frames (-c N)")
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--analyze", action="store_true",
                    help="also time `mailpush analyze --format json` and check its verdicts against the "
                         "generator's CAPTURE.expected.json")
    ap.add_argument("--jobs", default="",
                    help="with --analyze: also time `mailpush analyze --jobs N` for each N of this comma-separated "
                         "list and check its report against the one-core report")
    ap.add_argument("--results", type=Path, default=HERE / "results.md")
    args = ap.parse_args(argv)
    jobs = [int(n) for n in args.jobs.split(",") if n.strip()]

    path = args.capture or DEFAULT_CAPTURE
    if args.capture is None:
        have = pcap_frame_count(path)[0] if path.is_file() else 0
        if have != args.frames:
            subprocess.run([sys.executable, str(HERE / "make_big_capture.py"), str(path), "--frames",
                            str(args.frames)], check=True)
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    frames, walk_s = pcap_frame_count(path)
    size_mb = path.stat().st_size / 1e6
    load = os.getloadavg()
    print(f"{path}: {frames} frames, {size_mb:.0f} MB; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
          f"{os.cpu_count()} cores; bare record walk {walk_s:.2f} s")

    mailpush = shutil.which("mailpush", path=str(Path(sys.executable).parent)) or shutil.which("mailpush")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "events.csv")
        native = run_measured([mailpush, "events", str(path), "--format", "csv", "-o", out], os.devnull)
        native["frames"] = frames
        native["output"] = event_kinds(out) if native["rc"] == 0 else "failed"
        rows.append(("mailpush events (native)", native))
        print(_line(rows[-1]))
        parquet = os.path.join(tmp, "events.parquet")
        res = run_measured([mailpush, "events", str(path), "--format", "parquet", "-o", parquet], os.devnull)
        res["frames"] = frames
        res["output"] = parquet_rows(parquet) if res["rc"] == 0 else "failed"
        rows.append(("mailpush events --format parquet", res))
        print(_line(rows[-1]))
        # the same run with --profile: the dissection stages, then building and writing the table ("output")
        res = run_measured([mailpush, "events", str(path), "--format", "parquet", "-o", parquet, "--profile"],
                           os.devnull)
        res["frames"] = frames
        res["output"] = parquet_rows(parquet) if res["rc"] == 0 else "failed"
        rows.append(("mailpush events --format parquet --profile", res))
        print(_line(rows[-1]))
        print(res["stderr"])
        if args.analyze:
            report = os.path.join(tmp, "analyze.json")
            res = run_measured([mailpush, "analyze", str(path), "--format", "json", "-o", report], os.devnull)
            res["frames"] = frames
            res["output"] = verdict_agreement(path, report) if res["rc"] == 0 else "failed"
            rows.append(("mailpush analyze --format json", res))
            print(_line(rows[-1]))
            for n in jobs:
                split = os.path.join(tmp, f"analyze-{n}.json")
                res = run_measured([mailpush, "analyze", str(path), "--format", "json", "-o", split, "--jobs", str(n)],
                                   os.devnull)
                res["frames"] = frames
                same = res["rc"] == 0 and Path(split).read_bytes() == Path(report).read_bytes()
                res["output"] = (("report identical to one core" if same else "REPORT DIFFERS FROM ONE CORE")
                                 if res["rc"] == 0 else "failed")
                rows.append((f"mailpush analyze --format json --jobs {n}", res))
                print(_line(rows[-1]))
            # the same run with --profile: where the time goes (the stage table is kept for the results file)
            res = run_measured([mailpush, "analyze", str(path), "--format", "json", "-o", report, "--profile"],
                               os.devnull)
            res["frames"] = frames
            res["output"] = verdict_agreement(path, report) if res["rc"] == 0 else "failed"
            rows.append(("mailpush analyze --format json --profile", res))
            print(_line(rows[-1]))
            print(res["stderr"])
        if not args.no_tshark:
            tshark = shutil.which("tshark")
            if not tshark:
                print("tshark not installed: skipped")
            else:
                cmd = [tshark, "-r", str(path), "-o", "tcp.reassemble_out_of_order:TRUE", "-Y", "dcerpc", "-T",
                       "fields", "-e", "frame.number"]
                n = frames
                if args.tshark_limit and args.tshark_limit < frames:
                    cmd[1:1] = ["-c", str(args.tshark_limit)]
                    n = args.tshark_limit
                tout = os.path.join(tmp, "tshark.txt")
                res = run_measured(cmd, tout)
                res["frames"] = n
                res["output"] = f"{count_lines(tout)} DCE/RPC frames"
                rows.append(("tshark 4.0 -Y dcerpc" + (f" (first {n} frames)" if n != frames else ""), res))
                print(_line(rows[-1]))
    write_results(args.results, path, frames, size_mb, walk_s, load, rows)
    print(f"results written to {args.results}")


def _line(row) -> str:
    name, r = row
    return (f"{name}: rc {r['rc']}, {r['frames']} frames, wall {r['wall']:.1f} s ({r['frames'] / r['wall']:,.0f} "
            f"frames/s), CPU {r['cpu']:.1f} s ({r['frames'] / max(r['cpu'], 1e-9):,.0f} frames/s), peak RSS "
            f"{r['maxrss_mb']:.0f} MB, peak anon {r['peak_anon_mb']:.0f} MB, {r['output']}"
            + (f"\n  stderr: {r['stderr'].strip()[-300:]}" if r["rc"] else ""))


def write_results(dest: Path, path, frames, size_mb, walk_s, load, rows):
    lines = [
        "# Events benchmark",
        "",
        f"Generated by `benchmarks/bench_events.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Capture: `{Path(path).name}` ({frames:,} frames, {size_mb:.0f} MB; a server-side capture of Outlook clients "
        "among bulk TCP and DNS noise made by `benchmarks/make_big_capture.py`).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other work (load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the start), Python {platform.python_version()}.",
        f"A bare Python walk over the pcap records (mmap + struct, no dissection) took {walk_s:.2f} s.",
        "",
        "| tool | load (1 min) | frames | wall s | frames/s (wall) | CPU s | frames/s (CPU) | peak RSS MB | peak anon MB "
        "| output |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['load']:.2f} | {r['frames']:,} | {r['wall']:.2f} | {r['frames'] / r['wall']:,.0f} | "
                     f"{r['cpu']:.1f} | {r['frames'] / max(r['cpu'], 1e-9):,.0f} | {r['maxrss_mb']:.0f} | "
                     f"{r['peak_anon_mb']:.0f} | "
                     f"{r['output'] if r['rc'] == 0 else 'exit ' + str(r['rc'])} |")
    lines += [
        "",
        "Peak RSS is ru_maxrss of the child (file pages it mapped count); peak anon is the largest RssAnon sampled "
        "every 20 ms from /proc/PID/status (mmap'ed file pages don't count). Targets (issue 2): native >= "
        "1,000,000 frames/s on one core, peak anonymous memory <= 300 MB.",
        "",
    ]
    for name, r in rows:
        if name.endswith("--profile") and r["rc"] == 0:
            lines += [f"`{name}` on the same file (seconds per stage, exclusive):", "", "```", r["stderr"].strip(),
                      "```", ""]
    section = "\n".join(lines)
    # results.md holds other sections too (written by hand from the other benchmarks): only the part between
    # the markers is this script's
    begin, end = "<!-- bench_events:begin -->", "<!-- bench_events:end -->"
    old = dest.read_text() if dest.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        section = head + begin + "\n" + section + "\n" + end + rest.split(end, 1)[1]
    dest.write_text(section)


if __name__ == "__main__":
    main()
