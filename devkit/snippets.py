"""Check the snippet sections the docs include code by: the inverse of mkdocs' `check_paths`.

    python -m devkit.snippets   # list every problem, one `file:section: why` a line; exit 1 if any

A page includes part of a file with pymdownx.snippets (`--8<-- "stage2_arq_basic/main.py:submit"`),
and the file marks that part with `# --8<-- [start:submit]` ... `# --8<-- [end:submit]`. mkdocs
fails the build when a page names a section that does not exist; nothing fails when a file marks
a section no page includes, and the markers are then only noise in the code a learner reads.
This module finds those, and the sections that break the rules in STYLE.md:

- every section is included by a page, by name;
- a name is defined once per file, every start has one end, and sections never nest or overlap;
- a marker is a line of its own (a comment holding only the marker), so the stage diffs can drop
  it (devkit.stagediff) and a reader never meets one half-way through a line of code;
- a section starts and ends in the same function or class body: one that opens at module level
  and closes inside a function (often after its `return`) includes a function with its tail cut.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pymdownx.snippets import SnippetPreprocessor

from devkit.stages import ROOT

DOCS = ROOT / "docs"
DIFF_DIR = DOCS / "diffs"  # generated copies of the stage files (devkit.stagediff)
# Where a section may be defined: the stage packages and everything else a page could include
# from. The docs' include paths are relative to ROOT (`base_path: ["."]` in mkdocs.yml).
SOURCE_FOLDERS = ("stage*_*", "docs", "devkit", "loadtests", "migrations")
SKIPPED = (DIFF_DIR,)

# The build's own patterns, so this check reads an include or a marker exactly as mkdocs does.
INCLUDE = SnippetPreprocessor.RE_ALL_SNIPPETS  # `--8<-- "path"` or a block's `--8<--` fence
MARKER = SnippetPreprocessor.RE_SNIPPET_SECTION  # a start or end marker, anywhere in a line
TARGET = SnippetPreprocessor.RE_SNIPPET_FILE  # `path`, `path:1:5` or `path:section`
# A marker on a line of its own: nothing around it but comment punctuation (Python or shell `#`,
# HTML `<!-- -->`, Jinja `{# #}`, C-style `/* */` and `//`).
MARKER_LINE = re.compile(
    r"""(?xi)
    ^[ \t]*(?:\#|//|<!--|/\*|\{\#)?[ \t]*
    -{1,}8<-{1,}[ \t]+\[[ \t]*(?P<type>start|end)[ \t]*:[ \t]*(?P<name>[a-z][-_0-9a-z]*)[ \t]*\]
    [ \t]*(?:-->|\*/|\#\})?[ \t]*\r?\n?$
    """
)


def is_marker_line(line: str) -> bool:
    """True for a whole line that is only a section marker comment (`# --8<-- [end:x]`)."""
    return MARKER_LINE.match(line) is not None


@dataclass(frozen=True)
class Marker:
    path: Path
    line: int  # 1-based
    kind: str  # "start" or "end"
    name: str
    indent: int
    alone: bool  # the marker is the whole line


@dataclass(frozen=True)
class Include:
    page: Path
    line: int
    path: Path
    section: str | None  # None: the whole file, or a range of lines


@dataclass(frozen=True)
class Problem:
    path: Path
    section: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{shown(self.path)}:{self.section} (line {self.line}): {self.why}"


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # an image, or a file an include names that is not there


# ---------------------------------------------------------------------------- includes


def includes(page: Path, text: str) -> Iterator[Include]:
    """The snippets a Markdown page includes: inline `--8<-- "path[:section]"` lines, and the
    paths listed between two bare `--8<--` lines (the block form). `;` escapes either."""
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        match = INCLUDE.match(line)
        if match and match["escape"]:
            continue
        if match and match["block_marker"]:
            in_block = not in_block
            continue
        if match and not in_block:
            target = match["snippet"][1:-1].strip()
        elif in_block and not match:
            target = line.strip()
        else:
            continue  # prose, or an inline include inside a block (the build ignores it)
        if not target or target.startswith(";") or target.lower().startswith(("http:", "https:")):
            continue
        path, _lines, section = TARGET.match(target).groups()
        yield Include(page, number, ROOT / path, section[1:] if section else None)


def all_includes(pages: Iterable[Path]) -> list[Include]:
    found: list[Include] = []
    for page in pages:
        text = read_text(page)
        if text is not None and "8<-" in text:
            found.extend(includes(page, text))
    return found


def doc_pages() -> list[Path]:
    """Every Markdown file under docs/: pages and the fragments they include (which may include
    code in turn, as pymdownx.snippets expands includes recursively)."""
    return sorted(DOCS.rglob("*.md"))


# ---------------------------------------------------------------------------- markers


def markers(path: Path, text: str) -> list[Marker]:
    """The section markers in a file, as pymdownx.snippets sees them. In Python only comments
    count: a marker inside a string is text the code writes (loadtests/report.py), not a section."""
    if path.suffix == ".py":
        try:
            lines = list(_comment_lines(text))
        except (tokenize.TokenError, SyntaxError):
            lines = list(enumerate(text.splitlines(), 1))
    else:
        lines = list(enumerate(text.splitlines(), 1))
    found: list[Marker] = []
    for number, line in lines:
        if "8<-" not in line:
            continue
        match = MARKER.match(line)
        if match is None or match["escape"]:
            continue
        indent = len(line) - len(line.lstrip())
        alone = is_marker_line(line)
        found.append(Marker(path, number, match["type"].lower(), match["name"], indent, alone))
    return found


def _comment_lines(text: str) -> Iterator[tuple[int, str]]:
    lines = text.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            number = token.start[0]
            yield number, lines[number - 1]


def source_files() -> list[Path]:
    files: set[Path] = set()
    for pattern in SOURCE_FOLDERS:
        for folder in ROOT.glob(pattern):
            if folder.is_dir():
                files.update(p for p in folder.rglob("*") if p.is_file())
    return sorted(
        p
        for p in files
        if "__pycache__" not in p.parts and not any(p.is_relative_to(s) for s in SKIPPED)
    )


# ---------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Section:
    path: Path
    name: str
    start: Marker
    end: Marker


def sections(path: Path, found: list[Marker]) -> tuple[list[Section], list[Problem]]:
    """Pair a file's markers into sections; a broken pairing is a problem, not a section."""
    paired: list[Section] = []
    problems: list[Problem] = []
    opened: dict[str, Marker] = {}
    seen: set[str] = set()
    for marker in found:
        if not marker.alone:
            problems.append(
                Problem(path, marker.name, marker.line, "marker shares its line with other text")
            )
        if marker.kind == "start":
            if marker.name in seen:
                problems.append(Problem(path, marker.name, marker.line, "defined twice"))
            for other in opened.values():
                problems.append(
                    Problem(
                        path,
                        marker.name,
                        marker.line,
                        f"starts inside section {other.name!r} (open since line {other.line})",
                    )
                )
            opened[marker.name] = marker
            seen.add(marker.name)
        elif marker.name in opened:
            paired.append(Section(path, marker.name, opened.pop(marker.name), marker))
        else:
            problems.append(Problem(path, marker.name, marker.line, "an end with no start"))
    for marker in opened.values():
        problems.append(Problem(path, marker.name, marker.line, "a start with no end"))
    return paired, problems


# ---------------------------------------------------------------------------- scopes


@dataclass(frozen=True)
class Scope:
    """A function or class body, from its first decorator to the last line indented under it
    (trailing comments included: a marker after the `return`, indented, reads as inside)."""

    kind: str  # "function" or "class"
    name: str
    first: int
    last_code: int  # the last line of its last statement
    last: int  # the last line that is still visually inside it
    column: int
    returns: bool  # its last statement is a `return`

    def holds(self, line: int, indent: int) -> bool:
        if not self.first < line <= self.last:
            return False
        return line <= self.last_code or indent > self.column


def scopes(text: str) -> list[Scope]:
    """Every function and class in a Python file, outermost first."""
    tree = ast.parse(text)
    code_lines = _code_lines(text)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        last_code = node.end_lineno or node.lineno
        later = [n for n in code_lines if n > last_code]
        last = (min(later) - 1) if later else len(text.splitlines())
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        returns = isinstance(node.body[-1], ast.Return)
        found.append(Scope(kind, node.name, first, last_code, last, node.col_offset, returns))
    return sorted(found, key=lambda s: (s.first, -s.last))


def _code_lines(text: str) -> list[int]:
    """The lines where a token other than a comment or a line break starts."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    skip.add(tokenize.ENDMARKER)
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return sorted({t.start[0] for t in tokens if t.type not in skip})


def innermost(all_scopes: list[Scope], marker: Marker) -> Scope | None:
    holding = [s for s in all_scopes if s.holds(marker.line, marker.indent)]
    return holding[-1] if holding else None


def scope_problem(section: Section, all_scopes: list[Scope]) -> Problem | None:
    """A section must start and end in the same body: module level, or one function or class."""
    start, end = innermost(all_scopes, section.start), innermost(all_scopes, section.end)
    if start == end:
        return None
    if end is not None and (start is None or end.first > start.first):
        where = f"{end.kind} {end.name}() (line {end.first})"
        if section.end.line > end.last_code:
            tail = "its `return`" if end.returns else "its last statement"
            why = f"ends inside {where}, after {tail}, but starts outside it"
        else:
            why = f"ends inside {where}, but starts outside it"
    else:
        assert start is not None
        why = f"starts inside {start.kind} {start.name}() (line {start.first}) but ends outside it"
    return Problem(section.path, section.name, section.start.line, why)


# ---------------------------------------------------------------------------- the check


def problems(
    pages: Iterable[Path] | None = None, sources: Iterable[Path] | None = None
) -> list[Problem]:
    """Everything wrong with the snippet sections; empty when they all follow the rules."""
    found_includes = all_includes(doc_pages() if pages is None else pages)
    wanted = {(i.path, i.section) for i in found_includes if i.section}
    files = set(source_files() if sources is None else sources)
    files |= {i.path for i in found_includes if i.section}  # a page may include from anywhere
    found: list[Problem] = []
    defined: set[tuple[Path, str]] = set()
    for path in sorted(files):
        text = read_text(path)
        if text is None or "8<-" not in text:
            continue
        found_markers = markers(path, text)
        defined |= {(path, m.name) for m in found_markers}  # a broken one is reported once
        paired, broken = sections(path, found_markers)
        found.extend(broken)
        all_scopes = _python_scopes(path, text)
        for section in paired:
            if (path, section.name) not in wanted:
                found.append(Problem(path, section.name, section.start.line, "no page includes it"))
            if (problem := scope_problem(section, all_scopes)) is not None:
                found.append(problem)
    found.sort(key=lambda p: (shown(p.path), p.line, p.section, p.why))
    # What mkdocs' check_paths reports too, listed here so one command shows both halves.
    for include in found_includes:
        if include.section and (include.path, include.section) not in defined:
            why = f"{shown(include.page)} line {include.line} includes it; no such section"
            found.append(Problem(include.path, include.section, 0, why))
    return found


def _python_scopes(path: Path, text: str) -> list[Scope]:
    if path.suffix != ".py":
        return []
    try:
        return scopes(text)
    except SyntaxError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.snippets", description=__doc__)
    parser.parse_args(argv)
    found = problems()
    for problem in found:
        print(problem)
    print(f"{len(found)} snippet problem(s)" if found else "snippet sections ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
