"""The systemd units and the Debian package (packaging/).

Fast checks of the unit files run wherever systemd-analyze is installed. The tests marked `deb`
build the package (packaging/build-deb.sh), lint it, install it into a throwaway Debian 12 root
(mmdebstrap: minbase plus the package's Depends, from the Debian mirror), run `phonehome check`
and `analyze` there, boot that root under systemd (systemd-nspawn) to run the service in its
real sandbox, and purge the package. They need root, the Debian mirror and about 2-3 minutes.

Without a prerequisite (root, a tool) a test is skipped; PHONEHOME_DEB_TEST=require turns those
skips into failures (CI). PHONEHOME_DEBIAN_MIRROR overrides the mirror.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import sensor

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
UNITS = ("phonehome.service", "phonehome-update-data.service", "phonehome-update-data.timer")
SERVICES = ("phonehome.service", "phonehome-update-data.service")
MAX_EXPOSURE = 2.5
CONFIG = "/etc/phonehome/phonehome.toml"
PREFIX = "/opt/phonehome"
MIRROR = os.environ.get("PHONEHOME_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Host executables the units name besides our own, provided by Depends (procps, systemd).
HOST_EXECUTABLES = ("bin/kill", "bin/systemctl")

deb = pytest.mark.deb


def _run(
    argv: Sequence[str], *, timeout: float = 120, check: bool = False, **kw: object
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[call-overload]
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc  # type: ignore[no-any-return]


def _need(ok: bool, why: str, *, deb_test: bool = False) -> None:
    if ok:
        return
    if deb_test and os.environ.get("PHONEHOME_DEB_TEST") == "require":
        pytest.fail(f"prerequisite missing (PHONEHOME_DEB_TEST=require): {why}")
    pytest.skip(why)


def _need_tools(*tools: str, deb_test: bool = False) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    _need(not missing, f"not installed: {', '.join(missing)}", deb_test=deb_test)


def _need_root(deb_test: bool = False) -> None:
    _need(os.geteuid() == 0, "needs root", deb_test=deb_test)


def _unit_root(tmp: Path, tree: Path | None = None) -> Path:
    """A root directory for `systemd-analyze verify --root`: the host's unit files (for the
    targets ours name), ours on top, and stand-ins for the executables the units name."""
    root = tmp / "unitroot"
    (root / "lib/systemd").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    if tree is not None:  # an unpacked package: its own units and /usr/bin/phonehome
        shutil.copytree(tree, root, symlinks=True, dirs_exist_ok=True)
        stubs: tuple[str, ...] = HOST_EXECUTABLES
    else:
        for unit in UNITS:
            shutil.copy(PACKAGING / unit, root / "lib/systemd/system" / unit)
        stubs = (*HOST_EXECUTABLES, "usr/bin/phonehome")
    for rel in stubs:
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\n")
            path.chmod(0o755)
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    units = [str(root / "lib/systemd/system" / u) for u in UNITS]
    return _run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *units])


def _exposure(unit: Path, root: Path) -> float:
    proc = _run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", str(unit)]
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, f"no exposure level in:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return float(m.group(1))


def _unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# --- the unit files (fast) -----------------------------------------------------------------------


def test_units_verify_clean(tmp_path: Path) -> None:
    _need_tools("systemd-analyze")
    proc = _verify(_unit_root(tmp_path))
    # Warnings leave the exit status 0; any output at all is a finding.
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), (
        proc.stdout + proc.stderr
    )


def test_verify_reports_problems(tmp_path: Path) -> None:
    """The check above can fail: an unknown key and a missing binary are reported."""
    _need_tools("systemd-analyze")
    root = _unit_root(tmp_path)
    (root / "usr/bin/phonehome").unlink()
    unit = root / "lib/systemd/system/phonehome.service"
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nNoSuchKey=1\n"))
    proc = _verify(root)
    assert "NoSuchKey" in proc.stderr
    assert "/usr/bin/phonehome" in proc.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_service_exposure(service: str, tmp_path: Path) -> None:
    _need_tools("systemd-analyze")
    root = _unit_root(tmp_path)
    level = _exposure(root / "lib/systemd/system" / service, root)
    assert level <= MAX_EXPOSURE, f"{service}: exposure {level} > {MAX_EXPOSURE}"


def test_sensor_unit_sandbox() -> None:
    """What the daemon needs and no more: the two capabilities, the five address families."""
    s = _unit_settings(PACKAGING / "phonehome.service")
    assert s["Type"] == ["notify"]
    assert s["User"] == ["phonehome"]
    assert s["ExecStart"][0].startswith("/usr/bin/phonehome run ")
    caps = {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(s["AmbientCapabilities"][0].split()) == caps
    assert set(s["CapabilityBoundingSet"][0].split()) == caps
    assert set(s["RestrictAddressFamilies"][0].split()) == {
        "AF_PACKET",
        "AF_NETLINK",
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "Restart": "on-failure",
    }.items():
        assert s[key] == [value], key
    for key in (
        "WatchdogSec",
        "MemoryMax",
        "SystemCallFilter",
        "StateDirectory",
        "ConfigurationDirectory",
        "LogsDirectory",
    ):
        assert key in s, key
    # /proc/sys must stay visible (read-only): the daemon reads nf_conntrack_acct there.
    assert "ProcSubset" not in s


def test_update_unit_and_timer(tmp_path: Path) -> None:
    _need_tools("systemd-analyze")
    svc = _unit_settings(PACKAGING / "phonehome-update-data.service")
    assert svc["Type"] == ["oneshot"] and svc["User"] == ["phonehome"]
    assert svc["CapabilityBoundingSet"] == [""]
    assert {"AF_INET", "AF_INET6"} <= set(svc["RestrictAddressFamilies"][0].split())
    timer = _unit_settings(PACKAGING / "phonehome-update-data.timer")
    assert timer["Persistent"] == ["true"]
    assert "RandomizedDelaySec" in timer
    (calendar,) = timer["OnCalendar"]
    proc = _run(["systemd-analyze", "calendar", calendar])
    assert proc.returncode == 0, proc.stderr
    assert "Next elapse:" in proc.stdout, proc.stdout


def test_sysctl_file_turns_accounting_on() -> None:
    """systemd-sysctl applies the file (in a network namespace of its own: the host's stays)."""
    _need_root()
    _need_tools("unshare")
    _need(Path("/lib/systemd/systemd-sysctl").exists(), "no systemd-sysctl")
    conf = PACKAGING / "phonehome-sysctl.conf"
    script = (
        "echo 0 > /proc/sys/net/netfilter/nf_conntrack_acct || exit 77; "
        f"/lib/systemd/systemd-sysctl {conf} && cat /proc/sys/net/netfilter/nf_conntrack_acct"
    )
    proc = _run(["unshare", "--net", "sh", "-c", script])
    _need(proc.returncode != 77, "no conntrack in this kernel")
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert proc.stdout.strip() == "1"


def test_maintainer_scripts_parse() -> None:
    for script in ("postinst", "prerm", "postrm"):
        proc = _run(["sh", "-n", str(PACKAGING / "deb" / script)])
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


# --- the Debian package (slow) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def deb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need_root(deb_test=True)
    _need_tools("dpkg-deb", "python3.11", "gcc", "strip", deb_test=True)
    out = tmp_path_factory.mktemp("deb")
    started = time.monotonic()
    proc = _run([str(PACKAGING / "build-deb.sh"), str(out)], timeout=900, check=True)
    debs = list(out.glob("phonehome_*.deb"))
    assert len(debs) == 1, proc.stdout + proc.stderr
    print(f"deb built in {time.monotonic() - started:.0f} s: {debs[0].stat().st_size} bytes")
    return debs[0]


def _listing(deb_path: Path) -> dict[str, str]:
    """path -> mode string, from `dpkg-deb -c`."""
    out = _run(["dpkg-deb", "-c", str(deb_path)], check=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split(None, 5)
        path = fields[5].split(" -> ")[0]
        entries[path.removeprefix(".")] = fields[0]
    return entries


@deb
def test_deb_contents(deb_file: Path) -> None:
    entries = _listing(deb_file)
    expected = [
        "/usr/bin/phonehome",
        *(f"/lib/systemd/system/{u}" for u in UNITS),
        "/usr/lib/sysctl.d/phonehome.conf",
        "/usr/lib/modules-load.d/phonehome.conf",
        "/usr/share/phonehome/phonehome.toml.example",
        "/usr/share/doc/phonehome/README.md.gz",
        "/usr/share/doc/phonehome/NEWS.Debian.gz",
        "/usr/share/doc/phonehome/copyright",
        "/usr/share/doc/phonehome/changelog.gz",
        "/usr/share/man/man1/phonehome.1.gz",
        f"{PREFIX}/bin/python3",
        f"{PREFIX}/pyvenv.cfg",
        f"{PREFIX}/lib/python3.11/site-packages/sensor/cli.py",
        f"{PREFIX}/lib/python3.11/site-packages/sensor/data/vendors.toml",
        # every mapping table (sensor/data/*.toml) ships with the code that reads it
        *(
            f"{PREFIX}/lib/python3.11/site-packages/sensor/data/{f.name}"
            for f in sorted((REPO / "sensor" / "data").glob("*.toml"))
        ),
    ]
    # Rules and dashboards: whatever the tree holds at build time.
    for part in ("prometheus", "grafana", "fleet"):
        src = REPO / "etc" / part
        if src.is_dir():
            expected += [
                f"/usr/share/phonehome/{part}/{f.relative_to(src)}"
                for f in src.rglob("*")
                if f.is_file() and f.suffix != ".py" and "__pycache__" not in f.parts
            ]
    missing = [p for p in expected if p not in entries]
    assert not missing, f"missing from the package: {missing}"
    assert entries["/usr/bin/phonehome"] == "-rwxr-xr-x"
    assert not [p for p in entries if "__pycache__" in p or p.endswith(".pyc")]
    info = _run(["dpkg-deb", "-f", str(deb_file), "Depends"], check=True).stdout
    for dep in ("python3.11", "nftables", "adduser", "libsystemd0"):
        assert dep in info, info
    # The configuration is the owner's file, made by postinst when missing: not a conffile,
    # which an upgrade would replace (and the example sets no home country).
    assert CONFIG not in entries
    assert _run(["dpkg-deb", "-I", str(deb_file), "conffiles"]).returncode != 0
    assert deb_file.stat().st_size < 30 << 20, "the package grew past 30 MB"


@deb
def test_deb_lintian(deb_file: Path) -> None:
    _need_tools("lintian", deb_test=True)
    proc = _run(["lintian", "--tag-display-limit", "0", str(deb_file)], timeout=300)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert not errors, "\n".join(errors)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@deb
def test_deb_units_verify(deb_file: Path, tmp_path: Path) -> None:
    """The units as packaged, against the package's own /usr/bin/phonehome."""
    _need_tools("systemd-analyze", deb_test=True)
    tree = tmp_path / "tree"
    _run(["dpkg-deb", "-x", str(deb_file), str(tree)], check=True)
    root = _unit_root(tmp_path, tree)
    proc = _verify(root)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stdout + proc.stderr
    for service in SERVICES:
        assert _exposure(root / "lib/systemd/system" / service, root) <= MAX_EXPOSURE


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


@pytest.fixture(scope="module")
def installed_root(deb_file: Path) -> Iterator[Path]:
    """Debian 12 minbase + the package (apt resolves its Depends) + systemd to boot it."""
    _need_tools("mmdebstrap", "unshare", "ip", deb_test=True)
    # Under the build directory, removed afterwards: nothing is cached between runs.
    base = REPO / "build" / "deb-test"
    base.mkdir(parents=True, exist_ok=True)
    root = base / f"root-{os.getpid()}"
    started = time.monotonic()
    try:
        _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount",
                f"--include=systemd,iproute2,{deb_file}",
                "bookworm",
                str(root),
                MIRROR,
            ],
            timeout=600,
            check=True,
        )
        print(f"root installed in {time.monotonic() - started:.0f} s")
        yield root
    finally:
        left = _mounts_under(root)
        assert not left, f"still mounted, {root} kept: {left}"
        shutil.rmtree(root, ignore_errors=True)


def _in_root(
    root: Path, script: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`script` (sh) in a network and mount namespace of its own, with /proc mounted in the
    root and a LAN-side interface lan0 (192.168.77.1/24): the host stays untouched. $1 is the
    root; further arguments follow."""
    prologue = (
        "set -e; R=$1; "
        "ip link add lan0 type veth peer name lan0p; "
        "ip addr add 192.168.77.1/24 dev lan0; ip link set lan0 up; ip link set lo up; "
        'mount -t proc proc "$R/proc"; set +e; '
    )
    return _run(
        [
            "unshare",
            "--net",
            "--mount",
            "--fork",
            "sh",
            "-c",
            prologue + script,
            "sh",
            str(root),
            *args,
        ],
        timeout=timeout,
    )


def _with_home(example: str, country: str) -> str:
    """The example configuration as an owner edits it: the home country set."""
    commented = '# home_country = "DE"\n'
    assert commented in example
    return example.replace(commented, f'home_country = "{country}"\n')


@deb
def test_fresh_install(installed_root: Path) -> None:
    """postinst made the user, the state directory and the bytecode, and left the service off;
    `phonehome check` then accepts the example configuration."""
    root = installed_root
    passwd = (root / "etc/passwd").read_text()
    m = re.search(
        r"^phonehome:x:(\d+):(\d+):[^:]*:/var/lib/phonehome:/usr/sbin/nologin$", passwd, re.M
    )
    assert m, passwd
    uid = int(m.group(1))
    state = (root / "var/lib/phonehome").stat()
    assert state.st_uid == uid and state.st_mode & 0o777 == 0o700
    conf = (root / CONFIG.lstrip("/")).stat()
    assert conf.st_mode & 0o777 == 0o640 and conf.st_uid == 0
    assert list((root / PREFIX.lstrip("/")).rglob("sensor/__pycache__/cli.*.pyc"))
    assert not (root / "etc/systemd/system/multi-user.target.wants/phonehome.service").exists()

    # The example sets no home country: check refuses, saying how.
    example = (root / "usr/share/phonehome/phonehome.toml.example").read_text()
    assert (root / CONFIG.lstrip("/")).read_text() == example
    proc = _in_root(root, f'chroot "$R" phonehome check --config {CONFIG}')
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"config: INVALID: {CONFIG}: site.home_country: not set")
    assert f"under [site] in {CONFIG}" in proc.stdout
    (root / CONFIG.lstrip("/")).write_text(_with_home(example, "ID"))

    proc = _in_root(root, f'chroot "$R" phonehome check --config {CONFIG}')
    out = proc.stdout
    # A fresh install, on a host with a LAN interface and conntrack accounting still off in
    # this namespace: a valid configuration, no data yet, packet capture, nothing wrong.
    assert proc.returncode == 0, out + proc.stderr
    for line in (
        f"config: {CONFIG}: valid",
        "home country: ID",
        "state directory: /var/lib/phonehome (present)",
        "  cloud ranges: none yet (run `phonehome update-data`)",
        "  cloud: none (0 prefixes)",
        "interfaces: lan0",
        "conntrack accounting: OFF (enable net.netfilter.nf_conntrack_acct=1)",
        "would run: capture packet, accounting capture",
        "result: OK",
    ):
        assert line in out.splitlines(), f"{line!r} not in:\n{out}"
    assert "  geo: embedded" in out
    assert "error" not in out.lower(), out
    assert not proc.stderr.strip(), proc.stderr


@deb
def test_installed_runs_as_service_user(installed_root: Path) -> None:
    """The private environment works from its final path for the unprivileged user: every
    compiled dependency imports, and `analyze` reads a capture."""
    root = installed_root
    from sensor.lab.synth import write_sample

    write_sample(str(root / "tmp/home.pcap"))
    (root / "tmp/home.pcap").chmod(0o644)
    (root / "tmp/analyze.toml").write_text('[paths]\nstate_dir = "/tmp/no-state"\n')
    as_user = 'chroot "$R" setpriv --reuid=phonehome --regid=phonehome --clear-groups '
    imports = (
        "import cryptography.hazmat.bindings._rust, ahocorasick_rs, maxminddb.extension, "
        "systemd.journal, pyroute2, dpkt, phonenumbers, netaddr, geoip2fast, publicsuffixlist"
    )
    proc = _in_root(root, as_user + f'{PREFIX}/bin/python3 -I -c "{imports}"')
    assert proc.returncode == 0, proc.stderr
    proc = _in_root(root, as_user + "phonehome --version")
    assert proc.stdout.strip() == f"phonehome {sensor.__version__}", proc.stdout + proc.stderr
    proc = _in_root(
        root, as_user + "phonehome analyze --json --config /tmp/analyze.toml /tmp/home.pcap"
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    stats = [r for r in records if r["type"] == "stats"]
    assert stats and stats[0]["flows"] > 0 and stats[0]["packets_read"] > 0
    assert any(r["type"] == "device" for r in records)


# The container's side of test_service_under_systemd: a LAN interface before the sensor
# starts, then a script that exercises the units and powers the container off.
_LAN_UNIT = """\
[Unit]
Description=test: LAN interface and conntrack accounting
DefaultDependencies=no
Before=network-online.target phonehome.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -e /usr/local/sbin/phonehome-lan
[Install]
WantedBy=multi-user.target
"""
# lan0 is the gateway's LAN side; its peer sits in namespace "device" as 192.168.77.2.
_LAN = """\
#!/bin/sh
ip netns add device
ip link add lan0 type veth peer name lan0p netns device
ip addr add 192.168.77.1/24 dev lan0
ip link set lan0 up
ip link set lo up
ip -n device addr add 192.168.77.2/24 dev lan0p
ip -n device link set lan0p up
cat /etc/phonehome-test-acct > /proc/sys/net/netfilter/nf_conntrack_acct
"""
_PROBE_UNIT = """\
[Unit]
Description=test: exercise the phonehome units
After=multi-user.target phonehome.service
[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/sbin/phonehome-probe
[Install]
WantedBy=multi-user.target
"""
_PROBE = """\
#!/bin/sh
# Writes KEY=VALUE lines, then the journal, to /results/out.txt; then powers off.
exec >/results/out.txt 2>&1
show() { systemctl show "$1" -p "$2" --value; }
wait_started() {
  for i in $(seq 80); do
    case $(systemctl is-active phonehome.service) in active|failed) return ;; esac
    sleep 0.25
  done
}
wait_started
sleep 2
echo "state=$(show phonehome.service ActiveState)/$(show phonehome.service SubState)"
echo "restarts=$(show phonehome.service NRestarts)"
echo "status=$(show phonehome.service StatusText)"
pid=$(show phonehome.service MainPID)
echo "user=$(stat -c %U /proc/$pid)"
echo "capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/$pid/status)"
echo "table_running=$(nft list tables | grep -c 'inet phonehome')"
# The device asks the gateway's DNS: a packet both capture modes hand to the sensor, which
# counts a flow in its next snapshot (every 5 s).
ip netns exec device @PYTHON@ -I /usr/local/sbin/phonehome-ask-dns
flows() { @PYTHON@ -I /usr/local/sbin/phonehome-flows; }
for i in $(seq 60); do [ "$(flows)" -gt 0 ] && break; sleep 0.25; done
echo "flows=$(flows)"
echo "metrics=$(@PYTHON@ -I /usr/local/sbin/phonehome-scrape)"
# SIGHUP only sets a flag the loop reads within half a second: wait for each reload's log
# line (two HUPs in one such interval make one reload).
reloads() { journalctl -b -o cat -u phonehome.service | grep -c 'configuration and data reloaded'; }
wait_reloads() {
  for i in $(seq 40); do [ "$(reloads)" -ge "$1" ] && return 0; sleep 0.25; done; return 1
}
systemctl reload phonehome.service; echo "reload_rc=$?"
wait_reloads 1; echo "reloaded=$?"
systemctl start phonehome-update-data.service; echo "update_rc=$?"
wait_reloads 2; echo "reloaded_after_update=$?"
echo "data_owner=$(stat -c %U /var/lib/phonehome/data/manifest.json)"
echo "state_after_update=$(show phonehome.service ActiveState)"
# An upgrade (the same package again): prerm stops the sensor, postinst applies the sysctl
# file and starts the enabled sensor again.
dpkg -i /root/phonehome.deb >/tmp/dpkg.log 2>&1; echo "reinstall_rc=$?"
wait_started
echo "state_after_reinstall=$(show phonehome.service ActiveState)"
echo "acct_after_reinstall=$(cat /proc/sys/net/netfilter/nf_conntrack_acct)"
systemctl start phonehome-update-data.timer
echo "timer_next=$(show phonehome-update-data.timer NextElapseUSecRealtime)"
systemctl stop phonehome.service
echo "stop_result=$(show phonehome.service Result)"
echo "table_stopped=$(nft list tables | grep -c 'inet phonehome')"
echo "--- journal"
journalctl --no-pager -b -o cat -u phonehome.service -u phonehome-update-data.service
cat /tmp/dpkg.log
systemctl poweroff
""".replace("@PYTHON@", f"{PREFIX}/bin/python3")
_ASK_DNS = """\
import socket
import struct

query = struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + b"\\7example\\3com\\0"
query += struct.pack("!2H", 1, 1)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for _ in range(3):
        s.sendto(query, ("192.168.77.1", 53))
"""
_FLOWS = """\
import json

try:
    with open("/var/lib/phonehome/flows.json") as fh:
        print(json.load(fh)["stats"]["flows"])
except (OSError, ValueError, KeyError):
    print(0)
"""
_SCRAPE = """\
import urllib.request

try:
    with urllib.request.urlopen("http://127.0.0.1:14663/metrics", timeout=5) as r:
        body = r.read().decode()
    print(sum(1 for line in body.splitlines() if line.startswith("phonehome_")))
except Exception as exc:
    print(f"error: {exc!r}")
"""
# update-data without the internet: the same unit, importing from a folder.
_UPDATE_DROPIN = """\
[Service]
ExecStart=
ExecStart=/usr/bin/phonehome update-data --config /etc/phonehome/phonehome.toml \
--from /srv/phonehome-data
"""


def _prepare_boot(root: Path, deb_path: Path, acct: int, capture: str) -> None:
    # The admin's configuration: the example, with the capture mode fixed for the packet test
    # (postinst turns accounting on during the reinstall, and auto would then pick nflog).
    conf = root / CONFIG.lstrip("/")
    example = _with_home((REPO / "etc/phonehome.toml").read_text(), "ID")
    if capture == "packet":
        example += '\n[daemon]\naccounting = "capture"\ncapture = "packet"\n'
    conf.write_text(example)
    shutil.copy(deb_path, root / "root/phonehome.deb")
    system = root / "etc/systemd/system"
    (system / "phonehome-lan.service").write_text(_LAN_UNIT)
    (system / "phonehome-probe.service").write_text(_PROBE_UNIT)
    dropin = system / "phonehome-update-data.service.d"
    dropin.mkdir(exist_ok=True)
    (dropin / "test.conf").write_text(_UPDATE_DROPIN)
    sbin = root / "usr/local/sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    (sbin / "phonehome-probe").write_text(_PROBE)
    (sbin / "phonehome-lan").write_text(_LAN)
    (sbin / "phonehome-ask-dns").write_text(_ASK_DNS)
    (sbin / "phonehome-flows").write_text(_FLOWS)
    (sbin / "phonehome-scrape").write_text(_SCRAPE)
    data = root / "srv/phonehome-data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "ips-v4").write_text("173.245.48.0/20\n103.21.244.0/22\n104.16.0.0/13\n")
    (data / "ips-v6").write_text("2400:cb00::/32\n2606:4700::/32\n")
    (root / "etc/phonehome-test-acct").write_text(f"{acct}\n")
    # What the admin does after configuring: enable the sensor.
    _run(
        [
            "chroot",
            str(root),
            "systemctl",
            "enable",
            "phonehome.service",
            "phonehome-lan.service",
            "phonehome-probe.service",
        ],
        check=True,
    )


@deb
@pytest.mark.parametrize(
    ("acct", "capture"),
    [(1, "nflog"), (0, "packet")],
    ids=["conntrack-nflog", "capture-packet"],
)
def test_service_under_systemd(
    deb_file: Path, installed_root: Path, tmp_path: Path, acct: int, capture: str
) -> None:
    """Boot the installed root (systemd-nspawn, a network namespace of its own) and run the
    sensor in its sandbox: it gets ready with its two capabilities as the service user
    (nflog: after `nft -f -` loaded its rules), reloads, takes new data from the update unit
    (which reloads it), stops cleanly and removes its rules."""
    _need_tools("systemd-nspawn", deb_test=True)
    root = installed_root
    nspawn = [
        "systemd-nspawn",
        "-q",
        "-D",
        str(root),
        "--register=no",
        "--keep-unit",
        "--private-network",
        "--console=pipe",
    ]
    probe = _run([*nspawn, "/bin/true"], stdin=subprocess.DEVNULL)
    _need(
        probe.returncode == 0,
        f"systemd-nspawn cannot run here: {probe.stderr.strip()}",
        deb_test=True,
    )
    _prepare_boot(root, deb_file, acct, capture)
    results = tmp_path / "results"
    results.mkdir()
    started = time.monotonic()
    boot = _run(
        [*nspawn, f"--bind={results}:/results", "--boot"], timeout=240, stdin=subprocess.DEVNULL
    )
    elapsed = time.monotonic() - started
    out_file = results / "out.txt"
    assert out_file.exists(), f"the container did not run the probe:\n{boot.stdout[-3000:]}"
    text = out_file.read_text()
    head, _, journal = text.partition("--- journal\n")
    got = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    print(f"boot and probe: {elapsed:.0f} s; {got}")
    context = f"\n{head}\njournal:\n{journal[-6000:]}"
    assert got.get("state") == "active/running", context
    assert got["restarts"] == "0", context
    assert got["user"] == "phonehome", context
    assert got["capeff"] == f"{(1 << 12) | (1 << 13):016x}", context  # NET_ADMIN, NET_RAW
    assert f"capture {capture}" in journal, context
    assert got["table_running"] == ("1" if capture == "nflog" else "0"), context
    assert int(got["flows"]) > 0, context  # packets reached the pipeline
    assert got["metrics"].isdigit() and int(got["metrics"]) > 0, context  # the exporter
    assert got["reload_rc"] == "0" and got["reloaded"] == "0", context
    # The update unit runs sandboxed as the service user, then reloads the sensor.
    assert got["update_rc"] == "0", context
    assert got["data_owner"] == "phonehome", context
    assert got["reloaded_after_update"] == "0", context
    assert got["state_after_update"] == "active", context
    assert got["reinstall_rc"] == "0", context
    assert got["state_after_reinstall"] == "active", context
    assert got["acct_after_reinstall"] == "1", context
    assert got["timer_next"] not in ("", "0", "n/a"), context
    assert got["stop_result"] == "success", context
    assert got["table_stopped"] == "0", context


OLD_RELEASE = "3852920c38e79b42dd94775632bf5f303acede94"
"""The commit 0.1.0 was packaged from (its etc/phonehome.toml set home_country = "ID")."""


@pytest.fixture(scope="module")
def old_deb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 0.1.0 package, built by that release's own build-deb.sh."""
    _need_root(deb_test=True)
    _need_tools("dpkg-deb", "python3.11", "gcc", "strip", "git", deb_test=True)
    have = _run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_RELEASE}^{{commit}}"])
    _need(have.returncode == 0, f"commit {OLD_RELEASE} is not in this clone", deb_test=True)
    # A clone (build-deb.sh reads the history for dates), checked out at the release.
    src = tmp_path_factory.mktemp("old") / "src"
    _run(["git", "clone", "-q", "--shared", str(REPO), str(src)], timeout=300, check=True)
    _run(["git", "-C", str(src), "checkout", "-q", "--detach", OLD_RELEASE], check=True)
    out = tmp_path_factory.mktemp("old-deb")
    _run([str(src / "packaging/build-deb.sh"), str(out)], timeout=900, check=True)
    debs = list(out.glob("phonehome_0.1.0_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


@deb
def test_upgrade_from_0_1_0(old_deb_file: Path, deb_file: Path) -> None:
    """0.1.0 installed, then this version: the unedited 0.1.0 configuration (home_country =
    "ID") is kept and keeps passing `check`, and the upgrade says what changed; a configuration
    without a home country is kept too, the upgrade warns that the sensor stays stopped, and
    `check` refuses saying how. NEWS.Debian is installed; purge still removes everything."""
    _need_tools("mmdebstrap", "unshare", "ip", deb_test=True)
    base = REPO / "build" / "deb-test"
    base.mkdir(parents=True, exist_ok=True)
    root = base / f"upgrade-{os.getpid()}"
    other = base / f"upgrade-nohome-{os.getpid()}"
    try:
        _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount",
                f"--include=systemd,iproute2,{old_deb_file}",
                "bookworm",
                str(root),
                MIRROR,
            ],
            timeout=600,
            check=True,
        )
        conf = CONFIG.lstrip("/")
        old_conf = (root / conf).read_text()
        assert '\nhome_country = "ID"\n' in old_conf  # what 0.1.0 shipped, active
        _run(["cp", "-a", str(root), str(other)], timeout=300, check=True)
        for r in (root, other):
            shutil.copy(deb_file, r / "root/phonehome.deb")

        # An unedited 0.1.0 install: kept, valid, and told what changed.
        proc = _in_root(root, 'chroot "$R" dpkg -i /root/phonehome.deb')
        said = proc.stdout + proc.stderr
        assert proc.returncode == 0, said
        assert f'0.2.0 requires site.home_country; {CONFIG} sets it ("ID")' in said, said
        assert (root / conf).read_text() == old_conf
        news = gzip.decompress((root / "usr/share/doc/phonehome/NEWS.Debian.gz").read_bytes())
        assert b"site.home_country is now required" in news
        proc = _in_root(root, f'chroot "$R" phonehome check --config {CONFIG}')
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "home country: ID" in proc.stdout.splitlines()

        # An owner who had removed the home country: kept as it is, loudly.
        edited = old_conf.replace('\nhome_country = "ID"\n', "\n")
        (other / conf).write_text(edited)
        proc = _in_root(other, 'chroot "$R" dpkg -i /root/phonehome.deb')
        said = proc.stdout + proc.stderr
        assert proc.returncode == 0, said
        assert "phonehome: WARNING: 0.2.0 refuses to start without site.home_country" in said
        assert "The sensor stays stopped" in said
        assert (other / conf).read_text() == edited
        proc = _in_root(other, f'chroot "$R" phonehome check --config {CONFIG}')
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{CONFIG}: site.home_country: not set" in proc.stdout
        proc = _in_root(other, 'chroot "$R" dpkg --purge phonehome')
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not (other / "etc/phonehome").exists()
    finally:
        for r in (root, other):
            left = _mounts_under(r)
            assert not left, f"still mounted, {r} kept: {left}"
            shutil.rmtree(r, ignore_errors=True)


@deb
def test_purge(installed_root: Path) -> None:
    """Remove and purge: units stopped and disabled, state and configuration gone, nothing
    left in /opt (the bytecode postinst made included)."""
    root = installed_root
    wants = root / "etc/systemd/system/multi-user.target.wants/phonehome.service"
    if not wants.is_symlink():  # the boot test did not run: enable as an admin would
        _run(["chroot", str(root), "systemctl", "enable", "phonehome.service"], check=True)
    proc = _in_root(root, 'chroot "$R" dpkg --purge phonehome')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    assert not wants.is_symlink()
    for path in (
        "var/lib/phonehome",
        "var/log/phonehome",
        "etc/phonehome",
        PREFIX.lstrip("/"),
        "usr/bin/phonehome",
    ):
        assert not (root / path).exists(), path
    overrides = _run(["chroot", str(root), "dpkg-statoverride", "--list"]).stdout
    assert "phonehome" not in overrides
