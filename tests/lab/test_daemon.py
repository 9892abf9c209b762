"""The live daemon on the lab gateway: real clients, real NAT, real conntrack, real systemd
notifications on a socket the test owns."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor.lab import SERVERS, Lab, post_leak, sensor_config
from sensor.lab.synth import DEMO_IMEI, LEAK_BODY


class Daemon:
    """`phonehome run` in the gateway namespace, with a NOTIFY_SOCKET we listen on."""

    def __init__(
        self, lab: Lab, tmp: Path, extra: str = "", edit: Callable[[str], str] | None = None
    ) -> None:
        self.lab = lab
        self.state = tmp / "state"
        self.state.mkdir()
        self.config = tmp / "phonehome.toml"
        text = sensor_config(lab, self.state, extra)
        self.config.write_text(edit(text) if edit else text)
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self.log = (tmp / "daemon.log").open("w+")
        env = dict(os.environ)
        env.update(NOTIFY_SOCKET=str(self.notify_path), WATCHDOG_USEC="1000000")
        env.pop("WATCHDOG_PID", None)
        self.proc = lab.gw_popen(
            [sys.executable, "-m", "sensor", "run", "--config", str(self.config)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.notify.recv(4096).decode())

    def wait_notify(self, prefix: str, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(m.startswith(prefix) or f"\n{prefix}" in m for m in self.messages):
                return
            assert self.proc.poll() is None, self.output()
            self.pump(0.2)
        raise AssertionError(f"no {prefix} from the daemon: {self.messages}\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def events(self) -> list[dict[str, Any]]:
        path = self.state / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def snapshot(self) -> dict[str, Any]:
        return json.loads((self.state / "flows.json").read_text())

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                got = check()
            except (FileNotFoundError, json.JSONDecodeError):
                got = None
            if got:
                return got
            assert self.proc.poll() is None, self.output()
            self.pump(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)  # stacks into the log, then kill
                time.sleep(1)
                self.proc.kill()
                self.proc.wait()
        self.pump(0.3)
        self.notify.close()
        return self.proc.returncode


DAEMON_ALERTS = "[alerts]\nforeign_upload_bytes = 5000000\nnew_party_learning = 0.0\n"


@pytest.fixture(scope="module")
def daemon(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # An older configuration's fixed threshold keeps working (foreign_upload is off unless
    # set); new_party_upload without its learning day, as for a device known for long.
    d = Daemon(lab, tmp_path_factory.mktemp("daemon"), DAEMON_ALERTS)
    try:
        d.wait_notify("READY=1")
        yield d
    finally:
        d.stop()


def _flow(snapshot: dict[str, Any], src: str, port: int) -> dict[str, Any] | None:
    for rec in snapshot["flows"] + snapshot["ended"]:
        if rec["src_ip"] == src and rec["src_port"] == port:
            return rec
    return None


def test_ready_status_and_watchdog(daemon: Daemon) -> None:
    daemon.pump(1.5)
    assert any("READY=1" in m for m in daemon.messages)
    assert any("STATUS=" in m for m in daemon.messages)
    # Pings come from the packet loop at half the interval (WATCHDOG_USEC = 1 s).
    assert sum(m == "WATCHDOG=1" for m in daemon.messages) >= 2


def test_leak_to_cn_raises_identifier_abroad(daemon: Daemon, lab: Lab) -> None:
    before = len(daemon.events())
    t0 = time.monotonic()
    r = post_leak(lab)
    assert r.status == 200
    alerts = daemon.wait_for(
        "identifier_abroad",
        lambda: [
            e
            for e in daemon.events()[before:]
            if e.get("type") == "alert"
            and e.get("rule") == "identifier_abroad"
            and e.get("identifier") == "imei"
        ],
        timeout=10.0,
    )
    print(f"\nalert {time.monotonic() - t0:.2f} s after the POST began")
    a = alerts[0]
    assert a["device_mac"] == lab.devices["xiaomi"].mac
    assert (a["dst_ip"], a["dst_port"], a["country"]) == ("203.0.113.10", 80, "CN")
    assert a["server_name"] == "api.account.xiaomi.com" and a["vendor"] == "Xiaomi"
    assert DEMO_IMEI not in json.dumps(daemon.events())


def test_same_imei_in_a_second_country_is_a_second_alert(daemon: Daemon, lab: Lab) -> None:
    """The IMEI in clear to Xiaomi in CN, then base64-encoded to Xiaomi's servers in AWS
    Singapore: the second is an alert of its own (jurisdiction is part of the alert's key),
    not a repeat of the first."""
    assert post_leak(lab).status == 200  # CN (a repeat if an earlier test sent it already)
    b64 = base64.b64encode(DEMO_IMEI.encode()).decode()
    r = lab.http_post("xiaomi", "data.mistat.xiaomi.com", path="/v1/s", body=f"d={b64}")
    assert r.status == 200

    def imei_alerts() -> dict[str, dict[str, Any]] | None:
        got = {
            e["country"]: e
            for e in daemon.events()
            if e.get("type") == "alert" and e.get("identifier") == "imei"
        }
        return got if {"CN", "SG"} <= set(got) else None

    got = daemon.wait_for("IMEI alerts for CN and SG", imei_alerts, timeout=10)
    sg = got["SG"]
    assert sg["rule"] == "identifier_abroad" and sg["encoding"] == "base64"
    assert (sg["vendor"], sg["provider"], sg["region"]) == ("Xiaomi", "aws", "ap-southeast-1")
    assert sg["dst_ip"] == "198.51.100.20" and got["CN"]["dst_ip"] == "203.0.113.10"
    assert sg["device_kind"] == "phone" and sg["device_mac"] == lab.devices["xiaomi"].mac
    assert DEMO_IMEI not in json.dumps(daemon.events())


def test_50mb_upload_counted_from_conntrack_and_foreign_upload(daemon: Daemon, lab: Lab) -> None:
    size = 50_000_000
    r = lab.tls_upload("xiaomi", "tracking.intl.miui.com", size)
    assert r.sent == size and r.server["received"] == size
    port = r.local_port
    assert port is not None

    def counted() -> dict[str, Any] | None:
        f = _flow(daemon.snapshot(), lab.devices["xiaomi"].ipv4, port)
        return f if f and f["bytes_up"] >= size else None

    f = daemon.wait_for("conntrack bytes", counted, timeout=10)
    # IP bytes include the IP and TCP headers of every packet (52 with timestamps); conntrack
    # counts GRO/TSO super-packets once, so the header share is small either way.
    payload = f["bytes_up"] - 52 * f["packets_up"]
    assert abs(payload - size) / size < 0.01, f
    assert f["server_name"] == "tracking.intl.miui.com" and f["name_source"] == "tls"
    assert (f["provider"], f["region"], f["country"]) == ("aws", "ap-southeast-1", "SG")
    assert f["device_mac"] == lab.devices["xiaomi"].mac
    fired = daemon.wait_for(
        "foreign_upload and new_party_upload",
        lambda: (lambda rules: rules if {"foreign_upload", "new_party_upload"} <= rules else None)(
            {e.get("rule") for e in daemon.events()}
        ),
        timeout=10,
    )
    assert fired


def test_ipv6_flows_are_attributed(daemon: Daemon, lab: Lab) -> None:
    r = lab.tls_upload("samsung", "api.samsungosp.com", 300_000, family=6)
    assert r.local and ":" in r.local
    port = r.local_port
    assert port is not None
    f = daemon.wait_for(
        "the IPv6 flow",
        lambda: (lambda x: x if x and x["bytes_up"] >= 300_000 else None)(
            _flow(daemon.snapshot(), lab.devices["samsung"].ipv6, port)
        ),
        timeout=10,
    )
    assert f["device_mac"] == lab.devices["samsung"].mac
    assert f["server_name"] == "api.samsungosp.com"
    assert f["country"] == "SG"


def test_survives_lan_interface_down_and_up(daemon: Daemon, lab: Lab) -> None:
    lab.gw_exec(["ip", "link", "set", lab.lan_bridge, "down"], check=True)
    daemon.pump(1.0)
    lab.gw_exec(["ip", "link", "set", lab.lan_bridge, "up"], check=True)
    time.sleep(1.0)  # the bridge forwards again once its ports are back
    assert daemon.proc.poll() is None
    before = len(daemon.events())
    lab.http_post(
        "xiaomi",
        "api.account.xiaomi.com",
        path="/v2/again",
        body=f"deviceid={DEMO_IMEI}&x=1",
        address="203.0.113.10",
    )
    # Suppressed as a repeat (same device, rule, vendor, kind), but seen: the stage counts it.
    daemon.pump(1.0)
    assert daemon.proc.poll() is None
    assert len(daemon.events()) >= before


def test_sighup_with_broken_config_keeps_running(daemon: Daemon) -> None:
    good = daemon.config.read_text()
    try:
        daemon.config.write_text(good + "\n[site]\nbogus = 1\n")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(
            "the reload error", lambda: "reload failed" in daemon.output(), timeout=10
        )
        assert daemon.proc.poll() is None
    finally:
        daemon.config.write_text(good)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("the reload", lambda: "reloaded" in daemon.output(), timeout=10)


def test_sigterm_stops_cleanly_with_event_log_intact(lab_usable: None, tmp_path: Path) -> None:
    with Lab.create(quic=False) as own:  # its own gateway: the module's daemon keeps running
        d = Daemon(own, tmp_path)
        try:
            d.wait_notify("READY=1")
            own.http_post("xiaomi", "api.account.xiaomi.com", path="/x", body=LEAK_BODY)
            d.wait_for("an alert", lambda: d.events(), timeout=10)
        finally:
            rc = d.stop()
        assert rc == 0, d.output()
        assert any("STOPPING=1" in m for m in d.messages)
        lines = (d.state / "events.jsonl").read_text().splitlines()
        assert lines and all(json.loads(x)["type"] in ("alert", "resolved") for x in lines)
        # The nftables table is gone with the daemon.
        out = own.gw_exec(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert "phonehome" not in out.replace("phonehome_lab", "")


def test_drops_to_user_with_two_capabilities(lab_usable: None, tmp_path: Path) -> None:
    from sensor import privileges

    user = "phonehome-test"
    if not privileges.user_exists(user):
        subprocess.run(["useradd", "--system", "--no-create-home", user], check=True)
    # Under /var/tmp, world-traversable: pytest's own tmp dirs are root's, mode 0700.
    base = Path(tempfile.mkdtemp(prefix="phonehome-drop-", dir="/var/tmp"))
    base.chmod(0o755)
    with Lab.create(quic=False) as own, _removed(base):
        d = Daemon(
            own,
            base,
            edit=lambda c: c.replace('user = ""', f'user = "{user}"').replace(
                "allow_root = true", "allow_root = false"
            ),
        )
        try:
            d.wait_notify("READY=1")
            status = Path(f"/proc/{d.proc.pid}/status").read_text()
            uid = int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])
            assert uid != 0
            cap_eff = privileges.effective_capabilities(d.proc.pid)
            assert cap_eff == privileges.KEEP, hex(cap_eff)
            # Still working after the drop: the packet source, conntrack, the event log.
            own.http_post("xiaomi", "api.account.xiaomi.com", path="/y", body=LEAK_BODY)
            d.wait_for("an alert", lambda: d.events(), timeout=10)
        finally:
            assert d.stop() == 0, d.output()


@contextlib.contextmanager
def _removed(path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_refuses_root_without_user(lab_usable: None, tmp_path: Path) -> None:
    with Lab.create(quic=False) as own:
        state = tmp_path / "state"
        state.mkdir()
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            sensor_config(own, state)
            .replace('user = ""', 'user = "no-such-user-here"')
            .replace("allow_root = true", "allow_root = false")
        )
        proc = own.gw_exec(
            [sys.executable, "-m", "sensor", "run", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 1
        assert "refusing to run as root" in proc.stderr


def test_scrambled_quic_first_flight_is_named(daemon: Daemon, lab: Lab) -> None:
    """A v1 ClientHello (aioquic's, 3 KB: many ALPNs and a big transport parameter) cut by a shim
    into shuffled CRYPTO fragments mixed with PING and PADDING over four datagrams, as Chrome
    does; the live daemon, through NFLOG's first-packets sampling, names the flow."""
    pytest.importorskip("aioquic")
    shim = Path(__file__).with_name("quicshim.py")
    sg = SERVERS[1].ipv4
    proc = lab.exec(
        "xiaomi",
        [lab.python, str(shim), "tracking.intl.miui.com", sg, "--seed", "7"],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stdout)
    assert sent["datagrams"] >= 3 and sent["hello_bytes"] > 1200
    # The real HTTP/3 server reassembled the scrambled stream too: it answered.
    assert sent["answered"], sent
    port = sent["local_port"]
    f = daemon.wait_for(
        "the scrambled QUIC flow named",
        lambda: (lambda x: x if x and x["server_name"] else None)(
            _flow(daemon.snapshot(), lab.devices["xiaomi"].ipv4, port)
        ),
        timeout=15,
    )
    assert (f["server_name"], f["name_source"]) == ("tracking.intl.miui.com", "quic")
    assert f["quic_version"] == "0x00000001"
    assert (f["dst_ip"], f["dst_port"]) == (sg, 443)
