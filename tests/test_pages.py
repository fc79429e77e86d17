"""Every shell block on the docs pages is run against a real running stage.

How a block declares how it is run is in tests/pages.py; how a page is followed, in
tests/pagerun.py. A block that is not run says why, and appears in the summary as a skip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.pagerun import Session
from tests.pages import ROOT, Step, declaration_problems, steps

PAGES = [
    "README.md",
    "docs/index.md",
    "docs/quickstart.md",
    "docs/stages/stage1.md",
    "docs/stages/stage2.md",
    "docs/stages/stage3.md",
    "docs/stages/stage4.md",
    "docs/production.md",
    "docs/guides/beyond-one-machine.md",
    "docs/operating.md",
    "docs/guides/your-app.md",
    "docs/guides/testing.md",
    "docs/faq.md",
    "docs/load-testing.md",
    "docs/performance.md",
    "docs/jobkit.md",
]
# Pages whose declarations another engineer adds: strict, so the marker goes once they do.
PENDING: dict[str, str] = {}  # page -> why its blocks are not declared yet (none today)
STEPS = [step for page in PAGES for step in steps(page)]
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.xfail(reason=PENDING[p], strict=True)) if p in PENDING
     else p for p in PAGES],
)  # fmt: skip
def test_every_shell_block_says_how_the_tests_run_it(page):
    assert declaration_problems(page) == []


class Pages:
    """One reader's session per page (and one per "By hand" block), opened when the page's
    first step runs and closed after its last, so only one page's stage runs at a time."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory):
        self.tmp = tmp_path_factory
        self.open: dict[tuple[str, int | None], Session] = {}
        self.done: dict[str, int] = {}
        self.failed: dict[str, str] = {}

    def session(self, step: Step) -> Session:
        key = (step.page, step.block if step.alone else None)
        if key not in self.open:
            name = step.page.replace("/", "-") + (f"-block{step.block}" if step.alone else "")
            self.open[key] = Session(self.tmp.mktemp(name))
        return self.open[key]

    def take(self, step: Step) -> None:
        """Take every step of the page up to `step` (a -k selection still runs in order)."""
        mine = [s for s in STEPS if s.page == step.page]
        for index in range(self.done.get(step.page, 0), mine.index(step) + 1):
            if step.page in self.failed:
                pytest.fail(f"an earlier step failed: {self.failed[step.page]}")
            current = mine[index]
            self.done[step.page] = index + 1
            if current.kind == "skip":
                continue
            try:
                self.session(current).take(current)
            except BaseException:
                self.failed[step.page] = current.id
                raise
            finally:
                self._close_finished(current, mine, index)

    def _close_finished(self, step: Step, mine: list[Step], index: int) -> None:
        later = mine[index + 1 :]
        if step.alone and not any(s.alone and s.block == step.block for s in later):
            self.open.pop((step.page, step.block)).close()
        if not later or step.page in self.failed:
            for key in [k for k in self.open if k[0] == step.page]:
                self.open.pop(key).close()

    def close(self) -> None:
        for session in self.open.values():
            session.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    opened = Pages(tmp_path_factory)
    yield opened
    opened.close()


@pytest.mark.e2e  # the pages' own commands: make run, curl, uvicorn, ...
@pytest.mark.parametrize("step", STEPS, ids=[step.id for step in STEPS])
def test_each_command_on_a_page_prints_what_the_page_shows(step, pages):
    if step.kind == "skip":
        pytest.skip(f"not run: `{step.command}`: {step.why}")
    pages.take(step)


def test_the_api_docs_say_what_the_api_answers_to_broken_json(client):
    # The OpenAPI docs (Swagger UI, the reference page) promised 400 for a body that is not
    # valid JSON; FastAPI answers broken JSON with a 422 and keeps 400 for undecodable bytes.
    broken = client.post("/tasks/add", content=b'{"x": 5,', headers=JSON)
    undecodable = client.post("/tasks/add", content=b'{"x": "\xff"}', headers=JSON)
    documented = client.get("/openapi.json").json()["paths"]["/tasks/add"]["post"]["responses"]
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["type"] == "json_invalid"
    assert undecodable.status_code == 400
    assert "not valid JSON" not in documented["400"]["description"]
    assert "UTF-8" in documented["400"]["description"]


PLACEHOLDERS = re.compile(r"/home/you\b|github\.com/example\b|\bexample\.(?:com|org)/")


def test_no_page_shows_a_placeholder_a_reader_would_have_to_replace():
    found = [
        f"{path}: {match.group()}"
        for path in [*PAGES, "mkdocs.yml"]
        for match in PLACEHOLDERS.finditer((ROOT / path).read_text(encoding="utf-8"))
    ]
    assert found == []


API_PORT = re.compile(r"(?:127\.0\.0\.1|localhost):8000\b")


@pytest.mark.parametrize("page", PAGES)
def test_a_page_names_the_apis_port_in_one_line_that_sets_api(page):
    # `make run PORT=8080` (the README's answer to "port taken?") costs a reader one line
    # per page, API=http://127.0.0.1:8080, not a rewrite of every curl.
    mine = [step for step in STEPS if step.page == page and step.kind in ("run", "skip")]
    naming = [step.command for step in mine if API_PORT.search(step.command)]
    assert naming in ([], ["API=http://127.0.0.1:8000"]), naming
    using = [index for index, step in enumerate(mine) if "$API" in step.command]
    if using:
        setting = [i for i, step in enumerate(mine) if step.command.startswith("API=")]
        assert setting and setting[0] < using[0], f"{page} uses $API before it sets it"


def test_no_command_on_a_page_depends_on_the_day_it_is_read():
    # A fixed run_at in a command is in the past some day: compute times from "now".
    dated = [f"{s.id}: {s.command}" for s in STEPS if re.search(r"\b\d{4}-\d\d-\d\d", s.command)]
    assert dated == []
