"""A TCP forwarder whose mode is switched by the test: the target endpoint that goes away and comes back."""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class SwitchProxy:
    """A TCP forwarder to `upstream` on a fixed local port, whose mode can be switched:
    `up` forwards; `refuse` closes the listening socket (connections refused); `silent` accepts
    and never answers (and stops answering on the connections already open)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.mode = "up"
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listen()

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def set(self, mode: str) -> None:
        with self._lock:
            if mode == self.mode:
                return
            if mode == "refuse" and self._listener is not None:
                self._listener.close()
                self._listener = None
            if mode != "refuse" and self._listener is None:
                self._listen()
            self.mode = mode

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._listener is not None:
                self._listener.close()

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            while self.mode == "silent" and not self._stop.is_set():  # accepted, never answered
                select.select([conn], [], [], 0.5)
                if conn.recv(65536) == b"":
                    return
            upstream = socket.create_connection(self.upstream)
            while not self._stop.is_set():
                ready, _, _ = select.select([conn, upstream], [], [], 0.5)
                if self.mode != "up":  # this connection stops answering
                    with contextlib.suppress(OSError):
                        if conn in ready and conn.recv(65536) == b"":
                            return
                    continue
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (upstream if src is conn else conn).sendall(data)
        except OSError:
            return
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()
