"""A slow network link on loopback: a TCP proxy in front of a server (the tests' Redis) that
delays what it forwards, and can hold it at an exact point, for a process that must be slow
to reach that server.

    with SlowLink(redis_port, delay_s=0.15) as link:   # point the process at link.url
        link.hold_at(b"MULTI")   # the next chunk to the server that contains MULTI waits...
        ...                      # (link.held is set once it does)
        link.release()           # ...until the test lets it go

Each connection gets two threads, one per direction; a chunk is forwarded `delay_s` after it
arrived, after the chunks before it. A held chunk is let go after HOLD_MAX_S even if the
test never releases it, and leaving the block closes every connection and stops every thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading

HOLD_MAX_S = 30.0
STOP_DEADLINE_S = 5.0
CHUNK_BYTES = 65536


class SlowLink:
    def __init__(self, upstream_port: int, delay_s: float = 0.0, host: str = "127.0.0.1"):
        self.upstream, self.delay_s = (host, upstream_port), delay_s
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://{host}:{self.port}/0"
        self.trigger: bytes | None = None
        self.held, self.released = threading.Event(), threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []

    def hold_at(self, pattern: bytes) -> None:
        """Hold the next chunk sent to the server that contains `pattern`, until release()."""
        self.held.clear()
        self.released.clear()
        self.trigger = pattern

    def release(self) -> None:
        self.released.set()

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return  # the listener was closed: we are stopping
            with self.lock:
                self.sockets += [client, server]
            self._start(self._pump, client, server, True)
            self._start(self._pump, server, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, to_server: bool) -> None:
        try:
            while data := source.recv(CHUNK_BYTES):
                if self.delay_s and self.stopping.wait(self.delay_s):
                    return
                if to_server and self.trigger is not None and self.trigger in data:
                    self.trigger = None
                    self.held.set()
                    self.released.wait(HOLD_MAX_S)
                sink.sendall(data)
        except OSError:
            pass  # one end closed the connection
        finally:
            for end in (source, sink):  # the other direction's thread ends with it
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> SlowLink:
        self._start(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.released.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that waits on it
        self.listener.close()
        with self.lock:
            sockets, threads = list(self.sockets), list(self.threads)
        for end in sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        for thread in threads:
            thread.join(STOP_DEADLINE_S)
