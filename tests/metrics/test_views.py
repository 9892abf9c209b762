"""sensor.metrics.views as the daemon fills them: every collector reads the daemon's own
objects (no capture, conntrack or policy here: those collectors report nothing, and succeed),
and the alert stage's listener counts exposures."""

from __future__ import annotations

from pathlib import Path

from sensor.daemon import Daemon
from sensor.metrics import Exporter
from sensor.sources.pcap import CaptureFile, read_captures
from tests.test_metrics import home_config, parse, sample_capture, total, values


def test_the_daemons_view_feeds_every_collector(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = home_config(state, metrics={"port": 0})
    d = Daemon(None, cfg)
    d.metrics = Exporter(cfg.metrics, d.metrics_view())
    d.output.metrics = d.metrics
    d._build_stages()
    try:
        d.pipeline.run(read_captures([CaptureFile(str(sample_capture(tmp_path / "home.pcap")))]))
        d.pipeline.finish()
        d.write_errors[("flows.json", "ENOSPC")] += 1
        got = parse(d.metrics.render())
    finally:
        d.stages.close()
        d.metrics.stop()
    success = {
        dict(ls)["collector"]: v
        for (n, ls), v in got.items()
        if n == "phonehome_scrape_collector_success"
    }
    assert success and set(success.values()) == {1.0}, success
    assert total(got, "phonehome_upload_bytes_total") > 0
    assert total(got, "phonehome_identifier_exposures_total") > 0  # through the listener
    assert total(got, "phonehome_packets_read_total") > 0
    assert values(got, "phonehome_site_info", home_country="ID", site="home") == [1.0]
    assert values(
        got, "phonehome_state_write_errors_total", file="flows.json", reason="ENOSPC"
    ) == [1.0]
    assert not values(got, "phonehome_capture_rules_missing")  # not the NFLOG capture
