"""The queue's true state, read from ARQ's own keys: how many jobs are ready, scheduled and
running, and how long the oldest ready job has waited.

ARQ keeps every job in one sorted set (`arq:queue`), scored by when it may run (ms since the
epoch), from enqueue until it *finishes*: a running job stays in it, and so does a deferred
job or a retry waiting for its backoff. So `ZCARD arq:queue`, the usual "queue depth", counts
three different things as one number. Here they are apart:

- `scheduled`: score in the future (deferred jobs, retries waiting for their backoff);
- `running`: due, and a worker holds its `arq:in-progress:<id>` key (a job running past its
  due time is running, not ready). A dead worker's job counts as running until that key
  expires (ARQ's in-progress TTL), because until then no other worker will take it;
- `ready`: due, and nobody runs it: the backlog that more workers would shrink;
- `oldest_ready_age_s`: now minus the score of the oldest ready job (None when none is).

The cost does not grow with the queue: one Lua script, run in one round trip, counts with
ZCARD and ZCOUNT (O(1) and O(log n)) and looks at the in-progress keys of the oldest due jobs
only, in windows of SCAN_WINDOW ids, stopping at the first full window in which none is
running. That bound rests on how ARQ's workers read the queue: from its lowest scores, so the
jobs they run are the oldest due ones. The count would miss a running job only behind a whole
window of ready jobs that all have older scores than it, i.e. jobs queued with a past score
while it ran. The script blocks Redis while it runs (every script does), so it never reads
more than MAX_SCANNED ids: far more jobs than any set of ARQ workers runs at once.

`read_queue` adds the live workers (jobkit.heartbeat): what `GET /queue` answers.

A learner may skip this module: the stages show the result at `GET /queue`.
"""

from dataclasses import dataclass

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from jobkit.heartbeat import WorkerBeat, live_workers

SCAN_WINDOW = 500  # ids looked at per step, oldest due first
MAX_SCANNED = 20_000  # bounds how long the script may hold Redis

# KEYS[1]: the queue. ARGV: now (ms), window, cap, the in-progress key prefix.
# Returns {total, due, running, oldest ready score or false}. The in-progress keys are not
# declared in KEYS, which only Redis Cluster minds; ARQ does not run on a cluster anyway.
_STATE_SCRIPT = """
local total = redis.call('ZCARD', KEYS[1])
local due = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
local window, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local running, oldest, offset = 0, false, 0
while offset < due and offset < cap do
  local batch = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
                           'LIMIT', offset, window)
  local running_here = 0
  for i = 1, #batch, 2 do
    if redis.call('EXISTS', ARGV[4] .. batch[i]) == 1 then
      running_here = running_here + 1
    elseif not oldest then
      oldest = batch[i + 1]
    end
  end
  running = running + running_here
  if running_here == 0 or #batch < 2 * window then break end
  offset = offset + window
end
return {total, due, running, oldest}
"""


@dataclass(frozen=True)
class QueueState:
    """What is in the queue right now; `ready + scheduled + running` is ARQ's ZCARD."""

    ready: int
    scheduled: int
    running: int
    oldest_ready_age_s: float | None


async def read_queue_state(redis: Redis, queue_name: str) -> QueueState:
    """One round trip to Redis, whatever the queue's length (see the module's docstring)."""
    now_ms = timestamp_ms()  # ARQ's own clock reading: its workers decide "due" with it
    script = redis.register_script(_STATE_SCRIPT)
    args: list[int | str] = [now_ms, SCAN_WINDOW, MAX_SCANNED, in_progress_key_prefix]
    total, due, running, oldest = await script(keys=[queue_name], args=args)
    age = None if oldest is None else max(0.0, (now_ms - float(oldest)) / 1000)
    return QueueState(
        ready=int(due) - int(running),
        scheduled=int(total) - int(due),
        running=int(running),
        oldest_ready_age_s=age,
    )


@dataclass(frozen=True)
class QueueView(QueueState):
    """The queue's state and the workers alive on it: `GET /queue`."""

    workers: list[WorkerBeat]


async def read_queue(redis: Redis, queue_name: str) -> QueueView:
    """The queue's state and its live workers, in two round trips to Redis."""
    state = await read_queue_state(redis, queue_name)
    workers = await live_workers(redis, queue_name)
    return QueueView(
        state.ready, state.scheduled, state.running, state.oldest_ready_age_s, workers.alive
    )
