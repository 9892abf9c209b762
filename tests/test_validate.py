"""sensor.validate: what needs a library to judge, for check, run and analyze alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.config import Config, ConfigError, parse_config
from sensor.config import load_config as parse_only
from sensor.validate import (
    country_problem,
    identifier_problem,
    load_config,
    require_home_country,
    with_home_country,
)

IMEI = "356938035643809"  # Luhn-valid (the example in etc/phonehome.toml)
ICCID = "8944100000000000000"  # 19 digits, Luhn-valid


def error(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "phonehome.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.source == str(path)
    return exc.value


@pytest.mark.parametrize("code", ["GB", "DE", "ID", "US", "JP", "FR"])
def test_iso_countries_pass(code: str) -> None:
    assert country_problem(code) is None


def test_uk_passes_the_parser_but_not_validation(tmp_path: Path) -> None:
    """config.py alone (stdlib) only checks the type; the ISO list is judged above it."""
    path = tmp_path / "c.toml"
    path.write_text("[site]\nhome_country = 'UK'\n")
    assert parse_only(path).site.home_country == "UK"
    err = error(tmp_path, "[site]\nhome_country = 'UK'\n")
    assert str(err) == (
        f"{tmp_path}/phonehome.toml: site.home_country: "
        "not an ISO 3166-1 alpha-2 country code: did you mean GB?"
    )


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("imei", IMEI),
        ("imei", "35-693803-564380-9"),
        ("imei", "35693803564380"),  # 14 digits: the check digit is computed
        ("iccid", ICCID),
        ("iccid", ICCID + "F"),
        ("imsi", "510101234567890"),
        ("phone", "+62 812 3456 7890"),
        ("phone", "+44 7911 123456"),
        ("mac", "64:09:80:12:34:56"),
        ("mac", "64-09-80-12-34-56"),
        ("email", "me@example.com"),
        ("android_id", "9774d56d682e549c"),
        ("ad_id", "38400000-8cf0-11bd-b23e-10b96e40000d"),
        ("serial", "R58M12ABCDE"),
    ],
)
def test_valid_identifiers(kind: str, value: str) -> None:
    assert identifier_problem(kind, value, "ID") is None


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("imei", "12345", "an IMEI has 15 digits"),
        ("imei", "356938035643808", "check digit (Luhn) is wrong"),
        ("imei", "35693803564380x", "digits only"),
        ("iccid", "8944100000000000009", "check digit (Luhn) is wrong"),
        ("iccid", "89441", "18 to 22 digits"),
        ("imsi", "5101012345", "14 or 15 digits"),
        ("phone", "call me maybe", "not a phone number"),
        ("phone", "+62 1", "not a phone number"),
        ("mac", "64:09:80:aa:bb", "not a MAC address"),
        ("email", "me@localhost", "not an e-mail address"),
        ("email", "not an email", "not an e-mail address"),
        ("android_id", "xyz", "16 hex digits"),
        ("ad_id", "38400000-8cf0", "UUID"),
        ("serial", "abc", "at least 6"),
        ("imei", "   ", "empty value"),
    ],
)
def test_invalid_identifiers(kind: str, value: str, reason: str) -> None:
    problem = identifier_problem(kind, value, "ID")
    assert problem is not None and reason in problem
    assert value.strip() == "" or value not in problem  # an identifier is a secret


def test_national_phone_number_needs_a_home_country() -> None:
    assert identifier_problem("phone", "0812-3456-7890", "ID") is None
    problem = identifier_problem("phone", "0812-3456-7890", None)
    assert problem is not None and "+country code" in problem


def test_no_home_country_assumes_no_international_prefix() -> None:
    """Without a home country "00" is not read as the international prefix (Indonesia dials
    001, the US 011): the number needs its +country code, and the error says so."""
    problem = identifier_problem("phone", "0044 20 7946 0123", None)
    assert problem is not None and "+country code" in problem
    assert identifier_problem("phone", "+44 20 7946 0123", None) is None


def test_errors_name_file_key_and_index(tmp_path: Path) -> None:
    err = error(tmp_path, f"[identifiers]\nimei = ['{IMEI}', '12345']\n")
    assert err.key == "identifiers.imei[1]"
    err = error(
        tmp_path,
        "[site]\nhome_country = 'ID'\n"
        "[[devices]]\nmac = '02:00:00:00:00:01'\n"
        "[[devices]]\nmac = '02:00:00:00:00:02'\n"
        "identifiers = { phone = ['+62 812 3456 7890', 'not a phone'] }\n",
    )
    assert err.key == "devices[1].identifiers.phone[1]"
    assert "not a phone number" in err.reason


def test_unknown_update_source_named(tmp_path: Path) -> None:
    err = error(tmp_path, "[update.urls]\nnope = 'https://example.com/x'\n")
    assert err.key == "update.urls.nope" and "unknown source" in err.reason


def test_require_home_country_says_how() -> None:
    cfg = parse_config({}, "/etc/phonehome/phonehome.toml")
    with pytest.raises(ConfigError) as exc:
        require_home_country(cfg)
    assert exc.value.key == "site.home_country"
    assert "under [site] in /etc/phonehome/phonehome.toml" in exc.value.reason
    assert 'home_country = "' in exc.value.reason
    require_home_country(parse_config({"site": {"home_country": "DE"}}))


def test_with_home_country() -> None:
    assert with_home_country(Config(), "GB").site.home_country == "GB"
    with pytest.raises(ConfigError, match="did you mean GB"):
        with_home_country(Config(), "UK")


def test_shipped_configs_validate() -> None:
    repo = Path(__file__).resolve().parent.parent
    demo = load_config(repo / "etc" / "demo.toml")
    require_home_country(demo)
    example = load_config(repo / "etc" / "phonehome.toml")
    assert example.site.home_country is None  # the owner must say where the network is
    with pytest.raises(ConfigError, match=r"site\.home_country: not set"):
        require_home_country(example)


def test_home_country_override_before_validation(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[identifiers]\nphone = ['0812-3456-7890']\n")
    with pytest.raises(ConfigError, match=r"identifiers\.phone\[0\]: a phone number needs"):
        load_config(path)
    assert load_config(path, home_country="ID").site.home_country == "ID"
    with pytest.raises(ConfigError, match=r"--home-country: 'UK': .*did you mean GB"):
        load_config(path, home_country="UK")
