"""Stage 3+: the jobs page in a real headless Chromium, against a real uvicorn.

The page is loaded while the job is still queued; only then does a worker run it. The page
must update itself (its script re-fetches the table) until the row says complete at 100 %.
"""

import os
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from devkit.valkey import free_port
from tests.browser import dump_dom

pytestmark = [pytest.mark.since_stage(3), pytest.mark.e2e]

START_DEADLINE_S = 30.0
# Virtual time: Chromium runs the page's timers as fast as it can, and waits for each
# fetch, so one real second covers many one-second refreshes. The budget only has to
# outlast the worker running the job.
PAGE_BUDGET_MS = 600_000


def poll(check, deadline_s: float, what: str):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_page_updates_itself_until_the_job_is_complete_at_100_percent(
    stage, settings_env, drain, chromium
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"{stage.package}.main:app", "--port", str(port)],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    page_loads: list[str] = []
    reader = threading.Thread(
        target=lambda: page_loads.extend(line for line in api.stdout if '"GET / HTTP' in line)
    )
    reader.start()
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/ping", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        poll(up, START_DEADLINE_S, "the API")
        body = {"steps": 4, "step_seconds": 0.05}
        job_id = httpx.post(f"{url}/tasks/report", json=body).json()["job_id"]

        dom: list[str] = []
        browser = threading.Thread(
            target=lambda: dom.append(dump_dom(chromium, f"{url}/", PAGE_BUDGET_MS))
        )
        browser.start()
        poll(lambda: page_loads, START_DEADLINE_S, "the browser to load the page")
        drain()  # only now does the job run
        browser.join()
    finally:
        api.terminate()
        api.wait(10)
        reader.join(10)
        api.stdout.close()

    row = re.search(rf'<tr id="job-{job_id}" class="(\w+)">(.*?)</tr>', dom[0], re.S)
    assert row, dom[0]
    assert row[1] == "complete"
    assert '<progress max="100" value="100">' in row[2]
    assert "step 4 of 4" in row[2]
    assert len(page_loads) > 1  # the first load showed it queued; the script fetched again
