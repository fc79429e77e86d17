"""Stage 2+: an enqueue that timed out may still have reached Redis. The client gets a 503,
never a 500, and from stage 3 the ledger ends with what really happened, not the API's guess."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi.testclient import TestClient

from tests.helpers import job

API_REDIS_TIMEOUT_S = 0.3  # the API's REDIS_TIMEOUT_S in this test
REPLY_DELAY_S = 1.0  # how long the proxy holds back a transaction's reply: past the timeout

CANCEL_DEADLINE_S = 15.0  # how long a DELETE may take against a stalled Redis

Sock = socket.socket


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:  # closed by the other side, or by close()
        return b""


class SlowRepliesProxy:
    """A TCP proxy in front of Redis. It forwards every command at once, but holds back the
    reply to the command named in `hold_reply_to` (b"EXEC", say) for REPLY_DELAY_S: Redis
    has run that command, and the client gives up waiting before it hears so."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hold_reply_to: bytes | None = None
        # Or: let this command's reply through, and hold back every reply after it.
        self.hold_replies_after: bytes | None = None
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # the listener was closed
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            held = threading.Event()  # set: this connection's replies are late from now on
            for pump in (self._commands, self._replies):
                threading.Thread(target=pump, args=(client, server, held), daemon=True).start()

    def _commands(
        self, client: socket.socket, server: socket.socket, held: threading.Event
    ) -> None:
        armed = False  # this connection sent hold_replies_after: hold what follows it
        while data := _recv(client):
            if self.hold_reply_to and b"\r\n%s\r\n" % self.hold_reply_to in data:
                held.set()  # before forwarding: the reply cannot overtake it
            if armed:
                held.set()
            armed = (
                bool(self.hold_replies_after) and b"\r\n%s\r\n" % self.hold_replies_after in data
            )
            server.sendall(data)
        server.close()

    def _replies(self, client: Sock, server: Sock, held: threading.Event) -> None:
        while data := _recv(server):
            if held.is_set():
                time.sleep(REPLY_DELAY_S)
            try:
                client.sendall(data)
            except OSError:  # the client timed out and hung up
                break
        client.close()

    def __enter__(self) -> SlowRepliesProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[SlowRepliesProxy]:
    real = urlsplit(redis_url)
    with SlowRepliesProxy(real.hostname or "127.0.0.1", real.port or 6379) as server:
        yield server


@pytest.fixture
def client(
    stage: Any, settings_env: None, redis_url: str, proxy: SlowRepliesProxy, monkeypatch: Any
) -> Iterator[TestClient]:
    """A TestClient for the stage's app, talking to Redis through the proxy."""
    real = urlsplit(redis_url)
    monkeypatch.setenv("REDIS_URL", urlunsplit(real._replace(netloc=f"127.0.0.1:{proxy.port}")))
    monkeypatch.setenv("REDIS_TIMEOUT_S", str(API_REDIS_TIMEOUT_S))
    stage.module("config").get_settings.cache_clear()
    with TestClient(stage.module("main").app) as test_client:
        yield test_client


def submit_with_a_late_reply(proxy: SlowRepliesProxy, client: TestClient, command: bytes) -> Any:
    proxy.hold_reply_to = command
    try:
        return client.post("/tasks/add", json={"x": 1, "y": 2})
    finally:
        proxy.hold_reply_to = None


@pytest.mark.since_stage(2)
def test_an_enqueue_that_timed_out_after_reaching_redis_is_a_503_and_the_job_still_runs(
    proxy: SlowRepliesProxy, client: TestClient, raw_redis: Any, drain: Any
) -> None:
    # ARQ enqueues in one MULTI/EXEC: Redis stores the job, the API hears nothing.
    response = submit_with_a_late_reply(proxy, client, b"EXEC")
    assert response.status_code == 503, response.text  # the API could not tell
    assert response.json()["detail"].startswith("Redis is unavailable")
    [job_id] = [member.decode() for member in raw_redis.zrange("arq:queue", 0, -1)]
    assert job(client, job_id)["status"] == "queued"  # Redis has it, and so do we
    drain()  # a worker on the real Redis runs it
    ended = job(client, job_id)
    assert (ended["status"], ended["result"], ended["error"]) == ("complete", 3, None)


@pytest.mark.since_stage(3)
def test_the_ledger_row_of_an_enqueue_that_reached_redis_ends_as_what_really_happened(
    proxy: SlowRepliesProxy, client: TestClient, raw_redis: Any, drain: Any
) -> None:
    assert submit_with_a_late_reply(proxy, client, b"EXEC").status_code == 503
    [job_id] = [member.decode() for member in raw_redis.zrange("arq:queue", 0, -1)]
    [row] = client.get("/jobs").json()["jobs"]  # the ledger's own row: open, not "failed"
    assert (row["job_id"], row["status"]) == (job_id, "queued")
    drain()
    [row] = client.get("/jobs").json()["jobs"]
    assert (row["status"], row["result"]) == ("complete", 3)


@pytest.mark.since_stage(2)
@pytest.mark.parametrize("command", [b"WATCH", b"EXISTS"])
def test_an_enqueue_that_timed_out_before_its_transaction_is_a_503_and_stores_nothing(
    proxy: SlowRepliesProxy, client: TestClient, raw_redis: Any, command: bytes
) -> None:
    # ARQ checks the id (WATCH, EXISTS) before its MULTI/EXEC: a timeout there stored nothing.
    response = submit_with_a_late_reply(proxy, client, command)
    assert response.status_code == 503, response.text
    assert raw_redis.zcard("arq:queue") == 0


@pytest.mark.since_stage(3)
@pytest.mark.parametrize("command", [b"WATCH", b"EXISTS"])
def test_an_enqueue_that_timed_out_before_its_transaction_leaves_a_failed_row(
    proxy: SlowRepliesProxy, client: TestClient, command: bytes
) -> None:
    assert submit_with_a_late_reply(proxy, client, command).status_code == 503
    [row] = client.get("/jobs").json()["jobs"]
    assert row["status"] == "failed"
    assert row["error"].startswith("not enqueued: Redis is unavailable")
    assert job(client, row["job_id"])["status"] == "failed"


@pytest.mark.since_stage(4)
def test_a_retry_with_the_same_idempotency_key_after_a_lost_enqueue_reply_makes_no_second_job(
    proxy: SlowRepliesProxy, client: TestClient, raw_redis: Any
) -> None:
    # The first request's job reached Redis (it will run), but its reply was lost: a 503.
    # The client does what the key is for, and retries with it. It must get that job back
    # (or a 409), never a second job that runs the same work again.
    headers = {"Idempotency-Key": "lost-reply-1"}
    proxy.hold_reply_to = b"EXEC"
    try:
        first = client.post("/tasks/add", json={"x": 1, "y": 2}, headers=headers)
    finally:
        proxy.hold_reply_to = None
    assert first.status_code == 503, first.text
    [queued] = [member.decode() for member in raw_redis.zrange("arq:queue", 0, -1)]
    retry = client.post("/tasks/add", json={"x": 1, "y": 2}, headers=headers)
    assert retry.status_code in (202, 409), retry.text
    if retry.status_code == 202:
        assert retry.json()["job_id"] == queued
    assert raw_redis.zcard("arq:queue") == 1


@pytest.mark.since_stage(4)
def test_a_cancel_whose_redis_stops_answering_after_watch_is_a_503_not_a_hang(
    proxy: SlowRepliesProxy, client: TestClient, raw_redis: Any
) -> None:
    # cancel.py retries its transaction on every WatchError. redis-py also raises WatchError
    # when a command after WATCH times out, so a Redis that answers WATCH and then stalls
    # kept the DELETE looping, one timeout after another, for as long as it stalled.
    job_id = client.post("/tasks/add", params={"delay_seconds": 60}, json={"x": 1, "y": 2})
    job_id = job_id.json()["job_id"]
    proxy.hold_replies_after = b"WATCH"
    answer: list[Any] = []
    deleting = threading.Thread(target=lambda: answer.append(client.delete(f"/jobs/{job_id}")))
    deleting.start()
    deleting.join(CANCEL_DEADLINE_S)  # generous: "a 503 within about a second"
    proxy.hold_replies_after = None  # Redis answers again: a looping DELETE now ends
    deleting.join(CANCEL_DEADLINE_S)
    [response] = answer
    assert response.status_code == 503, response.text
