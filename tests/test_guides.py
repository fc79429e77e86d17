"""The guides' claims about the code, checked against the code: "Put it in your app" lists what
each stage needs (jobkit/ modules, packages and their ranges); the stages' imports decide."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
import sys
import tomllib
from pathlib import Path

import pytest

from devkit.stages import ROOT, STAGES

YOUR_APP = ROOT / "docs/guides/your-app.md"
# How a pip requirement is quoted on the page: 'name[extra]>=1,<2'.
OPERATOR = r"(?:[<>]=?|[=!~]=)"
REQUIREMENT = re.compile(rf"'([A-Za-z][\w.\[\]-]*{OPERATOR}[^',]+(?:,{OPERATOR}[^',]+)*)'")


def imports(path: Path) -> set[str]:
    """The absolute modules `path` imports (its relative imports stay in its package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "jobkit":  # `from jobkit import ssrf`
                found.update(f"jobkit.{alias.name}" for alias in node.names)
    return found


def stage_imports(package: str) -> tuple[set[str], set[str]]:
    """(the jobkit modules, the other top-level modules) a stage needs, jobkit's own included."""
    modules = set().union(*(imports(p) for p in (ROOT / package).rglob("*.py")))
    kit = {m for m in modules if m.startswith("jobkit.")}
    while (
        more := {
            m
            for k in kit
            for m in imports(ROOT / (k.replace(".", "/") + ".py"))
            if m.startswith("jobkit.")
        }
        - kit
    ):
        kit |= more
    for k in kit:
        modules |= imports(ROOT / (k.replace(".", "/") + ".py"))
    outside = {m.split(".")[0] for m in modules} - {"jobkit"} - set(sys.stdlib_module_names)
    return kit, outside


def table_rows() -> dict[int, list[str]]:
    """The page's "What to copy" table: stage number -> its cells."""
    rows = {}
    for line in YOUR_APP.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            rows[int(cells[0])] = cells
    return rows


def names(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.sub(r"\[.*\]", "", name)).lower()


def distribution_names(requirement: str) -> set[str]:
    """The distribution and the ones it requires directly (installed with it)."""
    name = normal(re.split(r"[<>=!~\s;]", requirement)[0])
    required = importlib.metadata.requires(name) or []
    always = [r for r in required if "extra ==" not in r]  # not the optional extras
    return {name} | {normal(re.split(r"[<>=!~\s;(\[]", r)[0]) for r in always}


def test_the_table_has_a_row_for_every_stage():
    assert sorted(table_rows()) == sorted(STAGES)


@pytest.mark.parametrize("number", sorted(STAGES))
def test_the_table_lists_the_jobkit_modules_the_stage_imports(number):
    kit, _ = stage_imports(STAGES[number])
    listed = {f"jobkit.{name}" for name in names(table_rows()[number][2])}
    assert listed == kit


@pytest.mark.parametrize("number", sorted(STAGES))
def test_the_packages_the_table_lists_provide_every_module_the_stage_imports(number):
    rows = table_rows()
    listed = set().union(*(names(rows[n][3]) for n in rows if n <= number))  # "stage 2's, ..."
    installed = set().union(*(distribution_names(package) for package in listed))
    providers = importlib.metadata.packages_distributions()
    _, needed = stage_imports(STAGES[number])
    missing = {m for m in needed if not {normal(d) for d in providers.get(m, [m])} & installed}
    assert not missing, f"stage {number} imports {missing}; the table lists {sorted(listed)}"


def test_the_requirements_on_the_page_are_the_ones_this_repository_tests():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = {*project["dependencies"], *project["optional-dependencies"]["dev"]}
    shown = REQUIREMENT.findall(YOUR_APP.read_text(encoding="utf-8"))
    assert shown, "no requirement found on the page"
    assert set(shown) <= pinned, set(shown) - pinned
    listed = set().union(*(names(cells[3]) for cells in table_rows().values()))
    by_name = {normal(r.split("[")[0].split(">")[0]): r for r in shown}
    assert {normal(n) for n in listed} <= set(by_name), {normal(n) for n in listed} - set(by_name)


def test_stage_4s_create_job_takes_stage_3s_call_and_one_optional_argument_when():
    # your-app.md: the example app's own route calls stage 3's create_job, and keeps working
    # when the folder is swapped for stage 4's (the page runs that step too).
    three, four = (
        inspect.signature(importlib.import_module(f"{STAGES[n]}.jobstore").create_job)
        for n in (3, 4)
    )
    assert list(four.parameters) == [*three.parameters, "when"]
    assert four.parameters["when"].default is None
