"""Stage 4: a ledger an older stage 4 made (the tutorial's .data/stage4 persists between
`make run`s) lacks the columns the jobs page added. The app stops at start-up saying which
and how to upgrade, rather than answering every request with a 503 ("no such column")."""

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from devkit.stages import ROOT
from jobkit.db import SchemaOutOfDate, create_engine

pytestmark = pytest.mark.since_stage(4)


def migrate(url: str, revision: str) -> None:
    config = Config(str(ROOT / "migrations" / "alembic.ini"))
    engine = create_engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()


def test_an_older_ledger_stops_the_app_naming_its_missing_columns_until_upgraded(stage, app):
    settings = stage.module("config").get_settings()
    settings.data_dir.mkdir(parents=True)
    url = settings.database_url
    migrate(url, "0002_attempts")  # stage 4's tables before the jobs page

    with pytest.raises(SchemaOutOfDate) as stopped, TestClient(app):
        pass
    assert "lacks jobs.run_at, jobs.retry_of" in str(stopped.value)
    assert "alembic -c migrations/alembic.ini upgrade head" in str(stopped.value)

    migrate(url, "head")
    with TestClient(app) as client:
        assert client.get("/jobs").status_code == 200
