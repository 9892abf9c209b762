"""`update-data` against a hostile server on 127.0.0.1: cut-off, corrupt, mislabelled, endless,
compressed, stalled and dripping downloads, error statuses and redirect games. Whatever the
server does, the last good file stays byte for byte, its manifest entry keeps its data, the
failure names the source and the reason on one line, and memory and time stay bounded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from sensor.enrich.cloud import SOURCES_BY_NAME
from sensor.update import datafiles
from sensor.update.datafiles import (
    DATA_SUBDIR,
    MANIFEST,
    MAX_PREFIXES,
    FetchError,
    SourceResult,
    format_result,
    read_manifest,
    update,
)
from tests.shared_data import shared
from tests.update.loopback import LoopbackServer, serving

REPO = Path(__file__).resolve().parents[2]
FAILURE_FIELDS = {"last_error", "last_attempt", "last_origin"}
"""What a failure adds to a source's manifest entry (`check` shows it); the rest must stay."""


# --- the hostile server ---------------------------------------------------------------------

Behaviour = Callable[["_Handler"], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # chunked bodies; every response still closes the connection

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        self.close_connection = True
        behaviour = self.server.routes.get(self.path)
        if behaviour is None:
            body(b"not found", status=404)(self)
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            behaviour(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(LoopbackServer):
    routes: dict[str, Behaviour]

    def __init__(self) -> None:
        super().__init__(_Handler)
        self.sent: dict[str, int] = {}
        """Body bytes an endless route got out before the client hung up."""


@pytest.fixture
def server() -> Iterator[_Server]:
    with serving(_Server()) as srv:
        yield srv


def body(
    data: bytes, status: int = 200, headers: dict[str, str] | None = None, length: int | None = -1
) -> Behaviour:
    """A plain response; `length` -1: the true Content-Length, None: none (close-delimited),
    another number: that, whatever is sent."""

    def respond(h: _Handler) -> None:
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        if length is not None:
            h.send_header("Content-Length", str(len(data) if length == -1 else length))
        h.end_headers()
        h.wfile.write(data)

    return respond


def raw(data: bytes) -> Behaviour:
    """Bytes on the wire instead of an HTTP response."""

    def respond(h: _Handler) -> None:
        h.wfile.write(data)

    return respond


def redirect(location: str, status: int = 302) -> Behaviour:
    return body(b"", status=status, headers={"Location": location})


def chunked(data: bytes, end: bool = True, size_line: bytes | None = None) -> Behaviour:
    def respond(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.write((size_line or b"%x" % len(data)) + b"\r\n" + data + b"\r\n")
        if end:
            h.wfile.write(b"0\r\n\r\n")

    return respond


def endless(limit: int, use_chunks: bool = False) -> Behaviour:
    """Prefix lines without end (up to `limit` bytes, so a client without a size cap fails a
    test rather than the machine), counting what got out."""
    line = b"203.0.113.0/24\n" * 4096

    def respond(h: _Handler) -> None:
        h.send_response(200)
        if use_chunks:
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        sent = 0
        try:
            while sent < limit:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line) if use_chunks else line)
                sent += len(line)
        finally:
            h.server.sent[h.path] = sent

    return respond


def stall(after_headers: bool) -> Behaviour:
    def respond(h: _Handler) -> None:
        if after_headers:
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.write(b"[")
            h.wfile.flush()
        h.server.release.wait(30)

    return respond


def drip(in_headers: bool) -> Behaviour:
    """One byte every 50 ms: each socket read succeeds long before its timeout."""

    def respond(h: _Handler) -> None:
        if in_headers:
            h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        else:
            h.send_response(200)
            h.send_header("Content-Length", "1000000")
            h.end_headers()
        h.wfile.flush()
        while not h.server.release.wait(0.05):
            h.wfile.write(b"1")
            h.wfile.flush()

    return respond


# --- last good state --------------------------------------------------------------------------

GOOD = {
    "aws": "aws-ip-ranges.json",
    "digitalocean": "digitalocean.csv",
    "linode": "linode.txt",
    "cloudflare-v4": "cloudflare-v4-ip-ranges.txt",
}


def urls(srv: _Server) -> dict[str, str]:
    return {name: srv.url(f"/{name}") for name in GOOD}


def seed(srv: _Server, state: Path) -> dict[str, Any]:
    """Every GOOD source fetched once; the data folder as it then is."""
    for name, file in GOOD.items():
        srv.routes[f"/{name}"] = body(shared(file))
    results = update(state, urls(srv), sources=list(GOOD))
    assert {r.status for r in results} == {"updated"}
    return snapshot(state)


def snapshot(state: Path) -> dict[str, Any]:
    data = state / DATA_SUBDIR
    files = {p.name: p.read_bytes() for p in data.iterdir() if p.name != MANIFEST}
    return {"files": files, "manifest": read_manifest(data)}


def assert_kept(state: Path, before: dict[str, Any], result: SourceResult, reason: str) -> None:
    """The failed source names its reason on one line; every file is byte-identical; every
    manifest entry keeps its data (the failed one gains only the failure fields)."""
    assert result.status == "failed" and result.kept_previous and not result.ok
    assert result.error is not None and reason in result.error, result.error
    assert result.error.isprintable() and len(result.error) <= datafiles.MAX_ERROR
    line = format_result(result)
    assert line.startswith(result.name) and "FAILED" in line and "kept previous copy" in line
    after = snapshot(state)
    assert after["files"] == before["files"]  # no .tmp debris either: same names
    manifest = after["manifest"]
    assert set(manifest) == set(before["manifest"])
    for name, entry in manifest.items():
        kept = {k: v for k, v in entry.items() if k not in FAILURE_FIELDS}
        assert kept == before["manifest"][name], name
    assert manifest[result.name]["last_error"] == result.error
    target = state / DATA_SUBDIR / SOURCES_BY_NAME[result.name].filename
    assert hashlib.sha256(target.read_bytes()).hexdigest() == manifest[result.name]["sha256"]


def bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """fn() in a thread: a hang fails the test instead of blocking it."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return out[0]


# --- one bad response each --------------------------------------------------------------------


def _many_prefixes() -> bytes:
    return b"".join(b"10.%d.%d.0/24\n" % (i >> 8 & 255, i & 255) for i in range(MAX_PREFIXES + 1))


CASES: dict[str, tuple[str, Callable[[_Server], Behaviour], str]] = {
    # case: (source, behaviour, a part of the reason)
    "truncated": (
        "aws",
        lambda s: body(shared(GOOD["aws"])[:500_000], length=len(shared(GOOD["aws"]))),
        "truncated: got 500000 of",
    ),
    "truncated-chunked": ("aws", lambda s: chunked(b'{"prefixes": [', end=False), "cannot fetch"),
    "garbage": ("aws", lambda s: body(random.Random(1).randbytes(5000)), "not a valid ip-ranges"),
    "html-200": (
        "aws",
        lambda s: body(b"<html><body>Sign in to the hotel Wi-Fi</body></html>"),
        "not a valid ip-ranges.json: not JSON",
    ),
    "empty-200": ("cloudflare-v4", lambda s: body(b""), "not a valid ips-v4"),
    "csv-for-json": ("aws", lambda s: body(shared(GOOD["linode"])), "not a valid ip-ranges.json"),
    "json-for-csv": (
        "digitalocean",
        lambda s: body(shared(GOOD["aws"])),
        "not a valid google.csv: line 1: not an IP prefix",
    ),
    "json-for-list": (
        "cloudflare-v4",
        lambda s: body(b'{"addresses": ["173.245.48.0/20"]}'),
        "not a valid ips-v4",
    ),
    "http-500": ("aws", lambda s: body(b"oops", status=500), "HTTP 500 Internal Server Error"),
    "http-404": ("aws", lambda s: body(b"gone", status=404), "HTTP 404 Not Found"),
    "redirect-loop": ("aws", lambda s: redirect(s.url("/aws")), "a redirect loop"),
    "redirect-chain": ("aws", lambda s: redirect(s.url("/hop")), "too many redirects"),
    "redirect-ftp": ("aws", lambda s: redirect("ftp://127.0.0.1/ip-ranges.json"), "non-HTTP"),
    "redirect-file": ("aws", lambda s: redirect("file:///etc/passwd"), "not allowed"),
    "redirect-bad-host": ("aws", lambda s: redirect("http://[::1/x"), "Invalid IPv6 URL"),
    "redirect-no-location": ("aws", lambda s: body(b"", status=302), "HTTP 302 Found"),
    "bad-chunk-size": ("aws", lambda s: chunked(b"{}", size_line=b"zz"), "cannot fetch"),
    "not-http": ("aws", lambda s: raw(b"HELLO \x1b[2J\r\n\r\n"), "HELLO \\x1b[2J"),
    "too-many-headers": (
        "aws",
        lambda s: body(b"{}", headers={f"X-{i}": "y" for i in range(150)}),
        "got more than 100 headers",
    ),
    "absurd-length": ("aws", lambda s: body(b"{}", length=10**12), "larger than the limit"),
    "deflate": (
        "aws",
        lambda s: body(zlib.compress(shared(GOOD["aws"])), headers={"Content-Encoding": "deflate"}),
        "unsupported Content-Encoding 'deflate'",
    ),
    "gzip-truncated": (
        "aws",
        lambda s: body(
            zlib.compressobj(6, zlib.DEFLATED, 31).compress(shared(GOOD["aws"])),
            headers={"Content-Encoding": "gzip"},
        ),
        "truncated gzip stream",
    ),
    "gzip-garbage": (
        "aws",
        lambda s: body(b"\x1f\x8b" + bytes(100), headers={"Content-Encoding": "gzip"}),
        "bad gzip encoding",
    ),
    "too-many-prefixes": (
        "cloudflare-v4",
        lambda s: body(_many_prefixes()),
        f"more than {MAX_PREFIXES} addresses",
    ),
    "shrunk": ("linode", lambda s: body(b"172.239.30.0/24,FR,FR-IDF,Paris,\n"), "looks truncated"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_response_keeps_last_good_copy(server: _Server, tmp_path: Path, case: str) -> None:
    source, behaviour, reason = CASES[case]
    before = seed(server, tmp_path)
    server.routes[f"/{source}"] = behaviour(server)
    for i in range(30):  # the redirect chain: 11 hops are one too many for urllib
        server.routes[f"/hop{'' if i == 0 else i}"] = redirect(server.url(f"/hop{i + 1}"))
    results = bounded(lambda: update(tmp_path, urls(server), sources=[source], timeout=10), 30)
    (result,) = results
    assert_kept(tmp_path, before, result, reason)


# --- time ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "behaviour",
    [stall(after_headers=False), stall(after_headers=True), drip(False), drip(True)],
    ids=["stall-before-headers", "stall-in-body", "drip-body", "drip-headers"],
)
def test_slow_server_times_out(server: _Server, tmp_path: Path, behaviour: Behaviour) -> None:
    """`update.timeout` bounds the whole download. Dripping a byte every 50 ms passes every
    socket timeout: before the deadline watchdog, that download never ended."""
    before = seed(server, tmp_path)
    server.routes["/aws"] = behaviour
    t0 = time.monotonic()
    (result,) = bounded(lambda: update(tmp_path, urls(server), sources=["aws"], timeout=1.5), 20)
    elapsed = time.monotonic() - t0
    print(f"\n{result.error} after {elapsed:.2f} s")
    assert_kept(tmp_path, before, result, "timed out")
    assert elapsed >= 1.4, elapsed  # not before the timeout (`bounded` is the liveness bound)


# --- memory ----------------------------------------------------------------------------------

RSS_SCRIPT = r"""
import json, sys
from sensor.update.datafiles import update

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

state, url, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
before = hwm()
(r,) = update(state, {"aws": url}, sources=["aws"], max_bytes=max_bytes, timeout=60)
print(json.dumps({"error": r.error, "kept": r.kept_previous, "before": before, "after": hwm()}))
"""
MAX_BYTES = 8 << 20


def peak_growth(state: Path, url: str) -> dict[str, Any]:
    """update-data of `url` in a process of its own: the growth of its peak RSS."""
    proc = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(state), url, str(MAX_BYTES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    out["growth"] = out["after"] - out["before"]
    return out


@pytest.mark.parametrize("use_chunks", [False, True], ids=["close-delimited", "chunked"])
def test_endless_download_cut_at_the_cap(server: _Server, tmp_path: Path, use_chunks: bool) -> None:
    """The server would send 512 MiB; the cap is 8 MiB: the client stops there, its peak RSS
    grows by about the cap (seen: 8-9 MiB), and the server gets out little more than that."""
    before = seed(server, tmp_path)
    server.routes["/aws"] = endless(512 << 20, use_chunks)
    out = peak_growth(tmp_path, server.url("/aws"))
    print(
        f"\nendless ({'chunked' if use_chunks else 'close'}): peak RSS +{out['growth'] >> 20} MiB"
    )
    assert out["kept"] and f"larger than the limit of {MAX_BYTES} bytes" in out["error"]
    assert out["growth"] < 3 * MAX_BYTES, out
    deadline = time.monotonic() + 10  # liveness: the server thread records what it sent
    while "/aws" not in server.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.sent["/aws"] < MAX_BYTES + (32 << 20)  # the cap plus socket buffers
    after = snapshot(tmp_path)
    assert after["files"] == before["files"]
    assert after["manifest"]["aws"]["sha256"] == before["manifest"]["aws"]["sha256"]


def test_gzip_bomb_bounded(server: _Server, tmp_path: Path) -> None:
    """256 MiB of zeros in a 256 KB gzip stream: decompression stops at the cap."""
    before = seed(server, tmp_path)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    bomb = b"".join(c.compress(zeros) for _ in range(256)) + c.flush()
    assert len(bomb) < MAX_BYTES
    server.routes["/aws"] = body(bomb, headers={"Content-Encoding": "gzip"})
    out = peak_growth(tmp_path, server.url("/aws"))
    print(f"\ngzip bomb ({len(bomb)} bytes): peak RSS +{out['growth'] >> 20} MiB")
    assert out["kept"] and "once decompressed" in out["error"]
    assert out["growth"] < 3 * MAX_BYTES, out
    assert snapshot(tmp_path)["files"] == before["files"]


# --- redirects ---------------------------------------------------------------------------------


def test_https_never_redirects_down_to_http() -> None:
    handler = datafiles._HttpOnlyRedirects()
    req = urllib.request.Request("https://ip-ranges.amazonaws.com/ip-ranges.json")
    with pytest.raises(FetchError, match="redirect from https to http refused"):
        handler.redirect_request(req, None, 302, "Found", {}, "http://evil.example/x")  # type: ignore[arg-type]
    new = handler.redirect_request(req, None, 302, "Found", {}, "https://mirror.example/x")  # type: ignore[arg-type]
    assert new is not None and new.full_url == "https://mirror.example/x"


def test_azure_https_page_linking_to_http_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    page = b'<a href="http://download.microsoft.com/d/ServiceTags_Public_20250721.json">x</a>'
    fetched: list[str] = []

    def fake_download(url: str, **kwargs: Any) -> bytes:
        fetched.append(url)
        return page

    monkeypatch.setattr(datafiles, "download", fake_download)
    page_url = "https://www.microsoft.com/en-us/download/details.aspx?id=56519"
    (result,) = update(tmp_path, {"azure": page_url}, sources=["azure"])
    assert result.status == "failed" and "linking to http refused" in (result.error or "")
    assert fetched == [page_url]


# --- other guards ------------------------------------------------------------------------------


def test_lost_manifest_still_guards_against_shrinking(server: _Server, tmp_path: Path) -> None:
    """Without a manifest entry the shrink guard counts the copy in place."""
    seed(server, tmp_path)
    (tmp_path / DATA_SUBDIR / MANIFEST).unlink()
    before = snapshot(tmp_path)
    server.routes["/linode"] = body(b"172.239.30.0/24,FR,FR-IDF,Paris,\n")
    (result,) = update(tmp_path, urls(server), sources=["linode"])
    assert result.status == "failed" and "looks truncated" in (result.error or "")
    assert snapshot(tmp_path)["files"] == before["files"]


def test_a_crash_in_validation_is_contained(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library bug on hostile input fails that source; the others still update."""
    before = seed(server, tmp_path)
    real = datafiles._validate

    def fragile(src: Any, data: bytes) -> int:
        if src.name == "aws":
            raise RecursionError("maximum recursion depth exceeded")
        return real(src, data)

    monkeypatch.setattr(datafiles, "_validate", fragile)
    server.routes["/cloudflare-v4"] = body(
        shared(GOOD["cloudflare-v4"]).rstrip() + b"\n198.51.100.0/24\n"
    )
    results = {r.name: r for r in update(tmp_path, urls(server), sources=["aws", "cloudflare-v4"])}
    assert results["cloudflare-v4"].status == "updated"
    assert "unexpected RecursionError" in (results["aws"].error or "")
    target = tmp_path / DATA_SUBDIR / "ip-ranges.json"
    assert target.read_bytes() == before["files"]["ip-ranges.json"]


def test_import_skips_fifos_and_devices(tmp_path: Path) -> None:
    """`--from` a folder where ip-ranges.json is a FIFO and ips-v4 is /dev/zero: skipped,
    neither read (a FIFO would block, /dev/zero never ends)."""
    src = tmp_path / "usb"
    src.mkdir()
    os.mkfifo(src / "ip-ranges.json")
    (src / "ips-v4").symlink_to("/dev/zero")
    results = bounded(
        lambda: update(tmp_path / "state", from_dir=src, sources=["aws", "cloudflare-v4"]), 10
    )
    assert [r.status for r in results] == ["skipped", "skipped"]


def test_concurrent_reader_sees_whole_files(tmp_path: Path) -> None:
    """Readers see the old file or the new one, never a mix or a short one (rename)."""
    target = tmp_path / "ip-ranges.json"
    versions = [bytes([65 + i]) * (1 << 20) for i in range(2)]
    target.write_bytes(versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            if data not in versions:
                seen.append(data[:16] + b"... %d bytes" % len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            datafiles.atomic_write(target, versions[(i + 1) % 2])
    finally:
        stop.set()
        thread.join(10)
    assert seen == []
    assert sorted(os.listdir(tmp_path)) == ["ip-ranges.json"]


# --- the command ------------------------------------------------------------------------------


def test_cli_exits_1_when_a_source_fails(server: _Server, tmp_path: Path) -> None:
    """`phonehome update-data`: the failing source is reported and kept, the good one is
    written all the same, the exit status is 1."""
    seed(server, tmp_path)
    server.routes["/aws"] = body(b"<html>Service Unavailable</html>", status=503)
    server.routes["/linode"] = body(shared(GOOD["linode"]) + b"172.239.31.0/24,FR,FR-IDF,Paris,\n")
    config = tmp_path / "phonehome.toml"
    url_lines = "".join(f'{name} = "{url}"\n' for name, url in urls(server).items())
    config.write_text(
        f'[paths]\nstate_dir = "{tmp_path}"\n[update.urls]\n{url_lines}'
        # the geo cache step needs no database: both configured (and never opened here)
        f'[geo]\ncountry_db = "{tmp_path}/c.mmdb"\nasn_db = "{tmp_path}/a.mmdb"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "update-data", "--config", str(config),
         "--only", "aws", "--only", "linode"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert lines["aws"].split()[1] == "FAILED"
    assert "HTTP 503 Service Unavailable" in lines["aws"] and "kept previous copy" in lines["aws"]
    assert lines["linode"].split()[1] == "updated"
