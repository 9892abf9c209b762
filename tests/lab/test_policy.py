"""Per-device policy in the lab: the daemon's nftables table blocks one device's traffic to the
"CN" server while another device's passes, cuts an upload already running, follows DNS answers
for a domain rule, blocks an identifier_abroad pair after the alert, and leaves nothing behind
(also after kill -9, via the unit's ExecStopPost command). The owner's tables and the host's
own (root namespace) ruleset and conntrack table stay as they were."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor.daemon import RULES_CHECK
from sensor.lab import Lab, LabError, post_leak
from sensor.policy import POLICY_TABLE
from tests.lab.test_daemon import Daemon

LIVENESS = 10.0
CN4, CN6 = "203.0.113.10", "2001:db8:203::10"
SG4 = "198.51.100.20"
HOME4 = "192.0.2.80"
GW4 = "192.168.77.1"
XIAOMI4 = "192.168.77.23"
LAPTOP = "3c:22:fb:77:00:42"
REDMI = "64:09:80:77:00:23"
SAMSUNG = "8c:77:12:77:00:24"
LAB_ADDRESSES = ("203.0.113.", "198.51.100.", "192.0.2.", "192.168.77.", "2001:db8:", "fd00:77:")

POLICY = f"""\
[alerts]
suppress_window = 1.0
[policy]
resolvers = ["192.0.2.53", "2001:db8:192::53"]
abroad_expiry = 600
abroad_max = 2
[[policy.rules]]
name = "redmi-no-cn"
action = "block"
devices = ["Redmi phone"]
countries = ["CN"]
[[policy.rules]]
name = "samsung-cn-dry-run"
devices = ["{SAMSUNG}"]
countries = ["CN"]
[[policy.rules]]
name = "no-mistat"
action = "block"
devices = ["phone"]
domains = ["mistat.xiaomi.com"]
[[policy.rules]]
name = "after-a-leak"
action = "block"
devices = ["{SAMSUNG}"]
identifier_abroad = true
"""

# In the WAN namespace: accepts one TCP connection on port 9000 and writes the byte count it
# has received to the file argv[1] after every read.
SINK = r"""
import socket, sys
s = socket.create_server(("::", 9000), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
c, _ = s.accept()
n = 0
while True:
    try:
        b = c.recv(65536)
    except OSError:
        break
    if not b:
        break
    n += len(b)
    open(sys.argv[1], "w").write(str(n))
"""

# In the WAN namespace: a DNS server on the "Singapore" address that answers every A question
# with the home server's address.
ROGUE_DNS = r"""
import socket, dpkt
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.51.100.20", 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    q = dpkt.dns.DNS(data)
    q.op = dpkt.dns.DNS_RA | 0x8000
    q.rcode = dpkt.dns.DNS_RCODE_NOERR
    an = dpkt.dns.DNS.RR(name=q.qd[0].name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN, ttl=300)
    an.ip = socket.inet_aton("192.0.2.80")
    q.an = [an]
    s.sendto(bytes(q), peer)
"""

# Accepts TCP connections on argv[1]:argv[2] (a stand-in for a service such as SSH).
LISTEN = r"""
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""

# In a device namespace: sends 1 KiB every 20 ms to argv[1]:9000 until a send fails.
TRICKLE = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], 9000), timeout=5)
end = time.monotonic() + float(sys.argv[2])
try:
    while time.monotonic() < end:
        c.sendall(b"x" * 1024)
        time.sleep(0.02)
except OSError as exc:
    print("stopped:", type(exc).__name__, flush=True)
    sys.exit(0)
print("ran to the end", flush=True)
"""


def _root(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False).stdout


def _root_lab_conntrack() -> list[str]:
    lines = _root(["conntrack", "-L", "-o", "extended"]).splitlines()
    return [line for line in lines if any(a in line for a in LAB_ADDRESSES)]


@pytest.fixture(autouse=True)
def host_untouched() -> Iterator[None]:
    """The root namespace's ruleset is the same after the test, and its conntrack table holds
    none of the lab's addresses."""
    before = _root(["nft", "list", "ruleset"])
    yield
    assert _root(["nft", "list", "ruleset"]) == before
    assert _root_lab_conntrack() == []


@pytest.fixture(scope="module")
def owners_table(lab: Lab) -> str:
    return str(lab.gw_exec(["nft", "list", "table", "inet", "phonehome_lab"], check=True).stdout)


@pytest.fixture(scope="module")
def daemon(
    lab: Lab, owners_table: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    d = Daemon(lab, tmp_path_factory.mktemp("policy"), extra=POLICY)
    try:
        d.wait_notify("READY=1", timeout=30)
        yield d
    finally:
        if d.proc.poll() is None:
            d.stop()
        # Fail open: nothing of the policy is left, and the owner's table is as it was.
        assert not _table(lab)
        assert lab.gw_exec(["nft", "list", "table", "inet", "phonehome_lab"]).stdout == owners_table


def _table(lab: Lab) -> bool:
    return lab.gw_exec(["nft", "list", "table", "inet", POLICY_TABLE]).returncode == 0


def _set_elements(lab: Lab, name: str) -> str:
    return str(lab.gw_exec(["nft", "list", "set", "inet", POLICY_TABLE, name]).stdout)


def _counter(lab: Lab, name: str) -> int:
    out = lab.gw_exec(["nft", "list", "counter", "inet", POLICY_TABLE, name]).stdout
    words = out.split()
    return int(words[words.index("packets") + 1]) if "packets" in words else 0


def _blocked(lab: Lab, device: str, address: str) -> bool:
    try:
        lab.http_post(device, "api.account.xiaomi.com", address=address)
    except LabError:
        return True
    return False


def _events(daemon: Daemon, rule: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("type") == "alert" and e.get("rule") == rule]


def test_one_device_blocked_from_cn_the_other_not(lab: Lab, daemon: Daemon) -> None:
    assert _table(lab)
    for address in (CN4, CN6):
        assert _blocked(lab, "xiaomi", address), address
        assert not _blocked(lab, "samsung", address), address
        assert not _blocked(lab, "laptop", address), address
    # Elsewhere the Redmi goes on as before.
    assert lab.http_post("xiaomi", "www.example.com").status == 200
    assert _counter(lab, "r0_d0") > 0
    assert _counter(lab, "r1_d1") > 0  # the Samsung's dry run counted, and let through
    daemon.wait_for("a policy_block event", lambda: _events(daemon, "policy_block"), LIVENESS)
    would = daemon.wait_for(
        "a policy_would_block event", lambda: _events(daemon, "policy_would_block"), LIVENESS
    )
    assert SAMSUNG in str(would[0]), would[0]


def test_a_domain_rule_cuts_an_upload_already_running(
    lab: Lab, daemon: Daemon, tmp_path: Path
) -> None:
    count = tmp_path / "received"
    sink = lab.ns_popen(
        lab.wan_ns, [sys.executable, "-c", SINK, str(count)], stdout=subprocess.PIPE, text=True
    )
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    # The Redmi uploads to the "Singapore" address before any rule names it.
    client = lab.popen(
        "xiaomi", [sys.executable, "-c", TRICKLE, SG4, "60"], stdout=subprocess.PIPE, text=True
    )
    start = time.monotonic()
    while not count.exists() or int(count.read_text() or 0) < 20_000:
        assert time.monotonic() - start < LIVENESS, "the upload did not start"
        time.sleep(0.1)
    assert SG4 not in _set_elements(lab, "r2_dns_4")
    # Now it looks the name up (through the lab resolver): the answer fills the domain set.
    assert SG4 in lab.resolve("xiaomi", "data.mistat.xiaomi.com", 4)
    daemon.wait_for(
        "the answer in the domain set", lambda: SG4 in _set_elements(lab, "r2_dns_4"), LIVENESS
    )
    out, _ = client.communicate(timeout=LIVENESS + 5)
    assert out.startswith("stopped:"), out  # the reset reached the client: the upload ended
    stopped_at = int(count.read_text())
    time.sleep(1.0)
    assert int(count.read_text()) == stopped_at
    sink.kill()
    sink.wait()
    # Another device's traffic to the same address is not the rule's business.
    assert lab.http_post("laptop", "data.mistat.xiaomi.com").status == 200


def test_answers_from_another_resolver_do_not_steer_the_sets(lab: Lab, daemon: Daemon) -> None:
    """A device asking a resolver of its own cannot put addresses into a domain set: a rogue
    server on the "Singapore" address answers data.mistat.xiaomi.com with the home server's
    address; the daemon sees the answer (it names the rule's domain) and ignores it."""
    rogue = lab.ns_popen(
        lab.wan_ns, [sys.executable, "-c", ROGUE_DNS], stdout=subprocess.PIPE, text=True
    )
    try:
        assert rogue.stdout is not None and rogue.stdout.readline().strip() == "ready"
        reply = lab.dns_query("laptop", "data.mistat.xiaomi.com", server=SG4)
        assert ("A", HOME4) in reply.answers
        # The trusted resolver's answer after it: once that is in the set, the rogue one
        # (seen earlier, same flow direction) has been handled too.
        lab.dns_query("laptop", "data.mistat.xiaomi.com")
        daemon.wait_for(
            "the trusted answer", lambda: SG4 in _set_elements(lab, "r2_dns_4"), LIVENESS
        )
        assert HOME4 not in _set_elements(lab, "r2_dns_4")
        assert not _blocked(lab, "xiaomi", HOME4)
    finally:
        rogue.kill()
        rogue.wait()


def test_identifier_abroad_blocks_that_pair_after_the_alert(lab: Lab, daemon: Daemon) -> None:
    wall = time.time()
    assert post_leak(lab, "samsung").status == 200
    daemon.wait_for(
        "identifier_abroad",
        lambda: [e for e in _events(daemon, "identifier_abroad") if e.get("ts", 0) >= wall - 1],
        LIVENESS,
    )
    daemon.wait_for(
        "the pair in the abroad set",
        lambda: "192.168.77.24 . 203.0.113.10" in _set_elements(lab, "r3_abroad_4"),
        LIVENESS,
    )
    assert "timeout 10m" in _set_elements(lab, "r3_abroad_4")
    assert _blocked(lab, "samsung", CN4)
    assert not _blocked(lab, "laptop", CN4)  # the pair, not the destination


def test_a_firewall_reload_puts_the_policy_back(
    lab: Lab, daemon: Daemon, owners_table: str
) -> None:
    """The owner's `nft -f` with `flush ruleset` (a restart of nftables.service) takes the
    policy table with it; the daemon loads it again, and the Redmi is blocked again."""
    reload = "flush ruleset\n" + owners_table
    lab.gw_exec(["nft", "-f", "-"], input=reload, text=True, check=True)
    assert not _table(lab)
    daemon.wait_for("the policy table back", lambda: _table(lab), RULES_CHECK + LIVENESS)
    assert _blocked(lab, "xiaomi", CN4)
    assert not _blocked(lab, "laptop", CN4)
    # Dynamic elements come back too: the earlier identifier_abroad block, the DNS answers.
    assert "192.168.77.24 . 203.0.113.10" in _set_elements(lab, "r3_abroad_4")
    assert SG4 in _set_elements(lab, "r2_dns_4")


def _connects(lab: Lab, device: str, address: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout=3).close()"
    return lab.exec(device, [sys.executable, "-c", code], timeout=30).returncode == 0


def test_quarantine_by_reload_keeps_lan_and_gateway_only(lab: Lab, daemon: Daemon) -> None:
    """SIGHUP with a quarantine rule for the laptop: it keeps the gateway's own services (a
    listener on the gateway's LAN address, as SSH would be) and the LAN (another device), and
    loses everything beyond. A second SIGHUP without the rule gives it back."""
    listeners = [
        lab.gw_popen(
            [sys.executable, "-c", LISTEN, GW4, "2222"], stdout=subprocess.PIPE, text=True
        ),
        lab.popen(
            "xiaomi",
            [sys.executable, "-c", LISTEN, XIAOMI4, "2223"],
            stdout=subprocess.PIPE,
            text=True,
        ),
    ]
    original = daemon.config.read_text()
    try:
        for proc in listeners:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        # Where br_netfilter is loaded, bridged frames pass the forward hook too, and the lab's
        # own firewall (forward policy drop) decides about LAN-to-LAN: the quarantine must
        # leave that as it was.
        lan_before = _connects(lab, "laptop", XIAOMI4, 2223)
        quarantine = '[[policy.rules]]\nname = "laptop-quarantine"\naction = "quarantine"\n'
        daemon.config.write_text(original + quarantine + f'devices = ["{LAPTOP}"]\n')
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(
            "the quarantine rule loaded",
            lambda: (
                "r4_d"
                in lab.gw_exec(["nft", "list", "counters", "table", "inet", POLICY_TABLE]).stdout
            ),
            LIVENESS,
        )
        assert _connects(lab, "laptop", GW4, 2222)  # the gateway's own service
        assert _connects(lab, "laptop", XIAOMI4, 2223) == lan_before  # the LAN
        assert _blocked(lab, "laptop", HOME4)  # nothing beyond
        assert not _blocked(lab, "samsung", HOME4)
        daemon.config.write_text(original)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("the laptop released", lambda: not _blocked(lab, "laptop", HOME4), LIVENESS)
    finally:
        daemon.config.write_text(original)
        for proc in listeners:
            proc.kill()
            proc.wait()


def test_kill_9_then_the_units_cleanup_leaves_nothing(
    lab: Lab, daemon: Daemon, tmp_path: Path
) -> None:
    """A second daemon (the same policy) killed with SIGKILL cannot remove its table; the
    unit's ExecStopPost command (`phonehome policy clear`) does."""
    daemon.stop()  # one daemon at a time (one NFLOG group)
    assert not _table(lab)
    d = Daemon(lab, tmp_path, extra=POLICY)
    try:
        d.wait_notify("READY=1", timeout=30)
        assert _table(lab)
        d.proc.kill()
        d.proc.wait(LIVENESS)
        assert _table(lab)  # a crash leaves it: the clean-up is the unit's job
        # Even with the file edited into an invalid state since the start: fail open.
        d.config.write_text(d.config.read_text() + "\n[policy.bogus]\n")
        done = lab.gw_exec(
            [sys.executable, "-m", "sensor", "policy", "clear", "--config", str(d.config)]
        )
        assert done.returncode == 0, done.stderr
        assert not _table(lab)
        assert not _blocked(lab, "xiaomi", CN4)
    finally:
        d.stop()
        lab.gw_exec(["nft", "delete", "table", "inet", "phonehome"])  # the capture table


def test_fail_closed_keeps_the_rules_after_stop(lab: Lab, daemon: Daemon, tmp_path: Path) -> None:
    """policy.fail = "closed": the block rules outlive the daemon (and the unit's clean-up);
    only `phonehome policy clear --force` removes them."""
    if daemon.proc.poll() is None:
        daemon.stop()
    d = Daemon(lab, tmp_path, extra=POLICY.replace("[policy]\n", '[policy]\nfail = "closed"\n'))
    try:
        d.wait_notify("READY=1", timeout=30)
        assert d.stop() == 0
        assert _table(lab)
        assert _blocked(lab, "xiaomi", CN4)
        clear = [sys.executable, "-m", "sensor", "policy", "clear", "--config", str(d.config)]
        assert lab.gw_exec(clear).returncode == 0
        assert _table(lab)
        assert lab.gw_exec([*clear, "--force"]).returncode == 0
        assert not _table(lab)
    finally:
        if d.proc.poll() is None:
            d.stop()
        lab.gw_exec(["nft", "delete", "table", "inet", POLICY_TABLE])
