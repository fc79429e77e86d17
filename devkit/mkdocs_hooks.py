"""mkdocs hooks (mkdocs.yml `hooks:`): build-time glue the Markdown extensions can't express.

`<!-- results-chart -->` in a page becomes the committed load-test chart, or a note saying
how to produce it while no reference run is committed. A plain image link would fail the
strict build until the first run lands, and a placeholder image would show made-up data.
"""

from __future__ import annotations

import posixpath
from typing import Any

CHART = "results/prober_latency.png"  # written by `make loadtest`, next to results/summary.md
MARKER = "<!-- results-chart -->"
CHART_ALT = "Latency of GET /ping while tasks run, per stage"
NO_CHART = """\
!!! note "No reference chart committed yet"
    Run `make loadtest` to produce `docs/results/prober_latency.png` on your machine;
    this page shows it once it exists."""


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = expand_reference_tables(markdown)
    if MARKER not in markdown:
        return markdown
    if files.get_file_from_path(CHART) is None:
        return markdown.replace(MARKER, NO_CHART)
    here = posixpath.dirname(page.file.src_uri)
    return markdown.replace(MARKER, f"![{CHART_ALT}]({posixpath.relpath(CHART, here or '.')})")


# --- Reference tables, generated from the stage packages themselves -----------------------
# `<!-- reference:http-api -->` and `<!-- reference:settings -->` become one content tab per
# stage on disk, read from each app's OpenAPI schema and each Settings class, so the
# reference cannot drift from the code and a new stage appears in it by existing.

HTTP_API_MARKER = "<!-- reference:http-api -->"
SETTINGS_MARKER = "<!-- reference:settings -->"


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
    import importlib

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
    import ast
    import io
    import tokenize

    from devkit.stages import ROOT

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
    import importlib

    settings = importlib.import_module(f"{package}.config").Settings
    why = _field_comments(package)
    rows = ["| environment variable | type | default | notes |", "|---|---|---|---|"]
    for name, field in settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        kind = getattr(field.annotation, "__name__", str(field.annotation))
        rows.append(f"| `{name.upper()}` | {kind} | `{default!r}` | {why.get(name, '')} |")
    return "\n".join(rows)


def _per_stage_tabs(render: Any) -> str:
    from devkit.stages import STAGES

    tabs = []
    for number, package in sorted(STAGES.items()):
        body = render(package).replace("\n", "\n    ")
        tabs.append(f'=== "Stage {number}"\n\n    `{package}`\n\n    {body}\n')
    return "\n".join(tabs)


def expand_reference_tables(markdown: str) -> str:
    if HTTP_API_MARKER in markdown:
        markdown = markdown.replace(HTTP_API_MARKER, _per_stage_tabs(http_api_table))
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, _per_stage_tabs(settings_table))
    return markdown
