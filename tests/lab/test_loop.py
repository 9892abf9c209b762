"""The daemon's packet loop itself, in-process on the lab gateway: real nftables rules, real
NFLOG and conntrack sockets, the loop driven step by step by the test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor import daemon as daemon_mod
from sensor.config import load_config
from sensor.lab import Lab, post_leak, sensor_config
from tests.sources.test_live import in_netns

QUIET = "[metrics]\nenabled = false\n[journal]\nenabled = false\n"


@pytest.fixture
def loop_daemon(lab: Lab, tmp_path: Path) -> Iterator[daemon_mod.Daemon]:
    state = tmp_path / "state"
    state.mkdir()
    path = tmp_path / "phonehome.toml"
    path.write_text(sensor_config(lab, state, QUIET))
    d = daemon_mod.Daemon(str(path), load_config(path))
    with in_netns(lab.gw_ns):  # every socket and rule the daemon makes lives there
        d.start()
        try:
            yield d
        finally:
            d.stop()


def _alerts(d: daemon_mod.Daemon) -> dict[str, int]:
    stats = d.snapshot(time.time())["stats"]
    return dict(stats["alerts"]["alerts"])


def test_loop_holds_back_no_packet_on_a_quiet_network(
    lab: Lab, loop_daemon: daemon_mod.Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop reads at most MAX_READ packets per turn, and NFLOG hands over batches of
    several: what does not fit stays in the source, and the socket does not turn readable for
    it. The phone's leak, the last traffic on a quiet network, must still be read and alerted
    at once, not when some later packet happens to wake the loop (the CI failure after the
    SYN flood: seven packets of the POST waited, and the alert never came)."""
    d = loop_daemon
    monkeypatch.setattr(daemon_mod, "MAX_READ", 2)  # every batch overflows a turn
    r = post_leak(lab)
    assert r.status == 200
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and _alerts(d).get("identifier_abroad", 0) < 2:
        d.loop_once(timeout=0.1)
    for _ in range(20):  # whatever is left after the alert
        d.loop_once(timeout=0.05)
    source = d.source.stats()
    assert d.source.pending() == 0
    assert d.pipeline.packets_read == source["delivered"] == source["received"] > 4
    assert _alerts(d).get("identifier_abroad", 0) >= 2  # the IMEI and the contacts
