"""Alembic environment of the web service's database. mailpush runs the migrations itself (analyzer.web.schema,
at every start of `mailpush serve` / `mailpush user` / `mailpush db upgrade`) and hands over its connection;
the `alembic` command line works too when sqlalchemy.url is set in an alembic.ini."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from analyzer.web import incidents as _incidents  # noqa: F401  (its table belongs to the schema too)
from analyzer.web.db import Base

config = context.config
target_metadata = Base.metadata


def run_on(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: Alembic's batch mode copies the table instead
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_on(connection)
elif context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as conn:
        run_on(conn)
