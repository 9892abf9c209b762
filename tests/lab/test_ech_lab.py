"""ECH on the live gateway: a device asks the lab resolver for an HTTPS record, connects to the
address in the answer with an Encrypted Client Hello (outer SNI "cloudflare-ech.com"), and the
daemon names the flow from the query, never from the cover.

No client on Debian 12 speaks ECH; the ClientHelloOuter is built here to RFC 9849's wire
format (tests/builders.py) and sent over a real TCP connection through the NAT gateway by
tests/lab/echclient.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor.lab import DEFAULT_ZONE, SERVERS, Lab
from tests.builders import ech_client_hello
from tests.builders_proto import ech_config_list
from tests.lab.test_daemon import Daemon

NAME = "private.example.org"
COVER = "cloudflare-ech.com"
HOME = SERVERS[2]  # 192.0.2.80: the lab's HTTPS server stands in for the CDN front
ZONE = {
    **DEFAULT_ZONE,
    NAME: [
        (
            "HTTPS",
            f"alpn=h2 ipv4hint={HOME.ipv4} ech="
            + base64.b64encode(ech_config_list(COVER)).decode(),
        )
    ],
}


@pytest.fixture(scope="module")
def lab(lab_usable: None) -> Iterator[Lab]:
    with Lab.create(zone=ZONE) as built:
        yield built


@pytest.fixture(scope="module")
def daemon(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(lab, tmp_path_factory.mktemp("daemon"))
    try:
        d.wait_notify("READY=1")
        yield d
    finally:
        d.stop()


def _flow(snapshot: dict[str, Any], src: str, port: int) -> dict[str, Any] | None:
    for rec in snapshot["flows"] + snapshot["ended"]:
        if rec["src_ip"] == src and rec["src_port"] == port and rec.get("ja4"):
            return rec
    return None


def test_ech_flow_is_named_from_the_https_query(daemon: Daemon, lab: Lab) -> None:
    dev = lab.devices["xiaomi"]
    client = Path(__file__).with_name("echclient.py")
    hello = ech_client_hello(COVER).hex()
    proc = lab.exec(
        "xiaomi",
        [lab.python, str(client), NAME, lab.resolver.ipv4, "--hello", hello],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stdout)
    assert sent["address"] == HOME.ipv4
    f = daemon.wait_for(
        "the ECH flow in the snapshot",
        lambda: _flow(daemon.snapshot(), dev.ipv4, sent["local_port"]),
        timeout=20,
    )
    assert (f["dst_ip"], f["dst_port"]) == (HOME.ipv4, 443)
    assert (f["server_name"], f["name_source"]) == (NAME, "dns")
    assert (f["ech"], f["outer_server_name"]) == (True, COVER)
    assert f["ja4"].startswith("t13d")
    assert f.get("party") != COVER and COVER not in json.dumps(
        {k: v for k, v in f.items() if k != "outer_server_name"}
    )
    assert f["device_mac"] == dev.mac
