"""Files generated from the code and committed for the docs to include (the stage diffs,
the reference tables): write them, or check that they are current.

Each generator (devkit.stagediff, devkit.docfragments) says what the files should hold,
`{path: text}`; this module compares, writes and reports, the same way for both.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from devkit.stages import ROOT


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def problems(expected: dict[Path, str], folder: Path, pattern: str, orphan: str) -> list[str]:
    """What is wrong with the committed files; empty when they are all current. A file in
    `folder` matching `pattern` that nothing generates is an orphan, for the `orphan` reason."""
    found = []
    for path, text in expected.items():
        if not path.exists():
            found.append(f"missing: {shown(path)}")
        elif path.read_text(encoding="utf-8") != text:
            found.append(f"stale:   {shown(path)}")
    for path in sorted(folder.glob(pattern)):
        if path not in expected:
            found.append(f"orphan:  {shown(path)} ({orphan})")
    return found


def write(expected: dict[Path, str]) -> list[Path]:
    """Write the files that are missing or differ; return those written."""
    written = []
    for path, text in expected.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def main(
    argv: list[str] | None,
    *,
    regenerate: str,
    description: str | None,
    what: str,
    problems: Callable[[], list[str]],
    write: Callable[[], list[Path]],
) -> int:
    """`<regenerate> [--check]`: write the files, or only check them (exit 1 if not current)."""
    parser = argparse.ArgumentParser(prog=regenerate, description=description)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if out of date")
    args = parser.parse_args(argv)
    if args.check:
        found = problems()
        for line in found:
            print(line)
        if found:
            print(f"The {what} are out of date. Regenerate them with: {regenerate}")
            return 1
        print(f"{what} up to date")
        return 0
    written = write()
    for path in written:
        print(f"wrote {shown(path)}")
    orphans = [line for line in problems() if line.startswith("orphan")]
    for line in orphans:
        print(f"{line}: delete it")
    if not written:
        print(f"{what} already up to date")
    return 1 if orphans else 0
