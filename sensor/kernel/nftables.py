"""nftables: the one runner of `nft` (`run_nft`, `load_script`), the capture rules (what the
kernel sends to NFLOG: `nft_rules`, `install_rules`, `remove_rules`), and `NftCounter`, a reader
of one named counter over netlink. sensor.enforce loads its policy table through the runner."""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import struct
import subprocess
from collections.abc import Sequence

from sensor.kernel.conntrack import enable_accounting
from sensor.kernel.links import IFNAME_RE
from sensor.kernel.netlink import (
    NETLINK_NETFILTER,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSGHDR,
    error_code,
    find_attr,
    message,
    nla,
)


class NftError(OSError):
    """nft could not be run, or refused what it was given; the message says which and why."""


NFULNL_COPY_RANGE_MAX = 0xFFFF
"""The most of a packet NFLOG copies: the upper bound of a rule's snaplen."""
DEFAULT_FIRST_PACKETS = 10
DEFAULT_SNAPLEN = 4096
DEFAULT_HOST_RATE = 5000
"""Packets per second one LAN host may have sampled (its own DNS and first packets, both
directions), on average; what is over it stays uncounted by us (conntrack still counts bytes)."""
DEFAULT_HOST_BURST = 20000
DEFAULT_HOSTS = 65536
"""LAN addresses with a sampling budget at once (per family); a budget lapses 10 s after the
host's last sampled packet."""
OVER_BUDGET_COUNTER = "over_budget"
NFT_TABLE = "phonehome"
QUIC_FIRST_PACKETS_FACTOR = 4
"""Client QUIC long-header packets (Initial, 0-RTT, Handshake) are sampled in the first
4 x first_packets packets of a UDP connection, not only the first first_packets: a Retry or a
version negotiation restarts the Initials after 0-RTT packets, and Chrome's first flight alone
can take several datagrams. Long headers end with the handshake, so this adds little."""


def nft_rules(
    group: int,
    lan_ifaces: Sequence[str],
    first_packets: int = DEFAULT_FIRST_PACKETS,
    snaplen: int = DEFAULT_SNAPLEN,
    *,
    table: str = NFT_TABLE,
    host_rate: int = DEFAULT_HOST_RATE,
    host_burst: int = DEFAULT_HOST_BURST,
    hosts: int = DEFAULT_HOSTS,
    lan_prefixes: Sequence[str] = (),
) -> str:
    """An nftables table (`table inet phonehome`) sending to NFLOG `group` what can name things.

    - forward, traffic from or to a LAN interface: every DNS packet (one resolver socket can
      reuse a 5-tuple for many queries, so a per-connection budget would miss later names), and
      the first `first_packets` packets of each direction of every connection (a FIN or RST
      too, so flows end on time).
    - input/output, the gateway's own DNS and DHCP service for the LAN (udp/tcp 53, udp 67 and
      547 in, 53/67/547 out): all of it, as such packets are few and small, so a resolver or
      DHCP server on the gateway (dnsmasq) does not hide the names it serves. (A DHCP server
      that talks through a raw socket, like ISC dhcpd, passes no hook: capture those with
      `PacketSocketSource`.)

    QUIC: client packets with a long header (the first payload bit set: Initial, 0-RTT,
    Handshake) in the first 4 x N packets of a UDP connection are logged too, so a first flight
    restarted by a Retry or a version negotiation after a burst of 0-RTT still reaches the
    decoder; short-header (1-RTT) bulk is not.

    Why N = 10 by default: a connection's names and identifiers are in its first packets. On
    the client side: SYN, ACK, then a ClientHello that post-quantum key shares spread over two
    or three segments, or HTTP request headers and the first chunk of a body (the pipeline
    inspects six payload packets and 4 KiB of body per direction). On the server side: SYN-ACK,
    ServerHello and, for TLS 1.2, the certificate. Ten covers that with a margin for
    retransmissions and small segments; every packet above it is bulk that conntrack counts.
    `snaplen` (default 4 KiB) keeps the whole of a GRO-merged ClientHello.

    The counters: `ct original packets` counts only with conntrack accounting on
    (net.netfilter.nf_conntrack_acct=1). The kernel turns it on when it loads a rule reading
    them, but only connections created from then on get the counters, and the sysctl can be
    turned off again. Without counters the value reads 0, so the classic `ct original packets
    <= N` would match every packet of such a connection: the full firehose into NFLOG. The
    rules here match `1-N` instead: at the forward hook the current packet is already counted,
    so a counted connection reads at least 1, and one without counters is never sampled (a
    quiet gap, not a flood). `install_rules` switches accounting on explicitly as well.

    The chains run at `filter + 10`: after the gateway's own filter chain, so packets it drops
    are not logged; `accept` in them only ends this table's chain, never overrides a drop
    elsewhere.

    Per-host budgets: a hostile or broken LAN host (a SYN flood with random ports, a DNS
    burst, a DHCP starvation attack, endless new connections) must not fill the NFLOG socket
    and push the other devices' packets out of it. Every packet chosen above is charged to the
    LAN host it belongs to (the source going out, the destination coming in), in a dynamic set
    with a token bucket per address (`host_rate` a second, `host_burst` at once). Over budget,
    the packet is counted in the `over_budget` counter and not logged. The sets hold `hosts`
    addresses each; when one is full (a flood of spoofed sources) hosts already in it keep
    their budgets and new ones are not sampled (counted likewise) until addresses lapse, 10 s
    after their last sampled packet. Nothing is ever dropped: these chains only choose what
    to log.

    Strangers: with `lan_prefixes` (site.lan_networks) given, a LAN-side address outside them
    (a spoofed source, DHCP's 0.0.0.0, a subnet the configuration does not list) gets no set
    element of its own; all such addresses share one budget of the same size. A flood of
    random spoofed sources, the cheap way to fill the sets, then costs the real hosts
    nothing. (Spoofing inside the LAN prefixes still can: 65,536 addresses fit in an IPv6
    /64, not in a /24. For IPv6, link-local fe80::/10 counts as LAN.)
    """
    if not 0 <= group <= 0xFFFF:
        raise ValueError(f"nflog group {group}: must be 0-65535")
    if not 1 <= first_packets <= 1000:
        raise ValueError(f"first_packets {first_packets}: must be 1-1000")
    if not 64 <= snaplen <= NFULNL_COPY_RANGE_MAX:
        raise ValueError(f"snaplen {snaplen}: must be 64-{NFULNL_COPY_RANGE_MAX}")
    if not lan_ifaces:
        raise ValueError("lan_ifaces: at least one LAN interface is needed")
    if not 1 <= host_rate <= 10_000_000 or not 1 <= host_burst <= 10_000_000:
        raise ValueError(f"host budget {host_rate}/s burst {host_burst}: must be 1-10000000")
    if not 16 <= hosts <= 1 << 24:
        raise ValueError(f"hosts {hosts}: must be 16-16777216")
    for name in lan_ifaces:
        if not IFNAME_RE.match(name):
            raise ValueError(f"interface name {name!r}: not a valid interface name")
    nets: dict[int, list[str]] = {4: [], 6: []}
    for prefix in lan_prefixes:
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError as exc:
            raise ValueError(f"LAN prefix {prefix!r}: {exc}") from None
        nets[net.version].append(str(net))
    if nets[6]:
        nets[6].append("fe80::/10")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", table):
        raise ValueError(f"table name {table!r}: letters, digits, underscore")
    lan = "{ " + ", ".join(f'"{name}"' for name in lan_ifaces) + " }"
    log = f"log group {group} snaplen {snaplen} accept"
    n = first_packets
    quic_n = min(1000, QUIC_FIRST_PACKETS_FACTOR * n)
    limit = f"limit rate over {host_rate}/second burst {host_burst} packets"
    over = f"counter name {OVER_BUDGET_COUNTER} return"

    def select(budget: str) -> str:
        return f"""\
        meta l4proto {{ tcp, udp }} th dport 53 goto {budget}
        meta l4proto {{ tcp, udp }} th sport 53 goto {budget}
        meta l4proto {{ tcp, udp }} ct direction original ct original packets 1-{n} goto {budget}
        meta l4proto {{ tcp, udp }} ct direction reply ct reply packets 1-{n} goto {budget}
        meta l4proto udp ct direction original @th,64,1 1 ct original packets 1-{quic_n} \
goto {budget}
        tcp flags & (fin | rst) != 0 goto {budget}"""

    def strangers(side: str) -> str:
        return "".join(
            f"        {family} {side} != {{ {', '.join(nets[v])} }} goto budget_strangers\n"
            for v, family in ((4, "ip"), (6, "ip6"))
            if nets[v]
        )

    def budget(side: str) -> str:
        return f"""\
{strangers(side)}\
        update @hosts4 {{ ip {side} {limit} }} {over}
        update @hosts6 {{ ip6 {side} {limit} }} {over}
        ip {side} != @hosts4 {over}
        ip6 {side} != @hosts6 {over}
        {log}"""

    sets = "".join(
        f"""\
    set hosts{v} {{
        type ipv{v}_addr; size {hosts}; flags dynamic,timeout; timeout 10s;
    }}
"""
        for v in (4, 6)
    )
    return f"""\
table inet {table} {{
{sets}\
    counter {OVER_BUDGET_COUNTER} {{ }}
    chain forward {{
        type filter hook forward priority filter + 10; policy accept;
        iifname {lan} jump sample_from_lan
        oifname {lan} jump sample_to_lan
    }}
    chain sample_from_lan {{
{select("budget_saddr")}
    }}
    chain sample_to_lan {{
{select("budget_daddr")}
    }}
    chain budget_saddr {{
{budget("saddr")}
    }}
    chain budget_daddr {{
{budget("daddr")}
    }}
    chain budget_strangers {{
        {limit} {over}
        {log}
    }}
    chain input {{
        type filter hook input priority filter + 10; policy accept;
        iifname {lan} udp dport {{ 53, 67, 547 }} goto budget_saddr
        iifname {lan} tcp dport 53 goto budget_saddr
    }}
    chain output {{
        type filter hook output priority filter + 10; policy accept;
        oifname {lan} udp sport {{ 53, 67, 547 }} goto budget_daddr
        oifname {lan} tcp sport 53 goto budget_daddr
    }}
}}
"""


def run_nft(
    args: Sequence[str],
    *,
    stdin: str | None = None,
    netns: str | None = None,
    nft: str = "nft",
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Runs `nft ARGS` (inside the named namespace `netns` through `ip netns exec`) and returns
    what it did; its exit status is the caller's to judge. NftError when it cannot be run at
    all (not installed, no permission, no answer within `timeout` seconds)."""
    argv = [nft, *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        return subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"{' '.join(argv)}: {exc}") from None


def load_script(
    script: str,
    *,
    netns: str | None = None,
    nft: str = "nft",
    timeout: float = 30.0,
) -> str:
    """`nft -f -` of `script`: one transaction, all of it or nothing. Returns what nft printed;
    NftError with nft's last words when it refuses."""
    proc = run_nft(["-f", "-"], stdin=script, netns=netns, nft=nft, timeout=timeout)
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        raise NftError(f"nft failed: {' / '.join(err[-3:]) or f'exit status {proc.returncode}'}")
    return proc.stdout


def drop_table(table: str) -> str:
    """A script deleting `table inet TABLE`, harmless when it is absent: declaring the table
    first makes the delete succeed either way (and, ahead of a new definition, the load an
    atomic replace)."""
    return f"table inet {table}\ndelete table inet {table}\n"


def install_rules(
    group: int,
    lan_ifaces: Sequence[str],
    first_packets: int = DEFAULT_FIRST_PACKETS,
    snaplen: int = DEFAULT_SNAPLEN,
    *,
    table: str = NFT_TABLE,
    netns: str | None = None,
    nft: str = "nft",
    host_rate: int = DEFAULT_HOST_RATE,
    host_burst: int = DEFAULT_HOST_BURST,
    hosts: int = DEFAULT_HOSTS,
    lan_prefixes: Sequence[str] = (),
) -> None:
    """Load `nft_rules` (replacing an older version of the table in the same transaction) and
    switch conntrack accounting on. `netns` runs it in a named namespace."""
    rules = nft_rules(
        group,
        lan_ifaces,
        first_packets,
        snaplen,
        table=table,
        host_rate=host_rate,
        host_burst=host_burst,
        hosts=hosts,
        lan_prefixes=lan_prefixes,
    )
    load_script(drop_table(table) + rules, netns=netns, nft=nft)
    # After the load: the rules' conntrack use creates net.netfilter in a fresh namespace.
    # Under systemd /proc/sys is read-only (ProtectKernelTunables) and the sysctl.d file has
    # switched accounting on already: `enable_accounting` writes only when it is off.
    result = enable_accounting(netns=netns)
    if not result:
        raise NftError(result.reason)


def remove_rules(*, table: str = NFT_TABLE, netns: str | None = None, nft: str = "nft") -> None:
    """Delete the table; nothing happens if it is not there."""
    load_script(drop_table(table), netns=netns, nft=nft)


_NFT_MSG_NEWOBJ = (10 << 8) | 18  # NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWOBJ
_NFT_MSG_GETOBJ = (10 << 8) | 19
_NFTA_OBJ_TABLE, _NFTA_OBJ_NAME, _NFTA_OBJ_TYPE, _NFTA_OBJ_DATA = 1, 2, 3, 4
_NFT_OBJECT_COUNTER = 1
_NFTA_COUNTER_PACKETS = 2
_NFPROTO_INET = 1
_BE32 = struct.Struct(">I")


class NftCounter:
    """Reads one named nftables counter (`counter NAME { }` in an inet table) over netlink,
    without the `nft` program: the daemon has dropped root by then, and a process per reading
    would cost more than the reading. Needs CAP_NET_ADMIN. `packets()` is None when the counter
    cannot be read (the table was flushed by an `nft -f` of the owner's ruleset, say)."""

    def __init__(self, table: str, name: str) -> None:
        self.table, self.name = table, name
        self.missing = False
        """The last answer was ENOENT: no such table (or counter) in this namespace."""
        self._seq = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))

    def packets(self, timeout: float = 0.5) -> int | None:
        self.missing = False  # until this answer says otherwise
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        body = struct.pack(">BBH", _NFPROTO_INET, 0, 0)
        body += nla(_NFTA_OBJ_TABLE, self.table.encode() + b"\0")
        body += nla(_NFTA_OBJ_NAME, self.name.encode() + b"\0")
        body += nla(_NFTA_OBJ_TYPE, _BE32.pack(_NFT_OBJECT_COUNTER))
        msg = message(_NFT_MSG_GETOBJ, NLM_F_REQUEST, self._seq, body)
        try:
            self._sock.send(msg)
            self._sock.settimeout(timeout)
            while True:
                data = self._sock.recv(65536)
                length, mtype, _flags, seq, _pid = NLMSGHDR.unpack_from(data, 0)
                if seq != self._seq:
                    continue  # a late answer to an earlier, timed-out question
                if mtype != _NFT_MSG_NEWOBJ:  # NLMSG_ERROR: no such table or counter
                    self.missing = (
                        mtype == NLMSG_ERROR
                        and length >= 20
                        and error_code(data, 0) == errno.ENOENT
                    )
                    return None
                self.missing = False
                return self._parse(data[16 + 4 : length])
        except (OSError, struct.error, ValueError):
            return None

    @staticmethod
    def _parse(attrs: bytes) -> int | None:
        data = find_attr(attrs, _NFTA_OBJ_DATA)
        packets = find_attr(data, _NFTA_COUNTER_PACKETS) if data is not None else None
        return int.from_bytes(packets[:8], "big") if packets and len(packets) >= 8 else None

    def close(self) -> None:
        self._sock.close()
