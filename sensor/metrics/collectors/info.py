"""``info``: the build, the site, and the upload thresholds the sensor alerts on."""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

from sensor import __version__
from sensor.metrics.families import Families

if TYPE_CHECKING:
    from sensor.config import Config


def info_families(config: Callable[[], Config | None]) -> Families:
    build = InfoMetricFamily("phonehome_build", "Phonehome version and the Python running it")
    build.add_metric([], {"version": __version__, "python": platform.python_version()})
    yield build
    site = InfoMetricFamily(
        "phonehome_site", "The site's name (fleet label) and the settings rules join on"
    )
    cfg = config()
    # config.py imports this package (MetricsConfig): its helper is looked up late
    from sensor.config import site_name

    home = (cfg.site.home_country if cfg is not None else None) or ""
    name = site_name(cfg) if cfg is not None else ""
    site.add_metric([], {"home_country": home, "site": name})
    yield site
    # The upload thresholds the sensor alerts on, so the shipped Prometheus rules follow
    # the owner's settings: ForeignUploadHigh is off while foreign_upload is.
    thresholds = GaugeMetricFamily(
        "phonehome_alert_threshold_bytes",
        "Upload alert thresholds in force (rule absent: off)",
        labels=["rule"],
    )
    if cfg is not None:
        acfg = cfg.alerts
        off = set(acfg.disabled_rules)
        if acfg.foreign_upload_bytes is not None and "foreign_upload" not in off:
            thresholds.add_metric(["foreign_upload"], float(acfg.foreign_upload_bytes))
        if "new_party_upload" not in off:
            thresholds.add_metric(["new_party_upload"], float(acfg.new_party_bytes))
    yield thresholds
