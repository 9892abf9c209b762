"""SIGHUP with bad configurations on the live lab daemon: it stays up, logs file, key and
reason on one line, and keeps alerting on the OLD configuration; a good configuration then
takes effect. One daemon for the module.

Every bad configuration below also moves `site.home_country` from ID to CN. Were any part of
it applied, the leaking phone's POST to "China" would be `identifier_cleartext` (at home), not
`identifier_abroad`: the alert check tells the old configuration from the new."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sensor.lab import Lab, post_leak
from tests.lab.test_daemon import Daemon
from tests.lab.test_floods import ALERTS, leak_raises_alert

GOOD_HOME = 'home_country = "ID"'
CN_HOME = 'home_country = "CN"'


@pytest.fixture(scope="module")
def reload_lab(lab_usable: None) -> Iterator[Lab]:
    with Lab.create(quic=False) as built:
        yield built


@pytest.fixture(scope="module")
def daemon(reload_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # suppress_window = 1 s: each leak below is a new alert, not a suppressed repeat
    d = Daemon(reload_lab, tmp_path_factory.mktemp("reload"), extra=ALERTS)
    try:
        d.wait_notify("READY=1")
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def good(daemon: Daemon) -> str:
    """The configuration the daemon started with."""
    return daemon.config.read_text()


def _broken_toml(text: str, state: Path) -> str:
    return text + "[flows\n"


def _wrong_type(text: str, state: Path) -> str:
    return text + "[flows]\nmax_flows = 'lots'\n"


def _unknown_key(text: str, state: Path) -> str:
    return text.replace("allow_root = true\n", "allow_root = true\nallow_roots = true\n")


def _missing_geo_db(text: str, state: Path) -> str:
    # Before: logged, the embedded data stood in, and the rest of the file was applied.
    return text.replace("[geo]\n", f'[geo]\ncountry_db = "{state}/GeoLite2-Country.mmdb"\n')


def _missing_overrides(text: str, state: Path) -> str:
    return text.replace(f"{state}/lab-geo.toml", f"{state}/moved-away.toml")


def _no_home_country(text: str, state: Path) -> str:
    return text.replace(CN_HOME + "\n", "")


def _not_iso_country(text: str, state: Path) -> str:
    return text.replace(CN_HOME, 'home_country = "UK"')


def _bad_identifier(text: str, state: Path) -> str:
    return text + '[identifiers]\nimei = ["356938035643809", "356938035643808"]\n'


BAD: dict[str, tuple[Callable[[str, Path], str], str, str]] = {
    # case: (edit of the good text, key, a part of the reason)
    "broken-toml": (_broken_toml, "line ", "invalid TOML: Expected ']'"),
    "wrong-type": (_wrong_type, "flows.max_flows", "expected an integer, got string"),
    "unknown-key": (_unknown_key, "daemon.allow_roots", "unknown key"),
    "missing-geo-db": (_missing_geo_db, "geo.country_db", "No such file or directory"),
    "missing-overrides": (_missing_overrides, "geo.overrides", "No such file or directory"),
    "no-home-country": (_no_home_country, "site.home_country", "not set"),
    "not-iso-country": (_not_iso_country, "site.home_country", "did you mean GB?"),
    "bad-identifier": (_bad_identifier, "identifiers.imei[1]", "check digit (Luhn) is wrong"),
}


def _sighup(daemon: Daemon, text: str, expect: str) -> str:
    """Write `text`, send SIGHUP, wait for the log line containing `expect`; that line."""
    start = len(daemon.output())
    daemon.config.write_text(text)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(expect, lambda: expect in daemon.output()[start:], timeout=10)
    new = daemon.output()[start:]
    assert "Traceback" not in new
    return next(line for line in new.splitlines() if expect in line)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_keeps_the_old_one(
    daemon: Daemon, good: str, reload_lab: Lab, case: str
) -> None:
    edit, key, reason = BAD[case]
    bad = edit(good.replace(GOOD_HOME, CN_HOME), daemon.state)
    assert bad != good.replace(GOOD_HOME, CN_HOME)
    notes = len(daemon.messages)
    line = _sighup(daemon, bad, "reload failed")
    assert f"still running on the old configuration: {daemon.config}: {key}" in line, line
    assert reason in line.split(key, 1)[1], line
    assert daemon.proc.poll() is None
    daemon.pump(0.3)
    assert any(
        f"STATUS=reload failed: {daemon.config}: {key}" in m for m in daemon.messages[notes:]
    )
    time.sleep(1.1)  # past the suppression window of the previous case's alert
    leak_raises_alert(daemon, reload_lab)  # identifier_abroad: home is still ID


def test_good_config_then_takes_effect(daemon: Daemon, good: str, reload_lab: Lab) -> None:
    try:
        _sighup(daemon, good.replace(GOOD_HOME, CN_HOME), "reloaded")
        time.sleep(1.1)
        before = len(daemon.events())
        r = post_leak(reload_lab)
        assert r.status == 200
        (alert, *_) = daemon.wait_for(
            "identifier_cleartext: the same leak, now at home",
            lambda: [
                e
                for e in daemon.events()[before:]
                if e.get("type") == "alert"
                and e.get("rule") == "identifier_cleartext"
                and e.get("identifier") == "imei"
            ],
            timeout=10,
        )
        assert alert["country"] == "CN"
        abroad = [e for e in daemon.events()[before:] if e.get("rule") == "identifier_abroad"]
        assert not [e for e in abroad if e.get("type") == "alert"]
    finally:
        _sighup(daemon, good, "reloaded")
    time.sleep(1.1)
    leak_raises_alert(daemon, reload_lab)  # and back
