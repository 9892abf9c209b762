"""The endpoint: ``/metrics`` over HTTP or HTTPS from one thread, holding up under hostile
scrapers.

The endpoint's Python work takes the GIL from the packet loop, so what scrapers cost is
bounded, not their politeness assumed:

- one thread with a selector serves every connection (`Server`): a slow client costs a
  socket and a few bytes, never a thread; no thread is started per connection;
- a collection is reused while it is fresh (`Snapshot.fresh`), each wire format encoded once
  per collection, so many scrapers cost about what one does;
- at most `max_connections` connections: at the limit a new one takes the place of one from
  the client address that holds the most (its oldest still sending its request, or else its
  answer gone longest without progress), so a crowd from one address only pushes out its
  own;
- a client has `connection_timeout` seconds to send its request (at most `MAX_REQUEST_BYTES`),
  TLS handshake included, and as long again to read the answer;
- at most `ACCEPT_RATE` new connections a second, whoever opens them (the rest wait in the
  kernel's listen queue);
- ``phonehome_metrics_connections_dropped_total{reason}``, ``…_connections_open``,
  ``…_collections_total`` and ``…_http_requests_total{code}`` (`endpoint_families`) show all
  this.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import re
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from sensor.metrics.auth import Auth
from sensor.metrics.families import Families, gauge
from sensor.metrics.settings import MetricsConfig
from sensor.sinks import LogLimiter

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES: Final = 8192
"""A request's line and headers together (a GET has no body); a longer one is dropped."""
WRITE_CHUNK: Final = 65536
"""Bytes of an answer sent per write; the connection's progress is noted between writes."""
DROP_REASONS: Final = ("evicted", "timeout", "invalid")
_READING, _WRITING = 0, 1
"""A connection's phases: sending its request (TLS handshake included), reading the answer."""
_POLL: Final = 0.25
"""Seconds between the serving thread's checks of the connections' ages, at most."""
_CROWD_TURNS: Final = 16
"""Connections of a crowd (an address holding over a quarter of max_connections) served per
round of the serving thread, at most."""
_BACKLOG: Final = 256
ACCEPT_RATE: Final = 400.0
"""New connections accepted per second, at most (in bursts of up to `_ACCEPT_BURST`); more
wait in the listen queue. Each one costs the packet loop some GIL time, whoever sends it;
scrapers need a few a second."""
_ACCEPT_BURST: Final = 64.0
_ABORT: Final = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 seconds: close() resets the connection."""


class EndpointStats:
    """The endpoint's own counters, kept by the exporter so that they outlive a restart of the
    endpoint (reconfigure)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        """Dropped connections by reason (`DROP_REASONS`), and "collections"."""
        self.codes: Counter[str] = Counter()
        """Requests answered, by status code."""

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def answered(self, code: str) -> None:
        with self.lock:
            self.codes[code] += 1


def _encode(encoder: Callable[[Collector], bytes], families: Collector, gz: bool) -> bytes:
    out = encoder(families)
    return gzip.compress(out, compresslevel=6) if gz else out


class Snapshot:
    """One collection, and its encodings (per content type and compression), each made once.
    A collector itself: the encoders read it as they would a registry."""

    def __init__(self, started: float, finished: float, families: list[Metric]) -> None:
        self.started = started
        """time.monotonic() when the collection began."""
        self.finished = finished
        self.families = families
        self._bodies: dict[tuple[str, bool], bytes] = {}
        self._lock = threading.Lock()

    def collect(self) -> list[Metric]:
        return self.families

    def fresh(self, max_age: float, now: float) -> bool:
        """Finished less than `max_age` seconds ago, or less than it took (a slow collection
        does not run back to back)."""
        return now - self.finished < max(max_age, self.finished - self.started)

    def body(
        self,
        encoder: Callable[[Collector], bytes],
        content_type: str,
        gzipped: bool,
        names: Sequence[str] = (),
    ) -> bytes:
        """The collection in `content_type` (its `encoder`); only samples named in `names`
        when given (``?name[]=...``, not kept)."""
        if names:  # prometheus_client's own ?name[] filter (it finds collectors by name)
            registry = CollectorRegistry(auto_describe=True)
            registry.register(self)
            return _encode(encoder, registry.restricted_registry(names), gzipped)
        key = (content_type, gzipped)
        with self._lock:
            out = self._bodies.get(key)
            if out is None:
                out = self._bodies[key] = _encode(encoder, self, gzipped)
        return out


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ","."""


_LINE_END = re.compile(rb"\r?\n")
_HEAD_END = re.compile(rb"\n\r?\n")


def _head_end(buf: bytearray, start: int) -> int:
    """Where the request's head (line and headers) ends in `buf`, -1 while incomplete; the
    search starts at `start` (what came before was searched already)."""
    m = _HEAD_END.search(buf, start)
    return m.end() if m else -1


def _parse_request(head: bytes) -> Request | None:
    """The request line and headers of `head`, None when malformed."""
    lines = _LINE_END.split(head)
    parts = lines[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        if not raw:
            continue
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            return None
        key, v = name.lower(), value.strip()
        headers[key] = f"{headers[key]},{v}" if key in headers else v
    path, _, query = parts[1].partition("?")
    return Request(parts[0], path, query, headers)


class App:
    """The answers: credentials first, then /metrics from the shared collection."""

    def __init__(self, collection: Callable[[], Snapshot | None], auth: Auth) -> None:
        self.collection = collection
        """The collection to answer from (None: the one under way is taking too long)."""
        self.auth = auth

    def __call__(self, req: Request) -> tuple[str, list[tuple[str, str]], bytes]:
        text = ("Content-Type", "text/plain; charset=utf-8")
        if not self.auth.check(req.headers.get("authorization")):
            www = ("WWW-Authenticate", f'{self.auth.schemes} realm="phonehome"')
            return "401 Unauthorized", [www, text], b"401 Unauthorized\n"
        if req.method != "GET":
            return "405 Method Not Allowed", [("Allow", "GET"), text], b"405: use GET\n"
        if req.path == "/":
            return "200 OK", [text], b"Phonehome metrics: /metrics\n"
        if req.path != "/metrics":
            return "404 Not Found", [text], b"404 Not Found: try /metrics\n"
        snap = self.collection()
        if snap is None:
            return (
                "503 Service Unavailable",
                [("Retry-After", "5"), text],
                b"503: the collection under way is taking too long\n",
            )
        encoder, content_type = choose_encoder(req.headers.get("accept", ""))
        gz = gzip_accepted(req.headers.get("accept-encoding", ""))
        names = parse_qs(req.query).get("name[]", [])
        headers = [("Content-Type", content_type)]
        if gz:
            headers.append(("Content-Encoding", "gzip"))
        return "200 OK", headers, snap.body(encoder, content_type, gz, names)


class _Conn:
    """A connection as the serving thread keeps it: no thread of its own."""

    __slots__ = ("addr", "events", "fd", "handshaken", "host", "inbuf", "mark", "out", "phase",
                 "since", "sock")  # fmt: skip

    def __init__(self, sock: socket.socket, addr: Any, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.host = str(addr[0]) if isinstance(addr, tuple) and addr else ""
        self.phase = _READING
        self.since = now
        """When the phase began (its time limit counts from here)."""
        self.mark = now
        """Last sign of progress: when it was accepted while it sends its request (however
        much it dribbles), the last write that went out while it reads the answer."""
        self.events = 0
        """What the selector waits for (0: not registered)."""
        self.handshaken = not isinstance(sock, ssl.SSLSocket)
        self.inbuf = bytearray()
        self.out: list[memoryview] = []
        """What is left to send: the head, then the body (shared by every scraper)."""


class Server:
    """The endpoint: one thread and a selector for every connection (slowloris clients cost a
    socket and a few bytes each, not a thread); a request is answered when its head is in, a
    collection, when one is due, in this thread too (scrapes arriving meanwhile share it).

    At most `max_connections` connections. At the limit a new one takes the place of a
    connection of the client address that holds the most: its oldest one still sending its
    request, or else its answer gone longest without progress. So a crowd of slow connections
    from one address only pushes out its own members, never a scraper elsewhere; and a
    well-behaved request is safe once read (requests in are read before newcomers are
    accepted).

    A connection that takes more than `connection_timeout` to send its request (TLS handshake
    included), or to read its answer, is closed. Dropped connections are closed with a reset
    and counted by reason. New connections are accepted at `ACCEPT_RATE` a second at most.
    """

    def __init__(
        self,
        address: tuple[str, int],
        ctx: ssl.SSLContext | None,
        cfg: MetricsConfig,
        stats: EndpointStats,
        app: Callable[[Request], tuple[str, list[tuple[str, str]], bytes]],
        limiter: LogLimiter,
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(_BACKLOG)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self.ssl_context = ctx
        self.max_connections = cfg.max_connections
        self.connection_timeout = cfg.connection_timeout
        self.stats = stats
        self.app = app
        self.limiter = limiter
        self._conns: dict[int, _Conn] = {}
        self._by_host: dict[str, dict[int, _Conn]] = {}
        """The connections of each client address, oldest first."""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.socket, selectors.EVENT_READ, "accept")
        self._wake, self._waker = socket.socketpair()
        self._wake.setblocking(False)
        self._sel.register(self._wake, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._accept_paused_until = 0.0
        self._tokens = _ACCEPT_BURST
        """Connections that may be accepted now (refilled at ACCEPT_RATE)."""
        self._refilled = time.monotonic()

    def open_connections(self) -> int:
        return len(self._conns)

    def serve_forever(self) -> None:
        try:
            while not self._stopping:
                accept = False
                wait = _POLL
                if self._accept_paused_until:
                    wait = min(wait, max(0.0, self._accept_paused_until - time.monotonic()))
                ready = []
                for key, _ in self._sel.select(wait):
                    if isinstance(key.data, _Conn):
                        ready.append(key.data)
                    elif key.data == "accept":
                        accept = True
                    else:
                        with contextlib.suppress(OSError):
                            self._wake.recv(64)
                try:
                    if accept:
                        self._accept()
                    # Clients with few connections first; a crowd's turn is bounded per round
                    # (the rest stay ready for the next), so it cannot hold up the accepting
                    # of everyone else's connections.
                    ready.sort(key=self._crowding)
                    crowd_turns = _CROWD_TURNS
                    for conn in ready:
                        if self._conns.get(conn.fd) is not conn:
                            continue
                        if self._crowded(conn):
                            if crowd_turns <= 0:
                                break
                            crowd_turns -= 1
                        self._service(conn)
                    self._check(time.monotonic())
                except Exception as exc:  # a bug: the endpoint carries on, and says so
                    self.limiter.warning("endpoint", "metrics: endpoint trouble: %r", exc)
                    time.sleep(0.05)
        finally:
            self.close()

    def shutdown(self) -> None:
        """Stop serving (from another thread): the serving thread closes everything."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._waker.send(b"x")

    def close(self) -> None:
        """Close every connection and the listening socket (the serving thread does, once
        stopped; or whoever opened the endpoint and never served it)."""
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        for s in (self.socket, self._wake, self._waker):
            s.close()

    # --- connections ------------------------------------------------------------------------

    def _pause_accepting(self, seconds: float) -> None:
        self._sel.unregister(self.socket)
        self._accept_paused_until = time.monotonic() + seconds

    def _accept(self) -> None:
        # Newcomers are accepted before the ready connections are served: a scraper's is
        # answered at once (below); a crowd's may push its own older ones out unanswered.
        now = time.monotonic()
        self._tokens = min(_ACCEPT_BURST, self._tokens + (now - self._refilled) * ACCEPT_RATE)
        self._refilled = now
        if self._tokens < 1:  # the rest wait in the listen queue
            self._pause_accepting((1 - self._tokens) / ACCEPT_RATE)
            return
        for _ in range(max(1, min(self.max_connections // 2, int(self._tokens)))):
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of descriptors: let the backlog wait a moment
                log.debug("metrics: accept failed: %s", exc)
                self._pause_accepting(0.1)
                return
            self._tokens -= 1
            if len(self._conns) >= self.max_connections:
                self._make_room()
            try:
                sock.setblocking(False)
                if self.ssl_context is not None:
                    sock = self.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
            except OSError as exc:
                log.debug("metrics: connection from %s failed: %s", addr, exc)
                sock.close()
                continue
            conn = _Conn(sock, addr, time.monotonic())
            self._conns[conn.fd] = conn
            self._by_host.setdefault(conn.host, {})[conn.fd] = conn
            # A scraper's request is usually in already: answered without a trip through the
            # selector (each system call can cost the GIL's switch interval when the packet
            # loop is busy). A crowd's newcomers wait for the selector, behind everyone else,
            # and the crowd's own newer ones may push them out before they cost an answer.
            if self._crowded(conn):
                self._want(conn, selectors.EVENT_READ)
            else:
                self._service(conn)

    def _crowding(self, conn: _Conn) -> int:
        """Connections open from `conn`'s address."""
        return len(self._by_host.get(conn.host, ()))

    def _crowded(self, conn: _Conn) -> bool:
        """`conn`'s address holds over a quarter of max_connections."""
        return self._crowding(conn) > self.max_connections // 4

    def _make_room(self) -> None:
        """Close a connection of the client address that holds the most: its oldest one still
        sending its request, or else the one whose answer has gone longest without progress.

        Never the newcomer: it cannot be told from a scraper before its request is in (and
        turning a crowd's newcomers away at once only brings them back sooner)."""
        crowd = max(self._by_host.values(), key=len)
        victim = next((c for c in crowd.values() if c.phase == _READING), None)
        if victim is None:
            victim = min(crowd.values(), key=lambda c: c.mark)
        self._close(victim, "evicted")

    def _check(self, now: float) -> None:
        # After every wake-up (at least each _POLL): too slow is closed.
        limit = self.connection_timeout
        for conn in [c for c in self._conns.values() if now - c.since > limit]:
            self._close(conn, "timeout")
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._sel.register(self.socket, selectors.EVENT_READ, "accept")

    def _close(self, conn: _Conn, reason: str | None = None) -> None:
        """Close `conn`; when it is dropped (`reason` counted), with a reset: the kernel keeps
        neither its unsent answer nor a TIME_WAIT entry for it."""
        if self._conns.pop(conn.fd, None) is None:
            return
        own = self._by_host[conn.host]
        del own[conn.fd]
        if not own:
            del self._by_host[conn.host]
        if conn.events:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        with contextlib.suppress(OSError):
            if reason is not None:
                self.stats.add(reason)
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
            conn.sock.close()

    def _want(self, conn: _Conn, events: int) -> None:
        if not conn.events:
            self._sel.register(conn.sock, events, conn)
        elif conn.events != events:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _service(self, conn: _Conn) -> None:
        try:
            if conn.phase == _READING:
                self._read(conn)
            else:
                self._write(conn)
        except OSError as exc:  # reset, TLS alert, a client speaking something else
            log.debug("metrics: connection from %s ended: %r", conn.addr, exc)
            self._close(conn)
        except Exception:
            log.debug("metrics: request from %s failed", conn.addr, exc_info=True)
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        sock = conn.sock
        if not conn.handshaken:
            assert isinstance(sock, ssl.SSLSocket)
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                self._want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._want(conn, selectors.EVENT_WRITE)
                return
            conn.handshaken = True
        while True:
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                self._want(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._want(conn, selectors.EVENT_WRITE)
                return
            if not data:  # the client gave up
                self._close(conn)
                return
            buf = conn.inbuf
            start = max(0, len(buf) - 3)
            buf += data
            end = _head_end(buf, start)
            if end < 0 and len(buf) < MAX_REQUEST_BYTES:
                continue
            if end < 0 or end > MAX_REQUEST_BYTES:
                self._close(conn, "invalid")
                return
            self._answer(conn, bytes(buf[:end]))
            return

    def _answer(self, conn: _Conn, head: bytes) -> None:
        req = _parse_request(head)
        headers: list[tuple[str, str]]
        if req is None:
            self.stats.add("invalid")
            status, headers, body = "400 Bad Request", [], b"400 Bad Request\n"
        else:
            status, headers, body = self.app(req)
            self.stats.answered(status.split(" ", 1)[0])
        lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
        lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        conn.out = [memoryview(b) for b in (head, body) if b]  # a ?name[] body may be empty
        conn.inbuf = bytearray()
        conn.phase = _WRITING
        conn.since = conn.mark = time.monotonic()
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        sock, out = conn.sock, conn.out
        plain = not isinstance(sock, ssl.SSLSocket)
        while out:
            try:
                if plain:  # head and body in one system call
                    n = sock.sendmsg([v[:WRITE_CHUNK] for v in out])
                else:
                    n = sock.send(out[0][:WRITE_CHUNK])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self._want(conn, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._want(conn, selectors.EVENT_READ)
                return
            conn.mark = time.monotonic()
            while n and n >= len(out[0]):
                n -= len(out.pop(0))
            if n:
                out[0] = out[0][n:]
        self._close(conn)


def endpoint_families(
    stats: EndpointStats, server: Server | None, max_connections: int
) -> Families:
    """The endpoint's own counters (the ``endpoint`` collector)."""
    with stats.lock:
        counts = dict(stats.counts)
        codes = dict(stats.codes)
    fam = CounterMetricFamily(
        "phonehome_metrics_connections_dropped",
        "Connections to the metrics endpoint closed by it: evicted (making room for a new "
        "one at max_connections), timeout (request or answer too slow), invalid (request "
        "too long or malformed)",
        labels=["reason"],
    )
    for reason in DROP_REASONS:
        fam.add_metric([reason], counts.get(reason, 0))
    yield fam
    yield gauge(
        "phonehome_metrics_connections_open",
        "Connections to the metrics endpoint open now (this one included)",
        server.open_connections() if server is not None else 0,
    )
    yield gauge(
        "phonehome_metrics_connections_max",
        "The metrics endpoint's connection limit (max_connections)",
        max_connections,
    )
    fam = CounterMetricFamily(
        "phonehome_metrics_collections",
        "Collections of the metrics (scrapes within min_interval share one)",
    )
    fam.add_metric([], counts.get("collections", 0))
    yield fam
    fam = CounterMetricFamily(
        "phonehome_metrics_http_requests",
        "Requests the metrics endpoint answered, by status code",
        labels=["code"],
    )
    for code, n in sorted(codes.items()):
        fam.add_metric([code], n)
    yield fam
