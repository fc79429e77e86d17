"""Stage 2+: a job id in a path with a NUL or another control character is a 422 with a JSON
body in every stage and on every route, never a 500 (PostgreSQL refuses a NUL in text)."""

import psycopg
import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.since_stage(2)

HOSTILE_IDS = ["%00", "a%00b", "%1F", "%7F", "a%0Ab", "%09tab"]


def routes(stage) -> list[tuple[str, str]]:
    """The routes that take a job id in their path, in this stage."""
    found = [("GET", "/jobs/{}")]
    if stage.number >= 3:
        found.append(("GET", "/jobs/{}/events"))
    if stage.number >= 4:
        found += [("DELETE", "/jobs/{}"), ("POST", "/jobs/{}/retry")]
    return found


def assert_refused(stage, client) -> None:
    for method, path in routes(stage):
        for job_id in HOSTILE_IDS:
            response = client.request(method, path.format(job_id))
            assert response.status_code == 422, (method, path, job_id, response.text)
            assert response.headers["content-type"] == "application/json"
    assert client.get("/jobs/a-plain-id").status_code == 404  # a visible id still gets through
    if stage.number >= 4:  # bulk retry's filter: a task name, as GET /jobs's
        assert client.post("/jobs/retry", json={"function": "a\u0000b"}).status_code == 422


def test_a_job_id_with_a_control_character_is_a_422(stage, client):
    assert_refused(stage, client)


@pytest.mark.since_stage(3)
@pytest.mark.e2e  # a PostgreSQL server of the tests' own (tests/postgres.py)
def test_a_job_id_with_a_nul_is_a_422_on_postgresql(
    stage, settings_env, postgres_database, monkeypatch
):
    with psycopg.connect(postgres_database.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS jobs CASCADE")
    monkeypatch.setenv("DATABASE_URL", postgres_database)
    stage.module("config").get_settings.cache_clear()
    with TestClient(stage.module("main").app) as client:
        assert_refused(stage, client)
