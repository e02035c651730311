"""Benchmark (not a test): batch scoring of 200 sample-sized captures with --jobs 1 and --jobs 2.

Reports captures/s for each, the speed-up (target >= 1.8x on 2 cores) and the per-capture overhead of the batch
machinery (process pool start-up, scheduling, result writing; target < 20 ms), measured as

    (wall time of score(paths, jobs=1, output=...) - time of calling score_one() on each path in this process) / n

Each measurement is repeated (``--repeat``, interleaved) and the fastest run kept: on a shared machine the
slower runs measure the neighbours, not the batch.

The captures are the project's samples (captures/*) when generated, else the public captures, copied
round-robin under 200 distinct names into a temporary folder. The machine's load average is printed first:
the speed-up is only meaningful when the second core is idle.

    .venv/bin/python benchmarks/bench_batch.py [--captures 200] [--cli]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analyzer.batch import score  # noqa: E402
from analyzer.batch.worker import preload, score_one  # noqa: E402


def sample_files() -> list[Path]:
    samples = sorted(p for p in (ROOT / "captures").glob("*") if p.is_file() and p.suffix in
                     (".pcap", ".pcapng", ".cap", ".gz"))
    if samples:
        return samples
    public = ROOT.parent / "shared" / "captures" / "public"
    if not public.is_dir():
        public = Path("/work/shared/captures/public")
    return sorted(p for p in public.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captures", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest is reported")
    ap.add_argument("--cli", action="store_true", help="also time the `mailpush batch` command end to end")
    ap.add_argument("--big-frames", type=int, default=0, metavar="N",
                    help="instead of the samples, N-frame captures from make_big_capture.py (different seeds), so "
                    "that the analysis and not the pool's start-up dominates (issue 14: e.g. --captures 8 "
                    "--big-frames 100000)")
    ap.add_argument("--dask", action="store_true", help="also time a Dask LocalCluster of 2 single-thread workers")
    ap.add_argument("--max-load", type=float, default=0.0, metavar="L",
                    help="before each round wait (up to --wait s) until the 1-minute load average is below L")
    ap.add_argument("--wait", type=float, default=300.0)
    args = ap.parse_args()

    sources = sample_files()
    if not sources:
        print("no sample captures found", file=sys.stderr)
        return 1
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="mailpush-bench-batch-") as tmp:
        folder = Path(tmp) / "captures"
        folder.mkdir()
        paths = []
        for i in range(args.captures):
            if args.big_frames:
                dst = folder / f"{i:04d}-big.pcap"
                subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_big_capture.py"), str(dst),
                                "--frames", str(args.big_frames), "--clients", str(max(1, args.big_frames // 1000)),
                                "--seed", str(100 + i)], check=True, capture_output=True)
            else:
                src = sources[i % len(sources)]
                dst = folder / f"{i:04d}-{src.name}"
                shutil.copy(src, dst)
            paths.append(str(dst))
        size = sum(os.path.getsize(p) for p in paths)
        origin = f"make_big_capture.py, {args.big_frames} frames each" if args.big_frames else \
            f"{len(sources)} samples"
        print(f"{len(paths)} captures from {origin}, {size / 1e6:.1f} MB in total")

        preload()
        score_one(paths[0])  # warm caches (imports, page cache) before timing

        def inline_run():
            t = time.perf_counter()
            rows = [row for p in paths for row in score_one(p)]
            return time.perf_counter() - t, rows

        def batch_run(jobs):
            out = Path(tmp) / f"results-{jobs}.csv"
            t = time.perf_counter()
            table = score(paths, jobs=jobs, output=str(out), progress=False)
            return time.perf_counter() - t, table

        cluster = client = None
        if args.dask:
            from dask.distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)

        def dask_run():
            out = Path(tmp) / "results-dask.csv"
            t = time.perf_counter()
            table = score(paths, client=client, output=str(out), progress=False)
            return time.perf_counter() - t, table

        def quiet_enough():
            if not args.max_load:
                return
            deadline = time.monotonic() + args.wait
            while os.getloadavg()[0] >= args.max_load and time.monotonic() < deadline:
                time.sleep(5)

        best = {"inline": float("inf"), 1: float("inf"), 2: float("inf"), "dask": float("inf")}
        for _ in range(max(1, args.repeat)):
            quiet_enough()
            load = os.getloadavg()[0]
            dt, inline_rows = inline_run()
            best["inline"] = min(best["inline"], dt)
            line = [f"round at load {load:.2f}: inline {dt:.2f} s"]
            for jobs in (1, 2):
                dt, table = batch_run(jobs)
                best[jobs] = min(best[jobs], dt)
                line.append(f"--jobs {jobs} {dt:.2f} s")
            if client is not None:
                dt, dask_table = dask_run()
                best["dask"] = min(best["dask"], dt)
                line.append(f"dask x2 {dt:.2f} s")
            print(", ".join(line) + f" (load after {os.getloadavg()[0]:.2f})", flush=True)
        if client is not None:
            print(f"Dask LocalCluster, 2 workers: {best['dask']:.2f} s, {len(paths) / best['dask']:.1f} captures/s, "
                  f"{len(dask_table)} rows; speed-up vs --jobs 1: {best[1] / best['dask']:.2f}x")
            client.close()
            cluster.close()
        inline = best["inline"]
        errors = sum(1 for r in inline_rows if r["error"])
        print(f"in-process analysis, no batch machinery: {inline:.2f} s ({len(paths) / inline:.1f} captures/s), "
              f"{len(inline_rows)} rows, {errors} error rows")
        timings = {1: best[1], 2: best[2]}
        for jobs in (1, 2):
            print(f"--jobs {jobs}: {timings[jobs]:.2f} s, {len(paths) / timings[jobs]:.1f} captures/s, "
                  f"{len(table)} rows")
        speedup = timings[1] / timings[2]
        overhead_ms = (timings[1] - inline) / len(paths) * 1000
        print(f"speed-up --jobs 2 vs --jobs 1: {speedup:.2f}x (target >= 1.8x)")
        print(f"per-capture overhead of the batch machinery: {overhead_ms:.1f} ms (target < 20 ms)")

        if args.cli:
            for jobs in (1, 2):
                out = Path(tmp) / f"cli-{jobs}.csv"
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "analyzer", "batch", str(folder), "-o", str(out),
                                "--jobs", str(jobs)], check=False, capture_output=True, cwd=ROOT)
                wall = time.perf_counter() - t
                print(f"`mailpush batch --jobs {jobs}` end to end (with interpreter start-up): {wall:.2f} s, "
                      f"{len(paths) / wall:.1f} captures/s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
