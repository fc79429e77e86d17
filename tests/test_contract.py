"""The HTTP contract every stage keeps: health routes, task routes, bad input."""

import json

import pytest

from devkit.stages import ROOT

TASK_BODIES = {
    "add": {"x": 5, "y": 10},
    "divide": {"x": 1, "y": 4},
    "crunch": {"ms": 1},
    "wait": {"seconds": 0},
}


def test_ping_answers_without_touching_anything(client):
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.json() == {"ping": "pong"}


def test_health_is_ok_when_everything_it_needs_is_up(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize("task", sorted(TASK_BODIES))
def test_every_task_is_accepted_with_202(client, task):
    response = client.post(f"/tasks/{task}", json=TASK_BODIES[task])
    assert response.status_code == 202, response.text


def test_an_unknown_task_is_a_404_with_a_json_body(client):
    response = client.post("/tasks/nope", json={})
    assert response.status_code == 404
    assert "detail" in response.json()


def test_the_openapi_schema_documents_every_task(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {f"/tasks/{task}" for task in TASK_BODIES} <= set(paths)


BAD_BODIES = [
    pytest.param("add", '{"x": 5}', "application/json", 422, id="missing-field"),
    pytest.param("add", '{"x": "5", "y": 10}', "application/json", 422, id="string-for-int"),
    pytest.param("add", '{"x": null, "y": 10}', "application/json", 422, id="null"),
    pytest.param("add", '{"x": 5.5, "y": 10}', "application/json", 422, id="float-for-int"),
    pytest.param("add", '{"x": 5, "y": 10, "z": 1}', "application/json", 422, id="extra-field"),
    pytest.param("add", '{"x": 1e400, "y": 1}', "application/json", 422, id="1e400"),
    pytest.param(
        "add", '{"x": 10000000000000000000000, "y": 1}', "application/json", 422, id="huge-int"
    ),
    pytest.param(
        "add", '{"x": ' + "9" * 5000 + ', "y": 1}', "application/json", 400, id="5000-digit-int"
    ),
    pytest.param("divide", '{"x": NaN, "y": 1}', "application/json", 422, id="NaN"),
    pytest.param("divide", '{"x": Infinity, "y": 1}', "application/json", 422, id="Infinity"),
    pytest.param("divide", '{"x": -Infinity, "y": 1}', "application/json", 422, id="-Infinity"),
    pytest.param("divide", '{"x": 1e309, "y": 1}', "application/json", 422, id="1e309"),
    pytest.param("crunch", '{"ms": 100000000}', "application/json", 422, id="crunch-too-long"),
    pytest.param("wait", '{"seconds": -1}', "application/json", 422, id="negative-wait"),
    pytest.param("add", '{"x": 5, "y": 10}', "text/plain", 422, id="text-plain"),
    pytest.param("add", "x=5&y=10", "application/x-www-form-urlencoded", 422, id="form"),
    pytest.param("add", "[5, 10]", "application/json", 422, id="json-array"),
    pytest.param("add", "", "application/json", 422, id="empty"),
    pytest.param("add", '{"x": 5,', "application/json", 422, id="truncated-json"),
    pytest.param("add", b'{"x": "\xff"}', "application/json", 400, id="invalid-utf8"),
]


@pytest.mark.parametrize(("task", "body", "content_type", "expected"), BAD_BODIES)
def test_bad_bodies_get_a_json_4xx_never_a_500(client, task, body, content_type, expected):
    response = client.post(f"/tasks/{task}", content=body, headers={"content-type": content_type})
    assert response.status_code == expected, response.text
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()


def test_a_body_over_the_limit_is_a_json_413(client):
    body = json.dumps({"x": 5, "y": 10, "padding": "a" * 100_000})
    response = client.post("/tasks/add", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_a_streamed_body_over_the_limit_is_a_json_413(client):
    def chunks():
        yield b'{"x": 5, "y": 10, "padding": "'
        for _ in range(100):
            yield b"a" * 1000
        yield b'"}'

    response = client.post(
        "/tasks/add", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["detail"]


def test_the_api_docs_say_where_the_stages_chapter_is(stage, client):
    # The Swagger UI is often a reader's first page: it says which chapter explains the app.
    description = client.get("/openapi.json").json()["info"].get("description", "")
    chapter = f"docs/stages/stage{stage.number}.md"
    assert chapter in description, description
    assert (ROOT / chapter).is_file()
    assert f"/stages/stage{stage.number}/" in description  # the page `make docs` serves
