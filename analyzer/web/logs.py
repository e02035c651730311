"""Structured logs of the web service: one line per HTTP request and one per job state change.

``mailpush serve --log-format json`` writes every log line (ours, uvicorn's, the workers') as one JSON object:
``{"time": "...Z", "level": "info", "logger": "...", "message": "...", "event": "request"|"job", ...fields}``.
The default ``text`` format is the same information for people: ``time LEVEL logger: message key=value ...``.

Request lines carry method, path (never the query string, which can hold a ``next`` URL), status, duration_ms,
client and user (when authenticated); job lines carry capture, state and, when finished, seconds and error.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time

access_log = logging.getLogger("mailpush.web.access")
job_log = logging.getLogger("mailpush.web.jobs")

# Attributes every LogRecord has; anything else on a record came in through ``extra=`` and is a field of the line.
# (uvicorn adds color_message, the same text with terminal colour codes.)
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName",
                                                                             "color_message"}
LOG_FORMATS = ("text", "json")


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _time(record: logging.LogRecord) -> str:
    t = dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": _time(record), "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage()}
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items() if k != "event" and v is not None)
        text = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            text += "  " + fields
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(log_format: str = "text", level: int = logging.INFO, stream=None) -> None:
    """One handler on the root logger with the chosen format; uvicorn's loggers are routed through it (they are
    configured with ``log_config=None`` by ``mailpush serve``)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Alembic says which plugins and dialect it set up on every start; the schema revision is in our start line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def job_state(capture_id: str, state: str, **fields) -> None:
    """A capture's job changed state (queued, running, done, failed, requeued ...): one line."""
    fields = {k: v for k, v in fields.items() if v is not None}
    job_log.info("job %s %s", capture_id, state, extra={"event": "job", "capture": capture_id, "state": state,
                                                          **fields})


def install_request_log(app) -> None:
    """Middleware writing one line per request when its response starts (or when it raised)."""

    @app.middleware("http")
    async def request_line(request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            fields = {"event": "request", "method": request.method, "path": request.url.path, "status": status,
                      "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                      "client": request.client.host if request.client else None,
                      "user": getattr(request.state, "user_name", None)}
            access_log.info("%s %s %d", request.method, request.url.path, status, extra=fields)
