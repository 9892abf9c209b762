"""The detector emits Observations only; `Stages` hands them to the alert stage's one way in."""

from __future__ import annotations

from sensor.alerts import AlertStage
from sensor.config import AlertsConfig, Config, SiteConfig
from sensor.detect.stage import Detector
from sensor.model import Alert, Destination, Flow, HttpRequest
from sensor.stages import Stages

KEY = b"observation-test-key"
T0 = 1_700_000_000.0
ABROAD = Destination(ip="203.0.113.7", port=443, country="SG", abroad=True, vendor="ExampleCo")


class Output:
    def flow(self, flow: Flow) -> None:
        pass

    def device(self, device: object) -> None:
        pass


def flow(bytes_up: int) -> Flow:
    return Flow(
        uid="F1",
        proto="tcp",
        src_ip="192.168.1.20",
        src_port=40000,
        dst_ip=ABROAD.ip,
        dst_port=443,
        device_mac="02:00:00:00:00:20",
        first_seen=T0,
        last_seen=T0 + 30,
        bytes_up=bytes_up,
    )


def detector() -> Detector:
    return Detector(Config(site=SiteConfig(home_country="DE")), KEY, None)


def test_volumes_and_countries_are_observations() -> None:
    d = detector()
    live = flow(4_000)
    first = d.upload_progress(live, None, ABROAD, T0 + 10)
    assert [(o.what, o.ts, o.bytes_up) for o in first] == [
        ("country", T0, 0),
        ("upload", T0 + 10, 4_000),
    ]
    assert {o.flow_uid for o in first} == {"F1"} and first[0].dst == ABROAD
    live.bytes_up = 6_500
    end = d.flow_end(live, None, ABROAD)  # the country was reported while it ran
    assert [(o.what, o.ts, o.bytes_up) for o in end] == [("upload", T0 + 30, 2_500)]
    home = Destination(ip="192.0.2.9", port=443, country="DE", abroad=False)
    assert [o.what for o in d.flow_end(flow(9_000), None, home)] == ["country"]
    assert d.flow_end(flow(9_000), None, Destination(ip="192.0.2.10", port=80)) == []


REQUEST = HttpRequest(
    method="GET",
    path="/?email=alice.test@example.com",
    version="HTTP/1.1",
    host="api.example.com",
    user_agent=None,
    headers=(),
    body=b"",
    content_length=None,
)


def test_identifiers_are_observations() -> None:
    got = detector().http_request(flow(0), None, REQUEST, T0 + 1)
    assert [(o.what, o.identifier, o.encoding) for o in got] == [("identifier", "email", "plain")]
    assert got[0].value == "…@example.com" and got[0].flow_uid == "F1"


class Collect:
    def __init__(self) -> None:
        self.rules: list[str] = []

    def send(self, alert: Alert) -> None:
        self.rules.append(alert.rule)

    def close(self) -> None:
        pass


def test_stages_hand_every_observation_to_the_alert_stage() -> None:
    sink = Collect()
    alerts = AlertStage(AlertsConfig(), [sink])
    stages = Stages(None, Output(), detector(), alerts)
    stages.http_request(flow(0), None, REQUEST, T0 + 1)
    assert alerts.stats()["observations"] == {"identifier": 1}
    assert sink.rules == ["identifier_cleartext"]  # no enricher: a server of unknown country
    stages.tick(T0 + 2 * 3600)  # the alert stage is ticked through the wiring too
    assert alerts.stats()["resolved"] == 1
