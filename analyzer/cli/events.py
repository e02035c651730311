"""`mailpush events CAPTURE --format csv|json|parquet [-o FILE] [--engine native|tshark]`."""

from __future__ import annotations

import sys

from analyzer.cli import EXIT_NO_CAPTURE, EXIT_OK, EXIT_USAGE


def register(sub) -> None:
    p = sub.add_parser("events", help="dissect a capture into the events table (one row per DCE/RPC PDU, "
                       "candidate UDP notification and ICMP error)")
    p.add_argument("capture", help="pcap, pcapng or NetMon file, optionally gzip-compressed")
    p.add_argument("--format", choices=("csv", "json", "parquet"), default="csv")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    p.add_argument("--engine", choices=("native", "tshark"), default="native")
    p.set_defaults(func=run)


def run(args) -> int:
    from analyzer.dissect import dissect_capture, events_to_dataframe
    from analyzer.ingest import CaptureError

    if args.format == "parquet" and not args.output:
        print("mailpush events: --format parquet needs -o FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        events, info = dissect_capture(args.capture, engine=args.engine)
    except CaptureError as exc:
        print(f"mailpush events: {args.capture}: {exc}", file=sys.stderr)
        return EXIT_NO_CAPTURE
    except OSError as exc:
        print(f"mailpush events: {args.capture}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NO_CAPTURE
    for w in info.warnings:
        print(f"mailpush events: warning: {args.capture}: {w}", file=sys.stderr)
    df = events_to_dataframe(events)
    if args.format == "parquet":
        df.to_parquet(args.output, index=False)
        return EXIT_OK
    if args.format == "csv":
        text = df.to_csv(index=False)
    else:
        text = df.to_json(orient="records", indent=1) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK
