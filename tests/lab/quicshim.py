"""A lab client that sends a QUIC v1 first flight the way Chrome scrambles it.

    python tests/lab/quicshim.py HOST ADDRESS [--port 443] [--fragments 14] [--seed 1]

aioquic writes the client's Initials (its ClientHello made larger than one datagram with a
long ALPN list and a big transport parameter); the shim takes the CRYPTO stream back out of
them, cuts it into fragments at random offsets, shuffles them, mixes in PING and PADDING frames
("chaos protection"), spreads them over several Initial packets, one 1200-byte datagram each,
protects them again with aioquic's packet protection and sends them from one UDP socket. It
then waits for the server's answer (a real server that reassembles the scrambled stream answers
with its own Initial) and prints JSON: the local port, datagrams sent, the hello's size, and
whether the server answered.

Lab only (run inside a device's namespace by tests); it imports aioquic, which only the test and
lab environments install.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import socket
import sys


def _varint(value: int) -> bytes:
    for size, flag in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            return (value | flag << (8 * size - 8)).to_bytes(size, "big")
    raise ValueError(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    size = 1 << (data[pos] >> 6)
    return int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1), pos + size


def client_hello(host: str) -> tuple[bytes, bytes]:
    """(ClientHello handshake message, DCID) of aioquic's first flight to ``host``."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.crypto import CryptoPair

    alpn = ["h3"] + [f"x-lab-protocol-{i:02d}-" + "p" * 60 for i in range(16)]
    config = QuicConfiguration(
        is_client=True, server_name=host, alpn_protocols=alpn, quantum_readiness_test=True
    )
    config.verify_mode = 0  # the shim only sends the first flight
    conn = QuicConnection(configuration=config)
    conn.connect(("192.0.2.1", 443), now=0.0)
    datagrams = [d for d, _ in conn.datagrams_to_send(now=0.0)]
    dcid = datagrams[0][6 : 6 + datagrams[0][5]]
    server = CryptoPair()
    server.setup_initial(cid=dcid, is_client=False, version=1)
    stream: dict[int, bytes] = {}
    for pn, datagram in enumerate(datagrams):
        pos = 6 + len(dcid)
        pos += 1 + datagram[pos]  # SCID
        token_len, pos = _read_varint(datagram, pos)
        length, pos = _read_varint(datagram, pos + token_len)
        _, payload, _ = server.decrypt_packet(datagram[: pos + length], pos, pn)
        i = 0
        while i < len(payload):
            ftype = payload[i]
            i += 1
            if ftype == 0x06:
                offset, i = _read_varint(payload, i)
                length, i = _read_varint(payload, i)
                stream[offset] = payload[i : i + length]
                i += length
            elif ftype not in (0x00, 0x01):
                raise SystemExit(f"unexpected frame {ftype:#x} in aioquic's Initial")
    data = b"".join(stream[k] for k in sorted(stream))
    return data, dcid


def scrambled_flight(
    hello: bytes, dcid: bytes, *, fragments: int, seed: int, scid: bytes
) -> list[bytes]:
    from aioquic.quic.crypto import CryptoPair

    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(hello)), fragments - 1))
    bounds = [0, *cuts, len(hello)]
    pieces = [(a, hello[a:b]) for a, b in itertools.pairwise(bounds)]
    rng.shuffle(pieces)
    pieces.append(pieces[0])  # one fragment twice, as a retransmission would
    packets: list[bytearray] = [bytearray()]
    for offset, data in pieces:
        frame = b"\x06" + _varint(offset) + _varint(len(data)) + data
        if len(packets[-1]) + len(frame) > 1100:
            packets.append(bytearray())
        packets[-1] += b"\x01" * rng.randrange(0, 3) + bytes(rng.randrange(0, 6)) + frame
    pair = CryptoPair()
    pair.setup_initial(cid=dcid, is_client=True, version=1)
    out = []
    for pn, frames in enumerate(packets):
        head = b"\xc1" + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid
        head += bytes([len(scid)]) + scid + b"\x00"  # no token
        pad = 1200 - (len(head) + 2 + 2 + len(frames) + 16)
        payload = bytes(frames) + bytes(max(0, pad))
        header = (
            head + ((2 + len(payload) + 16) | 0x4000).to_bytes(2, "big") + pn.to_bytes(2, "big")
        )
        out.append(pair.encrypt_packet(header, payload, pn))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("address")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--fragments", type=int, default=14)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--wait", type=float, default=5.0)
    args = ap.parse_args(argv)
    hello, dcid = client_hello(args.host)
    flight = scrambled_flight(
        hello, dcid, fragments=args.fragments, seed=args.seed, scid=bytes.fromhex("5c1d5c1d")
    )
    family = socket.AF_INET6 if ":" in args.address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((args.address, args.port))
        for datagram in flight:
            sock.send(datagram)
        sock.settimeout(args.wait)
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            answer = b""
        port = sock.getsockname()[1]
    print(
        json.dumps(
            {
                "local_port": port,
                "datagrams": len(flight),
                "hello_bytes": len(hello),
                "answered": bool(answer) and answer[0] & 0x80 != 0,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
