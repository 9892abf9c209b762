"""The lab: a real home gateway on one machine, built from network namespaces, with servers
behind it and traffic to play through it. Used by `make demo`, the lab tests and the benchmarks;
never by the daemon (nothing in `phonehome run`, `check` or `analyze` imports this package).

- `netns`: the namespaces, veth pairs, bridge and nftables NAT (`Lab`), and stale-lab cleanup.
- `servers`: the servers in the WAN namespace (HTTP, HTTPS, HTTP/3, DNS) and the lab clients
  (run as ``python -m sensor.lab.servers`` inside the namespaces; aioquic for HTTP/3).
- `synth`: synthetic traffic written as capture files (dpkt): the demo's and tests' captures.
- `scenario`: the demo traffic and the sensor's fixture data and configuration for a lab.
- `conntrack`, `tls`: conntrack listings read back; the lab CA and server certificates.
- `demo`: the `make demo` flow; `cli`: ``phonehome lab`` / ``python -m sensor.lab``.

This package re-exports what the flat ``sensor.lab`` module exported.
"""

from sensor.lab.cli import (
    build_parser,
    main,
)
from sensor.lab.conntrack import (
    ConntrackEntry,
    parse_conntrack,
)
from sensor.lab.netns import (
    DEFAULT_DEVICES,
    DEFAULT_RUN_DIR,
    DEFAULT_ZONE,
    GW_LAN4,
    GW_LAN6,
    GW_MAC,
    GW_WAN4,
    GW_WAN6,
    ISP_WAN4,
    ISP_WAN6,
    LAN_BRIDGE,
    LAN_NET4,
    LAN_NET6,
    NETNS_ETC,
    NS_PREFIX,
    RESOLVER,
    SERVER_IF,
    SERVERS,
    WAN_IF,
    WAN_PREFIX4,
    WAN_PREFIX6,
    Device,
    DeviceSpec,
    DnsReply,
    Lab,
    LabError,
    LabInfo,
    PostResult,
    Server,
    cleanup_stale,
    find_labs,
    list_namespaces,
    remove_lab,
)
from sensor.lab.scenario import (
    GALAXY_UA,
    LAB_AWS_RANGES,
    LAB_GEO,
    play_demo_traffic,
    post_leak,
    sensor_config,
    write_sensor_fixture,
)
from sensor.lab.tls import (
    write_tls_material,
)

__all__ = [
    "DEFAULT_DEVICES",
    "DEFAULT_RUN_DIR",
    "DEFAULT_ZONE",
    "GALAXY_UA",
    "GW_LAN4",
    "GW_LAN6",
    "GW_MAC",
    "GW_WAN4",
    "GW_WAN6",
    "ISP_WAN4",
    "ISP_WAN6",
    "LAB_AWS_RANGES",
    "LAB_GEO",
    "LAN_BRIDGE",
    "LAN_NET4",
    "LAN_NET6",
    "NETNS_ETC",
    "NS_PREFIX",
    "RESOLVER",
    "SERVERS",
    "SERVER_IF",
    "WAN_IF",
    "WAN_PREFIX4",
    "WAN_PREFIX6",
    "ConntrackEntry",
    "Device",
    "DeviceSpec",
    "DnsReply",
    "Lab",
    "LabError",
    "LabInfo",
    "PostResult",
    "Server",
    "build_parser",
    "cleanup_stale",
    "find_labs",
    "list_namespaces",
    "main",
    "parse_conntrack",
    "play_demo_traffic",
    "post_leak",
    "remove_lab",
    "sensor_config",
    "write_sensor_fixture",
    "write_tls_material",
]
