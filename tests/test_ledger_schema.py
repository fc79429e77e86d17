"""The ledger's tables are created by whichever process starts first: the API and every worker
call `jobkit.db.create_tables` with the stage's tables at start-up, often at the same moment
(`make run` starts them together), so losing that race must not stop a process from starting."""

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobkit.db import create_engine, create_tables

pytestmark = pytest.mark.since_stage(3)

STARTERS = 6  # processes starting at once, each with its own engine (here: threads)
ROUNDS = 20


def create_at_once(metadata: sa.MetaData, url: str) -> list[Exception]:
    """STARTERS engines on one new SQLite file create the tables at the same moment."""
    engines = [create_engine(url) for _ in range(STARTERS)]
    at_once = threading.Barrier(STARTERS, timeout=60)  # a starter missing: a failure, not a hang
    failures: list[Exception] = []

    def start(engine, running: threading.Event) -> None:
        running.set()
        try:
            at_once.wait()
            create_tables(metadata, engine)
        except Exception as exc:
            failures.append(exc)

    # The threads start one after another and meet at the barrier: starting them all at once
    # under coverage's tracer once killed one in its start-up ("Cannot install a trace function
    # while another trace function is being installed"), and the others waited for it.
    threads: list[threading.Thread] = []
    for engine in engines:
        running = threading.Event()
        thread = threading.Thread(target=start, args=(engine, running))
        thread.start()
        assert running.wait(30), "a starter thread did not start"
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=60)
    for engine in engines:
        engine.dispose()
    return failures


def test_starters_creating_the_tables_at_once_all_start(stage, tmp_path: Path) -> None:
    metadata = stage.module("tables").LedgerModel.metadata
    for round_ in range(ROUNDS):
        failures = create_at_once(metadata, f"sqlite:///{tmp_path / str(round_) / 'jobs.db'}")
        assert not failures, f"round {round_}: {len(failures)} of {STARTERS} failed: {failures[0]}"
