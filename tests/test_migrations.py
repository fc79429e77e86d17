"""Stage 3+: the ledger's migrations (migrations/) build exactly the tables each stage makes.

A learner who takes the ledger into an app of their own manages its tables with Alembic
(docs/guides/your-app.md), while the stages make them with `create_tables` at start-up. Both
must end in the same schema, on SQLite and on PostgreSQL (tests/postgres.py starts one of the
tests' own): the same columns, types, nullability, primary keys and indexes, and Alembic's
own comparison of the migrated database with the stage's tables finds nothing to change.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from devkit.stages import ROOT
from jobkit.db import create_engine, create_tables

pytestmark = pytest.mark.since_stage(3)

MIGRATIONS = ROOT / "migrations"
# The revision whose schema is each stage's tables. A new stage whose tables differ needs a
# migration to reach them, and its line here.
STAGE_REVISIONS = {3: "0001_jobs", 4: "0003_run_at_retry_of"}
VERSION_TABLE = "ledger_alembic_version"  # migrations/env.py keeps the history here
# The stages migrations/ knows, oldest first; env.py's tables are the newest's.
STAGE_PACKAGES = ("stage3_status_history", "stage4_retries_scheduling")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def new_database(request, tmp_path: Path) -> Callable[[], str]:
    """Call it for a new, empty database: a SQLite file in tmp_path, or one on the tests'
    own PostgreSQL (the `postgresql` variant starts that server: an e2e test)."""
    if request.param == "postgresql":
        return request.getfixturevalue("new_postgres_database")
    made = iter(range(100))
    return lambda: f"sqlite:///{tmp_path / f'ledger{next(made)}.db'}"


@pytest.fixture
def engines() -> Iterator[Callable[[str], sa.Engine]]:
    """An engine per URL, as the stages make it (jobkit.db), disposed after the test."""
    made: list[sa.Engine] = []

    def engine(url: str) -> sa.Engine:
        made.append(create_engine(url))
        return made[-1]

    yield engine
    for each in made:
        each.dispose()


def alembic(engine: sa.Engine, *args: Any, action: Callable[..., Any] = command.upgrade) -> None:
    """Run an Alembic command with migrations/alembic.ini on `engine`'s database."""
    config = Config(str(MIGRATIONS / "alembic.ini"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection  # env.py uses it, not the settings' URL
        action(config, *args)


def schema(engine: sa.Engine, tables: set[str]) -> dict[str, Any]:
    """`tables` as the database describes them: columns (type, nullability), primary key,
    indexes. Types as the database's own DDL spells them (VARCHAR(64), TIMESTAMP WITH TIME
    ZONE, JSON), so a String where the stage has a DateTime shows up as a difference."""
    inspector = sa.inspect(engine)
    found = {}
    for table in sorted(tables):
        found[table] = {
            "columns": [
                (c["name"], c["type"].compile(dialect=engine.dialect), c["nullable"])
                for c in inspector.get_columns(table)
            ],
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
        }
    return found


def differences(engine: sa.Engine, metadata: sa.MetaData) -> list[Any]:
    """What Alembic's autogenerate would change to bring the database to `metadata`."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"include_name": lambda name, kind, _: kind != "table" or name in metadata.tables},
        )
        return compare_metadata(context, metadata)


def ledger_tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {VERSION_TABLE}


def test_migrating_an_empty_database_builds_the_tables_the_stage_makes_itself(
    stage, new_database, engines
):
    metadata = stage.module("tables").LedgerModel.metadata
    revision = STAGE_REVISIONS.get(stage.number)
    assert revision, f"{stage} has no migration for its tables in migrations/versions"
    migrated, made = engines(new_database()), engines(new_database())

    alembic(migrated, revision)
    create_tables(metadata, made)  # what the stage does at start-up

    assert ledger_tables(migrated) == ledger_tables(made) == set(metadata.tables)
    assert schema(migrated, set(metadata.tables)) == schema(made, set(metadata.tables))
    assert differences(migrated, metadata) == []


def test_stage_3s_ledger_steps_up_to_stage_4s_and_back_down(new_database, engines):
    stage3, stage4 = (importlib.import_module(f"{p}.tables") for p in STAGE_PACKAGES)
    database = engines(new_database())

    alembic(database, STAGE_REVISIONS[3])
    assert differences(database, stage3.LedgerModel.metadata) == []
    alembic(database, "head")
    assert differences(database, stage4.LedgerModel.metadata) == []
    alembic(database, STAGE_REVISIONS[3], action=command.downgrade)
    assert ledger_tables(database) == {"jobs"}
    assert differences(database, stage3.LedgerModel.metadata) == []
    alembic(database, "base", action=command.downgrade)
    assert ledger_tables(database) == set()


def test_autogenerate_writes_a_migration_that_imports_and_builds_the_tables(
    new_database, engines, tmp_path
):
    # The stages' columns use types of the project's own (jobkit.db.UTCDateTime, SQLModel's
    # AutoString); written as such, a new migration would not even import. env.py's
    # render_item writes them as the SQLAlchemy types they store.
    metadata = importlib.import_module(f"{STAGE_PACKAGES[-1]}.tables").LedgerModel.metadata
    versions = tmp_path / "versions"
    versions.mkdir()
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("version_locations", str(versions))  # a history of its own
    empty, migrated = engines(new_database()), engines(new_database())
    with empty.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message="initial", autogenerate=True, rev_id="initial")
    [script] = versions.glob("initial_*.py")
    with migrated.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    assert ledger_tables(migrated) == set(metadata.tables)
    assert differences(migrated, metadata) == [], script.read_text()
