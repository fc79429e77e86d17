"""Write the stage N-1 -> N diffs that the docs chapters include, or check they are current.

    python -m devkit.stagediff           # (re)write docs/diffs/<older>..<newer>.diff
    python -m devkit.stagediff --check   # exit 1, listing stale, missing or orphaned diffs

A chapter shows "what changed since the previous stage" as a unified diff of the two stage
packages' .py files, without the snippet markers (`# --8<-- [start:x]` lines): they are how the
pages include code, not part of any stage's idea, so a section moved or renamed is no change
(and the hunks' line numbers count the lines without them). Generated, never hand-edited:
`make test` runs the check (through tests/test_stagediff.py), so a stage edit without a
regenerated diff fails the build.
"""

from __future__ import annotations

import difflib
import itertools
import sys
from pathlib import Path

from devkit import generated
from devkit.snippets import is_marker_line
from devkit.stages import ROOT, STAGES

DIFF_DIR = ROOT / "docs" / "diffs"
CONTEXT_LINES = 3  # what `diff -u` shows: enough to place a change, short enough to read
REGENERATE = "python -m devkit.stagediff"


def diff_name(older: str, newer: str) -> str:
    return f"{older}..{newer}.diff"


def without_markers(lines: list[str]) -> list[str]:
    """The lines less those that are only a snippet marker. A marker between blank lines
    takes the blank lines after it along: kept, the two blank lines on each side of an
    `[end:x]` between top-level definitions would read as four in the diff."""
    kept: list[str] = []
    dropping_blanks = False
    for line in lines:
        if is_marker_line(line):
            dropping_blanks = bool(kept) and not kept[-1].strip()
        elif dropping_blanks and not line.strip():
            continue
        else:
            kept.append(line)
            dropping_blanks = False
    return kept


def stage_files(package: str) -> dict[str, list[str]]:
    """file name -> lines without snippet markers, for the stage's own .py files (no
    __pycache__, no subfolders)."""
    folder = ROOT / package
    return {
        path.name: without_markers(path.read_text(encoding="utf-8").splitlines(keepends=True))
        for path in sorted(folder.glob("*.py"))
    }


def stage_diff(older: str, newer: str) -> str:
    """`diff -u` of two stage packages, file by file in name order; new files diff /dev/null."""
    old_files, new_files = stage_files(older), stage_files(newer)
    chunks: list[str] = []
    for name in sorted(old_files.keys() | new_files.keys()):
        old_lines, new_lines = old_files.get(name, []), new_files.get(name, [])
        if old_lines == new_lines:
            continue  # unchanged files (e.g. an identical __init__.py) would only be noise
        lines = difflib.unified_diff(
            old_lines,
            new_lines,
            fromfile=f"{older}/{name}" if name in old_files else "/dev/null",
            tofile=f"{newer}/{name}" if name in new_files else "/dev/null",
            n=CONTEXT_LINES,
        )
        for line in lines:
            # difflib leaves a last line without its newline; `diff` would print a marker.
            chunks.append(
                line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
            )
    return "".join(chunks)


def expected_diffs() -> dict[Path, str]:
    """Every consecutive pair of the stages on disk -> the diff text it should have."""
    numbers = sorted(STAGES)
    return {
        DIFF_DIR / diff_name(STAGES[a], STAGES[b]): stage_diff(STAGES[a], STAGES[b])
        for a, b in itertools.pairwise(numbers)
    }


def problems() -> list[str]:
    """What is wrong with the committed diffs; empty when they are all current."""
    return generated.problems(expected_diffs(), DIFF_DIR, "*.diff", "no such pair of stages")


def write() -> list[Path]:
    return generated.write(expected_diffs())


def main(argv: list[str] | None = None) -> int:
    return generated.main(
        argv,
        regenerate=REGENERATE,
        description=__doc__,
        what="stage diffs",
        problems=problems,
        write=write,
    )


if __name__ == "__main__":
    sys.exit(main())
