"""A PostgreSQL server of the tests' own, for the ledger tests' PostgreSQL variant.

The tests never write to a server they did not start: `own_postgres()` runs `initdb` in a
throwaway folder, starts `postgres` listening on a Unix socket in that folder only (no TCP
port to collide over), and stops and deletes it all afterwards. When PostgreSQL's server
programs are not installed, the test fails and says to run `make tools`, which installs
them (a skip would hide the coverage). PostgreSQL refuses to run as root, so as root it runs
them as the `postgres` user (or `nobody`).

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
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict

from tests.tools import require

START_DEADLINE_S = 30.0
INITDB_DEADLINE_S = 120.0
STOP_DEADLINE_S = 10.0


def server_programs() -> Path:
    """The folder holding initdb and postgres (the newest version if several)."""
    # Resolved: where postgres is too, not a folder of links to some of the programs.
    return Path(require("postgresql")).resolve().parent


def unprivileged_user() -> str | None:
    """Who runs the server: us, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    raise RuntimeError("running as root, and no `postgres` or `nobody` user to run PostgreSQL as")


def answers(conninfo: str) -> bool:
    try:
        psycopg.connect(conninfo).close()
    except psycopg.OperationalError:
        return False
    return True


@contextlib.contextmanager
def own_postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster for this session: its admin conninfo."""
    bindir = server_programs()
    user = unprivileged_user()
    folder = Path(tempfile.mkdtemp(prefix="ledger-postgres-"))  # not pytest's: root-only
    as_user = {"user": user, "group": pwd.getpwnam(user).pw_gid} if user else {}
    if user:
        shutil.chown(folder, **as_user)
    data, log = folder / "data", folder / "postgres.log"
    conninfo = f"host={folder} user=postgres dbname=postgres connect_timeout=2"
    try:
        initdb = subprocess.run(
            [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync",
             "--locale=C", "--encoding=UTF8"],
            capture_output=True, text=True, timeout=INITDB_DEADLINE_S, **as_user,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed in {folder}:\n{initdb.stdout}{initdb.stderr}")
        with log.open("w") as out:
            server = subprocess.Popen(
                [bindir / "postgres", "-D", data, "-k", folder, "-c", "listen_addresses=",
                 "-c", "fsync=off"],
                stdout=out, stderr=subprocess.STDOUT, **as_user,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + START_DEADLINE_S
            while server.poll() is None and not answers(conninfo):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if server.poll() is not None or not answers(conninfo):
                raise RuntimeError(f"our PostgreSQL did not start:\n{log.read_text()}")
            yield conninfo
        finally:
            server.send_signal(signal.SIGINT)  # a "fast" shutdown: open sessions end too
            try:
                server.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def throwaway_database(admin_conninfo: str) -> Iterator[str]:
    """A new, empty database on the admin connection's server, dropped afterwards: its URL."""
    name = f"jobs_test_{uuid.uuid4().hex[:12]}"
    # The admin connection's every parameter (host, even a socket folder, port, user,
    # password), in the query of a URL that names the new database.
    server = {k: str(v) for k, v in conninfo_to_dict(admin_conninfo).items() if k != "dbname"}
    url = sa.URL.create("postgresql+psycopg", database=name, query=server)
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_conninfo, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """A PostgreSQL server to make databases in: yours, or one of our own (own_postgres)."""
    if conninfo := os.environ.get("LEDGER_TEST_POSTGRES"):
        yield conninfo
        return
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
