"""Which name a client looked up for a server address: a bounded, TTL-respecting DNS cache.

Keyed by (client address, server address), because two LAN devices may resolve different names to
the same CDN address; the value is the name the client *asked for* (CNAME chains are resolved back
to the question by the DNS decoder), when the answer arrived and when its TTL runs out.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict


class DnsCache:
    def __init__(self, max_entries: int = 65536, ttl_grace: float = 0.0) -> None:
        self.max_entries = max_entries
        self.ttl_grace = ttl_grace
        self._map: OrderedDict[tuple[str, str], tuple[str, float, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._map)

    def put(self, client: str, address: str, name: str, ttl: int, now: float) -> None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            return
        key = (client, address)
        m = self._map
        if key in m:
            m.move_to_end(key)
        m[key] = (name, now, now + max(ttl, 0))
        if len(m) > self.max_entries:
            m.popitem(last=False)
            self.evicted += 1

    def lookup(
        self, client: str, address: str, when: float, latest: float | None = None
    ) -> str | None:
        """The name `client` resolved `address` from, if the answer was live at `when`.

        The answer must have arrived by `latest` (default `when`): a flow can only have been
        named by an answer that came before it, give or take capture reordering.
        """
        hit = self._map.get((client, address))
        if hit is None:
            return None
        name, seen, expires = hit
        if seen > (when if latest is None else latest) or when > expires + self.ttl_grace:
            return None
        self._map.move_to_end((client, address))
        return name
