"""A Redis that fails over, on one machine: a Valkey primary, one replica and three sentinels,
each on a loopback address of its own (127.0.0.0/8 is all loopback on Linux), so that nothing
they say to each other leaves the machine and nothing in them assumes one shared address.

The sentinels watch the primary under the name PRIMARY_NAME; a client finds it with the
`redis+sentinel://` URL that `url` gives (jobkit/sentinel.py). The timings are short so a
failover on this machine takes seconds: a primary that does not answer for DOWN_AFTER_MS is
"subjectively down" to a sentinel, QUORUM sentinels agreeing make it "objectively down", and
one of them, elected, promotes the replica.

`python -m devkit.scaleout` starts this with PostgreSQL, APIs and workers; the failover tests
start it on its own.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import redis

from devkit.valkey import EmbeddedValkey, get_binary_path

PRIMARY_NAME = "jobs"
QUORUM = 2  # of the three sentinels
DOWN_AFTER_MS = 1000  # silence before a sentinel calls the primary down (Redis' default: 30 s)
FAILOVER_TIMEOUT_MS = 5000  # and before a failed failover is tried again
VALKEY_PORT = 6379  # each node on its own address, so the usual ports never collide
SENTINEL_PORT = 26379
READY_TIMEOUT_S = 15.0  # for the sentinels to find each other and the replica
SENTINEL_TIMEOUT_S = 1.0  # each question to a sentinel
NO_SYNC_DELAY = ["--repl-diskless-sync-delay", "0"]  # a replica in sync as soon as it connects
SYNC_TIMEOUT_S = 30.0  # for the replica to be online and caught up, the sentinels agreeing


def loopback(network: int, host: int) -> str:
    """127.<network>.0.<host>: every topology picks its own network, so two never collide."""
    return f"127.{network}.0.{host}"


def can_bind(host: str, port: int) -> bool:
    """True if nothing listens on host:port: a bind there succeeds (SO_REUSEADDR, as the
    servers set it, so that a closed connection's TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_network(addresses: Callable[[int], Iterable[tuple[str, int]]]) -> int:
    """A 127.N network on which every one of `addresses(N)` can be bound, N picked at random
    among 100..250, so that concurrent runs (and one a killed run left listening) rarely
    meet. Probing is not reserving: a clash is still reported when a server starts."""
    candidates = random.sample(range(100, 251), 151)
    for network in candidates:
        if all(can_bind(host, port) for host, port in addresses(network)):
            return network
    raise RuntimeError("no free 127.N network for a topology")


def addresses(network: int) -> list[tuple[str, int]]:
    """Where a ReplicatedValkey on 127.<network> listens: two Valkeys, three sentinels."""
    return [(loopback(network, n), VALKEY_PORT if n < 3 else SENTINEL_PORT) for n in range(1, 6)]


class SentinelServer(EmbeddedValkey):
    """valkey-server --sentinel: watches the primary and, with its peers, fails it over."""

    def __init__(self, data_dir: Path, host: str, primary: EmbeddedValkey) -> None:
        super().__init__(data_dir, host=host, port=SENTINEL_PORT, persist=False)
        self.primary = primary

    def command(self) -> list[str]:
        config = self.data_dir / "sentinel.conf"  # a sentinel rewrites it: one of its own
        config.write_text(
            f"sentinel announce-ip {self.host}\n"  # not the 127.0.0.1 it connects from
            f"sentinel monitor {PRIMARY_NAME} {self.primary.host} {self.primary.port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {PRIMARY_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {PRIMARY_NAME} {FAILOVER_TIMEOUT_MS}\n"
        )
        return [
            str(get_binary_path()), str(config), "--sentinel",
            "--port", str(self.port), "--bind", self.host,
            "--dir", str(self.data_dir), "--daemonize", "no", "--logfile", "valkey.log",
        ]  # fmt: skip


class ReplicatedValkey:
    """A primary, a replica and three sentinels on 127.<network>.0.1 to .5."""

    def __init__(self, data_dir: Path, network: int = 25, persist: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.network, self.persist = network, persist
        self.primary = self.node(1, [])
        self.replica: EmbeddedValkey | None = None
        self.sentinels: list[SentinelServer] = []

    def node(self, n: int, extra_args: list[str]) -> EmbeddedValkey:
        host = loopback(self.network, n)
        return EmbeddedValkey(
            self.data_dir / f"valkey-{n}",
            host=host,
            port=VALKEY_PORT,
            persist=self.persist,
            # As a replica (either may become one), say this address, not the 127.0.0.1 the
            # connection comes from: the sentinels find replicas through what they announce.
            extra_args=[*extra_args, "--replica-announce-ip", host, *NO_SYNC_DELAY],
        )

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{PRIMARY_NAME}/0"

    def addresses(self) -> list[tuple[str, int]]:
        """Every address this topology listens on."""
        return addresses(self.network)

    @property
    def servers(self) -> list[EmbeddedValkey]:
        return [self.primary, *([self.replica] if self.replica else [])]

    def start(self) -> None:
        self.primary.start()
        self.replica = self.node(2, ["--replicaof", self.primary.host, str(self.primary.port)])
        self.replica.start()
        for n in (3, 4, 5):
            sentinel = SentinelServer(
                self.data_dir / f"sentinel-{n - 2}", loopback(self.network, n), self.primary
            )
            self.sentinels.append(sentinel)
            sentinel.start()
        self.wait_until(self.ready, READY_TIMEOUT_S, "the sentinels did not find each other")
        self.wait_in_sync()

    def stop(self) -> None:
        for server in [*self.sentinels, *reversed(self.servers)]:
            server.stop()

    def ask(self, sentinel: SentinelServer) -> redis.Redis:
        return redis.Redis(
            sentinel.host, sentinel.port, socket_timeout=SENTINEL_TIMEOUT_S, decode_responses=True
        )

    def ready(self) -> bool:
        """Every sentinel sees the primary up, the replica, and its two peers."""
        for sentinel in self.sentinels:
            try:
                with self.ask(sentinel) as client:
                    state = client.sentinel_master(PRIMARY_NAME)
            except redis.RedisError:
                return False
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                return False
        return True

    def in_sync(self) -> bool:
        """The topology is whole: every sentinel names the same primary and sees a replica of
        it and both peers; the primary has a replica online whose offset is its own; no other
        server still says it is a primary."""
        primary = self.agreed_primary()
        if primary is None or not self.ready():
            return False
        try:
            for server in self.servers:
                with redis.Redis(server.host, server.port, socket_timeout=SENTINEL_TIMEOUT_S,
                                 decode_responses=True) as client:  # fmt: skip
                    info = client.info("replication")
                if (server.host, server.port) != primary:
                    if info["role"] != "slave" or info.get("master_link_status") != "up":
                        return False
                    continue
                replica = info.get("slave0")
                if info["role"] != "master" or not isinstance(replica, dict):
                    return False
                if replica["state"] != "online" or replica["offset"] != info["master_repl_offset"]:
                    return False
        except (redis.RedisError, KeyError):
            return False
        return True

    def wait_in_sync(self, timeout_s: float = SYNC_TIMEOUT_S) -> None:
        self.wait_until(self.in_sync, timeout_s, "the replica did not catch up with the primary")

    def rejoin(self) -> None:
        """Make the topology whole again after a failover: start a server that was killed,
        and make every server but the sentinels' primary its replica, as the sentinels would
        themselves some seconds later (+convert-to-slave), then wait until it is in sync."""
        self.wait_until(lambda: self.agreed_primary() is not None, READY_TIMEOUT_S, "no primary")
        host, port = self.agreed_primary() or ("", 0)
        for server in self.servers:
            if server.process is None:
                server.start()
            if (server.host, server.port) != (host, port):
                with redis.Redis(server.host, server.port, socket_timeout=5) as client:
                    client.replicaof(host, port)
        self.wait_in_sync()

    def primary_address(self) -> tuple[str, int] | None:
        """Where the sentinels (the first that answers) say the primary is."""
        for sentinel in self.sentinels:
            try:
                with self.ask(sentinel) as client:
                    host, port = client.sentinel_get_master_addr_by_name(PRIMARY_NAME)
                    return str(host), int(port)
            except (redis.RedisError, TypeError):
                continue
        return None

    def current_primary(self) -> EmbeddedValkey:
        address = self.primary_address()
        return next(s for s in self.servers if (s.host, s.port) == address)

    def failover(self) -> None:
        """SENTINEL FAILOVER: promote the replica now, the old primary becoming its replica."""
        with self.ask(self.sentinels[0]) as client:
            client.execute_command("SENTINEL", "FAILOVER", PRIMARY_NAME)

    def agreed_primary(self) -> tuple[str, int] | None:
        """The primary's address if every sentinel says the same, else None."""
        seen = set()
        for sentinel in self.sentinels:
            try:
                with self.ask(sentinel) as client:
                    host, port = client.sentinel_get_master_addr_by_name(PRIMARY_NAME)
            except (redis.RedisError, TypeError):
                return None
            seen.add((str(host), int(port)))
        return seen.pop() if len(seen) == 1 else None

    def wait_for_new_primary(self, old: tuple[str, int], timeout_s: float) -> tuple[str, int]:
        """Until every sentinel names the same primary, and not `old`."""
        self.wait_until(lambda: self.agreed_primary() not in (None, old), timeout_s,
                        "no new primary")  # fmt: skip
        address = self.agreed_primary()
        assert address is not None
        return address

    @staticmethod
    def wait_until(condition, timeout_s: float, error: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{error} within {timeout_s:g} s")
            time.sleep(0.05)

    def __enter__(self) -> ReplicatedValkey:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
