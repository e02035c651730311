"""Creating and upgrading the web service's database schema with Alembic (migrations in analyzer/web/migrations).

Every program that opens the database (``mailpush serve``, ``mailpush user``, ``mailpush db upgrade``) brings it
to the newest revision first:
* an empty database gets the whole schema by running every migration from the first;
* a database made by mailpush 0.1.0 (tables but no ``alembic_version``: that release used ``create_all``) is
  recognised as the baseline revision and upgraded from there;
* an up-to-date database is left alone (one SELECT of ``alembic_version``).
On PostgreSQL the upgrade holds an advisory lock, so two processes starting at once do not both migrate.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema of mailpush 0.1.0, the last release without Alembic
# pg_advisory_xact_lock key: any constant that no other application on the same server is likely to use
_LOCK_KEY = 0x6D61696C70757368 & 0x7FFFFFFFFFFFFFFF  # "mailpush"


class SchemaError(Exception):
    """The database's schema cannot be brought to this mailpush's revision (message meant for the operator)."""


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revision(revision: str | None) -> bool:
    """False for a revision made by a newer mailpush (its migration is not in this package)."""
    if revision is None:
        return True
    return revision in {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    """The database's revision; ``BASELINE`` for an unversioned 0.1.0 database, None for an empty one."""
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
        if rev is None and _is_unversioned_release(conn):
            return BASELINE
        return rev


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``target``; returns (revision before, revision after)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        cfg = alembic_config(conn)
        before = MigrationContext.configure(conn).get_current_revision()
        if before is None and _is_unversioned_release(conn):
            command.stamp(cfg, BASELINE)
            before = BASELINE
        if not known_revision(before):
            raise SchemaError(f"the database schema is at revision {before}, made by a newer mailpush than this "
                              f"one (which knows revisions up to {head_revision()}); upgrade mailpush")
        if before != head_revision() or target != "head":
            command.upgrade(cfg, target)
        after = MigrationContext.configure(conn).get_current_revision()
    return before, after


def _is_unversioned_release(conn: Connection) -> bool:
    return "captures" in inspect(conn).get_table_names()
