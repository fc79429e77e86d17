"""Locust scenarios that work against every stage through the shared HTTP contract.

    python -m locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:PORT \\
        -u 2 -r 2 -t 60s Prober CpuSubmitter [--crunch-task crunch_sync] [--cpu-rate 2]

User classes (pick them by class name on the command line, or with --tags):
- Prober (tag `prober`): GET /ping at a fixed rate, the bystander whose latency we watch.
- CpuSubmitter (tag `cpu`): POST /tasks/<crunch task> {"ms": 200}; `--crunch-task crunch_sync`
  posts stage 1's plain-`def` variant instead.
- IoSubmitter (tag `io`): POST /tasks/wait {"seconds": 1.0}.
- Checker (tag `checker`, stage 2+): follows every accepted job id to its final state and
  reports its queue wait (start_time - enqueue_time) and turnaround as "JOB" entries.

Every class has exactly one user (`fixed_count = 1`), so `-u` is the number of classes named.
`python -m loadtests.compare` runs the Prober and one submitter per load step, for each stage,
and writes the report. It leaves the Checker out: its polling grows with the backlog and would
load the API it measures, so the runner reads every job once after each step instead.

Why open-loop arrivals, and not Locust's `constant_throughput`
----------------------------------------------------------------
A Locust user is closed-loop: it sends a request, waits for the answer, then waits its pacing
time. If the server stalls for 200 ms, a closed-loop prober simply sends nothing for 200 ms,
so the stall shows up in one slow request instead of in every request that *should* have been
sent meanwhile. The report then under-states the latency a real client population would see
("coordinated omission"). Here each user is a clock instead: every 1/rate seconds it launches
the next request in its own greenlet, without waiting for the previous answer, and times it
from the moment it was *due*, not from when it was actually sent. A request that a frozen
server (or a busy Locust process) delays is counted with its full delay, as wrk2 does.
The number of requests in flight per user is bounded (MAX_IN_FLIGHT), so a dead server costs
failures, not unbounded memory.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TextIO

import gevent
import requests
from gevent.pool import Pool
from locust import User, events, tag, task
from locust.env import Environment
from requests.adapters import HTTPAdapter

MAX_IN_FLIGHT = 200  # per user; past this a due request is counted as a failure, not sent
REQUEST_TIMEOUT_S = 10.0
STOP_GRACE_S = 10.0  # how long a stopping user waits for its requests in flight
CHECK_EVERY_S = 1.0  # the checker asks about one job at most this often
CHECKS_PER_TICK = 20  # and at most this many jobs per tick, so it can't flood the API
TERMINAL = {"complete", "failed", "cancelled"}

# Accepted job ids the Checker has yet to see finish: job id -> when it was last checked.
PENDING: dict[str, float] = {}
# Optional raw records for the comparison runner (see --record-dir).
RECORDS: dict[str, TextIO] = {}


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("background-jobs scenarios")
    group.add_argument("--prober-rate", type=float, default=10.0, help="GET /ping per second")
    group.add_argument("--cpu-rate", type=float, default=2.0, help="crunch jobs per second")
    group.add_argument("--io-rate", type=float, default=2.0, help="wait jobs per second")
    group.add_argument("--crunch-task", default="crunch", help="crunch, or stage 1's crunch_sync")
    group.add_argument("--crunch-ms", type=int, default=200, help="CPU time per crunch job")
    group.add_argument("--wait-seconds", type=float, default=1.0, help="sleep per wait job")
    group.add_argument(
        "--record-dir",
        default="",
        help="also write raw prober latencies (prober.tsv: time, ms from due, ms from sent, ok) "
        "and accepted submissions (accepted.tsv: task, job id, time) here, for loadtests.compare",
    )


@events.init.add_listener
def open_records(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or not options.record_dir:
        return
    folder = Path(options.record_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("prober", "accepted"):
        RECORDS[name] = (folder / f"{name}.tsv").open("a", buffering=1)  # line-buffered


@events.init.add_listener
def keep_tagged_classes(environment: Environment, **_: Any) -> None:
    """With --tags/--exclude-tags, run only the classes whose tag is selected.

    Locust filters tasks by tag but keeps a class left with no task, and would still spawn
    its fixed_count user, which then fails; so we drop such classes here.
    """
    options = environment.parsed_options
    tags = set(getattr(options, "tags", None) or [])
    excluded = set(getattr(options, "exclude_tags", None) or [])
    if tags or excluded:
        environment.user_classes = [
            user_class
            for user_class in environment.user_classes
            if (not tags or user_class.tag_name in tags) and user_class.tag_name not in excluded
        ]


@events.quitting.add_listener
def close_records(**_: Any) -> None:
    for file in RECORDS.values():
        file.close()
    RECORDS.clear()


def record(name: str, *fields: object) -> None:
    if name in RECORDS:
        RECORDS[name].write("\t".join(str(field) for field in fields) + "\n")


class OpenLoopUser(User):
    """Launches one request every 1/rate seconds, whatever the previous one is doing."""

    abstract = True
    fixed_count = 1
    tag_name: ClassVar[str] = ""  # the tag that selects this class (see keep_tagged_classes)
    rate_option: ClassVar[str] = ""  # the parsed option that holds this user's rate

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.interval = 1.0 / getattr(self.options, self.rate_option) if self.rate_option else 0
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=MAX_IN_FLIGHT)
        self.session.mount("http://", adapter)
        self.in_flight = Pool(MAX_IN_FLIGHT)
        # A random phase, so users of different classes don't fire in lock-step.
        self.next_due = time.perf_counter() + random.uniform(0, self.interval)

    def on_stop(self) -> None:
        self.in_flight.join(timeout=STOP_GRACE_S)  # let answers already on their way count
        self.in_flight.kill()
        self.session.close()

    def launch(self, send: Any) -> None:
        """Sleep until the next request is due, then start it without waiting for it."""
        due = self.next_due
        self.next_due += self.interval
        gevent.sleep(max(0.0, due - time.perf_counter()))
        if self.in_flight.full():
            self.report("GET", "too many requests in flight", due, None, RuntimeError("full"))
            return
        self.in_flight.spawn(send, due)

    def call(
        self, method: str, path: str, name: str, due: float, expect: int, **kwargs: Any
    ) -> requests.Response | None:
        """One request, timed from `due`, reported to Locust as a request event."""
        response, error = None, None
        try:
            response = self.session.request(
                method, f"{self.host}{path}", timeout=REQUEST_TIMEOUT_S, **kwargs
            )
            if response.status_code != expect:
                error = RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        except requests.RequestException as exc:
            error = exc
        self.report(method, name, due, response, error)
        return None if error else response

    def report(
        self,
        method: str,
        name: str,
        due: float,
        response: requests.Response | None,
        error: Exception | None,
    ) -> float:
        elapsed_ms = (time.perf_counter() - due) * 1000
        self.environment.events.request.fire(
            request_type=method,
            name=name,
            response_time=elapsed_ms,
            response_length=len(response.content) if response is not None else 0,
            response=response,
            exception=error,
            context={},
        )
        return elapsed_ms


class Prober(OpenLoopUser):
    """GET /ping at --prober-rate: the request that has nothing to do with the jobs."""

    rate_option = "prober_rate"
    tag_name = "prober"

    @tag("prober")
    @task
    def ping(self) -> None:
        self.launch(self.send)

    def send(self, due: float) -> None:
        sent = time.perf_counter()
        response = self.call("GET", "/ping", "/ping", due, 200)
        now = time.perf_counter()
        # From when it was due (what we report), and from when it was sent: a gap between
        # the two means Locust itself was late, e.g. short of CPU.
        timings = f"{(now - due) * 1000:.3f}", f"{(now - sent) * 1000:.3f}"
        record("prober", f"{time.time():.3f}", *timings, int(response is not None))


class Submitter(OpenLoopUser):
    abstract = True

    def submit(self, due: float, task_name: str, body: dict[str, Any]) -> None:
        path = f"/tasks/{task_name}"
        response = self.call("POST", path, path, due, 202, json=body)
        if response is None:
            return
        job_id = response.json().get("job_id")  # stage 1 has none: that is its lesson
        record("accepted", task_name, job_id or "-", f"{time.time():.3f}")
        if job_id:
            PENDING[job_id] = 0.0


class CpuSubmitter(Submitter):
    """POST /tasks/<--crunch-task> {"ms": --crunch-ms} at --cpu-rate."""

    rate_option = "cpu_rate"
    tag_name = "cpu"

    @tag("cpu")
    @task
    def crunch(self) -> None:
        self.launch(self.send)

    def send(self, due: float) -> None:
        self.submit(due, self.options.crunch_task, {"ms": self.options.crunch_ms})


class IoSubmitter(Submitter):
    """POST /tasks/wait {"seconds": --wait-seconds} at --io-rate."""

    rate_option = "io_rate"
    tag_name = "io"

    @tag("io")
    @task
    def wait_job(self) -> None:
        self.launch(self.send)

    def send(self, due: float) -> None:
        self.submit(due, "wait", {"seconds": self.options.wait_seconds})


class Checker(OpenLoopUser):
    """Stage 2+: follows accepted jobs to complete/failed/cancelled (closed-loop is fine here:
    its own latency is not what we measure)."""

    tag_name = "checker"

    @tag("checker")
    @task
    def check(self) -> None:
        now = time.perf_counter()
        due = [job_id for job_id, last in PENDING.items() if now - last >= CHECK_EVERY_S]
        for job_id in due[:CHECKS_PER_TICK]:
            PENDING[job_id] = now
            self.in_flight.spawn(self.follow, job_id)
        gevent.sleep(CHECK_EVERY_S / 4)

    def follow(self, job_id: str) -> None:
        response = self.call("GET", f"/jobs/{job_id}", "/jobs/[id]", time.perf_counter(), 200)
        if response is None:
            return
        job = response.json()
        if job["status"] not in TERMINAL:
            return
        PENDING.pop(job_id, None)
        enqueued = datetime.fromisoformat(job["enqueue_time"])
        error = None if job["status"] == "complete" else RuntimeError(f"job {job['status']}")
        # A job cancelled before it started has no start_time: it is still reported, as a failure.
        for name, key in (("queue wait", "start_time"), ("turnaround", "finish_time")):
            ended = datetime.fromisoformat(job[key]) if job.get(key) else enqueued
            self.environment.events.request.fire(
                request_type="JOB",
                name=f"{name} {job['function']}",
                response_time=(ended - enqueued).total_seconds() * 1000,
                response_length=0,
                exception=error,
                context={},
            )
