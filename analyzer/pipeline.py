"""The pipeline: ingest -> dissect -> correlate -> verdict, for one capture or many.

This is the one entry point the CLI, batch scoring, the web service and the notebooks use::

    result = analyze_capture("x.pcap")                  # CaptureResult; never raises for a bad capture
    results = analyze(["a.pcap", "b.cap.gz"])           # list[CaptureResult]
    df = results_dataframe(results)                      # one row per (capture, client)
    doc = results_document(results)                      # the `mailpush analyze --format json` document
"""

from __future__ import annotations

from typing import Callable, Iterable

from analyzer.verdict.model import CaptureResult
from analyzer.verdict.results import (  # noqa: F401  (re-exported: the pipeline's public API)
    RESULT_COLUMNS,
    result_rows,
    results_dataframe,
    results_document,
)


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


