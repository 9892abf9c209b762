"""The lab: a real home gateway on one machine, built from network namespaces.

Shared by the demo (the daemon runs in the gateway namespace and watches `br-lan`), the lab
tests and the benchmarks. Everything runs in namespaces this module creates and deletes; nothing
is connected to the host's own network, so no packet can leave the machine.

```
 device namespaces                gateway namespace "gw"                   WAN namespace "wan"
 xiaomi  eth0 ─veth─ lan-xiaomi ┐                                         eth0 198.51.100.2/30
 samsung eth0 ─veth─ lan-samsung├ br-lan 192.168.77.1/24   wan0 ─veth──── lo:
 laptop  eth0 ─veth─ lan-laptop ┘        fd00:77::1/64     198.51.100.1/30    203.0.113.10  (cn)
                                  nftables: forward policy drop,           198.51.100.20 (sg)
                                  ct state established,related accept,     192.0.2.80    (home)
                                  masquerade out of wan0 (v4 and v6),      192.0.2.53    (dns)
                                  nf_conntrack_acct=1                      + 2001:db8:… each
```

Choices:
- IPv6 is NAT66-masqueraded by default, like IPv4: the LAN uses a ULA prefix (fd00:77::/64),
  which a real WAN would not route back. So the servers see the gateway's WAN address for both
  families, and conntrack holds the LAN-side source for both, which is what the sensor reads.
  `nat66=False` routes instead: the WAN namespace then gets a route to the ULA prefix.
- Addresses are static; per-device DNS is /etc/netns/<ns>/resolv.conf, pointing at the lab
  resolver (which `ip netns exec` bind-mounts over /etc/resolv.conf).
- Namespace names are `phlab-<pid>-<token>-<role>`: unique per run, and the owner's PID is in the
  name; the owner's start time is kept in <run dir>/<lab id>/owner.json, so `cleanup_stale()`
  knows a lab is dead even after PID reuse. Interface names are fixed (≤ 15 characters): each
  namespace has its own, and veth peers are created straight into their namespace.
- The servers (sensor/labsrv.py) are one Python process in the WAN namespace. It gets SIGTERM
  when the thread that created the lab exits, so create labs from a thread that outlives them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from sensor.synth import LEAK_BODY, REDMI_UA

NS_PREFIX = "phlab"
DEFAULT_RUN_DIR = Path("/run/phonehome-lab")
NETNS_ETC = Path("/etc/netns")
"""`ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc/*."""

LAN_BRIDGE = "br-lan"
WAN_IF = "wan0"
GW_MAC = "02:77:00:00:00:01"
"""The LAN bridge's MAC: locally administered, so no OUI lookup ever names a vendor for it."""
LAN_NET4 = ipaddress.IPv4Network("192.168.77.0/24")
LAN_NET6 = ipaddress.IPv6Network("fd00:77::/64")
GW_LAN4 = "192.168.77.1"
GW_LAN6 = "fd00:77::1"
GW_WAN4 = "198.51.100.1"
ISP_WAN4 = "198.51.100.2"
WAN_PREFIX4 = 30
GW_WAN6 = "2001:db8:ffff::1"
ISP_WAN6 = "2001:db8:ffff::2"
WAN_PREFIX6 = 64
SERVER_IF = "lo"
"""Servers live on the WAN namespace's loopback (no dummy module needed)."""

_ID_RE = re.compile(rf"^{NS_PREFIX}-(\d+)-[0-9a-f]{{4}}$")
"""A lab id: `phlab-<owner pid>-<random token>`."""
_NAME_RE = re.compile(rf"^({NS_PREFIX}-\d+-[0-9a-f]{{4}})-[a-z0-9]+$")
"""A lab namespace: `<lab id>-<role>` (gw, wan or a device name)."""


class LabError(RuntimeError):
    """The lab could not be built or a lab client failed."""


# --- what the lab holds ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A simulated LAN device to build."""

    name: str
    """Short name, lower-case letters and digits, at most 10 characters (port `lan-<name>`)."""
    mac: str
    ipv4: str
    ipv6: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class Device:
    """A simulated LAN device as built: its own namespace, attached to the LAN bridge."""

    name: str
    ns: str
    """Network namespace name (run things there with `Lab.exec`)."""
    mac: str
    ipv4: str
    ipv6: str
    port: str
    """The gateway-side veth, a port of `br-lan`."""
    description: str = ""


@dataclass(frozen=True, slots=True)
class Server:
    """An address pair in the WAN namespace where the lab's servers listen."""

    name: str
    ipv4: str
    ipv6: str
    description: str = ""


DEFAULT_DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec(
        "xiaomi",
        "64:09:80:77:00:23",
        "192.168.77.23",
        "fd00:77::23",
        "Xiaomi-like phone (OUI 64:09:80, Xiaomi Communications)",
    ),
    DeviceSpec(
        "samsung",
        "8c:77:12:77:00:24",
        "192.168.77.24",
        "fd00:77::24",
        "Samsung-like phone (OUI 8c:77:12, Samsung Electronics)",
    ),
    DeviceSpec(
        "laptop",
        "3c:22:fb:77:00:42",
        "192.168.77.42",
        "fd00:77::42",
        "laptop (OUI 3c:22:fb, Apple)",
    ),
)

SERVERS: tuple[Server, ...] = (
    Server("cn", "203.0.113.10", "2001:db8:203::10", "mapped to China by the test fixtures"),
    Server("sg", "198.51.100.20", "2001:db8:198::20", "AWS ap-southeast-1 (SG) in the fixtures"),
    Server("home", "192.0.2.80", "2001:db8:192::80", "the home country"),
)
RESOLVER = Server("dns", "192.0.2.53", "2001:db8:192::53", "the lab's DNS resolver")


def _a(server: Server) -> list[tuple[str, str]]:
    return [("A", server.ipv4), ("AAAA", server.ipv6)]


_CN, _SG, _HOME = SERVERS
DEFAULT_ZONE: dict[str, list[tuple[str, str]]] = {
    "api.account.xiaomi.com": _a(_CN),
    "data.mistat.xiaomi.com": _a(_SG),
    "tracking.intl.miui.com": [("CNAME", "tracking.intl.miui.com.cdn.example.net")],
    "tracking.intl.miui.com.cdn.example.net": _a(_SG),
    "api.samsungosp.com": _a(_SG),
    "www.example.com": _a(_HOME),
}
"""Name → records the lab resolver answers; every other name gets NXDOMAIN."""


@dataclass(frozen=True, slots=True)
class PostResult:
    """What a lab client saw of one POST, and what the server said it received."""

    status: int
    sent: int
    """Body bytes the client sent."""
    local: str | None
    """The client's own address (None for HTTP/3, where aioquic hides it)."""
    local_port: int | None
    """The client's source port (None for HTTP/3): with `local`, finds the flow in conntrack."""
    remote: str
    """The address the client connected to."""
    server: dict[str, Any]
    """The server's JSON answer: proto, peer (source address it saw), sni, host, received…"""
    seconds: float

    @property
    def received(self) -> int:
        """Body bytes the server counted."""
        return int(self.server.get("received", -1))

    @property
    def server_peer(self) -> str:
        """The source address the server saw: the gateway's WAN address when NAT is on."""
        return str(self.server.get("peer", ""))


@dataclass(frozen=True, slots=True)
class DnsReply:
    rcode: int
    answers: list[tuple[str, str]]
    """(type, value) in answer order, e.g. ("CNAME", "x.example.net"), ("A", "192.0.2.1")."""


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One line of `conntrack -L -o extended`."""

    family: str
    """"ipv4" or "ipv6"."""
    proto: str
    state: str | None
    orig: dict[str, str]
    """The original direction: src, dst, sport, dport, packets, bytes (with accounting on)."""
    reply: dict[str, str]
    flags: tuple[str, ...] = ()

    @property
    def orig_bytes(self) -> int:
        return int(self.orig.get("bytes", 0))

    @property
    def reply_bytes(self) -> int:
        return int(self.reply.get("bytes", 0))


_CONNTRACK_TUPLE_KEYS = frozenset(
    ("src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes")
)


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    """Entries from `conntrack -L -o extended` output (summary lines on stderr are not here)."""
    out = []
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) < 5 or tokens[0] not in ("ipv4", "ipv6"):
            continue
        family, proto = tokens[0], tokens[2]
        state: str | None = None
        orig: dict[str, str] = {}
        reply: dict[str, str] = {}
        flags = []
        # family, l3 number, proto name, proto number, timeout, [state], key=value…
        side = orig
        for tok in tokens[5:]:
            if tok.startswith("[") and tok.endswith("]"):
                flags.append(tok.strip("[]"))
            elif "=" in tok:
                key, value = tok.split("=", 1)
                if key == "src" and "src" in orig:
                    side = reply  # the second tuple is the reply direction
                if key in _CONNTRACK_TUPLE_KEYS:
                    side[key] = value
            elif not orig and state is None:
                state = tok
        out.append(ConntrackEntry(family, proto, state, orig, reply, tuple(flags)))
    return out


# --- running things -------------------------------------------------------------------------------


def _run(
    argv: Sequence[str], *, stdin: str | None = None, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _ip_batch(ns: str, commands: Sequence[str]) -> None:
    """Runs `ip` commands inside `ns` in one process (one command a line)."""
    _run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(commands) + "\n")


def _ns_sh(ns: str, script: str) -> None:
    """A small shell script inside `ns`: how we write its /proc/sys (no procps needed)."""
    _run(["ip", "netns", "exec", ns, "sh", "-ec", script])


def _sysctl_script(values: Mapping[str, str | int]) -> str:
    return "\n".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in values.items())


def list_namespaces() -> list[str]:
    proc = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _ns_pids(ns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_ns_processes(ns: str, grace: float = 2.0) -> None:
    """Ends what still runs inside one of our lab namespaces: SIGTERM, then SIGKILL."""
    pids = _ns_pids(ns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.02)
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _delete_namespace(ns: str) -> None:
    _kill_ns_processes(ns)
    _run(["ip", "netns", "delete", ns], check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def _stop(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# --- ownership and stale labs ---------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[-1].split()[19])


def _owner_alive(lab_id: str, pid: int, run_dir: Path) -> bool:
    start = _start_time(pid)
    if start is None:
        return False
    try:
        owner = json.loads((run_dir / lab_id / "owner.json").read_text())
    except (OSError, ValueError):
        return True  # no record (another run dir?): trust the PID in the name
    return bool(owner.get("pid") == pid and owner.get("start") == start)


@dataclass(frozen=True, slots=True)
class LabInfo:
    """A lab found on this machine (maybe another process's, maybe stale)."""

    id: str
    pid: int
    alive: bool
    namespaces: tuple[str, ...]


def find_labs(run_dir: Path | None = None) -> list[LabInfo]:
    run_dir = run_dir or DEFAULT_RUN_DIR
    by_id: dict[str, list[str]] = {}
    for ns in list_namespaces():
        m = _NAME_RE.match(ns)
        if m:
            by_id.setdefault(m.group(1), []).append(ns)
    # A run dir with no namespaces left is a lab that died half torn down.
    if run_dir.is_dir():
        for d in run_dir.iterdir():
            if d.is_dir() and _ID_RE.match(d.name):
                by_id.setdefault(d.name, [])
    labs = []
    for lab_id, names in sorted(by_id.items()):
        pid = int(lab_id.split("-")[1])
        labs.append(LabInfo(lab_id, pid, _owner_alive(lab_id, pid, run_dir), tuple(sorted(names))))
    return labs


def remove_lab(info: LabInfo, run_dir: Path | None = None) -> None:
    """Deletes a lab's namespaces (ending what runs in them), netns files and run dir."""
    for ns in info.namespaces:
        _delete_namespace(ns)
    shutil.rmtree((run_dir or DEFAULT_RUN_DIR) / info.id, ignore_errors=True)


def cleanup_stale(run_dir: Path | None = None) -> list[str]:
    """Removes every lab whose owner process is dead; returns the lab ids removed.

    Labs of live processes (parallel test runs) are left alone.
    """
    removed = []
    for info in find_labs(run_dir):
        if not info.alive:
            remove_lab(info, run_dir)
            removed.append(info.id)
    return removed


# --- TLS material ---------------------------------------------------------------------------------


def write_tls_material(directory: Path, names: Sequence[str], addresses: Sequence[str]) -> Path:
    """A lab CA and a server certificate for every name and address; returns the CA's path.

    Writes ca.pem, cert.pem (leaf + CA) and key.pem into `directory`. A real chain (not one
    self-signed leaf) so both OpenSSL and aioquic's verifier accept it with verification on.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Phonehome lab CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "cert.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path = directory / "key.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory / "ca.pem"


# --- the lab --------------------------------------------------------------------------------------


@dataclass
class Lab:
    """A built lab. Make one with `Lab.create()` and use it as a context manager."""

    id: str
    """`phlab-<pid>-<token>`: every namespace name starts with it."""
    devices: dict[str, Device]
    servers: dict[str, Server]
    """Web servers by name ("cn", "sg", "home"): HTTP 80, HTTPS 443, HTTP/3 UDP 443."""
    resolver: Server
    zone: dict[str, list[tuple[str, str]]]
    nat66: bool
    quic: bool
    run_dir: Path
    """This lab's runtime directory: owner.json, TLS material, server config, logs, events."""
    python: str
    """The Python that runs the lab's servers and clients (the virtualenv's by default)."""
    gw_ns: str = ""
    wan_ns: str = ""
    lan_bridge: str = LAN_BRIDGE
    wan_if: str = WAN_IF
    gw_lan_ipv4: str = GW_LAN4
    gw_lan_ipv6: str = GW_LAN6
    gw_wan_ipv4: str = GW_WAN4
    gw_wan_ipv6: str = GW_WAN6
    startup_seconds: float = 0.0
    _server: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)
    _created: list[str] = field(default_factory=list, repr=False)
    _closed: bool = field(default=False, repr=False)

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        devices: Sequence[DeviceSpec] = DEFAULT_DEVICES,
        zone: Mapping[str, Sequence[tuple[str, str]]] | None = None,
        nat66: bool = True,
        quic: bool = True,
        run_dir: Path | None = None,
        python: str | None = None,
        ready_timeout: float = 20.0,
    ) -> Lab:
        """Builds the lab and waits until the servers listen; tears down again on failure.

        Stale labs (owner process dead) are removed first.
        """
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, nftables)")
        names = [spec.name for spec in devices]
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", name) or name in ("gw", "wan"):
                raise LabError(f"device name {name!r}: 1-10 lower-case letters/digits, not gw/wan")
        if len(set(names)) != len(names):
            raise LabError(f"device names repeat: {names}")
        base = run_dir or DEFAULT_RUN_DIR
        cleanup_stale(base)
        lab_id = f"{NS_PREFIX}-{os.getpid()}-{os.urandom(2).hex()}"
        lab = cls(
            id=lab_id,
            devices={
                s.name: Device(
                    s.name,
                    f"{lab_id}-{s.name}",
                    s.mac.lower(),
                    s.ipv4,
                    s.ipv6,
                    f"lan-{s.name}",
                    s.description,
                )
                for s in devices
            },
            servers={s.name: s for s in SERVERS},
            resolver=RESOLVER,
            zone={k.lower(): list(v) for k, v in (zone or DEFAULT_ZONE).items()},
            nat66=nat66,
            quic=quic,
            run_dir=base / lab_id,
            python=python or sys.executable,
            gw_ns=f"{lab_id}-gw",
            wan_ns=f"{lab_id}-wan",
        )
        started = time.monotonic()
        try:
            lab._build(ready_timeout)
        except BaseException:
            lab.close()
            raise
        lab.startup_seconds = time.monotonic() - started
        return lab

    def _build(self, ready_timeout: float) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pid = os.getpid()
        # Written before any namespace exists, so cleanup_stale can always judge this lab.
        (self.run_dir / "owner.json").write_text(
            json.dumps({"pid": pid, "start": _start_time(pid), "namespaces": self.namespaces})
        )
        for ns in self.namespaces:
            _run(["ip", "netns", "add", ns])
            self._created.append(ns)
            self._write_resolv_conf(ns)
            _ns_sh(
                ns,
                "ip link set lo up\n"
                + _sysctl_script(
                    {
                        # Static addresses: no 1-2 s of duplicate address detection.
                        "net.ipv6.conf.all.accept_dad": 0,
                        "net.ipv6.conf.default.accept_dad": 0,
                    }
                ),
            )
        self._build_links()
        self._build_wan()
        self._start_servers()  # their start-up overlaps with the rest of the build
        self._build_gateway()
        for dev in self.devices.values():
            self._build_device(dev)
        self._wait_ready(ready_timeout)

    def _build_links(self) -> None:
        cmds = [
            f"link add {LAN_BRIDGE} type bridge forward_delay 0 stp_state 0",
            f"link set {LAN_BRIDGE} address {GW_MAC}",
            f"link add {WAN_IF} type veth peer name eth0 netns {self.wan_ns}",
        ]
        for dev in self.devices.values():
            cmds += [
                f"link add {dev.port} type veth peer name eth0 address {dev.mac} netns {dev.ns}",
                f"link set {dev.port} master {LAN_BRIDGE} up",
            ]
        _ip_batch(self.gw_ns, cmds)

    def _build_wan(self) -> None:
        cmds = [
            "link set eth0 up",
            f"addr add {ISP_WAN4}/{WAN_PREFIX4} dev eth0",
            f"addr add {ISP_WAN6}/{WAN_PREFIX6} dev eth0 nodad",
        ]
        for srv in (self.resolver, *self.servers.values()):
            cmds += [
                f"addr add {srv.ipv4}/32 dev {SERVER_IF}",
                f"addr add {srv.ipv6}/128 dev {SERVER_IF} nodad",
            ]
        if not self.nat66:
            cmds.append(f"route add {LAN_NET6} via {GW_WAN6}")
        _ip_batch(self.wan_ns, cmds)

    def _build_gateway(self) -> None:
        _ip_batch(
            self.gw_ns,
            [
                f"link set {LAN_BRIDGE} up",
                f"addr add {GW_LAN4}/{LAN_NET4.prefixlen} dev {LAN_BRIDGE}",
                f"addr add {GW_LAN6}/{LAN_NET6.prefixlen} dev {LAN_BRIDGE} nodad",
                f"link set {WAN_IF} up",
                f"addr add {GW_WAN4}/{WAN_PREFIX4} dev {WAN_IF}",
                f"addr add {GW_WAN6}/{WAN_PREFIX6} dev {WAN_IF} nodad",
                f"route add default via {ISP_WAN4}",
                f"route add default via {ISP_WAN6}",
            ],
        )
        _run(["ip", "netns", "exec", self.gw_ns, "nft", "-f", "-"], stdin=self.nft_ruleset())
        # After the ruleset: it loads conntrack, which creates net.netfilter.* in the namespace.
        sysctls: dict[str, str | int] = {
            "net.ipv4.ip_forward": 1,
            "net.ipv6.conf.all.forwarding": 1,
            "net.netfilter.nf_conntrack_acct": 1,
        }
        # Bridge ports carry no addresses on a real router; keep their IPv6 stack quiet too.
        sysctls |= {f"net.ipv6.conf.{d.port}.disable_ipv6": 1 for d in self.devices.values()}
        _ns_sh(self.gw_ns, _sysctl_script(sysctls))

    def nft_ruleset(self) -> str:
        """The gateway's nftables ruleset (one inet table, so IPv4 and IPv6 share it)."""
        masq = "masquerade" if self.nat66 else "meta nfproto ipv4 masquerade"
        return f"""\
table inet phonehome_lab {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state invalid drop
        iifname "{LAN_BRIDGE}" oifname "{WAN_IF}" accept
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN_IF}" {masq}
    }}
}}
"""

    def _build_device(self, dev: Device) -> None:
        _ip_batch(
            dev.ns,
            [
                "link set eth0 up",
                f"addr add {dev.ipv4}/{LAN_NET4.prefixlen} dev eth0",
                f"addr add {dev.ipv6}/{LAN_NET6.prefixlen} dev eth0 nodad",
                f"route add default via {GW_LAN4}",
                f"route add default via {GW_LAN6}",
            ],
        )

    def _write_resolv_conf(self, ns: str) -> None:
        d = NETNS_ETC / ns
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(
            f"# Phonehome lab {self.id}: the lab resolver in the WAN namespace\n"
            f"nameserver {self.resolver.ipv4}\n"
            f"nameserver {self.resolver.ipv6}\n"
            "options timeout:1 attempts:2\n"
        )

    def _start_servers(self) -> None:
        tls_dir = self.run_dir / "tls"
        tls_dir.mkdir(mode=0o700)
        addresses = [a for s in self.servers.values() for a in (s.ipv4, s.ipv6)]
        write_tls_material(tls_dir, sorted(self.zone), addresses)
        config = {
            "resolvers": [self.resolver.ipv4, self.resolver.ipv6],
            "servers": addresses,
            "zone": self.zone,
            "cert": str(tls_dir / "cert.pem"),
            "key": str(tls_dir / "key.pem"),
            "events": str(self.events_path),
            "quic": self.quic,
        }
        (self.run_dir / "serve.json").write_text(json.dumps(config, indent=1))
        self.events_path.touch()
        with open(self.run_dir / "servers.log", "wb") as log:
            self._server = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.wan_ns,
                    self.python,
                    "-m",
                    "sensor.labsrv",
                    "serve",
                    str(self.run_dir / "serve.json"),
                    "--parent-pid",
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.env,
            )

    def _wait_ready(self, timeout: float) -> None:
        assert self._server is not None and self._server.stdout is not None
        fd = self._server.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"lab servers not ready after {timeout:.0f} s{self._server_log()}")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 64)
                if not chunk:
                    raise LabError(f"lab servers exited{self._server_log()}")
                buf += chunk
        if buf.strip() != b"ready":
            raise LabError(f"lab servers said {buf!r}{self._server_log()}")

    def _server_log(self) -> str:
        try:
            tail = (self.run_dir / "servers.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""
        return f":\n{tail}" if tail.strip() else ""

    # --- teardown ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stops every process the lab started and deletes everything it made. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._procs):
            _stop(proc)
        if self._server is not None:
            _stop(self._server)
        for ns in reversed(self._created):
            _delete_namespace(ns)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- facts ------------------------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        return [self.gw_ns, self.wan_ns, *(d.ns for d in self.devices.values())]

    @property
    def lan_prefixes(self) -> list[str]:
        """The LAN's IPv4 and IPv6 prefixes (what the daemon's config calls the LAN)."""
        return [str(LAN_NET4), str(LAN_NET6)]

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    @property
    def cafile(self) -> Path:
        """The lab CA: clients verify the servers' certificate against it."""
        return self.run_dir / "tls" / "ca.pem"

    @property
    def env(self) -> dict[str, str]:
        """Environment for lab Python processes: `sensor` importable from this source tree."""
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def device(self, device: Device | str) -> Device:
        if isinstance(device, Device):
            return device
        try:
            return self.devices[device]
        except KeyError:
            raise LabError(f"no device {device!r}; have {', '.join(self.devices)}") from None

    def describe(self) -> dict[str, Any]:
        """Everything a person or the demo needs to find their way around the lab."""
        return {
            "id": self.id,
            "gateway": {
                "ns": self.gw_ns,
                "lan_bridge": self.lan_bridge,
                "wan_if": self.wan_if,
                "lan": [f"{GW_LAN4}/{LAN_NET4.prefixlen}", f"{GW_LAN6}/{LAN_NET6.prefixlen}"],
                "wan": [f"{GW_WAN4}/{WAN_PREFIX4}", f"{GW_WAN6}/{WAN_PREFIX6}"],
                "nat66": self.nat66,
            },
            "wan_ns": self.wan_ns,
            "devices": {
                d.name: {
                    "ns": d.ns,
                    "mac": d.mac,
                    "ipv4": d.ipv4,
                    "ipv6": d.ipv6,
                    "description": d.description,
                }
                for d in self.devices.values()
            },
            "resolver": [self.resolver.ipv4, self.resolver.ipv6],
            "servers": {s.name: [s.ipv4, s.ipv6] for s in self.servers.values()},
            "zone": self.zone,
            "cafile": str(self.cafile),
            "events": str(self.events_path),
            "startup_seconds": round(self.startup_seconds, 3),
        }

    # --- running things ---------------------------------------------------------------------------

    def ns_exec(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run` inside namespace `ns`; output captured as text unless told."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        kw.setdefault("check", False)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], **kw)

    def ns_popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """`subprocess.Popen` inside `ns`; the lab stops it at teardown if it still runs."""
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self._procs.append(proc)
        return proc

    def exec(
        self, device: Device | str, argv: Sequence[str], **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        return self.ns_exec(self.device(device).ns, argv, **kw)

    def popen(self, device: Device | str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return self.ns_popen(self.device(device).ns, argv, **kw)

    def gw_exec(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Runs a command in the gateway namespace, where the daemon runs."""
        return self.ns_exec(self.gw_ns, argv, **kw)

    def gw_popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return self.ns_popen(self.gw_ns, argv, **kw)

    def wan_exec(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        return self.ns_exec(self.wan_ns, argv, **kw)

    # --- clients ----------------------------------------------------------------------------------

    def _client(self, device: Device | str, args: Sequence[str], timeout: float = 60.0) -> Any:
        proc = self.exec(
            device,
            [self.python, "-m", "sensor.labsrv", *args],
            env=self.env,
            timeout=timeout,
        )
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()
            raise LabError(f"lab client {' '.join(args)}: {err[-1] if err else proc.returncode}")
        return json.loads(proc.stdout)

    def resolve(self, device: Device | str, name: str, family: int = 0) -> list[str]:
        """getaddrinfo() in the device: through its resolv.conf to the lab resolver."""
        return list(self._client(device, ["resolve", name, "--family", str(family)]))

    def dns_query(
        self,
        device: Device | str,
        name: str,
        qtype: str = "A",
        *,
        tcp: bool = False,
        server: str | None = None,
    ) -> DnsReply:
        """One query from the device straight to the lab resolver (or `server`)."""
        args = ["dns", name, "--type", qtype, "--server", server or self.resolver.ipv4]
        raw = self._client(device, [*args, "--tcp"] if tcp else args)
        return DnsReply(int(raw["rcode"]), [(str(t), str(v)) for t, v in raw["answers"]])

    def _post(
        self,
        device: Device | str,
        url: str,
        size: int,
        *,
        address: str | None,
        family: int,
        user_agent: str | None,
        http3: bool = False,
        timeout: float = 60.0,
        body: str | None = None,
    ) -> PostResult:
        args = ["post", url, "--size", str(size), "--cafile", str(self.cafile)]
        if body is not None:
            args += ["--body", body]
        args += ["--family", str(family), "--timeout", str(timeout)]
        if address:
            args += ["--address", address]
        if user_agent:
            args += ["--user-agent", user_agent]
        if http3:
            args.append("--http3")
        raw = self._client(device, args, timeout=timeout + 10)
        return PostResult(
            status=int(raw["status"]),
            sent=int(raw["sent"]),
            local=raw["local"],
            local_port=raw["local_port"],
            remote=str(raw["remote"]),
            server=dict(raw["server"] or {}),
            seconds=float(raw["seconds"]),
        )

    def http_post(
        self,
        device: Device | str,
        host: str,
        size: int = 64,
        *,
        path: str = "/",
        address: str | None = None,
        family: int = 0,
        user_agent: str | None = None,
        body: str | None = None,
    ) -> PostResult:
        """Plain HTTP POST to port 80; the device resolves `host` unless `address` is given.

        `family` 4 or 6 picks the address family of the lookup (0: the resolver's order).
        `body` replaces the filler bytes with a form (e.g. a leaking app's identifiers).
        """
        return self._post(
            device,
            f"http://{host}{path}",
            size,
            address=address,
            family=family,
            user_agent=user_agent,
            body=body,
        )

    def tls_upload(
        self,
        device: Device | str,
        host: str,
        size: int,
        *,
        path: str = "/upload",
        address: str | None = None,
        family: int = 0,
        user_agent: str | None = None,
    ) -> PostResult:
        """HTTPS POST of `size` bytes with SNI `host`, certificate verified against the lab CA."""
        return self._post(
            device,
            f"https://{host}{path}",
            size,
            address=address,
            family=family,
            user_agent=user_agent,
        )

    def quic_upload(
        self,
        device: Device | str,
        host: str,
        size: int,
        *,
        path: str = "/upload",
        address: str | None = None,
        user_agent: str | None = None,
    ) -> PostResult:
        """HTTP/3 POST over QUIC (UDP 443) with aioquic, SNI `host`, verified against the CA."""
        if not self.quic:
            raise LabError("this lab was created with quic=False")
        return self._post(
            device,
            f"https://{host}{path}",
            size,
            address=address,
            family=0,
            user_agent=user_agent,
            http3=True,
        )

    def conntrack(self) -> list[ConntrackEntry]:
        """The gateway's conntrack table, both families (`conntrack -L -o extended`)."""
        entries = []
        for family in ("ipv4", "ipv6"):
            proc = self.gw_exec(["conntrack", "-L", "-o", "extended", "-f", family])
            if proc.returncode != 0:
                raise LabError(f"conntrack -L failed: {proc.stderr.strip()}")
            entries += parse_conntrack(proc.stdout)
        return entries

    def server_events(self) -> list[dict[str, Any]]:
        """Every request the web servers completed, oldest first."""
        with open(self.events_path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


# --- demo traffic ---------------------------------------------------------------------------------

GALAXY_UA = "Dalvik/2.1.0 (Linux; U; Android 14; SM-S911B Build/UP1A.231005.007)"


def post_leak(lab: Lab, device: str = "xiaomi") -> PostResult:
    """The 2014 Redmi's registration POST (`LEAK_BODY`: IMEI, number, contacts in clear) to
    api.account.xiaomi.com, from `device`."""
    return lab.http_post(
        device,
        "api.account.xiaomi.com",
        path="/pass/v2/register",
        user_agent=REDMI_UA,
        body=LEAK_BODY,
    )


def play_demo_traffic(lab: Lab) -> list[PostResult]:
    """A short, bounded conversation per default device (about 1.5 MB in all)."""
    results = []
    devs = lab.devices
    if "xiaomi" in devs:
        results.append(post_leak(lab))
        results.append(lab.tls_upload("xiaomi", "tracking.intl.miui.com", 200_000))
        results.append(lab.tls_upload("xiaomi", "data.mistat.xiaomi.com", 20_000, family=6))
        if lab.quic:
            results.append(lab.quic_upload("xiaomi", "tracking.intl.miui.com", 50_000))
    if "samsung" in devs:
        results.append(
            lab.tls_upload("samsung", "api.samsungosp.com", 100_000, user_agent=GALAXY_UA)
        )
    if "laptop" in devs:
        results.append(lab.tls_upload("laptop", "www.example.com", 1_000_000))
    return results


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phonehome lab", description="The namespace gateway lab (needs root)."
    )
    p.add_argument("--run-dir", type=Path, default=None, help=f"default {DEFAULT_RUN_DIR}")
    sub = p.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="build a lab and keep it until Ctrl-C (or --hold)")
    up.add_argument("--traffic", action="store_true", help="play the demo traffic once up")
    up.add_argument("--hold", type=float, default=None, metavar="SECONDS")
    up.add_argument("--no-quic", action="store_true")
    up.add_argument("--route-ipv6", action="store_true", help="route IPv6 instead of NAT66")
    down = sub.add_parser("down", help="remove stale labs (owner process gone)")
    down.add_argument("--all", action="store_true", help="also labs whose owner still runs")
    sub.add_parser("status", help="list labs on this machine")
    return p


def _wait_for_signal(hold: float | None) -> None:
    caught = (signal.SIGINT, signal.SIGTERM)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, caught)
    try:
        if hold is None:
            signal.sigwait(caught)
        else:
            signal.sigtimedwait(caught, hold)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = sys.stdout
    if args.action == "status":
        for info in find_labs(args.run_dir):
            state = "running" if info.alive else "stale"
            out.write(f"{info.id} pid {info.pid} {state}: {' '.join(info.namespaces)}\n")
        return 0
    if args.action == "down":
        for info in find_labs(args.run_dir):
            if args.all or not info.alive:
                remove_lab(info, args.run_dir)
                out.write(f"removed {info.id}\n")
        return 0
    try:
        lab = Lab.create(run_dir=args.run_dir, quic=not args.no_quic, nat66=not args.route_ipv6)
    except LabError as exc:
        sys.stderr.write(f"phonehome lab: {exc}\n")
        return 1
    with lab:
        out.write(json.dumps(lab.describe(), indent=2) + "\n")
        out.write(f"gateway shell: ip netns exec {lab.gw_ns} bash\n")
        if args.traffic:
            for r in play_demo_traffic(lab):
                out.write(
                    f"{r.server.get('proto')} {r.server.get('sni') or r.server.get('host')}: "
                    f"sent {r.sent}, server received {r.received} from {r.server_peer}\n"
                )
        out.flush()
        _wait_for_signal(args.hold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --- the sensor's view of the lab -------------------------------------------------------------

LAB_GEO = """\
# The lab's documentation ranges placed on the map (sensor.lab writes this file).
[[prefix]]
net = "203.0.113.0/24"
country = "CN"
asn = 64500
asn_org = "Lab network in China"

[[prefix]]
net = "2001:db8:203::/48"
country = "CN"
asn = 64500
asn_org = "Lab network in China"

[[prefix]]
net = "192.0.2.0/24"
country = "ID"
asn = 64502
asn_org = "Lab network at home"

[[prefix]]
net = "2001:db8:192::/48"
country = "ID"
asn = 64502
asn_org = "Lab network at home"
"""

LAB_AWS_RANGES = {
    "syncToken": "1700000000",
    "createDate": "2023-11-14-22-13-20",
    "prefixes": [
        {
            "ip_prefix": "198.51.100.0/24",
            "region": "ap-southeast-1",
            "service": "EC2",
            "network_border_group": "ap-southeast-1",
        }
    ],
    "ipv6_prefixes": [
        {
            "ipv6_prefix": "2001:db8:198::/48",
            "region": "ap-southeast-1",
            "service": "EC2",
            "network_border_group": "ap-southeast-1",
        }
    ],
}
"""198.51.100.0/24 as AWS Singapore, in AWS's own ip-ranges.json format."""


def write_sensor_fixture(state_dir: Path) -> Path:
    """Data for a sensor watching the lab: the geo overrides file (returned), and an AWS range
    file mapping the lab's 'Singapore' range to ap-southeast-1, imported into
    `<state_dir>/data/` the way a router without internet would (`update-data --from`)."""
    from sensor.enrich import datafiles

    inbox = state_dir / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "ip-ranges.json").write_text(json.dumps(LAB_AWS_RANGES))
    datafiles.update(state_dir, from_dir=inbox, sources=["aws"])
    overrides = state_dir / "lab-geo.toml"
    overrides.write_text(LAB_GEO)
    return overrides


def sensor_config(lab: Lab, state_dir: Path, extra: str = "") -> str:
    """A phonehome configuration for a daemon in the lab's gateway namespace."""
    overrides = write_sensor_fixture(state_dir)
    return (
        f'[site]\nhome_country = "ID"\nlan_networks = ["192.168.77.0/24", "fd00:77::/64"]\n'
        f'[paths]\nstate_dir = "{state_dir}"\n'
        f'[geo]\noverrides = "{overrides}"\n'
        f'[daemon]\ninterfaces = ["{lab.lan_bridge}"]\nallow_root = true\nuser = ""\n'
        f"conntrack_interval = 1.0\nsnapshot_interval = 0.5\n"
        # The lab's devices use the WAN resolver their resolv.conf names (no DHCP here): that
        # is the network's resolver, not a DNS bypass.
        f'[dns_bypass]\nallowed_resolvers = ["{lab.resolver.ipv4}", "{lab.resolver.ipv6}"]\n'
        f'[[devices]]\nmac = "{lab.devices["xiaomi"].mac}"\nname = "Redmi phone"\n'
        f'kind = "phone"\n' + extra
    )
