"""Settings that need more than the standard library to judge: the one validator above
`sensor.config`.

`config.py` parses (stdlib only: types, ranges, syntax); this module checks what needs a
maintained list or a library: country codes against ISO 3166-1 (`iso3166`), phone numbers
with `phonenumbers`, IMEI/ICCID check digits, and every configured identifier against what the
detector will accept. `check`, `run` (start and reload) and `analyze` all call `load_config`, so
they agree on what is an error. Every error is a `ConfigError` naming file, key and reason
(``devices[0].identifiers.imei[1]: ...``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import iso3166

from sensor.config import Config, ConfigError, dotted, normalize_mac
from sensor.config import load_config as parse_config_file
from sensor.detect.identifiers import canonicalize, has_country_code, luhn_valid
from sensor.model import VALUE_KINDS

# Codes people write that ISO 3166-1 spells otherwise (or reserves without assigning).
_COMMON_MISTAKES: Final[dict[str, str]] = {
    "UK": "GB",  # United Kingdom: ISO uses GB
    "EL": "GR",  # Greece in EU documents
    "EN": "GB",
    "KO": "KR",
    "JA": "JP",
}

_EMAIL_RE: Final = re.compile(r"[A-Za-z0-9._%+'!#$&*/=?^`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_RE: Final = re.compile(r"[0-9a-f]+")
_DIGIT_SEPARATORS: Final = " -./"
_MIN_VALUE_LEN: Final = 6


def load_config(path: str | Path | None, *, home_country: str | None = None) -> Config:
    """The configuration at `path` (None: the defaults), parsed and validated; ConfigError
    (file, key, reason) otherwise. What `check`, `run` and `analyze` call. `home_country`
    (`analyze --home-country CC`) replaces the file's before validation, so national phone
    numbers are read as that country's."""
    cfg = parse_config_file(path)
    if home_country is not None:
        cfg = with_home_country(cfg, home_country)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """ConfigError for the first key whose value is well-formed but wrong."""
    src = cfg.source
    home = cfg.site.home_country
    if home is not None:
        problem = country_problem(home)
        if problem:
            raise ConfigError(src, "site.home_country", problem)
    check_identifiers(src, "identifiers", cfg.identifiers.as_mapping(), home)
    for i, dev in enumerate(cfg.devices):
        check_identifiers(src, f"devices[{i}].identifiers", dev.identifiers, home)
    check_allowed_resolvers(src, cfg.dns_bypass.allowed_resolvers)
    if cfg.update.urls:
        from sensor.update.datafiles import DEFAULT_URLS

        for name in cfg.update.urls:
            if name not in DEFAULT_URLS:
                known = ", ".join(sorted(DEFAULT_URLS))
                raise ConfigError(
                    src, dotted("update.urls", name), f"unknown source (known: {known})"
                )


MAX_RESOLVER_PREFIX: Final = {4: 16, 6: 32}
"""The widest prefix `dns_bypass.allowed_resolvers` takes per IP version: wider ones would call
much of the internet the network's own resolver (turn the rule off in alerts.disabled_rules
instead)."""


def check_allowed_resolvers(src: str, resolvers: Sequence[str]) -> None:
    """Resolver addresses and prefixes (their syntax is config.py's); not whole networks."""
    for i, text in enumerate(resolvers):
        net = ipaddress.ip_network(text, strict=False)
        widest = MAX_RESOLVER_PREFIX[net.version]
        if net.prefixlen < widest:
            raise ConfigError(
                src,
                f"dns_bypass.allowed_resolvers[{i}]",
                f"{text} is wider than a /{widest}: list the resolvers' addresses (to stop "
                'dns_bypass alerts, add "dns_bypass" to alerts.disabled_rules)',
            )


def require_home_country(cfg: Config) -> None:
    """ConfigError unless `site.home_country` is set: without it no destination is "abroad",
    so the sensor would watch without ever judging (what `check` and `run` refuse)."""
    if cfg.site.home_country is None:
        where = cfg.source if cfg.source != "<defaults>" else "the configuration (--config FILE)"
        raise ConfigError(
            cfg.source,
            "site.home_country",
            "not set: the sensor cannot tell what is abroad; add your country's ISO 3166-1 "
            f'code under [site] in {where}, e.g. home_country = "DE"',
        )


def with_home_country(cfg: Config, code: str, source: str = "--home-country") -> Config:
    """`cfg` with the home country `code` (upper-cased), validated; ConfigError naming
    `source` otherwise (for `analyze --home-country CC`)."""
    problem = country_problem(code)
    if problem:
        raise ConfigError(source, "", f"{code!r}: {problem}")
    site = dataclasses.replace(cfg.site, home_country=code)
    return dataclasses.replace(cfg, site=site)


def country_problem(code: str) -> str | None:
    """Why `code` is not an ISO 3166-1 alpha-2 country code (None: it is one)."""
    if code in iso3166.countries_by_alpha2:
        return None
    upper = code.strip().upper()
    guess: str | None = None
    if upper in _COMMON_MISTAKES:
        guess = _COMMON_MISTAKES[upper]
    elif upper in iso3166.countries_by_alpha2:
        guess = upper
    elif upper in iso3166.countries_by_alpha3:
        guess = iso3166.countries_by_alpha3[upper].alpha2
    else:
        try:
            guess = iso3166.countries.get(code.strip()).alpha2
        except (KeyError, ValueError):
            guess = None
    if guess is not None and guess != code:
        return f"not an ISO 3166-1 alpha-2 country code: did you mean {guess}?"
    return "not an ISO 3166-1 alpha-2 country code (two capital letters, e.g. DE, GB, US)"


def check_identifiers(
    source: str, prefix: str, table: Mapping[str, Sequence[str]], home_country: str | None
) -> None:
    """ConfigError naming ``prefix.kind[index]`` for the first value that is not an
    identifier of its kind (for `[identifiers]`, `[[devices]]` and identifier files)."""
    for kind, values in table.items():
        key = f"{prefix}.{kind}" if prefix else kind  # an identifiers file has no prefix
        if kind not in VALUE_KINDS:
            known = ", ".join(VALUE_KINDS)
            raise ConfigError(source, key, f"unknown identifier kind ({known})")
        for i, value in enumerate(values):
            problem = identifier_problem(kind, value, home_country)
            if problem:
                raise ConfigError(source, f"{key}[{i}]", problem)


def identifier_problem(kind: str, value: str, home_country: str | None = None) -> str | None:
    """Why `value` is not a usable identifier of `kind` (None: the detector will match it).
    Messages never repeat the value: identifiers are secrets, errors end up in logs."""
    v = value.strip()
    if not v:
        return "empty value"
    if kind in ("imei", "imsi", "iccid"):
        body = v[:-1] if kind == "iccid" and v[-1] in "fF" else v
        if any(not (c.isdigit() or c in _DIGIT_SEPARATORS) for c in body):
            return f"an {kind.upper()} has digits only"
        digits = "".join(c for c in body if c.isdigit())
        if kind == "imei":
            if len(digits) not in (14, 15, 16):
                return f"an IMEI has 15 digits (14 bare, 16 as IMEISV), not {len(digits)}"
            if len(digits) == 15 and not luhn_valid(digits):
                return "not an IMEI: its check digit (Luhn) is wrong"
        elif kind == "imsi":
            if len(digits) not in (14, 15):
                return f"an IMSI has 14 or 15 digits, not {len(digits)}"
        else:
            if not 18 <= len(digits) <= 22:
                return f"an ICCID has 18 to 22 digits, not {len(digits)}"
            if not luhn_valid(digits):
                return "not an ICCID: its check digit (Luhn) is wrong"
    elif kind == "phone":
        if home_country is None and not has_country_code(v):  # no 00: not every country's
            return "a phone number needs its +country code when site.home_country is not set"
        if canonicalize(kind, v, home_country) is None:  # phonenumbers' judgement
            return "not a phone number (or not a possible length for its country)"
    elif kind == "mac":
        try:
            normalize_mac(v)
        except ValueError:
            return "not a MAC address (six hex octets, e.g. 64:09:80:12:34:56)"
    elif kind == "email":
        if not _EMAIL_RE.fullmatch(v):
            return "not an e-mail address (name@domain.example)"
    elif kind == "android_id":
        if not (8 <= len(v) <= 16 and _HEX_RE.fullmatch(v.lower())):
            return "an Android ID is 16 hex digits"
    elif kind == "ad_id":
        if not _UUID_RE.fullmatch(v.lower()):
            return "an advertising ID is a UUID (8-4-4-4-12 hex digits)"
    elif kind == "serial" and (len(v) < _MIN_VALUE_LEN or not v.isprintable()):
        return f"a serial number needs at least {_MIN_VALUE_LEN} printable characters"
    return _detector_problem(kind, v, home_country)


def _detector_problem(kind: str, value: str, home_country: str | None) -> str | None:
    """The detector's own canonical form must exist, so that what passes here is matched."""
    canonical = canonicalize(kind, value, home_country)
    if canonical is None or len(canonical) < _MIN_VALUE_LEN:
        return f"not usable as {kind}"
    return None


# --- the files a configuration names ------------------------------------------------------------


def check_files(cfg: Config, *, metrics_files: bool = True) -> None:
    """ConfigError (config file, key, the named file and why) unless every file and folder
    the configuration names is usable: the state directory is a directory or can be made;
    configured geo databases are readable MaxMind databases; the overrides file parses; the
    install key, when present, is a whole key; the event log path and (with `metrics_files`)
    the metrics credentials are files. What `run` creates itself (state directory, key, event
    log) may be missing.

    Downloaded range files are data, not configuration: a broken one is reported by `check`
    and skipped by the daemon (update-data never writes one)."""
    src = cfg.source
    state = Path(cfg.paths.state_dir)
    problem = _dir_problem(state)
    if problem:
        raise ConfigError(src, "paths.state_dir", f"{state}: {problem}")
    for key, db in (("geo.country_db", cfg.geo.country_db), ("geo.asn_db", cfg.geo.asn_db)):
        if db is not None:
            _existing_file(src, key, db)
            _maxmind(src, key, db)
    if cfg.geo.overrides is not None:
        from sensor.enrich.geo import GeoDataError, load_overrides

        _existing_file(src, "geo.overrides", cfg.geo.overrides)
        try:
            load_overrides(cfg.geo.overrides)
        except GeoDataError as exc:
            raise ConfigError(src, "geo.overrides", str(exc)) from None
    _check_key_file(cfg, state)
    for name, path in cfg.relays.vpn_lists.items():
        from sensor.enrich.relays import AddressList, RelayDataError

        key = dotted("relays.vpn_lists", name)
        _existing_file(src, key, path)
        try:
            AddressList.parse(Path(path).read_bytes())
        except (OSError, RelayDataError) as exc:
            raise ConfigError(src, key, f"{path}: {exc}") from None
    log_path = cfg.eventlog.path
    if cfg.eventlog.enabled and log_path is not None:
        _creatable_file(src, "eventlog.path", log_path)
    if cfg.metrics.enabled and metrics_files:
        for name in (
            "tls_cert_file", "tls_key_file", "basic_auth_password_file", "bearer_token_file"
        ):  # fmt: skip
            value = getattr(cfg.metrics, name)
            if value is not None:
                _existing_file(src, f"metrics.{name}", value)


def _dir_problem(path: Path) -> str | None:
    """Why `path` cannot serve as a directory (None: it is one, or can be made)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        for parent in path.parents:  # `run` makes it: the nearest existing one must be a dir
            try:
                if not stat.S_ISDIR(os.stat(parent).st_mode):
                    return f"cannot be created: {parent} is not a directory"
                return None
            except FileNotFoundError:
                continue
            except OSError as exc:
                return f"cannot be created: {parent}: {exc.strerror or exc}"
        return None
    except OSError as exc:  # ENOTDIR: a path through a file; EACCES; ELOOP
        return exc.strerror or str(exc)
    return None if stat.S_ISDIR(st.st_mode) else "not a directory"


def _existing_file(src: str, key: str, path: str | Path) -> None:
    """A readable, non-empty regular file, or ConfigError."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(src, key, f"{path}: {exc.strerror or exc}") from None
    _regular(src, key, path, st)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as exc:
        raise ConfigError(src, key, f"{path}: {exc.strerror or exc}") from None
    if st.st_size == 0:
        raise ConfigError(src, key, f"{path}: empty")


def _creatable_file(src: str, key: str, path: str | Path) -> os.stat_result | None:
    """A regular file (its status), or nothing yet (None) where one can be made."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        problem = _dir_problem(p.parent)
        if problem:
            raise ConfigError(src, key, f"{p.parent}: {problem}") from None
        return None
    except OSError as exc:
        raise ConfigError(src, key, f"{p}: {exc.strerror or exc}") from None
    _regular(src, key, p, st)
    return st


def _regular(src: str, key: str, path: str | Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigError(src, key, f"{path}: {what}")


def _maxmind(src: str, key: str, path: str) -> None:
    """Opened by the reader the enrichment uses: its metadata must parse."""
    try:
        from sensor.enrich.geo import GeoDataError, MaxMindDB

        MaxMindDB(path).close()
    except ImportError:
        raise ConfigError(src, key, "needs the maxminddb package") from None
    except GeoDataError as exc:
        raise ConfigError(src, key, str(exc)) from None


def _check_key_file(cfg: Config, state: Path) -> None:
    """The install key: may be missing (it is made), but a present one must be whole (a short
    or empty file would make every keyed hash guessable)."""
    from sensor.detect.stage import KEY_BYTES

    path = Path(cfg.detect.key_file) if cfg.detect.key_file else state / "identity.key"
    key = "detect.key_file"
    if cfg.detect.key_file is not None:
        st = _creatable_file(cfg.source, key, path)
    else:
        try:
            st = os.stat(path)
        except OSError:
            return  # missing (made at start), or the state directory is not there yet
        _regular(cfg.source, key, path, st)
    # Not opened: it is the service user's (mode 0600), and one it cannot read only costs a
    # per-run key (logged); `check` run by someone else must not call that invalid.
    if st is not None and st.st_size < KEY_BYTES:
        raise ConfigError(
            cfg.source,
            key,
            f"{path}: {st.st_size} bytes, not a {KEY_BYTES}-byte key (remove it to make a new one)",
        )
