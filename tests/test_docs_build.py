"""`mkdocs build --strict` (the last step of `make test`) fails on a broken link, anchors
included, and the docs build under it. In-process (mkdocs' own Python API): no server, no
browser, seconds."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from mkdocs.commands.build import build
from mkdocs.config import load_config
from mkdocs.exceptions import Abort

from devkit.stages import ROOT


def build_strictly(docs_dir: Path, site_dir: Path, **overrides: object) -> None:
    """The project's mkdocs.yml (its theme, extensions, validation), strict, on `docs_dir`."""
    config = load_config(
        str(ROOT / "mkdocs.yml"), docs_dir=str(docs_dir), site_dir=str(site_dir), strict=True,
        **overrides,
    )  # fmt: skip
    build(config)


@pytest.fixture(autouse=True)
def quiet_mkdocs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")  # mkdocs-material's end-of-life banner
    caplog.set_level(logging.WARNING, logger="mkdocs")  # its warnings, not every INFO line


def test_a_link_to_a_heading_that_is_not_there_fails_the_strict_build(tmp_path, caplog):
    # The FAQ once linked to `stage4.md#the-ssrf-guard` while the heading's id was
    # `2-the-ssrf-guard`: mkdocs only said so at INFO level, and the link led to the top.
    docs = tmp_path / "docs"
    (docs / "stages").mkdir(parents=True)
    (docs / "index.md").write_text("# Home\n\nSee [the guard](stages/four.md#the-ssrf-guard).\n")
    (docs / "stages" / "four.md").write_text("# Four\n\n### 2. The SSRF guard\n\nText.\n")
    nav = [{"Home": "index.md"}, {"Four": "stages/four.md"}]
    with pytest.raises(Abort):
        build_strictly(docs, tmp_path / "site", nav=nav)
    assert "does not contain an anchor '#the-ssrf-guard'" in caplog.text

    # ... and with the heading's real id, the same pages build.
    (docs / "index.md").write_text("# Home\n\nSee [the guard](stages/four.md#2-the-ssrf-guard).\n")
    build_strictly(docs, tmp_path / "site", nav=nav)


def test_the_docs_build_strictly_with_every_link_and_anchor_found(tmp_path):
    build_strictly(ROOT / "docs", tmp_path / "site")
    assert (tmp_path / "site" / "stages" / "stage4" / "index.html").exists()


def make_run_variables(page: str, heading: str) -> list[str]:
    """The variables in the first column of the table under `heading` on `page`."""
    text = (ROOT / page).read_text(encoding="utf-8")
    section = text[text.index(heading) :].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([A-Z_]+)`", row.split("|")[1])]


def test_the_reference_names_every_variable_the_readme_gives_make_run():
    readme = make_run_variables("README.md", "## Options")
    reference = make_run_variables("docs/reference.md", "## `make run`")
    assert "DATABASE_URL" in readme
    assert reference == readme
