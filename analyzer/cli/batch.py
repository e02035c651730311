"""`mailpush batch PATH... -o RESULTS [--jobs N] [--scheduler ADDRESS] [--resume] [--format csv|parquet|jsonl]
[--secrets FILE]`."""

from __future__ import annotations

import os
import sys

from analyzer.cli import EXIT_NO_CAPTURE, EXIT_OK, EXIT_USAGE


def register(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="score many captures into one table (one row per capture and client)",
        description="Score many captures into one results table, one row per (capture, client). Rows are "
        "written as captures finish, so an interrupted batch keeps its work; --resume skips captures already "
        "in RESULTS (same sha256).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="capture files, folders (recursed; non-captures inside are skipped) or globs")
    p.add_argument("-o", "--output", metavar="RESULTS", required=True, help="results file (csv, parquet or jsonl)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help=f"local worker processes (default: number of cores, {os.cpu_count()})")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on an existing Dask cluster, e.g. tcp://host:8786 (workers must read the paths)")
    p.add_argument("--resume", action="store_true", help="skip captures whose sha256 is already in RESULTS")
    p.add_argument("--format", choices=("csv", "parquet", "jsonl"), default=None,
                   help="results format (default: from the RESULTS suffix, else csv)")
    p.add_argument("--secrets", metavar="FILE", default=None,
                   help="decrypt NTLMSSP-sealed (packet privacy) sessions with the accounts in FILE: lines "
                   "DOMAIN\\user:password, user:password or user::NTHASH (default: $MAILPUSH_SECRETS_FILE)")
    p.set_defaults(func=run)


def run(args) -> int:
    from analyzer.batch import BatchReport, score

    if args.jobs is not None and args.jobs < 1:
        print("mailpush batch: --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs is not None and args.scheduler:
        print("mailpush batch: --jobs and --scheduler exclude each other", file=sys.stderr)
        return EXIT_USAGE
    from analyzer.cli.events import secrets_from_args

    secrets, problem = secrets_from_args(args)
    if problem:
        print(f"mailpush batch: {problem}", file=sys.stderr)
        return EXIT_USAGE
    report = BatchReport()
    try:
        table = score(args.paths, jobs=args.jobs, scheduler=args.scheduler, output=args.output, fmt=args.format,
                      resume=args.resume, report=report, secrets=secrets)
    except (OSError, ValueError) as exc:
        print(f"mailpush batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # e.g. the Dask scheduler cannot be reached
        print(f"mailpush batch: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(report.summary(table), file=sys.stderr)
    if report.inputs == 0:
        print("mailpush batch: no captures found in the given paths", file=sys.stderr)
        return EXIT_NO_CAPTURE
    if len(table) and table["error"].notna().all():
        return EXIT_NO_CAPTURE  # not one capture could be read or analysed
    return EXIT_OK
