"""`phonehome check`: exit codes 0/1/2/3, what an unprivileged check says `run` would lack,
and the geo data's date."""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.check import EXIT_CONFIG, EXIT_ENVIRONMENT, check, geo_age_lines

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = ("embedded: geoip2fast MAXMIND:GeoLite2-CountryASN-IPv4IPv6-en-20240618",)


def _ts(day: str) -> float:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()


def test_geo_date_shown_and_warned_when_over_a_year_old() -> None:
    (fresh,) = geo_age_lines(EMBEDDED, _ts("2024-12-01"))
    assert fresh == "geo data date: 2024-06-18 (embedded), 166 days old"
    (old,) = geo_age_lines(EMBEDDED, _ts("2025-06-19"))
    assert old.startswith("geo data date: 2024-06-18 (embedded), WARNING: 366 days old")
    assert geo_age_lines(("maxmind: /x.mmdb",), _ts("2025-06-19")) == []


def test_check_shows_the_geo_date(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[site]\nhome_country = 'DE'\n[paths]\nstate_dir = '{tmp_path}/state'\n")
    out = io.StringIO()
    check(str(cfg), out, now=_ts("2026-12-06"))
    assert "  geo data date: 2024-06-18 (embedded), WARNING: 901 days old" in out.getvalue()


def test_no_home_country_is_a_config_error_saying_how(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text((REPO / "etc" / "phonehome.toml").read_text())
    out = io.StringIO()
    assert check(str(cfg), out) == EXIT_CONFIG
    (line,) = out.getvalue().splitlines()
    assert line.startswith(f"config: INVALID: {cfg}: site.home_country: not set")
    assert f"under [site] in {cfg}" in line


def _cmd(args: list[str], prefix: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "sensor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_unprivileged_check_says_what_run_would_lack(tmp_path: Path) -> None:
    """As uid 65534 without capabilities (DAC_READ_SEARCH kept only so that the interpreter
    under /root can be reached): exit 3, naming the two capabilities and the state dir."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)  # the service user's, as the package makes it
    tmp_path.chmod(0o755)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[site]\nhome_country = 'DE'\n[paths]\nstate_dir = '{state}'\n")
    cfg.chmod(0o644)
    nobody = [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
        "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search", "--",
    ]  # fmt: skip
    proc = _cmd(["check", "--config", str(cfg)], nobody, cwd=tmp_path)
    assert proc.returncode == EXIT_ENVIRONMENT, proc.stdout + proc.stderr
    assert "privileges: uid 65534 lacks CAP_NET_ADMIN, CAP_NET_RAW" in proc.stdout
    assert f"privileges: {state} is not readable and writable by uid 65534" in proc.stdout
    assert proc.stdout.endswith("environment problem(s): run would not work here as it is\n")


def test_root_check_with_missing_service_user_is_an_environment_problem(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[site]\nhome_country = 'DE'\nlan_networks = ['127.0.0.0/8']\n"
        f"[paths]\nstate_dir = '{tmp_path}/state'\n"
        "[daemon]\nuser = 'no-such-user-here'\ninterfaces = ['lo']\n"
    )
    proc = _cmd(["check", "--config", str(cfg)], ["unshare", "--net"])
    assert proc.returncode == EXIT_ENVIRONMENT, proc.stdout + proc.stderr
    assert "privileges: user 'no-such-user-here' does not exist" in proc.stdout
    assert "data problem" not in proc.stdout


def test_root_check_ok_exits_0(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[site]\nhome_country = 'DE'\n"
        f"[paths]\nstate_dir = '{tmp_path}/state'\n"
        "[daemon]\nuser = ''\nallow_root = true\ninterfaces = ['lo']\naccounting = 'capture'\n"
    )
    proc = _cmd(["check", "--config", str(cfg)], ["unshare", "--net"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.endswith("result: OK\n")


def test_check_shows_the_relay_lists(tmp_path: Path) -> None:
    from sensor.enrich.relays import TOR_FILE
    from tests.relay_fixtures import ONIONOO

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[site]\nhome_country = 'DE'\n[paths]\nstate_dir = '{tmp_path}/state'\n")
    out = io.StringIO()
    check(str(cfg), out)
    assert "  relays: tor: 14 ORPorts (embedded, 0 guards)\n" in out.getvalue()
    (tmp_path / "state" / "data").mkdir(parents=True)
    (tmp_path / "state" / "data" / TOR_FILE).write_bytes(ONIONOO)
    out = io.StringIO()
    check(str(cfg), out)
    assert "  relays: tor: 3 ORPorts (onionoo, 1 guards)\n" in out.getvalue()
    (tmp_path / "state" / "data" / TOR_FILE).write_bytes(b"{}")
    out = io.StringIO()
    check(str(cfg), out)
    assert "data error: tor relays:" in out.getvalue()
