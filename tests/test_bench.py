"""`make bench`'s table: every figure beside the bare app's, and the paired ratios.

The run itself (processes, wrk) is smoke-tested in test_runner_e2e.py; these feed the table
known figures, so they can check its arithmetic exactly.
"""

import argparse
import re
import subprocess
import sys

import pytest

from devkit import bench, bench_telemetry


def app(label: str, enqueue: list[float], status: list[float]) -> bench.App:
    result = bench.App(label, label)
    result.rounds = {"enqueue req/s": enqueue, "status req/s": status}
    return result


def table(*apps: bench.App) -> str:
    return bench.render(list(apps), argparse.Namespace(repeat=3, duration=10))


def test_every_app_runs_once_a_round_and_no_app_is_always_first() -> None:
    apps = [bench.App(label, label) for label in ("bare", "stage 2", "stage 3")]
    turns = bench.in_turns(apps, 3)
    for n in range(3):
        assert sorted(a.label for r, a in turns if r == n) == ["bare", "stage 2", "stage 3"]
    firsts = [turns[3 * n][1].label for n in range(3)]
    assert firsts == ["bare", "stage 2", "stage 3"]


def test_a_ratio_is_taken_within_each_round_then_summarised_as_median_and_min_max() -> None:
    # Round by round stage 2 does half, 0.6 and 0.7 of the bare app: that is the ratio,
    # although the medians of the absolute figures (2,000 / 1,000) would say 0.5 again.
    out = table(
        app("bare", [1000, 2000, 4000], [100, 100, 100]),
        app("stage 2", [500, 1200, 2800], [100, 100, 100]),
    )
    assert re.search(r"^enqueue req/s\s+2,000 \(1,000-4,000\)\s+1,200 \(500-2,800\)", out, re.M)
    assert re.search(r"^  req/s vs bare\s+1\.00\s+0\.60 \(0\.50-0\.70\)$", out, re.M), out
    assert re.search(
        r"^stage 2 enqueue / bare\s+0\.60 \(0\.50-0\.70\)\s+target >= 0\.85\s+MISSES$", out, re.M
    ), out


def test_the_stage_to_stage_targets_compare_the_stages_they_name() -> None:
    out = table(
        app("bare", [1000] * 3, [1000] * 3),
        app("stage 2", [900] * 3, [1000] * 3),
        app("stage 3", [450, 720, 900], [1000] * 3),
        app("stage 4", [450] * 3, [950, 900, 600]),
    )
    assert re.search(r"^stage 2 enqueue / bare\s+0\.90\s+target >= 0\.85\s+meets$", out, re.M)
    assert re.search(r"^stage 3 enqueue / stage 2\s+0\.80 \(0\.50-1\.00\).*meets$", out, re.M)
    assert re.search(r"^stage 4 enqueue / stage 2\s+0\.50\s.*MISSES$", out, re.M), out
    assert re.search(r"^stage 4 status c=50 / stage 3\s+0\.90 \(0\.60-0\.95\).*meets$", out, re.M)


def test_a_target_whose_apps_did_not_run_is_left_out() -> None:
    out = table(app("bare", [1000] * 3, [1000] * 3), app("stage 2", [900] * 3, [1000] * 3))
    assert "stage 2 enqueue / bare" in out
    assert "stage 3" not in out and "stage 4" not in out


def test_stages_3_and_4_are_also_set_against_the_bare_app_that_writes_a_row() -> None:
    out = table(
        app("bare", [1000] * 3, [1000] * 3),
        app("bare+db", [500] * 3, [1000] * 3),
        app("stage 2", [900] * 3, [1000] * 3),
        app("stage 3", [480, 500, 400], [1000] * 3),
        app("stage 4", [400] * 3, [1000] * 3),
    )
    assert re.search(r"^stage 3 enqueue / bare\+db\s+0\.96 \(0\.80-1\.00\).*>= 0\.90\s+meets$",
                     out, re.M), out  # fmt: skip
    assert re.search(r"^stage 4 enqueue / bare\+db\s+0\.80\s.*MISSES$", out, re.M), out
    # The issue's own targets stay in the table, whatever the yardstick says.
    assert re.search(r"^stage 3 enqueue / stage 2\s+0\.53 .*MISSES$", out, re.M), out


def test_the_ledger_yardstick_runs_only_beside_a_stage_with_a_ledger_and_only_phase_1() -> None:
    def labels(stages: list[int]) -> list[str]:
        return [app.label for app in bench.apps_for(stages)]

    assert labels([2]) == ["bare", "stage 2"]
    assert labels([2, 4]) == ["bare", "bare+db", "stage 2", "stage 4"]
    bare, with_db, _ = bench.apps_for([3])
    # BARE_DB is set both ways, so a BARE_DB=1 left in the shell cannot turn bare into bare+db.
    assert (bare.env, bare.enqueue_only) == ({"BARE_DB": "0"}, False)
    assert (with_db.env, with_db.enqueue_only) == ({"BARE_DB": "1"}, True)
    assert {bare.slug, with_db.slug} == {"bare", "bare_db"}  # its folder and wrk script names
    # Its status cells are empty rather than an error or a copy of bare's figures.
    with_db.rounds = {"enqueue req/s": [500.0] * 3}
    out = table(app("bare", [1000] * 3, [1000] * 3), with_db, app("stage 3", [500] * 3, [900] * 3))
    assert re.search(r"^status req/s\s+1,000\s+-\s+900$", out, re.M), out
    assert re.search(r"^  req/s vs bare\s+1\.00\s+-\s+0\.90$", out, re.M), out


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("variant", "printed"),
    [
        ("direct-writes", "write_behind=False frozen=False"),
        ("no-gc-freeze", "write_behind=True frozen=True"),
    ],
)
def test_a_variant_undoes_its_choice_in_the_process_it_starts_and_nothing_else(variant, printed):
    command = [sys.executable, "-m", "devkit.variant", variant, "-m", "tests.variant_probe"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == printed


def test_a_variant_is_compared_with_its_own_stage_round_by_round() -> None:
    stage3, undone = app("stage 3", [1000, 2000], [100, 100]), app("x", [500, 1500], [50, 100])
    undone.label, undone.runnable, undone.variant = "stage 3 direct-writes", 3, "direct-writes"
    stage3.runnable = 3
    out = table(stage3, undone)
    assert re.search(r"^stage 3 direct-writes / stage 3: enqueue req/s\s+0\.62 \(0\.50-0\.75\)$",
                     out, re.M), out  # fmt: skip
    assert re.search(r"^stage 3 direct-writes / stage 3: status req/s\s+0\.75 \(0\.50-1\.00\)$",
                     out, re.M), out  # fmt: skip


def test_the_telemetry_bench_measures_each_way_through_a_route_that_answers(capsys) -> None:
    assert bench_telemetry.main(["--requests", "20", "--rounds", "1"]) == 0
    printed = capsys.readouterr().out
    for way in ("off", "metrics", "tracing"):
        assert re.search(rf"^{way} +\d+\.\d µs/request", printed, re.MULTILINE), printed
