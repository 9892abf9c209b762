"""A realistic home-traffic capture of any size, generated fast.

Most of a home network's packets are bulk TLS data in full-size frames and their ACKs; a few per
cent are DNS, ClientHellos, QUIC and plaintext HTTP. Conversations are built with sensor.lab.synth
for the packets that carry names (so they are real wire format) and with pre-packed header
templates for the bulk (so a million packets take seconds, not minutes).
"""

from __future__ import annotations

import random
import struct
from typing import BinaryIO

from sensor.lab.synth import Capture, Host, PcapWriter, TcpSession, client_hello, http_request

_MSS = 1448


def _bulk(cap: Capture, s: TcpSession, nbytes: int, up: bool) -> None:
    """`nbytes` of TLS application data one way, an ACK every second segment the other way."""
    # Pack one data segment and one ACK with synth, then patch sequence numbers in the bytes.
    seg = s.segments(b"\x17" * _MSS, up)[0]
    s_ack_up = not up
    ack_pkt = s._seg(s_ack_up, 0x10, s.cseq if s_ack_up else s.sseq, s.sseq if s_ack_up else s.cseq)
    v6 = s.lan.v6
    ihl = 40 if v6 else 20
    data_frame = bytearray(cap.frame(seg, v6, s.lan, up))
    ack_frame = bytearray(cap.frame(ack_pkt, v6, s.lan, s_ack_up))
    d_off = len(data_frame) - len(seg) + ihl + 4
    a_off = len(ack_frame) - len(ack_pkt) + ihl + 8
    seq = (s.cseq if up else s.sseq) - _MSS
    sent = 0
    i = 0
    write = cap.w.write
    while sent < nbytes:
        struct.pack_into(">I", data_frame, d_off, seq & 0xFFFFFFFF)
        cap.ts += 0.00012
        write(cap.ts, bytes(data_frame))
        seq += _MSS
        sent += _MSS
        i += 1
        if i % 2 == 0:
            struct.pack_into(">I", ack_frame, a_off, seq & 0xFFFFFFFF)
            cap.ts += 0.00002
            write(cap.ts, bytes(ack_frame))
            cap.packets += 1
        cap.packets += 1
    if up:
        s.cseq = seq
    else:
        s.sseq = seq


def home_mix(
    fh: BinaryIO, packets: int, seed: int = 7, quic_flights: list[list[bytes]] | None = None
) -> int:
    """Write about `packets` packets of home traffic; returns the exact count."""
    rng = random.Random(seed)
    cap = Capture(PcapWriter(fh), seed=seed)
    devices = [
        Host(
            f"64:09:80:00:00:{i:02x}" if i % 3 else f"3c:22:fb:00:00:{i:02x}", f"192.168.1.{10 + i}"
        )
        for i in range(12)
    ] + [Host(f"64:09:80:00:01:{i:02x}", f"fd00:1::{10 + i:x}") for i in range(4)]
    hellos = {}
    names = [f"api{i}.vendor{i % 17}.example.com" for i in range(200)]
    port = 30000
    while cap.packets < packets:
        dev = rng.choice(devices)
        v6 = dev.v6
        resolver = "fd00:1::1" if v6 else "192.168.1.1"
        name = rng.choice(names)
        server = (
            f"2001:db8::{rng.randrange(1, 4000):x}" if v6 else f"203.0.113.{rng.randrange(1, 255)}"
        )
        port = port + 1 if port < 60000 else 30000
        kind = rng.random()
        cap.dns_lookup(dev, resolver, name, [server], ttl=300)
        if kind < 0.80:
            # A TLS connection carrying a download (most) or an upload.
            s = TcpSession(cap, dev, server, port, 443)
            s.open()
            if name not in hellos:
                hellos[name] = client_hello(name)
            s.send(hellos[name])
            s.send(b"\x16\x03\x03" + bytes(3000), up=False)
            size = int(rng.lognormvariate(12.0, 1.2))
            _bulk(cap, s, min(size, 8_000_000), up=rng.random() < 0.15)
            s.close()
        elif kind < 0.90 and quic_flights:
            # QUIC: the client's Initial datagrams, then bulk UDP both ways.
            for dgram in rng.choice(quic_flights):
                cap.udp(dev, server, port, 443, dgram, up=True)
            for _ in range(rng.randrange(20, 400)):
                cap.udp(dev, server, port, 443, b"\x40" + bytes(1200), up=False)
                if rng.random() < 0.25:
                    cap.udp(dev, server, port, 443, b"\x40" + bytes(40), up=True)
        else:
            s = TcpSession(cap, dev, server, port, 80)
            s.open()
            body = bytes(rng.randrange(100, 6000))
            s.send(http_request("POST", name, "/v1/upload?x=1", "okhttp/4.9.0", body))
            s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + bytes(20000), up=False)
            s.close()
    return cap.packets
