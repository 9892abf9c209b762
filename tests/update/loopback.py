"""What the update-data tests share: an HTTP server on 127.0.0.1 that the tests' request
handlers run in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1, a free port: the handler looks up `routes` (path ->
    what to answer) and logs each request path in `hits`."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.routes: dict[str, Any] = {}
        self.hits: list[str] = []
        self.release = threading.Event()
        """Set at teardown: handlers stalling on purpose end."""

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base + path


S = TypeVar("S", bound=LoopbackServer)


@contextmanager
def serving(srv: S) -> Iterator[S]:
    """`srv` answering on a thread until the block ends; then stalled handlers are released
    and the server thread joined (5 s at most)."""
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)
