"""A simulated household week through `phonehome analyze`: the alerts the defaults raise when
nothing leaks, and the recall when leaks are injected.

The household (devices, the parties each uploads to, daily volumes, each figure with its
source) is data: bench/household.toml. The week is written as a capture at accelerated time
(real timestamps over seven days; bulk upload packets are stored truncated to their headers,
as ``tcpdump -s 96`` would, with their real IP lengths, so a week of uploads is a few MB on
disk) and analysed with the default alert settings. Documentation address ranges are placed
on the map by a geo overrides file the bench writes: US, Singapore, home (Indonesia), and a
country no device talks to (Russia) for injected exfiltration.

Printed: alerts per day by rule for the leak-free week, the warnings a day after the first
day (goal: at most one), and over several seeds the recall of injected leaks (identifiers in
cleartext, and uploads of several MB to a party abroad never seen before), goal 1.0.

Run: ``python -m bench.household`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import struct
import tempfile
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.analyze import analyze
from sensor.detect.identifiers import luhn_check_digit
from sensor.lab.synth import Capture, Host, PcapWriter, TcpSession, client_hello, http_request

MODEL = Path(__file__).with_name("household.toml")
START = 1_767_225_600.0  # 2026-01-01 00:00 UTC
"""Midnight: day boundaries of the report are the capture's."""
DAY = 86400.0
RESOLVER = "192.168.1.1"
RANGES = {
    "US": ("198.51.100.", "Lab network in the US"),
    "SG": ("203.0.113.", "Lab network in Singapore"),
    "ID": ("192.0.2.", "Lab network at home"),
    "RU": ("192.0.2.", "Lab network in Russia"),
}
"""Country -> (address prefix, AS organisation); home and RU split 192.0.2.0/24 in halves."""
GEO = """\
[[prefix]]
net = "198.51.100.0/24"
country = "US"
asn = 64601
asn_org = "Lab network in the US"

[[prefix]]
net = "203.0.113.0/24"
country = "SG"
asn = 64602
asn_org = "Lab network in Singapore"

[[prefix]]
net = "192.0.2.0/25"
country = "ID"
asn = 64603
asn_org = "Lab network at home"

""" + "".join(
    f'\n[[prefix]]\nnet = "192.0.2.{128 + 16 * k}/28"\ncountry = "RU"\nasn = {64610 + k}\n'
    f'asn_org = "Hosting company {k} in Russia"\n'
    for k in range(8)
)
"""RU: eight hosting companies, so each injected exfiltration goes to a party of its own."""
BULK = 65_000
"""IP payload bytes per stored bulk packet (the IP length field's range)."""


@dataclass(frozen=True, slots=True)
class App:
    party: str
    server: str
    country: str
    sessions: int
    bytes: int
    jitter: float


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    host: Host
    kind: str
    hours: tuple[int, int]
    apps: tuple[App, ...]


@dataclass(frozen=True, slots=True)
class Session:
    ts: float
    device: Device
    server: str
    ip: str
    nbytes: int
    body: bytes | None = None
    """A plaintext HTTP request body (an injected identifier leak) instead of TLS."""


@dataclass(frozen=True, slots=True)
class Leak:
    ts: float
    device: Device
    ip: str
    what: str  # "identifier" or "upload"


def load(path: Path = MODEL) -> tuple[str, int, list[Device]]:
    doc = tomllib.loads(path.read_text())
    sources = {s["id"] for s in doc["source"]}
    devices = []
    for i, d in enumerate(doc["device"]):
        apps = []
        for a in d["apps"]:
            cited = {w.strip(" ,:") for w in a["source"].split()}
            if not (cited & sources or "assumption" in a["source"]):
                raise ValueError(f"{path}: {d['name']}: {a['server']}: figure without source")
            apps.append(
                App(a["party"], a["server"], a["country"], a["sessions"], a["bytes"], a["jitter"])
            )
        host = Host(d["mac"], f"192.168.1.{20 + i}")
        devices.append(Device(d["name"], host, d["kind"], tuple(d["hours"]), tuple(apps)))
    return doc["home_country"], int(doc["days"]), devices


def _address(country: str, server: str) -> str:
    prefix, _ = RANGES[country]
    if country == "RU":  # up<i>.exfil.example: the i-th hosting company's block
        k = int(server[2:].split(".")[0]) // 2 % 8
        return f"{prefix}{128 + 16 * k + 1}"
    return f"{prefix}{1 + sum(server.encode()) % 120}"


def week(devices: list[Device], days: int, rng: random.Random) -> list[Session]:
    out = []
    for day in range(days):
        for dev in devices:
            lo, hi = dev.hours
            for app in dev.apps:
                total = app.bytes * rng.lognormvariate(-(app.jitter**2) / 2, app.jitter)
                weights = [rng.expovariate(1.0) for _ in range(app.sessions)]
                ip = _address(app.country, app.server)
                for w in weights:
                    ts = START + day * DAY + rng.uniform(lo * 3600, hi * 3600 - 60)
                    nbytes = int(total * w / sum(weights))
                    out.append(Session(ts, dev, app.server, ip, nbytes))
    return out


def inject(
    devices: list[Device], days: int, rng: random.Random, n: int
) -> tuple[list[Session], list[Leak]]:
    """`n` leaks at random times after the second day, an hour apart at least: half IMEIs in
    cleartext (to a party the device uses, or to a new one at home or abroad), half uploads
    of 2-30 MB to a party in a country no device uses."""
    sessions, leaks = [], []
    # Identifier leaks alert from the first packet; upload rules learn a device's parties
    # for its first day (new_party_learning), so uploads are injected from the third day.
    slots = rng.sample(range(48, days * 24 - 1), n)
    for i, slot in enumerate(slots):
        ts = START + slot * 3600 + rng.uniform(0, 3000)
        dev = rng.choice(devices)
        if i % 2 == 0:
            body = 14 * "0"
            while body.startswith("0"):
                body = "35" + "".join(rng.choice("0123456789") for _ in range(12))
            imei = body + luhn_check_digit(body)
            app = rng.choice(dev.apps)
            server, ip = rng.choice(
                [
                    (app.server, _address(app.country, app.server)),
                    (f"t{i}.sdk-analytics.example", _address("SG", f"t{i}")),
                    (f"api{i}.local-shop.example", _address("ID", f"api{i}")),
                ]
            )
            payload = f"imei={imei}&v=1".encode()
            sessions.append(Session(ts, dev, server, ip, 0, payload))
            leaks.append(Leak(ts, dev, ip, "identifier"))
        else:
            server = f"up{i}.exfil.example"
            ip = _address("RU", server)
            sessions.append(Session(ts, dev, server, ip, rng.randrange(2_000_000, 30_000_000)))
            leaks.append(Leak(ts, dev, ip, "upload"))
    return sessions, leaks


def write_capture(path: Path, sessions: list[Session], seed: int) -> int:
    with path.open("wb") as fh:
        writer = PcapWriter(fh)
        cap = Capture(writer, start=START, seed=seed)
        port = 20000
        for s in sorted(sessions, key=lambda x: x.ts):
            cap.ts = max(cap.ts, s.ts)
            port = port + 1 if port < 60000 else 20000
            host = s.device.host
            cap.dns_lookup(host, RESOLVER, s.server, [s.ip])
            if s.body is not None:
                tcp = TcpSession(cap, host, s.ip, port, 80)
                tcp.open()
                tcp.send(http_request("POST", s.server, "/v1/r", "okhttp/4.9.0", s.body))
                tcp.close()
                continue
            tcp = TcpSession(cap, host, s.ip, port, 443)
            tcp.open()
            tcp.send(client_hello(s.server))
            _bulk_truncated(cap, writer, tcp, s.nbytes)
            tcp.close()
        return cap.packets


def _bulk_truncated(cap: Capture, writer: PcapWriter, s: TcpSession, nbytes: int) -> None:
    """`nbytes` of upload in packets of up to BULK bytes, stored header-only (caplen <
    origlen), each with its true IP total length."""
    sent = 0
    while sent < nbytes:
        n = min(BULK, nbytes - sent)
        seg = bytearray(s._seg(True, 0x18, s.cseq, s.sseq))
        struct.pack_into(">H", seg, 2, len(seg) + n)  # IPv4 total length: the whole packet
        frame = cap.frame(bytes(seg), False, s.lan, True)
        cap.ts += 0.0005
        sec = int(cap.ts)
        usec = round((cap.ts - sec) * 1e6)
        writer.fh.write(struct.pack("<IIII", sec, usec, len(frame), len(frame) + n) + frame)
        cap.packets += 1
        s.cseq += n
        sent += n
    if nbytes:
        s.ack(False)


def run_analyze(
    tmp: Path, home: str, devices: list[Device], pcap: Path, alerts: str = ""
) -> list[dict[str, Any]]:
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    geo = tmp / "geo.toml"
    geo.write_text(GEO)
    owner = "".join(
        f'[[devices]]\nmac = "{d.host.mac}"\nname = "{d.name}"\nkind = "{d.kind}"\n'
        for d in devices
    )
    cfg = tmp / "phonehome.toml"
    cfg.write_text(
        f'[site]\nhome_country = "{home}"\n[paths]\nstate_dir = "{state}"\n'
        f'[geo]\noverrides = "{geo}"\n{owner}' + (f"[alerts]\n{alerts}\n" if alerts else "")
    )
    out, err = io.StringIO(), io.StringIO()
    rc = analyze([str(pcap)], config_path=str(cfg), as_json=True, out=out, err=err)
    if rc != 0:
        raise SystemExit(f"analyze failed: {err.getvalue()}")
    return [json.loads(x) for x in out.getvalue().splitlines()]


def _alerts(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in recs if r["type"] == "alert"]


def detected(leak: Leak, alerts: list[dict[str, Any]]) -> bool:
    for a in alerts:
        if a["device_mac"] != leak.device.host.mac or abs(a["ts"] - leak.ts) > 120:
            continue
        if leak.what == "identifier" and a["identifier"] and a["dst_ip"] == leak.ip:
            return True
        if leak.what == "upload" and a["rule"] in ("new_party_upload", "foreign_upload_anomaly"):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--recall-seeds", type=int, default=5)
    ap.add_argument("--leaks", type=int, default=10, help="leaks injected per seeded week")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--alerts", default="", help="[alerts] settings instead of the defaults")
    args = ap.parse_args(argv)
    home, days, devices = load()
    with tempfile.TemporaryDirectory(prefix="household-") as tmpdir:
        tmp = Path(tmpdir)
        rng = random.Random(args.seed)
        pcap = tmp / "week.pcap"
        packets = write_capture(pcap, week(devices, days, rng), args.seed)
        uploaded = sum(s.nbytes for s in week(devices, days, random.Random(args.seed)))
        clean = tmp / "clean"
        clean.mkdir()
        alerts = _alerts(run_analyze(clean, home, devices, pcap, args.alerts))
        per_day: dict[int, Counter[str]] = defaultdict(Counter)
        for a in alerts:
            per_day[int((a["ts"] - START) // DAY) + 1][a["rule"]] += 1
        print(
            f"household week: {len(devices)} devices, {days} days, {packets} packets, "
            f"{uploaded / 1e9:.2f} GB uploaded (model {MODEL.name}, seed {args.seed})"
        )
        print("day  warnings+  info  by rule")
        later = []
        for day in range(1, days + 1):
            rules = per_day.get(day, Counter())
            warn = sum(n for r, n in rules.items() if r != "new_country")
            info = rules.get("new_country", 0)
            if day > 1:
                later.append(warn)
            print(f"{day:>3}  {warn:>9}  {info:>4}  {dict(sorted(rules.items())) or '-'}")
        print(
            f"warnings a day after day 1: max {max(later)}, mean {sum(later) / len(later):.2f} "
            f"(goal <= 1); identifier alerts without a leak: "
            f"{sum(1 for a in alerts if a['identifier'])}"
        )
        found = total = 0
        missed: list[str] = []
        stray: Counter[tuple[int, int]] = Counter()
        """Warnings in the seeded weeks that no injected leak explains, by (seed, day)."""
        for k in range(args.recall_seeds):
            seed = args.seed + 1 + k
            rng = random.Random(seed)
            sessions = week(devices, days, rng)
            extra, leaks = inject(devices, days, rng, args.leaks)
            wk = tmp / f"leaks{seed}"
            wk.mkdir()
            write_capture(wk / "week.pcap", sessions + extra, seed)
            got = _alerts(run_analyze(wk, home, devices, wk / "week.pcap", args.alerts))
            for a in got:
                explained = any(
                    a["device_mac"] == x.device.host.mac and abs(a["ts"] - x.ts) <= 120
                    for x in leaks
                )
                if not explained and a["rule"] != "new_country":
                    stray[seed, int((a["ts"] - START) // DAY) + 1] += 1
                    if args.verbose:
                        print(f"  seed {seed} unexplained: {a['summary']}")
            for leak in leaks:
                total += 1
                if detected(leak, got):
                    found += 1
                else:
                    missed.append(f"seed {seed} {leak.what} {leak.device.name} {leak.ip}")
        if total:
            print(
                f"injected leaks: {total} over {args.recall_seeds} weeks, detected {found}, "
                f"recall {found / total:.3f} (goal 1.0)"
            )
        for m in missed:
            print(f"  missed: {m}")
        if args.recall_seeds:
            days_later = args.recall_seeds * (days - 1)
            later_stray = [n for (_, d), n in stray.items() if d > 1]
            print(
                f"warnings no leak explains in those weeks, after day 1: "
                f"{sum(later_stray)} in {days_later} days "
                f"(max {max(later_stray, default=0)} on one day)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
