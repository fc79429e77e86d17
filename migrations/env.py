"""Alembic's entry point for the ledger's migrations: which database, which tables.

- The database is the one the stage's own settings name (`DATABASE_URL`, or the stage's
  default SQLite file), so the migrations and the app never disagree about where the ledger is.
- Only the ledger's tables are this history's business: the ledger may share a database with
  your app's own tables, and autogenerate must neither create nor drop those.
- The history is kept in its own table (LEDGER_VERSION_TABLE), so it can sit beside an Alembic
  setup of your app's own in the same database without either touching the other's.

Copied into your project, this file imports your copy of the stage: change the package in the
import below to your copy's (docs/guides/your-app.md shows the one command that does it).
"""

import logging.config
from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext

from stage4_retries_scheduling import config, tables

LEDGER_VERSION_TABLE = "ledger_alembic_version"
target_metadata = tables.LedgerModel.metadata


# --8<-- [start:render_item]
def render_item(kind: str, item: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write a column type of the project's own (a TypeDecorator: jobkit.db.UTCDateTime,
    SQLModel's AutoString) as the plain SQLAlchemy type it stores. Autogenerate would
    otherwise write `jobkit.db.UTCDateTime(...)` with no import for it, and a migration that
    imports the app's code breaks the day that code moves: a migration is history, frozen."""
    if kind == "type" and isinstance(item, sa.TypeDecorator):
        stored = item.impl_instance
        if type(stored).__module__.startswith("sqlalchemy.sql."):  # a generic type: sa.<Type>
            return f"sa.{stored!r}"  # e.g. sa.DateTime(timezone=True), sa.String(length=64)
    return False  # everything else as Alembic writes it


# --8<-- [end:render_item]


def include_name(name: str | None, kind: str, parent_names: Any) -> bool:
    """Only the ledger's tables (and their indexes and columns) are compared."""
    if kind == "table":
        return name in target_metadata.tables
    return True


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=LEDGER_VERSION_TABLE,
        include_name=include_name,
        render_item=render_item,
        # SQLite cannot ALTER most of a table: autogenerate writes such changes as "copy the
        # table, then swap" (a batch), which works on every database.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    # A caller that holds a connection already (tests/test_migrations.py) passes it in, and
    # keeps its own logging; from the command line, alembic.ini says what to print.
    given = context.config.attributes.get("connection")
    if given is not None:
        run_migrations(given)
        return
    if context.config.config_file_name is not None:
        logging.config.fileConfig(context.config.config_file_name)
    engine = sa.create_engine(config.get_settings().database_url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        run_migrations(connection)
    engine.dispose()


run()
