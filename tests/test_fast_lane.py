"""`make check`, the contributor's minute: the split between it and `make test` stays honest.

A test that starts a process of its own says so (`e2e`, or `browser` for Chromium);
`make check` runs the others. tests/conftest.py's ProcessWatch fails a test that starts one
without the marker, and every program a test drives is one `make tools` installs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from devkit import tools
from devkit.stages import ROOT
from tests.conftest import PROCESS_MARKERS, ProcessWatch


class Item(SimpleNamespace):
    """What ProcessWatch reads of a pytest item: its id and its markers."""

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


def phase_of(watch: ProcessWatch, item: Item, work) -> None:
    """One test phase (setup, call or teardown) as pytest runs it under the watch."""
    phase = watch.phase(item)
    next(phase)
    work()
    with pytest.raises(StopIteration):
        phase.send(None)


@pytest.mark.e2e  # it starts a process, on purpose
def test_a_test_that_starts_a_process_without_saying_so_fails_and_names_it():
    watch = ProcessWatch()
    sys.addaudithook(watch.audit)  # this test's own watch, besides the session's
    start = lambda: subprocess.run(["true"], check=True)  # noqa: E731
    with pytest.raises(pytest.fail.Exception, match=r"started a process .*'true'"):
        phase_of(watch, Item(nodeid="tests/x.py::test_x", markers=()), start)
    for marker in PROCESS_MARKERS:  # ... and one that says so may
        phase_of(watch, Item(nodeid="tests/x.py::test_x", markers=(marker,)), start)
    phase_of(watch, Item(nodeid="tests/x.py::test_x", markers=()), lambda: None)


def test_make_check_runs_lint_types_and_only_the_tests_that_start_no_process():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\ncheck:") :].split("\n\n")[0]
    markers = re.search(r"^CHECK_MARKERS := (.+)$", makefile, re.M)[1]
    assert markers == " and ".join(f"not {marker}" for marker in PROCESS_MARKERS)
    for step in ("ruff check .", "ruff format --check .", "mypy $(STAGE_PACKAGES)"):
        assert step in recipe, recipe
    assert '-m pytest -m "$(CHECK_MARKERS)"' in recipe
    configured = (ROOT / "pyproject.toml").read_text()
    assert all(f'"{marker}: ' in configured for marker in PROCESS_MARKERS)  # --strict-markers


def test_every_program_a_test_requires_is_one_make_tools_installs():
    sources = (ROOT / "tests").glob("*.py")
    found = [re.findall(r'require\("([\w-]+)"\)', path.read_text()) for path in sources]
    required = {name for names in found for name in names}
    assert required == set(tools.TOOLS)  # and make tools installs nothing no test drives


def test_a_program_off_the_path_is_found_where_debian_keeps_it(tmp_path, monkeypatch):
    # Debian's PostgreSQL keeps initdb in /usr/lib/postgresql/<version>/bin, off the PATH.
    for version in ("9", "15"):
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / "initdb").touch()
    elsewhere = tools.Tool(
        "postgresql", ("initdb-not-on-path",), "", "", (f"{tmp_path}/*/bin/initdb",)
    )
    monkeypatch.setitem(tools.TOOLS, "postgresql", elsewhere)
    assert tools.find("postgresql") == f"{tmp_path}/15/bin/initdb"


def test_the_readme_lists_make_check_among_the_other_commands():
    readme = (ROOT / "README.md").read_text()
    other = readme[readme.index("## Other commands") :].split("\n## ")[0]
    assert re.search(r"^make check\s+# the fast lane", other, re.M), other
