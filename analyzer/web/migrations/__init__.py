"""Alembic migrations of the web service's database (env.py, versions/). Run by analyzer.web.schema."""
