"""`mailpush batch PATH... -o RESULTS [--jobs N] [--scheduler ADDRESS] [--resume] [--format csv|parquet|jsonl]
[--secrets FILE]`."""

from __future__ import annotations

import os
import sys

from analyzer.cli import EXIT_NO_CAPTURE, EXIT_OK, EXIT_USAGE
from analyzer.cli.limits import add_limit_args, apply_limit_args, limit_problem


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
    add_limit_args(p)
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
    if problem := limit_problem(args):
        print(f"mailpush batch: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # a RESULTS path that cannot work is found before anything is scored, not after
    if problem := _results_problem(args.output):
        print(f"mailpush batch: cannot write {args.output}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    apply_limit_args(args)
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


def _results_problem(path: str) -> str | None:
    """Why RESULTS cannot be written (a directory, an unwritable or uncreatable folder), or None. Checked before
    the first capture is scored."""
    if os.path.isdir(path):
        return "is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)  # RESULTS' folder is created, as before
    except OSError as exc:
        return f"cannot create directory {parent}: {exc.strerror or exc}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "is not writable"
    return None
