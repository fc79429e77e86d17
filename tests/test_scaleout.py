"""Stage 4 past one machine: the faults of `make scaleout`'s topology, each ending with every
accepted job final in the ledger.

One topology for the module (devkit/scaleout.py): a Valkey primary, a replica and three
sentinels, PostgreSQL as the ledger, an API and three workers, each worker a "host" on its
own loopback address, all on a 127.N network found free at run time. A supervisor thread
starts again a worker that exits, as systemd would (ARQ workers do not reconnect). Each
test starts from a whole topology: the workers back, the replica online and caught up, the
sentinels agreeing. The faults: a worker SIGKILLed mid-job and another stopped at the same
time (SIGSTOP: cut off from Redis) while it holds jobs, SENTINEL FAILOVER under
submissions, and the primary SIGKILLed under submissions with its replica behind.

Redis replication is asynchronous: a failover can lose jobs the old primary had acknowledged
(202) and not yet passed on. The ledger still has their rows, and the maintenance cron job's
reconcile() settles them; here it runs at once with its "lost after" wait (300 s in the
stage) set to 0. Which jobs it may settle as lost is asserted from when each was accepted:
only those the failover can explain (a job lost for any other reason, an API that skipped
its enqueue, fails the test). `make chaos` runs them at full size.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import psutil
import pytest
import redis
import sqlalchemy as sa
from arq.connections import ArqRedis

from devkit import scaleout as scaleout_module
from devkit.scaleout import API_PORT, Fatal, ScaleOut, pick_network
from devkit.stages import STAGES
from jobkit.redis_pool import PRIMARY_CHECK_S, open_pool
from tests.helpers import poll
from tests.processes import SCALE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STAGE = 4
JOB_TIMEOUT_S = 2  # the in-progress mark of a dead worker's job expires 10 s after this
IN_PROGRESS_EXPIRY_S = JOB_TIMEOUT_S + 10  # ARQ's margin
HEARTBEAT_TTL_S = 15  # jobkit.heartbeat.TTL_S: a dead worker drops off GET /queue after it
SUBMIT_EVERY_S = {"smoke": 0.04, "full": 0.01}[SCALE]
AFTER_FAILOVER_S = {"smoke": 2.0, "full": 15.0}[SCALE]  # 2xx in a row that end a run
BEFORE_FAULT = {"smoke": 30, "full": 100}[SCALE]  # jobs accepted before the fault
RECOVERY_BOUND_S = 20.0  # the target is 10 s; generous on a busy 2-core machine
IN_FLIGHT_S = 0.5  # a request that started before the API's pool switched may still land
NO_HANG_S = 5.0  # the API's Redis deadline is 1 s; no request may take longer than this
FINAL_DEADLINE_S = IN_PROGRESS_EXPIRY_S + 40
FINAL = {"complete", "failed", "cancelled"}
REDIS_TIMEOUT_S = 1.0
REDIS_LOST_IT = ("lost:", "stuck:")  # reconcile()'s errors for a job Redis has no trace of
BEHIND = 10  # jobs accepted while the replica lags, in the primary SIGKILL test


@pytest.fixture(scope="module")
def scaleout(tmp_path_factory):
    topology = ScaleOut(
        tmp_path_factory.mktemp("scaleout"),
        apis=1,
        workers=3,
        network=pick_network(apis=1, workers=3),
        env={"JOB_TIMEOUT_S": str(JOB_TIMEOUT_S), "MAX_JOBS": "4"},
    )
    stop = threading.Event()
    before = set(psutil.Process().children(recursive=True))
    with topology:
        supervisor = threading.Thread(target=topology.supervise, args=(stop,), daemon=True)
        supervisor.start()
        yield topology
        stop.set()
        supervisor.join()
        started = set(psutil.Process().children(recursive=True)) - before
    # Torn down in order, nothing left: Valkey, the sentinels, PostgreSQL, APIs, workers.
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


@pytest.fixture
def api(scaleout):
    with httpx.Client(base_url=scaleout.api_urls[0], timeout=30) as client:
        yield client


def ledger_states(database_url: str, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """Each job's (status, error), read from the ledger itself."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT job_id, status, error FROM jobs WHERE job_id = ANY(:ids)"),
                {"ids": ids},
            )
            return {row.job_id: (row.status, row.error) for row in rows}
    finally:
        engine.dispose()


def reconcile_now(scaleout: ScaleOut, monkeypatch) -> int:
    """One run of the stage's maintenance reconcile(), its "lost after" wait set to 0."""
    maintenance = importlib.import_module(f"{STAGES[STAGE]}.maintenance")
    ledger_module = importlib.import_module(f"{STAGES[STAGE]}.ledger")
    monkeypatch.setattr(maintenance, "LOST_AFTER_S", 0)

    async def run() -> int:
        pool = open_pool(scaleout.redis.url, timeout_s=REDIS_TIMEOUT_S)
        redis = ArqRedis(pool)
        ledger = ledger_module.Ledger(scaleout.database_url)
        try:
            return await maintenance.reconcile(ledger, redis, maintenance.MAINTENANCE_ROW_BUDGET)
        finally:
            ledger.close()
            await redis.aclose()
            await pool.aclose()

    return asyncio.run(run())


def all_final(scaleout: ScaleOut, ids: list[str], monkeypatch) -> dict[str, tuple[str, str | None]]:
    """Wait for the workers to finish what Redis holds; reconcile what it lost; return the
    ledger's rows, every one final."""

    def unfinished() -> list[str]:
        states = ledger_states(scaleout.database_url, ids)
        return [i for i in ids if states.get(i, ("missing",))[0] not in FINAL]

    def settled() -> bool:
        if not unfinished():
            return True
        try:  # a stopped worker may hold a row's lock for a while (jobkit.db's idle timeout)
            return bool(reconcile_now(scaleout, monkeypatch)) and not unfinished()
        except sa.exc.OperationalError:
            return False

    poll(settled, FINAL_DEADLINE_S, "every accepted job final in the ledger", every_s=1.0)
    return ledger_states(scaleout.database_url, ids)


def submit(api: httpx.Client, n: int, seconds: float) -> list[str]:
    ids = []
    for _ in range(n):
        response = api.post("/tasks/wait", json={"seconds": seconds})
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])
    return ids


def workers(api: httpx.Client) -> dict[str, dict]:
    return {w["id"]: w for w in api.get("/queue").json()["workers"]}


def busy_worker(scaleout: ScaleOut, ids: list[str], besides=None):
    """A worker host (not `besides`) whose log says it started one of these jobs (ARQ's
    `→ <id>:` line)."""
    wanted = set(ids)
    for host in scaleout.workers:
        if host is besides:
            continue
        if wanted & set(re.findall(r"→ ([0-9a-f]{32}):", host.process.output())):
            return host
    return None


def test_scaleout_refuses_to_start_over_an_address_in_use(tmp_path, monkeypatch, capsys):
    """An old run's API would answer the new run's readiness check and take its requests."""
    network = pick_network(apis=1, workers=1)
    address = f"127.{network}.1.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((address, API_PORT))
        taken.listen()
        topology = ScaleOut(tmp_path / "a", apis=1, workers=1, network=network)
        with pytest.raises(Fatal, match=f"{address}:{API_PORT}"):
            topology.start()
        assert topology.redis.primary.process is None  # refused before starting anything
        monkeypatch.setattr(scaleout_module, "NETWORK", network)
        code = scaleout_module.main(["--apis", "1", "--workers", "1", "--data-dir",
                                     str(tmp_path / "b")])  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert f"already in use: {address}:{API_PORT}" in out and "left behind" not in out


def test_each_worker_host_has_its_own_id_address_and_metrics(scaleout, api):
    seen = poll(lambda: len(found := workers(api)) == 3 and found, 30, "three workers")
    assert set(seen) == {"host-1", "host-2", "host-3"}
    for n in (1, 2, 3):
        metrics = seen[f"host-{n}"]["extra"]["metrics"]
        assert metrics.startswith(f"http://127.{scaleout.network}.2.{n}:")
        assert httpx.get(metrics, timeout=5).status_code == 200


def test_a_worker_sigkilled_and_another_cut_off_from_redis_mid_job_lose_nothing(
    scaleout, api, monkeypatch
):
    """Two hosts fail at once while they hold jobs (together, so that the in-progress expiry
    is waited out once): one SIGKILLed, a host that died, which nothing starts again; one
    stopped (SIGSTOP: silent to Redis), which comes back and finishes its copies too."""
    ids = submit(api, 12, 1.0)
    killed = poll(lambda: busy_worker(scaleout, ids), 20, "a worker running a job")
    stopped = poll(lambda: busy_worker(scaleout, ids, besides=killed), 20, "another one")
    with scaleout.down(killed.name):
        killed.process.signal(signal.SIGKILL)
        killed_at = datetime.now(UTC)
        held = running_in(killed, ids)
        stopped.process.signal(signal.SIGSTOP)  # its in-progress marks expire
        try:
            states = all_final(scaleout, ids, monkeypatch)
        finally:
            stopped.process.signal(signal.SIGCONT)  # it finishes its copies too: at least once
        assert {status for status, _ in states.values()} == {"complete"}
        # The jobs the dead one held ran again elsewhere, once their in-progress marks expired.
        assert held
        for finished in finish_times(scaleout.database_url, held):
            assert (finished - killed_at).total_seconds() >= IN_PROGRESS_EXPIRY_S * 0.9
        poll(lambda: killed.name not in workers(api), HEARTBEAT_TTL_S + 10, "the dead worker gone")
    poll(lambda: {killed.name, stopped.name} <= set(workers(api)), 30, "both hosts back")


def running_in(host, ids: list[str]) -> list[str]:
    """The jobs among `ids` the host's log shows started (→) and not finished (←)."""
    output = host.process.output()
    started = set(re.findall(r"→ ([0-9a-f]{32}):", output))
    ended = set(re.findall(r"← ([0-9a-f]{32}):", output))
    return sorted((started - ended) & set(ids))


def finish_times(database_url: str, ids: list[str]) -> list[datetime]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT finish_time FROM jobs WHERE job_id = ANY(:ids)")
            rows = connection.execute(query, {"ids": ids}).scalars().all()
    finally:
        engine.dispose()
    return [when if when.tzinfo else when.replace(tzinfo=UTC) for when in rows]


@dataclass
class Submissions:
    """POST /tasks/wait at a steady rate in a thread: every answer, and how long it took."""

    api: httpx.Client
    answers: list[tuple[float, int, str | None, float]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    when: dict[str, tuple[float, float]] = field(default_factory=dict)  # id: (sent, answered)
    stop: threading.Event = field(default_factory=threading.Event)
    fault_at: float = 0.0  # wall-clock time of the fault, as the workers' heartbeats have it

    def run(self) -> None:
        while not self.stop.wait(SUBMIT_EVERY_S):
            started = time.monotonic()
            try:
                response = self.api.post("/tasks/wait", json={"seconds": 0.05}, timeout=30)
            except httpx.HTTPError:
                self.answers.append((started, 0, None, time.monotonic() - started))
                continue
            took = time.monotonic() - started
            self.answers.append((started, response.status_code,
                                 response.headers.get("retry-after"), took))  # fmt: skip
            if response.status_code == 202:
                self.accepted.append(job_id := response.json()["job_id"])
                self.when[job_id] = (started, started + took)

    def recovered_after(self, fault: float) -> float:
        """From the fault to the first 2xx after the last answer that was not one."""
        after = [a for a in self.answers if a[0] >= fault]
        bad = [a for a in after if a[1] != 202]
        if not bad:
            return 0.0
        last_bad = max(a[0] for a in bad)
        return min(a[0] for a in after if a[0] > last_bad) - fault


@dataclass
class Fault:
    """When the fault began (before `fault()` was called), when it was done, and when every
    sentinel named the new primary: time.monotonic(), as Submissions records."""

    began: float
    at: float
    switched: float


def under_submissions(scaleout: ScaleOut, api: httpx.Client, fault) -> tuple[Submissions, Fault]:
    """From a whole topology, steady submissions; `fault()` once some are in; until
    AFTER_FAILOVER_S of 2xx in a row on the new primary."""
    scaleout.redis.wait_in_sync()
    load = Submissions(api)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        poll(lambda: len(load.accepted) >= BEFORE_FAULT, 30, "submissions before the fault")
        old = scaleout.redis.primary_address()
        began = time.monotonic()
        fault()
        at, load.fault_at = time.monotonic(), time.time()
        scaleout.redis.wait_for_new_primary(old, RECOVERY_BOUND_S)
        times = Fault(began, at, time.monotonic())

        def steady() -> bool:  # and well past the switch window: jobs that must not be lost
            recent = [a for a in load.answers if a[0] > time.monotonic() - AFTER_FAILOVER_S]
            past_window = PRIMARY_CHECK_S + IN_FLIGHT_S + AFTER_FAILOVER_S
            return time.monotonic() - times.switched > past_window and all(
                a[1] == 202 for a in recent
            )

        poll(steady, RECOVERY_BOUND_S + AFTER_FAILOVER_S, "2xx again after the failover")
    finally:
        load.stop.set()
        thread.join()
    return load, times


def check_failover(
    scaleout, load: Submissions, at: float, monkeypatch, what: str, also: list[str] = ()
) -> list[str]:
    """The answers were 202 or a quick 503 with Retry-After, 2xx came back in time, the
    workers came back, and every accepted job (and `also`) is final: the ones Redis lost
    settled by reconcile. Returns those."""
    statuses = Counter(status for _, status, _, _ in load.answers)
    assert set(statuses) <= {202, 503}, statuses
    assert all(retry_after for _, status, retry_after, _ in load.answers if status == 503)
    slowest = max(took for *_, took in load.answers)
    assert slowest < NO_HANG_S, f"a request took {slowest:.1f} s"
    recovered = load.recovered_after(at)
    assert recovered < RECOVERY_BOUND_S
    # Every worker comes back on the new primary: each beats there again.
    poll(lambda: len(workers_beating(scaleout, at)) == 3, 60, "every worker on the new primary")
    workers_back = max(0.0, *(started - load.fault_at for started in worker_starts(scaleout)))
    accepted = [*load.accepted, *also]
    states = all_final(scaleout, accepted, monkeypatch)
    # What reconcile() writes for a row whose job Redis no longer has: "lost: ..." for one
    # queued, "stuck: ..." for one a worker had started (on a primary that then dropped it)
    # once its timeout and grace have passed, as on a busy machine they may have by now.
    lost = [i for i, (_, error) in states.items() if (error or "").startswith(REDIS_LOST_IT)]
    assert {status for status, _ in states.values()} <= {"complete", "failed"}
    assert len(states) == len(accepted)
    not_complete = {i: states[i] for i in load.accepted if i not in lost}
    assert all(status == "complete" for status, _ in not_complete.values()), {
        i: state for i, state in not_complete.items() if state[0] != "complete"
    }
    report = (
        f"{what}: {len(accepted)} accepted, {statuses[503]} answered 503, "
        f"2xx again {recovered:.2f} s after it, slowest answer {slowest:.2f} s, "
        f"{len(lost)} acknowledged jobs lost by Redis "
        f"and settled by the ledger; the last worker started on the new primary "
        f"{workers_back:.1f} s after it (worker restarts so far: {len(scaleout.restarts)})"
    )
    print(f"\n{report}")
    return lost


def worker_starts(scaleout: ScaleOut) -> list[float]:
    """When each live worker started (its heartbeat's `started`): a restarted one, on the new
    primary, after the fault."""
    with httpx.Client(base_url=scaleout.api_urls[0], timeout=10) as client:
        alive = client.get("/queue").json()["workers"]
    return [datetime.fromisoformat(w["started"]).timestamp() for w in alive]


def workers_beating(scaleout: ScaleOut, since: float) -> set[str]:
    """The workers whose last heartbeat is after `since` (the new primary has it)."""
    with httpx.Client(base_url=scaleout.api_urls[0], timeout=10) as client:
        alive = client.get("/queue").json()["workers"]
    return {w["id"] for w in alive if time.monotonic() - w["last_seen_s"] > since}


@pytest.fixture
def made_whole_after(scaleout):
    """After a failover test: the old primary (started again if killed) a replica of the
    new one, in sync, for the next test."""
    yield
    scaleout.redis.rejoin()


def test_a_sentinel_failover_loses_only_jobs_accepted_in_its_switch_window(
    scaleout, api, monkeypatch, made_whole_after
):
    """SENTINEL FAILOVER promotes the replica at once, but the API writes to the old primary
    until its pool next asks the sentinels (every PRIMARY_CHECK_S) after they all name the new
    one; the old primary drops those writes when it becomes a replica. So a job may be lost
    only if its request was answered after the failover began and sent before
    switched + PRIMARY_CHECK_S (+ IN_FLIGHT_S for a request under way)."""
    load, fault = under_submissions(scaleout, api, scaleout.redis.failover)
    lost = check_failover(scaleout, load, fault.at, monkeypatch, "SENTINEL FAILOVER")
    window_s = fault.switched - fault.began + PRIMARY_CHECK_S + IN_FLIGHT_S
    print(f"switch window: {window_s:.2f} s (sentinels agreed after "
          f"{fault.switched - fault.began:.2f} s)")  # fmt: skip
    assert fault.switched - fault.began < RECOVERY_BOUND_S
    outside = [
        job_id for job_id in lost
        if not (load.when[job_id][1] >= fault.began
                and load.when[job_id][0] <= fault.began + window_s)
    ]  # fmt: skip
    assert not outside, f"{len(outside)} of {len(lost)} lost jobs accepted outside the window"
    assert len([i for i in load.accepted if load.when[i][0] > fault.began + window_s]) >= 10


def test_the_primary_sigkilled_with_its_replica_behind_loses_jobs_the_ledger_settles(
    scaleout, api, monkeypatch, made_whole_after
):
    """Replication is asynchronous: what the primary acknowledged after its replica last
    heard from it dies with it. Here the replica is made to lag for sure (stopped, its link
    cut) while BEHIND deferred jobs are accepted; then the primary is SIGKILLed."""
    behind: list[str] = []
    replica_stopped: list[float] = []

    def crash_with_replica_behind() -> None:
        primary = scaleout.redis.current_primary()
        replica = next(s for s in scaleout.redis.servers if s is not primary)
        assert replica.process is not None
        replica_stopped.append(time.monotonic())
        replica.process.send_signal(signal.SIGSTOP)
        try:
            with redis.Redis(primary.host, primary.port, socket_timeout=5) as client:
                client.client_kill_filter(_type="slave")  # redis-py says "slave"
            with httpx.Client(base_url=scaleout.api_urls[0], timeout=10) as other:
                for _ in range(BEHIND):  # deferred: they wait in Redis, where none will run
                    response = other.post("/tasks/wait", json={"seconds": 0.05},
                                          params={"delay_seconds": 60})  # fmt: skip
                    assert response.status_code == 202, response.text
                    behind.append(response.json()["job_id"])
            primary.kill()
        finally:
            replica.process.send_signal(signal.SIGCONT)

    load, fault = under_submissions(scaleout, api, crash_with_replica_behind)
    lost = check_failover(scaleout, load, fault.at, monkeypatch, "primary SIGKILLed", also=behind)
    assert set(behind) <= set(lost), "jobs the replica never had must be the ledger's to settle"

    # The replica had every job answered before it was stopped, and the new primary every
    # job sent after the kill: only those in between may be lost.
    def while_behind(job_id: str) -> bool:
        sent, answered = load.when[job_id]
        return answered >= replica_stopped[0] and sent <= fault.at

    outside = [i for i in lost if i not in behind and not while_behind(i)]
    assert not outside, f"{len(outside)} lost jobs not accepted while the replica was behind"
