"""Our JA4 against an independent implementation: the `ja4plus` package (BSD-3-Clause for its
code and for JA4; a test dependency only, pinned in requirements-dev.txt, see tests/README.md).

ja4plus reads packets with scapy, reassembles TCP and decrypts QUIC Initials by itself, so it
shares no code with our decoders. Compared: every ClientHello in the test captures
(tests/captures/tls, tests/captures/quic: real browsers, curl, Java, wolfSSL, Meta's and
Google's apps, recorded by Zeek and nDPI), plus hellos from real implementations made here:
Python's ssl module (one hello read off a real TCP connection on loopback; TLS 1.2 and 1.3,
with and without SNI and ALPN, one spanning several segments), aioquic Initials (v1 and v2,
one and several datagrams) and an ECH hello built to RFC 9849. Each flow is compared on the
first hello both read; a hello ja4plus reads must get our same value, and we must read every
hello it reads.

Known differences (none occur in these hellos): the specification decides odd ALPN values
(first or last byte not a letter or digit: we write hex digits, ja4plus "9"/"99") and a
server_name extension without a host name ("d" for us, "i" for ja4plus).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from ja4plus.fingerprinters import ja4 as ja4plus

from sensor.lab.synth import PHONE, PHONE6, Capture, TcpSession, client_hello
from tests.builders import big_alpn, ech_client_hello, quic_initial_datagrams, tls_record
from tests.pipeline_helpers import build, run_analyze

CAPTURES = Path(__file__).with_name("captures")
CAPTURE_FILES = sorted(CAPTURES.joinpath("tls").glob("*.pcap*")) + sorted(
    CAPTURES.joinpath("quic").glob("*.pcap*")
)
Key = frozenset[tuple[str, int]]


def loopback_hello(server_name: str, alpn: list[str]) -> bytes:
    """The first flight Python's ssl client sends over a real TCP connection on loopback, as
    the listening side read it off the socket."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(alpn)
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        client = ctx.wrap_socket(raw, server_hostname=server_name, do_handshake_on_connect=False)
        client.setblocking(False)
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()  # sends the hello, then waits for a ServerHello
        conn, _ = listener.accept()
        with conn, client:
            conn.settimeout(10)
            data = b""
            while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
                chunk = conn.recv(65536)
                assert chunk, "the client closed before its hello was read"
                data += chunk
    return data


def made_here(cap: Capture) -> None:
    """Hellos from real implementations, each on its own flow."""
    port = 42000
    tls_hellos = [
        loopback_hello("loopback.example.com", ["h2", "http/1.1"]),
        client_hello("py13.example.com"),
        client_hello("py12.example.com", tls13=False),
        client_hello(None),
        client_hello("noalpn.example.com", alpn=()),
        client_hello("h1.example.com", alpn=("http/1.1",)),
        client_hello("big.example.com", padding_alpn=3000),
        tls_record(ech_client_hello("cloudflare-ech.com")),
    ]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert ctx.maximum_version in (ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3)
    for i, hello in enumerate(tls_hellos):
        s = TcpSession(cap, PHONE, f"192.0.2.{10 + i}", port + i, 443)
        s.open()
        s.send(hello)
        s.close()
    quic = [
        quic_initial_datagrams("q1.example.net", 0x00000001),
        quic_initial_datagrams("q1big.example.net", 0x00000001, big=True, alpn=big_alpn(1500)),
        quic_initial_datagrams(None, 0x00000001),
        quic_initial_datagrams("q2.example.net", 0x6B3343CF),
    ]
    for i, datagrams in enumerate(quic):
        for d in datagrams:
            cap.udp(PHONE6, f"2001:db8::{20 + i:x}", 50000 + i, 443, d, up=True)


def theirs_by_flow(paths: list[Path]) -> dict[Key, str]:
    """ja4plus's first JA4 per flow, by 5-tuple."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader

    logging.getLogger("scapy").setLevel(logging.ERROR)
    out: dict[Key, str] = {}
    for path in paths:
        fingerprinter = ja4plus.JA4Fingerprinter()
        with PcapReader(str(path)) as reader:
            for pkt in reader:
                value = fingerprinter.process_packet(pkt)
                if not value:
                    continue
                ip = pkt[IP] if IP in pkt else pkt[IPv6]
                l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
                key = frozenset(((str(ip.src), int(l4.sport)), (str(ip.dst), int(l4.dport))))
                out.setdefault(key, value)
    return out


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    made = build(tmp_path_factory.mktemp("ja4") / "made-here.pcap", made_here)
    paths = [*CAPTURE_FILES, made]
    theirs = theirs_by_flow(paths)
    flows, _, _, err = run_analyze(*paths)
    assert err == "", err
    ours: dict[Key, list[str]] = defaultdict(list)
    for f in flows:
        if f.get("ja4"):
            key = frozenset(((f["src_ip"], f["src_port"]), (f["dst_ip"], f["dst_port"])))
            ours[key].append(f["ja4"])
    same: list[str] = []
    problems: list[str] = []
    for key, value in theirs.items():
        mine = ours.get(key, [])
        if value in mine:
            same.append(value)
        else:
            problems.append(f"{sorted(key)}: ja4plus {value}, ours {mine}")
    return {"same": same, "problems": problems, "ours_only": len(ours.keys() - theirs.keys())}


def test_every_hello_agrees(compared: dict[str, Any]) -> None:
    assert compared["problems"] == []


def test_how_many_were_compared(compared: dict[str, Any]) -> None:
    """The corpus keeps covering what it claims: TLS from the captures and made here, QUIC
    from the captures and aioquic, and the ECH hellos (real Chrome to Cloudflare, ours)."""
    same: list[str] = compared["same"]
    tls = [v for v in same if v.startswith("t")]
    quic = [v for v in same if v.startswith("q")]
    # Measured: 23 TLS hellos and 19 QUIC Initials. ja4plus decrypts v1 Initials (and those
    # sharing v1's keys) only; the 65 others we read (v2, drafts, mvfst, version-forcing,
    # T050/T051) are checked against the specification alone.
    assert len(tls) >= 23, len(tls)
    assert len(quic) >= 19, len(quic)
    assert {"t13d1517h2_8daaf6152771_b1ff8ab2d16f"} <= set(same)  # Zeek's tls13-ech.pcap
