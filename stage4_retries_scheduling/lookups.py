"""DNS lookups on a few threads of their own, shared fairly: the SSRF guard's (urls.resolve).

getaddrinfo blocks, so lookups run in threads: their own few, not asyncio's default executor
(min(32, CPUs + 4) threads, shared with every asyncio.to_thread). There, six slow lookups
were enough to stall every other request behind them. A real application would use an async
resolver with its own timeouts and a cache (aiodns, or a local one), and no threads to run
out of.
"""

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Threads for DNS lookups, in each API and worker process.
LOOKUP_THREADS = 4
# How many of them the lookups of one API client may hold at once, so that one client's
# slow names cannot take them all.
LOOKUP_THREADS_PER_CLIENT = 2


class LookupsBusy(Exception):
    """No lookup thread is free (or none of this client's share): the server is short of
    them, and the URL may be fine. A 503 (429 for the client's share) in the API, a retry in
    the worker."""

    def __init__(self, message: str, client_share: bool) -> None:
        super().__init__(message)
        self.client_share = client_share


class LookupThreads:
    """The lookup threads, and who holds them.

    A lookup holds its thread until getaddrinfo returns, even after its caller stopped
    waiting (a thread cannot be stopped). So a lookup starts only when a thread is free for
    it, and is refused at once (LookupsBusy) when none is: queued behind slow ones, it would
    time out, and the API would blame the URL for the server's shortage.
    """

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="dns")
        self.lock = threading.Lock()  # the threads free their slots themselves
        self.held: Counter[str | None] = Counter()  # slots per client (None: the worker's)

    def start(self, lookup: Callable[[], Any], client: str | None) -> Future[Any]:
        with self.lock:
            if self.held.total() >= LOOKUP_THREADS:
                raise LookupsBusy(f"all {LOOKUP_THREADS} DNS lookup threads are busy", False)
            if client is not None and self.held[client] >= LOOKUP_THREADS_PER_CLIENT:
                share = f"{LOOKUP_THREADS_PER_CLIENT} DNS lookups in flight"
                raise LookupsBusy(f"this client already has {share}", True)
            self.held[client] += 1
        future = self.executor.submit(lookup)
        future.add_done_callback(lambda _: self.free(client))
        return future

    def free(self, client: str | None) -> None:
        with self.lock:
            self.held[client] -= 1
            self.held = +self.held  # drop the clients down to zero

    def in_flight(self) -> int:
        with self.lock:
            return self.held.total()


lookup_threads = LookupThreads(LOOKUP_THREADS)
