"""`phonehome update-data`: fetch the cloud providers' range files, a free IP-to-ASN dataset
and a domain-owner dataset into `<state_dir>/data/`.

Besides the range files (`cloud.CLOUD_SOURCES`) there are three more sources (`EXTRA_SOURCES`):
`asn`, iptoasn.com's ip2asn-combined.tsv.gz (public domain; or DB-IP's ASN Lite CSV through
`[update.urls] asn`, CC BY 4.0 with attribution) for AS numbers without a MaxMind database
(asn.py); `owners`, Exodus Privacy's tracker list (ODbL 1.0) naming the company behind the
hosts of mobile tracking SDKs (party.py); and `doh`, DNSCrypt's list of public DoH resolvers
(BSD-2-Clause, doh.py), which tells DNS-over-HTTPS from other HTTPS. A Disconnect or
DuckDuckGo entity list may be set as the `owners` URL instead; they are licensed for
non-commercial use only, so that is the owner's choice, never the default. All follow the
same rules as the range files.

Each source (`cloud.CLOUD_SOURCES`) is downloaded with urllib from its default URL or the one
`[update.urls]` sets, or imported from a local folder (`--from DIR`, for routers without
internet, files named as the providers publish them). A file is accepted only if the real
parser reads it, it has at least one prefix and no more than `MAX_PREFIXES`, is no bigger than
`max_bytes` (also once gunzipped), was not cut short (Content-Length, chunked framing, gzip
trailer), arrived within `timeout` seconds in all (redirects included: a server dripping a byte
just inside every socket timeout is cut off too) and has not shrunk to less than half its
previous prefix count (unless forced). Redirects go to http/https only, never from https down
to http. Accepted files replace the old copy atomically (temporary file in the same folder,
fsync, rename); a rejected or failed source keeps its last good copy and is reported (one
line, in the output and as `last_error` in the manifest).
`manifest.json` beside the files records per source where it came from, when, its SHA-256,
size and prefix count, and the last error (sensor/update/manifest.py reads and writes it).

Azure publishes its Service Tags under a URL that changes weekly: its configured URL may be the
JSON itself or the download page, from which the newest ServiceTags_Public_YYYYMMDD.json link is
taken (only links to download.microsoft.com or to the page's own host are followed).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urljoin, urlsplit

from sensor.config import one_line
from sensor.enrich import asn as asn_data
from sensor.enrich import doh
from sensor.enrich.cloud import CLOUD_SOURCES, CloudSource, identify
from sensor.enrich.geo import EmbeddedGeo, GeoDataError, geo_cache_dir
from sensor.enrich.party import MAX_OWNERS, OWNERS_FILE, DomainOwners
from sensor.enrich.relays import (
    MAX_TOR_ENDPOINTS,
    MAX_VPN_ENTRIES,
    TOR_FILE,
    VPN_PROTON_FILE,
    AddressList,
    TorRelays,
)
from sensor.files import write_atomically
from sensor.update import manifest as manifest_file
from sensor.update.manifest import MANIFEST as MANIFEST

if TYPE_CHECKING:
    from sensor.config import Config

DATA_SUBDIR: Final = "data"
LOCK_FILE: Final = ".update.lock"
USER_AGENT: Final = "phonehome-update-data/0.1"
SHRINK_LIMIT: Final = 0.5
"""A new file with fewer than this share of the current copy's prefixes is rejected."""
MAX_PREFIXES: Final = 500_000
"""Prefixes one source may have (Azure, the biggest, has ~90,000 in 2025). Parsing costs
~330 bytes a prefix: a hostile 28 MB list of 1.9 million /24s took 630 MB before this."""
MAX_ERROR: Final = 300
"""Characters of a failure reason kept (a hostile Location header can be 64 KB)."""

DEFAULT_URLS: Final[Mapping[str, str]] = {
    "aws": "https://ip-ranges.amazonaws.com/ip-ranges.json",
    "google": "https://www.gstatic.com/ipranges/cloud.json",
    "azure": "https://www.microsoft.com/en-us/download/details.aspx?id=56519",
    "oracle": "https://docs.oracle.com/iaas/tools/public_ip_ranges.json",
    "cloudflare-v4": "https://www.cloudflare.com/ips-v4",
    "cloudflare-v6": "https://www.cloudflare.com/ips-v6",
    "fastly": "https://api.fastly.com/public-ip-list",
    "digitalocean": "https://digitalocean.com/geo/google.csv",
    "linode": "https://geoip.linode.com/",
    "vultr": "https://geofeed.constant.com/?json",
    "huawei": "https://res-static.hc-cdn.cn/cloudbu-site/china/zh-cn/IP-location/google-geo-feed.csv",
    "asn": "https://iptoasn.com/data/ip2asn-combined.tsv.gz",
    "owners": "https://etip.exodus-privacy.eu.org/trackers/export",
    "doh": "https://download.dnscrypt.info/resolvers-list/v3/public-resolvers.md",
    "tor": "https://onionoo.torproject.org/details?type=relay&running=true"
    "&fields=or_addresses,flags,running",
    "vpn-protonvpn": "https://raw.githubusercontent.com/tn3w/ProtonVPN-IPs/master/"
    "protonvpn_entry_ips.txt",
}
"""Where each source is published (overridable per source in `[update.urls]`)."""

AZURE_DOWNLOAD_HOST: Final = "download.microsoft.com"
_AZURE_LINK: Final = re.compile(r"[^\s\"'<>()\\]*ServiceTags_Public_(\d{8})\.json")
# Upper bounds on the address literals in a file, found without parsing it: every prefix of
# every format holds one (an IPv6 one has at least two colons with hex digits between).
_IPV4_LITERAL: Final = re.compile(rb"\d{1,3}(?:\.\d{1,3}){3}")
_IPV6_LITERAL: Final = re.compile(rb":[0-9A-Fa-f]{0,4}:")

Status = Literal["updated", "unchanged", "failed", "skipped"]
ProgressFn = Callable[[str, int, int | None], None]
"""progress(source name, bytes so far, total bytes if known)."""


@dataclass(frozen=True, slots=True)
class DataSource:
    """A data file that is not a cloud range file; the same fields `CloudSource` has that
    update-data uses, plus its own record limit and unit."""

    name: str
    filename: str
    parse: Callable[[bytes], Sized]
    import_names: tuple[str, ...]
    max_records: int
    unit: str


EXTRA_SOURCES: Final[tuple[DataSource, ...]] = (
    DataSource(
        "asn",
        asn_data.ASN_FILE,
        asn_data.parse,
        (
            "ip2asn-combined.tsv.gz",
            "ip2asn-combined.tsv",
            "dbip-asn-lite-*.csv.gz",
            "dbip-asn-lite-*.csv",
        ),
        asn_data.MAX_ROWS,
        "ranges",
    ),
    DataSource(
        "owners",
        OWNERS_FILE,
        DomainOwners.parse,
        (OWNERS_FILE, "trackers.json", "entity_map.json", "disconnect-entitylist.json"),
        MAX_OWNERS,
        "names",
    ),
    DataSource(
        "doh",
        doh.LIST_FILE,
        doh.ResolverList.parse,
        (doh.LIST_FILE, doh.EMBEDDED),
        doh.MAX_RESOLVERS,
        "resolvers",
    ),
    # Relays' ingress (relays.py): the Tor consensus's ORPorts (Onionoo's details of running
    # relays, or a consensus document; Tor Metrics data, CC0) and ProtonVPN's entry
    # addresses (tn3w/ProtonVPN-IPs, Apache-2.0).
    DataSource(
        "tor",
        TOR_FILE,
        TorRelays.parse,
        (TOR_FILE, "details.json", "consensus", "*-consensus"),
        MAX_TOR_ENDPOINTS,
        "ORPorts",
    ),
    DataSource(
        "vpn-protonvpn",
        VPN_PROTON_FILE,
        AddressList.parse,
        (VPN_PROTON_FILE, "protonvpn_entry_ips.txt", "protonvpn_entry_ips.json"),
        MAX_VPN_ENTRIES,
        "entries",
    ),
)
Source = CloudSource | DataSource
ALL_SOURCES: Final[tuple[Source, ...]] = (*CLOUD_SOURCES, *EXTRA_SOURCES)
SOURCES_BY_NAME: Final[Mapping[str, Source]] = {s.name: s for s in ALL_SOURCES}


def _limit(src: Source) -> int:
    return src.max_records if isinstance(src, DataSource) else MAX_PREFIXES


def _unit(src: Source) -> str:
    return src.unit if isinstance(src, DataSource) else "prefixes"


class UpdateError(Exception):
    """update-data cannot run at all (bad source names, data folder not writable, busy)."""


class FetchError(Exception):
    """One source could not be fetched or was rejected; the message says why."""


@dataclass(frozen=True, slots=True)
class SourceResult:
    """What happened to one source."""

    name: str
    status: Status
    origin: str | None = None
    """URL (or local path) the data came from."""
    records: int | None = None
    """Prefixes in the file now in place (the new one, or the kept previous one)."""
    size: int | None = None
    sha256: str | None = None
    error: str | None = None
    kept_previous: bool = False
    """A failed source still has its last good copy in place."""

    @property
    def ok(self) -> bool:
        return self.status != "failed"


# --- fetching -----------------------------------------------------------------------------------


class _Deadline:
    """Ends a download when its time is up. Socket timeouts bound each read, not a server
    that drips a byte just inside every one (nor a slow redirect chain): at the deadline the
    connections' sockets are shut down, which wakes a blocked read with end-of-file."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket call also for TLS sockets (ssl's own shutdown unwraps them first).
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedConnection(http.client.HTTPConnection):
    """Hands each socket it connects to the download's deadline."""

    def __init__(self, *args: Any, deadline: _Deadline | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()  # for https: after the TLS handshake, so the socket is the TLS one
        if self._deadline is not None:
            self._deadline.watch(self.sock)


class _HTTPSConnection(_WatchedConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens http and https connections whose sockets `deadline` watches (it replaces both
    of urllib's default handlers)."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_WatchedConnection, req, deadline=self._deadline)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = getattr(self, "_context", None)
        return self.do_open(_HTTPSConnection, req, context=context, deadline=self._deadline)


def _read_limited(
    resp: http.client.HTTPResponse,
    name: str,
    expected: int | None,
    *,
    max_bytes: int,
    deadline: _Deadline,
    progress: ProgressFn | None,
) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while True:
        # read1: what one recv brings, so the checks run as data comes in (read(n) would
        # wait for all n bytes)
        chunk = resp.read1(1 << 16)
        if not chunk:
            break
        got += len(chunk)
        if got > max_bytes:
            raise FetchError(f"larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
        if progress is not None:
            progress(name, got, expected)
    if deadline.expired:  # the shut-down socket ends the body early: not a complete file
        raise FetchError(f"timed out after {deadline.seconds:g} s ({got} bytes read)")
    if expected is not None and got != expected:
        raise FetchError(f"truncated: got {got} of {expected} bytes")
    return b"".join(chunks)


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise FetchError(f"bad gzip encoding: {exc}") from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise FetchError(f"larger than the limit of {max_bytes} bytes once decompressed")
    if not d.eof:
        raise FetchError("truncated gzip stream")
    return out


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http/https only (urllib would also follow one to ftp), and never
    from https down to http (anyone on the path could then answer)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise FetchError(f"redirect to a non-HTTP URL refused: {newurl}")
        if _downgrades(req.full_url, newurl):
            raise FetchError(f"redirect from https to http refused: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _downgrades(url: str, next_url: str) -> bool:
    """Whether going from `url` to `next_url` leaves https (anyone on the path could answer)."""
    return urlsplit(url).scheme.lower() == "https" and urlsplit(next_url).scheme.lower() != "https"


def download(
    url: str,
    *,
    name: str = "",
    timeout: float = 60.0,
    max_bytes: int = 64 << 20,
    progress: ProgressFn | None = None,
) -> bytes:
    """GET `url` (http/https) with size, time and completeness checks; FetchError if not.
    `timeout` bounds the whole download, redirects included, as well as each read."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        raise FetchError(f"not a URL: {url}") from None
    if scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {scheme!r}: {url}")
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
    with _Deadline(timeout) as deadline:
        opener = urllib.request.build_opener(_HttpOnlyRedirects, _DeadlineHandler(deadline))
        try:
            with opener.open(req, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                expected = int(length) if length and length.strip().isdigit() else None
                if expected is not None and expected > max_bytes:
                    raise FetchError(f"{expected} bytes, larger than the limit of {max_bytes}")
                data = _read_limited(
                    resp, name, expected, max_bytes=max_bytes, deadline=deadline, progress=progress
                )
                encoding = (resp.headers.get("Content-Encoding") or "").strip().lower()
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400 and "infinite loop" in str(exc.reason):
                # urllib gives up after 10 hops, or at the 4th visit of one URL
                raise FetchError(f"too many redirects, or a redirect loop: {url}") from None
            raise FetchError(f"HTTP {exc.code} {exc.reason}: {url}") from None
        # URLError is an OSError; ValueError, OverflowError: a bad chunk size, a Location with
        # a bad host or port
        except (http.client.HTTPException, OSError, ValueError, OverflowError) as exc:
            if deadline.expired:
                raise FetchError(f"timed out after {timeout:g} s: {url}") from None
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else str(exc)
            raise FetchError(f"cannot fetch {url}: {reason or type(exc).__name__}") from None
    if encoding in ("gzip", "x-gzip"):
        data = _gunzip(data, max_bytes)
    elif encoding not in ("", "identity"):
        raise FetchError(f"unsupported Content-Encoding {encoding!r}")
    return data


def find_service_tags_link(page: bytes, page_url: str) -> str | None:
    """The newest ServiceTags_Public_YYYYMMDD.json link on Microsoft's download page (or a page
    standing in for it); only links to download.microsoft.com or the page's host count."""
    text = page.decode("latin-1").replace("\\/", "/")
    allowed = {AZURE_DOWNLOAD_HOST, (urlsplit(page_url).hostname or "").lower()}
    best: tuple[str, str] | None = None
    for match in _AZURE_LINK.finditer(text):
        link = urljoin(page_url, match.group(0))
        parts = urlsplit(link)
        if parts.scheme not in ("http", "https") or (parts.hostname or "").lower() not in allowed:
            continue
        if best is None or match.group(1) > best[0]:
            best = (match.group(1), link)
    return best[1] if best else None


def _fetch_source(
    src: Source, url: str, *, timeout: float, max_bytes: int, progress: ProgressFn | None
) -> tuple[bytes, str]:
    data = download(url, name=src.name, timeout=timeout, max_bytes=max_bytes, progress=progress)
    if src.name == "azure" and data.lstrip()[:1] != b"{":
        link = find_service_tags_link(data, url)
        if link is None:
            raise FetchError(f"neither Service Tags JSON nor a page linking to it: {url}")
        if _downgrades(url, link):
            raise FetchError(f"an https page linking to http refused: {link}")
        data = download(
            link, name=src.name, timeout=timeout, max_bytes=max_bytes, progress=progress
        )
        url = link
    return data, url


def recognise_dir(from_dir: Path, max_bytes: int) -> dict[str, list[Path]]:
    """Source name -> the files in `from_dir` (not below) whose content is that source's
    published file (`cloud.identify`), newest first: mirrors and aggregators rename them."""
    found: dict[str, list[tuple[float, str, Path]]] = {}
    try:
        entries = sorted(from_dir.iterdir())
    except OSError as exc:
        raise UpdateError(f"--from {from_dir}: {exc.strerror or exc}") from None
    for path in entries:
        try:
            st = path.stat()
            if not path.is_file() or st.st_size > max_bytes or path.name.startswith("."):
                continue
            data = path.read_bytes()
        except OSError:
            continue  # unreadable: its source is reported skipped, or found by name and failed
        name = identify(data)
        if name is not None:
            found.setdefault(name, []).append((st.st_mtime, path.name, path))
    return {k: [p for *_, p in sorted(v, reverse=True)] for k, v in found.items()}


def _import_source(
    src: Source, from_dir: Path, max_bytes: int, by_content: Mapping[str, list[Path]]
) -> tuple[bytes, str] | None:
    """The provider's own file name first (the newest of dated Azure files), else a file
    recognised by its content (cloud range files; the ASN and domain-owner datasets by name)."""
    matches = sorted(
        {p for pattern in src.import_names for p in from_dir.glob(pattern) if p.is_file()},
        key=lambda p: p.name,
    )
    if matches:
        path = matches[-1]
    elif by_content.get(src.name):
        path = by_content[src.name][0]
    else:
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise FetchError(f"{path}: larger than the limit of {max_bytes} bytes")
    return data, str(path.resolve())


# --- writing ------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix,
    and a crash leaves one of the two: temporary file in the same folder, fsync, rename."""
    write_atomically(path, data, 0o644)


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest's "sources" table; empty if missing or unreadable."""
    return manifest_file.read(data_dir / MANIFEST)


def _write_manifest(data_dir: Path, sources: Mapping[str, Any]) -> None:
    manifest_file.write(data_dir / MANIFEST, sources)


def _now() -> str:
    return manifest_file.format_time()


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """One update-data at a time per state directory."""
    with open(data_dir / LOCK_FILE, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError(f"{data_dir}: another update-data is running") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --- the update ---------------------------------------------------------------------------------


def source_urls(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Default URLs with `overrides` applied; UpdateError names an unknown source."""
    urls = dict(DEFAULT_URLS)
    for name, url in (overrides or {}).items():
        if name not in urls:
            raise UpdateError(
                f"[update.urls]: unknown source {name!r} (known: {', '.join(sorted(urls))})"
            )
        urls[name] = url
    return urls


def update(
    state_dir: str | Path,
    urls_override: Mapping[str, str] | None = None,
    from_dir: str | Path | None = None,
    *,
    timeout: float = 60.0,
    max_bytes: int = 64 << 20,
    progress: ProgressFn | None = None,
    sources: Sequence[str] | None = None,
    allow_shrink: bool = False,
) -> list[SourceResult]:
    """Fetch (or with `from_dir`, import) every source, or those named in `sources`, into
    `<state_dir>/data/`. One result per source, in `ALL_SOURCES` order; a failure in one
    source never stops the others. UpdateError if nothing can be attempted at all."""
    urls = source_urls(urls_override)
    if sources is not None:
        unknown = [n for n in sources if n not in SOURCES_BY_NAME]
        if unknown:
            raise UpdateError(f"unknown source {unknown[0]!r}")
    chosen = [s for s in ALL_SOURCES if sources is None or s.name in sources]
    import_dir = Path(from_dir) if from_dir is not None else None
    if import_dir is not None and not import_dir.is_dir():
        raise UpdateError(f"--from {import_dir}: not a directory")
    data_dir = Path(state_dir) / DATA_SUBDIR
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UpdateError(f"{data_dir}: cannot create: {exc.strerror or exc}") from None
    try:
        with _locked(data_dir):
            manifest = read_manifest(data_dir)
            by_content = recognise_dir(import_dir, max_bytes) if import_dir is not None else {}
            results = [
                _update_one(
                    src,
                    urls[src.name],
                    import_dir,
                    by_content,
                    data_dir,
                    manifest,
                    timeout=timeout,
                    max_bytes=max_bytes,
                    progress=progress,
                    allow_shrink=allow_shrink,
                )
                for src in chosen
            ]
            _write_manifest(data_dir, manifest)
    except OSError as exc:
        raise UpdateError(f"{data_dir}: {exc.strerror or exc}") from None
    return results


def _update_one(
    src: Source,
    url: str,
    import_dir: Path | None,
    by_content: Mapping[str, list[Path]],
    data_dir: Path,
    manifest: dict[str, Any],
    *,
    timeout: float,
    max_bytes: int,
    progress: ProgressFn | None,
    allow_shrink: bool,
) -> SourceResult:
    previous: dict[str, Any] = manifest.get(src.name, {})
    target = data_dir / src.filename
    kept = target.is_file()  # the current copy (the lock keeps other updates off it)
    origin = str(import_dir) if import_dir is not None else url
    try:
        if import_dir is not None:
            got = _import_source(src, import_dir, max_bytes, by_content)
            if got is None:
                missing = f"no {src.import_names[0]} (nor a file with its content) in {import_dir}"
                return SourceResult(src.name, "skipped", error=missing)
        else:
            got = _fetch_source(src, url, timeout=timeout, max_bytes=max_bytes, progress=progress)
        data, origin = got
        records = _validate(src, data)
        if kept and not allow_shrink:
            prev_records = previous.get("records")
            if not isinstance(prev_records, int):
                prev_records = _count(src, target)  # the manifest was lost: ask the copy itself
            if prev_records is not None and records < prev_records * SHRINK_LIMIT:
                raise FetchError(
                    f"only {records} {_unit(src)} where the current copy has {prev_records}: "
                    "looks truncated (--force accepts it)"
                )
        digest = hashlib.sha256(data).hexdigest()
        unchanged = kept and previous.get("sha256") == digest and target.stat().st_size == len(data)
        if not unchanged:
            atomic_write(target, data)
        manifest[src.name] = {
            "file": src.filename,
            "origin": origin,
            "fetched": _now(),
            "sha256": digest,
            "size": len(data),
            "records": records,
        }
        return SourceResult(
            src.name, "unchanged" if unchanged else "updated", origin, records, len(data), digest
        )
    except FetchError as exc:
        error = str(exc)
    except OSError as exc:
        error = f"cannot write {target}: {exc}"
    except Exception as exc:  # a library bug on hostile input: this source fails, not the run
        error = f"unexpected {type(exc).__name__}: {exc}"
    error = _error_text(error)
    entry = dict(previous) if kept else {"file": src.filename}
    entry.update(last_error=error, last_attempt=_now(), last_origin=_error_text(origin))
    manifest[src.name] = entry
    return SourceResult(
        src.name,
        "failed",
        origin,
        records=previous.get("records") if kept else None,
        size=previous.get("size") if kept else None,
        sha256=previous.get("sha256") if kept else None,
        error=error,
        kept_previous=kept,
    )


def _validate(src: Source, data: bytes) -> int:
    """The record count of `data` as the real parser reads it; FetchError if it is not a valid
    file of this source, or an absurdly big one (counted before parsing: parsing is what
    costs memory)."""
    limit = _limit(src)
    if isinstance(src, CloudSource):
        n = 0
        for pattern in (_IPV4_LITERAL, _IPV6_LITERAL):
            n += sum(1 for _ in islice(pattern.finditer(data), limit + 1 - n))
            if n > limit:
                raise FetchError(f"more than {limit} addresses: not a {src.filename}")
    try:
        records = len(src.parse(data))
    except ValueError as exc:  # CloudDataError, AsnDataError, OwnersDataError
        raise FetchError(f"not a valid {src.filename}: {exc}") from None
    if records > limit:
        raise FetchError(f"{records} {_unit(src)}, more than the limit of {limit}")
    return records


def _count(src: Source, path: Path) -> int | None:
    try:
        return len(src.parse(path.read_bytes()))
    except (OSError, ValueError):
        return None


def _error_text(text: str) -> str:
    """One line (`config.one_line`), cut to MAX_ERROR: a server's words reach the terminal
    and the manifest."""
    text = one_line(text)
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


# --- command line -------------------------------------------------------------------------------


def describe_sources() -> str:
    """What update-data fetches, for its --help: one line per source with its URL."""
    lines = [
        "Downloads each cloud provider's published IP range file (cloud, region and city of",
        "the servers devices talk to) into <state_dir>/data/, validates it, and replaces the",
        "current copy only with a good one; a failed source keeps its last copy. Sources:",
        "",
    ]
    width = max(len(s.name) for s in CLOUD_SOURCES)
    lines += [f"  {s.name:<{width}}  {DEFAULT_URLS[s.name]}" for s in CLOUD_SOURCES]
    lines += [
        "",
        "URLs can be changed per source in [update.urls]. Geo data (country and AS of every",
        "address) is not downloaded: the embedded GeoLite2 data ships with the package, or",
        "geo.country_db / geo.asn_db name MaxMind-format databases; `phonehome check` shows",
        "the embedded data's date and warns when it is over a year old.",
        "",
        "--from DIR imports instead of downloading (no network): each file is recognised by",
        "its content, whatever it is called (ip-ranges.json, cloud.json, ServiceTags_Public_*",
        ".json, ips-v4... or a mirror's aws-ip-ranges.json); RFC 8805 geofeeds (digitalocean,",
        "linode, huawei) by the provider's address blocks they list.",
        "",
        "Exit status: 0 no source failed (with --from, absent ones are skipped), 1 a source",
        "failed or --from found nothing, 2 bad configuration or usage.",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `phonehome update-data` (the CLI adds --config)."""
    parser.add_argument(
        "--from",
        dest="from_dir",
        metavar="DIR",
        type=Path,
        help="import the files found in DIR instead of downloading: cloud range files are "
        "recognised by their content, whatever their names; the ASN and domain-owner datasets "
        "by their published names (ip2asn-combined.tsv.gz, trackers.json)",
    )
    parser.add_argument(
        "--only",
        metavar="SOURCE",
        action="append",
        choices=[s.name for s in ALL_SOURCES],
        help="update only this source (repeatable)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="accept a file with far fewer prefixes than the current copy",
    )


class _TerminalProgress:
    """One rewritten status line on a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._last = 0.0

    def __call__(self, name: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done != total:
            return
        self._last = now
        of = f" / {_size(total)}" if total else ""
        self.stream.write(f"\r\x1b[K{name}: {_size(done)}{of}")
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1 << 10:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def format_result(r: SourceResult) -> str:
    """The summary line printed for a source."""
    if r.status in ("updated", "unchanged"):
        unit = _unit(SOURCES_BY_NAME[r.name]) if r.name in SOURCES_BY_NAME else "prefixes"
        return f"{r.name:<14} {r.status:<9} {r.records:>7} {unit:<8} {_size(r.size):>9}  {r.origin}"
    if r.status == "skipped":
        return f"{r.name:<14} skipped   {r.error}"
    kept = f" (kept previous copy, {r.records} prefixes)" if r.kept_previous else " (no copy)"
    return f"{r.name:<14} FAILED    {r.error}{kept}"


def _prepare_geo_cache(cfg: Config) -> None:
    """Build the embedded geo data's cache now, so the daemon starts fast and small."""
    if cfg.geo.country_db and cfg.geo.asn_db:
        return
    try:
        geo = EmbeddedGeo.load(cache_dir=geo_cache_dir(cfg.paths.state_dir))
    except GeoDataError as exc:
        print(f"update-data: embedded geo data: {exc}", file=sys.stderr)
        return
    print(f"{'geo':<14} {'ready':<9} {len(geo.country_index):>7} ranges {'':>9}  {geo.info}")


def main(args: argparse.Namespace, cfg: Config) -> int:
    """Run `phonehome update-data`; 0 if every source is fine, 1 if any failed (the good ones
    are written all the same), 2 if nothing could be attempted."""
    progress = _TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    only = getattr(args, "only", None)
    try:
        results = update(
            cfg.paths.state_dir,
            cfg.update.urls,
            getattr(args, "from_dir", None),
            timeout=cfg.update.timeout,
            max_bytes=cfg.update.max_bytes,
            progress=progress,
            sources=only,
            allow_shrink=bool(getattr(args, "force", False)),
        )
    except UpdateError as exc:
        if progress is not None:
            progress.clear()
        print(f"update-data: {exc}", file=sys.stderr)
        return 2
    if progress is not None:
        progress.clear()
    for r in results:
        print(format_result(r))
    _prepare_geo_cache(cfg)
    if all(r.status == "skipped" for r in results):
        print("update-data: no source files found", file=sys.stderr)
        return 1
    return 0 if all(r.ok for r in results) else 1
