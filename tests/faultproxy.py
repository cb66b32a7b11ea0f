"""A TCP proxy in front of the test stack's S3 endpoint that a test can cut and restore.

moto_server keeps its objects in memory, so stopping it would lose every model; the proxy
makes the endpoint unreachable instead: ``cut()`` closes the listening socket and resets
every open connection (clients then get "connection refused", as from a host that is
down), ``restore()`` listens again on the same port. The tests' own checks talk to moto
directly and see the store throughout.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class Proxy:
    def __init__(self, target_port: int, port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = port
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.cuts: list[tuple[float, float | None]] = []  # (cut at, restored at), monotonic

    @property
    def up(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="s3-proxy").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut() closed it
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
                with self._lock:
                    self._open.discard(end)

    def cut(self) -> None:
        """The endpoint is down: nothing listens, every connection is reset."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._open = list(self._open), set()
        if listener is not None:
            listener.close()
        for connection in connections:
            _reset(connection)
        self.cuts.append((time.monotonic(), None))

    def restore(self) -> None:
        if self.up:
            return
        self.start()
        if self.cuts and self.cuts[-1][1] is None:
            self.cuts[-1] = (self.cuts[-1][0], time.monotonic())

    def close(self) -> None:
        self.cut()


def _reset(connection: socket.socket) -> None:
    """Close with RST rather than FIN: what a peer that went away looks like."""
    with contextlib.suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
