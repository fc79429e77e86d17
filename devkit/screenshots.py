"""The docs' pictures of the jobs page, made again from the running stages, not by hand.

    python -m devkit.screenshots            # docs/img/stage3-jobs-page.png, stage4-jobs-page.png

For each of stages 3 and 4: the stage on a throwaway data folder (embedded Valkey, API, one
worker), a few jobs of each kind (a `report` still running, an `add` done, a `divide` that
failed, in stage 4 also a deferred job and a retried one), then the page in the system
Chromium (`make tools`), driven by Playwright, photographed once the running job's bar has
moved. Needs the dev extras (Playwright) and Chromium, as the browser tests do.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, sync_playwright

from devkit import tools
from devkit.harness import StageProcesses

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"
WINDOW = {"width": 1280, "height": 860}
DEADLINE_S = 30.0
FLAGS = ["--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9"]  # loopback only


def submit(url: str, task: str, body: dict, **params: object) -> str:
    response = httpx.post(f"{url}/tasks/{task}", json=body, params=params, timeout=10)
    response.raise_for_status()
    return response.json()["job_id"]


def wait_for(url: str, job_id: str, statuses: set[str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()["status"] not in statuses:
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} did not reach {statuses}")
        time.sleep(0.1)


def make_jobs(url: str, stage: int) -> str:
    """A few jobs of each kind; returns the one still running."""
    failed = submit(url, "divide", {"x": 1, "y": 0})
    submit(url, "add", {"x": 2, "y": 3})
    wait_for(url, failed, {"failed"})
    if stage >= 4:
        submit(url, "add", {"x": 4, "y": 5}, delay_seconds=3600)
        httpx.post(f"{url}/jobs/{failed}/retry", timeout=10).raise_for_status()
    running = submit(url, "report", {"steps": 20, "step_seconds": 0.5})
    wait_for(url, running, {"in_progress"})
    return running


def photograph(page: Page, url: str, running: str, path: Path) -> None:
    page.goto(f"{url}/")
    page.get_by_text("Live: this page updates itself.").wait_for()
    bar = page.locator(f"#job-{running} progress")
    deadline = time.monotonic() + DEADLINE_S
    while int(bar.evaluate("bar => bar.value")) < 20:
        if time.monotonic() > deadline:
            raise SystemExit("the running job's bar did not move")
        time.sleep(0.1)
    page.screenshot(path=path, full_page=True)


def shoot(browser: Browser, stage: int, folder: Path) -> Path:
    with tempfile.TemporaryDirectory() as data, StageProcesses(stage, Path(data)) as procs:
        running = make_jobs(procs.url, stage)
        page = browser.new_page(viewport=WINDOW)
        path = folder / f"stage{stage}-jobs-page.png"
        photograph(page, procs.url, running, path)
        page.close()
        return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--out", type=Path, default=IMAGES, help="the folder (docs/img)")
    args = parser.parse_args()
    chromium = tools.find("chromium")
    if chromium is None:
        raise SystemExit(f"Chromium is not installed: {tools.INSTALL_HINT}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        for stage in args.stages:
            print(f"wrote {shoot(browser, stage, args.out)}")
        browser.close()


if __name__ == "__main__":
    main()
