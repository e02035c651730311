#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Benchmark (not a test): `mailpush events` (native engine) against tshark on the same big capture.

    .venv/bin/python benchmarks/bench_events.py [CAPTURE] [--frames 1000000] [--tshark-limit N] [--no-tshark]
                                                [--analyze] [--jobs N[,N...]] [--rounds 5] [--max-others 0.25]
                                                [--wait 300] [--results benchmarks/results.md]

Without CAPTURE it generates benchmarks/data/big.pcap (git-ignored) with make_big_capture.py first, unless it
is already there with the requested frame count. For each tool it runs one child process and reports:

* wall time and CPU time (user + sys of the child, from wait4), and frames/s on each;
* peak RSS (ru_maxrss from wait4: includes file pages the child mapped or touched);
* peak anonymous memory: the largest RssAnon seen in /proc/PID/status, sampled every 20 ms while it runs
  (heap and other private memory; mmap'ed file pages don't count), summed over the child and its own children
  (the workers of ``analyze --jobs``). Sampling can miss a spike shorter than 20 ms.

Each mailpush command runs ``--rounds`` times (default 5), interleaved round by round; before each round the script
waits (up to ``--wait`` s in all) until the rest of the machine uses fewer than ``--max-others`` cores (from
/proc/stat, benchmarks/quiet.py). A row reports the fastest run (its CPU time, memory and the cores the rest of the
machine used meanwhile) and the median wall time: on a shared VM whose speed drifts the slower runs measure the
neighbours. The package's bytecode is compiled first (``compileall``), as ``pip install`` does: an editable install
leaves it to the first run, and with PYTHONDONTWRITEBYTECODE set (some shells and CI images) every run would
compile ~40 modules again, 0.07-0.1 s here.

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
import statistics
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
sys.path.insert(0, str(HERE))
from quiet import machine_cpu, wait_quiet  # noqa: E402


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
    machine0 = machine_cpu()
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
    cpu = ru.ru_utime + ru.ru_stime
    # what the rest of the machine ran meanwhile (this script's sampler thread included: ~0.01 core)
    others = max(0.0, machine_cpu() - machine0 - cpu) / wall
    return {"cmd": cmd, "rc": proc.returncode, "wall": wall, "cpu": cpu,
            "maxrss_mb": ru.ru_maxrss / 1024, "peak_anon_mb": peak_anon / 1024,
            "stderr": stderr.decode("utf-8", "replace")[-2000:], "load": load, "others": others}


def fastest(runs: list[dict]) -> dict:
    """The fastest run, with the median wall time and the run count of all of them and the largest memory."""
    best = dict(min(runs, key=lambda r: r["wall"] if r["rc"] == 0 else float("inf")))
    best["median_wall"] = statistics.median(r["wall"] for r in runs)
    best["runs"] = len(runs)
    best["peak_anon_mb"] = max(r["peak_anon_mb"] for r in runs)
    best["maxrss_mb"] = max(r["maxrss_mb"] for r in runs)
    return best


def compile_bytecode(python: str) -> str:
    """Compile the installed package's bytecode (module docstring: why); returns the package directory."""
    where = subprocess.run([python, "-c", "import analyzer, os; print(os.path.dirname(analyzer.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([python, "-m", "compileall", "-q", where], check=True, stdout=subprocess.DEVNULL)
    return where


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
    ap.add_argument("--rounds", type=int, default=5, help="interleaved runs of each mailpush command (fastest and "
                    "median reported)")
    ap.add_argument("--max-others", type=float, default=0.25, metavar="CORES",
                    help="before each round wait until the rest of the machine uses fewer cores than this")
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for a quiet machine, in all")
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
    print(f"bytecode compiled in {compile_bytecode(sys.executable)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "events.csv")
        parquet = os.path.join(tmp, "events.parquet")
        report = os.path.join(tmp, "analyze.json")
        # (row name, command, check of its output -> text for the table)
        commands = [
            ("mailpush events (native)", [mailpush, "events", str(path), "--format", "csv", "-o", out],
             lambda: event_kinds(out)),
            ("mailpush events --format parquet", [mailpush, "events", str(path), "--format", "parquet", "-o", parquet],
             lambda: parquet_rows(parquet)),
        ]
        if args.analyze:
            commands.append(("mailpush analyze --format json",
                             [mailpush, "analyze", str(path), "--format", "json", "-o", report],
                             lambda: verdict_agreement(path, report)))
            for n in jobs:
                split = os.path.join(tmp, f"analyze-{n}.json")

                def same_as_one_core(split=split):
                    same = Path(split).read_bytes() == Path(report).read_bytes()
                    return "report identical to one core" if same else "REPORT DIFFERS FROM ONE CORE"

                commands.append((f"mailpush analyze --format json --jobs {n}",
                                 [mailpush, "analyze", str(path), "--format", "json", "-o", split, "--jobs", str(n)],
                                 same_as_one_core))
        runs: dict[str, list[dict]] = {name: [] for name, _cmd, _check in commands}
        outputs: dict[str, str] = {}
        deadline = time.monotonic() + args.wait
        for round_no in range(1, max(1, args.rounds) + 1):
            others = wait_quiet(args.max_others, deadline)
            line = [f"round {round_no}: others {others:.2f} cores before"]
            for name, cmd, check in commands:
                res = run_measured(cmd, os.devnull)
                runs[name].append(res)
                if res["rc"] == 0 and name not in outputs:
                    outputs[name] = check()
                line.append(f"{name.removeprefix('mailpush ')} {res['wall']:.2f} s")
            print("; ".join(line))
        for name, _cmd, _check in commands:
            res = fastest(runs[name])
            res["frames"] = frames
            res["output"] = outputs.get(name, "failed")
            rows.append((name, res))
            print(_line(rows[-1]))
        # once more with --profile: where the time goes (the stage tables are kept for the results file)
        profiled = [("mailpush events --format parquet --profile",
                     [mailpush, "events", str(path), "--format", "parquet", "-o", parquet, "--profile"],
                     lambda: parquet_rows(parquet))]
        if args.analyze:
            profiled.append(("mailpush analyze --format json --profile",
                             [mailpush, "analyze", str(path), "--format", "json", "-o", report, "--profile"],
                             lambda: verdict_agreement(path, report)))
        for name, cmd, check in profiled:
            wait_quiet(args.max_others, deadline)
            res = run_measured(cmd, os.devnull)
            res["frames"] = frames
            res["output"] = check() if res["rc"] == 0 else "failed"
            rows.append((name, res))
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
                wait_quiet(args.max_others, deadline)
                res = run_measured(cmd, tout)
                res["frames"] = n
                res["output"] = f"{count_lines(tout)} DCE/RPC frames"
                rows.append(("tshark 4.0 -Y dcerpc" + (f" (first {n} frames)" if n != frames else ""), res))
                print(_line(rows[-1]))
    write_results(args.results, path, frames, size_mb, walk_s, load, rows)
    print(f"results written to {args.results}")


def _line(row) -> str:
    name, r = row
    runs = (f" (fastest of {r['runs']}, median {r['median_wall']:.2f} s)" if r.get("runs", 1) > 1 else "")
    return (f"{name}: rc {r['rc']}, {r['frames']} frames, wall {r['wall']:.2f} s{runs} "
            f"({r['frames'] / r['wall']:,.0f} frames/s), others {r['others']:.2f} cores, CPU {r['cpu']:.2f} s ({r['frames'] / max(r['cpu'], 1e-9):,.0f} frames/s), peak RSS "
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
        "| tool | load (1 min) | others (cores) | frames | runs | wall s (fastest) | frames/s (wall) | median wall s "
        "| CPU s | frames/s (CPU) | peak RSS MB | peak anon MB | output |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['load']:.2f} | {r['others']:.2f} | {r['frames']:,} | {r.get('runs', 1)} | "
                     f"{r['wall']:.2f} | {r['frames'] / r['wall']:,.0f} | {r.get('median_wall', r['wall']):.2f} | "
                     f"{r['cpu']:.2f} | {r['frames'] / max(r['cpu'], 1e-9):,.0f} | {r['maxrss_mb']:.0f} | "
                     f"{r['peak_anon_mb']:.0f} | "
                     f"{r['output'] if r['rc'] == 0 else 'exit ' + str(r['rc'])} |")
    lines += [
        "",
        "Wall, CPU and others are those of the fastest run; others = the cores the rest of the machine used during "
        "it (/proc/stat minus the child's CPU time). "
        "Peak RSS is ru_maxrss of the child (file pages it mapped count); peak anon is the largest RssAnon sampled "
        "every 20 ms from /proc/PID/status (mmap'ed file pages don't count), the largest over the runs. "
        "Targets (issues 2 and 14): `analyze --format json` and `events --format parquet` >= 1,000,000 frames/s end "
        "to end (wall, warm cache), peak anonymous memory <= 300 MB.",
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
