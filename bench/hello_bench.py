"""Benchmark: what the JA4 fingerprint costs per ClientHello.

    python -m bench.hello_bench [--hellos 20000]

Decodes ``--hellos`` ClientHellos of four real shapes (Chrome with a post-quantum key share
and GREASE ECH, from Zeek's capture in tests/captures/tls; Python's ssl TLS 1.3 and 1.2; an ECH
hello built to RFC 9849) with `parse_client_hello`, which computes the JA4 of each, and times
`sensor.decode.ja4.fingerprint` alone on the same fields. Prints hellos per second and the JA4
share of the decode. Times are CPU seconds of this process, best of three.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import dpkt

from sensor.decode import ja4
from sensor.decode.tls import parse_client_hello
from sensor.model import ClientHello
from tests.builders import client_hello_message, ech_client_hello

CHROME = Path(__file__).parents[1] / "tests/captures/tls/zeek-chrome-1250-tls-x25519-kyber.pcap"


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return max(best, 1e-9)


def chrome_hello() -> bytes:
    """The handshake message of Chrome's hello in the capture (records joined)."""
    stream = b""
    with CHROME.open("rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(buf).data
            tcp = ip.data
            if isinstance(tcp, dpkt.tcp.TCP) and tcp.dport == 443:
                stream += bytes(tcp.data)
    hs, pos = b"", 0
    while pos + 5 <= len(stream):
        n = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        hs += stream[pos + 5 : pos + 5 + n]
        pos += 5 + n
    return hs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hellos", type=int, default=20000)
    args = ap.parse_args()
    import ssl

    shapes = {
        "Chrome X25519Kyber (Zeek)": chrome_hello(),
        "Python ssl TLS 1.3": client_hello_message("bench.example.com", alpn=["h2", "http/1.1"]),
        "Python ssl TLS 1.2": client_hello_message(
            "bench.example.com", max_version=ssl.TLSVersion.TLSv1_2
        ),
        "ECH (RFC 9849 builder)": ech_client_hello(),
    }
    n = args.hellos
    print(f"{'hello':28} {'bytes':>6} {'hellos/s':>10} {'JA4 µs':>8} {'JA4 share':>9}  ja4")
    for name, msg in shapes.items():
        hello = parse_client_hello(msg)
        assert isinstance(hello, ClientHello), name
        decode = _best(lambda m=msg: [parse_client_hello(m) for _ in range(n)])
        alpn = hello.alpn[0].encode() if hello.alpn else None

        def fp(h: ClientHello = hello, a: bytes | None = alpn) -> None:
            for _ in range(n):
                ja4.fingerprint(
                    quic=False,
                    legacy_version=h.legacy_version,
                    supported_versions=h.supported_versions,
                    ciphers=h.ciphers,
                    extensions=h.extensions,
                    signature_algorithms=h.signature_algorithms,
                    first_alpn=a,
                )

        only = _best(fp)
        print(
            f"{name:28} {len(msg):6d} {n / decode:10,.0f} {only / n * 1e6:8.1f} "
            f"{only / decode:9.0%}  {hello.ja4}"
        )


if __name__ == "__main__":
    main()
