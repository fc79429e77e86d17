"""The docs' pictures of the jobs page come from a command (devkit/screenshots.py), not by
hand: here it runs for stage 3 into a folder of the test's own, and makes a picture."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.browser  # the stage's processes and Chromium

SHOOT_DEADLINE_S = 120


def test_the_screenshot_command_photographs_a_running_stages_page(chromium, tmp_path):
    command = [sys.executable, "-m", "devkit.screenshots", "--stages", "3", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SHOOT_DEADLINE_S)
    assert done.returncode == 0, done.stderr
    picture = tmp_path / "stage3-jobs-page.png"
    assert picture.read_bytes().startswith(b"\x89PNG")
    assert picture.stat().st_size > 10_000  # a page, not a blank
