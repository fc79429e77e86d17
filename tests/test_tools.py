"""Chromium and wrk come from `make tools`, which `make test` runs first; a test that needs
a missing one fails and names the command (a skip would hide the missing coverage)."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest

from devkit import tools
from devkit.stages import ROOT
from tests.tools import require

MAKE_TIMEOUT_S = 60


@pytest.fixture
def wrk_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    absent = dataclasses.replace(tools.TOOLS["wrk"], commands=("wrk-that-is-not-installed",))
    monkeypatch.setitem(tools.TOOLS, "wrk", absent)


def test_a_test_that_needs_a_missing_tool_fails_and_says_run_make_tools(wrk_missing) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"wrk is not installed .*run `make tools`"):
        require("wrk")


def test_the_check_names_the_missing_tool_and_installs_nothing(
    wrk_missing, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tools.main(["--check"]) == 1
    assert "missing: wrk" in capsys.readouterr().out


def test_without_root_it_says_how_to_install_them_instead(
    wrk_missing, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    assert tools.main([]) == 1
    out = capsys.readouterr().out
    assert "sudo apt-get install wrk" in out and "brew install wrk" in out


@pytest.mark.e2e  # runs make
def test_make_test_runs_make_tools_before_the_tests() -> None:
    # `make -n` prints the commands without running them.
    commands = subprocess.run(
        ["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True,
        timeout=MAKE_TIMEOUT_S,
    ).stdout.splitlines()  # fmt: skip
    tools_at = [i for i, line in enumerate(commands) if "-m devkit.tools" in line]
    tests_at = [i for i, line in enumerate(commands) if "-m pytest" in line]
    assert tools_at and tests_at and tools_at[0] < tests_at[0], "\n".join(commands)
