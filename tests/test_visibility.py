"""The visibility classifier and the per-device byte accounting."""

from __future__ import annotations

import pytest

from sensor.model import Device, Flow
from sensor.visibility import VISIBILITIES, Locality, account, classify


def flow(**kw: object) -> Flow:
    f = Flow("F1", "tcp", "192.168.1.23", 40000, "198.51.100.7", 443, None, 0.0, 1.0)
    for k, v in kw.items():
        setattr(f, k, v)
    return f


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "none"),
        ({"dst_port": 53, "proto": "udp"}, "dns"),  # a plain DNS exchange: questions in clear
        ({"dst_port": 853}, "none"),  # DNS over TLS says nothing
        ({"server_name": "a.example", "name_source": "dns"}, "dns"),
        ({"server_name": "a.example", "name_source": "tls"}, "tls"),
        ({"server_name": "a.example", "name_source": "quic"}, "quic"),
        ({"server_name": "a.example", "name_source": "http"}, "http"),
        ({"ech": True, "outer_server_name": "cloudflare-ech.com"}, "ech"),
        # ECH, but the device's HTTPS query named it: the name is seen
        ({"ech": True, "server_name": "a.example", "name_source": "dns"}, "dns"),
        ({"ech": True, "server_name": "cloudflare-ech.com", "name_source": "tls"}, "ech"),
        # a relay hides the destination whatever names the relay itself has
        ({"relay": "tor"}, "relay"),
        ({"relay": "icloud-private-relay", "server_name": "mask.icloud.com"}, "relay"),
        ({"relay": "vpn", "ech": True}, "relay"),
    ],
)
def test_classify(fields: dict[str, object], expected: str) -> None:
    assert classify(flow(**fields)) == expected
    assert expected in VISIBILITIES


def test_locality() -> None:
    local = Locality(("192.168.0.0/16", "fd00::/8"))
    assert local("192.168.1.1") and local("fd00::1") and local("224.0.0.251")
    assert local("255.255.255.255") and local("fe80::1") and local("127.0.0.1")
    assert not local("198.51.100.7") and not local("2001:db8::1") and not local("bad")


def test_account_adds_bytes_per_class_and_relay() -> None:
    dev = Device("aa:bb:cc:dd:ee:01")
    f = flow(relay="tor", bytes_up=100, bytes_down=1000)
    account(dev, f, "relay")
    account(dev, f, "relay")
    account(dev, flow(bytes_up=5, bytes_down=7), "none")
    assert dev.extra["visibility_bytes"] == {
        "relay": {"up": 200, "down": 2000},
        "none": {"up": 5, "down": 7},
    }
    assert dev.extra["relay_bytes"] == {"tor": {"up": 200, "down": 2000}}


def test_account_bounds_relay_names() -> None:
    dev = Device("aa:bb:cc:dd:ee:01")
    for i in range(40):
        account(dev, flow(relay=f"vpn:v{i}", bytes_up=1), "relay")
    table = dev.extra["relay_bytes"]
    assert isinstance(table, dict) and len(table) == 33 and table["other"] == {"up": 8, "down": 0}
