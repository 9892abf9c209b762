"""Builders for DNS, DHCP and HTTP payloads (bytes) that any test can reuse.

Standard messages come from dpkt (an independent encoder, with its own name compression);
what dpkt cannot build (SVCB/HTTPS records, DHCPv6, deliberately broken names) is written
by hand here. Addresses are documentation ranges only.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence

import dpkt

# --- DNS --------------------------------------------------------------------------------------

QR = 0x8000
RD = 0x0100
RA = 0x0080


def dns_query(name: str, qtype: int = 1, id: int = 0x1234) -> bytes:
    """A recursive query for one name, as a stub resolver sends it."""
    msg = dpkt.dns.DNS(id=id, op=RD, qd=[dpkt.dns.DNS.Q(name=name, type=qtype, cls=1)])
    msg.an, msg.ns, msg.ar = [], [], []
    return bytes(msg)


def _address_rr(owner: str, addr: str, ttl: int) -> object:
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return dpkt.dns.DNS.RR(name=owner, type=1, cls=1, ttl=ttl, ip=ip.packed)
    return dpkt.dns.DNS.RR(name=owner, type=28, cls=1, ttl=ttl, ip6=ip.packed)


def dns_response(
    qname: str,
    chain: Sequence[str] = (),
    addrs: Sequence[str] = (),
    ttl: int = 300,
    *,
    chain_ttls: Sequence[int] | None = None,
    qtype: int | None = None,
    id: int = 0x1234,
    rcode: int = 0,
) -> bytes:
    """A response for `qname`: CNAMEs qname → chain[0] → ... → chain[-1], then A/AAAA records
    for `addrs` owned by the last name. CNAME TTLs come from `chain_ttls` (else `ttl`)."""
    if qtype is None:
        qtype = 28 if addrs and ipaddress.ip_address(addrs[0]).version == 6 else 1
    cname_ttls = list(chain_ttls) if chain_ttls is not None else [ttl] * len(chain)
    answers: list[object] = []
    owner = qname
    for target, cttl in zip(chain, cname_ttls, strict=True):
        answers.append(dpkt.dns.DNS.RR(name=owner, type=5, cls=1, ttl=cttl, cname=target))
        owner = target
    answers.extend(_address_rr(owner, addr, ttl) for addr in addrs)
    msg = dpkt.dns.DNS(
        id=id,
        op=QR | RD | RA | (rcode & 0xF),
        qd=[dpkt.dns.DNS.Q(name=qname, type=qtype, cls=1)],
    )
    msg.an, msg.ns, msg.ar = answers, [], []
    return bytes(msg)


def encode_name(name: str) -> bytes:
    """Uncompressed wire form of a dotted name ("" is the root)."""
    out = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label)
    return out + b"\x00"


def raw_rr(owner: bytes | str, rtype: int, ttl: int, rdata: bytes, rclass: int = 1) -> bytes:
    """One resource record; `owner` is a name, or raw wire bytes (e.g. a pointer)."""
    name = encode_name(owner) if isinstance(owner, str) else owner
    return name + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def raw_dns(
    id: int = 0x1234,
    flags: int = QR | RD | RA,
    questions: Iterable[tuple[str, int]] = (),
    answers: Sequence[bytes] = (),
    *,
    raw_questions: bytes = b"",
    qdcount: int | None = None,
    ancount: int | None = None,
) -> bytes:
    """A DNS message assembled by hand from already-encoded answer records."""
    qs = [encode_name(name) + struct.pack("!HH", qtype, 1) for name, qtype in questions]
    qd = len(qs) if qdcount is None else qdcount
    an = len(answers) if ancount is None else ancount
    header = struct.pack("!HHHHHH", id, flags, qd, an, 0, 0)
    return header + b"".join(qs) + raw_questions + b"".join(answers)


def svcb_rdata(priority: int, target: str, params: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """SVCB/HTTPS RDATA (RFC 9460): priority, uncompressed target, then key/length/value."""
    out = struct.pack("!H", priority) + encode_name(target)
    for key, value in sorted(params):
        out += struct.pack("!HH", key, len(value)) + value
    return out


def https_params(
    alpn: Sequence[str] = (), ipv4hint: Sequence[str] = (), ipv6hint: Sequence[str] = ()
) -> list[tuple[int, bytes]]:
    params: list[tuple[int, bytes]] = []
    if alpn:
        params.append((1, b"".join(bytes([len(a)]) + a.encode() for a in alpn)))
    if ipv4hint:
        params.append((4, b"".join(ipaddress.IPv4Address(a).packed for a in ipv4hint)))
    if ipv6hint:
        params.append((6, b"".join(ipaddress.IPv6Address(a).packed for a in ipv6hint)))
    return params


def https_response(
    qname: str,
    target: str = "",
    ipv4hint: Sequence[str] = (),
    ipv6hint: Sequence[str] = (),
    ttl: int = 300,
    *,
    priority: int = 1,
    alpn: Sequence[str] = ("h2", "h3"),
    rtype: int = 65,
    id: int = 0x1234,
) -> bytes:
    """A response to an HTTPS (65) or SVCB (64) query with one record carrying hints."""
    rdata = svcb_rdata(priority, target, https_params(alpn, ipv4hint, ipv6hint))
    return raw_dns(id, questions=[(qname, rtype)], answers=[raw_rr(qname, rtype, ttl, rdata)])


def tcp_dns(*messages: bytes) -> bytes:
    """DNS-over-TCP stream: each message behind its two-byte length."""
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


# --- DHCPv4 -----------------------------------------------------------------------------------


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def dhcp_request(
    mac: str = "02:00:5e:10:00:01",
    hostname: str | None = "laptop",
    vendor_class: str | None = "android-dhcp-14",
    *,
    msg_type: int = 3,
    requested_ip: str | None = "192.0.2.10",
    params: Sequence[int] = (1, 3, 6, 15, 119, 252),
    fqdn: bytes | None = None,
    ciaddr: str = "0.0.0.0",
    yiaddr: str = "0.0.0.0",
    op: int = 1,
    htype: int = 1,
    hlen: int = 6,
    extra_opts: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """A DHCPv4 message (REQUEST by default) with the options a client usually sends.

    `fqdn` is the raw value of option 81 (flags, rcode1, rcode2, name)."""
    opts: list[tuple[int, bytes]] = [(53, bytes([msg_type]))]
    if requested_ip is not None:
        opts.append((50, ipaddress.IPv4Address(requested_ip).packed))
    if hostname is not None:
        opts.append((12, hostname.encode()))
    if fqdn is not None:
        opts.append((81, fqdn))
    if vendor_class is not None:
        opts.append((60, vendor_class.encode()))
    if params:
        opts.append((55, bytes(params)))
    opts.extend(extra_opts)
    msg = dpkt.dhcp.DHCP(
        op=op,
        hrd=htype,
        hln=hlen,
        xid=0x3903F326,
        ciaddr=int(ipaddress.IPv4Address(ciaddr)),
        yiaddr=int(ipaddress.IPv4Address(yiaddr)),
        chaddr=mac_bytes(mac).ljust(16, b"\x00"),
        opts=opts,
    )
    return bytes(msg)


# --- DHCPv6 -----------------------------------------------------------------------------------


def v6_option(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def duid_ll(mac: str) -> bytes:
    return struct.pack("!HH", 3, 1) + mac_bytes(mac)


def duid_llt(mac: str, time: int = 0x2A2B2C2D) -> bytes:
    return struct.pack("!HHI", 1, 1, time) + mac_bytes(mac)


def duid_en(enterprise: int = 32473, ident: bytes = b"\x01\x02\x03\x04") -> bytes:
    return struct.pack("!HI", 2, enterprise) + ident


def dhcpv6_solicit(
    mac: str | None = "02:00:5e:10:00:02",
    hostname: str | None = "phone.example.com",
    vendor_class: Sequence[str] = ("MSFT 5.0",),
    *,
    msg_type: int = 1,
    duid: bytes | None = None,
    enterprise: int = 311,
    oro: Sequence[int] = (23, 24, 39),
    ia_addr: str | None = None,
    xid: int = 0x0A0B0C,
    extra_opts: Sequence[bytes] = (),
) -> bytes:
    """A DHCPv6 client message (SOLICIT by default). The client identifier is `duid`, or a
    DUID-LL built from `mac`; `ia_addr` adds an IA_NA holding that address."""
    out = bytes([msg_type]) + xid.to_bytes(3, "big")
    client_id = duid if duid is not None else (duid_ll(mac) if mac is not None else None)
    if client_id is not None:
        out += v6_option(1, client_id)
    out += v6_option(8, b"\x00\x00")  # elapsed time
    if ia_addr is not None:
        iaaddr = v6_option(5, ipaddress.IPv6Address(ia_addr).packed + struct.pack("!II", 0, 0))
        out += v6_option(3, struct.pack("!III", 1, 0, 0) + iaaddr)
    if oro:
        out += v6_option(6, b"".join(struct.pack("!H", code) for code in oro))
    if vendor_class:
        data = b"".join(struct.pack("!H", len(v)) + v.encode() for v in vendor_class)
        out += v6_option(16, struct.pack("!I", enterprise) + data)
    if hostname is not None:
        out += v6_option(39, b"\x01" + encode_name(hostname))
    return out + b"".join(extra_opts)


def dhcpv6_relay_forw(
    inner: bytes, link: str = "2001:db8::1", peer: str = "fe80::1", hops: int = 0
) -> bytes:
    """Wrap a client message in a RELAY-FORW (12) as a relay agent would."""
    head = bytes([12, hops]) + ipaddress.IPv6Address(link).packed
    return head + ipaddress.IPv6Address(peer).packed + v6_option(9, inner)


# --- HTTP -------------------------------------------------------------------------------------


def http_request(
    method: str = "GET",
    path: str = "/",
    host: str | None = "www.example.com",
    headers: Sequence[tuple[str, str]] = (("User-Agent", "curl/8.5.0"), ("Accept", "*/*")),
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    content_length: bool | None = None,
    eol: bytes = b"\r\n",
) -> bytes:
    """A request as bytes. Content-Length is added when there is a body (or when asked)."""
    lines = [f"{method} {path} {version}".encode()]
    if host is not None:
        lines.append(f"Host: {host}".encode())
    lines.extend(f"{name}: {value}".encode() for name, value in headers)
    if content_length or (content_length is None and body):
        lines.append(f"Content-Length: {len(body)}".encode())
    return eol.join(lines) + eol + eol + body


def chunked(body: bytes, size: int = 5) -> bytes:
    """`body` in chunked transfer coding, `size` bytes per chunk, no trailers."""
    out = b"".join(
        f"{len(body[i : i + size]):x}".encode() + b"\r\n" + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    )
    return out + b"0\r\n\r\n"


def ech_config_list(*public_names: str, config_id: int = 7) -> bytes:
    """An ECHConfigList (RFC 9849 4) with one version-0xfe0d ECHConfig per public name:
    config_id, KEM DHKEM(X25519) with a 32-byte key, one cipher suite (HKDF-SHA256,
    AES-128-GCM), maximum_name_length 0, the public name, no extensions. The value of the
    SVCB/HTTPS "ech" parameter (key 5)."""
    configs = b""
    for i, name in enumerate(public_names):
        raw = name.encode()
        contents = bytes([config_id + i]) + struct.pack("!HH", 0x0020, 32) + bytes(range(32))
        contents += struct.pack("!HHH", 4, 0x0001, 0x0001) + b"\x00"
        contents += bytes([len(raw)]) + raw + struct.pack("!H", 0)
        configs += struct.pack("!HH", 0xFE0D, len(contents)) + contents
    return struct.pack("!H", len(configs)) + configs


def https_ech_response(
    qname: str, ipv4hint: Sequence[str], public_name: str, *, ttl: int = 300, id: int = 0x1234
) -> bytes:
    """An HTTPS answer the way an ECH-enabled zone publishes it: ALPN, address hints and an
    "ech" parameter whose configuration names `public_name` as the cover."""
    params = [*https_params(("h2", "h3"), ipv4hint), (5, ech_config_list(public_name))]
    rdata = svcb_rdata(1, "", params)
    return raw_dns(id, questions=[(qname, 65)], answers=[raw_rr(qname, 65, ttl, rdata)])
