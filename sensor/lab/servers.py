"""The lab's servers and clients: real DNS, HTTP, HTTPS and HTTP/3 over the namespace gateway.

`sensor.lab.netns` runs this module with the virtualenv's Python inside the lab's namespaces:

- `serve CONFIG`: in the WAN namespace, every server in one asyncio process: a DNS resolver
  (UDP and TCP) answering A, AAAA, CNAME and HTTPS from a fixed zone; HTTP on port 80, HTTPS on 443
  (certificate for every zone name, SNI recorded) and, when aioquic is there, HTTP/3 on UDP 443.
  The web servers accept any request, count the body bytes received and answer 200 with a JSON
  body saying what they saw (peer address, SNI or :authority, byte count); each completed request
  is also appended as a JSON line to the events file, so tests can check the server's side.
  "ready" on stdout means every socket is bound.
- `resolve`, `dns`, `post`: clients run in a device namespace, printing one JSON object.

Only the standard library, dpkt and aioquic: no import from the rest of the package, so a server
crash can never be caused by sensor code. Bounded everywhere: request heads are capped, reads
time out, and a server exits when the process that started it dies.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import functools
import ipaddress
import json
import os
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import dpkt

HTTP_PORT = 80
HTTPS_PORT = 443
DNS_PORT = 53
H3_ALPN = ["h3"]
MAX_HEAD = 64 * 1024
"""Largest request head (request line and headers) a web server accepts."""
IO_TIMEOUT = 30.0
"""Seconds a server waits for the next piece of a request before giving up on it."""
CHUNK = 64 * 1024

Zone = Mapping[str, Sequence[tuple[str, str]]]
"""Owner name (lower case, no trailing dot) → records as (type, value): "A", "AAAA", "CNAME",
or "HTTPS" with SvcParams in presentation form, e.g. "alpn=h2,h3 ipv4hint=192.0.2.80
ech=<base64 ECHConfigList>" (ServiceMode, priority 1, target the owner itself)."""


# --- DNS ------------------------------------------------------------------------------------------

_QTYPES = {"A": dpkt.dns.DNS_A, "AAAA": dpkt.dns.DNS_AAAA, "CNAME": dpkt.dns.DNS_CNAME}
_QTYPES["HTTPS"] = 65
_SVC_KEYS = {"alpn": 1, "ipv4hint": 4, "ech": 5, "ipv6hint": 6}


def https_rdata(params: str) -> bytes:
    """RFC 9460 RDATA of a ServiceMode HTTPS record (priority 1, target ".") from SvcParams in
    presentation form: alpn and the address hints as comma lists, ech as base64."""
    items: list[tuple[int, bytes]] = []
    for token in params.split():
        key, _, value = token.partition("=")
        if key == "alpn":
            raw = b"".join(bytes([len(a)]) + a.encode() for a in value.split(","))
        elif key in ("ipv4hint", "ipv6hint"):
            raw = b"".join(ipaddress.ip_address(a).packed for a in value.split(","))
        elif key == "ech":
            raw = base64.b64decode(value)
        else:
            raise ValueError(f"HTTPS record: unsupported SvcParam {key!r}")
        items.append((_SVC_KEYS[key], raw))
    out = struct.pack("!H", 1) + b"\x00"
    for code, raw in sorted(items):
        out += struct.pack("!HH", code, len(raw)) + raw
    return out

_QTYPE_NAMES = {v: k for k, v in _QTYPES.items()}
DNS_TTL = 300


def dns_answer(zone: Zone, query: bytes) -> bytes | None:
    """The response to one DNS query, following CNAMEs inside the zone; None for non-queries.

    Names outside the zone get NXDOMAIN: the lab has no upstream, by design.
    """
    try:
        q = dpkt.dns.DNS(query)
    except (dpkt.UnpackError, struct.error, IndexError, ValueError):
        return None
    if q.qr != dpkt.dns.DNS_Q or len(q.qd) != 1:
        return None
    question = q.qd[0]
    r = dpkt.dns.DNS(id=q.id, qd=[question], an=[])
    r.qr, r.aa, r.ra, r.rd = dpkt.dns.DNS_R, 1, 1, q.rd
    owner = question.name.lower().rstrip(".")
    if owner not in zone:
        r.rcode = dpkt.dns.DNS_RCODE_NXDOMAIN
        return bytes(r)
    for _ in range(8):  # CNAME chain limit: a loop in a hand-written zone must not hang us
        records = zone.get(owner, ())
        cname = next((v for t, v in records if t == "CNAME"), None)
        if cname is None or question.type == dpkt.dns.DNS_CNAME:
            break
        rr = dpkt.dns.DNS.RR(name=owner, type=dpkt.dns.DNS_CNAME, ttl=DNS_TTL)
        rr.cname = cname
        r.an.append(rr)
        owner = cname
    for rtype, value in zone.get(owner, ()):
        if _QTYPES.get(rtype) != question.type:
            continue
        rr = dpkt.dns.DNS.RR(name=owner, type=question.type, ttl=DNS_TTL)
        if rtype == "HTTPS":
            rr.rdata = https_rdata(value)
        elif rtype == "A":
            rr.ip = ipaddress.IPv4Address(value).packed
        elif rtype == "AAAA":
            rr.ip6 = ipaddress.IPv6Address(value).packed
        else:
            rr.cname = value
        r.an.append(rr)
    return bytes(r)


class _DnsUdp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # 3.11's selector transport does not subclass DatagramTransport, though it is one.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = dns_answer(self.zone, data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _dns_tcp(zone: Zone, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
        while True:
            (n,) = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), IO_TIMEOUT))
            reply = dns_answer(zone, await asyncio.wait_for(reader.readexactly(n), IO_TIMEOUT))
            if reply is None:
                break
            writer.write(struct.pack(">H", len(reply)) + reply)
            await writer.drain()
    writer.close()


# --- HTTP and HTTPS -------------------------------------------------------------------------------


class EventLog:
    """Appends one JSON line per completed request; the lab reads the file."""

    def __init__(self, path: str) -> None:
        self.fh: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the server

    def write(self, event: Mapping[str, Any]) -> None:
        self.fh.write(json.dumps(event, sort_keys=True) + "\n")
        self.fh.flush()


def _peer_address(addr: Any) -> str:
    host = str(addr[0]) if isinstance(addr, tuple) and addr else "?"
    return host.removeprefix("::ffff:")


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> int:
    """Reads and counts a request body (Content-Length or chunked); returns the byte count."""
    received = 0
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), IO_TIMEOUT)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                await asyncio.wait_for(reader.readuntil(b"\r\n"), IO_TIMEOUT)  # no trailers
                return received
            received += len(await asyncio.wait_for(reader.readexactly(size), IO_TIMEOUT))
            await asyncio.wait_for(reader.readexactly(2), IO_TIMEOUT)
    left = int(headers.get("content-length", "0"))
    while left > 0:
        data = await asyncio.wait_for(reader.read(min(left, CHUNK)), IO_TIMEOUT)
        if not data:
            break
        received += len(data)
        left -= len(data)
    return received


async def _http(
    log: EventLog,
    listen: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """One request per connection: read it, count the body, answer 200 with what was seen."""
    sslobj = writer.get_extra_info("ssl_object")
    started = time.monotonic()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        received = await _read_body(reader, headers)
    except (
        OSError,
        ValueError,
        TimeoutError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
    ):
        writer.close()  # a broken or stalled request: drop it, nothing to count
        return
    event = {
        "proto": "https" if sslobj is not None else "http",
        "listen": listen,
        "peer": _peer_address(writer.get_extra_info("peername")),
        "sni": getattr(sslobj, "phonehome_sni", None),
        "host": headers.get("host"),
        "method": method,
        "path": path,
        "user_agent": headers.get("user-agent"),
        "received": received,
        "seconds": round(time.monotonic() - started, 6),
    }
    log.write(event)
    body = json.dumps(event).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), IO_TIMEOUT)


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])

    def remember_sni(sslobj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        # The object passed here is the one asyncio exposes as extra info "ssl_object".
        sslobj.phonehome_sni = name

    ctx.sni_callback = remember_sni
    return ctx


# --- HTTP/3 ---------------------------------------------------------------------------------------


def _h3_server_factory(log: EventLog, listen: str) -> Callable[..., Any]:
    """The aioquic protocol class for the HTTP/3 server (imported lazily: aioquic is optional)."""
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.events import ProtocolNegotiated, QuicEvent

    @dataclass
    class _Request:
        headers: dict[str, str] = field(default_factory=dict)
        received: int = 0
        started: float = field(default_factory=time.monotonic)

    class H3Server(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._http: H3Connection | None = None
            self._requests: dict[int, _Request] = {}
            self._peer = "?"

        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            self._peer = _peer_address(addr)
            super().datagram_received(data, addr)

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
                self._http = H3Connection(self._quic)
            if self._http is None:
                return
            for h3 in self._http.handle_event(event):
                if isinstance(h3, HeadersReceived):
                    req = self._requests.setdefault(h3.stream_id, _Request())
                    req.headers.update({k.decode(): v.decode() for k, v in h3.headers})
                    if h3.stream_ended:
                        self._respond(h3.stream_id)
                elif isinstance(h3, DataReceived):
                    req = self._requests.setdefault(h3.stream_id, _Request())
                    req.received += len(h3.data)
                    if h3.stream_ended:
                        self._respond(h3.stream_id)

        def _respond(self, stream_id: int) -> None:
            assert self._http is not None
            req = self._requests.pop(stream_id)
            event = {
                "proto": "h3",
                "listen": listen,
                "peer": self._peer,
                # aioquic keeps no server-side SNI; :authority is what the client asked for.
                "sni": req.headers.get(":authority"),
                "host": req.headers.get(":authority"),
                "method": req.headers.get(":method"),
                "path": req.headers.get(":path"),
                "user_agent": req.headers.get("user-agent"),
                "received": req.received,
                "seconds": round(time.monotonic() - req.started, 6),
            }
            log.write(event)
            body = json.dumps(event).encode()
            self._http.send_headers(
                stream_id,
                [
                    (b":status", b"200"),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            )
            self._http.send_data(stream_id, body, end_stream=True)
            self.transmit()

    return H3Server


# --- the server process ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServeConfig:
    resolvers: list[str]
    servers: list[str]
    zone: dict[str, list[tuple[str, str]]]
    cert: str
    key: str
    events: str
    quic: bool

    @classmethod
    def load(cls, path: str) -> ServeConfig:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        zone = {k: [(str(t), str(v)) for t, v in recs] for k, recs in raw["zone"].items()}
        return cls(
            resolvers=list(raw["resolvers"]),
            servers=list(raw["servers"]),
            zone=zone,
            cert=raw["cert"],
            key=raw["key"],
            events=raw["events"],
            quic=bool(raw["quic"]),
        )


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when the lab process dies, so a crashed run leaves no servers."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if parent_pid and os.getppid() != parent_pid:
        sys.exit(0)  # it died before prctl took effect


async def serve(cfg: ServeConfig, ready: TextIO) -> None:
    loop = asyncio.get_running_loop()
    log = EventLog(cfg.events)
    tls = server_tls_context(cfg.cert, cfg.key)
    closers: list[Callable[[], object]] = []
    for addr in cfg.resolvers:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DnsUdp(cfg.zone), local_addr=(addr, DNS_PORT)
        )
        closers.append(transport.close)
        tcp = await asyncio.start_server(
            lambda r, w: _dns_tcp(cfg.zone, r, w), addr, DNS_PORT, reuse_address=True
        )
        closers.append(tcp.close)
    for addr in cfg.servers:
        for port, ctx in ((HTTP_PORT, None), (HTTPS_PORT, tls)):
            srv = await asyncio.start_server(
                functools.partial(_http, log, addr),
                addr,
                port,
                ssl=ctx,
                limit=MAX_HEAD,
                reuse_address=True,
            )
            closers.append(srv.close)
    if cfg.quic:
        from aioquic.asyncio.server import serve as quic_serve
        from aioquic.quic.configuration import QuicConfiguration

        qcfg = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
        qcfg.load_cert_chain(cfg.cert, cfg.key)
        for addr in cfg.servers:
            qsrv = await quic_serve(
                addr, HTTPS_PORT, configuration=qcfg, create_protocol=_h3_server_factory(log, addr)
            )
            closers.append(qsrv.close)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready.write("ready\n")
    ready.flush()
    await stop.wait()
    for close in closers:
        close()


# --- clients --------------------------------------------------------------------------------------


def resolve(name: str, family: int = 0) -> list[str]:
    """Addresses for `name` through the C library's resolver (the namespace's resolv.conf)."""
    infos = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


def dns_query(
    name: str, qtype: str, server: str, tcp: bool = False, timeout: float = 3.0
) -> dict[str, Any]:
    """One DNS query straight to `server`; the answer section as a list of [type, value]."""
    q = dpkt.dns.DNS(id=int.from_bytes(os.urandom(2), "big"))
    q.qd = [dpkt.dns.DNS.Q(name=name, type=_QTYPES[qtype])]
    wire = bytes(q)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    if tcp:
        with socket.create_connection((server, DNS_PORT), timeout=timeout) as s:
            s.sendall(struct.pack(">H", len(wire)) + wire)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack(">H", buf[:2])[0]:
                data = s.recv(4096)
                if not data:
                    raise OSError("DNS over TCP: connection closed early")
                buf += data
            reply = buf[2:]
    else:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(wire, (server, DNS_PORT))
            reply = s.recv(4096)
    r = dpkt.dns.DNS(reply)
    answers: list[list[str]] = []
    for rr in r.an:
        if rr.type == dpkt.dns.DNS_A:
            answers.append(["A", str(ipaddress.IPv4Address(rr.ip))])
        elif rr.type == dpkt.dns.DNS_AAAA:
            answers.append(["AAAA", str(ipaddress.IPv6Address(rr.ip6))])
        elif rr.type == dpkt.dns.DNS_CNAME:
            answers.append(["CNAME", rr.cname])
        else:
            answers.append([_QTYPE_NAMES.get(rr.type, str(rr.type)), ""])
    return {"rcode": r.rcode, "answers": answers}


def _body_chunks(size: int) -> Iterator[bytes]:
    pattern = (b"phonehome-lab " * (CHUNK // 14 + 1))[:CHUNK]
    left = size
    while left > 0:
        n = min(left, CHUNK)
        yield pattern[:n]
        left -= n


def _connect(
    host: str, port: int, address: str | None, family: int, timeout: float
) -> socket.socket:
    """TCP to `address`, or to `host` resolved as a real client would (DNS first)."""
    if address is not None:
        return socket.create_connection((address, port), timeout=timeout)
    last: OSError | None = None
    for fam, stype, proto, _, sockaddr in socket.getaddrinfo(
        host, port, family, socket.SOCK_STREAM
    ):
        s = socket.socket(fam, stype, proto)
        s.settimeout(timeout)
        try:
            s.connect(sockaddr)
            return s
        except OSError as exc:
            s.close()
            last = exc
    raise last or OSError(f"no address for {host}")


def post(
    url: str,
    size: int,
    *,
    address: str | None = None,
    family: int = 0,
    cafile: str | None = None,
    user_agent: str | None = None,
    timeout: float = 30.0,
    body: bytes | None = None,
) -> dict[str, Any]:
    """POST `size` bytes over HTTP/1.1 (http:// or https:// with SNI = the URL's host), or
    `body` as a form when given (what a leaking app sends)."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"unsupported URL {url!r}")
    host = u.hostname
    port = u.port or (HTTPS_PORT if u.scheme == "https" else HTTP_PORT)
    started = time.monotonic()
    sock = _connect(host, port, address, family, timeout)
    (local, local_port), remote = sock.getsockname()[:2], sock.getpeername()[0]
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile)
        sock = ctx.wrap_socket(sock, server_hostname=host)
    if body is not None:
        size = len(body)
    ctype = "application/x-www-form-urlencoded" if body is not None else "application/octet-stream"
    head = [
        f"POST {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1",
        f"Host: {u.netloc}",
        f"Content-Type: {ctype}",
        f"Content-Length: {size}",
        "Connection: close",
    ]
    if user_agent:
        head.append(f"User-Agent: {user_agent}")
    sent = 0
    with sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for chunk in [body] if body is not None else _body_chunks(size):
            sock.sendall(chunk)
            sent += len(chunk)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = resp.read()
    return {
        "status": resp.status,
        "sent": sent,
        "local": local,
        "local_port": local_port,
        "remote": remote,
        "server": json.loads(body) if body else None,
        "seconds": round(time.monotonic() - started, 6),
    }


async def _h3_post(
    host: str,
    port: int,
    path: str,
    size: int,
    address: str | None,
    cafile: str | None,
    user_agent: str | None,
    timeout: float,
) -> dict[str, Any]:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3Connection
    from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent

    class H3Client(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.http = H3Connection(self._quic)
            self.status = 0
            self.body = b""
            self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def quic_event_received(self, event: QuicEvent) -> None:
            for h3 in self.http.handle_event(event):
                self._h3_event(h3)

        def _h3_event(self, h3: H3Event) -> None:
            if isinstance(h3, HeadersReceived):
                self.status = int(dict(h3.headers).get(b":status", b"0"))
            elif isinstance(h3, DataReceived):
                self.body += h3.data
            if getattr(h3, "stream_ended", False) and not self.done.done():
                self.done.set_result(None)

    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host)
    if cafile:
        cfg.load_verify_locations(cafile)
    started = time.monotonic()
    target = address or resolve(host)[0]
    async with connect(target, port, configuration=cfg, create_protocol=H3Client) as client:
        assert isinstance(client, H3Client)
        stream_id = client._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", host.encode()),
            (b":path", path.encode()),
            (b"content-length", str(size).encode()),
        ]
        if user_agent:
            headers.append((b"user-agent", user_agent.encode()))
        client.http.send_headers(stream_id, headers, end_stream=size == 0)
        sent = 0
        for chunk in _body_chunks(size):
            sent += len(chunk)
            client.http.send_data(stream_id, chunk, end_stream=sent == size)
        client.transmit()
        await asyncio.wait_for(client.done, timeout)
        status, body = client.status, client.body
    return {
        "status": status,
        "sent": sent,
        "local": None,
        "local_port": None,
        "remote": target,
        "server": json.loads(body) if body else None,
        "seconds": round(time.monotonic() - started, 6),
    }


def post_h3(
    url: str,
    size: int,
    *,
    address: str | None = None,
    cafile: str | None = None,
    user_agent: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """POST `size` bytes over HTTP/3 (QUIC, UDP 443) with aioquic."""
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    if u.scheme != "https" or not u.hostname:
        raise ValueError(f"HTTP/3 needs an https:// URL, not {url!r}")
    return asyncio.run(
        _h3_post(
            u.hostname,
            u.port or HTTPS_PORT,
            u.path or "/",
            size,
            address,
            cafile,
            user_agent,
            timeout,
        )
    )


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sensor.lab.servers", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run every lab server (in the WAN namespace)")
    s.add_argument("config", help="JSON written by sensor.lab")
    s.add_argument("--parent-pid", type=int, default=0, help="exit when this process dies")
    r = sub.add_parser("resolve", help="getaddrinfo through resolv.conf")
    r.add_argument("name")
    r.add_argument("--family", type=int, choices=(0, 4, 6), default=0)
    d = sub.add_parser("dns", help="one DNS query straight to a server")
    d.add_argument("name")
    d.add_argument("--type", default="A", choices=sorted(_QTYPES))
    d.add_argument("--server", required=True)
    d.add_argument("--tcp", action="store_true")
    c = sub.add_parser("post", help="POST a body of N bytes over HTTP, HTTPS or HTTP/3")
    c.add_argument("url")
    c.add_argument("--size", type=int, default=0)
    c.add_argument("--address", help="connect here instead of resolving the URL's host")
    c.add_argument("--family", type=int, choices=(0, 4, 6), default=0)
    c.add_argument("--cafile")
    c.add_argument("--user-agent")
    c.add_argument("--http3", action="store_true")
    c.add_argument("--body", help="send this text as a form body instead of N filler bytes")
    c.add_argument("--timeout", type=float, default=30.0)
    return p


_FAMILIES = {0: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        _die_with_parent(args.parent_pid)
        asyncio.run(serve(ServeConfig.load(args.config), sys.stdout))
        return 0
    result: Any
    if args.command == "resolve":
        result = resolve(args.name, _FAMILIES[args.family])
    elif args.command == "dns":
        result = dns_query(args.name, args.type, args.server, tcp=args.tcp)
    elif args.http3:
        result = post_h3(
            args.url,
            args.size,
            address=args.address,
            cafile=args.cafile,
            user_agent=args.user_agent,
            timeout=args.timeout,
        )
    else:
        result = post(
            args.url,
            args.size,
            address=args.address,
            family=_FAMILIES[args.family],
            cafile=args.cafile,
            user_agent=args.user_agent,
            timeout=args.timeout,
            body=args.body.encode() if args.body is not None else None,
        )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
