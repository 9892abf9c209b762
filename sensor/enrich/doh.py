"""Public encrypted-DNS resolvers (DoH, DoT, DoQ): their host names and addresses.

What tells a DNS-over-HTTPS flow from any other HTTPS flow is where it goes: the resolver's
name in the ClientHello (``dns.google``), or, without a name, a resolver's address. The list
comes from DNSCrypt's ``public-resolvers.md`` (BSD-2-Clause, Frank Denis), whose entries are DNS
stamps (``sdns://``): `parse_stamp` reads the DoH, DoT and DoQ ones. `update-data` fetches the
current list (source ``doh``) into ``<state_dir>/data/public-resolvers.md``; without it the
copy embedded in the package, ``sensor/data/doh_resolvers.toml``, serves (made from the same
list, plus the anycast addresses the big operators document, each entry naming its source).

Pure: bytes in, a `ResolverList` out; a file that is not a list raises `ResolverListError`.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, Literal

log = logging.getLogger(__name__)

LIST_FILE: Final = "public-resolvers.md"
"""The fetched list's name under <state_dir>/data/ (as DNSCrypt publishes it)."""
EMBEDDED: Final = "doh_resolvers.toml"
MAX_RESOLVERS: Final = 20_000
"""Entries one list may have (DNSCrypt's has about 800 in 2026)."""
MAX_STAMP: Final = 4096
"""Characters of one stamp read (real ones are under 500)."""

Protocol = Literal["doh", "dot", "doq"]
_STAMP_PROTOCOLS: Final[dict[int, Protocol]] = {0x02: "doh", 0x03: "dot", 0x04: "doq"}
_HEADING = re.compile(r"^##\s+(\S.*?)\s*$")
_STAMP = re.compile(r"sdns://([A-Za-z0-9_-]+)")
_HOST = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")


class ResolverListError(ValueError):
    """Not a resolver list (or one with nothing usable in it)."""


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a DoH/DoT/DoQ stamp says: where the resolver is and what it is called."""

    protocol: Protocol
    address: str | None
    """Its IP address, when the stamp gives one (else clients resolve `host`)."""
    host: str | None
    """Its TLS server name (the SNI a client sends), lower case, without port."""


@dataclass(frozen=True, slots=True)
class Resolver:
    name: str
    """The list's name for it ("cloudflare", "google")."""
    protocols: tuple[str, ...]
    hosts: tuple[str, ...]
    addresses: tuple[str, ...]
    source: str
    """Where the entry comes from (a source id of the embedded file, or the fetched list)."""


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _lp(data: bytes, off: int) -> tuple[bytes, int]:
    """A length-prefixed string."""
    if off >= len(data):
        raise ValueError("truncated")
    n = data[off]
    end = off + 1 + n
    if end > len(data):
        raise ValueError("truncated")
    return data[off + 1 : end], end


def _vlp(data: bytes, off: int) -> int:
    """Past a set of length-prefixed strings whose lengths carry 0x80 while more follow."""
    while True:
        if off >= len(data):
            raise ValueError("truncated")
        n = data[off]
        off += 1 + (n & 0x7F)
        if off > len(data):
            raise ValueError("truncated")
        if not n & 0x80:
            return off


def _address(raw: str) -> str | None:
    """'1.0.0.1', '1.0.0.1:443', '[2606:4700::1111]', '[…]:443' -> the address; '' -> None."""
    text = raw.strip()
    if not text:
        return None
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def host_name(raw: str) -> str | None:
    """A server name as matched: lower case, no port, no trailing dot; None if it is none."""
    text = raw.strip().lower().rstrip(".")
    if text.startswith("["):
        return None
    text = text.split(":", 1)[0]
    if not text or len(text) > 253 or not _HOST.fullmatch(text) or _address(text):
        return None  # an address written where a name belongs is no name
    return text


def parse_stamp(stamp: str) -> Stamp | None:
    """A DNS stamp (dnscrypt.info/stamps-specifications) of a DoH, DoT or DoQ resolver; None
    for other kinds (DNSCrypt, plain DNS, relays) and for malformed stamps."""
    text = stamp.strip()
    if text.startswith("sdns://"):
        text = text[7:]
    if not text or len(text) > MAX_STAMP:
        return None
    try:
        data = _b64(text)
        protocol = _STAMP_PROTOCOLS.get(data[0]) if data else None
        if protocol is None:
            return None
        # protocol, 8 bytes of properties, addr, hashes, hostname[:port] (then path, bootstrap)
        addr, off = _lp(data, 9)
        off = _vlp(data, off)
        host, off = _lp(data, off)
    except (ValueError, IndexError):
        return None
    address = _address(addr.decode("ascii", "replace"))
    name = host_name(host.decode("ascii", "replace"))
    if address is None and name is None:
        return None
    return Stamp(protocol, address, name)


def parse_markdown(data: bytes) -> list[Resolver]:
    """DNSCrypt's list format: `## name`, a description, one or more `sdns://` stamps."""
    text = data.decode("utf-8", "replace")
    out: dict[str, tuple[set[str], set[str], set[str]]] = {}
    name: str | None = None
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            name = m.group(1)[:100]
            continue
        if name is None:
            continue
        for raw in _STAMP.findall(line):
            st = parse_stamp(raw)
            if st is None:
                continue
            protocols, hosts, addresses = out.setdefault(name, (set(), set(), set()))
            protocols.add(st.protocol)
            if st.host:
                hosts.add(st.host)
            if st.address:
                addresses.add(st.address)
            if len(out) > MAX_RESOLVERS:
                raise ResolverListError(f"more than {MAX_RESOLVERS} resolvers")
    return [
        Resolver(n, tuple(sorted(p)), tuple(sorted(h)), tuple(sorted(a)), "fetched")
        for n, (p, h, a) in out.items()
    ]


def parse_toml(data: bytes) -> list[Resolver]:
    """The embedded format: `[[resolvers]]` with name, protocols, hosts, addresses, source."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ResolverListError(f"not TOML: {exc}") from None
    sources = {s.get("id") for s in doc.get("sources", []) if isinstance(s, dict)}
    out = []
    for i, entry in enumerate(doc.get("resolvers", [])):
        try:
            hosts = tuple(h for h in (host_name(x) for x in entry.get("hosts", [])) if h)
            addrs = tuple(str(ipaddress.ip_address(a)) for a in entry.get("addresses", []))
            res = Resolver(
                str(entry["name"]),
                tuple(str(p) for p in entry.get("protocols", [])),
                hosts,
                addrs,
                str(entry["source"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ResolverListError(f"resolvers[{i}]: {exc}") from None
        if res.source not in sources:
            raise ResolverListError(f"resolvers[{i}]: unknown source {res.source!r}")
        out.append(res)
    return out


class ResolverList:
    """Names and addresses of public encrypted-DNS resolvers, looked up by SNI or address."""

    def __init__(self, resolvers: Iterable[Resolver], origin: str = "") -> None:
        self.resolvers = list(resolvers)
        self.origin = origin
        """Where it was read from (a path, or "embedded")."""
        self._hosts: dict[str, str] = {}
        self._addresses: dict[str, str] = {}
        for r in self.resolvers:
            for h in r.hosts:
                self._hosts.setdefault(h, h)
            for a in r.addresses:
                # An address is named by the first host name a resolver there has.
                if r.hosts and self._addresses.get(a, a) == a:
                    self._addresses[a] = r.hosts[0]
                else:
                    self._addresses.setdefault(a, a)

    def __len__(self) -> int:
        return len(self.resolvers)

    @classmethod
    def parse(cls, data: bytes) -> ResolverList:
        """Either format (recognised by content); ResolverListError unless it lists some."""
        resolvers = parse_markdown(data) if b"sdns://" in data else parse_toml(data)
        if not any(r.hosts or r.addresses for r in resolvers):
            raise ResolverListError("no DoH, DoT or DoQ resolver in it")
        return cls(resolvers)

    def host(self, name: str | None) -> str | None:
        """The listed resolver host `name` is, or is a subdomain of (NextDNS and others give
        each user a name under theirs); None."""
        if not name:
            return None
        name = name.lower().rstrip(".")
        hosts = self._hosts
        if name in hosts:
            return hosts[name]
        dot = name.find(".")
        while dot >= 0:
            parent = name[dot + 1 :]
            if "." in parent and parent in hosts:
                return hosts[parent]
            dot = name.find(".", dot + 1)
        return None

    def address(self, ip: str) -> str | None:
        """The listed resolver at `ip` (by its host name when known, else the address)."""
        return self._addresses.get(ip)


def embedded() -> ResolverList:
    data = resources.files("sensor").joinpath(f"data/{EMBEDDED}").read_bytes()
    res = ResolverList.parse(data)
    res.origin = "embedded"
    return res


def load(data_dir: Path | None) -> tuple[ResolverList, list[str]]:
    """The list update-data fetched when there is a good one, else the embedded copy; with
    the problem, if any (a broken fetched list is reported, never fatal)."""
    if data_dir is not None:
        path = data_dir / LIST_FILE
        if path.is_file():
            try:
                res = ResolverList.parse(path.read_bytes())
                res.origin = str(path)
                return res, []
            except (OSError, ResolverListError) as exc:
                log.warning("doh resolvers: %s: %s; using the embedded list", path, exc)
                return embedded(), [f"doh resolvers: {path}: {exc}"]
    return embedded(), []
