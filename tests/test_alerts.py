"""The alert stage: rules and severities, suppression, rate bound, upload counters and
baseline, new-country learning, bounded state, sink isolation, settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sensor.alerts import (
    MAX_COVERED,
    RULES,
    AlertsConfig,
    AlertStage,
    TokenBucket,
    format_bytes,
    party,
)
from sensor.config import ConfigError, _build
from sensor.model import Alert, Destination, DeviceRef, Observation
from sensor.sinks import Coverage
from tests.sinks.samples import DST, FULL_IMEI, HASH, REDACTED, SG_CLOUD

T0 = 1_700_000_000.0

TV = DeviceRef(mac="aa:bb:cc:dd:ee:01", ip="192.168.1.20", name="Living-room TV", kind="tv")
PHONE = DeviceRef(mac="aa:bb:cc:dd:ee:02", ip="192.168.1.21")
ABROAD = DST
HOME = Destination(
    ip="198.51.100.9", port=80, server_name="api.example.de", country="DE", abroad=False
)
UNKNOWN = Destination(ip="192.0.2.44", port=8080)


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.resolved: list[tuple[Alert, float, int]] = []
        self.coverage: list[Coverage | None] = []
        self.closed = False

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def resolve(
        self, alert: Alert, ts: float, repeats: int, coverage: Coverage | None = None
    ) -> None:
        self.resolved.append((alert, ts, repeats))
        self.coverage.append(coverage)

    def close(self) -> None:
        self.closed = True

    def stats(self) -> dict[str, int]:
        return {"got": len(self.alerts)}


class Broken:
    name = "broken"

    def send(self, alert: Alert) -> None:
        raise RuntimeError("disk on fire")

    def close(self) -> None:
        raise RuntimeError("still on fire")


def ident(
    ts: float = T0,
    dst: Destination = ABROAD,
    kind: str = "imei",
    device: DeviceRef = TV,
    value: str = REDACTED,
) -> Observation:
    return Observation(
        what="identifier",
        ts=ts,
        device=device,
        dst=dst,
        flow_uid="F1",
        identifier=kind,
        encoding="plain",
        location="url",
        value=value,
        keyed_hash=HASH,
    )


def stage(**kw: Any) -> tuple[AlertStage, Recorder]:
    rec = Recorder()
    cfg = AlertsConfig(**kw)
    cfg.validate()
    return AlertStage(cfg, [rec]), rec


def assert_no_full_identifier(alerts: list[Alert]) -> None:
    for a in alerts:
        assert FULL_IMEI not in repr(a)


# --- identifier rules -------------------------------------------------------------------------


def test_identifier_abroad_is_critical() -> None:
    st, rec = stage()
    alert = st.observe(ident())
    assert alert is not None and rec.alerts == [alert]
    assert alert.rule == "identifier_abroad" and alert.severity == "critical"
    assert alert.value == REDACTED and alert.keyed_hash == HASH
    assert (alert.identifier, alert.encoding, alert.location) == ("imei", "plain", "url")
    assert alert.flow_uid == "F1"
    assert "abroad in CN/CN-BJ" in alert.summary
    assert "Living-room TV (aa:bb:cc:dd:ee:01)" in alert.summary
    assert "t.example.cn (ExampleCorp)" in alert.summary
    assert REDACTED in alert.summary
    assert_no_full_identifier(rec.alerts)


def test_identifier_cleartext_says_home_or_unknown() -> None:
    st, rec = stage()
    home = st.observe(ident(dst=HOME))
    unknown = st.observe(ident(dst=UNKNOWN))
    unconfigured = st.observe(
        ident(dst=dataclasses.replace(HOME, ip="198.51.100.10", server_name=None, abroad=None))
    )
    assert home is not None and unknown is not None and unconfigured is not None
    assert {a.rule for a in rec.alerts} == {"identifier_cleartext"}
    assert {a.severity for a in rec.alerts} == {"warning"}
    assert "a server at home in DE" in home.summary
    assert "a server of unknown country" in unknown.summary
    assert "home country not configured" in unconfigured.summary


def test_rules_table() -> None:
    assert {r.name: r.severity for r in RULES.values()} == {
        "identifier_abroad": "critical",
        "identifier_cleartext": "warning",
        "new_party_upload": "warning",
        "foreign_upload": "warning",
        "foreign_upload_anomaly": "warning",
        "new_country": "info",
        "new_fingerprint": "info",
        "dns_bypass": "info",
        "policy_block": "warning",
        "policy_would_block": "info",
    }


def test_unredacted_value_is_cut_down() -> None:
    st, rec = stage()
    alert = st.observe(ident(value=FULL_IMEI))
    assert alert is not None and alert.value == "…3809"
    assert st.stats()["values_redacted"] == 1
    assert_no_full_identifier(rec.alerts)
    # the forms detectors produce pass unchanged
    for ok in ("…@example.com", "…ee:ff", "12 numbers", "…1234"):
        st2, _ = stage()
        a = st2.observe(ident(value=ok))
        assert a is not None and a.value == ok


# --- suppression ------------------------------------------------------------------------------


def test_same_key_suppressed_other_identifier_kind_not() -> None:
    st, rec = stage()
    assert st.observe(ident(T0)) is not None
    assert st.observe(ident(T0 + 10)) is None  # same device, rule, vendor, kind
    assert st.observe(ident(T0 + 20, kind="phone")) is not None  # another identifier kind
    assert st.observe(ident(T0 + 30, device=PHONE)) is not None  # another device
    other_vendor = dataclasses.replace(ABROAD, vendor="OtherCorp")
    assert st.observe(ident(T0 + 40, dst=other_vendor)) is not None
    # a different server of the same vendor is the same destination
    same_vendor = dataclasses.replace(ABROAD, ip="203.0.113.8", server_name="u.example.cn")
    assert st.observe(ident(T0 + 50, dst=same_vendor)) is None
    s = st.stats()
    assert s["alerts"] == {"identifier_abroad": 4}
    assert s["suppressed"] == {"identifier_abroad": 2}
    assert len(rec.alerts) == 4


def test_destination_key_falls_back_to_server_name_then_ip() -> None:
    st, _ = stage()
    a = Destination(ip="192.0.2.1", port=80, server_name="a.example")
    b = Destination(ip="192.0.2.1", port=80, server_name="b.example")
    c = Destination(ip="192.0.2.2", port=80)
    d = Destination(ip="192.0.2.3", port=80)
    assert all(st.observe(ident(T0 + i, dst=x)) is not None for i, x in enumerate((a, b, c, d)))
    assert st.observe(ident(T0 + 9, dst=dataclasses.replace(c, port=443))) is None


def test_window_expiry_resolves_and_alerts_again() -> None:
    st, rec = stage(suppress_window=600.0)
    first = st.observe(ident(T0))
    assert st.observe(ident(T0 + 100)) is None
    assert st.observe(ident(T0 + 200)) is None
    st.tick(T0 + 599)
    assert rec.resolved == []
    st.tick(T0 + 600)
    assert rec.resolved == [(first, T0 + 600, 2)]
    assert st.stats()["state"]["suppression_windows"] == 0
    again = st.observe(ident(T0 + 700))
    assert again is not None and again.ts == T0 + 700




def test_same_identifier_in_a_second_country_is_a_new_alert() -> None:
    """The IMEI to ExampleCorp in CN, then base64 to ExampleCorp's cloud servers in SG: two
    alerts, since where the identifier went is the point; repeats in each stay counted."""
    st, rec = stage(suppress_window=600.0)
    cn = st.observe(ident(T0))
    sg = st.observe(dataclasses.replace(ident(T0 + 5, dst=SG_CLOUD), encoding="base64"))
    assert cn is not None and sg is not None
    assert (cn.dst.country, sg.dst.country, sg.dst.region) == ("CN", "SG", "ap-southeast-1")
    assert "SG/ap-southeast-1" in sg.summary
    # Another region of the same cloud is another jurisdiction too.
    jakarta = dataclasses.replace(SG_CLOUD, region="ap-southeast-3", country="ID")
    assert st.observe(ident(T0 + 6, dst=jakarta)) is not None
    # Repeats to CN: one more server and encoding, counted, not delivered.
    other = dataclasses.replace(ABROAD, ip="203.0.113.8", server_name="u.example.cn")
    assert st.observe(dataclasses.replace(ident(T0 + 10, dst=other), encoding="sha1")) is None
    assert st.observe(ident(T0 + 11)) is None
    assert st.stats()["suppressed"] == {"identifier_abroad": 2}
    st.tick(T0 + 700)
    resolved = {
        a.dst.country: (n, c) for (a, _, n), c in zip(rec.resolved, rec.coverage, strict=True)
    }
    n, cov = resolved["CN"]
    assert n == 2 and cov is not None
    assert cov.encodings == ("plain", "sha1")
    assert cov.servers == ("t.example.cn", "u.example.cn")
    assert resolved["SG"][1] == Coverage(("base64",), ("data.example.com",), 0)


def test_resolve_coverage_is_bounded() -> None:
    st, rec = stage(suppress_window=600.0)
    st.observe(ident(T0))
    for i in range(40):
        dst = dataclasses.replace(ABROAD, ip=f"203.0.113.{100 + i}", server_name=None)
        st.observe(dataclasses.replace(ident(T0 + 1 + i, dst=dst), encoding=f"enc{i}"))
    st.tick(T0 + 700)
    (cov,) = rec.coverage
    assert cov is not None and len(cov.servers) == len(cov.encodings) == MAX_COVERED
    assert cov.left_out == 2 * (41 - MAX_COVERED)


def test_window_over_before_tick_alerts_again() -> None:
    st, rec = stage(suppress_window=60.0)
    st.observe(ident(T0))
    assert st.observe(ident(T0 + 61)) is not None  # no tick in between
    assert len(rec.alerts) == 2 and len(rec.resolved) == 1


def test_suppression_state_is_bounded() -> None:
    st, rec = stage(max_suppressions=16)
    for i in range(40):
        dst = Destination(ip=f"192.0.2.{i}", port=80, abroad=True, country="CN")
        st.observe(ident(T0 + i * 0.001, dst=dst))
    s = st.stats()
    assert s["state"]["suppression_windows"] == 16
    assert s["evicted"]["suppression_windows"] == 24
    assert len(rec.resolved) == 24


# --- rate bound -------------------------------------------------------------------------------


def test_rate_limit_drops_are_counted_by_rule() -> None:
    st, rec = stage(rate_per_second=1.0, rate_burst=3)
    for i in range(10):
        dst = Destination(ip=f"192.0.2.{i}", port=80, abroad=True, country="CN")
        st.observe(ident(T0, dst=dst))
    for i in range(4):
        st.observe(ident(T0, dst=Destination(ip=f"198.51.100.{i}", port=80)))
    assert len(rec.alerts) == 3
    s = st.stats()
    assert s["dropped"] == {"identifier_abroad": 7, "identifier_cleartext": 4}
    # a dropped alert opened no window: the same key gets through once tokens are back
    assert (
        st.observe(ident(T0 + 2, dst=Destination(ip="192.0.2.9", port=80, abroad=True))) is not None
    )
    assert st.stats()["suppressed"] == {}


def test_token_bucket_refills_and_ignores_clock_going_back() -> None:
    b = TokenBucket(rate=2.0, burst=2)
    assert b.take(0.0) and b.take(0.0) and not b.take(0.0)
    assert b.take(0.5) and not b.take(0.5)
    assert not b.take(0.1)  # earlier than before: no refill
    assert b.take(10.0) and b.take(10.0) and not b.take(10.0)  # capped at burst


# --- sinks ------------------------------------------------------------------------------------


def test_failing_sink_does_not_stop_the_others() -> None:
    rec = Recorder()
    st = AlertStage(AlertsConfig(), [Broken(), rec])
    alert = st.observe(ident())
    assert alert is not None and rec.alerts == [alert]
    st.observe(ident(dst=HOME))
    st.close()
    assert rec.closed
    s = st.stats()
    assert s["sink_errors"] == {"broken": 3}
    assert s["sinks"] == {"recorder": {"got": 2}}


# --- foreign upload ---------------------------------------------------------------------------


def test_foreign_upload_threshold() -> None:
    st, rec = stage(foreign_upload_bytes=5_000_000)
    for i in range(5):
        assert st.account_upload(T0 + 60 * i, TV, ABROAD, 1_000_000) is None
    alert = st.account_upload(T0 + 300, TV, ABROAD, 1)
    assert alert is not None and alert.rule == "foreign_upload" and alert.severity == "warning"
    assert alert.bytes_up == 5_000_001
    assert "5.0 MB to ExampleCorp in CN/CN-BJ within an hour" in alert.summary
    # more within the window is suppressed, not re-alerted
    assert st.account_upload(T0 + 400, TV, ABROAD, 3_000_000) is None
    assert st.stats()["suppressed"] == {"foreign_upload": 1}
    assert [a.rule for a in rec.alerts] == ["foreign_upload"]


def test_foreign_upload_window_slides() -> None:
    st, rec = stage(foreign_upload_bytes=5_000_000)
    st.account_upload(T0, TV, ABROAD, 4_000_000)
    assert st.account_upload(T0 + 3700, TV, ABROAD, 2_000_000) is None  # first bytes aged out
    assert st.account_upload(T0 + 3800, TV, ABROAD, 3_500_000) is not None
    assert rec.alerts[0].bytes_up == 5_500_000


def test_foreign_upload_counts_per_party_and_only_abroad() -> None:
    st, rec = stage()
    other = dataclasses.replace(ABROAD, vendor=None, provider="CloudCo", ip="203.0.113.99")
    st.account_upload(T0, TV, ABROAD, 3_000_000)
    st.account_upload(T0, TV, other, 3_000_000)
    st.account_upload(T0, TV, HOME, 9_000_000)
    st.account_upload(T0, TV, UNKNOWN, 9_000_000)
    st.account_upload(T0, PHONE, ABROAD, 3_000_000)
    assert rec.alerts == []
    assert party(other) == "CloudCo" and party(UNKNOWN) == "192.0.2.44"
    assert party(Destination(ip="192.0.2.1", port=1, asn_org="AS Org")) == "AS Org"


def test_upload_observation_feeds_the_counters() -> None:
    st, _ = stage(foreign_upload_bytes=5_000_000)
    obs = Observation(what="upload", ts=T0, device=TV, dst=ABROAD, bytes_up=6_000_000, period=600)
    alert = st.observe(obs)
    assert alert is not None and alert.rule == "foreign_upload"
    assert st.stats()["observations"] == {"upload": 1}


def test_upload_counters_bounded_and_expired_by_tick() -> None:
    st, _ = stage(max_upload_counters=16)
    for i in range(20):
        dst = dataclasses.replace(ABROAD, vendor=f"V{i}")
        st.account_upload(T0, TV, dst, 10)
    s = st.stats()
    assert s["state"]["upload_counters"] == 16 and s["evicted"]["upload_counters"] == 4
    st.tick(T0 + 1800)
    assert st.stats()["state"]["upload_counters"] == 16
    st.tick(T0 + 3601)
    assert st.stats()["state"]["upload_counters"] == 0


def _hourly(st: AlertStage, hours: int, sizes: list[int], start: float = T0) -> None:
    """Upload sizes[i % len] bytes abroad (spread over many parties, so no single party
    crosses the threshold) in each hour."""
    for h in range(hours):
        n = sizes[h % len(sizes)]
        for part in range(4):
            dst = dataclasses.replace(ABROAD, vendor=f"P{part}")
            st.account_upload(start + h * 3600 + 60 + part, TV, dst, n // 4)


def test_upload_anomaly_fires_above_baseline() -> None:
    start = (T0 // 3600) * 3600
    st, rec = stage(anomaly_min_periods=10, anomaly_floor_bytes=500_000)
    _hourly(st, 13, [100_000, 140_000, 60_000], start)
    assert rec.alerts == []
    now = start + 13 * 3600 + 100
    # 400 kB: many sigma above the mean, twice the mean, but under the floor
    for i in range(4):
        st.account_upload(now + i, TV, dataclasses.replace(ABROAD, vendor=f"Q{i}"), 100_000)
    assert rec.alerts == []
    alert = st.account_upload(now + 10, TV, dataclasses.replace(ABROAD, vendor="Q9"), 200_000)
    assert alert is not None and alert.rule == "foreign_upload_anomaly"
    assert alert.severity == "warning" and alert.bytes_up == 600_000
    assert "in the current hour, against its usual" in alert.summary
    # once per suppression window, whichever destination tips it further
    assert (
        st.account_upload(now + 20, TV, dataclasses.replace(ABROAD, vendor="Q8"), 900_000) is None
    )
    assert st.stats()["suppressed"] == {"foreign_upload_anomaly": 1}


def test_upload_anomaly_needs_history() -> None:
    start = (T0 // 3600) * 3600
    st, rec = stage(anomaly_min_periods=24)
    _hourly(st, 12, [100_000], start)
    st.account_upload(start + 12 * 3600 + 10, TV, ABROAD, 4_000_000)
    assert rec.alerts == []


def test_upload_anomaly_idle_hours_count_as_zero() -> None:
    start = (T0 // 3600) * 3600
    st, _ = stage(
        anomaly_peak_ratio=0.0,
        disabled_rules=("new_party_upload",),
        anomaly_min_periods=5,
        anomaly_floor_bytes=1_000_000,
    )
    _hourly(st, 3, [3_000_000], start)  # busy for a while, then quiet for a week
    alert = st.account_upload(start + 200 * 3600, TV, ABROAD, 1_500_000)
    assert alert is not None and alert.rule == "foreign_upload_anomaly"


def test_upload_anomaly_regular_device_needs_ratio() -> None:
    start = (T0 // 3600) * 3600
    st, _ = stage(
        disabled_rules=("new_party_upload",),
        anomaly_min_periods=5,
        anomaly_floor_bytes=0,
        foreign_upload_bytes=10**12,
        anomaly_peak_ratio=0.0,
    )
    _hourly(st, 30, [2_000_000], start)  # perfectly regular: sigma is 0
    now = start + 30 * 3600 + 100
    assert st.account_upload(now, TV, ABROAD, 3_000_000) is None  # 1.5x: within the ratio
    assert st.account_upload(now + 1, TV, ABROAD, 1_100_000) is not None  # 2.05x


# --- new country ------------------------------------------------------------------------------


def test_new_country_learning_period() -> None:
    st, rec = stage(new_country_learning=3600.0)
    de = dataclasses.replace(ABROAD, country="DE", region=None)
    us = dataclasses.replace(ABROAD, country="US", region=None, vendor="USCorp")
    assert st.account_contact(T0, TV, ABROAD) is None  # learning: CN learned
    assert st.account_contact(T0 + 3599, TV, de) is None  # still learning: DE learned
    assert st.account_contact(T0 + 3600, TV, ABROAD) is None
    alert = st.account_contact(T0 + 3600, TV, us)
    assert alert is not None and alert.rule == "new_country" and alert.severity == "info"
    assert "talked to US for the first time (t.example.cn (USCorp))" in alert.summary
    assert st.account_contact(T0 + 4000, TV, us) is None  # known now
    # a device first seen later has its own learning period
    assert st.account_contact(T0 + 5000, PHONE, us) is None
    assert st.stats()["learned_contacts"] == 3
    assert [a.rule for a in rec.alerts] == ["new_country"]


def test_new_country_not_for_home_or_unknown_country() -> None:
    st, rec = stage(new_country_learning=0.0)
    assert st.account_contact(T0, TV, HOME) is None
    assert st.account_contact(T0, TV, UNKNOWN) is None
    obs = Observation(what="country", ts=T0, device=TV, dst=ABROAD)
    assert st.observe(obs) is not None
    assert [a.rule for a in rec.alerts] == ["new_country"]


def test_contacts_and_devices_bounded() -> None:
    st, _ = stage(new_country_learning=0.0, max_contacts=16, max_devices=16)
    for i in range(20):
        dev = DeviceRef(mac=f"aa:bb:cc:dd:ee:{i:02x}", ip=f"192.168.1.{i}")
        st.account_contact(T0, dev, ABROAD)
    s = st.stats()
    assert s["state"]["contacts"] == 16 and s["evicted"]["contacts"] == 4
    assert s["state"]["devices"] == 16 and s["evicted"]["devices"] == 4


# --- new TLS client fingerprint ----------------------------------------------------------------

JA4_A = "t13d1516h2_8daaf6152771_e5627efa2ab1"
JA4_B = "q13d0312h3_55b375c5d22e_73e2d9e6cde6"


def test_new_fingerprint_after_learning() -> None:
    st, rec = stage(new_fingerprint_learning=86400.0, suppress_window=3600.0)
    assert st.account_fingerprint(T0, TV, ABROAD, JA4_A) is None  # first day: learned
    assert st.account_fingerprint(T0 + 86399, TV, ABROAD, JA4_B) is None
    alert = st.account_fingerprint(T0 + 86400, TV, ABROAD, JA4_A, "F1")
    assert alert is not None and (alert.rule, alert.severity) == ("new_fingerprint", "info")
    assert JA4_A in alert.summary and "Living-room TV" in alert.summary
    assert alert.flow_uid == "F1"
    # The same fingerprint again within the window (to anywhere) is a counted repeat; another
    # fingerprint, or the same one on another device past its learning, is its own alert.
    assert st.account_fingerprint(T0 + 86500, TV, UNKNOWN, JA4_A) is None
    assert st.account_fingerprint(T0 + 86500, TV, ABROAD, JA4_B) is not None
    assert st.account_fingerprint(T0 + 86500, PHONE, ABROAD, JA4_A) is None  # PHONE learning
    assert st.account_fingerprint(T0 + 86500 + 86400, PHONE, ABROAD, JA4_A) is not None
    s = st.stats()
    assert s["learned_fingerprints"] == 3
    assert s["suppressed"] == {"new_fingerprint": 1}
    assert [a.rule for a in rec.alerts] == ["new_fingerprint"] * 3


def test_new_fingerprint_disabled() -> None:
    st, rec = stage(new_fingerprint_learning=0.0, disabled_rules=("new_fingerprint",))
    assert st.account_fingerprint(T0, TV, ABROAD, JA4_A) is None
    assert rec.alerts == [] and st.stats()["disabled"] == {"new_fingerprint": 1}


def test_disabled_rule() -> None:
    st, _ = stage(disabled_rules=("identifier_cleartext",))
    assert st.observe(ident(dst=HOME)) is None
    assert st.observe(ident()) is not None
    assert st.stats()["disabled"] == {"identifier_cleartext": 1}


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("suppress_window", 0.0),
        ("rate_per_second", 0.0),
        ("rate_burst", 0),
        ("foreign_upload_bytes", 0),
        ("upload_window", 10.0),
        ("anomaly_alpha", 0.0),
        ("anomaly_alpha", 1.5),
        ("anomaly_k", -1.0),
        ("anomaly_min_periods", 0),
        ("new_country_learning", -1.0),
        ("new_fingerprint_learning", -1.0),
        ("new_fingerprint_learning", 400 * 86400.0),
        ("disabled_rules", ("no_such_rule",)),
        ("max_contacts", 1),
    ],
)
def test_config_rejects(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{key}: "):
        AlertsConfig(**{key: value}).validate()


def test_config_loads_through_the_settings_loader() -> None:
    cfg = _build(
        AlertsConfig,
        {"suppress_window": 600, "disabled_rules": ["new_country"], "rate_burst": 5},
        "x.toml",
        "alerts",
    )
    assert cfg == AlertsConfig(suppress_window=600.0, disabled_rules=("new_country",), rate_burst=5)
    with pytest.raises(ConfigError, match=r"alerts\.anomaly_alpha: must be in"):
        _build(AlertsConfig, {"anomaly_alpha": 2}, "x.toml", "alerts")
    AlertsConfig().validate()


def test_format_bytes() -> None:
    assert format_bytes(5_000_000) == "5.0 MB"
    assert format_bytes(999) == "999 B"
    assert format_bytes(1_500) == "1.5 kB"
    assert format_bytes(2e9) == "2.0 GB"


# --- new_party_upload and the fixed threshold -------------------------------------------------


def test_foreign_upload_is_off_by_default_and_on_when_configured() -> None:
    st, rec = stage(new_party_learning=0.0)
    st.account_upload(T0, TV, ABROAD, 50_000_000)
    assert [a.rule for a in rec.alerts] == ["new_party_upload"]
    cfg = _build(AlertsConfig, {"foreign_upload_bytes": 5_000_000}, "f.toml", "alerts")
    st = AlertStage(cfg, [rec := Recorder()])
    st.account_upload(T0, TV, ABROAD, 6_000_000)
    assert "foreign_upload" in {a.rule for a in rec.alerts}


def test_new_party_upload_fires_on_what_changed() -> None:
    day = 86400.0
    st, rec = stage(disabled_rules=("foreign_upload_anomaly",))
    st.account_upload(T0, TV, ABROAD, 100)  # first seen: the learning day starts
    # Learning: a big upload to a new party on day one is learned, not alerted.
    cloud = dataclasses.replace(ABROAD, vendor="PhotoCloud")
    st.account_upload(T0 + 3600, TV, cloud, 5_000_000)
    assert rec.alerts == [] and st.stats()["learned_parties"] == 1
    # The daily backup to the same party is not news, however large.
    for d in range(1, 7):
        st.account_upload(T0 + d * day, TV, cloud, 200_000_000)
        st.tick(T0 + d * day + 1)
    assert rec.alerts == []
    # A new party abroad: 999 kB stays quiet, the byte that makes 1 MB alerts.
    new = dataclasses.replace(ABROAD, vendor="Exfil Ltd", country="RU", region=None)
    t = T0 + 6 * day + 100
    assert st.account_upload(t, TV, new, 999_999) is None
    alert = st.account_upload(t + 60, TV, new, 1)
    assert alert is not None and alert.rule == "new_party_upload"
    assert "Exfil Ltd in RU" in alert.summary and "first upload there in 7 days" in alert.summary
    # Same party in another country: new again.
    other = dataclasses.replace(new, country="BY")
    got = st.account_upload(t + 120, TV, other, 2_000_000)
    assert got is not None and got.dst.country == "BY"
    # An upload that began over an hour ago is no longer new: a slow trickle that grows
    # is the anomaly rule's business.
    slow = dataclasses.replace(ABROAD, vendor="Slow Inc")
    st.account_upload(t, TV, slow, 10)
    assert st.account_upload(t + 3700, TV, slow, 2_000_000) is None


def test_new_party_upload_unseen_for_a_week_is_new_again() -> None:
    st, rec = stage(new_party_learning=0.0, disabled_rules=("foreign_upload_anomaly",))
    st.account_upload(T0, TV, ABROAD, 2_000_000)
    assert len(rec.alerts) == 1
    st.tick(T0 + 6 * 86400)
    assert st.account_upload(T0 + 6 * 86400, TV, ABROAD, 2_000_000) is None  # seen 6 days ago
    st.tick(T0 + 14 * 86400)
    assert st.stats()["state"]["upload_parties"] == 0  # forgotten after a week without bytes
    assert st.account_upload(T0 + 14 * 86400, TV, ABROAD, 2_000_000) is not None


def test_new_party_upload_state_is_bounded() -> None:
    st, _ = stage(max_upload_parties=16, new_party_learning=0.0)
    for i in range(40):
        st.account_upload(T0 + i, TV, dataclasses.replace(ABROAD, vendor=f"V{i}"), 10)
    s = st.stats()
    assert s["state"]["upload_parties"] == 16 and s["evicted"]["upload_parties"] == 24


def test_upload_anomaly_needs_to_beat_the_devices_recent_peak() -> None:
    """A daily 500 MB video call is the laptop's habit, not an anomaly; three times its
    largest hour of late is."""
    start = (T0 // 3600) * 3600
    st, rec = stage(disabled_rules=("new_party_upload",), anomaly_min_periods=24)
    for h in range(24 * 5):
        n = 500_000_000 if h % 24 == 10 else 100_000
        st.account_upload(start + h * 3600 + 60, TV, ABROAD, n)
    assert rec.alerts == []
    t = start + 24 * 5 * 3600 + 60
    assert st.account_upload(t, TV, ABROAD, 1_400_000_000) is None  # 2.8 x the peak
    alert = st.account_upload(t + 1, TV, ABROAD, 200_000_000)
    assert alert is not None and alert.rule == "foreign_upload_anomaly"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("foreign_upload_bytes", 0),
        ("new_party_bytes", 0),
        ("new_party_unseen", 60.0),
        ("new_party_learning", -1.0),
        ("anomaly_peak_ratio", -1.0),
        ("anomaly_peak_halflife", 10.0),
        ("max_upload_parties", 1),
    ],
)
def test_new_upload_settings_are_checked(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as err:
        _build(AlertsConfig, {key: value}, "f.toml", "alerts")
    assert str(err.value).startswith(f"f.toml: alerts.{key}: ")
