"""Link layers: Ethernet (802.1Q/802.1ad/QinQ tags), Linux cooked SLL/SLL2, raw IP, BSD null."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sensor.model import Weird

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
_MAX_TAGS = 4

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
DLT_RAW_BSD = 12
DLT_RAW_OPENBSD = 14

ETHERNET_LEN = 14
SLL_LEN = 16
SLL2_LEN = 20

FIXED_LAYOUTS: dict[int, tuple[int | None, int]] = {
    LINKTYPE_ETHERNET: (12, ETHERNET_LEN),  # untagged frames only
    LINKTYPE_LINUX_SLL: (14, SLL_LEN),
    LINKTYPE_LINUX_SLL2: (0, SLL2_LEN),
    LINKTYPE_RAW: (None, 0),
    DLT_RAW_BSD: (None, 0),
    DLT_RAW_OPENBSD: (None, 0),
    LINKTYPE_IPV4: (None, 0),
    LINKTYPE_IPV6: (None, 0),
}
"""The link types whose header has a fixed length, for the packet loop's fast paths (the pure
loop in sensor.pipeline, the arrays of sensor.fastpath): where the EtherType sits in the frame
(None: raw IP, the version nibble decides) and where the network header starts. `parse_link`
reads the same layouts, and more: VLAN tags, addresses, packet types."""

SUPPORTED_LINKTYPES = frozenset({LINKTYPE_NULL, *FIXED_LAYOUTS})
"""The link-layer types `parse_link` decodes (others are counted as skipped)."""
LINKTYPE_NAMES = {
    0: "NULL",
    1: "ETHERNET",
    6: "IEEE802_5",
    8: "SLIP",
    9: "PPP",
    10: "FDDI",
    12: "RAW",
    14: "RAW",
    50: "PPP_HDLC",
    51: "PPP_ETHER",
    101: "RAW",
    104: "C_HDLC",
    105: "IEEE802_11",
    108: "LOOP",
    113: "LINUX_SLL",
    119: "IEEE802_11_PRISM",
    127: "IEEE802_11_RADIOTAP",
    163: "IEEE802_11_AVS",
    187: "BLUETOOTH_HCI_H4",
    189: "USB_LINUX",
    192: "PPI",
    195: "IEEE802_15_4_WITHFCS",
    201: "BLUETOOTH_HCI_H4_WITH_PHDR",
    220: "USB_LINUX_MMAPPED",
    228: "IPV4",
    229: "IPV6",
    239: "NFLOG",
    249: "USBPCAP",
    252: "WIRESHARK_UPPER_PDU",
    276: "LINUX_SLL2",
}
"""tcpdump.org names of common link types, for messages."""


def linktype_label(linktype: int) -> str:
    """ "link type 127 (IEEE802_11_RADIOTAP)"."""
    name = LINKTYPE_NAMES.get(linktype)
    return f"link type {linktype}" + (f" ({name})" if name else "")


# Linux packet types (sll_pkttype): how the frame passed the capturing interface.
PACKET_HOST = 0
PACKET_OUTGOING = 4

# ARP hardware types (sll_hatype) of the interfaces a cooked header names.
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_VOID = 0xFFFF

SLL2_HEADER = struct.Struct(">HHIHBB8s")
"""Linux cooked v2: protocol, reserved, ifindex, ARPHRD type, packet type, address length,
address."""


@dataclass(frozen=True, slots=True)
class Link:
    offset: int
    """Where the network-layer header starts in the frame."""
    ethertype: int
    src_mac: bytes | None
    dst_mac: bytes | None
    vlans: tuple[int, ...] = ()
    pkttype: int | None = None
    """SLL/SLL2 packet type, None for other link layers."""


def mac_str(raw: bytes) -> str:
    return raw.hex(":")


def parse_link(linktype: int, frame: bytes) -> Link | Weird:
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        if n < ETHERNET_LEN:
            return Weird("link.truncated")
        off = 12
        vlans: list[int] = []
        et = (frame[off] << 8) | frame[off + 1]
        while et in _VLAN_TAGS:
            if len(vlans) >= _MAX_TAGS:
                return Weird("link.too_many_vlan_tags")
            if n < off + 6:
                return Weird("link.truncated")
            vlans.append(((frame[off + 2] << 8) | frame[off + 3]) & 0x0FFF)
            off += 4
            et = (frame[off] << 8) | frame[off + 1]
        if et < 0x0600:
            return Weird("link.llc_frame")
        return Link(off + 2, et, frame[6:12], frame[0:6], tuple(vlans))
    if linktype == LINKTYPE_LINUX_SLL:
        if n < SLL_LEN:
            return Weird("link.truncated")
        pkttype = (frame[0] << 8) | frame[1]
        alen = min((frame[4] << 8) | frame[5], 8)
        src = frame[6 : 6 + alen] if alen == 6 else None
        et = (frame[14] << 8) | frame[15]
        return _cooked(SLL_LEN, et, src, pkttype, frame)
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < SLL2_LEN:
            return Weird("link.truncated")
        et = (frame[0] << 8) | frame[1]
        pkttype = frame[10]
        alen = min(frame[11], 8)
        src = frame[12 : 12 + alen] if alen == 6 else None
        return _cooked(SLL2_LEN, et, src, pkttype, frame)
    if linktype in (LINKTYPE_RAW, DLT_RAW_BSD, DLT_RAW_OPENBSD):  # version: the first nibble
        return _raw(0, frame)
    if linktype == LINKTYPE_IPV4:
        return Link(0, ETH_IPV4, None, None)
    if linktype == LINKTYPE_IPV6:
        return Link(0, ETH_IPV6, None, None)
    if linktype == LINKTYPE_NULL:  # BSD loopback: 4-byte host-order address family
        if n < 4:
            return Weird("link.truncated")
        return _raw(4, frame)
    return Weird("link.unsupported_linktype")


def _raw(off: int, frame: bytes) -> Link | Weird:
    if len(frame) <= off:
        return Weird("link.truncated")
    version = frame[off] >> 4
    if version == 4:
        return Link(off, ETH_IPV4, None, None)
    if version == 6:
        return Link(off, ETH_IPV6, None, None)
    return Weird("link.raw_not_ip")


def _cooked(off: int, et: int, src: bytes | None, pkttype: int, frame: bytes) -> Link | Weird:
    # A cooked header names only the sender's address; for frames the capturing host sent
    # (PACKET_OUTGOING) that is the host itself, so it is not reported as a source MAC.
    vlans: list[int] = []
    n = len(frame)
    while et in _VLAN_TAGS:
        if len(vlans) >= _MAX_TAGS or n < off + 4:
            return Weird("link.truncated")
        vlans.append(((frame[off] << 8) | frame[off + 1]) & 0x0FFF)
        et = (frame[off + 2] << 8) | frame[off + 3]
        off += 4
    if pkttype == PACKET_OUTGOING:
        src = None
    return Link(off, et, src, None, tuple(vlans), pkttype)


def lan_source_mac(src_mac: bytes | None, pkttype: int | None) -> str | None:
    """The sending device's MAC of a frame a LAN device sent: None for the gateway's own
    outgoing frames and for group (multicast/broadcast) source addresses."""
    if src_mac is None or pkttype == PACKET_OUTGOING or src_mac[0] & 1:
        return None
    return mac_str(src_mac)
