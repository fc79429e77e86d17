"""The jobs page (stage 3+), used as a person uses it: in a real Chromium driven by
Playwright, against a real uvicorn and a real arq worker, clicking and waiting for what
appears. Nothing here reads the HTML as text."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from jobkit.heartbeat import TTL_S
from jobkit.streams import MAX_STREAMS_PER_CLIENT
from tests.helpers import poll
from tests.httpserver import Reply, ScriptedServer
from tests.processes import Processes, free_port, stage_env

pytestmark = [pytest.mark.since_stage(3), pytest.mark.browser]

JOBS_DEADLINE_S = 60.0  # for a worker process to run a handful of short jobs


@dataclass
class Site:
    url: str
    procs: Processes
    env: dict[str, str]
    stage: Any

    def submit(self, task: str, **args: Any) -> str:
        response = httpx.post(f"{self.url}/tasks/{task}", json=args, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def submit_later(self, task: str, delay_seconds: float, **args: Any) -> str:
        params = {"delay_seconds": delay_seconds}
        response = httpx.post(f"{self.url}/tasks/{task}", json=args, params=params, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def jobs(self, **params: Any) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/jobs", params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def start_worker(self) -> Any:
        return self.procs.worker(self.stage, self.env)


@contextlib.contextmanager
def site(stage: Any, redis_url: str, tmp_path: Path, **settings: str) -> Iterator[Site]:
    """The stage's API as a uvicorn process (no worker yet: a test starts one)."""
    port = free_port()
    env = stage_env(redis_url, tmp_path / "data", **settings)
    with Processes(tmp_path / "logs") as procs:
        procs.api(stage, port, env)
        yield Site(f"http://127.0.0.1:{port}", procs, env, stage)


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.get_by_role("status")).to_have_text("Live: this page updates itself.")
    page.evaluate("window.loadedOnce = true")  # gone if the page ever reloads


# From a page: GET /ping, given up after 5 s (a browser queues a request while it has six
# connections open to the server; then it would wait for one of them to end).
PING = """async () => {
  const response = await fetch("/ping", { signal: AbortSignal.timeout(5000) }).catch((e) => e);
  return response.status ?? response.name;
}"""


@contextlib.contextmanager
def held_streams(url: str, count: int) -> Iterator[None]:
    """`count` event streams held open from this address, as other pages would."""
    with httpx.Client(timeout=10) as client, contextlib.ExitStack() as streams:
        for _ in range(count):
            response = streams.enter_context(client.stream("GET", f"{url}/events"))
            assert response.status_code == 200
        yield


def shown_ids(page: Page) -> list[str]:
    rows = page.locator("#jobs tr[id^='job-']")
    return rows.evaluate_all("rows => rows.map((row) => row.id.slice('job-'.length))")


def test_a_job_submitted_after_the_page_loaded_appears_and_its_bar_moves(
    stage, redis_url, tmp_path, page: Page
):
    with site(stage, redis_url, tmp_path) as app:
        open_page(page, f"{app.url}/")
        expect(page.get_by_role("alert").filter(has_text="No worker is running")).to_be_visible()
        job_id = app.submit("report", steps=6, step_seconds=0.4)

        row = page.locator(f"#job-{job_id}")
        expect(row).to_have_class("queued")  # it appeared, with no reload
        expect(page.locator("[data-count='queued']")).to_have_text("1")
        app.start_worker()
        expect(page.locator("#no-workers")).to_be_hidden()
        expect(page.locator("#workers li")).to_have_count(1)
        bar = row.get_by_role("progressbar")
        poll(lambda: 0 < int(bar.evaluate("bar => bar.value")) < 100, JOBS_DEADLINE_S, "a bar")
        expect(row).to_have_class("complete", timeout=JOBS_DEADLINE_S * 1000)
        expect(bar).to_have_js_property("value", 100)
        expect(row.locator(".message")).to_have_text("step 6 of 6")
        expect(page.locator("[data-count='complete']")).to_have_text("1")
        assert page.evaluate("window.loadedOnce") is True  # never reloaded


@pytest.mark.stages(3)  # the same script in stage 4
def test_seven_tabs_share_one_stream_and_leave_the_browser_free_to_ask(
    stage, redis_url, tmp_path, page: Page
):
    with site(stage, redis_url, tmp_path) as app:
        tabs = [page, *(page.context.new_page() for _ in range(6))]
        for tab in tabs:
            open_page(tab, f"{app.url}/")
        assert [tab.evaluate("window.jobsPage.leads()") for tab in tabs] == [True] + [False] * 6
        for tab in tabs:
            assert tab.evaluate(PING) == 200
        job_id = app.submit("add", x=1, y=2)
        for tab in tabs:
            expect(tab.locator(f"#job-{job_id}")).to_have_class("queued")

        tabs.pop(0).close()  # the tab that holds the stream: another one takes it over
        later = app.submit("add", x=2, y=2)
        for tab in tabs:
            expect(tab.locator(f"#job-{later}")).to_have_class("queued")
        assert sum(tab.evaluate("window.jobsPage.leads()") for tab in tabs) == 1


@pytest.mark.stages(3)
def test_a_page_refused_its_stream_goes_live_again_and_catches_up(
    stage, redis_url, tmp_path, page: Page
):
    with site(stage, redis_url, tmp_path) as app:
        with held_streams(app.url, MAX_STREAMS_PER_CLIENT):
            with page.expect_response(lambda r: r.url.endswith("/events")) as refused:
                page.goto(f"{app.url}/")
            assert refused.value.status == 429
            expect(page.get_by_role("status")).to_contain_text("trying again")
            missed = app.submit("add", x=1, y=2)  # while the page hears nothing
        expect(page.get_by_role("status")).to_have_text("Live: this page updates itself.")
        expect(page.locator(f"#job-{missed}")).to_have_class("queued")
        later = app.submit("add", x=2, y=2)
        expect(page.locator(f"#job-{later}")).to_have_class("queued")


# A page with no navigator.locks (http on a host other than localhost is not a secure context),
# and a switch for what document.hidden says, as when its tab goes to the background.
NO_LOCKS = """delete Navigator.prototype.locks;
let hidden = false;
Object.defineProperty(Document.prototype, "hidden", { get: () => hidden, configurable: true });
window.setHidden = (value) => {
  hidden = value;
  document.dispatchEvent(new Event("visibilitychange"));
};
"""


@pytest.mark.stages(3)
def test_a_tab_that_cannot_share_its_stream_closes_it_while_hidden(
    stage, redis_url, tmp_path, page: Page
):
    page.add_init_script(NO_LOCKS)
    with site(stage, redis_url, tmp_path) as app:
        open_page(page, f"{app.url}/")
        assert page.evaluate("window.jobsPage.leads()")  # a stream of its own
        page.evaluate("window.setHidden(true)")
        # Its place is free: this address may hold as many streams as the server allows.
        poll(lambda: can_hold_streams(app.url, MAX_STREAMS_PER_CLIENT), 10, "the place freed")
        missed = app.submit("add", x=1, y=2)
        page.evaluate("window.setHidden(false)")
        expect(page.get_by_role("status")).to_have_text("Live: this page updates itself.")
        expect(page.locator(f"#job-{missed}")).to_have_class("queued")


def can_hold_streams(url: str, count: int) -> bool:
    try:
        with held_streams(url, count):
            return True
    except AssertionError:
        return False


def test_the_detail_view_shows_a_jobs_arguments_error_and_times(
    stage, redis_url, tmp_path, page: Page
):
    with site(stage, redis_url, tmp_path) as app:
        app.start_worker()
        failing = app.submit("divide", x=1, y=0)
        poll(lambda: app.jobs(status="failed")["jobs"], JOBS_DEADLINE_S, "the job to fail")
        open_page(page, f"{app.url}/")

        page.get_by_role("button", name=f"details of job {failing}").focus()
        page.keyboard.press("Enter")  # from the keyboard
        detail = page.get_by_role("dialog")
        expect(detail).to_be_visible()
        expect(detail.get_by_role("heading")).to_have_text(f"Job {failing}")
        expect(detail.locator("dd").filter(has_text="ZeroDivisionError").first).to_be_visible()
        expect(detail.locator("dd pre").first).to_contain_text('"y": 0')
        expect(detail.locator("dt", has_text="finished (UTC)")).to_have_count(1)
        page.keyboard.press("Escape")
        expect(detail).to_be_hidden()

        ink = "getComputedStyle(document.body).color"
        light = page.evaluate(ink)
        page.emulate_media(color_scheme="dark")  # the system's dark mode: the page follows
        assert page.evaluate(ink) != light


NEWER_FIRST = """([a, b]) => window.jobsPage.newerFirst(
  { enqueue_time: a, job_id: "x" }, { enqueue_time: b, job_id: "y" })"""


def test_the_filters_and_the_pages_show_what_get_jobs_answers(
    stage, redis_url, tmp_path, page: Page
):
    with site(stage, redis_url, tmp_path) as app:
        app.start_worker()
        for n in range(23):
            app.submit("add", x=n, y=1)
        for n in range(4):
            app.submit("divide", x=n, y=0)
        poll(lambda: len(app.jobs(status="complete", limit=50)["jobs"]) == 23, JOBS_DEADLINE_S,
             "the jobs to run")  # fmt: skip
        poll(lambda: len(app.jobs(status="failed")["jobs"]) == 4, JOBS_DEADLINE_S, "failures")
        open_page(page, f"{app.url}/")

        first = app.jobs(limit=20)
        expect(page.locator("#jobs tr[id^='job-']")).to_have_count(20)
        assert shown_ids(page) == [job["job_id"] for job in first["jobs"]]
        page.get_by_role("button", name="Older jobs").click()
        older = app.jobs(limit=20, cursor=first["next_cursor"])
        expect(page.locator("#jobs tr[id^='job-']")).to_have_count(len(older["jobs"]))
        assert shown_ids(page) == [job["job_id"] for job in older["jobs"]]
        expect(page.get_by_role("button", name="Older jobs")).to_be_disabled()
        page.get_by_role("button", name="Newer jobs").click()
        expect(page.locator("#jobs tr[id^='job-']")).to_have_count(20)

        page.get_by_label("Function").select_option("divide")
        expect(page.locator("#jobs tr[id^='job-']")).to_have_count(4)
        assert shown_ids(page) == [job["job_id"] for job in app.jobs(function="divide")["jobs"]]
        page.get_by_label("Function").select_option("")
        page.get_by_role("button", name="failed 4", exact=True).click()  # its name: what it shows
        expect(page.get_by_label("Status")).to_have_value("failed")
        expect(page.locator("#jobs tr[id^='job-']")).to_have_count(4)
        expect(page.locator("[data-count='complete']")).to_have_text("23")

        # Times compare as times, not as text: pydantic writes a whole second with no fraction.
        whole, half = "2026-01-01T00:00:05Z", "2026-01-01T00:00:05.500000Z"
        assert page.evaluate(NEWER_FIRST, [whole, half]) > 0  # the second is newer
        assert page.evaluate(NEWER_FIRST, ["2026-01-01T00:00:06Z", half]) < 0


@pytest.mark.since_stage(4)
def test_cancel_stops_a_deferred_job_from_the_page(stage, redis_url, tmp_path, page: Page):
    with site(stage, redis_url, tmp_path) as app:
        app.start_worker()
        job_id = app.submit_later("add", 60, x=1, y=2)
        open_page(page, f"{app.url}/")
        row = page.locator(f"#job-{job_id}")
        expect(row.locator(".status")).to_contain_text("deferred until")
        expect(page.locator("[data-queue='scheduled']")).to_have_text("1")
        expect(page.locator("#cron-runs li")).to_have_count(6)  # GET /cron, none run yet
        expect(page.locator("#cron-runs li").first).to_contain_text(
            "not run, or its result has expired"
        )

        row.get_by_role("button", name=f"cancel job {job_id[:8]}").click()
        expect(row).to_have_class("cancelled")
        expect(page.locator("[data-queue='scheduled']")).to_have_text("0")
        assert httpx.get(f"{app.url}/jobs/{job_id}").json()["status"] == "cancelled"


TWO_RETRIES = """async (jobId) => Promise.all([1, 2].map(async () => {
  const response = await fetch(`/jobs/${jobId}/retry`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  return { status: response.status, ...(await response.json()) };
}))"""


@pytest.mark.since_stage(4)
def test_retry_of_a_failed_job_makes_one_linked_job_even_on_a_double_click(
    stage, redis_url, tmp_path, page: Page
):
    with site(stage, redis_url, tmp_path) as app:
        app.start_worker()
        old = app.submit("divide", x=1, y=0)
        poll(lambda: app.jobs(status="failed")["jobs"], JOBS_DEADLINE_S, "the job to fail")
        open_page(page, f"{app.url}/")

        expect(page.locator("#chart-summary")).to_contain_text("1 failed")  # GET /stats
        expect(page.locator("#chart-done canvas")).to_have_count(1)
        # A double click, or two tabs, as the server sees them: two requests at once, from the
        # page (the button disables itself after one click, so a real double click sends one).
        answers = page.evaluate(TWO_RETRIES, old)
        assert [answer["status"] for answer in answers] == [202, 202]
        divides = [job for job in app.jobs(function="divide")["jobs"] if job["job_id"] != old]
        assert len(divides) == 1  # one retry, not two
        assert {answer["job_id"] for answer in answers} == {divides[0]["job_id"]}
        expect(page.locator("#jobs tr[id^='job-']")).to_have_count(2)  # it appeared
        page.get_by_role("button", name=f"retry job {old[:8]}").click()  # and once more, later
        new_id = divides[0]["job_id"]
        expect(page.get_by_role("status")).to_have_text(f"Retried as job {new_id[:8]}.")
        assert len(app.jobs(function="divide")["jobs"]) == 2  # still one retry
        page.get_by_role("button", name=f"details of job {old}").click()
        retried_as = page.get_by_role("dialog").locator("dd", has_text=divides[0]["job_id"][:8])
        expect(retried_as).to_be_visible()
        new = httpx.get(f"{app.url}/jobs/{divides[0]['job_id']}").json()
        assert new["retry_of"] == old
        assert httpx.get(f"{app.url}/jobs/{old}").json()["retried_by"] == new["job_id"]

        # Retry every failed divide not retried yet: the retry, which failed in turn.
        page.keyboard.press("Escape")
        poll(lambda: len(app.jobs(status="failed")["jobs"]) == 2, JOBS_DEADLINE_S, "2 failures")
        page.get_by_label("Function").select_option("divide")
        page.once("dialog", lambda dialog: dialog.accept())  # "Retry the failed ... jobs?"
        page.get_by_role("button", name="Retry failed jobs…").click()
        expect(page.get_by_role("status")).to_have_text("Retried 1 failed divide jobs.")
        assert len(app.jobs(function="divide")["jobs"]) == 3


@pytest.mark.stages(4)
def test_a_killed_worker_leaves_the_workers_panel_within_its_heartbeat_ttl(
    stage, redis_url, tmp_path, page: Page
):
    with site(stage, redis_url, tmp_path) as app:
        worker = app.start_worker()
        open_page(page, f"{app.url}/")
        expect(page.locator("#workers li")).to_have_count(1)
        worker.kill_all()  # SIGKILL: it writes nothing more
        expect(page.locator("#workers li")).to_have_count(0, timeout=(TTL_S + 10) * 1000)
        expect(page.get_by_role("alert").filter(has_text="No worker is running")).to_be_visible()


@pytest.mark.since_stage(4)
def test_a_retrying_fetch_shows_its_next_try_and_its_long_result_is_cut_in_the_table(
    stage, redis_url, tmp_path, page: Page
):
    local = {"FETCH_ALLOWLIST": '["127.0.0.1/32"]'}  # our server is on loopback
    with ScriptedServer() as server, site(stage, redis_url, tmp_path, **local) as app:
        busy = Reply(503, headers={"Retry-After": "3"})  # fetch honours it: 3 s to the next try
        url = server.script("/busy", busy, Reply(200, body=b"ok"))
        app.start_worker()
        open_page(page, f"{app.url}/")
        job_id = app.submit("fetch", url=url)
        row = page.locator(f"#job-{job_id}")

        expect(row.locator(".status")).to_contain_text("retrying: try 2 at")
        expect(row).to_have_class("complete", timeout=JOBS_DEADLINE_S * 1000)
        result = httpx.get(f"{app.url}/jobs/{job_id}").json()["result"]
        cell = row.locator(".outcome")
        expect(cell).to_contain_text("…")  # cut in the table
        assert result["sha256"] not in cell.inner_text()
        row.get_by_role("button", name=f"details of job {job_id}").click()
        detail = page.get_by_role("dialog")
        expect(detail).to_contain_text(result["sha256"])  # whole in the detail
        expect(detail.locator("ol.tries li")).to_have_count(2)
        expect(detail.locator("ol.tries li").first).to_contain_text("try 1: retrying")
