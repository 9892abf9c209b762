"""DHCPv4 (BOOTP with the RFC 1048 cookie) and DHCPv6: who the client says it is.

Decodes the fields that fingerprint a device (MAC, hostname, vendor class, parameter request
list) and the addresses in play. Nothing here raises: malformed input returns a `Weird`.
"""

from __future__ import annotations

import ipaddress
import struct

from sensor.decode.dns import wire_name_text
from sensor.model import DhcpMessage, Weird

BOOTP_LEN = 236
"""Fixed BOOTP header up to (not including) the options field (RFC 2131 §2)."""
MAGIC = b"\x63\x82\x53\x63"
MAX_TEXT = 255
"""Longest hostname or vendor class kept; the options cannot be longer unless concatenated."""
MAX_RELAY_DEPTH = 8
MAX_DNS_SERVERS = 8
"""Resolvers kept from one message (the options could list 63 IPv4 or 4,095 IPv6 ones)."""
"""DHCPv6 relay wrappers unwrapped to reach the client's message (the hop limit is 32)."""

_OPT_PAD = 0
_OPT_END = 255
_OPT_DNS_SERVERS = 6
_OPT_HOSTNAME = 12
_OPT_REQUESTED_IP = 50
_OPT_OVERLOAD = 52
_OPT_MSG_TYPE = 53
_OPT_PARAM_LIST = 55
_OPT_VENDOR_CLASS = 60
_OPT_CLIENT_FQDN = 81

_SNAME = slice(44, 108)
_FILE = slice(108, 236)

_V6_CLIENTID = 1
_V6_IA_NA = 3
_V6_IAADDR = 5
_V6_ORO = 6
_V6_RELAY_MSG = 9
_V6_VENDOR_CLASS = 16
_V6_DNS_SERVERS = 23
_V6_FQDN = 39
_V6_RELAY_FORW = 12
_V6_RELAY_REPL = 13
_V6_CLIENT_TYPES = frozenset({1, 3, 4, 5, 6, 8, 9, 11})
"""Solicit, Request, Confirm, Renew, Rebind, Release, Decline, Information-request."""
_V6_SERVER_TYPES = frozenset({2, 7})
"""Advertise, Reply."""

_DUID_LLT = 1
_DUID_LL = 3
_HW_ETHERNET = 1

_U16 = struct.Struct("!H")
_V6_OPT = struct.Struct("!HH")


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _text(raw: bytes) -> str | None:
    """Option text as a printable string: NUL padding dropped, control characters replaced,
    invalid UTF-8 kept visible as escapes, so what a device says survives into the logs."""
    text = raw[:MAX_TEXT].strip(b"\x00 ").decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text or None


def _v4_addr(raw: bytes) -> str | None:
    if len(raw) != 4 or raw == b"\x00\x00\x00\x00":
        return None
    return str(ipaddress.IPv4Address(raw))


def _v4_list(raw: bytes) -> tuple[str, ...]:
    """A list of IPv4 addresses (option 6), the unspecified address left out."""
    out: list[str] = []
    for i in range(0, len(raw) - 3, 4):
        addr = _v4_addr(raw[i : i + 4])
        if addr is not None and addr not in out and len(out) < MAX_DNS_SERVERS:
            out.append(addr)
    return tuple(out)


def _v6_list(raw: bytes) -> tuple[str, ...]:
    """A list of IPv6 addresses (DHCPv6 option 23, the RA RDNSS option), :: left out."""
    out: list[str] = []
    for i in range(0, len(raw) - 15, 16):
        addr = ipaddress.IPv6Address(raw[i : i + 16])
        if not addr.is_unspecified and str(addr) not in out and len(out) < MAX_DNS_SERVERS:
            out.append(str(addr))
    return tuple(out)


def _read_v4_options(data: bytes, off: int, end: int, opts: dict[int, bytearray]) -> Weird | None:
    """Read options from data[off:end] into `opts`, concatenating repeats (RFC 3396)."""
    while off < end:
        code = data[off]
        if code == _OPT_PAD:
            off += 1
            continue
        if code == _OPT_END:
            return None
        if off + 1 >= end:
            return Weird("dhcp.truncated_option")
        length = data[off + 1]
        off += 2
        if off + length > end:
            return Weird("dhcp.truncated_option")
        value = opts.get(code)
        if value is None:
            opts[code] = bytearray(data[off : off + length])
        elif len(value) < 4 * MAX_TEXT:
            value += data[off : off + length]
        off += length
    return None  # a missing END option is common enough to let pass


def _fqdn_text(value: bytes, skip: int, wire: bool) -> str | None:
    """The name in a client FQDN option after its `skip` leading flag/rcode bytes."""
    raw = value[skip:]
    if wire:
        name = wire_name_text(raw)
        return name or None
    return _text(raw.rstrip(b".")) if raw else None


def parse_dhcp(data: bytes | bytearray | memoryview) -> DhcpMessage | Weird:
    """Decode a DHCPv4 message (the payload of a UDP datagram on port 67/68)."""
    data = bytes(data)
    if len(data) < BOOTP_LEN + len(MAGIC):
        return Weird("dhcp.truncated")
    op, htype, hlen = data[0], data[1], data[2]
    if op not in (1, 2):
        return Weird("dhcp.bad_op")
    if data[BOOTP_LEN : BOOTP_LEN + 4] != MAGIC:
        return Weird("dhcp.bad_magic")

    opts: dict[int, bytearray] = {}
    bad = _read_v4_options(data, BOOTP_LEN + 4, len(data), opts)
    if bad is not None:
        return bad
    overload = opts.get(_OPT_OVERLOAD)
    if overload is not None and len(overload) == 1:
        # RFC 2131 §4.1: options continue in 'file', then in 'sname'.
        for bit, field in ((1, _FILE), (2, _SNAME)):
            if overload[0] & bit:
                bad = _read_v4_options(data, field.start, field.stop, opts)
                if bad is not None:
                    return bad

    msg_type = opts.get(_OPT_MSG_TYPE)
    requested = opts.get(_OPT_REQUESTED_IP)
    vendor = opts.get(_OPT_VENDOR_CLASS)
    params = opts.get(_OPT_PARAM_LIST)
    hostname_raw = opts.get(_OPT_HOSTNAME)
    dns = opts.get(_OPT_DNS_SERVERS)
    hostname = _text(bytes(hostname_raw)) if hostname_raw is not None else None
    if hostname is None:
        fqdn = opts.get(_OPT_CLIENT_FQDN)
        if fqdn is not None and len(fqdn) > 3:
            # flags, rcode1, rcode2, name; flag E (0x04) says the name is in wire format.
            hostname = _fqdn_text(bytes(fqdn), 3, bool(fqdn[0] & 0x04))

    return DhcpMessage(
        version=4,
        message_type=msg_type[0] if msg_type is not None and len(msg_type) == 1 else None,
        client_mac=_mac_text(data[28:34]) if htype == 1 and hlen == 6 else None,
        requested_ip=_v4_addr(bytes(requested)) if requested is not None else None,
        hostname=hostname,
        vendor_class=_text(bytes(vendor)) if vendor is not None else None,
        param_list=tuple(params) if params is not None else (),
        client_ip=_v4_addr(data[12:16]),
        your_ip=_v4_addr(data[16:20]),
        # Only a server's message hands resolvers out (op 2, BOOTREPLY).
        dns_servers=_v4_list(bytes(dns)) if dns is not None and op == 2 else (),
    )


def _read_v6_options(data: bytes, off: int) -> dict[int, bytes] | Weird:
    """Top-level options of one DHCPv6 message; the first of a repeated code wins."""
    opts: dict[int, bytes] = {}
    size = len(data)
    while off < size:
        if off + 4 > size:
            return Weird("dhcpv6.truncated")
        code, length = _V6_OPT.unpack_from(data, off)
        off += 4
        if off + length > size:
            return Weird("dhcpv6.truncated")
        opts.setdefault(code, data[off : off + length])
        off += length
    return opts


def _duid_mac(duid: bytes) -> str | None:
    if len(duid) < 4:
        return None
    duid_type, hw_type = struct.unpack_from("!HH", duid, 0)
    if hw_type != _HW_ETHERNET:
        return None
    if duid_type == _DUID_LLT:
        lladdr = duid[8:]
    elif duid_type == _DUID_LL:
        lladdr = duid[4:]
    else:
        return None
    return _mac_text(lladdr) if len(lladdr) == 6 else None


def _ia_na_address(value: bytes) -> str | None:
    """The first IAADDR inside an IA_NA option (IAID, T1, T2, then sub-options)."""
    off = 12
    while off + 4 <= len(value):
        code, length = _V6_OPT.unpack_from(value, off)
        off += 4
        if off + length > len(value):
            return None
        if code == _V6_IAADDR and length >= 24:
            return str(ipaddress.IPv6Address(value[off : off + 16]))
        off += length
    return None


def _vendor_class_text(value: bytes) -> str | None:
    """Option 16: an enterprise number, then length-prefixed opaque strings (joined by
    spaces)."""
    parts: list[str] = []
    off = 4
    while off + 2 <= len(value) and len(parts) < 16:
        length = _U16.unpack_from(value, off)[0]
        off += 2
        text = _text(value[off : off + length])
        if text:
            parts.append(text)
        off += length
    return " ".join(parts)[:MAX_TEXT] or None


def parse_dhcpv6(data: bytes | bytearray | memoryview) -> DhcpMessage | Weird:
    """Decode a DHCPv6 message (UDP port 546/547); relay wrappers are unwrapped so the
    result describes the client's own message."""
    data = bytes(data)
    for _ in range(MAX_RELAY_DEPTH + 1):
        if len(data) < 4:
            return Weird("dhcpv6.truncated")
        msg_type = data[0]
        if msg_type not in (_V6_RELAY_FORW, _V6_RELAY_REPL):
            break
        if len(data) < 34:
            return Weird("dhcpv6.truncated")
        relay_opts = _read_v6_options(data, 34)
        if isinstance(relay_opts, Weird):
            return relay_opts
        inner = relay_opts.get(_V6_RELAY_MSG)
        if inner is None:
            return Weird("dhcpv6.relay_without_message")
        data = inner
    else:
        return Weird("dhcpv6.relay_too_deep")

    opts = _read_v6_options(data, 4)
    if isinstance(opts, Weird):
        return opts

    client_id = opts.get(_V6_CLIENTID)
    vendor = opts.get(_V6_VENDOR_CLASS)
    oro = opts.get(_V6_ORO, b"")
    fqdn = opts.get(_V6_FQDN)
    ia_na = opts.get(_V6_IA_NA)
    ia_addr = _ia_na_address(ia_na) if ia_na is not None else None
    dns = opts.get(_V6_DNS_SERVERS)

    return DhcpMessage(
        version=6,
        message_type=msg_type,
        client_mac=_duid_mac(client_id) if client_id is not None else None,
        requested_ip=ia_addr if msg_type in _V6_CLIENT_TYPES else None,
        # The v6 FQDN option: one flags byte, then the name, always in wire format.
        hostname=_fqdn_text(fqdn, 1, True) if fqdn is not None and len(fqdn) > 1 else None,
        vendor_class=_vendor_class_text(vendor) if vendor is not None else None,
        param_list=tuple(_U16.unpack_from(oro, i)[0] for i in range(0, len(oro) - 1, 2)),
        your_ip=ia_addr if msg_type in _V6_SERVER_TYPES else None,
        dns_servers=_v6_list(dns) if dns is not None and msg_type in _V6_SERVER_TYPES else (),
    )
