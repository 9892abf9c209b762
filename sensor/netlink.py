"""Compatibility re-exports, removed after the move: sensor.netlink is now sensor.kernel.netlink
(sockets, framing), sensor.kernel.conntrack and sensor.kernel.links."""

from collections.abc import Collection

from sensor.kernel.conntrack import (
    ACCT_SYSCTL,
    AccountingResult,
    ConntrackEntry,
    ConntrackEvent,
    ConntrackMonitor,
    accounting_enabled,
    dump,
    enable_accounting,
    iter_dump,
    parse_entry,
)
from sensor.kernel.links import (
    LinkEvent,
    NeighbourEvent,
    NeighbourMonitor,
    addresses,
    interfaces_for_prefixes,
    lan_prefixes,
    link_state,
    neighbours,
)
from sensor.kernel.netlink import (
    DEFAULT_EVENT_RCVBUF,
    DEFAULT_MAX_READ,
    DUMP_TIMEOUT,
    NETNS_RUN_DIR,
    NetlinkError,
)


def own_addresses(*, netns: str | None = None) -> list[str]:
    """`sensor.kernel.links.addresses()` of every interface."""
    return addresses(netns=netns)


def local_addresses(interfaces: Collection[str], *, netns: str | None = None) -> list[str]:
    """`sensor.kernel.links.addresses(interfaces)`."""
    return addresses(interfaces, netns=netns)


__all__ = [
    "ACCT_SYSCTL",
    "DEFAULT_EVENT_RCVBUF",
    "DEFAULT_MAX_READ",
    "DUMP_TIMEOUT",
    "NETNS_RUN_DIR",
    "AccountingResult",
    "ConntrackEntry",
    "ConntrackEvent",
    "ConntrackMonitor",
    "LinkEvent",
    "NeighbourEvent",
    "NeighbourMonitor",
    "NetlinkError",
    "accounting_enabled",
    "dump",
    "enable_accounting",
    "interfaces_for_prefixes",
    "iter_dump",
    "lan_prefixes",
    "link_state",
    "local_addresses",
    "neighbours",
    "own_addresses",
    "parse_entry",
]
