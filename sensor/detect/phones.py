"""Phone numbers: the one module that speaks to ``phonenumbers`` (libphonenumber's Python port).

Parsing with an explicit unknown home country, the canonical E.164 spelling, the spellings a
number takes on the wire, the matcher over free text, and the home numbering plan the scanner's
cheap pre-checks use. Pure functions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberFormat

REGIONS: Final = frozenset(phonenumbers.SUPPORTED_REGIONS)
"""Every region libphonenumber has a plan for (ISO 3166-1 alpha-2 codes)."""

_PLUS_SIGNS: Final = "+\uff0b"
"""A plus sign as libphonenumber reads one (ASCII and full-width)."""


def has_country_code(text: str) -> bool:
    """True when a plus sign comes before the first digit of `text`: the number says which
    country it belongs to, whatever the home country."""
    for c in text:
        if c in _PLUS_SIGNS:
            return True
        if c.isdigit():
            return False
    return False


def parse_phone(text: str, home_region: str | None) -> PhoneNumber | None:
    """`text` as a phone number, None if it is not one.

    `home_region` is the ISO 3166-1 code national numbers belong to; None (no
    ``site.home_country``) means unknown, as everywhere else: then only a number written with
    its +country code is a number. No country is assumed for a national number, nor an
    international prefix for one starting with 00 (Indonesia dials out with 001, the US with
    011: "0062..." is not a number abroad in every country)."""
    if home_region is None and not has_country_code(text):
        return None
    try:
        return phonenumbers.parse(text, home_region)
    except phonenumbers.NumberParseException:
        return None


def possible_e164(text: str, home_region: str | None) -> str | None:
    """`text` in E.164 if it is a possible number (right length for its country), else None."""
    num = parse_phone(text, home_region)
    if num is None or not phonenumbers.is_possible_number(num):
        return None
    return phonenumbers.format_number(num, PhoneNumberFormat.E164)


def valid_e164(text: str, home_region: str | None) -> str | None:
    """`text` in E.164 if it is a valid number (an assigned range of its country), else None."""
    num = parse_phone(text, home_region)
    if num is None or not phonenumbers.is_valid_number(num):
        return None
    return phonenumbers.format_number(num, PhoneNumberFormat.E164)


@dataclass(frozen=True, slots=True)
class Spellings:
    """How one number may be written (a canonical E.164 number, read for a home country)."""

    nsn: str
    """The national significant number: no country code, no trunk prefix."""
    national: str
    """As dialled at home, formatted (e.g. "020 7946 0123")."""
    international: str
    """With its country code, formatted (e.g. "+44 20 7946 0123")."""


def spellings(e164: str, home_region: str | None) -> Spellings:
    num = phonenumbers.parse(e164, home_region)
    return Spellings(
        nsn=phonenumbers.national_significant_number(num),
        national=phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL),
        international=phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL),
    )


def find_numbers(text: str, home_region: str | None) -> Iterator[tuple[str, int, int, str]]:
    """Valid numbers written in `text`: (E.164, start, end, the text as written)."""
    for pm in phonenumbers.PhoneNumberMatcher(
        text, home_region, leniency=phonenumbers.Leniency.VALID
    ):
        e164 = phonenumbers.format_number(pm.number, PhoneNumberFormat.E164)
        yield e164, pm.start, pm.end, pm.raw_string


@dataclass(frozen=True, slots=True)
class NumberingPlan:
    """What the scanner's cheap checks need of the home country's numbering plan."""

    nanp: bool
    """North American Numbering Plan (country code 1)."""
    nsn_lengths: frozenset[int]
    """Possible lengths of a national significant number (7 to 15 when unknown)."""
    national_prefix: bytes
    """The trunk prefix dialled before a national number ("0"), or empty."""


def numbering_plan(home_region: str | None) -> NumberingPlan:
    """The plan of `home_region`; None (unknown home country): no national plan."""
    nanp = home_region is not None and phonenumbers.country_code_for_region(home_region) == 1
    meta = phonenumbers.PhoneMetadata.metadata_for_region(home_region) if home_region else None
    general = meta.general_desc if meta is not None else None
    lengths = general.possible_length if general is not None else None
    prefix = meta.national_prefix if meta is not None else None
    return NumberingPlan(
        nanp=nanp,
        nsn_lengths=frozenset(lengths or range(7, 16)),
        national_prefix=(prefix or "").encode(),
    )
