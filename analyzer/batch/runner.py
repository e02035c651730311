"""Scoring many captures: expand the inputs, skip what RESULTS already has, run ``score_one`` on a local process
pool or a Dask cluster, write rows as captures finish, return one sorted table."""

from __future__ import annotations

import glob
import multiprocessing
import os
import stat
import sys
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

import pandas as pd

from analyzer.batch.store import ResultsStore, rows_frame, sort_rows
from analyzer.batch.worker import error_row, is_url, preload, score_chunk, score_one_limited, sha256_file

GLOB_CHARS = set("*?[")


# -- inputs ----------------------------------------------------------------------------------------------------

# A name that says "capture": such a file is always scored, so that a wrong one gets an error row saying why.
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".ntar", ".pcap.gz", ".pcapng.gz", ".cap.gz", ".pcap.gzip",
                    ".pcapng.gzip", ".cap.gzip")


def has_capture_suffix(path: str) -> bool:
    return path.lower().endswith(CAPTURE_SUFFIXES)


def looks_like_capture(path: str) -> bool:
    """Content sniffing (as ``open_capture`` does) for files found inside folders: a capture magic number, gzip'd
    or not. Raises OSError when the file cannot be read."""
    import zlib

    from analyzer.ingest.sniff import SNIFF_BYTES, is_gzip, sniff_format

    with open(path, "rb") as fh:
        head = fh.read(4096)
    if is_gzip(head):
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 64)
        except zlib.error:
            return False
    return sniff_format(head[:SNIFF_BYTES]) is not None


def display_path(path: str) -> str:
    """The path as rows show it: bytes of a non-UTF-8 name (lone surrogates, PEP 383) as \\xNN, like ls -b."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def identity(path: str) -> str:
    """One spelling per file: ``b1/x``, ``./b1/x`` and ``b1//x`` are the same capture (URLs are left alone)."""
    if is_url(path):
        return path
    if path.startswith("file://"):
        return "file://" + os.path.normpath(path[len("file://"):])
    return os.path.normpath(path)


def expand_paths(paths: Iterable[str]) -> tuple[list[str], int]:
    """Files, folders (recursed) and globs -> (capture paths in a stable order, files skipped in folders).

    Named files (and glob matches) are always scored, so a wrong file gets an error row. Inside folders, a file
    is scored when it claims to be a capture: a capture extension (.pcap, .pcapng, .cap, optionally .gz) or a
    capture magic number; one that cannot be read, and a FIFO, device or socket (never opened: a FIFO would
    hang the batch), are scored too, and become error rows saying why. Only files with neither a capture
    extension nor a capture magic (a README beside the captures) are skipped, and counted.
    """
    out: list[str] = []
    skipped = 0

    def walk(folder: str) -> None:
        nonlocal skipped
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                try:
                    mode = os.stat(full).st_mode  # never blocks, whatever the file is
                except OSError:
                    out.append(full)  # e.g. a dangling link: an error row names it
                    continue
                if not stat.S_ISREG(mode) or has_capture_suffix(name):
                    out.append(full)
                    continue
                try:
                    claims = looks_like_capture(full)
                except OSError:
                    claims = True  # unreadable: an error row, never a silent skip
                if claims:
                    out.append(full)
                else:
                    skipped += 1

    for p in paths:
        p = str(p)
        if is_url(p):
            out.append(p)
        elif os.path.isdir(p):
            walk(p)
        elif os.path.lexists(p) or not (GLOB_CHARS & set(p)):
            out.append(p)  # a missing named file becomes an error row
        else:
            for match in sorted(glob.glob(p, recursive=True)):
                if os.path.isdir(match):
                    walk(match)
                else:
                    out.append(match)
    seen: set[str] = set()
    unique = []
    for p in map(identity, out):
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique, skipped


# -- executors -------------------------------------------------------------------------------------------------

def _pool_context():
    # fork: workers inherit the parent's imported pipeline (preloaded below), so they start in milliseconds;
    # spawn would re-import scapy/pandas in every worker (~1-2 s each).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else methods[0])


def _pool_worker_start() -> None:
    """Pool initializer: die with the batch (a ``kill -9`` of the batch must not leave workers scoring for a
    minute), then preload the pipeline."""
    from analyzer.lifetime import set_parent_death_signal

    set_parent_death_signal()
    if os.getppid() == 1:
        os._exit(1)  # the batch died before the signal was armed
    preload()


def run_local(paths: list[str], jobs: int, secrets=None, hashes: dict[str, str] | None = None
              ) -> Iterator[tuple[str, list[dict]]]:
    """(path, rows) as captures finish, on a local process pool. A worker that dies (crash, out of memory)
    turns the captures it held into error rows and the pool is restarted for the rest.

    Captures go to the workers in small chunks (up to 8, and at least 8 chunks per worker so the load stays
    balanced): a small capture is analysed in ~4 ms, and a pool round trip per capture cost about as much again
    (measured: per-capture tasks gave 1.13x on 2 cores, where the analysis alone scales further)."""
    preload()
    size = max(1, min(8, len(paths) // (jobs * 8)))
    queue = [paths[i : i + size] for i in range(0, len(paths), size)][::-1]
    window = max(2, jobs * 4)  # bounded number of submitted tasks: thousands of paths don't all queue at once
    died = "analysis failed: the worker process died (crash or out of memory)"
    while queue:
        broken = False
        with ProcessPoolExecutor(max_workers=jobs, mp_context=_pool_context(), initializer=_pool_worker_start) as ex:
            running = {}
            while queue or running:
                while queue and len(running) < window:
                    chunk = queue.pop()
                    known = {p: hashes[p] for p in chunk if p in hashes} if hashes else None
                    running[ex.submit(score_chunk, chunk, secrets, known)] = chunk
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    chunk = running.pop(fut)
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        results = [(p, [error_row(p, None, died)]) for p in chunk]
                    except Exception as exc:
                        results = [(p, [error_row(p, None, f"analysis failed: {type(exc).__name__}: {exc}")])
                                   for p in chunk]
                    yield from results
                if broken:
                    for chunk in running.values():
                        for p in chunk:
                            yield p, [error_row(p, None, died)]
                    running.clear()
                    break
        if not broken:
            return


# The environment a Dask worker process of a batch should start with. dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536,
# and any explicit malloc setting also stops glibc from raising its mmap threshold (128 KiB) dynamically, so every
# large array of the analysis is mmap'd, zero-filled and unmapped again, and the heap is trimmed and regrown.
# Measured on a 100,000-frame capture (best of 8 in one process started with each environment; 2026-12-01, 2 cores,
# load 2.7): dask's variable alone 35,000 minor page faults and 0.035-0.040 s of system time per capture on ~0.19 s
# of user time (+20 % CPU); no variable (glibc's defaults) 4,500-5,400 faults, 0.015-0.024 s; a 32 MiB mmap and a
# 64 MiB trim threshold (the maxima glibc's dynamic thresholds reach on 64-bit) ~500 faults, 0.008-0.011 s. In the
# task thread of a local_cluster worker, 8 such captures: 103,000 faults and 0.33-0.42 s of system time with the
# mmap threshold alone, 11,100 and 0.24-0.26 s with both, as in a process-pool worker (11,000-11,500, 0.20-0.26 s).
WORKER_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}

# dask configuration for local_cluster, measured on 2 single-thread workers (2026-12-01, 2 shared cores):
# * the statistical profiler samples the task thread's stack every 10 ms for the dashboard's profile page, which
#   local_cluster does not serve: with it on and off, alternated, 8 x 100,000-frame captures took 2.98-3.38
#   against 2.68-3.00 CPU s in the workers (-11 %; load 3.9-4.6, so indicative only);
# * the event loops' 20 ms tick (it only detects a blocked loop, for a warning) and the 100 ms memory monitor kept
#   the idle cluster (scheduler, nannies, workers) at 0.09 cores; with a 1 s tick 0.037, and a 1 s memory monitor
#   (a worker over its memory limit is still stopped, within a second) 0.019. Busy, each tick also takes the GIL
#   from the analysis.
CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
}


def local_cluster(n_workers: int = 2, **kwargs):
    """A ``distributed.LocalCluster`` suited to batch scoring: ``n_workers`` processes of one thread each (the
    analysis is CPU-bound Python: threads would share one GIL), no dashboard, no statistical profiler and slower
    housekeeping timers (``CLUSTER_CONFIG``), and the workers' malloc mmap and trim thresholds at 32 and 64 MiB
    (``WORKER_ENVIRONMENT``, whatever this process's environment says). Keyword arguments go to ``LocalCluster``.

    Use it as ``with local_cluster(2) as cluster, distributed.Client(cluster) as client: score(paths,
    client=client)``. Workers started by ``dask worker`` get the same settings from that command's environment:
    ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=67108864 dask worker ...`` (docs/batch.md, with the
    dask settings)."""
    import dask
    from distributed import LocalCluster

    options = dict(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
    options.update(kwargs)
    # The nannies copy the configuration when they are created, and keep it for restarts. dask takes a variable
    # already in this process's environment over its configuration, and every nanny copies its own variables into
    # that environment (a LocalCluster with dask's defaults started earlier leaves MALLOC_TRIM_THRESHOLD_=65536
    # there), so the variables are set here too while the cluster starts, and put back after.
    environ = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENVIRONMENT.items()}
    saved = {k: os.environ.get(k) for k in WORKER_ENVIRONMENT}
    os.environ.update(WORKER_ENVIRONMENT)
    try:
        with dask.config.set({**environ, **CLUSTER_CONFIG}):
            return LocalCluster(**options)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_dask(paths: list[str], client, secrets=None, hashes: dict[str, str] | None = None
             ) -> Iterator[tuple[str, list[dict]]]:
    """(path, rows) as captures finish, on a dask.distributed cluster. The workers need mailpush installed and
    must be able to read the paths (a shared filesystem, or fsspec URLs). ``secrets`` travel to the workers with
    the tasks (use a TLS scheduler address when the cluster is not local). ``hashes``: sha256 already known, by
    path."""
    from distributed import as_completed

    # Workers run in their own working directories (often on other hosts): send absolute paths, keep the
    # user's spelling for the results.
    on_workers = [p if is_url(p) else os.path.abspath(p) for p in paths]
    from dataclasses import asdict

    from analyzer.ingest.limits import current

    limits = asdict(current())  # --max-capture-gb / --max-compression-ratio travel with the task
    known = [(hashes or {}).get(p) for p in paths]
    futures = client.map(score_one_limited, on_workers, paths, known, limits=limits, secrets=secrets, pure=False)
    by_key = {f.key: p for f, p in zip(futures, paths)}
    for fut in as_completed(futures):
        path = by_key[fut.key]
        try:
            rows = fut.result()
        except Exception as exc:  # KilledWorker, lost connection, ...
            rows = [error_row(path, None, f"analysis failed on the cluster: {type(exc).__name__}: {exc}")]
        fut.release()
        yield path, rows


# -- the whole batch -------------------------------------------------------------------------------------------

def _resume_hash(path: str) -> str | None:
    """sha256 of a local regular file, or None (URLs, FIFOs and devices are never read here: a FIFO would block;
    unreadable files are scored, and their error row says why)."""
    if is_url(path):
        return None
    try:
        return sha256_file(path) if stat.S_ISREG(os.stat(path).st_mode) else None
    except OSError:
        return None


class BatchReport:
    """What a batch did, for the one-line summary."""

    def __init__(self):
        self.inputs = 0
        self.scored = 0
        self.resumed = 0
        self.skipped_in_folders = 0

    def summary(self, table: pd.DataFrame) -> str:
        errors = int(table["error"].notna().sum()) if len(table) else 0
        verdicts = Counter(v for v, e in zip(table["verdict"], table["error"]) if pd.isna(e) and pd.notna(v))
        parts = [f"{self.scored} captures scored"]
        if self.resumed:
            parts.append(f"{self.resumed} already in results")
        if self.skipped_in_folders:
            parts.append(f"{self.skipped_in_folders} non-capture files skipped")
        per_verdict = ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items())) or "no verdicts"
        return f"batch: {'; '.join(parts)}; {len(table)} rows: {per_verdict}; errors {errors}"


def score(
    paths: Iterable[str],
    jobs: int | None = None,
    client=None,
    *,
    scheduler: str | None = None,
    output: str | None = None,
    fmt: str | None = None,
    resume: bool = False,
    progress: bool | None = None,
    report: BatchReport | None = None,
    on_rows: Callable[[str, list[dict]], None] | None = None,
    secrets=None,
) -> pd.DataFrame:
    """Score captures; one row per (capture, client) with ``BATCH_COLUMNS``, sorted by file then client.

    ``jobs``: local worker processes (default: CPU count). ``client``: a ``distributed.Client`` to run on instead;
    ``scheduler``: its address (``tcp://host:8786``), connected to here. ``output``: RESULTS file written as
    captures finish (``fmt`` csv|parquet|jsonl, default from the suffix); ``resume`` skips captures whose
    sha256 RESULTS already has, and their rows are part of the returned table. ``progress``: a tqdm bar on
    stderr (default: when stderr is a terminal).
    """
    report = report or BatchReport()
    todo, report.skipped_in_folders = expand_paths(paths)
    report.inputs = len(todo)

    store = ResultsStore(output, fmt) if output else None
    kept = rows_frame([])
    hashes: dict[str, str] = {}
    if store is not None and resume:
        kept = store.load()
        done = {h for h in kept["sha256"].dropna().astype(str) if h}
        if done:
            # hashlib releases the GIL: one thread per core hashes the captures side by side (0.88 s of CPU for
            # 735 MB here); the workers reuse these hashes instead of reading every capture a second time
            from concurrent.futures import ThreadPoolExecutor

            threads = max(1, min(len(todo), os.cpu_count() or 1))
            with ThreadPoolExecutor(threads) as pool:
                found = list(pool.map(_resume_hash, todo))
            remaining = []
            for p, h in zip(todo, found):
                if h is not None and h in done:
                    report.resumed += 1
                    continue
                if h is not None:
                    hashes[p] = h
                remaining.append(p)
            todo = remaining
    if store is not None:
        store.start(kept if resume else None)

    own_client = None
    if client is None and scheduler:
        from distributed import Client

        client = own_client = Client(scheduler)
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress and todo:
        from tqdm import tqdm

        # no monitor thread: the local pool forks after the bar exists, and forking a threaded parent is unsafe
        tqdm.monitor_interval = 0
        bar = tqdm(total=len(todo), unit="capture", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    new_rows: list[dict] = []
    try:
        if not todo:
            source: Iterable = ()
        elif client is not None:
            source = run_dask(todo, client, secrets, hashes)
        else:
            source = run_local(todo, max(1, int(jobs or os.cpu_count() or 1)), secrets, hashes)
        for path, rows in source:
            for row in rows:
                if isinstance(row.get("file"), str):
                    row["file"] = display_path(row["file"])
            new_rows.extend(rows)
            report.scored += 1
            if store is not None:
                store.append(rows)
            if on_rows is not None:
                on_rows(path, rows)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if own_client is not None:
            own_client.close()
        if store is not None:
            store.close()

    table = sort_rows(pd.concat([kept, rows_frame(new_rows)], ignore_index=True) if len(kept) else
                      rows_frame(new_rows))
    if store is not None:
        store.finish(table)
    return table
