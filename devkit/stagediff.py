"""Write the stage N-1 -> N diffs that the docs chapters include, or check they are current.

    python -m devkit.stagediff           # (re)write docs/diffs/<older>..<newer>.diff
    python -m devkit.stagediff --check   # exit 1, listing stale, missing or orphaned diffs

A chapter shows "what changed since the previous stage" as a unified diff of the two stage
packages' .py files. Generated, never hand-edited: `make test` runs the check (through
tests/test_stagediff.py), so a stage edit without a regenerated diff fails the build.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import sys
from pathlib import Path

from devkit.stages import ROOT, STAGES

DIFF_DIR = ROOT / "docs" / "diffs"
CONTEXT_LINES = 3  # what `diff -u` shows: enough to place a change, short enough to read
REGENERATE = "python -m devkit.stagediff"


def diff_name(older: str, newer: str) -> str:
    return f"{older}..{newer}.diff"


def stage_files(package: str) -> dict[str, list[str]]:
    """file name -> lines, for the stage's own .py files (no __pycache__, no subfolders)."""
    folder = ROOT / package
    return {
        path.name: path.read_text(encoding="utf-8").splitlines(keepends=True)
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


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def problems() -> list[str]:
    """What is wrong with the committed diffs; empty when they are all current."""
    found = []
    expected = expected_diffs()
    for path, text in expected.items():
        if not path.exists():
            found.append(f"missing: {shown(path)}")
        elif path.read_text(encoding="utf-8") != text:
            found.append(f"stale:   {shown(path)}")
    for path in sorted(DIFF_DIR.glob("*.diff")):
        if path not in expected:
            found.append(f"orphan:  {shown(path)} (no such pair of stages)")
    return found


def write() -> list[Path]:
    DIFF_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in expected_diffs().items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.stagediff", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if out of date")
    args = parser.parse_args(argv)
    if args.check:
        found = problems()
        for line in found:
            print(line)
        if found:
            print(f"The stage diffs are out of date. Regenerate them with: {REGENERATE}")
            return 1
        print(f"{len(expected_diffs())} stage diff(s) up to date")
        return 0
    written = write()
    for path in written:
        print(f"wrote {shown(path)}")
    orphans = [line for line in problems() if line.startswith("orphan")]
    for line in orphans:
        print(f"{line}: delete it if that stage is gone")
    if not written:
        print("stage diffs already up to date")
    return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
