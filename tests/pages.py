"""The docs pages as steps a reader follows: parse their shell blocks (tests/test_pages.py).

Every shell block (bash, console, sh, shell) on a listed page carries a declaration, an HTML
comment right above it that the site does not show:

    <!-- page: run -->          run each command in this page's shell, in order, and compare
                                what it prints with the page: the lines under a `$ ` command
                                (console), or the `# ` lines right under a command (bash)
    <!-- page: start -->        start each command in the background (`make run`, `uvicorn`,
                                `arq`, ...) and wait until it answers; `source` and `export`
                                lines still run in the shell
    <!-- page: start-alone -->  the same in a shell of its own, stopped after the block: a
                                "By hand" tab, an alternative to `make run` and not a step
    <!-- page: same-as docs/stages/stage2.md -->   the same commands run on that page
    <!-- page: not-run: why --> not run; the reason is listed as a skipped test
    <!-- page: log run -->      (a text block) lines the background process `run` printed
    <!-- page: not-run: why --> (a text block) output the tests cannot produce, listed

Further lines in a declaration name single commands by how they begin:

    not-run make test: why      that command is not run (listed with its reason)
    poll curl http://…/jobs/    run it again until its output matches (a job that is
                                retried on a random schedule, say), up to POLL_DEADLINE_S
    start make run              start it in the background; the lines under it are lines
                                it prints
    stop run                    before the block: Ctrl-C to the background process `run`
                                (on a `log` block too: the lines it prints as it stops)

The parsing uses Sybil's Markdown lexers (fences inside tabs and admonitions, directives in
HTML comments); running the steps is tests/pagerun.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Document
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, RawFencedCodeBlockLexer

ROOT = Path(__file__).resolve().parent.parent
SHELL_LANGUAGES = {"bash", "console", "sh", "shell"}
BLOCK_VERBS = {"run", "start", "start-alone", "same-as", "not-run", "log"}
CLAUSE = re.compile(r"^(?P<verb>not-run|poll|start|stop)\s+(?P<target>.+?)(?::\s+(?P<why>.+))?$")
FENCE_INFO = re.compile(r"(?P<language>[\w-]*)(?P<rest>[^\n]*)$\n", re.MULTILINE)


@dataclass
class Step:
    """One thing a reader does: a command, a background start, a log to look at, a skip."""

    page: str
    line: int
    kind: str  # run | start | log | stop | skip
    command: str = ""
    expected: str | None = None
    poll: bool = False
    why: str = ""
    block: int = 0
    alone: bool = False

    @property
    def id(self) -> str:
        return f"{self.page}:L{self.line}" + ("-stop" if self.kind == "stop" else "")


@dataclass
class Block:
    line: int
    language: str
    source: str
    verb: str | None  # None: no declaration
    argument: str = ""
    clauses: list[re.Match[str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def blocks(page: str) -> list[Block]:
    """Every fenced block of `page`, with the declaration right above it, if any."""
    document = Document((ROOT / page).read_text(encoding="utf-8"), str(ROOT / page))
    comments = list(DirectiveInHTMLCommentLexer(directive="page", arguments=".*?")(document))
    fences = RawFencedCodeBlockLexer(info_pattern=FENCE_INFO)(document)
    found = []
    for fence in fences:
        line = document.text.count("\n", 0, fence.start) + 1
        language = fence.lexemes["language"]
        block = Block(line, language, str(fence.lexemes["source"]), None)
        before = [
            c
            for c in comments
            if c.end <= fence.start and document.text[c.end : fence.start].strip() in ("", "-->")
        ]
        if before:
            _declare(block, before[-1].lexemes)
        found.append(block)
    return found


def _declare(block: Block, lexemes: dict) -> None:
    head = lexemes["arguments"].strip()
    verb, _, argument = head.partition(" ")
    if verb.endswith(":"):  # `not-run: reason`
        verb = verb[:-1]
    block.verb, block.argument = verb, argument.strip().lstrip(":").strip()
    body = str(lexemes["source"]).replace("-->", "").split()
    if verb == "not-run":  # a reason may go on over several lines
        block.argument = " ".join([block.argument, *body]).strip()
        return
    if verb not in BLOCK_VERBS:
        block.problems.append(f"unknown declaration {verb!r} (one of {sorted(BLOCK_VERBS)})")
    if verb == "not-run" and not block.argument:
        block.problems.append("`not-run` needs a reason: `<!-- page: not-run: why -->`")
    for text in str(lexemes["source"]).splitlines():
        if not text.strip() or text.strip() == "-->":
            continue
        clause = CLAUSE.match(text.strip())
        if clause is None:
            block.problems.append(f"cannot read {text.strip()!r} (not-run/poll/start/stop)")
        elif clause["verb"] == "not-run" and not clause["why"]:
            block.problems.append(f"`not-run {clause['target']}` needs a reason after a colon")
        else:
            block.clauses.append(clause)


def commands(block: Block) -> list[tuple[int, str, str | None]]:
    """(line, command, expected output or None) for each command in a shell block."""
    parsed: list[list] = []
    collecting = False
    for offset, text in enumerate(block.source.splitlines()):
        line = block.line + 1 + offset
        if block.language == "console":
            if text.startswith("$ "):
                parsed.append([line, text[2:], []])
            elif parsed and parsed[-1][1].endswith("\\"):
                parsed[-1][1] += "\n" + text
            elif parsed:
                parsed[-1][2].append(text)
            continue
        if parsed and parsed[-1][1].endswith("\\"):
            parsed[-1][1] += "\n" + text
        elif text.startswith("#") and collecting:
            parsed[-1][2].append(text[2:] if text.startswith("# ") else text[1:])
        elif text.strip() and not text.lstrip().startswith("#"):
            parsed.append([line, text, []])
            collecting = True
        else:  # a blank line or a comment of its own ends the output
            collecting = False
    return [(line, cmd, "\n".join(out).strip("\n") or None) for line, cmd, out in parsed]


def strip_comment(command: str) -> str:
    """`make run  # a note` -> `make run` (a `#` after whitespace, outside quotes)."""
    return re.sub(r"\s+#(?=[^'\"]*$).*$", "", command).strip()


def steps(page: str) -> list[Step]:
    """What a reader of `page` does, in order. Undeclared blocks give no step: the
    declaration test reports them."""
    found: list[Step] = []
    for number, block in enumerate(blocks(page)):
        if block.verb is None or block.problems:
            continue
        if block.verb == "log":
            found += [Step(page, block.line, "stop", c["target"], block=number)
                      for c in block.clauses if c["verb"] == "stop"]  # fmt: skip
            found.append(Step(page, block.line, "log", block.argument, block.source.strip("\n")))
        elif block.language in SHELL_LANGUAGES:
            found += _block_steps(page, number, block)
        elif block.verb == "not-run":  # output the tests cannot produce, listed all the same
            first = block.source.strip().splitlines()[0].strip()
            found.append(Step(page, block.line, "skip", first[:60], why=block.argument))
    return found


def _block_steps(page: str, number: int, block: Block) -> list[Step]:
    shown = commands(block)
    if block.verb in ("not-run", "same-as"):
        why = block.argument
        if block.verb == "same-as":
            why = f"the same commands are run on {block.argument}"
        return [Step(page, block.line, "skip", strip_comment(shown[0][1]), why=why, block=number)]
    found = [Step(page, block.line, "stop", c["target"], block=number)
             for c in block.clauses if c["verb"] == "stop"]  # fmt: skip
    for line, command, expected in shown:
        step = Step(page, line, "run", strip_comment(command), expected, block=number)
        step.alone = block.verb == "start-alone"
        background = block.verb in ("start", "start-alone") or step.command.endswith("&")
        if background and not re.match(r"(source|export|cd)\b", step.command):
            step.kind, step.command = "start", step.command.rstrip("&").strip()
        for clause in block.clauses:
            if step.command.startswith(clause["target"]):
                if clause["verb"] == "not-run":
                    step.kind, step.why = "skip", clause["why"]
                if clause["verb"] == "start":
                    step.kind = "start"
                step.poll = step.poll or clause["verb"] == "poll"
        found.append(step)
    return found


def declaration_problems(page: str) -> list[str]:
    """Why the page's shell blocks are not all declared correctly (empty: they are)."""
    problems = []
    for block in blocks(page):
        where = f"{page}:{block.line}"
        if block.language in SHELL_LANGUAGES and block.verb is None:
            problems.append(f"{where}: a {block.language} block with no `<!-- page: ... -->`")
        problems += [f"{where}: {problem}" for problem in block.problems]
        if block.verb == "log" and any(c["verb"] != "stop" for c in block.clauses):
            problems.append(f"{where}: a `log` block takes only `stop` lines")
        if block.verb and block.language in SHELL_LANGUAGES:
            shown = [strip_comment(c) for _, c, _ in commands(block)]
            for clause in block.clauses:
                if clause["verb"] != "stop" and not any(
                    c.startswith(clause["target"]) for c in shown
                ):
                    problems.append(f"{where}: `{clause['target']}` names no command here")
                polled = [c for c in shown if c.startswith(clause["target"])]
                if clause["verb"] == "poll" and any(re.search(r" -[Xd] ", c) for c in polled):
                    problems.append(f"{where}: `poll` repeats a POST or DELETE: name only GETs")
        if block.verb == "same-as" and not run_elsewhere(block):
            problems.append(f"{where}: no block on {block.argument} runs these commands")
    return problems


def run_elsewhere(block: Block) -> bool:
    """Whether `block`'s commands are run by a block on the page it names."""
    mine = [strip_comment(c) for _, c, _ in commands(block)]
    path = block.argument
    if not (ROOT / path).is_file():
        return False
    return any(
        other.verb in ("run", "start", "start-alone")
        and [strip_comment(c) for _, c, _ in commands(other)] == mine
        for other in blocks(path)
    )
