"""How a flow is named when its hello carries Encrypted Client Hello, end to end through analyze.

Precedence, as the pipeline applies it: a name the client sent in the clear (TLS or QUIC SNI,
HTTP Host) names the flow; failing that, the name the device resolved to the flow's address
(A/AAAA, or an HTTPS/SVCB address hint) just before connecting; failing that, none. An ECH cover
name (the outer SNI when it is a known ECH public name) never names a flow, whatever else does.
"""

from __future__ import annotations

from pathlib import Path

from sensor.decode.tls import looks_like_tls
from sensor.lab.synth import PHONE, RESOLVER, Capture, TcpSession, client_hello
from tests.builders import (
    ECH_EXTENSION,
    ech_client_hello,
    ech_extension_data,
    quic_crypto_frame,
    quic_initial_packet,
    synthetic_client_hello,
    tls_record,
)
from tests.builders_proto import dns_query, https_ech_response
from tests.pipeline_helpers import build, flow_to, run_analyze

HIDDEN = "198.51.100.80"
"""The address the HTTPS answer hints at (a CDN front that serves the real site and the cover)."""


def https_lookup(cap: Capture, qname: str, address: str, public_name: str) -> None:
    port = 53000 + cap.rng.randrange(1000)
    cap.udp(PHONE, RESOLVER, port, 53, dns_query(qname, 65), up=True)
    cap.udp(PHONE, RESOLVER, port, 53, https_ech_response(qname, [address], public_name), False)


def tls_connect(cap: Capture, address: str, hello: bytes, port: int = 41000) -> None:
    s = TcpSession(cap, PHONE, address, port, 443)
    s.open()
    s.send(hello)
    s.send(bytes(5000), up=False)
    s.close()


def ech_record(outer: str = "cloudflare-ech.com") -> bytes:
    record = tls_record(ech_client_hello(outer))
    assert looks_like_tls(record)
    return record


def test_ech_flow_is_named_from_the_https_query(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        https_lookup(cap, "private.example.org", HIDDEN, "cloudflare-ech.com")
        tls_connect(cap, HIDDEN, ech_record())

    flows, _, _, _ = run_analyze(build(tmp_path / "ech.pcap", scenario))
    f = flow_to(flows, HIDDEN, 443)
    assert (f["server_name"], f["name_source"]) == ("private.example.org", "dns")
    assert f["ech"] is True
    assert f["outer_server_name"] == "cloudflare-ech.com"
    assert f["ja4"].startswith("t13d")
    # The party is the queried name's owner; the cover's ("cloudflare-ech.com", what the same
    # hello without ECH is named after) never appears.
    assert f["party"] == "example.org"


def test_ech_flow_without_dns_has_no_name(tmp_path: Path) -> None:
    """A device that resolved elsewhere (DoH): the hosting side speaks, never the cover."""

    def scenario(cap: Capture) -> None:
        tls_connect(cap, HIDDEN, ech_record())

    flows, _, _, _ = run_analyze(build(tmp_path / "ech.pcap", scenario))
    f = flow_to(flows, HIDDEN, 443)
    assert f["server_name"] is None and f["name_source"] is None
    assert f.get("party") is None
    assert (f["ech"], f["outer_server_name"]) == (True, "cloudflare-ech.com")


def test_cover_learned_from_an_https_answer(tmp_path: Path) -> None:
    """A public name the packaged list does not know is learned from the answer's ECH
    configuration, and then is a cover on any flow (here one to another address, unnamed)."""

    def scenario(cap: Capture) -> None:
        https_lookup(cap, "shop.example.org", HIDDEN, "cover.example.net")
        tls_connect(cap, HIDDEN, ech_record("cover.example.net"))
        tls_connect(cap, "198.51.100.81", ech_record("cover.example.net"), port=41001)

    flows, _, _, _ = run_analyze(build(tmp_path / "ech.pcap", scenario))
    named = flow_to(flows, HIDDEN, 443)
    assert (named["server_name"], named["name_source"], named["ech"]) == (
        "shop.example.org",
        "dns",
        True,
    )
    other = flow_to(flows, "198.51.100.81", 443)
    assert other["server_name"] is None
    assert (other["ech"], other["outer_server_name"]) == (True, "cover.example.net")


def test_grease_ech_keeps_the_real_name(tmp_path: Path) -> None:
    """Browsers send a GREASE ECH extension when they have no ECH configuration; the outer SNI
    is then the real destination, and it is not a known public name."""

    def scenario(cap: Capture) -> None:
        tls_connect(cap, HIDDEN, ech_record("www.example.org"))

    flows, _, _, _ = run_analyze(build(tmp_path / "grease.pcap", scenario))
    f = flow_to(flows, HIDDEN, 443)
    assert (f["server_name"], f["name_source"]) == ("www.example.org", "tls")
    assert "ech" not in f and "outer_server_name" not in f


def test_sni_in_the_clear_beats_dns(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        cap.dns_lookup(PHONE, RESOLVER, "asked.example.org", [HIDDEN])
        tls_connect(cap, HIDDEN, client_hello("sent.example.org"))

    flows, _, _, _ = run_analyze(build(tmp_path / "sni.pcap", scenario))
    f = flow_to(flows, HIDDEN, 443)
    assert (f["server_name"], f["name_source"]) == ("sent.example.org", "tls")
    assert f["ja4"].startswith("t13d")
    assert "ech" not in f


def test_ech_in_a_quic_initial(tmp_path: Path) -> None:
    hello = synthetic_client_hello(
        "cloudflare-ech.com",
        versions=(0x0304,),
        alpn=(b"h3",),
        extra_extensions=[(0x0039, b""), (ECH_EXTENSION, ech_extension_data())],
    )
    datagram = quic_initial_packet(quic_crypto_frame(0, hello), dcid=bytes(range(8)), pad_to=1200)

    def scenario(cap: Capture) -> None:
        https_lookup(cap, "video.example.org", HIDDEN, "cloudflare-ech.com")
        cap.udp(PHONE, HIDDEN, 50444, 443, datagram, up=True)
        for _ in range(3):
            cap.udp(PHONE, HIDDEN, 50444, 443, b"\x40" + bytes(1200), up=False)

    flows, _, stats, _ = run_analyze(build(tmp_path / "q.pcap", scenario))
    f = flow_to(flows, HIDDEN, 443)
    assert (f["server_name"], f["name_source"]) == ("video.example.org", "dns")
    assert (f["ech"], f["outer_server_name"]) == (True, "cloudflare-ech.com")
    assert f["ja4"].startswith("q13d")
    assert stats["quic_unnamed"] == {"ech_cover": 1}
