"""The fleet's reference configuration (etc/fleet, docs/FLEET.md) validates with the tools
that will load it: promtool (agent and central Prometheus, web config, rule tests) and amtool
(the Alertmanager pair). Paths under /etc/prometheus are pointed at copies in a temporary
directory, so the checks that open referenced files (rules, certificates) do open them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sensor.lab import write_tls_material

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "etc" / "fleet"
PROMETHEUS = ROOT / "etc" / "prometheus"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (packaging/system-deps.sh test)")
    return path


def run(argv: list[str], cwd: Path | None = None) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def installed(tmp_path: Path, text: str) -> str:
    """`text` with /etc/prometheus/ pointing at tmp_path, where the files it names exist."""
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    shutil.copy(PROMETHEUS / "phonehome.rules.yml", etc)
    shutil.copy(FLEET / "central" / "phonehome-fleet.rules.yml", etc)
    tls = tmp_path / "tls"
    tls.mkdir(exist_ok=True)
    ca = write_tls_material(tls, ["metrics.example.net"], [])
    shutil.copy(ca, etc / "fleet-ca.crt")
    shutil.copy(tls / "cert.pem", etc / "metrics.example.net.crt")
    shutil.copy(tls / "key.pem", etc / "metrics.example.net.key")
    (etc / "fleet-remote-write.password").write_text("change me\n")
    return text.replace("/etc/prometheus/", f"{etc}/")


def mac_relabelling(text: str) -> str:
    """The agent config with its commented MAC-dropping write_relabel_configs switched on."""
    block = re.search(r"^      # - action: labeldrop\n(?:      #.*\n)+", text, re.M)
    assert block, "the agent config lost its MAC relabelling example"
    on = re.sub(r"^      # ", "      ", block.group(0), flags=re.M)
    return text.replace(block.group(0), on)


def test_agent_config_validates_with_and_without_mac_relabelling(tmp_path: Path) -> None:
    promtool = tool("promtool")
    text = installed(tmp_path, (FLEET / "agent" / "prometheus.yml").read_text())
    assert "external_labels:\n    # " in text and "\n    site: home-1\n" in text
    for name, body in (("agent.yml", text), ("agent-nomac.yml", mac_relabelling(text))):
        (tmp_path / name).write_text(body)
        assert "SUCCESS" in run([promtool, "check", "config", str(tmp_path / name)])
    assert "action: hashmod" in mac_relabelling(text) and "# - action" not in mac_relabelling(text)


def test_central_config_and_web_config_validate(tmp_path: Path) -> None:
    promtool = tool("promtool")
    central = tmp_path / "central.yml"
    central.write_text(installed(tmp_path, (FLEET / "central" / "prometheus.yml").read_text()))
    out = run([promtool, "check", "config", str(central)])
    assert "SUCCESS: 2 rule files found" in out and out.count("SUCCESS") == 4, out
    web = tmp_path / "web.yml"
    web.write_text(installed(tmp_path, (FLEET / "central" / "web.yml").read_text()))
    assert "SUCCESS" in run([promtool, "check", "web-config", str(web)])


def test_fleet_rules_pass_their_unit_tests() -> None:
    promtool = tool("promtool")
    out = run([promtool, "test", "rules", "phonehome-fleet.rules.test.yml"], cwd=FLEET / "central")
    assert "SUCCESS" in out


def test_sensor_rules_keep_sites_apart() -> None:
    """Every aggregation and join of the sensor's rules keeps `site`: a fleet's sites never
    merge (their instances are all 127.0.0.1:14663 on their own agents)."""
    text = (PROMETHEUS / "phonehome.rules.yml").read_text()
    groupings = re.findall(r"\b(?:by|on) \(([^)]*)\)", text)
    assert groupings
    assert [g for g in groupings if "instance" in g and not g.startswith("site, ")] == []


def test_alertmanager_config_validates_and_groups_by_site() -> None:
    amtool = tool("amtool")
    conf = FLEET / "alertmanager" / "alertmanager.yml"
    assert "SUCCESS" in run([amtool, "check-config", str(conf)])
    text = conf.read_text()
    assert "group_by: [site, " in text
    # One notification path per leak: Prometheus' leak rules go to the null receiver.
    rules = (PROMETHEUS / "phonehome.rules.yml").read_text()
    leak_rules = {"IdentifierExposedAbroad", "IdentifierInCleartext", "ForeignUploadHigh"}
    assert leak_rules | {"NewCountry"} <= set(re.findall(r"- alert: (\w+)", rules))
    muted = re.search(r'alertname =~ "([^"]+)"', text)
    assert muted and set(muted.group(1).split("|")) == leak_rules | {"NewCountry"}


def test_site_settings_load() -> None:
    from sensor.config import load_config, site_name

    cfg = load_config(FLEET / "phonehome-site.toml")
    assert site_name(cfg) == "home-1" and len(cfg.alertmanager.targets) == 2
    agent = (FLEET / "agent" / "prometheus.yml").read_text()
    assert f"\n    site: {cfg.site.name}\n" in agent  # the agent's external label matches
    # the profile fleet_bench measures
    from bench.fleet_bench import FLEET_PROFILE

    assert {k: getattr(cfg.metrics, k) for k in FLEET_PROFILE} == FLEET_PROFILE
