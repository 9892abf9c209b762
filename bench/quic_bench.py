"""Benchmark: QUIC client Initials through the decoder, per version family, and a CID flood.

    python -m bench.quic_bench [--flows 400] [--flood 20000]

For each family (v1 and v2 from aioquic; drafts 27-28, 29-32, 33-34, mvfst, gQUIC cleartext
Q043/Q046 and encrypted Q050/T051 built from their specifications by tests.builders_quic) it
feeds ``--flows`` client flows, each with its own DCID, through one `QuicInitialTracker` and
prints Initials per second and named flows per second. Two shapes: a one-datagram hello, and
Chrome's shape (a hello larger than one datagram, its CRYPTO data cut into shuffled fragments
with PING and PADDING, over two or more datagrams).

Then the flood: ``--flood`` single Initials, each with a fresh random DCID (an attacker, or a
scanner), through a tracker with the pipeline's bounds: undecryptable ones, valid first halves
of a two-datagram hello (each leaves state until evicted), and version-forcing ones (two key
derivations each). It prints the cost per Initial (every
one needs a key derivation and an AEAD attempt), the tracker's size, its key cache and its
buffered bytes at the end: the bounds, not the flood, decide memory.

Times are CPU seconds of this process, best of three.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from sensor.decode.quic import QuicInitialTracker, version_name
from tests.builders import big_alpn, client_hello_message, quic_initial_datagrams
from tests.builders_quic import Q043, Q046, Q050, T051, encrypted_flight, flight

FAMILIES: tuple[tuple[str, int], ...] = (
    ("v1", 0x00000001),
    ("v2", 0x6B3343CF),
    ("drafts 27-28", 0xFF00001C),
    ("drafts 29-32", 0xFF00001D),
    ("drafts 33-34", 0xFF000022),
    ("mvfst", 0xFACEB002),
    ("gQUIC cleartext", Q046),
    ("gQUIC encrypted", Q050),
    ("gQUIC TLS", T051),
)


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return max(best, 1e-9)


def _flows(version: int, n: int, chrome: bool) -> list[list[bytes]]:
    out = []
    for i in range(n):
        sni = f"host{i}.example.com"
        dcid = i.to_bytes(8, "big")
        if version in (0x00000001, 0x6B3343CF) and not chrome:
            out.append(quic_initial_datagrams(sni, version))
        elif chrome and version not in (Q043, Q046, Q050):
            hello = client_hello_message(sni, alpn=big_alpn(1800))
            out.append(encrypted_flight(hello, version, dcid=dcid, pieces=10, seed=i))
        else:
            out.append(flight(version, sni, dcid=dcid))
    return out


def run_family(name: str, version: int, n: int, chrome: bool) -> None:
    flows = _flows(version, n, chrome)
    initials = sum(len(f) for f in flows)
    named = 0

    def feed() -> None:
        nonlocal named
        tracker = QuicInitialTracker(max_connections=4 * n)
        named = 0
        for key, datagrams in enumerate(flows):
            for d in datagrams:
                if tracker.feed(d, key) is not None:
                    named += 1

    seconds = _best(feed)
    assert named == n, f"{name}: {named} of {n} flows named"
    shape = "chrome" if chrome else "plain"
    print(
        f"  {name:<16} {version_name(version):<11} {shape:<6} "
        f"{initials / seconds:>9,.0f} Initials/s  {n / seconds:>9,.0f} flows/s  "
        f"({initials / n:.1f} datagrams a flow)"
    )


def run_flood(count: int) -> None:
    hello = client_hello_message("flood.example.com", alpn=big_alpn(1500))
    template = encrypted_flight(hello, 0x00000001, dcid=bytes(8))[0]
    datagrams = []
    for _ in range(count):
        d = bytearray(template)
        d[6:14] = os.urandom(8)  # a fresh DCID: new keys, and the AEAD tag will not verify
        datagrams.append(bytes(d))
    real = [encrypted_flight(hello, 0x00000001, dcid=os.urandom(8))[0] for _ in range(count)]
    forcing = []
    for d in datagrams:
        f = bytearray(d)
        f[1:5] = (0x1A2A3A4A).to_bytes(4, "big")  # a version forcing negotiation: two key tries
        forcing.append(bytes(f))
    for label, batch in (
        ("random CIDs, undecryptable", datagrams),
        ("random CIDs, valid", real),
        ("random CIDs, forcing version", forcing),
    ):
        tracker = QuicInitialTracker()

        def feed(tracker: QuicInitialTracker = tracker, batch: list[bytes] = batch) -> None:
            for i, d in enumerate(batch):
                tracker.feed(d, i)

        seconds = _best(feed, repeat=1)
        print(
            f"  flood, {label:<29} {count / seconds:>9,.0f} Initials/s  "
            f"{seconds / count * 1e6:>6.1f} us each; after it: {len(tracker)} flows tracked, "
            f"{len(tracker._keys)} keys cached, {tracker.buffered_bytes:,} bytes buffered, "
            f"{tracker.evictions:,} evictions"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--flows", type=int, default=400)
    ap.add_argument("--flood", type=int, default=20000)
    args = ap.parse_args()
    print(f"QUIC Initials through the decoder ({args.flows} flows a family, CPU time, best of 3)")
    for chrome in (False, True):
        for name, version in FAMILIES:
            if chrome and version in (Q043, Q046, Q050):
                continue  # gQUIC CHLOs are not cut up that way
            run_family(name, version, args.flows, chrome)
    print(f"Random connection-ID flood ({args.flood} Initials, pipeline bounds)")
    run_flood(args.flood)


if __name__ == "__main__":
    main()
