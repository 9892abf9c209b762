"""Compatibility re-exports, removed after the move: sensor.livecapture is now
sensor.sources.live (the source protocol), sensor.sources.nflog, sensor.sources.packet,
sensor.sources.bpf and sensor.kernel.nftables (the capture rules, the nft counter)."""

from sensor.decode.link import ARPHRD_ETHER, ARPHRD_LOOPBACK, ARPHRD_VOID
from sensor.kernel.conntrack import ACCT_SYSCTL
from sensor.kernel.netlink import (
    NETLINK_NETFILTER,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
)
from sensor.kernel.nftables import (
    DEFAULT_FIRST_PACKETS,
    DEFAULT_HOST_BURST,
    DEFAULT_HOST_RATE,
    DEFAULT_HOSTS,
    DEFAULT_SNAPLEN,
    NFT_TABLE,
    NFULNL_COPY_RANGE_MAX,
    OVER_BUDGET_COUNTER,
    QUIC_FIRST_PACKETS_FACTOR,
    NftCounter,
    install_rules,
    nft_rules,
    remove_rules,
)
from sensor.sources.bpf import (
    ACCEPT_ALL,
    BPF_MAXINSNS,
    HTTP_METHODS,
    SKF_AD_IFINDEX,
    SKF_AD_OFF,
    SKF_AD_PROTOCOL,
    SO_ATTACH_FILTER,
    UDP_PORTS,
    BpfAssembler,
    BpfInsn,
    attach_filter,
    build_filter,
)
from sensor.sources.live import LiveCaptureError, LiveSource, live_chunks
from sensor.sources.nflog import (
    NFULNL_MSG_CONFIG,
    NFULNL_MSG_PACKET,
    NflogCounters,
    NflogParser,
    NflogSource,
)
from sensor.sources.packet import RAW_IP_HATYPES, Interface, PacketSocketSource

CONNTRACK_ACCT = str(ACCT_SYSCTL)

__all__ = [
    "ACCEPT_ALL",
    "ARPHRD_ETHER",
    "ARPHRD_LOOPBACK",
    "ARPHRD_VOID",
    "BPF_MAXINSNS",
    "CONNTRACK_ACCT",
    "DEFAULT_FIRST_PACKETS",
    "DEFAULT_HOSTS",
    "DEFAULT_HOST_BURST",
    "DEFAULT_HOST_RATE",
    "DEFAULT_SNAPLEN",
    "HTTP_METHODS",
    "NETLINK_NETFILTER",
    "NFT_TABLE",
    "NFULNL_COPY_RANGE_MAX",
    "NFULNL_MSG_CONFIG",
    "NFULNL_MSG_PACKET",
    "NLA_TYPE_MASK",
    "NLMSG_ERROR",
    "NLM_F_ACK",
    "NLM_F_REQUEST",
    "OVER_BUDGET_COUNTER",
    "QUIC_FIRST_PACKETS_FACTOR",
    "RAW_IP_HATYPES",
    "SKF_AD_IFINDEX",
    "SKF_AD_OFF",
    "SKF_AD_PROTOCOL",
    "SO_ATTACH_FILTER",
    "UDP_PORTS",
    "BpfAssembler",
    "BpfInsn",
    "Interface",
    "LiveCaptureError",
    "LiveSource",
    "NflogCounters",
    "NflogParser",
    "NflogSource",
    "NftCounter",
    "PacketSocketSource",
    "attach_filter",
    "build_filter",
    "install_rules",
    "live_chunks",
    "nft_rules",
    "remove_rules",
]
