"""`mailpush serve` (the web service) and `mailpush user add|list|token NAME` (its accounts)."""

from __future__ import annotations

import ipaddress
import sys

from analyzer import __version__
from analyzer.cli import EXIT_OK, EXIT_USAGE
from analyzer.cli.limits import add_limit_args, limit_problem

DEFAULT_DATA_DIR = "mailpush-data"


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the web service: upload captures in a browser or by API, get the verdicts")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    _storage_args(p)
    p.add_argument("--max-upload-mb", type=float, default=200, metavar="N",
                   help="largest accepted upload in MB (default 200); larger uploads get 413")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="analyses run at once, each in its own process (default 2; 0 = accept uploads but "
                   "analyse nothing)")
    p.add_argument("--job-timeout", type=float, default=900, metavar="S",
                   help="stop an analysis after S seconds and mark it failed (default 900)")
    add_limit_args(p, tmp_dir=False)  # the server's temporary files live in DATA_DIR/tmp
    p.add_argument("--forwarded-allow-ips", metavar="IPS", default=None,
                   help="comma-separated addresses of trusted reverse proxies (or '*'): their X-Forwarded-Proto "
                   "and X-Forwarded-For are believed, so the session cookie is Secure behind a TLS proxy "
                   "(default: none; proxy headers are ignored)")
    p.add_argument("--lazy-plots", action="store_true",
                   help="draw the timing plots when a report is first viewed, not after every analysis "
                   "(faster for bulk uploads read through the API)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log lines (one per request and per job state change) as text or as one JSON object "
                   "per line (default text)")
    p.set_defaults(func=run_serve)

    u = sub.add_parser("user", help="manage accounts of the web service")
    usub = u.add_subparsers(dest="user_command", metavar="ACTION")
    add = usub.add_parser("add", help="create a user and print their new API token")
    add.add_argument("name")
    _storage_args(add)
    token = usub.add_parser("token", help="replace a user's API token and print the new one")
    token.add_argument("name")
    _storage_args(token)
    lst = usub.add_parser("list", help="list users")
    _storage_args(lst)
    u.set_defaults(func=run_user)


def _storage_args(p) -> None:
    p.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (default: SQLite file DIR/mailpush.db; "
                   "postgresql+psycopg://user:pass@host/db needs the postgres extra); the schema is created or "
                   "upgraded when the database is opened")
    p.add_argument("--data-dir", metavar="DIR", default=DEFAULT_DATA_DIR,
                   help=f"where uploads, plots and the default database live (default ./{DEFAULT_DATA_DIR})")


def _open_db(args):
    from analyzer.web.db import Database, DatabaseError, default_db_url

    from pathlib import Path

    try:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        return Database(args.db or default_db_url(args.data_dir))
    except OSError as exc:
        print(f"mailpush: cannot use data directory {args.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return None
    except DatabaseError as exc:
        print(f"mailpush: {exc}", file=sys.stderr)
        return None


def run_user(args) -> int:
    from analyzer.web import auth

    if not getattr(args, "user_command", None):
        print("mailpush user: give an action: add NAME, token NAME or list", file=sys.stderr)
        return EXIT_USAGE
    db = _open_db(args)
    if db is None:
        return EXIT_USAGE
    try:
        if args.user_command == "list":
            for user in auth.list_users(db):
                print(f"{user.name}\tcreated {user.created_at:%Y-%m-%d %H:%M} UTC")
            return EXIT_OK
        try:
            token = auth.add_user(db, args.name) if args.user_command == "add" else auth.new_token(db, args.name)
        except auth.AuthError as exc:
            print(f"mailpush user {args.user_command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        # The token alone on stdout (scripts capture it); the explanation on stderr.
        print(token)
        print(f"mailpush: API token for {args.name!r} (shown only now; stored hashed). Use it as "
              "'Authorization: Bearer <token>' or paste it into the login page.", file=sys.stderr)
        return EXIT_OK
    finally:
        db.dispose()


def run_serve(args) -> int:
    import logging

    import uvicorn

    from analyzer.web import create_app, logs
    from analyzer.web.db import DatabaseError

    if not 0 < args.port < 65536 or args.workers < 0 or args.max_upload_mb <= 0 or args.job_timeout <= 0:
        print("mailpush serve: need 0 < --port < 65536, --workers >= 0, --max-upload-mb > 0 and --job-timeout > 0",
              file=sys.stderr)
        return EXIT_USAGE
    if problem := limit_problem(args):
        print(f"mailpush serve: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from analyzer.web.worker import MAX_WORKERS

    if args.workers > MAX_WORKERS:
        print(f"mailpush serve: warning: --workers {args.workers} capped at {MAX_WORKERS} (2 per core)",
              file=sys.stderr)
    try:
        app = create_app(args.db, args.data_dir, args.max_upload_mb, args.workers, job_timeout_s=args.job_timeout,
                         plots_in_job=not args.lazy_plots, max_capture_gb=args.max_capture_gb,
                         max_compression_ratio=args.max_compression_ratio)
    except DatabaseError as exc:
        print(f"mailpush serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"mailpush serve: cannot use data directory {args.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    # Configured once the app is built: a command that fails before serving leaves the process's logging alone.
    logs.configure(args.log_format)
    log = logging.getLogger("mailpush.serve")
    if not _is_loopback(args.host):
        log.warning("listening beyond this machine over plain HTTP; tokens and captures travel unencrypted. "
                    "Put a TLS reverse proxy in front.")
    log.info("serving on http://%s:%d/ (data in %s, %d worker(s)); create an account with 'mailpush user add "
             "NAME'", args.host, args.port, args.data_dir, app.state.pool.workers,
             extra={"event": "start", "version": __version__, "schema": app.state.db.schema_revisions[1],
                    "schema_before": app.state.db.schema_revisions[0]})
    proxies = args.forwarded_allow_ips
    # log_config=None: uvicorn's own lines go through the handler configured above (same format); its access
    # log is replaced by ours (one line per request, with the user).
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", proxy_headers=bool(proxies),
                forwarded_allow_ips=proxies or None, log_config=None, access_log=False)
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
