"""Our server names agree with tshark's, flow by flow.

One capture of a home network (pcap, untagged Ethernet) and one of a VLAN trunk (pcapng, QinQ)
are built with sensor.lab.synth and tests.builders: TLS ClientHellos in order, cut into small
segments delivered out of order and with duplicates, TLS 1.2, IPv6; QUIC v1 and v2 Initials
(aioquic), including two-datagram ClientHellos, one of them with its datagrams reversed; QUIC
drafts 27-34, mvfst, gQUIC Q043/Q046 (cleartext CHLO) and Q050/T050/T051 (encrypted Initials)
built from their specifications (tests.builders_quic), some with shuffled CRYPTO fragments; HTTP
requests (one split over segments, one with a port in Host); DNS over UDP and over TCP, v4 and
v6, and several queries on one flow.
`phonehome analyze --json` reads both files at once (so they are merged by time); tshark reads
each file. Flows are matched by 5-tuple: protocol plus the unordered pair of (address, port)
endpoints, which is what a bidirectional flow is, whichever side tshark's frame came from.

What tshark 4.0 needs, found by trying it (Debian's 4.0.17):
- QUIC: nothing. It derives Initial keys from the DCID for v1 and v2 (0x6b3343cf) by default and
  reassembles a ClientHello whose CRYPTO frames span two datagrams, in either order. It finds
  connections by connection ID across 5-tuples, so every flow here has its own DCID. gQUIC
  server names come in `gquic.tag.sni`.
- TCP out of order: `tcp.reassemble_out_of_order` is off by default in 4.0, and then a
  ClientHello whose segments arrive out of order gets no server name. The preference is turned
  on here; with it tshark names every case above, so no case is exempt from the comparison.
Preferences the comparison depends on are passed with -o, and WIRESHARK_CONFIG_DIR points at an
empty directory so a developer's own Wireshark profile cannot change the result.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import pytest

from sensor.lab.synth import (
    LAPTOP,
    PHONE,
    PHONE6,
    RESOLVER,
    RESOLVER6,
    Capture,
    Host,
    PcapWriter,
    TcpSession,
    client_hello,
    http_request,
)
from tests.builders import big_alpn, client_hello_message, quic_initial_datagrams
from tests.builders_quic import Q043, Q046, Q050, T050, T051, flight

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

TV = Host("02:42:c0:a8:01:4d", "192.168.1.77")
TV6 = Host("02:42:c0:a8:01:4d", "fd00:1::77")
QUIC_V1, QUIC_V2 = 0x00000001, 0x6B3343CF

Endpoint = tuple[str, int]
FlowKey = tuple[str, frozenset[Endpoint]]


def flow_key(proto: str, a: Endpoint, b: Endpoint) -> FlowKey:
    return proto, frozenset((a, b))


# --- the captures ------------------------------------------------------------------------------


@dataclass
class Plan:
    """What was put into the captures, to check that the oracle saw all of it."""

    names: Counter[tuple[str, str, frozenset[str], str]] = field(default_factory=Counter)
    """(kind, proto, {client ip, server ip}, name) per named flow."""
    dns: Counter[tuple[str, frozenset[str], tuple[str, ...]]] = field(default_factory=Counter)
    """(proto, {client ip, resolver}, query names) per DNS flow (its client port is random)."""
    unnamed: list[FlowKey] = field(default_factory=list)


class Builder:
    def __init__(self, cap: Capture, plan: Plan) -> None:
        self.cap = cap
        self.plan = plan

    def _named(self, kind: str, proto: str, lan: Host, remote: str, name: str) -> None:
        self.plan.names[kind, proto, frozenset((lan.ip, remote)), name] += 1

    def tls(
        self,
        lan: Host,
        lport: int,
        remote: str,
        sni: str | None,
        *,
        rport: int = 443,
        segment: int = 1448,
        order: Callable[[int], list[int]] | None = None,
        duplicate: tuple[int, ...] = (),
        **hello: Any,
    ) -> None:
        data = client_hello(sni, **hello)
        count = -(-len(data) // segment)
        s = TcpSession(self.cap, lan, remote, lport, rport)
        s.open()
        s.send(
            data,
            segment=segment,
            order=order(count) if order else None,
            duplicate=duplicate,
        )
        s.send(bytes(400), up=False)  # the server's first flight, opaque
        s.close()
        if sni is None:
            self.plan.unnamed.append(flow_key("tcp", (lan.ip, lport), (remote, rport)))
        else:
            self._named("tls", "tcp", lan, remote, sni)

    def quic(
        self,
        lan: Host,
        lport: int,
        remote: str,
        sni: str,
        version: int,
        *,
        big: bool = False,
        reverse: bool = False,
    ) -> None:
        datagrams = quic_initial_datagrams(sni, version=version, big=big)
        assert len(datagrams) == (2 if big else 1)
        for d in reversed(datagrams) if reverse else datagrams:
            self.cap.udp(lan, remote, lport, 443, d, up=True)
        self.cap.udp(lan, remote, lport, 443, b"\xc0" + bytes(60), up=False)  # opaque reply
        self._named("quic", "udp", lan, remote, sni)

    def quic_version(
        self,
        lan: Host,
        lport: int,
        remote: str,
        sni: str,
        version: int,
        *,
        big: bool = False,
        pieces: int = 1,
    ) -> None:
        """A first flight in any version, built from its specification (tests.builders_quic).

        Each flow has its own DCID: tshark follows QUIC connections by connection ID across
        5-tuples, so two flows sharing one would be one connection to it."""
        hello = None
        if version not in (Q043, Q046, Q050):
            hello = client_hello_message(sni, alpn=big_alpn(1500) if big else ("h3",))
        dcid = lport.to_bytes(2, "big") + bytes(6)
        datagrams = flight(version, sni, hello=hello, pieces=pieces, seed=lport, dcid=dcid)
        for d in datagrams:
            self.cap.udp(lan, remote, lport, 443, d, up=True)
        self.cap.udp(lan, remote, lport, 443, b"\xc0" + bytes(60), up=False)  # opaque reply
        self._named("quic", "udp", lan, remote, sni)

    def http(
        self, lan: Host, lport: int, remote: str, host: str, *, rport: int = 80, segment: int = 1448
    ) -> None:
        s = TcpSession(self.cap, lan, remote, lport, rport)
        s.open()
        body = b"id=1" if lan.v6 else b""
        method = "POST" if body else "GET"
        s.send(http_request(method, host, "/v1/ping?x=1", "Agent/1.0", body), segment=segment)
        s.send(b"HTTP/1.1 204 No Content\r\n\r\n", up=False)
        s.close()
        self._named("http", "tcp", lan, remote, normalize_host(host))

    def dns(
        self, lan: Host, resolver: str, name: str, addrs: list[str], *, tcp: bool = False
    ) -> None:
        self.cap.dns_lookup(lan, resolver, name, addrs, cnames=[f"edge.{name}"], tcp=tcp)
        self.plan.dns["tcp" if tcp else "udp", frozenset((lan.ip, resolver)), (name,)] += 1

    def dns_same_port(self, lan: Host, resolver: str, lport: int, names: list[str]) -> None:
        """Several queries from one socket (one flow), each answered NXDOMAIN."""
        for i, name in enumerate(names):
            q = dpkt.dns.DNS(id=0x100 + i, qd=[dpkt.dns.DNS.Q(name=name, type=65)])
            self.cap.udp(lan, resolver, lport, 53, bytes(q), up=True)
        for i, name in enumerate(names):
            r = dpkt.dns.DNS(id=0x100 + i, qd=[dpkt.dns.DNS.Q(name=name, type=65)])
            r.op = 0x8183  # response, recursion desired and available, NXDOMAIN
            self.cap.udp(lan, resolver, lport, 53, bytes(r), up=False)
        self.plan.dns["udp", frozenset((lan.ip, resolver)), tuple(names)] += 1


def reversed_order(n: int) -> list[int]:
    return list(range(n))[::-1]


def shuffled_order(n: int) -> list[int]:
    order = list(range(n))
    while order == sorted(order):
        random.Random(n).shuffle(order)
    return order


def home(b: Builder) -> None:
    b.dns(PHONE, RESOLVER, "a-udp.example.com", ["203.0.113.20"])
    b.dns(PHONE6, RESOLVER6, "a-udp6.example.net", ["2001:db8::20"])
    b.dns(LAPTOP, RESOLVER, "a-tcp.example.org", ["192.0.2.30"], tcp=True)
    b.dns(PHONE6, RESOLVER6, "a-tcp6.example.org", ["2001:db8::30"], tcp=True)
    b.dns_same_port(LAPTOP, RESOLVER, 45454, ["first.example.com", "second.example.net", "x.test"])
    b.tls(PHONE, 40100, "198.51.100.10", "inorder.example.com")
    b.tls(LAPTOP, 40101, "198.51.100.11", "reversed.example.org", segment=64, order=reversed_order)
    b.tls(
        PHONE,
        40102,
        "198.51.100.12",
        "shuffled.example.net",
        segment=100,
        order=shuffled_order,
        duplicate=(0, 3),
    )
    b.tls(
        LAPTOP,
        40103,
        "198.51.100.13",
        "big-reordered.example.com",
        padding_alpn=1500,
        order=reversed_order,
    )
    b.tls(PHONE, 40104, "198.51.100.14", "tls12.example.com", rport=8443, tls13=False)
    b.tls(PHONE6, 40105, "2001:db8::10", "tls6.example.com", segment=200, order=shuffled_order)
    b.tls(LAPTOP, 40106, "198.51.100.16", None)
    b.quic(PHONE, 50100, "203.0.113.40", "quic1.example.com", QUIC_V1)
    b.quic(LAPTOP, 50101, "203.0.113.41", "quic1-big.example.com", QUIC_V1, big=True)
    b.quic(PHONE, 50102, "203.0.113.42", "quic2.example.com", QUIC_V2)
    b.quic(PHONE6, 50103, "2001:db8::42", "quic2-big6.example.com", QUIC_V2, big=True)
    b.quic(
        PHONE, 50104, "203.0.113.44", "quic-reversed.example.com", QUIC_V1, big=True, reverse=True
    )
    versions(b)
    b.http(PHONE, 40200, "192.0.2.80", "http.example.com")
    b.http(PHONE6, 40201, "2001:db8::80", "http6.example.com")
    b.http(LAPTOP, 40202, "192.0.2.81", "Alt.Example.com:8080", rport=8080)
    b.http(LAPTOP, 40203, "192.0.2.82", "http-split.example.com", segment=30)


# Three flows or more per version family; tshark 4.0 decrypts drafts 27-34, mvfst 0xfaceb001 and
# 0xfaceb002, Q050, T050 and T051 and parses Q043/Q046 CHLOs. (It cannot decrypt the later mvfst
# versions; tests/decode/test_quic.py covers those from mvfst's source. Nor does it reassemble
# T05x CRYPTO data cut into several frames, so those flights are one frame each here.)
VERSION_FLOWS: tuple[tuple[int, bool, int], ...] = (
    # (version, big hello over two datagrams, CRYPTO fragments shuffled)
    (0xFF00001B, False, 1),
    (0xFF00001B, True, 5),
    (0xFF00001C, False, 3),
    (0xFF00001D, False, 1),
    (0xFF00001E, True, 4),
    (0xFF00001F, False, 2),
    (0xFF000020, False, 1),
    (0xFF000021, False, 1),
    (0xFF000021, True, 6),
    (0xFF000022, False, 3),
    (0xFACEB001, False, 1),
    (0xFACEB002, False, 1),
    (0xFACEB002, True, 5),
    (0xFACEB00E, False, 2),
    (Q043, False, 1),
    (Q043, False, 1),
    (Q046, False, 1),
    (Q046, False, 1),
    (Q050, False, 1),
    (Q050, False, 1),
    (T050, False, 1),
    (T051, False, 1),
    (T051, True, 1),
)


def versions(b: Builder) -> None:
    for i, (version, big, pieces) in enumerate(VERSION_FLOWS):
        lan = (PHONE, LAPTOP, PHONE6)[i % 3]
        remote = f"2001:db8::1:{i:x}" if lan.v6 else f"203.0.113.{100 + i}"
        family = {0xFF: "draft", 0xFA: "mvfst", 0x51: "gquic", 0x54: "tquic"}[version >> 24]
        b.quic_version(
            lan, 51000 + i, remote, f"{family}-{i}.example.com", version, big=big, pieces=pieces
        )


def trunk(b: Builder) -> None:
    b.dns(TV, RESOLVER, "b-udp.example.com", ["203.0.113.60"])
    b.tls(TV, 40300, "198.51.100.30", "b-tls.example.com", segment=64, order=reversed_order)
    b.quic(TV, 50300, "203.0.113.50", "b-quic2.example.com", QUIC_V2, big=True)
    b.quic(TV6, 50301, "2001:db8::50", "b-quic6.example.com", QUIC_V1)
    b.http(TV, 40301, "192.0.2.90", "b-http.example.com")
    b.dns(TV, RESOLVER, "b-tcp.example.com", ["203.0.113.61"], tcp=True)


# --- running both tools ------------------------------------------------------------------------


def normalize_host(name: str) -> str:
    """Names compare case-insensitively without a trailing dot; an HTTP Host's port
    (RFC 9110 7.2) is not part of the server name."""
    name = name.strip().lower().rstrip(".")
    if name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name


TSHARK_FIELDS = [
    "gquic.tag.sni",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "ip.len",
    "ipv6.plen",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tls.handshake.extensions_server_name",
    "http.host",
    "dns.qry.name",
]


@dataclass
class TsharkView:
    names: dict[FlowKey, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    """Per flow: (kind, name) pairs; kind is "tls" (TCP or QUIC) or "http"."""
    dns: dict[FlowKey, list[str]] = field(default_factory=lambda: defaultdict(list))
    packets: Counter[tuple[FlowKey, Endpoint]] = field(default_factory=Counter)
    """Frames per flow and sending endpoint."""
    nbytes: Counter[tuple[FlowKey, Endpoint]] = field(default_factory=Counter)
    """IP bytes (header included) per flow and sending endpoint."""


def run_tshark(path: Path, view: TsharkView, config_dir: Path) -> None:
    assert TSHARK is not None
    cmd = [TSHARK, "-r", str(path), "-n"]
    cmd += ["-o", "tcp.reassemble_out_of_order:TRUE", "-o", "tcp.desegment_tcp_streams:TRUE"]
    cmd += ["-o", "tls.desegment_ssl_records:TRUE", "-o", "http.desegment_headers:TRUE"]
    cmd += ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=|"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config_dir))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        row = dict(zip(TSHARK_FIELDS, line.split("\t"), strict=True))
        first = {k: v.split("|")[0] for k, v in row.items()}
        src = first["ip.src"] or first["ipv6.src"]
        dst = first["ip.dst"] or first["ipv6.dst"]
        size = int(first["ip.len"]) if first["ip.len"] else int(first["ipv6.plen"]) + 40
        proto = "tcp" if first["tcp.srcport"] else "udp"
        sport, dport = int(first[f"{proto}.srcport"]), int(first[f"{proto}.dstport"])
        key = flow_key(proto, (src, sport), (dst, dport))
        view.packets[key, (src, sport)] += 1
        view.nbytes[key, (src, sport)] += size
        for kind, fname in (
            ("tls", "tls.handshake.extensions_server_name"),
            ("tls", "gquic.tag.sni"),
            ("http", "http.host"),
        ):
            for value in filter(None, row[fname].split("|")):
                view.names[key].add((kind, normalize_host(value)))
        for value in filter(None, row["dns.qry.name"].split("|")):
            name = normalize_host(value)
            if name not in view.dns[key]:
                view.dns[key].append(name)


@dataclass
class Results:
    plan: Plan
    ours: dict[FlowKey, dict[str, Any]]
    stats: dict[str, Any]
    tshark: TsharkView


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    tmp = tmp_path_factory.mktemp("tshark")
    plan = Plan()
    files = []
    for name, scenario, pcapng, vlans, seed in (
        ("home.pcap", home, False, (), 1),
        ("trunk.pcapng", trunk, True, (100, 20), 2),
    ):
        buf = io.BytesIO()
        cap = Capture(PcapWriter(buf, pcapng=pcapng), vlans=vlans, seed=seed)
        scenario(Builder(cap, plan))
        path = tmp / name
        path.write_bytes(buf.getvalue())
        files.append(path)

    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "analyze", "--json", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    ours: dict[FlowKey, dict[str, Any]] = {}
    for r in records:
        if r["type"] == "flow":
            key = flow_key(r["proto"], (r["src_ip"], r["src_port"]), (r["dst_ip"], r["dst_port"]))
            assert key not in ours, f"two flow records for {key}"
            ours[key] = r
    (stats,) = [r for r in records if r["type"] == "stats"]

    view = TsharkView()
    config_dir = tmp / "wireshark-config"
    config_dir.mkdir()
    for path in files:
        run_tshark(path, view, config_dir)
    return Results(plan, ours, stats, view)


# --- the comparison ----------------------------------------------------------------------------


def _shape(key: FlowKey) -> tuple[str, frozenset[str]]:
    proto, ends = key
    return proto, frozenset(ip for ip, _ in ends)


def test_tshark_saw_every_planted_name(results: Results) -> None:
    """The oracle is not blind: every name put into the captures came back from tshark."""
    seen: Counter[tuple[str, str, frozenset[str], str]] = Counter()
    for key, names in results.tshark.names.items():
        proto, ips = _shape(key)
        for kind, name in names:
            real_kind = "quic" if kind == "tls" and proto == "udp" else kind
            seen[real_kind, proto, ips, name] += 1
    assert seen == results.plan.names
    dns = Counter((*_shape(key), tuple(names)) for key, names in results.tshark.dns.items())
    assert dns == results.plan.dns


def test_server_names_agree(results: Results) -> None:
    ours, theirs = results.ours, results.tshark.names
    for key, names in theirs.items():
        assert len(names) == 1, f"{key}: tshark saw several names {names}"
        ((kind, name),) = names
        assert key in ours, f"tshark names {key} ({name}), we have no such flow"
        flow = ours[key]
        source = "quic" if kind == "tls" and key[0] == "udp" else kind
        assert (flow["server_name"], flow["name_source"]) == (name, source), key
    # And the other way: every name we took from the traffic, tshark found too.
    for key, flow in ours.items():
        if flow["name_source"] in ("tls", "quic", "http"):
            assert key in theirs, f"we named {key} {flow['server_name']}, tshark did not"


def test_hello_without_sni_is_unnamed_by_both(results: Results) -> None:
    assert results.plan.unnamed
    for key in results.plan.unnamed:
        assert key not in results.tshark.names
        assert results.ours[key]["server_name"] is None


def test_dns_queries_agree(results: Results) -> None:
    ours, theirs = results.ours, results.tshark.dns
    assert len(theirs) == sum(results.plan.dns.values())
    for key, names in theirs.items():
        assert key in ours, f"tshark saw DNS on {key}, we have no such flow"
        assert ours[key].get("dns_queries") == names, key
    for key, flow in ours.items():
        if flow.get("dns_queries"):
            assert key in theirs, key


def test_flows_and_counters_agree(results: Results) -> None:
    """Same flows, and per direction the same packets and IP bytes."""
    view = results.tshark
    assert set(results.ours) == {key for key, _ in view.packets}
    for key, flow in results.ours.items():
        up = (flow["src_ip"], flow["src_port"])
        down = (flow["dst_ip"], flow["dst_port"])
        assert (flow["packets_up"], flow["packets_down"]) == (
            view.packets[key, up],
            view.packets[key, down],
        ), key
        assert (flow["bytes_up"], flow["bytes_down"]) == (
            view.nbytes[key, up],
            view.nbytes[key, down],
        ), key


def test_nothing_was_weird_or_skipped(results: Results) -> None:
    stats = results.stats
    assert stats["weird"] == {} and stats["skipped"] == {}
    assert stats["warnings"] == []
    assert stats["packets_read"] == stats["packets_decoded"] == sum(results.tshark.packets.values())


def test_quic_versions_recorded(results: Results) -> None:
    """Every version flow carries its version as the flow record shows it, and the families
    tshark names are at least three flows each."""
    seen = {}
    for flow in results.ours.values():
        port = flow["src_port"] - 51000
        if flow["proto"] == "udp" and 0 <= port < len(VERSION_FLOWS):
            seen[port] = flow
    assert len(seen) == len(VERSION_FLOWS)
    expected_names = {Q043: "Q043", Q046: "Q046", Q050: "Q050", T050: "T050", T051: "T051"}
    for i, (version, _, _) in enumerate(VERSION_FLOWS):
        assert seen[i]["quic_version"] == expected_names.get(version, f"0x{version:08x}")
        assert seen[i]["name_source"] == "quic"
    families = Counter(
        "draft27-28"
        if v in (0xFF00001B, 0xFF00001C)
        else "draft29-32"
        if 0xFF00001D <= v <= 0xFF000020
        else "draft33-34"
        if v in (0xFF000021, 0xFF000022)
        else "mvfst"
        if v >> 24 == 0xFA
        else "gquic-cleartext"
        if v in (Q043, Q046)
        else "gquic-encrypted"
        for v, _, _ in VERSION_FLOWS
    )
    assert min(families.values()) >= 3, families
    for flow in results.ours.values():
        if flow["proto"] == "tcp" or flow.get("dns_queries"):
            assert "quic_version" not in flow
