"""Every stage serves its own Swagger UI and ReDoc: `/docs` works with no network.

FastAPI's default /docs and /redoc pages load their JavaScript and CSS from a CDN, so on a
workshop machine without internet they are blank pages. The test browser reaches loopback
only (tests/browser.py), so a page that still needs a CDN renders nothing here either.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.browser import dump_dom
from tests.httpserver import Reply, ScriptedServer
from tests.processes import Processes, free_port

DOCS_PAGES = ("/docs", "/redoc")
RENDER_BUDGET_MS = 10_000  # virtual time: the UIs fetch /openapi.json, then render
# Every URL a page loads by itself: scripts, stylesheets, icons, the schema ReDoc reads.
LOADED_URL = re.compile(r'(?:src|href|spec-url)="([^"]+)"')


def operations(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, summary) for every operation in the schema."""
    return [
        (path, operation["summary"])
        for path, methods in schema["paths"].items()
        for operation in methods.values()
    ]


def visible_text(dom: str) -> str:
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", text.replace("<wbr>", "")))


def test_the_docs_pages_load_every_file_from_the_app_itself(client: TestClient) -> None:
    for page in DOCS_PAGES:
        response = client.get(page)
        assert response.status_code == 200, f"{page}: {response.status_code}"
        assert response.headers["content-type"].startswith("text/html")
        urls = LOADED_URL.findall(response.text)
        assert any(url.endswith(".js") for url in urls), f"{page} loads no script: {urls}"
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url}"
            asset = client.get(url)
            assert asset.status_code == 200 and asset.content, f"{page}: {url} is missing"


def test_the_oauth2_redirect_page_is_still_served(client: TestClient) -> None:
    response = client.get("/docs/oauth2-redirect")
    assert response.status_code == 200
    assert "oauth2" in response.text.lower()


def test_the_docs_pages_add_nothing_to_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert all(
        p in ("/", "/events", "/stats", "/cron")  # the jobs page, its stream, (4) charts, cron
        or p.startswith(("/ping", "/health", "/queue", "/metrics", "/tasks/", "/jobs"))
        for p in paths
    )
    assert not [p for p in paths if p.startswith(("/docs", "/redoc", "/static"))]


@pytest.mark.browser
def test_the_test_browser_reaches_loopback_and_nothing_else(chromium: str) -> None:
    with ScriptedServer() as server:
        # One script from this loopback server, one from "a CDN" that the browser would
        # resolve to the same server if it asked the network.
        page = server.script(
            "/page",
            Reply(
                body=b'<p id="local">not run</p><p id="cdn">not run</p>'
                + f'<script src="{server.url("/local.js")}"></script>'.encode()
                + f'<script src="http://cdn.test:{server.port}/cdn.js"></script>'.encode()
            ),
        )
        for name in ("local", "cdn"):
            server.script(
                f"/{name}.js",
                Reply(body=f'document.getElementById("{name}").textContent = "ran";'.encode()),
            )
        dom = dump_dom(chromium, page, flags=["--host-resolver-rules=MAP cdn.test 127.0.0.1"])
    assert '<p id="local">ran</p>' in dom
    assert '<p id="cdn">not run</p>' in dom
    assert not server.hits["/cdn.js"], "the browser reached a non-loopback host"


@pytest.mark.e2e
@pytest.mark.browser
def test_swagger_ui_and_redoc_render_every_operation_with_the_network_off(
    stage: Any, settings_env: None, chromium: str, tmp_path: Path
) -> None:
    with Processes(tmp_path / "logs") as procs:
        port = free_port()
        procs.api(stage, port, dict(os.environ))
        base = f"http://127.0.0.1:{port}"
        schema = httpx.get(f"{base}/openapi.json").json()
        swagger = dump_dom(chromium, f"{base}/docs", wait_ms=RENDER_BUDGET_MS)
        redoc = dump_dom(chromium, f"{base}/redoc", wait_ms=RENDER_BUDGET_MS)

    expected = operations(schema)
    assert ("/ping", "Ping") in expected
    rendered_paths = set(re.findall(r'data-path="([^"]+)"', swagger))
    assert rendered_paths == set(schema["paths"]), "Swagger UI did not render the operations"
    swagger_text, redoc_text = visible_text(swagger), visible_text(redoc)
    for path, summary in expected:
        assert summary in swagger_text, f"Swagger UI does not show {summary!r}"
        assert summary in redoc_text and path in redoc_text, f"ReDoc does not show {path}"
