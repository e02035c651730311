"""`mailpush events CAPTURE --format csv|json|parquet [-o FILE] [--engine native|tshark] [--secrets FILE]`."""

from __future__ import annotations

import os
import sys

from analyzer.cli import EXIT_NO_CAPTURE, EXIT_OK, EXIT_USAGE

PROG = "mailpush events"


def register(sub) -> None:
    p = sub.add_parser("events", help="dissect a capture into the events table (one row per DCE/RPC PDU, "
                       "candidate UDP notification and ICMP error)")
    p.add_argument("capture", help="pcap, pcapng or NetMon file, optionally gzip-compressed")
    p.add_argument("--format", choices=("csv", "json", "parquet"), default="csv")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    p.add_argument("--engine", choices=("native", "tshark"), default="native")
    p.add_argument("--secrets", metavar="FILE", default=None,
                   help="decrypt NTLMSSP-sealed (packet privacy) sessions with the accounts in FILE: lines "
                   "DOMAIN\\user:password, user:password or user::NTHASH (default: $MAILPUSH_SECRETS_FILE)")
    p.set_defaults(func=run)


def output_problem(path: str) -> str | None:
    """Why the report cannot be written to ``path`` (checked before a long analysis, not after), or None.
    Write errors that only show when writing (full disk, permissions for root) are still caught there."""
    if os.path.isdir(path):
        return "is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"directory {parent} does not exist"
    return None


def secrets_from_args(args):
    """(Secrets or None, problem or None) from ``--secrets`` or $MAILPUSH_SECRETS_FILE. The problem text never
    quotes the file's content."""
    from analyzer.dissect.secrets import SecretsError, load_secrets

    try:
        return load_secrets(getattr(args, "secrets", None)), None
    except SecretsError as exc:
        return None, str(exc)


def run(args) -> int:
    from analyzer.dissect import dissect_capture, events_to_dataframe
    from analyzer.report.safe_text import escape_controls
    from analyzer.ingest import CaptureError
    from analyzer.pipeline import not_a_regular_file

    if args.format == "parquet" and not args.output:
        print(f"{PROG}: --format parquet needs -o FILE", file=sys.stderr)
        return EXIT_USAGE
    if args.output and (problem := output_problem(args.output)):
        print(f"{PROG}: cannot write {args.output}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    secrets, problem = secrets_from_args(args)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    problem = not_a_regular_file(args.capture)
    if problem:
        print(f"{PROG}: {args.capture}: {problem}", file=sys.stderr)
        return EXIT_NO_CAPTURE
    try:
        events, info = dissect_capture(args.capture, engine=args.engine, secrets=secrets)
    except CaptureError as exc:
        print(f"{PROG}: {escape_controls(args.capture)}: {exc}", file=sys.stderr)
        return EXIT_NO_CAPTURE
    except OSError as exc:
        print(f"{PROG}: {escape_controls(args.capture)}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NO_CAPTURE
    for w in info.warnings:
        print(f"{PROG}: warning: {escape_controls(args.capture)}: {escape_controls(w)}", file=sys.stderr)
    df = events_to_dataframe(events)
    try:
        if args.format == "parquet":
            df.to_parquet(args.output, index=False)
            return EXIT_OK
        if args.format == "csv":
            from analyzer.report.safe_text import neutralise_frame

            text = neutralise_frame(df).to_csv(index=False)  # no formula injection from capture strings
        else:
            text = df.to_json(orient="records", indent=1) + "\n"
        if args.output:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        else:
            sys.stdout.write(text)
    except BrokenPipeError:
        raise  # `mailpush events x | head`: the reader left, not an error (main() handles it)
    except OSError as exc:
        print(f"{PROG}: cannot write {args.output or 'standard output'}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
