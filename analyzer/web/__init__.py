"""Web service (issue 5): FastAPI app, SQLAlchemy job database, background worker pool, Jinja2 pages.

``create_app(db_url, data_dir, max_upload_mb, workers)`` is the factory; ``mailpush serve`` runs it.
"""

from analyzer.web.app import create_app  # noqa: F401
