"""The enrichment stage: who a flow's device is, whose cloud its server is, and where it sits.

Loads its data once (`Enricher.load`), then answers from memory: geo (country, ASN), cloud
ranges (provider, region, the region's country and city), clouds without range files by their
AS (provider only: the geo country stands in for a region), the party behind the server name
(party.py), the deprecated `vendor` (by server name, else by the ASN's organisation), device
identity (OUI, DHCP, User-Agents, owner config).

Country precedence: a cloud range's region country wins over the geo database's, because the
providers register their blocks in one country and announce them from data centres in many
(AWS Singapore addresses are registered in the US).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.config import DEFAULT_LAN_NETWORKS, Config
from sensor.enrich.asn import ASN_FILE, AsnData, AsnDataError
from sensor.enrich.asn import parse as parse_asn
from sensor.enrich.cloud import CloudAsns, CloudRanges
from sensor.enrich.device import DeviceIdentifier, DeviceIdentity, OuiRegistry
from sensor.enrich.geo import GeoDB, geo_cache_dir
from sensor.enrich.party import OWNERS_FILE, DomainOwners, OwnersDataError, PartyResolver
from sensor.enrich.relays import RelayMatcher
from sensor.enrich.vendors import VendorMap
from sensor.model import Destination, Device, DeviceRef, Flow, Visibility
from sensor.visibility import Locality, classify

log = logging.getLogger(__name__)

MAX_DESTINATIONS = 65536


@dataclass(frozen=True, slots=True)
class DataStatus:
    """What the stage loaded, for `check`, logs and metrics."""

    cloud_sources: tuple[str, ...]
    cloud_prefixes: int
    geo: tuple[str, ...]
    errors: tuple[str, ...]


class Enricher:
    def __init__(
        self,
        geo: GeoDB,
        cloud: CloudRanges | None,
        vendors: VendorMap,
        devices: DeviceIdentifier,
        home_country: str | None = None,
        *,
        parties: PartyResolver | None = None,
        cloud_asns: CloudAsns | None = None,
        relays: RelayMatcher | None = None,
        lan_networks: tuple[str, ...] | None = None,
    ) -> None:
        self.geo = geo
        self.cloud = cloud
        self.vendors = vendors
        self.parties = parties if parties is not None else PartyResolver(vendors)
        self.cloud_asns = cloud_asns if cloud_asns is not None else CloudAsns.load()
        self.devices = devices
        self.home_country = home_country
        self.relays = relays if relays is not None else RelayMatcher.load(None)[0]
        self.local = Locality(lan_networks if lan_networks is not None else DEFAULT_LAN_NETWORKS)
        """Destinations that stay on the site: no visibility class."""
        self.errors: list[str] = []
        """Problems with optional data files (each also logged)."""
        self._dest: OrderedDict[tuple[str, str | None, int], Destination] = OrderedDict()
        self._identified: OrderedDict[str, tuple[object, ...]] = OrderedDict()
        """What `device_ref` last identified each device (by MAC) from."""

    @classmethod
    def load(cls, cfg: Config, *, write_cache: bool = True) -> Enricher:
        """Open every data source the configuration names; missing optional data is no error.

        Without `write_cache` the geo cache is read when present but never written."""
        state = Path(cfg.paths.state_dir)
        # The geo cache makes start-up ~10x faster; only where the state directory exists
        # (`analyze` run by a user must not create /var/lib/phonehome).
        cache_dir: Path | None = geo_cache_dir(state)
        if not state.is_dir() or (
            write_cache and cache_dir is not None and not _writable_dir(cache_dir)
        ):
            cache_dir = None
        asn_data, asn_errors = load_asn_data(state / "data") if not cfg.geo.asn_db else (None, [])
        geo = GeoDB.open(
            cfg.geo,
            overrides_path=cfg.geo.overrides,
            cache_dir=cache_dir,
            write_cache=write_cache,
            asn_data=asn_data,
        )
        cloud = CloudRanges.load_dir(state / "data") if (state / "data").is_dir() else None
        vendors = VendorMap.load()
        owners, errors = load_owners(state / "data")
        devices = DeviceIdentifier(OuiRegistry(), cfg.devices)
        relays, relay_errors = RelayMatcher.load(state / "data", cfg.relays.vpn_lists)
        enricher = cls(
            geo,
            cloud,
            vendors,
            devices,
            cfg.site.home_country,
            parties=PartyResolver(vendors, owners),
            relays=relays,
            lan_networks=cfg.site.lan_networks,
        )
        enricher.errors = asn_errors + errors + relay_errors
        return enricher

    def status(self) -> DataStatus:
        errors = list(self.geo.errors) + self.errors
        sources: tuple[str, ...] = ()
        prefixes = 0
        if self.cloud is not None:
            sources = tuple(self.cloud.sources)
            prefixes = sum(self.cloud.counts.values())
            errors += [f"{name}: {err}" for name, err in self.cloud.errors.items()]
        return DataStatus(sources, prefixes, tuple(self.geo.describe()), tuple(errors))

    # --- destinations -------------------------------------------------------------------------

    def destination(self, ip: str, port: int, server_name: str | None) -> Destination:
        """Where (ip, server_name) is; cached, since flows repeat destinations (with the port
        in the key: a server is nearly always reached on one port, and copying a cached
        answer for another port cost more than the lookup saved)."""
        key = (ip, server_name, port)
        hit = self._dest.get(key)
        if hit is None:
            hit = self._destination(ip, server_name)
            if hit.port != port:
                hit = dataclasses.replace(hit, port=port)
            self._dest[key] = hit
            if len(self._dest) > MAX_DESTINATIONS:
                self._dest.popitem(last=False)
        return hit

    def _destination(self, ip: str, server_name: str | None) -> Destination:
        g = self.geo.lookup(ip)
        c = self.cloud.lookup(ip) if self.cloud is not None else None
        provider = region = city = None
        if c is not None:
            provider, region, city = c.provider, c.region, c.city
        else:
            # clouds without range files, by AS: no region, the geo country stands in for it
            provider = self.cloud_asns.provider_for(g.asn, g.asn_org)
        country = (c.country if c is not None and c.country else None) or g.country
        vendor = None
        if server_name:
            m = self.vendors.vendor_for_name(server_name)
            if m is not None:
                vendor = m.vendor
        if vendor is None and g.asn_org:
            vendor = self.vendors.vendor_for_asn_org(g.asn_org)
        # An ECH cover name (issue 16) must never get here as server_name: it names the
        # client-facing server, not the party.
        p = self.parties.party_for_name(server_name)
        abroad = None
        if country and self.home_country:
            abroad = country != self.home_country
        return Destination(
            ip=ip,
            port=0,
            server_name=server_name,
            vendor=vendor,
            provider=provider,
            region=region,
            country=country,
            asn=g.asn,
            asn_org=g.asn_org,
            abroad=abroad,
            city=city,
            party=p.party if p is not None else None,
            party_source=p.source if p is not None else None,
        )

    def annotate_flow(self, flow: Flow) -> Destination:
        """Add the destination fields (and the relay, the visibility class) to the flow
        record and return them."""
        relay = self.relays.match(flow)
        if relay is not None:  # a list's name wins over a handshake's shape ("vpn")
            flow.relay = relay
        d = self.place(flow)
        flow.extra.update(destination_fields(d))
        vis = self.visibility(flow)
        if vis is not None:
            flow.extra["visibility"] = vis
        return d

    def place(self, flow: Flow) -> Destination:
        """The flow's destination. Into a relay, its name (mask.icloud.com) is the relay's,
        not the party's: the destination is placed without it (the hosting side speaks)."""
        relay = flow.relay or self.relays.match(flow)
        return self.destination(flow.dst_ip, flow.dst_port, None if relay else flow.server_name)

    def visibility(self, flow: Flow) -> Visibility | None:
        """The flow's visibility class (relays matched now for a live flow); None for
        traffic that stays on the site."""
        if self.local(flow.dst_ip):
            return None
        if flow.relay is None:
            relay = self.relays.match(flow)
            if relay is not None:
                return "relay"
        return classify(flow)

    # --- devices ------------------------------------------------------------------------------

    def annotate_device(self, dev: Device) -> DeviceIdentity | None:
        try:
            return self.devices.enrich(dev)
        except ValueError:
            log.debug("cannot identify %s", dev.mac, exc_info=True)
            return None

    def device_ref(self, dev: Device | None, mac: str | None, ip: str) -> DeviceRef:
        if dev is None:
            return DeviceRef(mac=mac, ip=ip)
        # The device record as it is now: re-identified whenever what identification reads
        # has grown since last time (a User-Agent, DHCP options), so an alert's device_kind
        # and vendor agree with phonehome_device_info and devices.json.
        inputs = (
            len(dev.user_agents),
            dev.hostname,
            dev.dhcp_vendor_class,
            len(dev.dhcp_params),
        )
        if "kind" not in dev.extra or self._identified.get(dev.mac) != inputs:
            self.annotate_device(dev)
            self._identified[dev.mac] = inputs
            self._identified.move_to_end(dev.mac)
            while len(self._identified) > MAX_DESTINATIONS:
                self._identified.popitem(last=False)
        x = dev.extra
        return DeviceRef(
            mac=dev.mac,
            ip=ip,
            name=_str(x.get("name")) or dev.hostname,
            vendor=_str(x.get("vendor")),
            kind=_str(x.get("kind")),
        )


def load_asn_data(data_dir: Path) -> tuple[AsnData | None, list[str]]:
    """The IP-to-ASN dataset update-data fetched, if any (unused when a MaxMind ASN database
    is configured: the owner's choice wins)."""
    path = data_dir / ASN_FILE
    if not path.is_file():
        return None, []
    try:
        return parse_asn(path.read_bytes()), []
    except (OSError, AsnDataError) as exc:
        log.warning("ip-to-asn: %s: %s", path, exc)
        return None, [f"ip-to-asn: {path}: {exc}"]


def load_owners(data_dir: Path) -> tuple[DomainOwners | None, list[str]]:
    """The domain-owner dataset update-data fetched, if any (a broken one is an error, not
    fatal: parties then come from the vendor map and the names themselves)."""
    path = data_dir / OWNERS_FILE
    if not path.is_file():
        return None, []
    try:
        return DomainOwners.parse(path.read_bytes()), []
    except (OSError, OwnersDataError) as exc:
        log.warning("domain owners: %s: %s", path, exc)
        return None, [f"domain owners: {path}: {exc}"]


def destination_fields(d: Destination) -> dict[str, Any]:
    return {
        "party": d.party,
        "party_source": d.party_source,
        "vendor": d.vendor,
        "provider": d.provider,
        "region": d.region,
        "country": d.country,
        "city": d.city,
        "asn": d.asn,
        "asn_org": d.asn_org,
        "abroad": d.abroad,
    }


def _str(v: object) -> str | None:
    return v if isinstance(v, str) else None


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)
