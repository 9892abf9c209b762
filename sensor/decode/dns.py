"""DNS wire format: messages (UDP, or TCP via `split_tcp_dns`), name compression, and the
address → question-name mapping the flow table uses to name servers.

Only what the sensor needs is decoded: the header, the questions and the answer section's
A, AAAA, CNAME and SVCB/HTTPS records (other types are skipped; the authority and additional
sections are not read). Of an SVCB/HTTPS record, the target, the address hints and the public
names of its ECH configurations (RFC 9849's cover names, from the "ech" parameter). Nothing
here raises: malformed input returns a `Weird`.
"""

from __future__ import annotations

import ipaddress
import struct

from sensor.model import DnsMessage, DnsRecord, Weird

HEADER_LEN = 12
MAX_NAME_LEN = 255
"""Wire length of a name including length octets and the root label (RFC 1035 §2.3.4)."""
MAX_QUESTIONS = 16
"""More questions than this is not a real message (resolvers send exactly one)."""
MAX_ANSWERS = 256
"""Answer records decoded per message; later ones are ignored to bound the work."""
MAX_HINTS = 32
"""Addresses taken from one SVCB/HTTPS ipv4hint or ipv6hint parameter."""
MAX_CHAIN = 16
"""CNAME hops `resolve_chain` follows from a question name."""
MDNS_PORT = 5353

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_SVCB = 64
TYPE_HTTPS = 65
CLASS_IN = 1

_SVC_IPV4HINT = 4
_SVC_ECH = 5
_SVC_IPV6HINT = 6
_ECH_VERSION = 0xFE0D
MAX_ECH_NAMES = 8
"""ECH public names taken from one message."""

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_U16 = struct.Struct("!H")

_LOCAL_SUFFIXES = (
    "local",  # mDNS, RFC 6762
    "lan",
    "home",
    "home.arpa",  # RFC 8375
    "internal",
    "localdomain",
    "localhost",
    "in-addr.arpa",  # reverse lookups name the asker's own view of an address, not a server
    "ip6.arpa",
)


def _presentation(b: int) -> str:
    """Presentation form of one label byte: letters lower-cased, the dot and backslash
    escaped, anything unprintable as \\DDD (RFC 1035 §5.1), so a label cannot smuggle in a
    dot."""
    if b in (0x2E, 0x5C):
        return "\\" + chr(b)
    if 0x21 <= b <= 0x7E:
        return chr(b).lower()
    return f"\\{b:03d}"


_LABEL_CHARS = tuple(_presentation(b) for b in range(256))
_PLAIN_DOT = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_.")


def _label_text(label: bytes) -> str:
    return "".join(_LABEL_CHARS[b] for b in label)


def _name_text(labels: list[bytes]) -> str:
    joined = b".".join(labels).lower()
    # Fast path: hostname characters only, and no label had a dot of its own.
    if _PLAIN_DOT.issuperset(joined) and joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii")
    return ".".join(_label_text(label) for label in labels)


def _read_name(data: bytes, off: int) -> tuple[str, int] | Weird:
    """Read a possibly compressed name at `off`; return it and the offset after it.

    Every pointer target is remembered, so a loop is caught on its first repeat; the 255-octet
    limit bounds how much a chain of pointers can make us read.
    """
    labels: list[bytes] = []
    wire_len = 1  # the root label
    end = -1  # where the name ends in the original position (after the first pointer)
    seen: set[int] | None = None
    size = len(data)
    while True:
        if off >= size:
            return Weird("dns.truncated")
        n = data[off]
        if n == 0:
            return _name_text(labels), (off + 1 if end < 0 else end)
        kind = n & 0xC0
        if kind == 0xC0:
            if off + 1 >= size:
                return Weird("dns.truncated")
            target = ((n & 0x3F) << 8) | data[off + 1]
            if end < 0:
                end = off + 2
            if target >= size:
                return Weird("dns.bad_pointer")
            if seen is None:
                seen = set()
            if target in seen:
                return Weird("dns.pointer_loop")
            seen.add(target)
            off = target
            continue
        if kind != 0:
            return Weird("dns.bad_label")  # 0x40/0x80: extended and reserved label types
        wire_len += n + 1
        if wire_len > MAX_NAME_LEN:
            return Weird("dns.name_too_long")
        start = off + 1
        off = start + n
        if off > size:
            return Weird("dns.truncated")
        labels.append(data[start:off])


def _svcb(
    data: bytes, start: int, end: int, owner: str, rtype: int, ttl: int, covers: list[str]
) -> list[DnsRecord] | Weird:
    """The SVCB/HTTPS record itself (value = target name) plus one record per address hint;
    the public names of its ECH configurations are added to `covers`."""
    if end - start < 2:
        return Weird("dns.bad_svcb")
    priority = _U16.unpack_from(data, start)[0]
    got = _read_name(data, start + 2)
    if isinstance(got, Weird):
        return got
    target, off = got
    if off > end:
        return Weird("dns.bad_svcb")
    if not target and priority != 0:
        target = owner  # ServiceMode "." means the owner name itself (RFC 9460 §2.5.2)
    out = [DnsRecord(owner, rtype, ttl, target)]
    while off < end:
        if off + 4 > end:
            return Weird("dns.bad_svcb")
        key, length = struct.unpack_from("!HH", data, off)
        off += 4
        if off + length > end:
            return Weird("dns.bad_svcb")
        if key in (_SVC_IPV4HINT, _SVC_IPV6HINT):
            width, hint_type = (4, TYPE_A) if key == _SVC_IPV4HINT else (16, TYPE_AAAA)
            if length == 0 or length % width:
                return Weird("dns.bad_svcb")
            for i in range(off, off + min(length, width * MAX_HINTS), width):
                out.append(DnsRecord(owner, hint_type, ttl, _addr_text(data[i : i + width])))
        elif key == _SVC_ECH:
            for name in _ech_public_names(data[off : off + length]):
                if name not in covers and len(covers) < MAX_ECH_NAMES:
                    covers.append(name)
        off += length
    return out


def _ech_public_names(blob: bytes) -> list[str]:
    """The public_name of each ECHConfig (version 0xfe0d) in an ECHConfigList (RFC 9849 4):
    list length, then per config version, length, and contents (config_id, kem_id, public
    key, cipher suites, maximum_name_length, public_name, extensions). Configs of other
    versions are skipped; a malformed list yields what was read before the fault (it names
    covers, it does not name servers)."""
    names: list[str] = []
    if len(blob) < 2:
        return names
    end = min(len(blob), 2 + _U16.unpack_from(blob, 0)[0])
    off = 2
    while off + 4 <= end:
        version, length = struct.unpack_from("!HH", blob, off)
        body, off = blob[off + 4 : off + 4 + length], off + 4 + length
        if off > end or version != _ECH_VERSION or len(body) < 5:
            continue
        pos = 3 + 2 + _U16.unpack_from(body, 3)[0]  # config_id, kem_id, public_key
        if pos + 2 > len(body):
            continue
        pos += 2 + _U16.unpack_from(body, pos)[0] + 1  # cipher_suites, maximum_name_length
        if pos + 1 > len(body):
            continue
        raw = body[pos + 1 : pos + 1 + body[pos]]
        if raw and len(raw) == body[pos] and raw.isascii():
            name = raw.decode("ascii").lower().removesuffix(".")
            if name and name.isprintable():
                names.append(name)
    return names


def _addr_text(raw: bytes) -> str:
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"  # what ipaddress prints, faster
    return str(ipaddress.IPv6Address(raw))


def parse_dns(data: bytes | bytearray | memoryview) -> DnsMessage | Weird:
    """Decode one DNS message (the payload of a UDP datagram, or one message from
    `split_tcp_dns`)."""
    data = bytes(data)
    if len(data) < HEADER_LEN:
        return Weird("dns.truncated")
    msg_id, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(data, 0)
    if qdcount > MAX_QUESTIONS:
        return Weird("dns.too_many_questions")
    off = HEADER_LEN
    questions: list[tuple[str, int]] = []
    for _ in range(qdcount):
        got = _read_name(data, off)
        if isinstance(got, Weird):
            return got
        name, off = got
        if off + 4 > len(data):
            return Weird("dns.truncated")
        questions.append((name, _U16.unpack_from(data, off)[0]))
        off += 4

    answers: list[DnsRecord] = []
    covers: list[str] = []
    for _ in range(min(ancount, MAX_ANSWERS)):
        got = _read_name(data, off)
        if isinstance(got, Weird):
            return got
        owner, off = got
        if off + _RR_FIXED.size > len(data):
            return Weird("dns.truncated")
        rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, off)
        off += _RR_FIXED.size
        rd_end = off + rdlength
        if rd_end > len(data):
            return Weird("dns.truncated")
        if ttl & 0x80000000:
            ttl = 0  # RFC 2181 §8: a TTL with the top bit set is read as zero
        # mDNS puts its cache-flush flag in the class's top bit (RFC 6762 §10.2).
        if rclass & 0x7FFF == CLASS_IN:
            if rtype in (TYPE_A, TYPE_AAAA):
                if rdlength != (4 if rtype == TYPE_A else 16):
                    return Weird("dns.bad_rdata")
                answers.append(DnsRecord(owner, rtype, ttl, _addr_text(data[off:rd_end])))
            elif rtype == TYPE_CNAME:
                got = _read_name(data, off)
                if isinstance(got, Weird):
                    return got
                target, name_end = got
                if name_end != rd_end:
                    return Weird("dns.bad_rdata")
                answers.append(DnsRecord(owner, rtype, ttl, target))
            elif rtype in (TYPE_SVCB, TYPE_HTTPS):
                records = _svcb(data, off, rd_end, owner, rtype, ttl, covers)
                if isinstance(records, Weird):
                    return records
                answers.extend(records)
        off = rd_end

    return DnsMessage(
        id=msg_id,
        is_response=bool(flags & 0x8000),
        rcode=flags & 0x000F,
        questions=tuple(questions),
        answers=tuple(answers),
        ech_public_names=tuple(covers),
    )


def split_tcp_dns(buf: bytes | bytearray | memoryview) -> tuple[list[bytes], bytes]:
    """Split a DNS-over-TCP byte stream into whole messages and the unconsumed rest.

    Each message is preceded by its two-byte length (RFC 1035 §4.2.2). Keep the rest and
    prepend it to the next segment's payload. A zero length is passed on as an empty message
    so that `parse_dns` counts it as a Weird instead of it vanishing.
    """
    view = memoryview(buf)
    out: list[bytes] = []
    off = 0
    size = len(view)
    while off + 2 <= size:
        length = (view[off] << 8) | view[off + 1]
        if off + 2 + length > size:
            break
        out.append(bytes(view[off + 2 : off + 2 + length]))
        off += 2 + length
    return out, bytes(view[off:])


def resolve_chain(msg: DnsMessage) -> list[tuple[str, str, int]]:
    """Map each address in a response's answers to the question name that led to it.

    Follows CNAMEs from every question name (qname → cname1 → ... → A/AAAA), at most
    `MAX_CHAIN` hops and never through the same name twice. Returns (address, qname, ttl)
    with ttl the smallest TTL along the chain. Addresses not reachable from a question are
    left out: nothing the client asked for points to them.
    """
    if not msg.is_response or not msg.answers:
        return []
    cnames: dict[str, tuple[str, int]] = {}
    addrs: dict[str, list[tuple[str, int]]] = {}
    for rr in msg.answers:
        if rr.rtype == TYPE_CNAME:
            cnames.setdefault(rr.name, (rr.value, rr.ttl))
        elif rr.rtype in (TYPE_A, TYPE_AAAA):
            addrs.setdefault(rr.name, []).append((rr.value, rr.ttl))

    found: dict[tuple[str, str], int] = {}
    for qname, _qtype in msg.questions:
        name = qname
        chain_ttl: int | None = None
        visited = {name}
        for _ in range(MAX_CHAIN + 1):
            for addr, ttl in addrs.get(name, ()):
                best = ttl if chain_ttl is None else min(ttl, chain_ttl)
                key = (addr, qname)
                found[key] = min(found.get(key, best), best)
            step = cnames.get(name)
            if step is None:
                break
            name, ttl = step
            if name in visited:
                break
            visited.add(name)
            chain_ttl = ttl if chain_ttl is None else min(ttl, chain_ttl)
    return [(addr, qname, ttl) for (addr, qname), ttl in found.items()]


def is_mdns_port(port: int) -> bool:
    """True for multicast DNS (RFC 6762). Names seen there are LAN service names, never the
    name of a remote server, so the flow table must not learn address → name from them."""
    return port == MDNS_PORT


def is_local_name(name: str) -> bool:
    """True for names that never identify a remote server: mDNS ``.local``, home-network
    suffixes (``.lan``, ``.home.arpa``, ...), reverse-lookup names and single-label names."""
    name = name.lower().rstrip(".")
    if "." not in name:
        return True
    return any(name == s or name.endswith("." + s) for s in _LOCAL_SUFFIXES)


def wire_name_text(data: bytes | bytearray) -> str | None:
    """An uncompressed wire-format name (as in the DHCP client FQDN options) as text.

    Tolerates a missing root label, which is how a partial name is sent (RFC 4702 §2.3.1).
    Returns None if the labels run past the end or a compression pointer appears.
    """
    data = bytes(data)
    labels: list[bytes] = []
    off = 0
    size = len(data)
    while off < size:
        n = data[off]
        if n == 0:
            break
        if n & 0xC0 or off + 1 + n > size or off + 1 + n > MAX_NAME_LEN:
            return None
        labels.append(data[off + 1 : off + 1 + n])
        off += 1 + n
    return _name_text(labels)
