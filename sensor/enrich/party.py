"""The party: the organisation behind a server name, apart from whoever hosts the server.

"Which company gets this phone's data?" and "in whose data centre is it kept?" are two
answers. The hosting side comes from addresses (cloud ranges -> `provider`/`region`, the AS ->
`asn`/`asn_org`); the party comes from the name the device asked for, first match wins:

1. the vendor map (sensor/data/vendors.toml, curated, each company with its sources);
2. a domain-owner dataset that `phonehome update-data` fetches (`DomainOwners`): by default
   Exodus Privacy's tracker list (Android SDKs and the hosts they talk to; ODbL 1.0 as the
   projects that ship it state, which allows redistribution and commercial use with
   attribution; see docs/PARTY.md), or any file in the Disconnect
   "entities" / DuckDuckGo "entity_map" layout from a URL the owner configures (those two are
   CC BY-NC-SA, non-commercial, so never the default);
3. the registrable domain of the name itself per the Public Suffix List ("soundcloud.com"); on
   a platform of the PSL's private section, the customer's name there ("x.herokuapp.com").

No name at all -> no party (the hosting side speaks). A vendor-map match of category "hosting"
(S3 buckets, CloudFront distributions) names the platform operator, not the party: the party is
the customer's name on it (the match's tenant) when there is one.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sensor.enrich.vendors import VendorMap, normalize_name

PartySource = Literal["map", "dataset", "domain"]
"""Where a party came from: the vendor map, the fetched dataset, or the name itself."""

COMPANY_SOURCES: Final = frozenset({"map", "dataset"})
"""Sources that name a company (rather than a bare domain)."""

OWNERS_FILE: Final = "domain-owners.json"
"""The dataset's name in the state directory's data folder."""
DEFAULT_CACHE_SIZE: Final = 16_384
MAX_OWNERS: Final = 200_000
"""Names one dataset may map (Disconnect's list has ~4,000 entities and ~10,000 names)."""
MAX_NAME: Final = 200
"""Characters of an organisation name kept (longer ones are cut)."""

# One alternative of a network-signature regular expression that is a plain host name:
# optional anchors/leading dot, labels with escaped dots, optional end anchor.
_SIGNATURE_HOST: Final = re.compile(r"^\^?(?:\\\.)?((?:[a-z0-9_-]+\\\.)+[a-z0-9-]+)\$?$")


class OwnersDataError(ValueError):
    """A domain-owner file that does not parse; the message says why."""


@dataclass(frozen=True, slots=True)
class PartyMatch:
    party: str
    source: PartySource
    domain: str
    """The entry that matched (map or dataset), or the registrable name (domain)."""


@dataclass(frozen=True, slots=True)
class DomainOwners:
    """Host/domain -> organisation, from a published dataset."""

    owners: Mapping[str, str]
    kind: str
    """The layout it came in: "exodus" or "entities"."""

    def __len__(self) -> int:
        return len(self.owners)

    @classmethod
    def parse(cls, data: bytes) -> DomainOwners:
        """Read either layout; OwnersDataError if it is neither or holds no names."""
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise OwnersDataError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise OwnersDataError("not a JSON object")
        if "trackers" in doc:
            kind, pairs = "exodus", _exodus_pairs(doc["trackers"])
        else:
            # Disconnect: {"entities": {name: {...}}}; DuckDuckGo entity_map: {name: {...}}
            entities = doc.get("entities", doc)
            kind, pairs = "entities", _entity_pairs(entities)
        owners: dict[str, str] = {}
        for host, org in pairs:
            owners.setdefault(host, org)
            if len(owners) > MAX_OWNERS:
                raise OwnersDataError(f"more than {MAX_OWNERS} names")
        if not owners:
            raise OwnersDataError(f"no host names in a {kind} file")
        return cls(owners, kind)


def _org(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OwnersDataError(f"{where}: expected a non-empty name")
    return " ".join(value.split())[:MAX_NAME]


def _exodus_pairs(trackers: Any) -> Iterator[tuple[str, str]]:
    """Exodus Privacy's trackers export/API: {"trackers": {id: {...}}} or a list of them.

    Each tracker has a `name` and a `network_signature`, a regular expression of alternatives
    ("adjust\\.com|adj\\.st"); only alternatives that are plain host names are used."""
    if isinstance(trackers, dict):
        items = list(trackers.values())
    elif isinstance(trackers, list):
        items = trackers
    else:
        raise OwnersDataError("'trackers': expected an object or a list")
    for i, t in enumerate(items):
        if not isinstance(t, dict):
            raise OwnersDataError(f"trackers[{i}]: expected an object")
        sig = t.get("network_signature") or ""
        if not isinstance(sig, str):
            raise OwnersDataError(f"trackers[{i}].network_signature: expected a string")
        if not sig:
            continue
        org = _org(t.get("name"), f"trackers[{i}].name")
        for alt in sig.lower().split("|"):
            m = _SIGNATURE_HOST.match(alt.strip())
            if m is None:
                continue
            host = normalize_name(m.group(1).replace("\\.", "."))
            if host is not None:
                yield host, org


def _entity_pairs(entities: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(entities, dict):
        raise OwnersDataError("'entities': expected an object")
    for name, entity in entities.items():
        if not isinstance(entity, dict):
            continue  # Disconnect's top-level "license" string and the like
        org = _org(entity.get("displayName") or name, f"entities[{name!r}]")
        for key in ("properties", "resources"):
            hosts = entity.get(key, [])
            if not isinstance(hosts, list):
                raise OwnersDataError(f"entities[{name!r}].{key}: expected a list")
            for h in hosts:
                host = normalize_name(h) if isinstance(h, str) else None
                if host is not None:
                    yield host, org


class PartyResolver:
    """Server name -> `PartyMatch`, cached (bounded LRU)."""

    def __init__(
        self,
        vendors: VendorMap,
        owners: DomainOwners | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.vendors = vendors
        self.owners = owners
        self._cached = functools.lru_cache(maxsize=cache_size)(self._lookup)

    def party_for_name(self, server_name: str | None) -> PartyMatch | None:
        """The party behind a DNS/SNI/Host name; None without a usable name.

        Never pass an ECH cover name (the outer ClientHello's public_name, issue 16): it names
        the client-facing server of the encrypting operator, not the party."""
        if not server_name:
            return None
        return self._cached(server_name)

    def cache_info(self) -> dict[str, int]:
        ci = self._cached.cache_info()
        return {"hits": ci.hits, "misses": ci.misses, "size": ci.currsize}

    def _lookup(self, server_name: str) -> PartyMatch | None:
        m = self.vendors.vendor_for_name(server_name)
        if m is not None:
            if m.category != "hosting":
                return PartyMatch(m.vendor, "map", m.domain)
            if m.tenant is not None:
                return PartyMatch(m.tenant, "domain", m.tenant)
            # the platform's own name (s3.amazonaws.com itself): the operator is the party
            return PartyMatch(m.vendor, "map", m.domain)
        name = normalize_name(server_name)
        if name is None:
            return None
        if self.owners is not None:
            owners = self.owners.owners
            registrable = self.vendors.psl.registrable(name)
            if registrable is not None:
                labels = name.split(".")
                stop = len(labels) - (registrable.count(".") + 1)
                for i in range(stop + 1):
                    candidate = ".".join(labels[i:])
                    org = owners.get(candidate)
                    if org is not None:
                        return PartyMatch(org, "dataset", candidate)
        domain = self.vendors.psl.private_registrable(name) or self.vendors.psl.registrable(name)
        if domain is None:
            return None
        return PartyMatch(domain, "domain", domain)
