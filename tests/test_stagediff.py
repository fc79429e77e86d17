"""The stage diffs the chapters include are generated; a stale one must fail the build."""

from pathlib import Path

import pytest

from devkit import stagediff


def test_the_committed_stage_diffs_match_the_stage_code() -> None:
    found = stagediff.problems()
    assert not found, (
        "The stage diffs in docs/diffs/ are out of date:\n  "
        + "\n  ".join(found)
        + f"\nRegenerate them with `{stagediff.REGENERATE}` and commit the result."
    )


def test_the_check_reports_a_stale_diff_and_how_to_regenerate_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stagediff, "DIFF_DIR", tmp_path)
    assert stagediff.main([]) == 0  # writes the current diffs into tmp_path
    written = sorted(tmp_path.glob("*.diff"))
    assert written, "expected at least one pair of consecutive stages"
    written[0].write_text(written[0].read_text() + "+ a line nobody generated\n")
    (tmp_path / "stage8_x..stage9_y.diff").write_text("")
    capsys.readouterr()

    assert stagediff.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert f"stale:   {written[0].name}" in out.replace(str(tmp_path) + "/", "")
    assert "orphan:" in out and "stage8_x..stage9_y.diff" in out
    assert stagediff.REGENERATE in out


def test_a_new_file_in_a_stage_is_diffed_against_dev_null() -> None:
    text = stagediff.stage_diff("stage1_background_tasks", "stage2_arq_basic")
    assert "--- /dev/null\n+++ stage2_arq_basic/worker.py\n" in text
    assert "+class WorkerSettings:\n" in text
    assert "__pycache__" not in text


TASKS = """\
def add(x: int, y: int) -> int:
    return x + y


def divide(x: float, y: float) -> float:
    return x / y
"""

TASKS_WITH_MARKERS = """\
# --8<-- [start:add]
def add(x: int, y: int) -> int:
    return x + y
# --8<-- [end:add]


def divide(x: float, y: float) -> float:
    # --8<-- [start:divide]
    return x / y
    # --8<-- [end:divide]
"""


def two_stages(root: Path, older: str, newer: str) -> None:
    for package, text in (("stage1_a", older), ("stage2_b", newer)):
        (root / package).mkdir()
        (root / package / "tasks.py").write_text(text)


def test_a_change_of_snippet_markers_alone_is_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stagediff, "ROOT", tmp_path)
    two_stages(tmp_path, TASKS, TASKS_WITH_MARKERS)
    assert stagediff.stage_diff("stage1_a", "stage2_b") == ""


def test_the_diff_of_a_real_change_shows_no_snippet_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stagediff, "ROOT", tmp_path)
    newer = TASKS_WITH_MARKERS.replace("return x / y", "return round(x / y, 6)")
    two_stages(tmp_path, TASKS, newer)
    text = stagediff.stage_diff("stage1_a", "stage2_b")
    assert "-    return x / y\n+    return round(x / y, 6)\n" in text
    assert "8<" not in text


def test_a_marker_between_blank_lines_leaves_no_extra_blank_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Markers sit between the two blank lines that separate top-level code; stripped, they
    # must not leave four blank lines, which a reader of the diff sees as a change.
    monkeypatch.setattr(stagediff, "ROOT", tmp_path)
    older = "import os\n\n\ndef a() -> None:\n    pass\n\n\ndef b() -> None:\n    pass\n"
    newer = older.replace(
        "    pass\n\n\ndef b", "    pass\n\n\n# --8<-- [end:a]\n\n\ndef b"
    ).replace("\n\n\ndef a", "\n\n\n# --8<-- [start:a]\ndef a")
    two_stages(tmp_path, older, newer)
    assert stagediff.stage_diff("stage1_a", "stage2_b") == ""
