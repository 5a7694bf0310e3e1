"""A gateway on a real loopback socket, for tests that need what `responses` cannot give:
retries on the wire, timeouts, answers that drip."""

from __future__ import annotations

import socket
import threading


class LoopbackServer:
    """Listens on 127.0.0.1 (port 0) and hands each connection to ``handle`` in its own thread."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, name="loopback-gateway", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


def read_head(conn: socket.socket) -> bytes | None:
    """Read from ``conn`` until a request's head has come (with whatever followed it); None if it closed first."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        received += chunk
    return received
