"""Schema migrations of the web service's database (Alembic), on a real SQLite file and a real PostgreSQL database:
from an empty database, from the schema of the previous release (0.1.0, made by create_all and kept in
tests/data/schema-0.1.0/), down and up again, and two processes starting on the same empty database at once."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from analyzer.web import auth
from analyzer.web.db import Base, Capture, Database
from analyzer.web.scheduler import claim_next_fair
from analyzer.web.schema import BASELINE, alembic_config, current_revision, head_revision, upgrade

BASELINE_SQL = Path(__file__).parent / "data" / "schema-0.1.0"


def schema_differences(url: str) -> list:
    """What Alembic's autogenerate would still have to change to make the database match the models."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def load_release_schema(url: str) -> None:
    """Create the 0.1.0 tables exactly as that release did, then put in a user and two captures."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.executescript((BASELINE_SQL / "sqlite.sql").read_text())
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute((BASELINE_SQL / "postgresql.sql").read_text())


def test_empty_database_gets_every_migration_and_matches_the_models(db_url):
    db = Database(db_url)
    try:
        assert db.schema_revisions == (None, head_revision())
        assert current_revision(db.engine) == head_revision()
        assert {"users", "login_sessions", "captures", "alembic_version"} <= set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()
    # A model changed without a migration would show up here (and in every other database made by migrations).
    assert schema_differences(db_url) == []
    again = Database(db_url)  # an up-to-date database is left as it is
    assert again.schema_revisions == (head_revision(), head_revision())
    again.dispose()


def test_previous_release_schema_is_upgraded_and_keeps_its_data(db_url):
    load_release_schema(db_url)
    engine = create_engine(db_url)
    assert current_revision(engine) == BASELINE  # recognised although it has no alembic_version table
    uploaded = dt.datetime(2026, 11, 30, 12, 0, 0)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name, token_hash, created_at) VALUES (7, 'olduser', :h, :t)"),
                     {"h": auth.hash_secret("mp_token-from-0.1.0"), "t": uploaded})
        for cid, status in (("00000000000000a1", "done"), ("00000000000000a2", "queued")):
            conn.execute(text("INSERT INTO captures (id, user_id, filename, size, sha256, uploaded_at, status, "
                              "attempts, result_json) VALUES (:id, 7, 'old.pcap', 10, :sha, :t, :st, 0, :res)"),
                         {"id": cid, "sha": "0" * 64, "t": uploaded, "st": status,
                          "res": '{"clients": [{"verdict": "push_ok"}]}' if status == "done" else None})
    engine.dispose()

    db = Database(db_url)
    try:
        assert db.schema_revisions == (BASELINE, head_revision())
        indexes = {ix["name"] for ix in inspect(db.engine).get_indexes("captures")}
        assert "ix_captures_user_uploaded" in indexes
        # the old rows are all there and the new code works on them
        assert auth.user_for_token(db, "mp_token-from-0.1.0").name == "olduser"
        with db.session() as s:
            done = s.get(Capture, "00000000000000a1")
            assert done.verdict_counts() == {"push_ok": 1} and done.uploaded_at == uploaded
        assert claim_next_fair(db) == "00000000000000a2"
    finally:
        db.dispose()
    assert schema_differences(db_url) == []


def test_downgrade_to_the_release_and_upgrade_again(db_url):
    db = Database(db_url)
    db.dispose()
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), BASELINE)
        assert current_revision(engine) == BASELINE
        assert "ix_captures_user_uploaded" not in {ix["name"] for ix in inspect(engine).get_indexes("captures")}
        assert upgrade(engine) == (BASELINE, head_revision())
    finally:
        engine.dispose()
    assert schema_differences(db_url) == []


def test_database_from_a_newer_mailpush_is_refused_with_a_message(db_url, capsys):
    from analyzer.cli import main
    from analyzer.web.db import DatabaseError

    Database(db_url).dispose()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(DatabaseError, match="revision 0099, made by a newer mailpush"):
        Database(db_url)
    assert main(["db", "status", "--db", db_url]) == 0
    assert "made by a newer mailpush" in capsys.readouterr().out
    assert main(["user", "add", "x", "--db", db_url]) == 2
    err = capsys.readouterr().err
    assert "newer mailpush" in err and "Traceback" not in err


def test_two_processes_starting_on_one_empty_postgresql_database(postgres_url):
    """`mailpush serve` and `mailpush user add` started together: the advisory lock lets one migrate, the other
    then finds the schema up to date (without it, both would try to CREATE TABLE and one would fail)."""
    outcomes: list = []

    def start():
        try:
            db = Database(postgres_url)
            outcomes.append(db.schema_revisions)
            db.dispose()
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            outcomes.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    head = head_revision()
    assert sorted(outcomes, key=str) == sorted([(None, head), (head, head), (head, head)], key=str)


def test_db_commands_show_and_upgrade_the_schema(tmp_path, capsys):
    from analyzer.cli import main

    url = "sqlite:///" + str(tmp_path / "release.db")
    load_release_schema(url)
    assert main(["db", "status", "--db", url]) == 0
    out = capsys.readouterr().out
    assert f"database revision: {BASELINE}" in out and f"newest revision: {head_revision()}" in out
    assert "upgrade pending" in out
    assert main(["db", "upgrade", "--db", url]) == 0
    assert f"upgraded the database schema from {BASELINE} to {head_revision()}" in capsys.readouterr().out
    assert main(["db", "status", "--db", url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "status", "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert "cannot open database" in err and "secret" not in err


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://", "postgresql+psycopg://"])
def test_postgresql_urls_use_psycopg3(postgres_url, scheme):
    db = Database(postgres_url.replace("postgresql+psycopg://", scheme))
    try:
        assert db.engine.dialect.driver == "psycopg"
        assert current_revision(db.engine) == head_revision()
    finally:
        db.dispose()
