"""Write the Markdown fragments the docs include that are generated from the code, or check
that they are current.

    python -m devkit.docfragments           # (re)write docs/generated/*.md
    python -m devkit.docfragments --check   # exit 1, listing stale, missing or orphaned files

The reference page shows each stage's HTTP API (from its OpenAPI schema) and its settings
(from its `Settings` class), one content tab per stage on disk, so the reference cannot
drift from the code and a new stage appears in it by existing. They are plain Markdown
files included with pymdownx.snippets, not an mkdocs hook: Zensical, mkdocs-material's
successor, reads mkdocs.yml but ignores `hooks:`, and the tables would vanish without an
error. `make test` runs the check (tests/test_docfragments.py), like the stage diffs'.
"""

from __future__ import annotations

import ast
import importlib
import io
import sys
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devkit import generated
from devkit.stages import ROOT, STAGES

FRAGMENT_DIR = ROOT / "docs" / "generated"
REGENERATE = "python -m devkit.docfragments"
HEADER = f"<!-- Generated from the stage code by `{REGENERATE}`; do not edit. -->\n\n"


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.0e}".replace("e+", "e")  # 1e12, not 1000000000000


def _constraints(prop: dict[str, Any]) -> str:
    kind = prop.get("type") or " or ".join(p.get("type", "?") for p in prop.get("anyOf", []))
    parts = [kind]
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    if low is not None and high is not None:
        parts.append(f"{_number(low)} to {_number(high)}")
    if "default" in prop:
        parts.append(f"default {prop['default']}")
    return ", ".join(parts)


def _body_fields(schema: dict[str, Any], operation: dict[str, Any]) -> str:
    ref = (
        operation.get("requestBody", {})
        .get("content", {})
        .get("application/json", {})
        .get("schema", {})
        .get("$ref")
    )
    if not ref:
        return ""
    model = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    required = set(model.get("required", []))
    return "<br>".join(
        f"`{name}`{'' if name in required else '?'}: {_constraints(prop)}"
        for name, prop in model.get("properties", {}).items()
    )


def _purpose(operation: dict[str, Any]) -> str:
    # The route's docstring, first line, says what it does; else FastAPI's summary.
    description = operation.get("description", "").strip()
    return description.splitlines()[0] if description else operation.get("summary", "")


def http_api_table(package: str) -> str:
    schema = importlib.import_module(f"{package}.main").app.openapi()
    rows = ["| endpoint | what it does | JSON body | status codes |", "|---|---|---|---|"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = ", ".join(sorted(operation["responses"]))
            rows.append(
                f"| `{method.upper()} {path}` | {_purpose(operation)} "
                f"| {_body_fields(schema, operation)} | {codes} |"
            )
    return "\n".join(rows)


def _field_comments(package: str) -> dict[str, str]:
    """Settings field -> the `# comment` written on its lines in config.py: the why."""
    source = (ROOT / package / "config.py").read_text(encoding="utf-8")
    comments: dict[int, str] = {
        token.start[0]: token.string.lstrip("# ")
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            found[node.target.id] = " ".join(comments[n] for n in lines if n in comments)
    return found


def settings_table(package: str) -> str:
    settings = importlib.import_module(f"{package}.config").Settings
    why = _field_comments(package)
    rows = ["| environment variable | type | default | notes |", "|---|---|---|---|"]
    for name, field in settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        kind = getattr(field.annotation, "__name__", str(field.annotation))
        rows.append(f"| `{name.upper()}` | {kind} | `{default!r}` | {why.get(name, '')} |")
    return "\n".join(rows)


def per_stage_tabs(render: Callable[[str], str]) -> str:
    """One content tab per stage on disk, each with `render(package)` inside it."""
    tabs = []
    for number, package in sorted(STAGES.items()):
        body = render(package).replace("\n", "\n    ")
        tabs.append(f'=== "Stage {number}"\n\n    `{package}`\n\n    {body}\n')
    return "\n".join(tabs)


FRAGMENTS: dict[str, Callable[[str], str]] = {
    "http-api.md": http_api_table,
    "settings.md": settings_table,
}


def expected_fragments() -> dict[Path, str]:
    """Every fragment file -> the text it should have."""
    return {
        FRAGMENT_DIR / name: HEADER + per_stage_tabs(render) for name, render in FRAGMENTS.items()
    }


def problems() -> list[str]:
    """What is wrong with the committed fragments; empty when they are all current."""
    return generated.problems(expected_fragments(), FRAGMENT_DIR, "*.md", "nothing generates it")


def write() -> list[Path]:
    return generated.write(expected_fragments())


def main(argv: list[str] | None = None) -> int:
    return generated.main(
        argv,
        regenerate=REGENERATE,
        description=__doc__,
        what="generated docs fragments",
        problems=problems,
        write=write,
    )


if __name__ == "__main__":
    sys.exit(main())
