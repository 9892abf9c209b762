"""What happens in the lab for the demo, the tests and the benchmarks: the demo traffic (the
2014 Redmi's leak and its neighbours' ordinary uploads), and the sensor's view of the lab (its
geo and cloud fixture data and configuration)."""

from __future__ import annotations

import json
from pathlib import Path

from sensor.lab.netns import Lab, PostResult
from sensor.lab.synth import LEAK_BODY, REDMI_UA

GALAXY_UA = "Dalvik/2.1.0 (Linux; U; Android 14; SM-S911B Build/UP1A.231005.007)"


def post_leak(lab: Lab, device: str = "xiaomi") -> PostResult:
    """The 2014 Redmi's registration POST (`LEAK_BODY`: IMEI, number, contacts in clear) to
    api.account.xiaomi.com, from `device`."""
    return lab.http_post(
        device,
        "api.account.xiaomi.com",
        path="/pass/v2/register",
        user_agent=REDMI_UA,
        body=LEAK_BODY,
    )


def play_demo_traffic(lab: Lab) -> list[PostResult]:
    """A short, bounded conversation per default device (about 1.5 MB in all)."""
    results = []
    devs = lab.devices
    if "xiaomi" in devs:
        results.append(post_leak(lab))
        results.append(lab.tls_upload("xiaomi", "tracking.intl.miui.com", 200_000))
        results.append(lab.tls_upload("xiaomi", "data.mistat.xiaomi.com", 20_000, family=6))
        if lab.quic:
            results.append(lab.quic_upload("xiaomi", "tracking.intl.miui.com", 50_000))
    if "samsung" in devs:
        results.append(
            lab.tls_upload("samsung", "api.samsungosp.com", 100_000, user_agent=GALAXY_UA)
        )
    if "laptop" in devs:
        results.append(lab.tls_upload("laptop", "www.example.com", 1_000_000))
    return results


LAB_GEO = """\
# The lab's documentation ranges placed on the map (sensor.lab writes this file).
[[prefix]]
net = "203.0.113.0/24"
country = "CN"
asn = 64500
asn_org = "Lab network in China"

[[prefix]]
net = "2001:db8:203::/48"
country = "CN"
asn = 64500
asn_org = "Lab network in China"

[[prefix]]
net = "192.0.2.0/24"
country = "ID"
asn = 64502
asn_org = "Lab network at home"

[[prefix]]
net = "2001:db8:192::/48"
country = "ID"
asn = 64502
asn_org = "Lab network at home"
"""

LAB_AWS_RANGES = {
    "syncToken": "1700000000",
    "createDate": "2023-11-14-22-13-20",
    "prefixes": [
        {
            "ip_prefix": "198.51.100.0/24",
            "region": "ap-southeast-1",
            "service": "EC2",
            "network_border_group": "ap-southeast-1",
        }
    ],
    "ipv6_prefixes": [
        {
            "ipv6_prefix": "2001:db8:198::/48",
            "region": "ap-southeast-1",
            "service": "EC2",
            "network_border_group": "ap-southeast-1",
        }
    ],
}
"""198.51.100.0/24 as AWS Singapore, in AWS's own ip-ranges.json format."""


def write_sensor_fixture(state_dir: Path) -> Path:
    """Data for a sensor watching the lab: the geo overrides file (returned), and an AWS range
    file mapping the lab's 'Singapore' range to ap-southeast-1, imported into
    `<state_dir>/data/` the way a router without internet would (`update-data --from`)."""
    from sensor.update import datafiles

    inbox = state_dir / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "ip-ranges.json").write_text(json.dumps(LAB_AWS_RANGES))
    datafiles.update(state_dir, from_dir=inbox, sources=["aws"])
    overrides = state_dir / "lab-geo.toml"
    overrides.write_text(LAB_GEO)
    return overrides


def sensor_config(lab: Lab, state_dir: Path, extra: str = "") -> str:
    """A phonehome configuration for a daemon in the lab's gateway namespace."""
    overrides = write_sensor_fixture(state_dir)
    return (
        f'[site]\nhome_country = "ID"\nlan_networks = ["192.168.77.0/24", "fd00:77::/64"]\n'
        f'[paths]\nstate_dir = "{state_dir}"\n'
        f'[geo]\noverrides = "{overrides}"\n'
        f'[daemon]\ninterfaces = ["{lab.lan_bridge}"]\nallow_root = true\nuser = ""\n'
        f"conntrack_interval = 1.0\nsnapshot_interval = 0.5\n"
        # The lab's devices use the WAN resolver their resolv.conf names (no DHCP here): that
        # is the network's resolver, not a DNS bypass.
        f'[dns_bypass]\nallowed_resolvers = ["{lab.resolver.ipv4}", "{lab.resolver.ipv6}"]\n'
        f'[[devices]]\nmac = "{lab.devices["xiaomi"].mac}"\nname = "Redmi phone"\n'
        f'kind = "phone"\n' + extra
    )
