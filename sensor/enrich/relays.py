"""Relays: flows into a known relay's ingress, whose real destination the gateway cannot see.

A flow's `relay` is, first match wins:

1. ``"icloud-private-relay"``: its server name (from the device's own DNS answer, or its SNI)
   is one of iCloud Private Relay's ingress names or under one (sensor/data/relays.toml). The
   addresses come from the DNS answers the device received, which the pipeline already maps
   to its flows: a flow to an address the device resolved from mask.icloud.com is named
   mask.icloud.com, so the name is the evidence.
2. ``"tor"``: its (address, port) is a relay's ORPort in the Tor consensus (`TorRelays`,
   fetched by update-data as source "tor"; the directory authorities from relays.toml until
   then). Tor's TLS carries no meaningful SNI: the address and port are the evidence.
3. ``"vpn:<name>"``: its address is in a VPN provider's endpoint list (`AddressList`): one
   update-data fetches (source "vpn-protonvpn") or one the owner names in `[relays]
   vpn_lists`.
4. ``"vpn"``: the first bytes the device sent have the shape of a VPN handshake
   (`vpn_protocol`: a WireGuard handshake initiation, an OpenVPN hard reset). Weaker: any
   server can speak these protocols; the pipeline's observer sets it, a list match wins.

A relay's name is never the flow's party: the relay operator carries the data, the party on
the far side is hidden (sensor.enrich.stage drops it). Pure parsing and matching; the only I/O
is `load`, which reads the files named to it.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import logging
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from sensor.model import Flow

log = logging.getLogger(__name__)

ICLOUD_PRIVATE_RELAY: Final = "icloud-private-relay"
TOR: Final = "tor"
VPN: Final = "vpn"
RELAY_TABLE: Final = "data/relays.toml"
TOR_FILE: Final = "tor-relays.json"
"""The Tor list's name in the state directory's data folder (an Onionoo details document or a
consensus, as fetched)."""
VPN_PROTON_FILE: Final = "vpn-protonvpn.txt"
FETCHED_VPN_LISTS: Final[Mapping[str, str]] = {"protonvpn": VPN_PROTON_FILE}
"""VPN lists update-data fetches: relay name (after "vpn:") -> file in the data folder."""
MAX_TOR_ENDPOINTS: Final = 100_000
"""ORPorts one Tor list may hold (the network has about 8,000 relays, ~10,000 ORPorts)."""
MAX_VPN_ENTRIES: Final = 500_000
"""Addresses and prefixes one VPN list may hold."""
MATCH_CACHE: Final = 16_384
"""(address, port, name) verdicts remembered; all are forgotten when it is full."""

WIREGUARD_INITIATION_LEN: Final = 148
OPENVPN_PORT: Final = 1194
_OPENVPN_HARD_RESETS: Final = frozenset((0x38, 0x50))
"""P_CONTROL_HARD_RESET_CLIENT_V2 and _V3 (opcode 7 and 10, key id 0), the client's first
packet."""


class RelayDataError(ValueError):
    """A relay list that does not parse; the message says why."""


# --- Tor ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TorRelays:
    """The ORPorts of the relays in a Tor consensus."""

    endpoints: frozenset[tuple[str, int]]
    """(address as `ipaddress` writes it, ORPort)."""
    guards: int = 0
    """Relays with the Guard flag (for `check` and the manifest: the consensus is whole)."""
    kind: str = "embedded"
    """"onionoo", "consensus" or "embedded"."""

    def __len__(self) -> int:
        return len(self.endpoints)

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self.endpoints

    @classmethod
    def parse(cls, data: bytes) -> TorRelays:
        """An Onionoo details document (JSON, `relays[].or_addresses`) or a network-status
        consensus (text, "r" and "a" lines; the microdescriptor flavour too)."""
        head = data.lstrip()[:1]
        if head in (b"{", b"["):
            return _parse_onionoo(data)
        return _parse_consensus(data)


def _endpoint(text: str) -> tuple[str, int] | None:
    """ "1.2.3.4:9001" or "[2001:db8::1]:443" -> (address, port); None if not one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    p = int(port)
    return (str(addr), p) if 0 < p < 65536 else None


def _parse_onionoo(data: bytes) -> TorRelays:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RelayDataError(f"not JSON: {exc}") from None
    relays = doc.get("relays") if isinstance(doc, dict) else None
    if not isinstance(relays, list):
        raise RelayDataError("not an Onionoo details document (no 'relays' list)")
    endpoints: set[tuple[str, int]] = set()
    guards = 0
    for i, r in enumerate(relays):
        if not isinstance(r, dict):
            raise RelayDataError(f"relays[{i}]: expected an object")
        flags = r.get("flags") or []
        if not isinstance(flags, list):
            raise RelayDataError(f"relays[{i}].flags: expected a list")
        running = r.get("running")
        if running is False or (running is None and flags and "Running" not in flags):
            continue
        addrs = r.get("or_addresses")
        if not isinstance(addrs, list):
            raise RelayDataError(f"relays[{i}].or_addresses: expected a list")
        for a in addrs:
            ep = _endpoint(a) if isinstance(a, str) else None
            if ep is None:
                raise RelayDataError(f"relays[{i}].or_addresses: not address:port: {a!r:.60}")
            endpoints.add(ep)
        guards += "Guard" in flags
        if len(endpoints) > MAX_TOR_ENDPOINTS:
            raise RelayDataError(f"more than {MAX_TOR_ENDPOINTS} ORPorts")
    if not endpoints:
        raise RelayDataError("no running relays")
    return TorRelays(frozenset(endpoints), guards, "onionoo")


def _parse_consensus(data: bytes) -> TorRelays:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise RelayDataError("neither JSON nor a consensus document (not ASCII)") from None
    if "network-status-version 3" not in text[:4096]:
        raise RelayDataError("neither an Onionoo details document nor a v3 consensus")
    endpoints: set[tuple[str, int]] = set()
    guards = 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("r "):
            # r nickname identity [digest] date time address ORPort DirPort
            parts = line.split()
            ep = _endpoint(f"{parts[-3]}:{parts[-2]}") if len(parts) >= 8 else None
            if ep is None:
                raise RelayDataError(f"line {n}: a malformed 'r' line")
            endpoints.add(ep)
        elif line.startswith("a "):
            ep = _endpoint(line[2:])
            if ep is None:
                raise RelayDataError(f"line {n}: a malformed 'a' line")
            endpoints.add(ep)
        elif line.startswith("s ") and " Guard" in line:
            guards += 1
        if len(endpoints) > MAX_TOR_ENDPOINTS:
            raise RelayDataError(f"more than {MAX_TOR_ENDPOINTS} ORPorts")
    if not endpoints:
        raise RelayDataError("a consensus without relays")
    return TorRelays(frozenset(endpoints), guards, "consensus")


# --- VPN endpoint lists -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressList:
    """Addresses and prefixes, merged into sorted ranges per family."""

    starts: tuple[tuple[int, ...], tuple[int, ...]]
    ends: tuple[tuple[int, ...], tuple[int, ...]]
    entries: int

    def __len__(self) -> int:
        return self.entries

    def __contains__(self, ip: object) -> bool:
        key = _packed_int(ip) if isinstance(ip, str) else None
        return key is not None and self.holds(*key)

    def holds(self, fam: int, x: int) -> bool:
        """Whether address `x` of family `fam` (0: IPv4, 1: IPv6; `_packed_int`) is listed."""
        i = bisect.bisect_right(self.starts[fam], x) - 1
        return i >= 0 and x <= self.ends[fam][i]

    @classmethod
    def build(cls, nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> AddressList:
        ranges: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
        n = 0
        for net in nets:
            ranges[0 if net.version == 4 else 1].append(
                (int(net.network_address), int(net.broadcast_address))
            )
            n += 1
        starts: list[tuple[int, ...]] = []
        ends: list[tuple[int, ...]] = []
        for fam in ranges:
            merged: list[list[int]] = []
            for lo, hi in sorted(fam):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            starts.append(tuple(m[0] for m in merged))
            ends.append(tuple(m[1] for m in merged))
        return cls((starts[0], starts[1]), (ends[0], ends[1]), n)

    @classmethod
    def parse(cls, data: bytes) -> AddressList:
        """One address or prefix a line ("#" starts a comment), a JSON array of them, or a
        JSON array of objects with `ipv4_addr_in` / `ipv6_addr_in` (Mullvad's relay list)."""
        head = data.lstrip()[:1]
        items = _json_items(data) if head == b"[" else _text_items(data)
        nets = []
        for where, item in items:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise RelayDataError(f"{where}: not an address or prefix: {item!r:.60}") from None
            if len(nets) > MAX_VPN_ENTRIES:
                raise RelayDataError(f"more than {MAX_VPN_ENTRIES} entries")
        if not nets:
            raise RelayDataError("no addresses")
        return cls.build(nets)


def _packed_int(ip: str) -> tuple[int, int] | None:
    """(family 0/1, the address as an integer); inet_pton costs a tenth of ipaddress's."""
    try:
        if ":" in ip:
            return 1, int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
        return 0, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, ValueError):
        return None


def _text_items(data: bytes) -> list[tuple[str, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RelayDataError("not UTF-8 text") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if item:
            out.append((f"line {n}", item))
            if len(out) > MAX_VPN_ENTRIES:  # before parsing: parsing is what costs memory
                raise RelayDataError(f"more than {MAX_VPN_ENTRIES} entries")
    return out


def _json_items(data: bytes) -> list[tuple[str, str]]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RelayDataError(f"not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise RelayDataError("expected a JSON array")
    if len(doc) > MAX_VPN_ENTRIES:
        raise RelayDataError(f"more than {MAX_VPN_ENTRIES} entries")
    out = []
    for i, v in enumerate(doc):
        if isinstance(v, str):
            out.append((f"[{i}]", v))
        elif isinstance(v, dict):
            for key in ("ipv4_addr_in", "ipv6_addr_in"):
                a = v.get(key)
                if isinstance(a, str) and a:
                    out.append((f"[{i}].{key}", a))
        else:
            raise RelayDataError(f"[{i}]: expected a string or an object")
    return out


# --- protocol shapes --------------------------------------------------------------------------


def vpn_protocol(proto: str, dst_port: int, payload: bytes) -> str | None:
    """The VPN protocol whose client handshake `payload` (the first bytes a device sent on a
    flow) looks like: "wireguard", "openvpn", or None.

    WireGuard: a handshake initiation is one UDP datagram of exactly 148 bytes, message type 1
    and three zero bytes. OpenVPN: the client's hard reset (opcode 7 or 10, key id 0) with an
    8-byte session id; over TCP with its 2-byte length prefix equal to the segment, over UDP on
    its port 1194 (elsewhere a leading 0x38 is too common to mean anything)."""
    if proto == "udp":
        if len(payload) == WIREGUARD_INITIATION_LEN and payload[:4] == b"\x01\x00\x00\x00":
            return "wireguard"
        if dst_port == OPENVPN_PORT and len(payload) >= 14 and payload[0] in _OPENVPN_HARD_RESETS:
            return "openvpn"
        return None
    if (
        proto == "tcp"
        and len(payload) >= 16
        and int.from_bytes(payload[:2], "big") == len(payload) - 2
        and payload[2] in _OPENVPN_HARD_RESETS
    ):
        return "openvpn"
    return None


# --- matching -----------------------------------------------------------------------------------


@dataclass(slots=True)
class RelayMatcher:
    """Flow -> relay name (see the module docstring), from the loaded lists."""

    names: tuple[str, ...] = ()
    """iCloud Private Relay's ingress names."""
    tor: TorRelays = field(default_factory=lambda: TorRelays(frozenset()))
    vpns: dict[str, AddressList] = field(default_factory=dict)
    """VPN name -> its endpoints."""

    _cache: dict[tuple[str, int, str | None], str | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    def match(self, flow: Flow) -> str | None:
        """The relay the flow goes into by name or address (not by shape), or None. Cached
        by (address, port, name): the exporter asks for every live flow at every scrape."""
        key = (flow.dst_ip, flow.dst_port, flow.server_name)
        cache = self._cache
        if key in cache:
            return cache[key]
        relay = self._match(*key)
        if len(cache) >= MATCH_CACHE:
            cache.clear()
        cache[key] = relay
        return relay

    def _match(self, ip: str, port: int, name: str | None) -> str | None:
        if name and self.name_is_relay(name):
            return ICLOUD_PRIVATE_RELAY
        if (ip, port) in self.tor.endpoints:
            return TOR
        if self.vpns:
            packed = _packed_int(ip)
            if packed is not None:
                for vpn, addresses in self.vpns.items():
                    if addresses.holds(*packed):
                        return f"{VPN}:{vpn}"
        return None

    def name_is_relay(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return any(name == n or name.endswith("." + n) for n in self.names)

    def describe(self) -> list[str]:
        """One line per list, for `check`."""
        lines = [f"tor: {len(self.tor)} ORPorts ({self.tor.kind}, {self.tor.guards} guards)"]
        lines += [f"vpn:{n}: {len(a)} addresses or prefixes" for n, a in self.vpns.items()]
        return lines

    @classmethod
    def load(
        cls, data_dir: Path | None, vpn_lists: Mapping[str, str] | None = None
    ) -> tuple[RelayMatcher, list[str]]:
        """The embedded table, the lists update-data fetched into `data_dir` and the owner's
        `vpn_lists`; a missing or broken list is skipped with an error line, never fatal."""
        errors: list[str] = []
        names, tor = embedded()
        if data_dir is not None:
            path = data_dir / TOR_FILE
            if path.is_file():
                try:
                    tor = TorRelays.parse(path.read_bytes())
                except (OSError, RelayDataError) as exc:
                    errors.append(f"tor relays: {path}: {exc}")
        vpns: dict[str, AddressList] = {}
        files = {n: data_dir / f for n, f in FETCHED_VPN_LISTS.items()} if data_dir else {}
        files.update({n: Path(p) for n, p in (vpn_lists or {}).items()})
        for name, path in files.items():
            if name not in (vpn_lists or {}) and not path.is_file():
                continue  # not fetched (yet): no error
            try:
                vpns[name] = AddressList.parse(path.read_bytes())
            except (OSError, RelayDataError) as exc:
                errors.append(f"vpn list {name}: {path}: {exc}")
        for e in errors:
            log.warning("%s", e)
        return cls(names, tor, vpns), errors


def embedded() -> tuple[tuple[str, ...], TorRelays]:
    """iCloud Private Relay's names and the Tor directory authorities (sensor/data)."""
    raw = resources.files("sensor").joinpath(RELAY_TABLE).read_text(encoding="utf-8")
    doc: dict[str, Any] = tomllib.loads(raw)
    names = tuple(n.lower() for n in doc["icloud_private_relay"]["names"])
    eps = frozenset(ep for e in doc["tor"]["endpoints"] if (ep := _endpoint(e)) is not None)
    return names, TorRelays(eps, 0, "embedded")
