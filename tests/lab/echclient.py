"""A lab client that resolves an HTTPS record and connects with an Encrypted Client Hello.

    python tests/lab/echclient.py NAME RESOLVER --hello HEX [--port 443]

No client on Debian 12 speaks ECH, so the test builds the ClientHelloOuter bytes itself (RFC
9849 wire format, tests/builders.py) and hands them over as hex. This client asks RESOLVER for
the HTTPS record of NAME over UDP, takes the first ipv4hint of the answer, opens a TCP
connection to it, sends the hello in one TLS record and waits for the server to answer or close
(the lab's TLS server cannot decrypt the inner hello and ends the handshake). It prints JSON:
the address, the local port, and how many bytes the server sent back.

Lab only (run inside a device's namespace by tests); standard library and dpkt.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys

import dpkt

HTTPS_TYPE = 65
IPV4HINT = 4


def _skip_name(data: bytes, pos: int) -> int:
    while data[pos]:
        if data[pos] & 0xC0 == 0xC0:  # a compression pointer ends the name
            return pos + 2
        pos += 1 + data[pos]
    return pos + 1


def https_ipv4hints(reply: bytes) -> list[str]:
    """The ipv4hint addresses of the HTTPS records in a DNS reply (RFC 9460 2.2); read by
    hand, as dpkt does not know the type."""
    qdcount, ancount = struct.unpack_from("!HH", reply, 4)
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(reply, pos) + 4
    out: list[str] = []
    for _ in range(ancount):
        pos = _skip_name(reply, pos)
        rtype, _cls, _ttl, rdlength = struct.unpack_from("!HHIH", reply, pos)
        pos += 10
        data, pos = reply[pos : pos + rdlength], pos + rdlength
        if rtype != HTTPS_TYPE:
            continue
        at = _skip_name(data, 2)  # priority, then the target name (uncompressed)
        while at + 4 <= len(data):
            key, length = struct.unpack_from("!HH", data, at)
            value = data[at + 4 : at + 4 + length]
            if key == IPV4HINT:
                out += [socket.inet_ntoa(value[i : i + 4]) for i in range(0, len(value), 4)]
            at += 4 + length
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("resolver")
    p.add_argument("--hello", required=True, help="the ClientHello handshake message, hex")
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()

    q = dpkt.dns.DNS(id=int.from_bytes(os.urandom(2), "big"))
    q.qd = [dpkt.dns.DNS.Q(name=args.name, type=HTTPS_TYPE)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(args.timeout)
        s.sendto(bytes(q), (args.resolver, 53))
        hints = https_ipv4hints(s.recv(4096))
    if not hints:
        print(f"no ipv4hint in the HTTPS answer for {args.name}", file=sys.stderr)
        return 1
    address = hints[0]
    message = bytes.fromhex(args.hello)
    record = b"\x16\x03\x01" + struct.pack("!H", len(message)) + message
    received = 0
    with socket.create_connection((address, args.port), timeout=args.timeout) as conn:
        local_port = conn.getsockname()[1]
        conn.sendall(record)
        try:
            while chunk := conn.recv(4096):
                received += len(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    print(json.dumps({"address": address, "local_port": local_port, "received": received}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
