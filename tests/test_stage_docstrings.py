"""Each stage's run instructions are its own: a module that shows how to run it names its own
package and `make run STAGE=n`, never another stage's (a copied docstring once told stage 4's
readers to start stage 3)."""

import ast
import re
from pathlib import Path

from devkit.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
RUN_COMMAND = re.compile(r"^\s*(make run|uvicorn|arq)\b.*$", re.MULTILINE)


def run_instructions(package: str) -> dict[str, str]:
    """module file name -> its docstring, for the modules whose docstring shows a command."""
    found = {}
    for path in sorted((ROOT / package).glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if doc and RUN_COMMAND.search(doc):
            found[path.name] = doc
    return found


def test_every_run_command_in_a_stage_names_that_stage_and_make_run(stage):
    found = run_instructions(stage.package)
    assert "main.py" in found  # main.py opens with the commands that run the stage
    others = [package for package in STAGES.values() if package != stage.package]
    for name, doc in found.items():
        assert f"make run STAGE={stage.number}" in doc, name
        for command in RUN_COMMAND.finditer(doc):
            line = command.group(0).strip()
            assert line.startswith("make run") or stage.package in line, (name, line)
        assert [package for package in others if package in doc] == [], name


def test_each_main_docstring_says_what_the_stage_adds_and_leaves_out(stage):
    doc = run_instructions(stage.package)["main.py"]
    assert doc.startswith(f"Stage {stage.number}:")
    assert "What it adds" in doc
    assert "What it leaves out" in doc
