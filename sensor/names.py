"""Server names: which name a client looked up for an address, and how names are written out.

`DnsCache` is a bounded, TTL-respecting DNS cache, keyed by (client address, server address),
because two LAN devices may resolve different names to the same CDN address; the value is the
name the client *asked for* (CNAME chains are resolved back to the question by the DNS decoder),
when the answer arrived and when its TTL runs out.

A name can be the message itself: an app that puts an IMEI in hex into a query label has sent it
to whoever serves the domain. `redact_name` is applied to every name before it is kept or written
(query lists, the cache, a flow's server name from DNS, Host or SNI, the Host of its HTTP
records), so no output shows such labels;
`dns_name_text` is the harder cut the alerts make of a name known to carry an identifier.
Pure functions of the name, importing nothing from the package.

Which name a flow gets (the pipeline applies it; tests/test_ech_naming.py checks it): a name the
client sent in the clear (TLS or QUIC SNI, HTTP Host) first; else the name the device resolved
to the flow's address (this cache: A/AAAA answers and HTTPS/SVCB address hints), live when the
flow began, `name_source` "dns"; else none. An ECH cover name (`sensor.ech`) never names a flow.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from typing import Final

REDACTED: Final = "…"
"""What a cut label (or the cut part of a name) is written as."""
DATA_DIGITS: Final = 6
"""A label with this many ASCII digits is data: an IMEI, a phone number (a subscriber number
has at least 7), a serial, an address, or the hex of any digit text ("3836…" is "86…")."""
HEX_RUN: Final = 12
"""A run of this many hex characters, with a digit among them, is data: 6 bytes or more in hex
(a MAC, an Android ID, a digest). The same shape the metrics' label filter masks."""
ENCODED_RUN: Final = 16
"""A run of this many letters and digits is base32/base64 rather than a word when it holds a
digit, or when under a quarter of its letters are vowels."""

_SECOND_LEVEL: Final = frozenset(
    ("ac", "biz", "co", "com", "edu", "go", "gov", "mil", "ne", "net", "or", "org", "sch", "web")
)
"""Labels under a two-letter country code that are not the owner's name (example.co.id)."""
_SUSPECT = re.compile(rf"\d|[a-z]{{{ENCODED_RUN}}}|xn--")
"""What any of the three tests needs; a name without it is kept without looking further."""
_HEX = re.compile(rf"(?=[a-f]*\d)[0-9a-f]{{{HEX_RUN},}}")
_RUN = re.compile(rf"[a-z0-9]{{{ENCODED_RUN},}}")
_DIGITS = frozenset("0123456789")
_NO_DIGITS = str.maketrans("", "", "0123456789")
_VOWELS = frozenset("aeiou")


def looks_like_data(label: str) -> bool:
    """True when one DNS label (lower case, as the decoder writes it) looks like encoded data
    rather than a word or a host number: see `redact_name`."""
    if label.startswith("xn--"):
        try:  # an internationalised label: judge what it spells, not its ASCII encoding
            label = label[4:].encode("ascii").decode("punycode")
        except (UnicodeError, ValueError):
            return True
    if len(label) - len(label.translate(_NO_DIGITS)) >= DATA_DIGITS:
        return True
    if len(label) < HEX_RUN:
        return False
    if _HEX.search(label):
        return True
    for m in _RUN.finditer(label):
        run = m.group()
        letters = [c for c in run if c not in _DIGITS]
        if len(letters) < len(run) or sum(c in _VOWELS for c in letters) * 4 < len(letters):
            return True
    return False


def redact_name(name: str) -> str:
    """`name` with every label that looks like encoded data replaced by "…".

    A label is data when it holds (a) 6 or more digits, (b) a run of 12 or more hex characters
    with a digit in it, or (c) a run of 16 or more letters and digits that holds a digit or
    whose letters are less than a quarter vowels (base32, base64 in lower case); an
    internationalised label ("xn--…") is judged by what it decodes to, and one that does not
    decode is data. Every label is judged, the domain's too ("861234567890127.com" ->
    "….com"). So "api.account.xiaomi.com", "time-ios.apple.com", "e5.o.lencr.org",
    "cdn-123.example.net", "a1234.dscb.akamai.net", "connectivitycheck.gstatic.com" and
    "r3---sn-2uuxa3vh-jb3e.googlevideo.com" stay as they are, while
    "383631323334353637383930313237.t.leak-cn.example" (an IMEI in hex) becomes
    "….t.leak-cn.example". Host numbers of 6 digits or more ("e123456.a.akamaiedge.net",
    "ec2-54-169-12-34.…") lose that label too: the domain still says whose server it is.
    Addresses (an IPv6 literal from a Host header) are kept. Data cut into short labels
    ("3836313233.3435363738…") is only caught where a piece meets a test; the detector, which
    decodes runs of labels, still sees the name as it was sent."""
    low = name.lower()
    if not _SUSPECT.search(low):
        return name
    if ":" in low:
        try:
            ipaddress.ip_address(low.strip("[]"))
        except ValueError:
            pass
        else:
            return name
    labels = name.split(".")
    cut = [REDACTED if looks_like_data(x.lower()) else x for x in labels]
    return name if cut == labels else ".".join(cut)


def dns_name_text(name: str) -> str:
    """A query name that carried an identifier, cut to the domain it was sent to: the labels
    below the domain held the data ("3836…37.t.example.cn" -> "….example.cn"), and a domain
    label that itself looks like data (4 or more digits, or 16 or more characters: hex or
    base32 of an identifier; or data by `looks_like_data`) goes too ("….com"). The domain is
    the last two labels, three under a country code's "co"/"com"/… (no Public Suffix List
    here: erring towards cutting more)."""
    labels = [x for x in name.strip().rstrip(".").split(".") if x]
    keep = 2
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        keep = 3
    kept = labels[-keep:]
    if kept and (
        sum(c.isdigit() for c in kept[0]) >= 4
        or len(kept[0]) >= 16
        or looks_like_data(kept[0].lower())
    ):
        kept = kept[1:]
    elif len(labels) <= keep:
        return ".".join(kept)
    return REDACTED + "." + ".".join(kept) if kept else REDACTED


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


def host_only(host: str) -> str:
    """An HTTP Host header without port or brackets, lower case."""
    h = host.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else ""
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")
