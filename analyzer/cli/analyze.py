"""`mailpush analyze CAPTURE... [--format text|json|csv|html] [-o FILE] [--plots DIR] [--vantage auto|client|server]
[--engine native|tshark] [--fail-on VERDICT[,VERDICT]] [--verbose] [--secrets FILE] [--merge] [--max-capture-gb GB]
[--max-compression-ratio R] [--tmp-dir DIR] [--profile] [--jobs N|auto]`.

``--merge`` merges a client-side and a server-side capture of one incident: the two captures given, or, with more,
every pair that shares a MAPI session. Without it, such pairs are only proposed (on stderr and in the JSON).

Exit status: 0 the analysis ran (whatever the verdicts), 1 ``--fail-on`` matched a client's verdict, 2 usage
error, 3 no capture could be read at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from analyzer.cli import EXIT_FAIL_ON, EXIT_NO_CAPTURE, EXIT_OK, EXIT_USAGE, run_profiled
from analyzer.cli.events import output_problem
from analyzer.cli.limits import add_limit_args, apply_limit_args, limit_problem
from analyzer.verdict.model import VERDICTS

PROG = "mailpush analyze"
# Reading runs at tens of MB/s, so smaller files finish before a bar would tell anything.
PROGRESS_MIN_BYTES = 20 * 1024 * 1024
COMPRESSED_SUFFIXES = (".gz", ".gzip")


def _verdict_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VERDICTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown verdict {', '.join(map(repr, unknown)) or repr(text)}; choose from {', '.join(VERDICTS)} "
            "(comma-separated)")
    return names


def register(sub) -> None:
    p = sub.add_parser(
        "analyze", help="verdict per Outlook client: is push notification registered, blocked, or not used, and why",
        description="Analyse captures of Outlook/Exchange EMSMDB traffic: per client, whether new-mail push "
        "notification (EcRRegisterPushNotification + UDP) works, the cause when it does not, the evidence frames, "
        "a Wireshark display filter and a remedy.")
    p.add_argument("captures", nargs="+", metavar="CAPTURE",
                   help="pcap, pcapng or NetMon file, optionally gzip-compressed")
    p.add_argument("--format", choices=("text", "json", "csv", "html"), default="text",
                   help="text (default): a table and the reasons; json: the documented document; csv: one row "
                   "per client; html: one self-contained report with the plots embedded")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report here instead of standard output")
    p.add_argument("--plots", metavar="DIR",
                   help="write timing plots (PNG and SVG) per client as DIR/<capture stem>.timeline-<client>.png ...")
    p.add_argument("--vantage", choices=("auto", "client", "server"), default="auto",
                   help="where the capture was taken (default: inferred)")
    p.add_argument("--engine", choices=("native", "tshark"), default="native",
                   help="dissector: the built-in one (default) or tshark")
    p.add_argument("--verbose", action="store_true",
                   help="list every warning (by default warnings about connections that carry no MAPI traffic "
                   "are counted in one line; --format json always has them all)")
    p.add_argument("--secrets", metavar="FILE", default=None,
                   help="decrypt NTLMSSP-sealed (packet privacy) sessions with the accounts in FILE: lines "
                   "DOMAIN\\user:password, user:password or user::NTHASH (default: $MAILPUSH_SECRETS_FILE)")
    p.add_argument("--fail-on", metavar="VERDICT[,VERDICT]", type=_verdict_list, default=[],
                   help=f"exit 1 when any client gets one of these verdicts ({', '.join(VERDICTS)})")
    add_limit_args(p)
    p.add_argument("--merge", action="store_true",
                   help="merge a client-side and a server-side capture of one incident (two captures: those two; "
                   "more: every pair that shares a MAPI session): clock offset, and per notification datagram "
                   "whether it left the server and reached the client")
    p.add_argument("--profile", action="store_true",
                   help="print the wall time per stage (ingest, pre-filter, TCP, DCE/RPC, correlate, verdict, "
                   "output) on standard error when done")
    p.add_argument("--jobs", metavar="N", type=_jobs, default=1,
                   help="split each large capture over N worker processes (auto: one per core); the result is "
                   "identical to one core. Captures under 64 MB, gzip input, --secrets and --engine tshark are "
                   "read on one core (default 1)")
    p.set_defaults(func=run)


def _jobs(text: str) -> int:
    from analyzer.dissect.parallel import jobs_count

    try:
        return jobs_count(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of 1 or more, or auto") from None


class _Progress:
    """tqdm bar on stderr, only for long files and only when stderr is a terminal (never in logs or pipes)."""

    def __init__(self, path: str, enabled: bool = True):
        self.bar = None
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        self.enabled = enabled and size >= PROGRESS_MIN_BYTES and sys.stderr.isatty()
        self.name = Path(path).name

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=self.name,
                            file=sys.stderr, leave=False, dynamic_ncols=True)
        self.bar.update(max(0, done - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def printable_path(path: str) -> str:
    """The path as reports show it. A file name that is not valid UTF-8 reaches Python with lone surrogates
    (PEP 383), which no UTF-8 output can hold (the CSV writer died on one with UnicodeEncodeError): such bytes are
    shown as \\xNN, as ls -b does."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _analyze_one(path: str, engine: str, vantage: str, secrets=None, keep_correlation: bool = False,
                 jobs: int = 1, progress: bool = True):
    """CaptureResult, or (CaptureResult, CorrelationResult or None) with ``keep_correlation`` (for --merge)."""
    from analyzer.pipeline import analyze_capture_detailed
    from analyzer.verdict.model import CaptureResult

    progress = _Progress(path, enabled=progress)

    def notice(text: str) -> None:
        print(f"{PROG}: {printable_path(path)}: {text}", file=sys.stderr)

    try:
        result, correlation = analyze_capture_detailed(path, engine=engine, vantage=vantage, progress=progress,
                                                       secrets=secrets, jobs=jobs, notice=notice)
        result.file = printable_path(result.file)
    except Exception as exc:  # a bug below must not cost the other captures' results
        if os.environ.get("MAILPUSH_DEBUG"):
            traceback.print_exc()
        result, correlation = CaptureResult(file=printable_path(path), error=f"analysis failed "
                                            f"({type(exc).__name__}: {exc}); set MAILPUSH_DEBUG=1 for the "
                                            "traceback"), None
    finally:
        progress.close()
    return (result, correlation) if keep_correlation else result


def _analyze_several(args, secrets, jobs: int, clock):
    """(CaptureResult, CorrelationResult or None) per capture, in the order given, from a pool of ``jobs`` forked
    processes that die with this one. Each capture is read on one core (splitting one capture pays less than
    analysing two at once). What a worker prints (notices) is printed here, in capture order. A worker that dies
    turns the captures being analysed into error results (which one killed it cannot be told), and the rest go to
    a new pool, as ``mailpush batch`` does."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from analyzer.verdict.model import CaptureResult

    context = multiprocessing.get_context("fork")
    paths = list(args.captures)
    done: dict[int, tuple] = {}
    queue = list(range(len(paths)))[::-1]
    shown = 0
    died = "analysis failed: the worker process died (crash or out of memory)"
    while queue or shown < len(paths):
        with ProcessPoolExecutor(max_workers=min(jobs, len(queue) or 1), mp_context=context,
                                 initializer=_pool_worker_start) as pool:
            running: dict = {}
            while queue or running:
                while queue and len(running) < jobs:  # no more than running: a broken pool costs only those
                    i = queue.pop()
                    running[pool.submit(_analyze_in_worker, paths[i], args.engine, args.vantage, secrets,
                                        bool(args.merge), clock is not None)] = i
                if clock is not None:
                    clock.enter("workers")  # waiting for the pool
                try:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                finally:
                    if clock is not None:
                        clock.leave()
                broken = False
                for future in finished:
                    i = running.pop(future)
                    try:
                        done[i] = future.result()
                    except BrokenProcessPool:
                        broken = True
                        done[i] = (CaptureResult(file=printable_path(paths[i]), error=died), None, [], None)
                if broken:
                    for i in running.values():
                        done[i] = (CaptureResult(file=printable_path(paths[i]), error=died), None, [], None)
                    running.clear()
                while shown in done:
                    result, correlation, notices, profile = done.pop(shown)
                    shown += 1
                    for line in notices:
                        print(line, file=sys.stderr)
                    if clock is not None and profile is not None:
                        from analyzer.dissect.parallel import add_profile

                        add_profile(clock, profile)
                    yield result, correlation
                if broken:
                    break


def _pool_worker_start() -> None:
    from analyzer.lifetime import set_parent_death_signal

    set_parent_death_signal()
    if os.getppid() == 1:
        os._exit(1)  # the parent died before the signal was armed


def _analyze_in_worker(path: str, engine: str, vantage: str, secrets, keep_correlation: bool, profile: bool):
    """One capture in a pool worker: (result, correlation or None, notices, stage times or None)."""
    import contextlib
    import io

    from analyzer.stagetimes import profiling

    err = io.StringIO()
    with contextlib.redirect_stderr(err), (profiling() if profile else contextlib.nullcontext()) as clock:
        result, correlation = _analyze_one(path, engine, vantage, secrets, keep_correlation=True, progress=False)
    notices = [line for line in err.getvalue().splitlines() if line]
    return result, correlation if keep_correlation else None, notices, \
        (clock.seconds, clock.cpu) if clock is not None else None


def _merge(args, paths, results, correlations, proposals) -> list:
    """MergedIncidents for --merge: the two captures given, else the proposed pairs. A failure inside the merge
    of one pair gives that pair a not-merged incident with the reason; it never costs the report."""
    from analyzer.merge import MergeResult
    from analyzer.pipeline import merge_pair
    from analyzer.verdict.transit import MergedIncident

    pairs = [(0, 1)] if len(paths) == 2 else [(i, j) for i, j, _why in proposals]
    incidents = []
    for i, j in pairs:
        detailed = {paths[i]: (results[i], correlations[i]), paths[j]: (results[j], correlations[j])}
        try:
            incident = merge_pair(paths[i], paths[j], engine=args.engine, vantage=args.vantage, detailed=detailed)
        except Exception as exc:  # noqa: BLE001 - a bug in the merge must not cost the verdicts already made
            if os.environ.get("MAILPUSH_DEBUG"):
                traceback.print_exc()
            incident = MergedIncident(MergeResult(
                client_file=paths[i], server_file=paths[j], status="not_read",
                message=f"not merged: merge failed ({type(exc).__name__}: {exc}); set MAILPUSH_DEBUG=1 for the "
                "traceback"))
        shown = {paths[i]: results[i].file, paths[j]: results[j].file}  # printable names, as the captures show
        incident.merge.client_file = shown.get(incident.merge.client_file, incident.merge.client_file)
        incident.merge.server_file = shown.get(incident.merge.server_file, incident.merge.server_file)
        incidents.append(incident)
        print(f"{PROG}: {incident.merge.message}", file=sys.stderr)
    if not pairs:
        print(f"{PROG}: --merge: no two of these captures share a MAPI session (same mailbox, callback or client "
              "and server): nothing merged", file=sys.stderr)
    return incidents


def _plot_prefixes(results) -> list[str]:
    """'{capture file stem}.' per capture (x.pcap and x.pcap.gz both give 'x.'); a repeated stem (same name in two
    folders) gets '-2', '-3' ..."""
    seen: dict[str, int] = {}
    prefixes = []
    for r in results:
        name = Path(r.file).name
        for suffix in COMPRESSED_SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        stem = Path(name).stem
        seen[stem] = seen.get(stem, 0) + 1
        prefixes.append(f"{stem}." if seen[stem] == 1 else f"{stem}-{seen[stem]}.")
    return prefixes


def run(args) -> int:
    status, clock = run_profiled(PROG, args, _run)
    workers = getattr(clock, "workers", None)
    if workers is not None:  # --jobs: what the forked workers spent, summed over them
        print(f"{PROG}: the forked workers' stages (--jobs; seconds summed over the workers: with one capture, "
              "shares 2..N of it, the table above being share 1, read in this process; with several, every "
              "capture)", file=sys.stderr)
        print(workers.report(frames=None, startup=False), file=sys.stderr)
    return status


def _run(args, clock=None) -> int:
    from analyzer.report.formats import capture_problems, render_csv, render_json, render_text
    from analyzer.report.safe_text import escape_controls

    if problem := limit_problem(args):
        print(f"{PROG}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    apply_limit_args(args)
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        print(f"{PROG}: --plots {args.plots}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    # An output path that cannot work is a usage error found before the analysis, not after it
    if args.output and (problem := output_problem(args.output)):
        print(f"{PROG}: cannot write {args.output}: {problem}", file=sys.stderr)
        return EXIT_USAGE

    from analyzer.cli.events import secrets_from_args

    secrets, problem = secrets_from_args(args)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return EXIT_USAGE

    if args.merge and len(args.captures) < 2:
        print(f"{PROG}: --merge needs two captures (the client side and the server side of one incident)",
              file=sys.stderr)
        return EXIT_USAGE

    several = len(args.captures) > 1
    jobs = getattr(args, "jobs", 1)
    results, correlations = [], []
    if several and jobs > 1:  # several captures: up to `jobs` of them at once, each on one core
        analysed = _analyze_several(args, secrets, jobs, clock)
    else:  # one capture is split over `jobs` cores (analyzer.dissect.parallel)
        analysed = (_analyze_one(path, args.engine, args.vantage, secrets, keep_correlation=True, jobs=jobs)
                    for path in args.captures)
    for result, correlation in analysed:
        results.append(result)
        # the correlations are kept only for a merge; proposals need the results alone
        correlations.append(correlation if args.merge else None)
        for line in capture_problems(result, verbose=args.verbose):
            print(f"{PROG}: {escape_controls(result.file)}: {line}", file=sys.stderr)

    proposals = []
    incidents = None
    if several:
        from analyzer.pipeline import propose_pairs

        proposals = propose_pairs(results)
        if args.merge:
            incidents = _merge(args, list(args.captures), results, correlations, proposals)
        else:
            from analyzer.report.merged import proposals_text

            for line in proposals_text(results, proposals):
                print(f"{PROG}: {line}", file=sys.stderr)
    named_proposals = [(results[i].file, results[j].file, why) for i, j, why in proposals]
    if clock is not None:
        clock.frames = sum(r.frames or 0 for r in results)
        clock.enter("output")
    try:
        return _write_report(args, results, incidents, named_proposals)
    finally:
        if clock is not None:
            clock.leave()


def _write_report(args, results, incidents, named_proposals) -> int:
    from analyzer.gcpause import paused_gc
    from analyzer.report.formats import render_csv, render_json, render_text

    with paused_gc():  # the report documents are large trees of fresh dicts and lists, and hold no cycles
        if args.format == "json":
            text = render_json(results, incidents=incidents, proposals=named_proposals)
        elif args.format == "csv":
            text = render_csv(results)
        elif args.format == "html":
            from analyzer.report.html import render_html

            text = render_html(results, incidents=incidents)
        else:  # problems went to stderr already; a report file keeps them so it stands on its own
            text = render_text(results, include_problems=bool(args.output), verbose=args.verbose,
                               incidents=incidents)

    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"{PROG}: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise  # `mailpush analyze x | head`: the reader left, not an error (main() handles it)
        except OSError as exc:  # e.g. stdout redirected to a full disk
            print(f"{PROG}: cannot write standard output: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE

    if args.plots:
        from analyzer.report.plots import write_plots

        written = 0
        for result, prefix in zip(results, _plot_prefixes(results)):
            if result.clients:
                try:
                    written += len(write_plots(result, args.plots, prefix=prefix))
                except OSError as exc:
                    print(f"{PROG}: cannot write plots to {args.plots}: {exc.strerror or exc}", file=sys.stderr)
                    return EXIT_USAGE
        if incidents:
            from analyzer.report.merged_plot import write_merged_plots

            for incident in incidents:
                if incident.merge.merged:
                    try:
                        written += len(write_merged_plots(incident, args.plots))
                    except OSError as exc:
                        print(f"{PROG}: cannot write plots to {args.plots}: {exc.strerror or exc}", file=sys.stderr)
                        return EXIT_USAGE
        print(f"{PROG}: {written} plot file(s) in {args.plots}", file=sys.stderr)

    if all(r.error for r in results):
        return EXIT_NO_CAPTURE
    merged_verdicts = [v for inc in incidents or [] for v in inc.verdicts]
    if args.fail_on and any(c.verdict in args.fail_on for r in results for c in r.clients) or \
            args.fail_on and any(v.verdict in args.fail_on for v in merged_verdicts):
        return EXIT_FAIL_ON
    return EXIT_OK
