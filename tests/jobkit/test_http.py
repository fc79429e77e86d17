"""jobkit.http: bad input answered as JSON (413, 422), never a 500, on a bare FastAPI app."""

import asyncio
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from jobkit.http import BODY_ERRORS, LimitBodySize, invalid, refuse_bad_input

LIMIT = 64


class Numbers(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # as the stages' task arguments

    x: float


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI()
    refuse_bad_input(app, LIMIT)

    @app.post("/echo", responses=BODY_ERRORS)
    async def echo(body: Numbers) -> Numbers:
        return body

    @app.get("/refuse")
    async def refuse() -> None:
        raise invalid(("query", "when"), "not like that")

    with TestClient(app) as test_client:  # runs the lifespan through the middleware too
        yield test_client


def test_a_body_within_the_limit_reaches_the_route(client):
    assert client.post("/echo", json={"x": 1.5}).json() == {"x": 1.5}


def test_a_declared_length_over_the_limit_is_a_json_413_before_anything_is_read(client):
    response = client.post("/echo", content=b"{}", headers={"content-length": str(LIMIT + 1)})
    assert response.status_code == 413
    assert response.json() == {"detail": f"Request body is over the {LIMIT}-byte limit"}


def test_a_streamed_body_over_the_limit_is_a_json_413_as_it_arrives(client):
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"x": '
        yield b"1" * LIMIT
        yield b"}"

    response = client.post("/echo", content=chunks())
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_a_nan_is_a_422_that_does_not_echo_the_input(client):
    response = client.post(
        "/echo", content=b'{"x": NaN}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert [set(error) for error in response.json()["detail"]] == [{"loc", "msg", "type"}]


def test_invalid_is_a_422_in_fastapis_own_shape(client):
    response = client.get("/refuse")
    assert response.status_code == 422
    assert response.json() == {
        "detail": [{"loc": ["query", "when"], "msg": "not like that", "type": "value_error"}]
    }


def test_a_content_length_that_is_not_an_ascii_number_is_not_read_as_one():
    # "\u00b2" (superscript two) arrives as a Latin-1 header byte; str.isdigit() says yes and
    # int() raises: without the isascii() check this would be a 500.
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    async def never(*_):
        raise AssertionError("nothing is received or sent here")

    middleware = LimitBodySize(app, LIMIT)
    scope = {"type": "http", "headers": [(b"content-length", "\u00b2".encode("latin-1"))]}
    asyncio.run(middleware(scope, never, never))
    assert seen == ["http"]  # passed on to the app, which reads the body as it comes
