"""`make loadtest` in miniature: every scenario against stages 1 and 2 for two seconds each,
through the same runner code, so a broken locustfile or runner fails CI rather than the next
person's benchmark. The figures themselves are not checked here: two seconds prove nothing."""

import json

import psutil
import pytest

from loadtests import compare

pytestmark = pytest.mark.e2e


def test_the_load_test_runs_every_scenario_and_writes_its_report(tmp_path):
    out, docs = tmp_path / "results", tmp_path / "docs"
    variants = ["stage1-async", "stage2"]
    argv = ["--duration", "2", "--variants", ",".join(variants), "--out", str(out)]

    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. the test Valkey

    assert compare.main([*argv, "--publish", str(docs)]) == 0

    results = json.loads((out / "results.json").read_text())
    runs = {(run["variant"], run["scenario"]): run for run in results["runs"]}
    assert set(runs) == {(v, s) for v in variants for s in compare.SCENARIOS}
    for (variant, scenario), run in runs.items():
        assert run["prober"]["count"] > 0, (variant, scenario)
        assert (out / variant / f"{scenario}_stats.csv").exists()
        assert (out / variant / f"{scenario}.html").exists()
        if scenario == "crash":
            continue  # requests fail while the API is down: that is the scenario
        assert run["failures"] == 0, (variant, scenario, run["requests"])
        if scenario != "idle":
            assert run["accepted"] > 0, (variant, scenario)
            assert run["completed"] == run["accepted"], (variant, scenario)
    # The lesson of the crash scenario: a job in Redis outlives the API that accepted it.
    crash = runs["stage2", "crash"]
    assert crash["downtime_s"] is not None
    assert crash["accepted"] > 0
    assert crash["completed"] == crash["accepted"]

    summary = (out / "summary.md").read_text()
    for variant in variants:
        assert f"| {variant} |" in summary
    assert (docs / "summary.md").read_text() in summary
    assert (docs / "prober_latency.png").read_bytes().startswith(b"\x89PNG")
    after = psutil.Process().children(recursive=True)
    left = [p.cmdline() for p in after if p.pid not in before and p.is_running()]
    assert left == [], f"left behind: {left}"
