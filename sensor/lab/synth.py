"""Synthetic traffic: build captures of realistic home-network conversations.

Used by the demo (a sample capture to analyze), the tests (every decoding path) and the
benchmark. Packets are real wire format built with dpkt; TLS ClientHellos come from Python's own
`ssl` module through a memory BIO. Only documentation and private addresses are used unless a
caller passes others.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import random
import ssl
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import dpkt

LINK_ETHERNET = 1
LINK_RAW = 101
LINK_SLL = 113
LINK_SLL2 = 276


@dataclass(frozen=True, slots=True)
class Host:
    mac: str
    ip: str

    @property
    def mac_bytes(self) -> bytes:
        return bytes.fromhex(self.mac.replace(":", ""))

    @property
    def ip_bytes(self) -> bytes:
        return ipaddress.ip_address(self.ip).packed

    @property
    def v6(self) -> bool:
        return ":" in self.ip


class PcapWriter:
    """Writes pcap (micro- or nanosecond) or pcapng with one interface."""

    def __init__(
        self, fh: BinaryIO, linktype: int = LINK_ETHERNET, pcapng: bool = False, nano: bool = False
    ) -> None:
        self.fh = fh
        self.linktype = linktype
        self.pcapng = pcapng
        self.nano = nano
        if pcapng:
            shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
            self._block(0x0A0D0D0A, shb_body)
            opts = b""
            if nano:
                opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
            self._block(1, struct.pack("<HHI", linktype, 0, 262144) + opts)
        else:
            magic = 0xA1B23C4D if nano else 0xA1B2C3D4
            fh.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))

    def _block(self, btype: int, body: bytes) -> None:
        pad = (-len(body)) % 4
        blen = 12 + len(body) + pad
        self.fh.write(
            struct.pack("<II", btype, blen) + body + b"\0" * pad + struct.pack("<I", blen)
        )

    def write(self, ts: float, frame: bytes) -> None:
        if self.pcapng:
            ticks = round(ts * (1e9 if self.nano else 1e6))
            hdr = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
            self._block(6, hdr + frame)
        else:
            sec = int(ts)
            frac = round((ts - sec) * (1e9 if self.nano else 1e6))
            self.fh.write(struct.pack("<IIII", sec, frac, len(frame), len(frame)) + frame)


def client_hello(
    server_name: str | None,
    *,
    tls13: bool = True,
    alpn: Sequence[str] = ("h2", "http/1.1"),
    padding_alpn: int = 0,
) -> bytes:
    """A real ClientHello as Python's ssl module sends it (TLS record bytes).

    `padding_alpn` adds that many bytes of extra ALPN protocol names, the way to make a hello as
    large as one carrying post-quantum key shares (the ssl module offers no other knob).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    protos = list(alpn)
    while padding_alpn > 0:
        chunk = min(200, padding_alpn)
        protos.append(f"x-pad-{len(protos)}-" + "p" * chunk)
        padding_alpn -= chunk + 8
    if protos:
        ctx.set_alpn_protocols(protos)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        obj.do_handshake()
    return outgoing.read()


class Capture:
    """Builds conversations into a PcapWriter, keeping a clock."""

    def __init__(
        self,
        writer: PcapWriter,
        start: float = 1_700_000_000.0,
        gateway_mac: str = "02:00:00:00:00:01",
        vlans: Sequence[int] = (),
        seed: int = 1,
    ) -> None:
        self.w = writer
        self.ts = start
        self.gateway_mac = bytes.fromhex(gateway_mac.replace(":", ""))
        self.vlans = tuple(vlans)
        self.rng = random.Random(seed)
        self.packets = 0

    def tick(self, seconds: float = 0.001) -> float:
        self.ts += seconds
        return self.ts

    # --- link layer -----------------------------------------------------------------------------

    def frame(self, ip_packet: bytes, v6: bool, lan: Host, up: bool) -> bytes:
        et = 0x86DD if v6 else 0x0800
        lt = self.w.linktype
        if lt == LINK_RAW:
            return ip_packet
        if lt == LINK_SLL:
            # As `tcpdump -i any` on the gateway: LAN frames arrive (host), replies go out.
            pkttype = 0 if up else 4
            addr = lan.mac_bytes if up else self.gateway_mac
            return struct.pack(">HHH8sH", pkttype, 1, 6, addr + b"\0\0", et) + ip_packet
        if lt == LINK_SLL2:
            pkttype = 0 if up else 4
            addr = lan.mac_bytes if up else self.gateway_mac
            return struct.pack(">HHIHBB8s", et, 0, 2, 1, pkttype, 6, addr + b"\0\0") + ip_packet
        src, dst = (lan.mac_bytes, self.gateway_mac) if up else (self.gateway_mac, lan.mac_bytes)
        tags = b"".join(
            struct.pack(">HH", 0x88A8 if i == 0 and len(self.vlans) > 1 else 0x8100, vid)
            for i, vid in enumerate(self.vlans)
        )
        return dst + src + tags + struct.pack(">H", et) + ip_packet

    def emit(self, ip_packet: bytes, v6: bool, lan: Host, up: bool, gap: float = 0.0005) -> None:
        self.tick(gap)
        self.w.write(self.ts, self.frame(ip_packet, v6, lan, up))
        self.packets += 1

    # --- network and transport -----------------------------------------------------------------

    @staticmethod
    def ip(src: str, dst: str, proto: int, l4: dpkt.Packet) -> bytes:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version == 6:
            pkt6 = dpkt.ip6.IP6(src=s.packed, dst=d.packed, nxt=proto, hlim=64, data=l4)
            pkt6.plen = len(bytes(l4))
            return bytes(pkt6)
        pkt = dpkt.ip.IP(src=s.packed, dst=d.packed, p=proto, ttl=64, data=l4)
        return bytes(pkt)

    def udp(self, lan: Host, remote: str, lport: int, rport: int, payload: bytes, up: bool) -> None:
        src, dst, sp, dp = (lan.ip, remote, lport, rport) if up else (remote, lan.ip, rport, lport)
        u = dpkt.udp.UDP(sport=sp, dport=dp, data=payload)
        u.ulen = 8 + len(payload)
        self.emit(self.ip(src, dst, 17, u), lan.v6, lan, up)

    def dns_lookup(
        self,
        lan: Host,
        resolver: str,
        name: str,
        addrs: Sequence[str],
        cnames: Sequence[str] = (),
        ttl: int = 300,
        tcp: bool = False,
    ) -> None:
        """A query and its answer (over UDP, or a whole TCP connection when `tcp`)."""
        qtype = dpkt.dns.DNS_AAAA if addrs and ":" in addrs[0] else dpkt.dns.DNS_A
        qid = self.rng.randrange(65536)
        q = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
        r = dpkt.dns.DNS(id=qid, op=dpkt.dns.DNS_RA, qr=dpkt.dns.DNS_R, rcode=0)
        r.op = 0x8180
        r.qd = [dpkt.dns.DNS.Q(name=name, type=qtype)]
        an = []
        owner = name
        for cn in cnames:
            rr = dpkt.dns.DNS.RR(name=owner, type=dpkt.dns.DNS_CNAME, ttl=ttl)
            rr.cname = cn
            an.append(rr)
            owner = cn
        for a in addrs:
            ip = ipaddress.ip_address(a)
            rr = dpkt.dns.DNS.RR(
                name=owner, type=dpkt.dns.DNS_AAAA if ip.version == 6 else dpkt.dns.DNS_A, ttl=ttl
            )
            if ip.version == 6:
                rr.ip6 = ip.packed
            else:
                rr.ip = ip.packed
            an.append(rr)
        r.an = an
        port = self.rng.randrange(20000, 60000)
        if tcp:
            qb, rb = bytes(q), bytes(r)
            s = TcpSession(self, lan, resolver, port, 53)
            s.open()
            s.send(struct.pack(">H", len(qb)) + qb, up=True)
            s.send(struct.pack(">H", len(rb)) + rb, up=False, segment=max(8, len(rb) // 2))
            s.close()
        else:
            self.udp(lan, resolver, port, 53, bytes(q), up=True)
            self.udp(lan, resolver, port, 53, bytes(r), up=False)

    def dhcp_request(
        self, lan: Host, requested_ip: str, hostname: str, vendor_class: str = "android-dhcp-13"
    ) -> None:
        opts = [
            (dpkt.dhcp.DHCP_OPT_MSGTYPE, bytes([dpkt.dhcp.DHCPREQUEST])),
            (dpkt.dhcp.DHCP_OPT_REQ_IP, ipaddress.ip_address(requested_ip).packed),
            (dpkt.dhcp.DHCP_OPT_HOSTNAME, hostname.encode()),
            (dpkt.dhcp.DHCP_OPT_VENDOR_ID, vendor_class.encode()),
            (dpkt.dhcp.DHCP_OPT_PARAM_REQ, bytes([1, 3, 6, 15, 26, 28, 51, 58, 59, 43])),
        ]
        msg = dpkt.dhcp.DHCP(chaddr=lan.mac_bytes, xid=self.rng.randrange(1 << 32), opts=opts)
        u = dpkt.udp.UDP(sport=68, dport=67, data=bytes(msg))
        u.ulen = 8 + len(bytes(msg))
        pkt = dpkt.ip.IP(src=b"\0\0\0\0", dst=b"\xff\xff\xff\xff", p=17, ttl=64, data=u)
        self.emit(bytes(pkt), False, lan, True)


class TcpSession:
    """One TCP connection between a LAN host and a remote address."""

    def __init__(self, cap: Capture, lan: Host, remote: str, lport: int, rport: int) -> None:
        self.cap = cap
        self.lan = lan
        self.remote = remote
        self.lport = lport
        self.rport = rport
        self.cseq = cap.rng.randrange(1 << 32)
        self.sseq = cap.rng.randrange(1 << 32)

    def _seg(self, up: bool, flags: int, seq: int, ack: int, data: bytes = b"") -> bytes:
        sp, dp = (self.lport, self.rport) if up else (self.rport, self.lport)
        t = dpkt.tcp.TCP(
            sport=sp,
            dport=dp,
            seq=seq & 0xFFFFFFFF,
            ack=ack & 0xFFFFFFFF,
            flags=flags,
            win=65535,
            data=data,
        )
        src, dst = (self.lan.ip, self.remote) if up else (self.remote, self.lan.ip)
        return self.cap.ip(src, dst, 6, t)

    def open(self) -> None:
        c = self.cap
        c.emit(self._seg(True, dpkt.tcp.TH_SYN, self.cseq, 0), self.lan.v6, self.lan, True)
        c.emit(
            self._seg(False, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, self.sseq, self.cseq + 1),
            self.lan.v6,
            self.lan,
            False,
        )
        self.cseq += 1
        self.sseq += 1
        c.emit(self._seg(True, dpkt.tcp.TH_ACK, self.cseq, self.sseq), self.lan.v6, self.lan, True)

    def segments(self, data: bytes, up: bool, segment: int = 1448) -> list[bytes]:
        """Data segments (IP packets) without emitting them, advancing the sequence space."""
        out = []
        for i in range(0, len(data), segment):
            chunk = data[i : i + segment]
            if up:
                out.append(
                    self._seg(True, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, self.cseq, self.sseq, chunk)
                )
                self.cseq += len(chunk)
            else:
                out.append(
                    self._seg(
                        False, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, self.sseq, self.cseq, chunk
                    )
                )
                self.sseq += len(chunk)
        return out

    def send(
        self,
        data: bytes,
        up: bool = True,
        segment: int = 1448,
        order: Iterable[int] | None = None,
        duplicate: Sequence[int] = (),
        ack: bool = True,
    ) -> None:
        """Send `data` in segments; `order` permutes them, `duplicate` resends some."""
        segs = self.segments(data, up, segment)
        idx = list(order) if order is not None else list(range(len(segs)))
        idx += list(duplicate)
        for i in idx:
            self.cap.emit(segs[i], self.lan.v6, self.lan, up)
        if ack:
            self.ack(not up)

    def ack(self, up: bool) -> None:
        seq, ackn = (self.cseq, self.sseq) if up else (self.sseq, self.cseq)
        self.cap.emit(self._seg(up, dpkt.tcp.TH_ACK, seq, ackn), self.lan.v6, self.lan, up)

    def close(self) -> None:
        c = self.cap
        f = dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK
        c.emit(self._seg(True, f, self.cseq, self.sseq), self.lan.v6, self.lan, True)
        c.emit(self._seg(False, f, self.sseq, self.cseq + 1), self.lan.v6, self.lan, False)
        self.cseq += 1
        self.sseq += 1
        self.ack(True)


def http_request(
    method: str,
    host: str,
    path: str,
    user_agent: str | None = None,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if user_agent:
        lines.append(f"User-Agent: {user_agent}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- the sample home network -------------------------------------------------------------------

PHONE = Host("64:09:80:12:34:56", "192.168.1.23")
LAPTOP = Host("3c:22:fb:aa:bb:cc", "192.168.1.42")
PHONE6 = Host("64:09:80:12:34:56", "fd00:1::23")
RESOLVER = "192.168.1.1"
RESOLVER6 = "fd00:1::1"
XIAOMI_API_IP = "120.92.65.10"
"""api.account.xiaomi.com in 2014: Kingsoft Cloud, Beijing. Only ever written into capture
files, never a target of traffic."""
AWS_SG_IP = "52.74.0.1"
"""An address in AWS ap-southeast-1 (Singapore) per AWS's ip-ranges.json; capture files only."""
DEMO_IMEI = "861234567890127"
"""A made-up, Luhn-valid IMEI (reporting body 86) for the demo capture."""
DEMO_PHONE = "+6281234567890"
"""A made-up Indonesian mobile number (valid per libphonenumber's metadata)."""
DEMO_CONTACTS = ("+6281311112222", "+6285722223333", "+6281944445555", "+6287855556666")
REDMI_UA = "Dalvik/2.1.0 (Linux; U; Android 10; Redmi Note 8 Pro MIUI/V12.0.3.0.QGGMIXM)"
LEAK_BODY = (
    f"imei={DEMO_IMEI}&phone=%2B{DEMO_PHONE[1:]}&model=Redmi+Note+8+Pro&contacts="
    + "%2C".join(f"%2B{c[1:]}" for c in DEMO_CONTACTS)
)
"""What the 2014 analysis found the Redmi posting in clear: IMEI, the phone's number, its
contact book (made-up values)."""


def xiaomi_register(cap: Capture, sport: int, body: bytes) -> None:
    """The phone looks up Xiaomi's account API and POSTs `body` (a form) to it in clear from
    port `sport`; the server answers "ok"."""
    cap.dns_lookup(PHONE, RESOLVER, "api.account.xiaomi.com", [XIAOMI_API_IP], ttl=600)
    s = TcpSession(cap, PHONE, XIAOMI_API_IP, sport, 80)
    s.open()
    s.send(
        http_request(
            "POST",
            "api.account.xiaomi.com",
            "/pass/v2/register",
            REDMI_UA,
            body,
            [("Content-Type", "application/x-www-form-urlencoded")],
        )
    )
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", up=False)
    s.close()


def sample_home(fh: BinaryIO, linktype: int = LINK_ETHERNET, pcapng: bool = False) -> int:
    """The demo capture: a Xiaomi phone and a laptop on a home LAN. Returns the packet count."""
    cap = Capture(PcapWriter(fh, linktype, pcapng))
    cap.dhcp_request(PHONE, PHONE.ip, "Redmi-Note-8-Pro")
    cap.dhcp_request(LAPTOP, LAPTOP.ip, "laptop", vendor_class="MSFT 5.0")
    # The phone posts to Xiaomi's account API, as the Redmi 1S did in 2014 (Kingsoft Cloud, CN).
    xiaomi_register(cap, 40001, LEAK_BODY.encode())
    # A TLS upload to a data-collection endpoint in AWS Singapore.
    cap.dns_lookup(
        PHONE,
        RESOLVER,
        "tracking.intl.miui.com",
        [AWS_SG_IP],
        cnames=["tracking.intl.miui.com.cdn.example.net"],
        ttl=300,
    )
    s = TcpSession(cap, PHONE, AWS_SG_IP, 40002, 443)
    s.open()
    s.send(client_hello("tracking.intl.miui.com"))
    s.send(bytes(3000), up=False)
    s.send(bytes(200_000), up=True)
    s.close()
    # The same phone over IPv6, name from DNS only (no SNI in what we see).
    cap.dns_lookup(PHONE6, RESOLVER6, "data.mistat.xiaomi.com", ["2001:db8::20"], ttl=300)
    s = TcpSession(cap, PHONE6, "2001:db8::20", 40003, 443)
    s.open()
    s.send(bytes(1000), up=True)
    s.send(bytes(5000), up=False)
    s.close()
    # The laptop: TLS to a documentation-range server, DNS over TCP.
    cap.dns_lookup(LAPTOP, RESOLVER, "www.example.com", ["192.0.2.80"], tcp=True)
    s = TcpSession(cap, LAPTOP, "192.0.2.80", 50000, 443)
    s.open()
    s.send(client_hello("www.example.com", padding_alpn=1500))
    s.send(bytes(80_000), up=False)
    s.close()
    return cap.packets


def write_sample(path: str, linktype: int = LINK_ETHERNET, pcapng: bool = False) -> int:
    buf = io.BytesIO()
    n = sample_home(buf, linktype, pcapng)
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
    return n
