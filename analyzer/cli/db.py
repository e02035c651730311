"""`mailpush db status|upgrade [--db URL] [--data-dir DIR]`: the web service's database schema (Alembic).

`mailpush serve` and `mailpush user` upgrade the schema themselves when they open the database; these commands
let an operator see and apply an upgrade on its own (e.g. before starting several servers on one PostgreSQL).
"""

from __future__ import annotations

import sys

from analyzer.cli import EXIT_OK, EXIT_USAGE


def register(sub) -> None:
    from analyzer.cli.serve import _storage_args

    p = sub.add_parser("db", help="show or upgrade the web service's database schema")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    status = dsub.add_parser("status", help="the database's schema revision and the newest one")
    _storage_args(status)
    up = dsub.add_parser("upgrade", help="create the schema in an empty database or upgrade it to the newest revision")
    _storage_args(up)
    p.set_defaults(func=run_db)


def run_db(args) -> int:
    from pathlib import Path

    from analyzer.web.db import Database, DatabaseError, default_db_url
    from analyzer.web.schema import current_revision, head_revision, known_revision

    if not getattr(args, "db_command", None):
        print("mailpush db: give an action: status or upgrade", file=sys.stderr)
        return EXIT_USAGE
    url = args.db
    if url is None:
        try:
            Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"mailpush: cannot use data directory {args.data_dir}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        url = default_db_url(args.data_dir)
    try:
        db = Database(url, migrate=args.db_command == "upgrade")
        try:
            if args.db_command == "upgrade":
                before, after = db.schema_revisions
                if before == after:
                    print(f"database schema already at the newest revision {after}")
                else:
                    print(f"upgraded the database schema from {before or 'empty'} to {after}")
                return EXIT_OK
            current, head = _revision_or_error(db, current_revision), head_revision()
            print(f"database revision: {current or 'empty (no schema yet)'}")
            print(f"newest revision: {head}")
            if current == head:
                print("up to date")
            elif not known_revision(current):
                print("made by a newer mailpush: upgrade mailpush to use this database")
            else:
                print("upgrade pending: run 'mailpush db upgrade' (or start 'mailpush serve', which upgrades it)")
            return EXIT_OK
        finally:
            db.dispose()
    except DatabaseError as exc:
        print(f"mailpush: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _revision_or_error(db, current_revision):
    from sqlalchemy.exc import DBAPIError

    from analyzer.web.db import DatabaseError, _safe

    try:
        return current_revision(db.engine)
    except DBAPIError as exc:
        raise DatabaseError(f"cannot open database {_safe(db.url)}: {exc.orig}") from None
