"""Made-up relay lists in the published layouts, with documentation-range addresses (shared by
the unit, update-data and lab tests)."""

from __future__ import annotations

import json

TOR_GUARD = "198.51.100.91"
TOR_GUARD_PORT = 9001
TOR_MIDDLE = "203.0.113.92"
TOR_V6 = "2001:db8:7::93"
TOR_STOPPED = "198.51.100.99"

# Onionoo's details document (onionoo.torproject.org/details?type=relay&running=true), cut to
# the fields the sensor asks for.
ONIONOO = json.dumps(
    {
        "version": "8.0",
        "relays_published": "2026-12-06 22:00:00",
        "relays": [
            {
                "or_addresses": [f"{TOR_GUARD}:{TOR_GUARD_PORT}", f"[{TOR_V6}]:9001"],
                "flags": ["Fast", "Guard", "Running", "Stable", "Valid"],
                "running": True,
            },
            {
                "or_addresses": [f"{TOR_MIDDLE}:443"],
                "flags": ["Fast", "Running", "Valid"],
                "running": True,
            },
            {"or_addresses": [f"{TOR_STOPPED}:9001"], "flags": ["Valid"], "running": False},
        ],
        "bridges_published": "2026-12-06 22:00:00",
        "bridges": [],
    }
).encode()

# A microdescriptor-flavoured consensus (dir-spec.txt, section 3.4.1: "r" lines without the
# descriptor digest), the parts the parser reads.
CONSENSUS = f"""network-status-version 3
vote-status consensus
consensus-method 33
valid-after 2026-12-06 22:00:00
r guard1 AAECAwQFBgcICQoLDA0ODxAREhM 2026-12-06 21:00:00 {TOR_GUARD} {TOR_GUARD_PORT} 0
a [{TOR_V6}]:9001
s Fast Guard Running Stable V2Dir Valid
r middle1 FBUWFxgZGhscHR4fICEiIyQlJic 2026-12-06 21:00:00 {TOR_MIDDLE} 443 80
s Fast Running Valid
directory-footer
""".encode()

PROTON_ENTRY = "203.0.113.77"
PROTONVPN = f"""#
# protonvpn_entry_ips.txt (layout of github.com/tn3w/ProtonVPN-IPs)
#
{PROTON_ENTRY}
198.51.100.128/28
2001:db8:77::10
""".encode()
