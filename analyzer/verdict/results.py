"""Table and document forms of verdict results (pure functions of CaptureResult).

Used by reports, batch scoring, the web service and notebooks; ``analyzer.pipeline`` re-exports them.
"""

from __future__ import annotations

from typing import Iterable

from analyzer import __version__
from analyzer.verdict.model import CaptureResult

# Columns of results_dataframe (one row per capture and client; a capture without clients gives one row with
# empty client and verdict "inconclusive" / cause "no_emsmdb_session", or with `error` set).
RESULT_COLUMNS = [
    "file", "format", "compressed", "frames", "start", "end", "duration_s", "vantage", "error", "warnings",
    "client", "mailbox", "server", "verdict", "cause", "confidence", "reason", "callback", "register_status",
    "notifications", "polls", "poll_interval_s", "server_poll_interval_s", "evidence_frames", "filter", "remedy",
]


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
