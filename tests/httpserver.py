"""A local HTTP server whose answers a test scripts in advance, for the `fetch` task.

    server.script("/flaky", Reply(503), Reply(503), Reply(200, body=b"ok"))

Each request to a path takes the next reply; the last one repeats. `Reply(hold=event)` waits
for the test to set `event` before answering, to put the answer at an exact point. Every
request's arrival time is recorded in `server.hits[path]`, and its headers in
`server.request_headers[path]`. `ScriptedServer(host="127.0.0.2", port=p)` listens
elsewhere on loopback (Linux answers on all of 127.0.0.0/8), for instance beside another
server on the same port p; with `tls=<a server SSLContext>` it speaks HTTPS.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOLD_MAX_S = 30.0  # a held reply is sent after this even if the test never releases it
# How often the server loop looks for shutdown(); socketserver's 0.5 s default made every
# test that used a server wait half a second in its teardown.
SHUTDOWN_POLL_S = 0.02


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before answering, to provoke client timeouts
    hold: threading.Event | None = None  # answer only once the test sets it (HOLD_MAX_S at most)


class ScriptedServer:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.hits: dict[str, list[float]] = defaultdict(list)
        self.request_headers: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.hits[self.path].append(time.monotonic())
                    server.request_headers[self.path].append(dict(self.headers))
                    replies = server.scripts.get(self.path, [Reply(404)])
                    reply = replies.pop(0) if len(replies) > 1 else replies[0]
                if reply.delay_s:
                    server.stopping.wait(reply.delay_s)
                if reply.hold is not None:
                    reply.hold.wait(HOLD_MAX_S)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.host, self.port = host, self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> str:
        with self.lock:
            self.scripts[path] = list(replies)
        return self.url(path)

    def __enter__(self) -> ScriptedServer:
        serve = self.httpd.serve_forever
        threading.Thread(target=serve, args=(SHUTDOWN_POLL_S,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def fetch_settings(monkeypatch: Any, stage: Any, allowlist: list[str]) -> None:
    """Settings for fetch tests: fast backoff, short timeouts, `allowlist` let through the
    SSRF guard (our local servers are loopback, which it refuses otherwise)."""
    monkeypatch.setenv("FETCH_ALLOWLIST", json.dumps(allowlist))
    monkeypatch.setenv("FETCH_BASE_DELAY_S", "0.01")
    monkeypatch.setenv("FETCH_MAX_DELAY_S", "0.05")
    # Long enough for a connect on a busy machine (0.2 s once ran out there, a ConnectTimeout
    # where a test waited for a ReadTimeout); a test that wants a read to time out delays
    # its reply by longer.
    monkeypatch.setenv("FETCH_TIMEOUT_S", "1.0")
    monkeypatch.setenv("FETCH_MAX_TRIES", "3")
    stage.module("config").get_settings.cache_clear()
