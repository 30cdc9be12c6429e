"""Loopback listeners that record who connected: proof that a refused address was never reached.

    with ConnectionCounter(banner=b"...") as probe:    # answers every connection with a banner
        url = f"git://127.0.0.1:{probe.port}/x.git"
    assert probe.connections == 0

    with CountingProxy(daemon.port) as proxy:         # forwards to a real server, counting
        url = f"git://127.0.0.1:{proxy.port}/repo.git"

Both listen on one loopback address only (127.0.0.1 unless told otherwise: any 127/8 address
works on Linux without configuration, which lets a test tell "the allowed loopback address"
from "another loopback address").
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress
from types import TracebackType
from typing import Self


class _Listener:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.connections = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            with suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None

    def _accept_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class ConnectionCounter(_Listener):
    """Counts connections; sends `banner` to each (as a service announcing itself would)."""

    def __init__(self, host: str = "127.0.0.1", *, banner: bytes = b"") -> None:
        super().__init__(host)
        self.banner = banner

    def _serve(self, conn: socket.socket) -> None:
        with conn, suppress(OSError):
            if self.banner:
                conn.sendall(self.banner)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(5)
            while conn.recv(65536):
                pass


class CountingProxy(_Listener):
    """Forwards each connection to 127.0.0.1:`target_port`, counting them."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.target_port = target_port

    def _serve(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            pump = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
            pump.start()
            _pump(conn, upstream)
            pump.join(timeout=30)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
