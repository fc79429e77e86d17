"""`make loadtest` in miniature, plus its knee arithmetic on made-up steps.

The tiny run goes through the same runner code as the real one (a few two-second steps
against stages 1 and 2), so a broken locustfile, runner or report fails CI rather than the
next person's benchmark. It checks the shape of what the run writes and that the knees are
computed from its steps, never the figures: two seconds prove nothing about speed.
"""

import ast
import inspect
import json
import threading
import time

import psutil
import pytest

from devkit.stages import ROOT
from loadtests import charts, compare, knee, report

THREADS = 4
CRUNCH_MS = 100


def test_a_crunch_does_its_cpu_time_of_work_even_when_threads_share_the_gil(stage):
    """The load's unit of work is fixed: `crunch(ms)` burns `ms` of its own thread's CPU time.
    Timed by the wall clock instead, jobs running side by side (a worker's MAX_JOBS threads,
    stage 1's thread pool) would each do a fraction of the work and still "finish" on time,
    and a worker would seem to keep up with any rate."""
    burn_cpu = stage.module("tasks").burn_cpu
    # Stage 4's crunch can be cancelled: its loop also watches a stop event, never set here.
    stoppable = "stop" in inspect.signature(burn_cpu).parameters
    used: list[float] = []

    def crunch() -> None:
        started = time.thread_time()
        burn_cpu(CRUNCH_MS, threading.Event()) if stoppable else burn_cpu(CRUNCH_MS)
        used.append(time.thread_time() - started)

    threads = [threading.Thread(target=crunch) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(used) == THREADS
    assert min(used) >= CRUNCH_MS / 1000, f"CPU seconds per crunch: {used}"


def step(variant, load, rate, p95, growth=None, queued=False, drained=True):
    # A queued step's jobs: turnaround p95 = 300 ms per job offered per second, made up.
    jobs = {"p95": 300.0 * rate, "count": 10} if queued and load != "idle" else {}
    return {"variant": variant, "load": load, "rate": rate, "prober": {"p95": p95, "count": 10},
            "growth": growth, "queued": queued, "drained": drained,
            "turnaround_ms": jobs, "queue_wait_ms": jobs}  # fmt: skip


def made_up_results():
    steps = [
        step("stage1-async", "idle", 0, 4.0),
        # 10x idle is 40 ms: first passed at 2/s; 100 ms first passed at 4/s.
        *(step("stage1-async", "cpu", r, p) for r, p in [(4, 150), (0.5, 5), (1, 30), (2, 45)]),
        step("stage1-async", "io", 8, 4.5),
        step("stage2", "idle", 0, 3.0),
        *(step("stage2", "cpu", r, 3.5, g, True) for r, g in [(1, 0.0), (2, 0.02), (3, 0.3)]),
        step("stage2-w2", "idle", 0, 3.0),
        *(step("stage2-w2", "cpu", r, 3.5, 0.01, True) for r in (1, 2, 3)),
        # Too few jobs finished to fit a trend, but a backlog it could not clear: behind.
        step("stage2-w2", "cpu", 4, 3.5, None, True, drained=False),
    ]
    variants = [
        {"name": "stage1-async", "stage": 1, "crunch_task": "crunch", "workers": 1},
        {"name": "stage2", "stage": 2, "crunch_task": "crunch", "workers": 1},
        {"name": "stage2-w2", "stage": 2, "crunch_task": "crunch", "workers": 2},
    ]
    settings = {"cpu_rates": [0.5, 1, 2, 3, 4], "io_rates": [8], "crunch_ms": 200,
                "wait_seconds": 1.0}  # fmt: skip
    return {"steps": steps, "variants": variants, "settings": settings, "knees": knee.knees(steps)}


def test_the_knee_is_the_first_step_past_each_bar_and_the_answer_names_it():
    results = made_up_results()
    knees = results["knees"]

    assert knees["stage1-async"]["idle_p95"] == 4.0
    cpu = knees["stage1-async"]["cpu"]
    assert (cpu["over_times_idle"], cpu["over_limit"], cpu["falls_behind"]) == (2, 4, None)
    io = knees["stage1-async"]["io"]
    assert (io["over_times_idle"], io["over_limit"], io["rates"]) == (None, None, [8])
    assert knees["stage2"]["cpu"]["falls_behind"] == 3
    assert knee.keeps_up_to(knees["stage2"]["cpu"]) == 2
    assert knees["stage2-w2"]["cpu"]["falls_behind"] == 4
    assert knee.keeps_up_to(knees["stage2-w2"]["cpu"]) == 3
    assert knee.past_both_bars(results["steps"][1], 4.0)
    assert not knee.past_both_bars(results["steps"][4], 4.0)

    answer = "\n".join(report.answer(results))
    assert "`stage1-async`) breaks at **2/s** of 200 ms CPU tasks:" in answer
    assert "passes 10x its idle 4.0 ms at 2/s and 100 ms at 4/s" in answer
    assert "(rates above 4/s" not in answer  # every CPU rate was tried
    assert "does not break in this range" in answer  # in-process async I/O held
    assert "`stage2`) keeps `/ping` flat" in answer
    assert "keeps up to **2/s** and falls behind at 3/s" in answer
    assert "1 worker up to 2/s, 2 workers up to 3/s" in answer


def test_the_console_and_the_summary_name_the_same_breaking_point():
    # The console once said "broken at 1/s; skip the rest" where the summary said "breaks at
    # 0.5/s": two names, two rates, one fact. Both now use the knee (knee.breaks_at).
    results = made_up_results()
    results["settings"]["cpu_rates"].append(8)  # so 8/s was skipped
    cpu = [s for s in results["steps"] if s["variant"] == "stage1-async" and s["load"] == "cpu"]
    console = knee.skipping("stage1-async", "cpu", cpu, idle_p95=4.0)
    answer = "\n".join(report.answer(results))
    assert console == (
        "stage1-async: breaks at 2/s of CPU tasks; past both bars at 4/s, so the rates above "
        "4/s are not run"
    )
    assert "`stage1-async`) breaks at **2/s**" in answer
    assert "(rates above 4/s not run: past both bars)" in answer
    assert "broken" not in console + answer


def test_the_summary_gives_the_cpu_knees_in_cpu_seconds_per_second():
    # The rule for applying the numbers to your own task: rate x CPU time per task.
    cpu = "\n".join(report.cpu_seconds(made_up_results()))
    assert "| stage1-async | 0.4 (2/s) | no queue |" in cpu  # 2/s x 200 ms
    assert "| stage2 | not up to 0.6 (3/s) | 0.4 (2/s) |" in cpu
    assert "| stage2-w2 | not up to 0.8 (4/s) | 0.6 (3/s) |" in cpu


def chart_marks(figure) -> dict:
    """The chart's tagged lines by tag (their gid): knee:<variant>:<load>, ..."""
    return {line.get_gid(): line for ax in figure.axes for line in ax.lines if line.get_gid()}


def points(line) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)]


def test_the_prober_chart_marks_each_variants_knee_and_its_10x_idle_bar():
    marks = chart_marks(charts.prober_figure(made_up_results()))
    assert points(marks["knee:stage1-async:cpu"]) == [(2, 45)]  # where it breaks
    assert {y for _, y in points(marks["10x-idle:stage1-async:cpu"])} == {40.0}
    assert {y for _, y in points(marks["10x-idle:stage2:cpu"])} == {30.0}
    assert "knee:stage2:cpu" not in marks  # `/ping` never broke
    assert "knee:stage1-async:io" not in marks


def test_the_queue_chart_marks_where_the_workers_fall_behind():
    marks = chart_marks(charts.queue_figure(made_up_results()))
    assert points(marks["knee:stage2:cpu"]) == [(3, 900)]  # turnaround p95 at 3/s
    assert points(marks["knee:stage2-w2:cpu"]) == [(4, 1200)]


def test_no_loadtests_module_imports_one_that_imports_it_back():
    # compare.py imported steps.py, and steps.py compare.py (for a type): a cycle.
    modules = {path.stem: path for path in (ROOT / "loadtests").glob("*.py")}
    imports = {name: loadtests_imports(path, modules) for name, path in modules.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            other == goal or (other not in seen and reaches(other, goal, seen | {other}))
            for other in imports[start]
        )

    cycles = [name for name in imports if reaches(name, name, {name})]
    assert cycles == []


def loadtests_imports(path, modules) -> set[str]:
    """The loadtests modules `path` imports, typing-only imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "loadtests":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loadtests."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("loadtests.")}
    return found & set(modules) - {path.stem}


def test_two_runs_whose_knees_are_more_than_one_step_apart_are_flagged():
    rates = [0.5, 1, 2, 3, 4]
    assert knee.steps_apart(1, 2, rates) == 1
    assert knee.steps_apart(0.5, None, rates) == 5  # None: past the last rate tried
    first, second = made_up_results(), made_up_results()
    assert not any("<--" in line for line in knee.compare_runs(first, second))
    second["knees"]["stage2"]["cpu"]["falls_behind"] = 1  # was 3: two steps earlier
    flagged = [line for line in knee.compare_runs(first, second) if "<--" in line]
    assert len(flagged) == 1 and flagged[0].startswith("stage2 ") and "falls_behind" in flagged[0]


@pytest.mark.e2e
def test_a_tiny_step_run_writes_every_step_its_knees_and_the_docs_files(tmp_path):
    out, docs = tmp_path / "results", tmp_path / "docs"
    variants = ["stage1-async", "stage2"]
    # I/O first, at a rate one worker cannot clear (10 jobs of 1 s at a time): the stage is
    # started afresh after it, so the CPU steps that follow begin with an empty queue.
    argv = ["--step-seconds", "2", "--variants", ",".join(variants), "--all-steps",
            "--loads", "io,cpu", "--io-rates", "100", "--cpu-rates", "4",
            "--out", str(out)]  # fmt: skip
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. the test Valkey

    assert compare.main([*argv, "--publish", str(docs)]) == 0

    results = json.loads((out / "results.json").read_text())
    steps = {(s["variant"], s["load"], s["rate"]): s for s in results["steps"]}
    loads = [("idle", 0), ("io", 100), ("cpu", 4)]
    assert list(steps) == [(v, load, rate) for v in variants for load, rate in loads]
    for (variant, load, rate), s in steps.items():
        name = compare.steps.step_name(load, rate)
        assert (out / variant / f"{name}.html").exists(), "Locust's report is the evidence"
        assert s["prober"]["count"] > 0 and s["failures"] == 0, (variant, name, s["errors"])
        assert s["queued"] == (variant == "stage2")
        if load == "idle":
            continue
        assert s["accepted"] > 0, (variant, name)
        if (variant, load) != ("stage2", "io"):
            assert s["drained"] and s["completed"] == s["accepted"], (variant, name)
    backlog = steps["stage2", "io", 100]
    assert not backlog["drained"] and backlog["completed"] < backlog["accepted"]
    assert backlog["queue_length"][-1] > 0
    assert (out / "stage2" / "stack-2-api-1.log").exists(), "the stage was started afresh"
    after = steps["stage2", "cpu", 4]
    assert max(after["queue_length"]) <= after["accepted"], "only its own jobs are queued"
    assert after["turnaround_ms"]["count"] == after["accepted"]

    assert results["knees"] == knee.knees(results["steps"])
    assert set(results["knees"]["stage2"]) == {"idle_p95", "io", "cpu"}
    assert results["knees"]["stage2"]["io"]["falls_behind"] == 100  # the backlog it left
    assert results["machine"]["reference_settings"] is False

    summary = (out / "summary.md").read_text()
    published = (docs / "summary.md").read_text()
    assert published in summary
    for section in ("answer", "measured", "tables"):
        assert f"[start:{section}]" in published and f"[end:{section}]" in published
    assert "Not a reference run" in published
    assert "`stage1-async`)" in published and "`stage2`)" in published
    for variant in variants:
        assert f"| {variant} | 4 |" in published  # its row in the CPU table
    for chart in compare.CHARTS:
        assert (docs / chart).read_bytes().startswith(b"\x89PNG")
    after = psutil.Process().children(recursive=True)
    left = [p.cmdline() for p in after if p.pid not in before and p.is_running()]
    assert left == [], f"left behind: {left}"
