"""The pipeline: ingest -> dissect -> correlate -> verdict, for one capture or many.

This is the one entry point the CLI, batch scoring, the web service and the notebooks use::

    result = analyze_capture("x.pcap")                  # CaptureResult; never raises for a bad capture
    results = analyze(["a.pcap", "b.cap.gz"])           # list[CaptureResult]
    df = results_dataframe(results)                      # one row per (capture, client)
    doc = results_document(results)                      # the `mailpush analyze --format json` document
"""

from __future__ import annotations

from typing import Callable, Iterable

from analyzer import __version__
from analyzer.verdict.model import CaptureResult

# Columns of results_dataframe (one row per capture and client; a capture without clients gives one row with
# empty client and verdict "inconclusive" / cause "no_emsmdb_session", or with `error` set).
RESULT_COLUMNS = [
    "file", "format", "compressed", "frames", "start", "end", "duration_s", "vantage", "error", "warnings",
    "client", "mailbox", "server", "verdict", "cause", "confidence", "reason", "callback", "register_status",
    "notifications", "polls", "poll_interval_s", "server_poll_interval_s", "evidence_frames", "filter", "remedy",
]


def analyze_capture(
    path: str,
    engine: str = "native",
    vantage: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> CaptureResult:
    """Analyse one capture. Unreadable input gives a CaptureResult with ``error`` set (never an exception).

    ``progress(bytes_done, bytes_total)`` is called now and then while reading (for progress bars).
    """
    from analyzer.correlate import correlate
    from analyzer.dissect import dissect_capture
    from analyzer.ingest import CaptureError
    from analyzer.verdict import build_capture_result, judge_clients

    try:
        events, info = dissect_capture(path, engine=engine, progress=progress)
    except CaptureError as exc:
        return CaptureResult(file=str(path), error=str(exc))
    except OSError as exc:
        return CaptureResult(file=str(path), error=f"cannot read {path}: {exc.strerror or exc}")
    correlation = correlate(events, info, vantage=vantage)
    verdicts = judge_clients(correlation)
    return build_capture_result(info, correlation, verdicts)


def analyze(paths: Iterable[str], engine: str = "native", vantage: str = "auto") -> list[CaptureResult]:
    return [analyze_capture(p, engine=engine, vantage=vantage) for p in paths]


def results_document(results: Iterable[CaptureResult]) -> dict:
    return {"tool": "mailpush", "version": __version__, "captures": [r.to_dict() for r in results]}


def result_rows(result: CaptureResult) -> list[dict]:
    base = {
        "file": result.file,
        "format": result.format,
        "compressed": result.compressed,
        "frames": result.frames,
        "start": result.to_dict()["start"],
        "end": result.to_dict()["end"],
        "duration_s": round(result.duration_s, 6),
        "vantage": result.vantage,
        "error": result.error,
        "warnings": "; ".join(result.warnings),
    }
    if not result.clients:
        row = dict.fromkeys(RESULT_COLUMNS)
        row.update(base)
        row.update(client="", verdict="inconclusive", cause="no_emsmdb_session" if not result.error else None,
                   notifications=0, polls=0)
        if result.error:
            row["verdict"] = None
        return [row]
    rows = []
    for c in result.clients:
        d = c.to_dict()
        row = dict(base)
        for k in ("client", "mailbox", "server", "verdict", "cause", "confidence", "reason", "callback",
                  "register_status", "notifications", "polls", "poll_interval_s", "server_poll_interval_s",
                  "filter", "remedy"):
            row[k] = d[k]
        row["evidence_frames"] = " ".join(str(e["frame"]) for e in d["evidence"])
        rows.append(row)
    return rows


def results_dataframe(results: Iterable[CaptureResult]):
    import pandas as pd

    rows = [row for r in results for row in result_rows(r)]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
