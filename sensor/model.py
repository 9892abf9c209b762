"""The shared vocabulary: typed records handed from one pipeline stage to the next.

Imports nothing else from the package. Decoders return these records (or a `Weird`), the flow
table holds `Flow` and `Device`, the reporters serialise them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, get_args

NameSource = Literal["tls", "quic", "http", "dns"]

Visibility = Literal["dns", "tls", "quic", "http", "ech", "relay", "none"]
"""How much of a flow's destination the sensor can see: named by DNS, TLS SNI, a QUIC Initial or
HTTP Host; hidden behind an ECH cover name; sent into a relay (Private Relay, Tor, VPN); or
carrying no name at all. A bounded metric label."""

DnsBypassProtocol = Literal["dot", "doq", "doh", "dns"]
"""How a bypassing device reaches its resolver: DNS over TLS, over QUIC, over HTTPS, or plain
DNS (UDP/TCP 53) to a resolver the network did not hand out."""

# --- identifier vocabulary: spelled once here, the tuples derived --------------------------------

IdentifierKind = Literal[
    "imei",
    "imsi",
    "iccid",
    "phone",
    "mac",
    "serial",
    "email",
    "android_id",
    "ad_id",
    "contacts",
]
"""What kind of identifier a detector found; ``contacts`` is a contact-book upload (several
phone numbers in one message), every other kind one value."""
IDENTIFIER_KINDS: Final[tuple[IdentifierKind, ...]] = get_args(IdentifierKind)
VALUE_KINDS: Final[tuple[IdentifierKind, ...]] = tuple(
    k for k in IDENTIFIER_KINDS if k != "contacts"
)
"""The kinds that are one value: what an owner configures (``[identifiers]``, ``[[devices]]``
``identifiers``) and what the detector learns."""

Encoding = Literal[
    "plain",
    "hex",
    "hex_upper",
    "base64",
    "base64url",
    "url",
    "md5",
    "sha1",
    "sha256",
    "md5_base64",
    "sha1_base64",
    "sha256_base64",
]
"""How an identifier appeared.

``plain``: as text, in any of the identifier's usual spellings (e.g. a phone number in E.164,
national or digits-only form, a MAC with ``:``, ``-`` or no separator). ``hex`` / ``hex_upper``:
ASCII hex of such a spelling (when the hex has no letters it is reported as ``hex``).
``base64`` / ``base64url``: standard or URL-safe base64 of a spelling, anywhere inside a longer
base64 blob (when both alphabets give the same text it is reported as ``base64``). ``url``:
percent-encoded (only when that differs from the plain spelling). ``md5`` / ``sha1`` /
``sha256``: hex digest of a spelling, either case. ``*_base64``: base64 (either alphabet, with or
without padding) of the raw digest.
"""
ENCODINGS: Final[tuple[Encoding, ...]] = get_args(Encoding)

Location = Literal["url", "header", "cookie", "body", "dns", "payload"]
"""Where in outbound plaintext an identifier was found."""


@dataclass(frozen=True, slots=True)
class Weird:
    """Input a decoder could not make sense of. Counted by `reason`, never raised."""

    reason: str
    """Dotted, stable reason name, e.g. ``"tls.bad_record"``; used as a counter label."""


# --- decoder outputs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One resource record from the answer (or additional) section."""

    name: str
    """Owner name, lower case, no trailing dot."""
    rtype: int
    """RR type number (1 A, 28 AAAA, 5 CNAME, 64 SVCB, 65 HTTPS)."""
    ttl: int
    value: str
    """Address text for A/AAAA (and SVCB/HTTPS ipv4hint/ipv6hint), target name for CNAME,
    target name for SVCB/HTTPS."""


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    is_response: bool
    rcode: int
    questions: tuple[tuple[str, int], ...]
    """(name, qtype) pairs, names lower case without trailing dot."""
    answers: tuple[DnsRecord, ...]
    """Answer-section records plus address hints taken from SVCB/HTTPS records."""
    ech_public_names: tuple[str, ...] = ()
    """The public names (the cover names of RFC 9849) of the ECH configurations that the
    answer's SVCB/HTTPS records carry in their "ech" parameter."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a TLS (or QUIC) ClientHello says about where the client is going."""

    sni: str | None
    legacy_version: int
    """The ClientHello's legacy_version field (0x0303 for TLS 1.2 and 1.3)."""
    supported_versions: tuple[int, ...] = ()
    alpn: tuple[str, ...] = ()
    ech: bool = False
    """The hello carries an Encrypted Client Hello extension (0xfe0d, outer type); `sni` is
    then the outer name. A real ECH and the GREASE one browsers send without an ECH config
    look alike on the wire: the outer name is a cover only when it is an ECH public name
    (`sensor.ech`)."""
    ja4: str | None = None
    """The JA4 fingerprint of this hello (TLS or QUIC); None for a gQUIC CHLO."""
    ciphers: tuple[int, ...] = ()
    """Cipher suites in wire order, GREASE included (what JA4 reads)."""
    extensions: tuple[int, ...] = ()
    """Extension types in wire order, GREASE included."""
    signature_algorithms: tuple[int, ...] = ()
    """The signature_algorithms extension's values in wire order, GREASE included."""


@dataclass(frozen=True, slots=True)
class DnsBypass:
    """Evidence that a device resolves names with a resolver the network did not hand out."""

    protocol: DnsBypassProtocol
    resolver: str
    """The resolver's address (or its name when known, e.g. "dns.google")."""
    evidence: str
    """What showed it, e.g. "tcp/853", "alpn=doq", "sni=dns.google", "doh-list"."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    version: str
    host: str | None
    user_agent: str | None
    headers: tuple[tuple[str, str], ...]
    """All request headers in order, names lower case."""
    body: bytes
    """The first bytes of the body, at most the budget the caller gave."""
    content_length: int | None


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    version: Literal[4, 6]
    message_type: int | None
    client_mac: str | None
    """aa:bb:cc:dd:ee:ff; from chaddr (v4) or a DUID that carries a link-layer address (v6)."""
    requested_ip: str | None
    hostname: str | None
    """Option 12 (v4) or the client FQDN option (v4 81, v6 39)."""
    vendor_class: str | None
    """Option 60 (v4) or option 16 (v6)."""
    param_list: tuple[int, ...]
    """Option 55 (v4) or the option request option 6 (v6)."""
    client_ip: str | None = None
    your_ip: str | None = None
    dns_servers: tuple[str, ...] = ()
    """The resolvers a server's message hands out: option 6 (v4), option 23 (v6)."""


# --- flows and devices ------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Flow:
    """A bidirectional transport conversation; "up" is from the LAN device to the server."""

    uid: str
    proto: Literal["tcp", "udp"]
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    device_mac: str | None
    first_seen: float
    last_seen: float
    bytes_up: int = 0
    bytes_down: int = 0
    packets_up: int = 0
    packets_down: int = 0
    server_name: str | None = None
    name_source: NameSource | None = None
    http: list[HttpRequest] = field(default_factory=list)
    """HTTP requests seen on the flow (bounded by the caller)."""
    alpn: tuple[str, ...] = ()
    quic_version: str | None = None
    """QUIC flows: the version of the client's Initial, gQUIC as its tag ("Q046"), others as
    0x%08x ("0xff00001d")."""
    ech: bool = False
    """The client's hello carried ECH: `outer_server_name` is a cover, never the party."""
    outer_server_name: str | None = None
    """The ECH outer (cover) SNI, e.g. "cloudflare-ech.com"."""
    ja4: str | None = None
    dns_bypass: DnsBypass | None = None
    relay: str | None = None
    """The relay the flow goes into ("icloud-private-relay", "tor", "vpn:<name>"), as the
    gateway sees its ingress."""
    extra: dict[str, object] = field(default_factory=dict)
    """Fields that enrichers add (vendor, country, ...), serialised as-is."""


@dataclass(slots=True, eq=False)
class Device:
    """A LAN device, keyed by MAC."""

    mac: str
    ips: set[str] = field(default_factory=set)
    hostname: str | None = None
    dhcp_vendor_class: str | None = None
    dhcp_params: tuple[int, ...] = ()
    user_agents: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    last_seen: float = 0.0
    ja4: list[str] = field(default_factory=list)
    """The JA4 fingerprints of the TLS/QUIC clients the device ran, least recently shown
    first (bounded by the pipeline)."""
    ja4_since: float | None = None
    """When the sensor began learning the device's fingerprints, which may be before this
    run (the daemon's saved sets, `sensor.fingerprints.SavedSets`); None until looked up."""
    extra: dict[str, object] = field(default_factory=dict)


# --- detection and alerts ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a flow goes, as enrichment knows it."""

    ip: str
    port: int
    server_name: str | None = None
    vendor: str | None = None
    """Deprecated, the old name of `party`: the company from the server name, else the one
    the AS organisation names (which for clouds and CDNs is the host, not the party)."""
    provider: str | None = None
    region: str | None = None
    country: str | None = None
    asn: int | None = None
    asn_org: str | None = None
    abroad: bool | None = None
    """True/False against site.home_country; None when either country is unknown."""
    city: str | None = None
    party: str | None = None
    """The organisation behind the server name (sensor.enrich.party); None without a name."""
    party_source: str | None = None
    """"map" (vendor map), "dataset" (fetched domain owners) or "domain" (the name itself)."""


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """The LAN device an observation is about."""

    mac: str | None
    ip: str
    name: str | None = None
    vendor: str | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """What a detector saw; the alert rules decide what it means.

    `what` is "identifier" (an identifier in outbound plaintext), "upload" (bytes sent to one
    vendor/provider abroad over a period), "country" (first contact with a country) or
    "fingerprint" (a TLS client fingerprint new to the device) or "dns_bypass" (a flow to a
    resolver the network did not hand out)."""

    what: Literal["identifier", "upload", "country", "fingerprint", "dns_bypass"]
    ts: float
    device: DeviceRef
    dst: Destination
    flow_uid: str | None = None
    identifier: IdentifierKind | None = None
    encoding: Encoding | None = None
    location: Location | None = None
    value: str | None = None
    """Redacted form only (e.g. "…1234"); never the identifier in full."""
    keyed_hash: str | None = None
    """HMAC of the identifier under the install's key, to correlate without revealing it."""
    known: bool = False
    """Matched an identifier the owner configured or the sensor learned."""
    bytes_up: int = 0
    period: float = 0.0
    fingerprint: str | None = None
    """what="fingerprint": the JA4 the device showed for the first time (not a secret: it
    names a TLS stack, not a person)."""
    since: float | None = None
    """what="fingerprint": when the sensor began learning the device's fingerprints, if known
    (kept across daemon restarts): the learning period counts from it."""
    bypass: DnsBypass | None = None
    """what="dns_bypass": how, to which resolver, and what showed it."""


# --- alert vocabulary: the rules and their severities ------------------------------------------

Severity = Literal["critical", "warning", "info"]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    severity: Severity
    description: str


RULES: Final[dict[str, Rule]] = {
    r.name: r
    for r in (
        Rule("identifier_abroad", "critical", "identifier sent in cleartext to a server abroad"),
        Rule(
            "identifier_cleartext",
            "warning",
            "identifier sent in cleartext to a server at home or of unknown country",
        ),
        Rule(
            "new_party_upload",
            "warning",
            "new_party_bytes within upload_window to a party abroad unseen for new_party_unseen",
        ),
        Rule("foreign_upload", "warning", "more than foreign_upload_bytes to one party abroad"),
        Rule(
            "foreign_upload_anomaly",
            "warning",
            "a device's upload abroad far above its own exponentially weighted baseline",
        ),
        Rule("new_country", "info", "first contact of a device with a country"),
        Rule(
            "new_fingerprint",
            "info",
            "a device showed a JA4 TLS client fingerprint it never showed before",
        ),
        Rule(
            "dns_bypass",
            "info",
            "a device resolves names with a resolver the network did not hand out",
        ),
        Rule("policy_block", "warning", "a policy rule blocked a device's packets"),
        Rule(
            "policy_would_block",
            "info",
            "a dry-run (alert) policy rule matched a device's packets: it would block them",
        ),
    )
}
"""Every alert rule by name (`Alert.rule`); `sensor.alerts` implements them, ``[alerts]``
`disabled_rules` names them, the metrics label alerts with them."""


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str
    severity: Severity
    ts: float
    device: DeviceRef
    dst: Destination
    summary: str
    identifier: str | None = None
    encoding: str | None = None
    location: str | None = None
    value: str | None = None
    keyed_hash: str | None = None
    bytes_up: int = 0
    flow_uid: str | None = None
