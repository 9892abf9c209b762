"""Issue 'Know who is talking to whom', end to end: a capture of a Xiaomi phone through analyze."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sensor.cli import main
from sensor.lab.synth import (
    AWS_SG_IP,
    PHONE,
    XIAOMI_API_IP,
    Capture,
    TcpSession,
    client_hello,
    sample_home,
)
from tests.pipeline_helpers import build, flow_to, run_analyze
from tests.shared_data import SHARED


@pytest.fixture(scope="module")
def state_with_aws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory after `phonehome update-data --from DIR` with AWS's real file."""
    src = SHARED / "aws-ip-ranges.json"
    if not src.is_file():
        pytest.skip("shared AWS ranges file not present")
    base = tmp_path_factory.mktemp("aws")
    inbox = base / "inbox"
    inbox.mkdir()
    shutil.copy(src, inbox / "ip-ranges.json")  # the name AWS publishes it under
    state = base / "state"
    cfg = base / "u.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{state}"\n')
    assert main(["update-data", "--config", str(cfg), "--from", str(inbox)]) == 0
    return state


def _config(tmp_path: Path, state: Path, extra: str = "") -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[site]\nhome_country = "ID"\n[paths]\nstate_dir = "{state}"\n{extra}')
    return cfg


def _sample(tmp_path: Path) -> Path:
    p = tmp_path / "home.pcap"
    with open(p, "wb") as fh:
        sample_home(fh)
    return p


def test_xiaomi_in_cn_and_aws_singapore(tmp_path: Path, state_with_aws: Path) -> None:
    flows, devices, _, _ = run_analyze(_sample(tmp_path), config=_config(tmp_path, state_with_aws))
    api = flow_to(flows, XIAOMI_API_IP, 80)
    assert api["server_name"] == "api.account.xiaomi.com"
    assert (api["vendor"], api["country"]) == ("Xiaomi", "CN")
    assert "Kingsoft" in api["asn_org"]
    # Kingsoft Cloud publishes no range file: its AS names it, the geo country stands in
    assert (api["provider"], api["region"]) == ("kingsoft", None)
    assert api["abroad"] is True
    assert (api["party"], api["party_source"]) == ("Xiaomi", "map")
    sg = flow_to(flows, AWS_SG_IP, 443)
    assert (sg["vendor"], sg["provider"], sg["region"]) == ("Xiaomi", "aws", "ap-southeast-1")
    assert (sg["country"], sg["city"], sg["abroad"]) == ("SG", "Singapore", True)
    assert (sg["party"], sg["party_source"]) == ("Xiaomi", "map")
    phone = next(d for d in devices if d["mac"] == PHONE.mac)
    assert phone["vendor"] == "Xiaomi"
    assert phone["model"] == "Redmi Note 8 Pro"
    assert phone["kind"] == "phone"
    assert phone["randomized_mac"] is False
    assert any(e.startswith("ua:") for e in phone["evidence"])


def test_without_cloud_data_no_provider(tmp_path: Path) -> None:
    flows, _, _, _ = run_analyze(_sample(tmp_path), config=_config(tmp_path, tmp_path / "empty"))
    sg = flow_to(flows, AWS_SG_IP, 443)
    assert sg["vendor"] == "Xiaomi"  # from the server name alone
    assert sg["provider"] is None and sg["region"] is None
    assert sg["country"] is not None  # the embedded geo data still places it


def test_vendor_falls_back_to_asn_org_and_home_is_not_abroad(tmp_path: Path) -> None:
    def scenario(cap: Capture) -> None:
        s = TcpSession(cap, PHONE, XIAOMI_API_IP, 40100, 443)
        s.open()  # no DNS, no SNI: only the address is known
        s.send(bytes(3000))
        s.close()

    path = build(tmp_path / "anon.pcap", scenario)
    cfg = tmp_path / "cn.toml"
    cfg.write_text(f'[site]\nhome_country = "CN"\n[paths]\nstate_dir = "{tmp_path / "s"}"\n')
    flows, _, _, _ = run_analyze(path, config=cfg)
    f = flow_to(flows, XIAOMI_API_IP, 443)
    assert f["server_name"] is None
    assert f["vendor"] is not None and "Kingsoft" in f["vendor"]
    assert f["abroad"] is False


def test_unknown_home_country_means_abroad_unknown(tmp_path: Path) -> None:
    flows, _, _, _ = run_analyze(_sample(tmp_path))
    assert flow_to(flows, XIAOMI_API_IP, 80)["abroad"] is None


def test_overrides_map_documentation_ranges(tmp_path: Path) -> None:
    ov = tmp_path / "lab-geo.toml"
    ov.write_text(
        '[[prefix]]\nnet = "203.0.113.0/24"\ncountry = "CN"\nasn = 64500\n'
        'asn_org = "Lab CN network"\n'
    )

    def scenario(cap: Capture) -> None:
        s = TcpSession(cap, PHONE, "203.0.113.10", 40200, 443)
        s.open()
        s.close()

    cfg = _config(tmp_path, tmp_path / "s", f'[geo]\noverrides = "{ov}"\n')
    flows, _, _, _ = run_analyze(build(tmp_path / "ov.pcap", scenario), config=cfg)
    f = flow_to(flows, "203.0.113.10", 443)
    assert (f["country"], f["asn"], f["asn_org"], f["abroad"]) == (
        "CN",
        64500,
        "Lab CN network",
        True,
    )


def test_owner_names_and_kinds_devices(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        tmp_path / "s",
        f'[[devices]]\nmac = "{PHONE.mac.upper()}"\nname = "Grandma phone"\nkind = "tablet"\n',
    )
    _, devices, _, _ = run_analyze(_sample(tmp_path), config=cfg)
    phone = next(d for d in devices if d["mac"] == PHONE.mac)
    assert (phone["name"], phone["kind"]) == ("Grandma phone", "tablet")
    assert phone["evidence"][0] == "config"


def test_summary_groups_by_device_country_vendor(tmp_path: Path, state_with_aws: Path) -> None:
    import io

    from sensor.analyze import analyze

    out = io.StringIO()
    rc = analyze([str(_sample(tmp_path))], str(_config(tmp_path, state_with_aws)), out=out)
    assert rc == 0
    text = out.getvalue()
    lines = [ln.split() for ln in text.splitlines()]
    # country, provider region city, party, server
    assert ["SG", "aws", "ap-southeast-1", "Singapore", "Xiaomi", "tracking.intl.miui.com"] in [
        ln[:6] for ln in lines
    ]
    assert ["CN", "kingsoft", "Xiaomi", "api.account.xiaomi.com"] in [ln[:4] for ln in lines]
    assert "Redmi Note 8 Pro" in text and "[phone]" in text


def test_services_on_aws_are_the_party_and_aws_the_host(
    tmp_path: Path, state_with_aws: Path
) -> None:
    """A well-known service hosted on AWS: the service is the party (and the vendor), AWS and
    the region the hosting side; a service the map does not know is its registrable domain,
    where the deprecated `vendor` still names the host."""
    names = {40300: "api.spotify.com", 40301: "api.indie-radio-app.com", 40302: None}

    def scenario(cap: Capture) -> None:
        for port, name in names.items():
            s = TcpSession(cap, PHONE, AWS_SG_IP, port, 443)
            s.open()
            if name is not None:
                s.send(client_hello(name))
            s.close()

    path = build(tmp_path / "aws.pcap", scenario)
    flows, _, _, _ = run_analyze(path, config=_config(tmp_path, state_with_aws))
    by_port = {f["src_port"]: f for f in flows if f["dst_ip"] == AWS_SG_IP}
    spotify, soundcloud, anonymous = by_port[40300], by_port[40301], by_port[40302]
    for f in (spotify, soundcloud, anonymous):
        assert (f["provider"], f["region"], f["country"]) == ("aws", "ap-southeast-1", "SG")
        assert f["asn_org"]
    assert (spotify["party"], spotify["party_source"], spotify["vendor"]) == (
        "Spotify",
        "map",
        "Spotify",
    )
    assert (soundcloud["party"], soundcloud["party_source"]) == ("indie-radio-app.com", "domain")
    assert soundcloud["vendor"] == "Amazon Web Services"  # the old field: the host
    assert anonymous["server_name"] is None
    assert anonymous["party"] is None and anonymous["party_source"] is None


def test_clouds_without_range_files_by_as_number_and_by_name() -> None:
    """Alibaba and Tencent publish no range file: their AS numbers (from the update-data
    dataset) or, with the embedded data alone, their AS names make them the provider."""
    from sensor.enrich.asn import parse as parse_asn
    from sensor.enrich.device import DeviceIdentifier, OuiRegistry
    from sensor.enrich.geo import EmbeddedGeo, GeoDB
    from sensor.enrich.stage import Enricher
    from sensor.enrich.vendors import VendorMap

    tsv = (
        b"47.74.0.0\t47.74.255.255\t45102\tCN\tALIBABA-CN-NET Alibaba US Technology Co., Ltd.\n"
        b"119.28.0.0\t119.28.255.255\t132203\tHK\tTENCENT-NET-AP-CN Tencent Building\n"
        b"120.92.0.0\t120.92.255.255\t59019\tCN\tBJKSCNET Beijing Kingsoft Cloud\n"
    )
    vendors = VendorMap.load()
    devices = DeviceIdentifier(OuiRegistry())
    embedded = EmbeddedGeo.load()
    with_numbers = Enricher(
        GeoDB(embedded=embedded, asn_data=parse_asn(tsv)), None, vendors, devices
    )
    names_only = Enricher(GeoDB(embedded=embedded), None, vendors, devices)
    for enricher in (with_numbers, names_only):
        ali = enricher.destination("47.74.1.1", 443, "log-sdk.example-app.com")
        assert (ali.provider, ali.region, ali.party) == ("alibaba", None, "example-app.com")
        assert ali.country is not None
        tencent = enricher.destination("119.28.1.1", 443, None)
        assert (tencent.provider, tencent.party) == ("tencent", None)
    assert with_numbers.destination("47.74.1.1", 443, None).asn == 45102
    assert names_only.destination("47.74.1.1", 443, None).asn is None
    google = with_numbers.destination("8.8.8.8", 443, None)
    assert google.provider is None  # an AS that is no cloud in the table
