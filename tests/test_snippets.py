"""Snippet sections: every one defined is included by a page, and none nests, dangles or ends
inside a function it did not start in (devkit.snippets; mkdocs' check_paths is the other half)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import markdown
import pytest

from devkit import snippets


def test_every_snippet_section_is_included_by_a_page_and_follows_the_rules() -> None:
    found = snippets.problems()
    assert not found, (
        f"{len(found)} snippet problem(s) (STYLE.md: sections exist only where a page includes "
        "them, never nest, and never end inside a function):\n  " + "\n  ".join(map(str, found))
    )


def test_the_check_finds_the_same_includes_as_the_docs_build() -> None:
    """Run pymdownx.snippets itself over every page, as mkdocs.yml configures it, and record
    which sections it reads: the check's own parsing must find exactly those."""
    md = markdown.Markdown(
        extensions=["pymdownx.snippets"],
        extension_configs={"pymdownx.snippets": {"base_path": [str(snippets.ROOT)]}},
    )
    preprocessor = md.preprocessors["snippet"]
    read: set[tuple[Path, str]] = set()
    select = preprocessor.select_snippet_lines

    def recording(lines: list[str], target: dict) -> list[str]:
        if target["section"]:
            read.add((Path(target["snippet"]), target["section"]))
        return select(lines, target)

    preprocessor.select_snippet_lines = recording
    for page in snippets.doc_pages():
        md.reset()
        preprocessor.run(page.read_text(encoding="utf-8").splitlines())

    found = {(i.path, i.section) for i in snippets.all_includes(snippets.doc_pages()) if i.section}
    assert read, "the build read no section at all: the pages' includes were not expanded"
    assert found == read


# ----------------------------------------------------------------- the rules, on small files


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty repository root: include paths resolve against it."""
    monkeypatch.setattr(snippets, "ROOT", tmp_path)
    return tmp_path


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def check(root: Path, *pages: Path) -> list[str]:
    sources = [p for p in root.rglob("*") if p.is_file() and p.suffix != ".md"]
    return [f"{p.section}: {p.why}" for p in snippets.problems(pages, sources)]


CODE = """\
    # --8<-- [start:add]
    def add(x: int, y: int) -> int:
        return x + y
    # --8<-- [end:add]


    # --8<-- [start:sub]
    def sub(x: int, y: int) -> int:
        return x - y
    # --8<-- [end:sub]
    """


def test_a_section_no_page_includes_is_reported_and_an_included_one_is_not(repo: Path) -> None:
    write(repo, "pkg/tasks.py", CODE)
    page = write(repo, "docs/page.md", '--8<-- "pkg/tasks.py:add"\n')
    assert check(repo, page) == ["sub: no page includes it"]

    write(repo, "docs/page.md", '--8<-- "pkg/tasks.py:add"\n\n    --8<-- "pkg/tasks.py:sub"\n')
    assert check(repo, page) == []


def test_the_block_form_includes_and_an_escaped_or_whole_file_include_does_not(
    repo: Path,
) -> None:
    write(repo, "pkg/tasks.py", CODE)
    page = write(repo, "docs/page.md", "--8<--\npkg/tasks.py:add\n;pkg/tasks.py:sub\n--8<--\n")
    assert check(repo, page) == ["sub: no page includes it"]

    write(repo, "docs/page.md", ';--8<-- "pkg/tasks.py:add"\n--8<-- "pkg/tasks.py"\n')
    assert check(repo, page) == ["add: no page includes it", "sub: no page includes it"]


def test_an_include_of_a_section_that_does_not_exist_is_reported(repo: Path) -> None:
    write(repo, "pkg/tasks.py", CODE)
    page = write(repo, "docs/page.md", '--8<-- "pkg/tasks.py:add"\n--8<-- "pkg/tasks.py:mul"\n')
    found = check(repo, page)
    assert found[:-1] == ["sub: no page includes it"]
    assert found[-1] == "mul: docs/page.md line 2 includes it; no such section"


def all_included(root: Path, module: str, text: str) -> list[str]:
    """The problems of `text` as pkg/<module>, with a page that includes all its sections."""
    path = write(root, f"pkg/{module}", text)
    names = {m.name for m in snippets.markers(path, path.read_text())}
    page = write(root, "docs/page.md", "".join(f'--8<-- "pkg/{module}:{n}"\n' for n in names))
    return check(root, page)


def test_sections_that_nest_or_overlap_are_reported(repo: Path) -> None:
    found = all_included(
        repo,
        "nest.py",
        """\
        # --8<-- [start:outer]
        X = 1
        # --8<-- [start:inner]
        Y = 2
        # --8<-- [end:outer]
        # --8<-- [end:inner]
        """,
    )
    assert found == ["inner: starts inside section 'outer' (open since line 1)"]


def test_a_start_without_an_end_an_end_without_a_start_and_a_name_used_twice_are_reported(
    repo: Path,
) -> None:
    found = all_included(
        repo,
        "pairs.py",
        """\
        # --8<-- [end:early]
        # --8<-- [start:twice]
        X = 1
        # --8<-- [end:twice]
        # --8<-- [start:twice]
        Y = 2
        # --8<-- [end:twice]
        # --8<-- [start:open]
        Z = 3
        """,
    )
    assert found == [
        "early: an end with no start",
        "twice: defined twice",
        "open: a start with no end",
    ]


def test_a_section_that_ends_inside_a_function_after_its_return_is_reported(repo: Path) -> None:
    found = all_included(
        repo,
        "cut.py",
        """\
        # --8<-- [start:cut]
        def add(x: int, y: int) -> int:
            return x + y
            # --8<-- [end:cut]


        def sub(x: int, y: int) -> int:
            return x - y
        """,
    )
    assert found == [
        "cut: ends inside function add() (line 2), after its `return`, but starts outside it"
    ]


def test_a_section_that_starts_outside_a_function_and_ends_in_its_body_is_reported(
    repo: Path,
) -> None:
    found = all_included(
        repo,
        "half.py",
        """\
        X = 1
        # --8<-- [start:half]
        def create_app() -> dict[str, int]:
            app = {"x": X}
            # --8<-- [end:half]
            app["y"] = 2
            return app
        """,
    )
    assert found == ["half: ends inside function create_app() (line 3), but starts outside it"]


def test_a_section_that_starts_in_a_function_and_ends_outside_it_is_reported(repo: Path) -> None:
    found = all_included(
        repo,
        "tail.py",
        """\
        class Settings:
            # --8<-- [start:tail]
            retries = 3


        RETRIES = Settings.retries
        # --8<-- [end:tail]
        """,
    )
    assert found == ["tail: starts inside class Settings() (line 1) but ends outside it"]


def test_sections_inside_one_function_or_around_whole_functions_are_fine(repo: Path) -> None:
    found = all_included(
        repo,
        "fine.py",
        """\
        import functools


        def create_app() -> dict[str, object]:
            app: dict[str, object] = {}

            # --8<-- [start:route]
            @functools.cache
            def ping() -> str:
                return "pong"

            # --8<-- [end:route]
            app["ping"] = ping
            return app


        # --8<-- [start:two]
        def one() -> int:
            return 1


        def two() -> int:
            return 2
        # --8<-- [end:two]
        """,
    )
    assert found == []


def test_a_marker_in_a_python_string_is_not_a_section_but_one_in_markdown_is(repo: Path) -> None:
    writer = write(
        repo,
        "pkg/report.py",
        """\
        LINES = ["<!-- --8<-- [start:answer] -->", "42", "<!-- --8<-- [end:answer] -->"]
        """,
    )
    summary = write(repo, "results/summary.md", "<!-- --8<-- [start:answer] -->\n42\n")
    assert snippets.markers(writer, writer.read_text()) == []
    page = write(repo, "docs/page.md", '--8<-- "results/summary.md:answer"\n')
    assert check(repo, page) == ["answer: a start with no end"]

    summary.write_text("<!-- --8<-- [start:answer] -->\n42\n<!-- --8<-- [end:answer] -->\n")
    assert check(repo, page) == []


def test_a_marker_that_shares_its_line_with_code_is_reported(repo: Path) -> None:
    found = all_included(
        repo,
        "inline.py",
        """\
        X = 1  # --8<-- [start:inline]
        Y = 2
        # --8<-- [end:inline]
        """,
    )
    assert found == ["inline: marker shares its line with other text"]


@pytest.mark.parametrize(
    ("line", "alone"),
    [
        ("# --8<-- [start:x]\n", True),
        ("    # --8<-- [end:x]\n", True),
        ("<!-- --8<-- [start:answer] -->\n", True),
        ("{# --8<-- [start:page] #}\n", True),
        ("--8<-- [end:x]", True),
        ("x = 1  # --8<-- [start:x]\n", False),
        ('"<!-- --8<-- [start:answer] -->",\n', False),
        ('--8<-- "stage2_arq_basic/main.py:submit"\n', False),
        ("# see `--8<-- [start:x]` in STYLE.md\n", False),
    ],
)
def test_a_marker_line_is_a_comment_holding_only_the_marker(line: str, alone: bool) -> None:
    assert snippets.is_marker_line(line) is alone


def test_the_command_lists_each_problem_and_fails_only_when_there_is_one(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(repo, "stage9_x/tasks.py", CODE)
    page = write(repo, "docs/page.md", '--8<-- "stage9_x/tasks.py:add"\n')
    monkeypatch.setattr(snippets, "DOCS", repo / "docs")

    assert snippets.main([]) == 1
    out = capsys.readouterr().out
    assert "stage9_x/tasks.py:sub (line 7): no page includes it\n" in out
    assert "1 snippet problem(s)" in out

    page.write_text('--8<-- "stage9_x/tasks.py:add"\n--8<-- "stage9_x/tasks.py:sub"\n')
    assert snippets.main([]) == 0
    assert capsys.readouterr().out == "snippet sections ok\n"
