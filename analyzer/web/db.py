"""Database of the web service: users, login sessions and capture jobs (SQLAlchemy 2).

SQLite file under the data directory by default (embedded, nothing to set up); PostgreSQL when a
``postgresql+psycopg://`` URL is given (psycopg 3: the optional ``postgres`` extra). A capture row *is* the job:
``queued -> running -> done | failed``, so a restarted server finds unfinished work in the table.
The schema is created and upgraded by the Alembic migrations in ``migrations/`` (see ``analyzer.web.schema``):
a change to the models below needs a new migration there (a test compares the two).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

# Job states of a capture.
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
STATUSES = (QUEUED, RUNNING, DONE, FAILED)

# A job that was "running" when the server stopped is re-queued at start-up; after this many starts it is
# marked failed instead, so one capture that kills the process cannot put the server in a crash loop.
MAX_ATTEMPTS = 3


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def iso(t: dt.datetime | None) -> str | None:
    """Timestamps are stored naive in UTC (SQLite keeps no zone); the API shows them as ISO-8601 with Z."""
    return None if t is None else t.isoformat(timespec="seconds") + "Z"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # sha256 hex of the API token
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LoginSession(Base):
    """Browser session made by the login form; the cookie holds a random id, the table only its sha256."""

    __tablename__ = "login_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Capture(Base):
    __tablename__ = "captures"
    # a user's captures newest first, paged (the list and the per-user queue length)
    __table_args__ = (Index("ix_captures_user_uploaded", "user_id", "uploaded_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # random hex, also the stored file's name
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))  # sanitised client filename: display text only
    size: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # CaptureResult.to_dict() as JSON: reports and plots are re-rendered from it with CaptureResult.from_dict.
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def result(self) -> dict | None:
        return None if self.result_json is None else json.loads(self.result_json)

    def verdict_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for client in (self.result or {}).get("clients", []):
            counts[client["verdict"]] = counts.get(client["verdict"], 0) + 1
        return counts


class DatabaseError(Exception):
    """A database URL that cannot be used; the message is meant for the person who typed it."""


class Database:
    def __init__(self, url: str, migrate: bool = True):
        """``migrate``: bring the schema to the newest revision first (creating it in an empty database)."""
        self.url = url = _normalise_url(url)
        try:
            self.engine = _make_engine(url)
        except (ArgumentError, ModuleNotFoundError, ImportError) as exc:
            hint = " (install the postgres extra: pip install 'mailpush[postgres]')" if "postgres" in url else ""
            raise DatabaseError(f"cannot use database {_safe(url)}: {exc}{hint}") from None
        if migrate:
            from analyzer.web.schema import SchemaError, upgrade

            try:
                self.schema_revisions = upgrade(self.engine)
            except DBAPIError as exc:  # server down, wrong password, unwritable SQLite directory…
                self.engine.dispose()
                raise DatabaseError(f"cannot open database {_safe(url)}: {exc.orig}") from None
            except SchemaError as exc:
                self.engine.dispose()
                raise DatabaseError(f"cannot use database {_safe(url)}: {exc}") from None
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def dispose(self) -> None:
        self.engine.dispose()

    # --- jobs ---------------------------------------------------------------------------------------------

    def recover_interrupted(self) -> tuple[int, int]:
        """At start-up: jobs left ``running`` by a stopped server go back to the queue (or fail after
        MAX_ATTEMPTS starts). Returns (requeued, given_up). Assumes one server process per database."""
        with self.session.begin() as s:
            gave_up = s.execute(
                update(Capture)
                .where(Capture.status == RUNNING, Capture.attempts >= MAX_ATTEMPTS)
                .values(status=FAILED, finished_at=utcnow(),
                        error=f"analysis was interrupted {MAX_ATTEMPTS} times (the server stopped while "
                              "analysing this capture); not retried again")
            ).rowcount
            requeued = s.execute(
                update(Capture).where(Capture.status == RUNNING).values(status=QUEUED, started_at=None)
            ).rowcount
        return requeued, gave_up

    def finish_job(self, capture_id: str, *, result: dict | None, error: str | None) -> None:
        with self.session.begin() as s:
            s.execute(
                update(Capture)
                .where(Capture.id == capture_id, Capture.status == RUNNING)
                .values(status=FAILED if error else DONE, finished_at=utcnow(), error=error,
                        result_json=None if result is None else json.dumps(result))
            )


def default_db_url(data_dir: str | Path) -> str:
    return "sqlite:///" + str(Path(data_dir).resolve() / "mailpush.db")


def _normalise_url(url: str) -> str:
    """``postgres://`` (as many hosting services write it) is ``postgresql://``; a bare ``postgresql://`` means
    psycopg 3 (the project's postgres extra), or psycopg2 when only that older driver is installed."""
    import importlib.util

    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):  # (SQLAlchemy 2.0 alone would pick psycopg2 here, 2.1 psycopg 3)
        if importlib.util.find_spec("psycopg") is not None:
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        elif importlib.util.find_spec("psycopg2") is not None:
            url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return repr(make_url(url).render_as_string(hide_password=True))
    except Exception:
        return repr(url.split("@")[-1])


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # check_same_thread off: the worker threads and the request threads share the pool (each connection is
        # still used by one thread at a time). timeout: wait for the write lock instead of failing at once.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers (page polls) do not block the workers' writes
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)
