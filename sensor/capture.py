"""Compatibility re-exports, removed after the move: sensor.capture is now sensor.sources.pcap
(link-type numbers: sensor.decode.link)."""

from sensor.decode.link import (
    DLT_RAW_BSD,
    DLT_RAW_OPENBSD,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from sensor.sources.pcap import (
    MAX_RECORD,
    STDIN_NAME,
    CaptureError,
    CaptureFile,
    Chunk,
    Packet,
    pack_chunks,
    read_captures,
    walk_records,
)

__all__ = [
    "DLT_RAW_BSD",
    "DLT_RAW_OPENBSD",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "MAX_RECORD",
    "STDIN_NAME",
    "CaptureError",
    "CaptureFile",
    "Chunk",
    "Packet",
    "pack_chunks",
    "read_captures",
    "walk_records",
]
