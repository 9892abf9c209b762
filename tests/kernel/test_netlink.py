"""sensor.kernel: conntrack counters and events, neighbours, prefixes and links.

The unit tests feed pyroute2-encoded messages and fake sockets (no root needed). The lab tests
run real traffic through the namespace gateway of sensor.lab (NAT, `ct state` rules,
nf_conntrack_acct=1) and read the gateway's kernel state with `netns=`; they skip cleanly
without root, `ip netns`, nft or the conntrack CLI.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

import sensor.kernel.conntrack as conntrack
import sensor.kernel.netlink as netlink
from sensor.kernel.conntrack import (
    ConntrackEntry,
    ConntrackEvent,
    ConntrackMonitor,
    accounting_enabled,
    dump,
    enable_accounting,
    parse_entry,
)
from sensor.kernel.links import (
    NeighbourEvent,
    NeighbourMonitor,
    addresses,
    interfaces_for_prefixes,
    lan_prefixes,
    link_state,
    neighbours,
)
from sensor.lab import DEFAULT_DEVICES, GW_LAN4, GW_LAN6, GW_WAN4, GW_WAN6, NS_PREFIX, Lab

T = TypeVar("T")

SINK_PORT = 5001
DISCARD_PORT = 9999
"""Nothing listens there: each datagram is one short UDP conntrack entry."""
PAYLOAD = 1 << 20
ENOBUFS_FLOWS = 300
THROUGHPUT_FLOWS = 4000
CT_RULESET = """\
table inet t {
    chain o {
        type filter hook output priority 0;
        ct state new accept
    }
}
"""
"""The smallest ruleset that makes a namespace's conntrack start tracking (locally made flows)."""

# --- messages as the kernel would send them ------------------------------------------------------


def _tuple_attrs(v6: bool, src: str, dst: str, proto: int, sport: int, dport: int) -> Any:
    ip = "CTA_IP_V6" if v6 else "CTA_IP_V4"
    return {
        "attrs": [
            ["CTA_TUPLE_IP", {"attrs": [[f"{ip}_SRC", src], [f"{ip}_DST", dst]]}],
            [
                "CTA_TUPLE_PROTO",
                {
                    "attrs": [
                        ["CTA_PROTO_NUM", proto],
                        ["CTA_PROTO_SRC_PORT", sport],
                        ["CTA_PROTO_DST_PORT", dport],
                    ]
                },
            ],
        ]
    }


def ct_message(
    *,
    msg_type: int = conntrack._CT_DELETE,
    v6: bool = False,
    proto: int = socket.IPPROTO_TCP,
    orig: tuple[str, str, int, int] = ("192.168.77.23", "203.0.113.10", 40000, 443),
    reply: tuple[str, str, int, int] = ("203.0.113.10", "198.51.100.1", 443, 40000),
    counters: tuple[int, int, int, int] | None = (5_000_000_000, 10, 700, 7),
    tcp_state: int | None = 3,
) -> bytes:
    """An encoded conntrack message; counters are (bytes, packets) orig then reply."""
    msg = nfct_msg()
    msg["header"]["type"] = msg_type
    msg["nfgen_family"] = socket.AF_INET6 if v6 else socket.AF_INET
    attrs: list[Any] = [
        ["CTA_TUPLE_ORIG", _tuple_attrs(v6, *orig[:2], proto, *orig[2:])],
        ["CTA_TUPLE_REPLY", _tuple_attrs(v6, *reply[:2], proto, *reply[2:])],
        ["CTA_ID", 12345],
        ["CTA_STATUS", 0x19E],
    ]
    if counters is not None:
        ob, op, rb, rp = counters
        attrs += [
            [
                "CTA_COUNTERS_ORIG",
                {"attrs": [["CTA_COUNTERS_PACKETS", op], ["CTA_COUNTERS_BYTES", ob]]},
            ],
            [
                "CTA_COUNTERS_REPLY",
                {"attrs": [["CTA_COUNTERS_PACKETS", rp], ["CTA_COUNTERS_BYTES", rb]]},
            ],
        ]
    if tcp_state is not None and proto == socket.IPPROTO_TCP:
        attrs.append(
            [
                "CTA_PROTOINFO",
                {
                    "attrs": [
                        ["CTA_PROTOINFO_TCP", {"attrs": [["CTA_PROTOINFO_TCP_STATE", tcp_state]]}]
                    ]
                },
            ]
        )
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def pyroute2_view(data: bytes) -> dict[str, Any]:
    """What pyroute2's own decoder reads from a message: the reference for `parse_entry`."""
    msg = nfct_msg(data)
    msg.decode()
    out: dict[str, Any] = {}
    for which in ("ORIG", "REPLY"):
        tup = msg.get_attr(f"CTA_TUPLE_{which}")
        ip, proto = tup.get_attr("CTA_TUPLE_IP"), tup.get_attr("CTA_TUPLE_PROTO")
        v = "V4" if ip.get_attr("CTA_IP_V4_SRC") else "V6"
        out[which] = (
            ip.get_attr(f"CTA_IP_{v}_SRC"),
            ip.get_attr(f"CTA_IP_{v}_DST"),
            proto.get_attr("CTA_PROTO_SRC_PORT"),
            proto.get_attr("CTA_PROTO_DST_PORT"),
        )
        ctr = msg.get_attr(f"CTA_COUNTERS_{which}")
        if ctr is not None:
            out[f"ctr_{which}"] = (
                ctr.get_attr("CTA_COUNTERS_BYTES"),
                ctr.get_attr("CTA_COUNTERS_PACKETS"),
            )
    out["id"] = msg.get_attr("CTA_ID")
    out["status"] = msg.get_attr("CTA_STATUS")
    return out


# --- unit tests -----------------------------------------------------------------------------------


def test_entry_from_message_reads_raw_counters() -> None:
    entry = parse_entry(ct_message(), 0, 1.5)
    assert entry == ConntrackEntry(
        proto="tcp",
        family=4,
        orig_src="192.168.77.23",
        orig_dst="203.0.113.10",
        orig_sport=40000,
        orig_dport=443,
        reply_src="203.0.113.10",
        reply_dst="198.51.100.1",
        reply_sport=443,
        reply_dport=40000,
        bytes_orig=5_000_000_000,  # 64-bit counters survive
        packets_orig=10,
        bytes_reply=700,
        packets_reply=7,
        counted=True,
        id=12345,
        status=0x19E,
        zone=0,
        tcp_state="ESTABLISHED",
        ts=1.5,
    )
    assert entry.nat
    assert "SRC_NAT" in entry.flags and "ASSURED" in entry.flags


def test_entry_without_accounting_is_not_counted() -> None:
    entry = parse_entry(ct_message(counters=None), 0, 0.0)
    assert entry is not None
    assert not entry.counted
    assert (entry.bytes_orig, entry.packets_orig, entry.bytes_reply, entry.packets_reply) == (
        0,
        0,
        0,
        0,
    )


def test_entry_ipv6_udp_without_nat() -> None:
    data = ct_message(
        v6=True,
        proto=socket.IPPROTO_UDP,
        orig=("2001:db8:1::23", "2001:db8:203::10", 5353, 53),
        reply=("2001:db8:203::10", "2001:db8:1::23", 53, 5353),
    )
    entry = parse_entry(data, 0, 0.0)
    assert entry is not None
    assert (entry.proto, entry.family, entry.orig_src, entry.tcp_state) == (
        "udp",
        6,
        "2001:db8:1::23",
        None,
    )
    assert not entry.nat


def test_entry_other_protocols_are_skipped() -> None:
    assert parse_entry(ct_message(proto=socket.IPPROTO_SCTP), 0, 0.0) is None


def test_damaged_messages_raise_value_error() -> None:
    empty = nfct_msg()
    empty.encode()
    good = ct_message()
    overrun = bytearray(good)
    overrun[20:22] = b"\xff\xff"  # the first attribute claims 64 KiB
    for data in (bytes(empty.data), good[:30], bytes(overrun)):
        with pytest.raises(ValueError):
            parse_entry(data, 0, 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"counters": None},
        {"counters": (2**64 - 1, 2**40, 0, 0)},
        {
            "v6": True,
            "orig": ("fd00:77::23", "2001:db8:203::10", 1, 65535),
            "reply": ("2001:db8:203::10", "2001:db8:ffff::1", 65535, 1),
        },
    ],
)
def test_parse_entry_agrees_with_pyroute2(kwargs: dict[str, Any]) -> None:
    data = ct_message(**kwargs)
    ref = pyroute2_view(data)
    entry = parse_entry(data, 0, 0.0)
    assert entry is not None
    assert ref["ORIG"] == (entry.orig_src, entry.orig_dst, entry.orig_sport, entry.orig_dport)
    assert ref["REPLY"] == (entry.reply_src, entry.reply_dst, entry.reply_sport, entry.reply_dport)
    assert ref.get("ctr_ORIG") == (
        (entry.bytes_orig, entry.packets_orig) if entry.counted else None
    )
    assert ref.get("ctr_REPLY") == (
        (entry.bytes_reply, entry.packets_reply) if entry.counted else None
    )
    assert (ref["id"], ref["status"]) == (entry.id, entry.status)


def test_parse_entry_at_an_offset() -> None:
    first, second = (
        ct_message(),
        ct_message(
            v6=True, orig=("fd00::1", "2001:db8::1", 7, 8), reply=("2001:db8::1", "fd00::1", 8, 7)
        ),
    )
    entry = parse_entry(first + second, len(first), 0.0)
    assert entry is not None and entry.orig_src == "fd00::1"


class FakeSocket:
    """Stands in for a netlink socket: hands out queued datagrams or raises queued errors."""

    def __init__(self, items: list[bytes | OSError]) -> None:
        self.items = items
        self.closed = False

    def recv(self, size: int) -> bytes:
        if not self.items:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = self.items.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 99

    def getsockopt(self, level: int, opt: int) -> int:
        return 4096

    def close(self) -> None:
        self.closed = True


def fake_monitor(monkeypatch: pytest.MonkeyPatch, items: list[bytes | OSError]) -> ConntrackMonitor:
    fake = FakeSocket(items)
    monkeypatch.setattr(netlink, "open_socket", lambda *a, **k: fake)
    return ConntrackMonitor()


def test_monitor_counts_overruns_and_keeps_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    new = ct_message(msg_type=conntrack._CT_NEW, counters=None)
    gone = ct_message()
    mon = fake_monitor(
        monkeypatch, [new, OSError(errno.ENOBUFS, "No buffer space"), new + gone, gone]
    )
    events = mon.read_events()
    assert [e.kind for e in events] == ["new", "new", "destroy", "destroy"]
    assert mon.lost_overruns == 1
    assert mon.decode_errors == 0
    assert events[0].entry.counted is False and events[2].entry.bytes_orig == 5_000_000_000
    assert mon.read_events() == []  # drained; never blocks


def test_monitor_counts_garbage_and_bounds_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = ct_message()
    broken = bytearray(gone)
    broken[20:24] = b"\xff\xff\xff\xff"  # an attribute claiming 64 KiB in a 200-byte message
    truncated = gone[: len(gone) // 2]
    mon = fake_monitor(monkeypatch, [bytes(broken), truncated, gone, gone, gone])
    first = mon.read_events(max_messages=2)  # the broken one and the first good one
    assert len(first) == 1 and mon.decode_errors == 2
    rest = mon.read_events()
    assert len(rest) == 2 and all(isinstance(e, ConntrackEvent) for e in rest)


def test_monitor_passes_unexpected_socket_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    mon = fake_monitor(monkeypatch, [OSError(errno.EBADF, "closed")])
    with pytest.raises(OSError):
        mon.read_events()


def test_accounting_sysctl(tmp_path: Path) -> None:
    path = tmp_path / "nf_conntrack_acct"
    assert accounting_enabled(path=path) is None
    result = enable_accounting(path=path)
    assert not result and "absent" in result.reason
    assert not path.exists()  # never created
    path.write_text("0\n")
    assert accounting_enabled(path=path) is False
    result = enable_accounting(path=path)
    assert result and result.reason == "enabled"
    assert path.read_text() == "1\n"
    assert accounting_enabled(path=path) is True
    assert enable_accounting(path=path).reason == "already on"
    assert not enable_accounting(path=tmp_path)  # a directory: cannot write, no exception


# --- the lab --------------------------------------------------------------------------------------


def lab_unusable() -> str | None:
    if os.geteuid() != 0:
        return "netlink lab tests need root"
    for tool in ("ip", "nft", "conntrack"):
        if shutil.which(tool) is None:
            return f"netlink lab tests need `{tool}`"
    probe = f"{NS_PREFIX}-{os.getpid()}-0000-nlprobe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns` is not usable here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


SINK = f"""
import select, socket, sys
servers = []
for addr in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, {SINK_PORT}))
    s.listen(16)
    servers.append(s)
print("ready", flush=True)
while True:
    for s in select.select(servers, [], [])[0]:
        conn, _ = s.accept()
        conn.settimeout(30)
        n = 0
        while chunk := conn.recv(1 << 16):
            n += len(chunk)
        conn.sendall(str(n).encode())
        conn.close()
"""

UPLOAD = f"""
import json, socket, sys
conn = socket.create_connection((sys.argv[1], {SINK_PORT}), timeout=30)
size, sent, block = int(sys.argv[2]), 0, b"x" * 65536
while sent < size:
    sent += conn.send(block[: size - sent])
conn.shutdown(socket.SHUT_WR)
reply = b""
while chunk := conn.recv(100):
    reply += chunk
src, sport = conn.getsockname()[:2]
print(json.dumps({{"src": src, "sport": sport, "sent": sent, "reply": reply.decode()}}))
"""

UDP_FLOWS = f"""
import socket, sys
dst, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for port in range(first, first + count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", port))
        s.sendto(b"x", (dst, {DISCARD_PORT}))
"""

TOUCH = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.settimeout(5)
try:
    s.connect((sys.argv[1], 9))
except OSError:
    pass
"""
"""Connects to a closed port of the gateway: enough for it to learn our MAC."""

SINK_SERVER = "cn"
"""The lab server address pair the sink listens on (next to the lab's own web servers)."""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = lab_unusable()
    if reason:
        pytest.skip(reason)
    with Lab.create(devices=DEFAULT_DEVICES[:1], quic=False) as built:
        server = built.servers[SINK_SERVER]
        sink = built.ns_popen(
            built.wan_ns,
            [built.python, "-c", SINK, server.ipv4, server.ipv6],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sink.stdout is not None
        ready, _, _ = select.select([sink.stdout], [], [], 10)
        assert ready and sink.stdout.readline().strip() == "ready", "sink server did not start"
        yield built


def run(lab: Lab, script: str, *args: str) -> str:
    proc = lab.exec("xiaomi", [lab.python, "-c", script, *args], timeout=60)
    assert proc.returncode == 0, proc.stderr
    return str(proc.stdout)


def gw(lab: Lab, *argv: str) -> str:
    proc = lab.gw_exec(list(argv))
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return str(proc.stdout)


def wait_for(
    fileno: int, read: Callable[[], list[T]], done: Callable[[list[T]], bool], timeout: float = 5.0
) -> list[T]:
    """Polls and reads until `done(everything read)` or the timeout (a bounded loop)."""
    got: list[T] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        select.select([fileno], [], [], min(left, 0.2))
        got += read()
    return got


@pytest.mark.parametrize("family", [4, 6])
def test_transfer_counted_through_nat_and_destroyed(lab: Lab, family: int) -> None:
    dev = lab.devices["xiaomi"]
    server = lab.servers[SINK_SERVER].ipv4 if family == 4 else lab.servers[SINK_SERVER].ipv6
    client_ip = dev.ipv4 if family == 4 else dev.ipv6
    assert accounting_enabled(netns=lab.gw_ns) is True
    with ConntrackMonitor(netns=lab.gw_ns) as mon:
        result = json.loads(run(lab, UPLOAD, server, str(PAYLOAD)))
        assert result["sent"] == PAYLOAD and result["reply"] == str(PAYLOAD)
        sport = int(result["sport"])

        def ours(e: ConntrackEntry) -> bool:
            return e.proto == "tcp" and e.orig_src == client_ip and e.orig_sport == sport

        [entry] = [e for e in dump(netns=lab.gw_ns) if ours(e)]
        assert (entry.family, entry.orig_dst, entry.orig_dport) == (family, server, SINK_PORT)
        assert entry.reply_src == server
        assert entry.reply_dst == (GW_WAN4 if family == 4 else GW_WAN6)  # masqueraded
        assert entry.nat and "SRC_NAT" in entry.flags
        assert entry.counted
        # Counters are IP lengths: payload plus the IP header and a TCP header with options
        # (≤ 40 bytes here) per packet. Packets are few: a GSO super-packet counts once.
        header = (20 if family == 4 else 40) + 40
        assert PAYLOAD <= entry.bytes_orig <= PAYLOAD + entry.packets_orig * header
        assert (entry.bytes_orig - PAYLOAD) / PAYLOAD < 0.01
        reply = len(result["reply"])
        assert reply <= entry.bytes_reply <= reply + entry.packets_reply * header

        # The conntrack CLI (libnetfilter_conntrack) reads the same numbers.
        [cli] = [
            c
            for c in lab.conntrack()
            if c.proto == "tcp" and c.orig.get("sport") == str(sport) and c.orig["src"] == client_ip
        ]
        assert (cli.orig_bytes, cli.reply_bytes) == (entry.bytes_orig, entry.bytes_reply)
        assert cli.orig["packets"] == str(entry.packets_orig)

        fam = "ipv4" if family == 4 else "ipv6"
        gw(lab, "conntrack", "-D", "-f", fam, "-p", "tcp", "-s", client_ip, "--sport", str(sport))
        events = wait_for(
            mon.fileno(),
            mon.read_events,
            lambda got: any(e.kind == "destroy" and ours(e.entry) for e in got),
        )
    new = [e.entry for e in events if e.kind == "new" and ours(e.entry)]
    gone = [e.entry for e in events if e.kind == "destroy" and ours(e.entry)]
    assert len(new) == 1 and len(gone) == 1, events
    assert new[0].id == entry.id == gone[0].id
    assert not new[0].counted  # the kernel sends counters with DESTROY only
    final = gone[0]
    assert final.counted
    assert final.bytes_orig >= entry.bytes_orig and final.packets_orig >= entry.packets_orig
    assert final.bytes_reply >= entry.bytes_reply
    assert final.reply_dst == entry.reply_dst
    assert mon.lost_overruns == 0 and mon.decode_errors == 0
    print(
        f"\nIPv{family}: {PAYLOAD} payload bytes -> bytes_orig {final.bytes_orig} in "
        f"{final.packets_orig} packets (+{(final.bytes_orig - PAYLOAD) / PAYLOAD:.3%})"
    )


def test_dump_matches_conntrack_cli(lab: Lab) -> None:
    lab.http_post("xiaomi", "www.example.com", 5000)  # DNS over UDP, HTTP over TCP
    lab.http_post("xiaomi", "www.example.com", 5000, family=6)
    ours = {
        (e.proto, ipaddress.ip_address(e.orig_src), e.orig_sport, e.orig_dport, e.bytes_orig)
        for e in dump(netns=lab.gw_ns)
    }
    cli = {
        (
            c.proto,
            ipaddress.ip_address(c.orig["src"]),
            int(c.orig["sport"]),
            int(c.orig["dport"]),
            c.orig_bytes,
        )
        for c in lab.conntrack()
        if c.proto in ("tcp", "udp")
    }
    assert ours == cli
    assert {p for p, *_ in ours} == {"tcp", "udp"}
    assert {a.version for _, a, *_ in ours} == {4, 6}


def test_neighbours_and_events(lab: Lab) -> None:
    dev = lab.devices["xiaomi"]
    gw(lab, "ip", "neigh", "flush", "dev", lab.lan_bridge)
    with NeighbourMonitor(netns=lab.gw_ns) as mon:
        run(lab, TOUCH, lab.gw_lan_ipv4)
        run(lab, TOUCH, lab.gw_lan_ipv6)

        def learned(got: list[NeighbourEvent]) -> bool:
            return {dev.ipv4, dev.ipv6} <= {e.ip for e in got if e.kind == "new"}

        events = wait_for(mon.fileno(), mon.read_neighbour_events, learned)
        assert learned(events), events
        for e in events:
            if e.ip in (dev.ipv4, dev.ipv6):
                assert (e.mac, e.ifname) == (dev.mac, lab.lan_bridge)
        table = neighbours(netns=lab.gw_ns)
        assert table[dev.ipv4] == dev.mac and table[dev.ipv6] == dev.mac
        assert not any(ipaddress.ip_address(ip).is_multicast for ip in table)
        lan_only = neighbours(netns=lab.gw_ns, interfaces=[lab.lan_bridge])
        assert dev.ipv4 in lan_only and "198.51.100.2" not in lan_only

        gw(lab, "ip", "neigh", "del", dev.ipv4, "dev", lab.lan_bridge)
        events = wait_for(
            mon.fileno(),
            mon.read_neighbour_events,
            lambda got: any(e.kind == "del" and e.ip == dev.ipv4 for e in got),
        )
        assert any(e.kind == "del" and e.ip == dev.ipv4 for e in events), events
        assert dev.ipv4 not in neighbours(netns=lab.gw_ns)
        assert mon.decode_errors == 0


def test_prefixes_and_links(lab: Lab) -> None:
    assert lan_prefixes([lab.lan_bridge], netns=lab.gw_ns) == [
        (lab.lan_bridge, "192.168.77.0/24"),
        (lab.lan_bridge, "fd00:77::/64"),
    ]
    everything = lan_prefixes(netns=lab.gw_ns)
    assert (lab.wan_if, "198.51.100.0/30") in everything
    assert not any(name == "lo" or p.startswith("fe80") for name, p in everything)
    assert interfaces_for_prefixes(["192.168.77.0/24"], netns=lab.gw_ns) == [lab.lan_bridge]
    assert interfaces_for_prefixes(["fd00:77::/64", "10.0.0.0/8"], netns=lab.gw_ns) == [
        lab.lan_bridge
    ]
    # The default LAN list holds fe80::/10, which every interface (the WAN too) matches.
    assert interfaces_for_prefixes(["192.168.77.0/24", "fe80::/10"], netns=lab.gw_ns) == [
        lab.lan_bridge
    ]
    assert link_state(lab.lan_bridge, netns=lab.gw_ns)
    assert not link_state("nosuchif", netns=lab.gw_ns)

    with NeighbourMonitor(netns=lab.gw_ns) as mon:
        try:
            gw(lab, "ip", "link", "add", "tst0", "type", "veth", "peer", "name", "tst1")
            gw(lab, "ip", "link", "set", "tst1", "up")
            gw(lab, "ip", "link", "set", "tst0", "up")
            events = wait_for(
                mon.fileno(),
                mon.read_link_events,
                lambda got: any(e.ifname == "tst0" and e.up for e in got),
            )
            assert any(e.ifname == "tst0" and e.up and e.kind == "new" for e in events), events
            assert link_state("tst0", netns=lab.gw_ns)
            gw(lab, "ip", "link", "set", "tst0", "down")
            events = wait_for(
                mon.fileno(),
                mon.read_link_events,
                lambda got: any(e.ifname == "tst0" and not e.up for e in got),
            )
            assert any(e.ifname == "tst0" and not e.up for e in events), events
            assert not link_state("tst0", netns=lab.gw_ns)
        finally:
            lab.gw_exec(["ip", "link", "del", "tst0"])
        events = wait_for(
            mon.fileno(),
            mon.read_link_events,
            lambda got: any(e.ifname == "tst0" and e.kind == "del" for e in got),
        )
        assert any(e.ifname == "tst0" and e.kind == "del" for e in events), events


def test_addresses_of_the_gateway_and_of_its_lan(lab: Lab) -> None:
    """All global addresses (the gateway's own connections), or those of some interfaces (where
    its own services answer the LAN); each once, never loopback or link-local."""
    everything = addresses(netns=lab.gw_ns)
    assert {GW_LAN4, GW_LAN6, GW_WAN4, GW_WAN6} <= set(everything)
    assert len(everything) == len(set(everything))
    assert not any(a.startswith(("127.", "fe80")) or a == "::1" for a in everything)
    assert addresses([lab.lan_bridge], netns=lab.gw_ns) == [GW_LAN4, GW_LAN6]
    assert addresses(["nosuchif"], netns=lab.gw_ns) == []


def flush_udp_flows(lab: Lab) -> None:
    # Exit status 1 when nothing matched: fine.
    lab.gw_exec(["conntrack", "-D", "-p", "udp", "--dport", str(DISCARD_PORT)])


def test_overrun_is_counted_not_raised(lab: Lab) -> None:
    server = lab.servers["cn"].ipv4
    with ConntrackMonitor(netns=lab.gw_ns, rcvbuf=1) as mon:  # the kernel's minimum, ~2 KiB
        assert mon.rcvbuf < 8192
        run(lab, UDP_FLOWS, server, "21000", str(ENOBUFS_FLOWS))
        events = mon.read_events()
        events += mon.read_events()
        assert mon.lost_overruns > 0
        assert len(events) < ENOBUFS_FLOWS
    # The dump, the resync after an overrun, still sees every flow.
    flows = [e for e in dump(netns=lab.gw_ns) if e.proto == "udp" and e.orig_dport == DISCARD_PORT]
    assert len(flows) >= ENOBUFS_FLOWS
    flush_udp_flows(lab)


def test_every_event_of_a_burst_is_drained(lab: Lab) -> None:
    """A burst of NEW and DESTROY events, none lost (its drain rate is a figure: `make bench`)."""
    server = lab.servers["cn"].ipv4
    flush_udp_flows(lab)
    with ConntrackMonitor(netns=lab.gw_ns) as mon:
        run(lab, UDP_FLOWS, server, "23000", str(THROUGHPUT_FLOWS))
        flows = [
            e for e in dump(netns=lab.gw_ns) if e.proto == "udp" and e.orig_dport == DISCARD_PORT
        ]
        assert len(flows) == THROUGHPUT_FLOWS
        flush_udp_flows(lab)  # the kernel queues one DESTROY per flow
        unread = mon.backlog()  # what the socket holds, before any read
        want = 2 * THROUGHPUT_FLOWS
        events: list[ConntrackEvent] = []
        deadline = time.monotonic() + 30  # liveness only
        while len(events) < want and time.monotonic() < deadline:
            batch = mon.read_events()
            if not batch:
                select.select([mon.fileno()], [], [], 0.2)
            events += batch
        assert mon.lost_overruns == 0, f"rcvbuf {mon.rcvbuf} too small for {want} events"
        assert unread is not None and unread > 0 and mon.backlog() == 0
    ours = [e for e in events if e.entry.orig_dport == DISCARD_PORT]
    assert len([e for e in ours if e.kind == "new"]) == THROUGHPUT_FLOWS
    assert len([e for e in ours if e.kind == "destroy"]) == THROUGHPUT_FLOWS


def test_conntrack_idle_until_a_ruleset_uses_it(lab: Lab) -> None:
    """In a namespace of its own: no entries without a `ct` rule, and counters only for
    connections made after accounting was switched on."""
    ns = f"{lab.id}-bare"  # named like the lab's: its stale-lab cleanup would remove it too
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)

        def udp(port: int) -> None:
            script = (
                "import socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.bind(('127.0.0.1', {port}))\n"
                "s.sendto(b'x', ('127.0.0.1', 9))\n"
            )
            subprocess.run(["ip", "netns", "exec", ns, lab.python, "-c", script], check=True)

        def ours(port: int) -> list[ConntrackEntry]:
            return [e for e in dump(netns=ns) if e.proto == "udp" and e.orig_sport == port]

        host_acct = accounting_enabled()
        udp(30001)
        assert dump(netns=ns) == []
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=CT_RULESET, text=True, check=True
        )
        assert accounting_enabled(netns=ns) is False  # a new namespace starts with it off
        udp(30002)
        [before] = ours(30002)
        assert not before.counted
        result = enable_accounting(netns=ns)
        assert result, result.reason
        assert accounting_enabled(netns=ns) is True
        assert accounting_enabled() is host_acct  # the host's own setting is untouched
        udp(30003)
        [after] = ours(30003)
        assert after.counted and after.packets_orig == 1 and after.bytes_orig == 29  # 20+8+1
        [still] = ours(30002)
        assert not still.counted  # created before: no counters, ever
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_dump_of_assured_entries_leaves_half_open_ones_to_the_kernel(lab: Lab) -> None:
    """`assured_only` (what the daemon's periodic dump asks for): an established TCP connection
    is there, one-way UDP flows (never assured) are not, though a full dump has them; and a
    dump can be taken in slices and dropped half way."""
    from sensor.kernel.conntrack import iter_dump

    dev = lab.devices["xiaomi"]
    server = lab.servers[SINK_SERVER].ipv4
    flush_udp_flows(lab)
    result = json.loads(run(lab, UPLOAD, server, "20000"))
    sport = int(result["sport"])
    run(lab, UDP_FLOWS, lab.servers["cn"].ipv4, "24000", "200")

    def tcp_ours(e: ConntrackEntry) -> bool:
        return e.proto == "tcp" and e.orig_src == dev.ipv4 and e.orig_sport == sport

    def udp_ours(e: ConntrackEntry) -> bool:
        return e.proto == "udp" and e.orig_dport == DISCARD_PORT

    full = dump(netns=lab.gw_ns)
    assured = dump(netns=lab.gw_ns, assured_only=True)
    assert sum(map(udp_ours, full)) >= 200 and not any(map(udp_ours, assured))
    assert any(map(tcp_ours, assured)) and all(e.status & 0x4 for e in assured)
    it = iter_dump(netns=lab.gw_ns)
    first = [next(it) for _ in range(5)]
    it.close()  # the socket goes with it; a new dump starts afresh
    assert len(first) == 5 and len(dump(netns=lab.gw_ns)) >= len(first)
    flush_udp_flows(lab)
