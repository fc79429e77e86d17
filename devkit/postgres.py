"""A throwaway PostgreSQL server: `initdb` in a temporary folder, `postgres` listening on a
Unix socket in that folder only (no TCP port to collide over), stopped and deleted afterwards.

The tests' PostgreSQL (tests/postgres.py) and the scale-out topology (devkit/scaleout.py)
both start theirs here. `make tools` installs the server programs. PostgreSQL refuses to run
as root, so as root it runs them as the `postgres` user (or `nobody`).
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
from collections.abc import Iterator
from pathlib import Path

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict

from devkit import tools

START_DEADLINE_S = 30.0
INITDB_DEADLINE_S = 120.0
STOP_DEADLINE_S = 10.0


def server_programs() -> Path:
    """The folder holding initdb and postgres (the newest version if several)."""
    program = tools.find("postgresql")
    if program is None:
        raise RuntimeError(f"PostgreSQL's server programs are not installed: {tools.INSTALL_HINT}")
    # Resolved: where postgres is too, not a folder of links to some of the programs.
    return Path(program).resolve().parent


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
    # Not pytest's temporary folder, nor a $TMPDIR inside one: the server's user must reach it.
    shared = "/tmp" if user and Path("/tmp").is_dir() else None
    folder = Path(tempfile.mkdtemp(prefix="ledger-postgres-", dir=shared))
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
                process_group=0,  # a Ctrl-C reaches its launcher, which stops it in order
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
