"""The docs site, built and opened in a real headless Chromium, offline.

`mkdocs build --strict` (in `make test`) proves the Markdown and the includes resolve; this
proves what a reader sees: the stage code is on the page, the diagrams render to SVG from
the vendored Mermaid (no CDN), and images load.
"""

from __future__ import annotations

import functools
import html
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devkit.stages import ROOT, STAGES
from tests.browser import dump_dom

pytestmark = pytest.mark.browser  # Chromium, and mkdocs in a process

BUILD_TIMEOUT_S = 120
# Material renders each diagram into a *closed* shadow root, which neither --dump-dom nor a
# page script can see. Injected into the test's copy of each page, before the theme's
# bundle: opens those shadow roots, then copies what a reader would see into attributes.
PROBE = """<script>
(() => {
  const attach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) {
    return attach.call(this, { ...init, mode: "open" });
  };
  setInterval(() => {
    for (const el of document.querySelectorAll("div.mermaid")) {
      const svg = el.shadowRoot && el.shadowRoot.querySelector("svg");
      const labels = svg && svg.querySelectorAll("text, foreignObject").length;
      if (svg) el.setAttribute("data-probe-svg", labels);
    }
    for (const img of document.images) {
      if (img.complete) img.setAttribute("data-probe-width", img.naturalWidth);
    }
  }, 100);
})();
</script>"""
# An include that failed, or a directive left unexpanded (`--8<-- "path"`). Section markers
# are not looked for: pymdownx.snippets drops them from what it includes, and the generated
# diffs no longer hold any (devkit.stagediff strips them).
SNIPPET_ERRORS = re.compile(r'file not found|snippet .*not found|--8<-- "', re.I)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site built into a temporary folder and served on a free loopback port."""
    out = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=True,
        timeout=BUILD_TIMEOUT_S,
    )
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        page.write_text(text.replace("</head>", PROBE + "</head>", 1), encoding="utf-8")
    handler = functools.partial(QuietHandler, directory=str(out))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: any free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def code_text(dom: str) -> str:
    """The text of every code block, without the highlighter's <span>s."""
    blocks = re.findall(r"<code[^>]*>(.*?)</code>", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", "\n".join(blocks)))


def rendered_diagrams(dom: str) -> list[int]:
    """For each diagram that became an SVG, how many text labels it has."""
    return [int(n) for n in re.findall(r'<div class="mermaid"[^>]*data-probe-svg="(\d+)"', dom)]


def test_the_home_page_renders_its_diagram_without_a_cdn(chromium: str, site: str) -> None:
    dom = dump_dom(chromium, f"{site}/", wait_ms=5000)
    assert "Background jobs in FastAPI" in dom
    assert 'src="javascripts/mermaid/mermaid.min.js"' in dom
    assert "unpkg.com" not in dom
    diagrams = rendered_diagrams(dom)
    assert diagrams and min(diagrams) > 0, "the flowchart did not render to an <svg>"
    assert '<pre class="mermaid"' not in dom, "a diagram was left as source text"


def test_the_stage2_chapter_shows_the_stage_code_and_its_sequence_diagram(
    chromium: str, site: str
) -> None:
    dom = dump_dom(chromium, f"{site}/stages/stage2/", wait_ms=5000)
    code = code_text(dom)
    stage_code = {
        name: (ROOT / "stage2_arq_basic" / name).read_text() for name in ("jobs.py", "main.py")
    }
    known_lines = {
        "jobs.py": "def serialize(data: dict[str, Any]) -> bytes:",
        "main.py": "job = await redis.enqueue_job(name, **dict(args))",
    }
    for name, known_line in known_lines.items():
        assert known_line in stage_code[name], (
            f"the test's known line in {name} moved; pick another"
        )
        assert known_line in code
    assert "+++ stage2_arq_basic/worker.py" in code, "the generated stage diff is missing"
    assert not SNIPPET_ERRORS.search(html.unescape(dom)), "an include failed or was left as is"
    diagrams = rendered_diagrams(dom)
    assert len(diagrams) == 1 and diagrams[0] >= 4, "the sequence diagram did not render"


def test_the_reference_page_has_each_stages_http_api_and_settings_tables(
    chromium: str, site: str
) -> None:
    # Generated Markdown (docs/generated/, by devkit.docfragments), included with snippets.
    dom = dump_dom(chromium, f"{site}/reference/")
    tables = re.findall(r"<table>(.*?)</table>", dom, flags=re.S)
    api = [t for t in tables if "<th>endpoint</th>" in t and "<th>what it does</th>" in t]
    settings = [t for t in tables if "<th>environment variable</th>" in t]
    assert len(api) == len(settings) == len(STAGES), "a stage's reference table is missing"
    for package in STAGES.values():
        assert f"<code>{package}</code>" in dom
    assert all("<code>GET /ping</code>" in table for table in api)
    assert all("<code>LOG_LEVEL</code>" in table for table in settings)
    assert "<code>POST /tasks/fetch</code>" in api[-1]
    assert "reference:" not in dom and "--8&lt;--" not in dom, "a marker was left unexpanded"


def test_every_image_on_the_results_pages_loads(chromium: str, site: str) -> None:
    for page in ("when-to-use/", "load-testing/"):
        dom = dump_dom(chromium, f"{site}/{page}")
        assert "No reference run is committed yet" in dom or "<table" in dom
        for tag in re.findall(r"<img [^>]*>", dom):
            assert re.search(r'data-probe-width="[1-9]', tag), f"broken image on {page}: {tag}"
    chart = ROOT / "docs" / "results" / "prober_latency.png"
    if chart.exists():
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "the chart is not a PNG"
        assert "prober_latency.png" in dump_dom(chromium, f"{site}/load-testing/")
