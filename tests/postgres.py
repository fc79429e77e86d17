"""A PostgreSQL server of the tests' own, for the ledger tests' PostgreSQL variant.

The tests never write to a server they did not start: `own_postgres()` (devkit/postgres.py)
runs `initdb` in a throwaway folder, starts `postgres` on a Unix socket in that folder only,
and stops and deletes it all afterwards. When PostgreSQL's server programs are not
installed, the test fails and says to run `make tools`, which installs them (a skip would
hide the coverage).

To run the same tests against a server of yours instead, give its admin connection in
LEDGER_TEST_POSTGRES ("host=... port=... user=... dbname=postgres"): they create a
throwaway database there and drop it afterwards.

The fixtures below (a pytest plugin: tests/conftest.py loads this module) share one server per
session: `postgres_admin` (the server), `postgres_database` (a database for the session) and
`new_postgres_database` (a fresh, empty database each time it is called).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from devkit.postgres import own_postgres, throwaway_database
from tests.tools import require


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """A PostgreSQL server to make databases in: yours, or one of our own (own_postgres)."""
    if conninfo := os.environ.get("LEDGER_TEST_POSTGRES"):
        yield conninfo
        return
    require("postgresql")  # a clear failure naming `make tools`, not a RuntimeError
    with own_postgres() as conninfo:
        yield conninfo


@pytest.fixture(scope="session")
def postgres_database(postgres_admin: str) -> Iterator[str]:
    """A throwaway PostgreSQL database for this session (dropped after)."""
    with throwaway_database(postgres_admin) as url:
        yield url


@pytest.fixture
def new_postgres_database(postgres_admin: str) -> Iterator[Callable[[], str]]:
    """Call it for a fresh, empty database (each dropped after the test): its URL."""
    with contextlib.ExitStack() as made:
        yield lambda: made.enter_context(throwaway_database(postgres_admin))
