"""`mailpush events CAPTURE --format csv|json|parquet [-o FILE] [--engine native|tshark] [--secrets FILE] [--profile]`.

CSV and parquet are written from the events' columns without pandas (``event_columns``; the CSV byte-identical to
what ``DataFrame.to_csv`` wrote before): on big.pcap (1,000,000 frames, 25,977 events) importing pandas, building
the DataFrame and writing took 0.85-0.93 CPU s (parquet) and 1.27-1.51 (CSV) after the dissection, the plain
columns 0.36-0.40 and 0.44-0.50 (2026-12-01, load 0.8; benchmarks/results.md). The parquet file is written by
analyzer.parquet without pyarrow or numpy: 0.09 CPU s against 0.16-0.18 for pyarrow from the columns (same values,
nulls and dtypes read back; 2026-12-01 05:00 UTC, load 1.1-1.3); with dictionaries and GZIP pages since, 0.07-0.08
CPU s and 0.40 MB against pyarrow's 0.77 MB (06:27 UTC). JSON keeps ``DataFrame.to_json``."""

from __future__ import annotations

import os
import sys

from analyzer.cli import EXIT_NO_CAPTURE, EXIT_OK, EXIT_USAGE, run_profiled

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
    p.add_argument("--profile", action="store_true",
                   help="print the time per stage (ingest, pre-filter, TCP, DCE/RPC, output) on standard error")
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
    return run_profiled(PROG, args, _run)[0]


def _run(args, clock=None) -> int:
    from analyzer.gcpause import paused_gc
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
    with paused_gc():  # as in analyze: the collector's passes over the events find nothing to free
        return _dissect_and_write(args, secrets, clock)


def _dissect_and_write(args, secrets, clock) -> int:
    from analyzer.dissect import dissect_capture
    from analyzer.ingest import CaptureError
    from analyzer.report.safe_text import escape_controls

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
    if clock is not None:
        clock.frames = info.frames
        clock.enter("output")
    try:
        return _write(args, events)
    finally:
        if clock is not None:
            clock.leave()


def _write(args, events) -> int:
    from analyzer.dissect.model import event_columns

    # None when a cell is not of its column's plain type: then pandas converts, as it always did
    columns = event_columns(events) if args.format in ("csv", "parquet") else None
    try:
        if args.format == "parquet":
            if columns is None or not write_parquet(columns, args.output):
                from analyzer.dissect import events_to_dataframe

                events_to_dataframe(events).to_parquet(args.output, index=False)
            return EXIT_OK
        if args.format == "csv":
            if columns is not None:
                text = csv_text(columns)
            else:
                from analyzer.dissect import events_to_dataframe
                from analyzer.report.safe_text import neutralise_frame

                text = neutralise_frame(events_to_dataframe(events)).to_csv(index=False)
        else:
            from analyzer.dissect import events_to_dataframe

            text = events_to_dataframe(events).to_json(orient="records", indent=1) + "\n"
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


def csv_text(columns: dict[str, list]) -> str:
    """The events CSV from :func:`~analyzer.dissect.model.event_columns`, byte for byte what
    ``neutralise_frame(events_to_dataframe(events)).to_csv(index=False)`` gives: <NA> as an empty cell, floats
    as numpy formats them for pandas, text cells neutralised against formula injection
    (analyzer.report.safe_text), minimal quoting.

    When no text cell holds a character that needs quoting (comma, double quote, CR, LF), each line is the cells
    joined by commas, which is all the ``csv`` writer pandas uses would do with them; otherwise that writer
    writes the table. On big.pcap: 0.20-0.25 s with the ``csv`` writer, ~0.1 s joined."""
    from analyzer.dissect.model import EVENT_COLUMNS
    from analyzer.report.safe_text import FORMULA_STARTS

    # "\0" separates the cells of a column joined into one string, so that substring searches over the column find
    # a cell that starts like a formula or needs quoting (a "\0" inside a cell can only send the column down the
    # slower path for nothing, never give a wrong cell)
    formula_starts = tuple("\0" + c for c in FORMULA_STARTS)
    cells = []
    plain = True
    for name, dtype in EVENT_COLUMNS.items():
        column = columns[name]
        if dtype == "string":
            column = [v or "" for v in column]  # None -> ""
            joined = "\0".join(column)
            if joined.startswith(FORMULA_STARTS) or any(f in joined for f in formula_starts):
                column = ["'" + v if v.startswith(FORMULA_STARTS) else v for v in column]
                joined = "\0".join(column)
            plain = plain and not any(c in joined for c in ',"\r\n')
        elif dtype == "float64":
            # pandas writes float columns as numpy's str() of each value, NaN as an empty cell. For a float that is
            # Python's repr: both write the shortest digits that read back as the same float, in exponent form
            # below 1e-4 and from 1e16 on (1.2 M values checked, random bit patterns and edge values included;
            # tests/test_events_writers.py). So numpy is not imported for it (~0.1 s, issue 14).
            column = ["" if v != v else t for v, t in zip(column, map(repr, column))]
        elif dtype == "bool":
            column = ["True" if v else "False" for v in column]
        elif column:
            # ints and None only (event_columns checked): "None" can come from nothing but a None
            column = "\0".join(map(str, column)).replace("None", "").split("\0")
        cells.append(column)
    header = ",".join(EVENT_COLUMNS) + "\n"
    if plain:
        return header + "".join(map("%s\n".__mod__, map(",".join, zip(*cells))))
    import csv
    import io

    buf = io.StringIO()
    buf.write(header)
    csv.writer(buf, lineterminator="\n").writerows(zip(*cells))
    return buf.getvalue()


def write_parquet(columns: dict[str, list], path: str) -> bool:
    """The events table as parquet, from the columns, by :mod:`analyzer.parquet` (no pyarrow, pandas or numpy):
    the documented dtypes come back from ``pandas.read_parquet`` (the "pandas" metadata), the values and nulls are
    those of the file ``events_to_dataframe(events).to_parquet(path, index=False)`` writes. When that writer refuses
    a value (analyzer.parquet.write_table), pyarrow writes the file (:func:`write_parquet_pyarrow`). False, and
    nothing written, when neither takes the columns: the caller then goes through pandas."""
    from analyzer import __version__
    from analyzer.dissect.model import EVENT_COLUMNS
    from analyzer.parquet import pandas_metadata, write_table

    metadata = {"pandas": pandas_metadata(EVENT_COLUMNS, ("mailpush", __version__), installed_version("pandas"))}
    if write_table(path, columns, EVENT_COLUMNS, metadata, created_by=f"mailpush version {__version__}"):
        return True
    return write_parquet_pyarrow(columns, path)


def installed_version(name: str) -> str | None:
    """The version of the installed distribution ``name`` from its ``NAME-VERSION.dist-info`` directory on
    sys.path, without importing it or importlib.metadata (30-50 ms, measured 2026-12-01); None when not found."""
    prefix = name + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for entry_name in names:
            if entry_name.startswith(prefix) and entry_name.endswith(".dist-info"):
                return entry_name[len(prefix):-len(".dist-info")]
    return None


def write_parquet_pyarrow(columns: dict[str, list], path: str) -> bool:
    """The events table as parquet, written by pyarrow from the columns, without pandas: the same file
    ``events_to_dataframe(events).to_parquet(path, index=False)`` writes (schema, the pandas metadata that makes
    ``pandas.read_parquet`` restore the documented dtypes, snappy compression). False, and nothing written, when a
    value does not fit its arrow type (``event_arrow_arrays``)."""
    import json
    from importlib.metadata import version

    import pyarrow as pa
    import pyarrow.parquet as pq

    from analyzer.dissect.model import EVENT_COLUMNS, event_arrow_arrays

    # what pyarrow's Table.from_pandas records for these dtypes (pandas_type, numpy_type)
    kinds = {"int64": ("int64", "int64"), "Int64": ("int64", "Int64"), "float64": ("float64", "float64"),
             "string": ("object", "string"), "bool": ("bool", "bool")}
    pandas_metadata = {
        "index_columns": [],
        "column_indexes": [],
        "columns": [{"name": name, "field_name": name, "pandas_type": kinds[dtype][0], "numpy_type": kinds[dtype][1],
                     "metadata": None} for name, dtype in EVENT_COLUMNS.items()],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": version("pandas"),
    }
    arrays = event_arrow_arrays(columns)
    if arrays is None:
        return False
    table = pa.Table.from_arrays(arrays, names=list(EVENT_COLUMNS))
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_metadata).encode("utf-8")})
    pq.write_table(table, path, compression="snappy")
    return True
