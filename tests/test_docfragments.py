"""The reference tables the docs include are generated Markdown; a stale one must fail the
build (the site no longer expands them at build time: Zensical would ignore a hook)."""

from pathlib import Path

import pytest

from devkit import docfragments


def test_the_committed_docs_fragments_match_the_stage_code() -> None:
    found = docfragments.problems()
    assert not found, (
        "The generated docs fragments in docs/generated/ are out of date:\n  "
        + "\n  ".join(found)
        + f"\nRegenerate them with `{docfragments.REGENERATE}` and commit the result."
    )


def test_the_check_reports_a_stale_fragment_and_how_to_regenerate_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(docfragments, "FRAGMENT_DIR", tmp_path)
    assert docfragments.main([]) == 0  # writes the current fragments into tmp_path
    (tmp_path / "settings.md").write_text("| a table somebody edited by hand |\n")
    (tmp_path / "gone.md").write_text("")
    capsys.readouterr()

    assert docfragments.main(["--check"]) == 1
    out = capsys.readouterr().out.replace(str(tmp_path) + "/", "")
    assert "stale:   settings.md" in out
    assert "orphan:  gone.md" in out
    assert docfragments.REGENERATE in out


def test_every_stage_has_a_tab_with_its_routes_and_settings() -> None:
    fragments = {path.name: text for path, text in docfragments.expected_fragments().items()}
    for number, package in sorted(docfragments.STAGES.items()):
        assert f'=== "Stage {number}"\n\n    `{package}`' in fragments["http-api.md"]
        assert f'=== "Stage {number}"\n\n    `{package}`' in fragments["settings.md"]
    assert "| `GET /ping` | Liveness" in fragments["http-api.md"]
    assert "| `REDIS_URL` | str | `'redis://127.0.0.1:6379/0'` |" in fragments["settings.md"]
