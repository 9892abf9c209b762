#!/usr/bin/env python3
"""Build etc/grafana/dashboards/phonehome.json, the Phonehome dashboard, and
phonehome-fleet.json, the fleet view (many sites in one Prometheus), from this file.

    python3 etc/grafana/build_dashboard.py           # write the JSON
    python3 etc/grafana/build_dashboard.py --check   # exit 1 if the JSON is not what we build

Standard library only: the dashboard is plain Grafana JSON (schema 39, Grafana 10.4 and later)
ready for file provisioning (etc/grafana/provisioning/dashboards/phonehome.yml). It has no
``__inputs``: the Prometheus data source is a template variable (``$datasource``), so the same
file works on every Grafana. ``$job``, ``$instance`` and ``$device`` narrow every query.
In the fleet view, ``$site`` (the agents' external label, the sensors' site.name) narrows every
query (docs/FLEET.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

UID = "phonehome-overview"
OUT = Path(__file__).resolve().parent / "dashboards" / "phonehome.json"
FLEET_UID = "phonehome-fleet"
FLEET_OUT = OUT.with_name("phonehome-fleet.json")
DS = {"type": "prometheus", "uid": "${datasource}"}

SEL = 'job="$job", instance=~"$instance"'
DEV = f'{SEL}, device=~"$device"'
HOME = f'label_replace(phonehome_site_info{{{SEL}}}, "dst_country", "$1", "home_country", "(.+)")'
RULES = Path(__file__).resolve().parent.parent / "prometheus" / "phonehome.rules.yml"
RULE_ALERTS = "|".join(re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), re.M))
"""Every alert the rules file defines, for the "firing" panel."""

Json = dict[str, Any]


# --- building blocks ------------------------------------------------------------------------


def target(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False
) -> Json:
    t: Json = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if table:
        t["format"] = "table"
    return t


def targets(*specs: tuple[str, str], instant: bool = False, table: bool = False) -> list[Json]:
    return [
        target(expr, legend, chr(ord("A") + i), instant, table)
        for i, (expr, legend) in enumerate(specs)
    ]


def panel(kind: str, title: str, w: int, h: int, tgts: list[Json], **extra: Any) -> Json:
    p: Json = {
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": tgts,
    }
    p.update(extra)
    return p


def field_defaults(unit: str | None = None, **extra: Any) -> Json:
    d: Json = {"color": {"mode": "palette-classic"}}
    if unit:
        d["unit"] = unit
    d.update(extra)
    return {"defaults": d, "overrides": []}


def timeseries(
    title: str,
    tgts: list[Json],
    unit: str,
    w: int = 12,
    h: int = 8,
    description: str = "",
    bars: bool = False,
    stack: bool = False,
) -> Json:
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
    }
    return panel(
        "timeseries",
        title,
        w,
        h,
        tgts,
        description=description,
        fieldConfig=field_defaults(unit, custom=custom, min=0),
        options={
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "showLegend": True,
                "calcs": ["mean", "max"],
                "sortBy": "Max",
                "sortDesc": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def stat(
    title: str,
    tgts: list[Json],
    unit: str | None = None,
    w: int = 4,
    h: int = 4,
    description: str = "",
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: list[Json] | None = None,
    text_mode: str = "auto",
) -> Json:
    steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "green")])]
    return panel(
        "stat",
        title,
        w,
        h,
        tgts,
        description=description,
        fieldConfig=field_defaults(
            unit,
            color={"mode": "thresholds"},
            thresholds={"mode": "absolute", "steps": steps},
            mappings=mappings or [],
        ),
        options={
            "colorMode": "background" if thresholds else "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
        },
    )


def bargauge(title: str, tgts: list[Json], unit: str, w: int = 8, h: int = 9, **kw: Any) -> Json:
    return panel(
        "bargauge",
        title,
        w,
        h,
        tgts,
        fieldConfig=field_defaults(unit, color={"mode": "continuous-BlYlRd"}, min=0),
        options={
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "left",
            "sizing": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
        **kw,
    )


def table(
    title: str,
    tgts: list[Json],
    w: int = 24,
    h: int = 8,
    description: str = "",
    transformations: list[Json] | None = None,
    overrides: list[Json] | None = None,
) -> Json:
    fc = field_defaults(None, custom={"align": "auto", "filterable": True})
    fc["defaults"]["color"] = {"mode": "thresholds"}
    fc["overrides"] = overrides or []
    return panel(
        "table",
        title,
        w,
        h,
        tgts,
        description=description,
        fieldConfig=fc,
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        transformations=transformations or [],
    )


def unit_override(field: str, unit: str) -> Json:
    return {
        "matcher": {"id": "byName", "options": field},
        "properties": [{"id": "unit", "value": unit}],
    }


def organize(
    exclude: tuple[str, ...],
    index: tuple[str, ...] = (),
    rename: dict[str, str] | None = None,
) -> Json:
    """A table's "organize" transformation: columns hidden, column order, new names."""
    options: Json = {"excludeByName": dict.fromkeys(exclude, True)}
    if index:
        options["indexByName"] = {name: i for i, name in enumerate(index)}
    if rename:
        options["renameByName"] = rename
    return {"id": "organize", "options": options}


MERGE: Json = {"id": "merge", "options": {}}
"""The transformation joining a table's queries into one row per label set."""


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24}}


def layout(items: list[Json]) -> list[Json]:
    """Left to right, wrapping at 24 columns; rows start on a line of their own."""
    x = y = line_h = 0
    out = []
    for pid, p in enumerate(items, start=1):
        g = p["gridPos"]
        if p["type"] == "row":
            y += line_h
            x, line_h = 0, 0
            g.update(x=0, y=y, h=1)
            y += 1
        else:
            if x + g["w"] > 24:
                y += line_h
                x, line_h = 0, 0
            g.update(x=x, y=y)
            x += g["w"]
            line_h = max(line_h, g["h"])
        p["gridPos"] = {"h": g["h"], "w": g["w"], "x": g["x"], "y": g["y"]}
        p["id"] = pid
        out.append(p)
    return out


def variable(name: str, label: str, query: str, multi: bool = False) -> Json:
    v: Json = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
        "regex": "",
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "options": [],
    }
    if multi:
        v["allValue"] = ".*"
    return v


# --- the dashboard --------------------------------------------------------------------------


def panels() -> list[Json]:
    up = f"phonehome_upload_bytes_total{{{DEV}}}"
    down = f"phonehome_download_bytes_total{{{DEV}}}"
    exposures = f"phonehome_identifier_exposures_total{{{DEV}}}"
    alerts = f"phonehome_alerts_total{{{DEV}}}"
    vis = f"phonehome_device_visibility_bytes_total{{{DEV}}}"
    hidden = f'phonehome_device_visibility_bytes_total{{{DEV}, visibility=~"relay|ech|none"}}'
    return [
        row("Devices"),
        stat(
            "Devices with traffic",
            targets((f"count(phonehome_device_info{{{DEV}}})", "")),
            w=4,
            description="LAN devices with series of their own (the rest are device=other).",
        ),
        stat(
            "Uploaded",
            targets((f"sum(increase({up}[$__range]))", "")),
            "decbytes",
            w=5,
            description="Bytes the selected devices sent in the time range.",
        ),
        stat(
            "Uploaded abroad",
            targets(
                (
                    f'sum(increase(phonehome_upload_bytes_total{{{DEV}, dst_country!="unknown"}}'
                    f"[$__range]) unless on (job, instance, dst_country) {HOME})",
                    "",
                )
            ),
            "decbytes",
            w=5,
            description="Bytes sent to countries other than the site's home country.",
        ),
        stat(
            "Identifier exposures",
            targets((f"sum(increase({exposures}[$__range]))", "")),
            w=5,
            thresholds=[(None, "green"), (0.5, "red")],
            description="Identifiers seen leaving in cleartext (every sighting).",
        ),
        stat(
            "Alerts",
            targets((f"sum(increase({alerts}[$__range]))", "")),
            w=5,
            thresholds=[(None, "green"), (0.5, "orange")],
            description="Alerts the sensor delivered (repeats within a suppression window "
            "are counted once).",
        ),
        table(
            "Per device",
            targets(
                (f"sum by (device) (increase({up}[$__range]))", ""),
                (f"sum by (device) (increase({down}[$__range]))", ""),
                (f"sum by (device) (increase({exposures}[$__range]))", ""),
                (
                    "count by (device) (sum by (device, dst_country) (increase("
                    f'phonehome_upload_bytes_total{{{DEV}, dst_country!~"unknown|other"}}'
                    "[$__range])) > 0)",
                    "",
                ),
                (f"phonehome_device_info{{{DEV}}}", ""),
                instant=True,
                table=True,
            ),
            h=9,
            description="What each device is, how much it sent and received, to how many "
            "countries, and how often it gave away an identifier.",
            transformations=[
                MERGE,
                organize(
                    ("Time", "job", "instance", "Value #E"),
                    index=(
                        "device",
                        "kind",
                        "vendor",
                        "model",
                        "mac",
                        "Value #A",
                        "Value #B",
                        "Value #D",
                        "Value #C",
                    ),
                    rename={
                        "Value #A": "uploaded",
                        "Value #B": "downloaded",
                        "Value #C": "identifier exposures",
                        "Value #D": "countries",
                    },
                ),
            ],
            overrides=[
                unit_override("uploaded", "decbytes"),
                unit_override("downloaded", "decbytes"),
            ],
        ),
        timeseries(
            "Upload by device",
            targets((f"sum by (device) (rate({up}[$__rate_interval]))", "{{device}}")),
            "Bps",
        ),
        timeseries(
            "Download by device",
            targets((f"sum by (device) (rate({down}[$__rate_interval]))", "{{device}}")),
            "Bps",
        ),
        timeseries(
            "What the sensor can see",
            targets(
                (
                    f"sum by (visibility) (rate({vis}[$__rate_interval])) / ignoring (visibility)"
                    f" group_left () (sum(rate({vis}[$__rate_interval])) > 0)",
                    "{{visibility}}",
                )
            ),
            "percentunit",
            stack=True,
            description="Share of the selected devices' bytes beyond the site by how their "
            "destination is known: named by dns, tls, quic or http; hidden by ech (a cover "
            "name), sent into a relay (iCloud Private Relay, Tor, a VPN), or none (no name at "
            "all). docs/ENCRYPTED.md.",
        ),
        bargauge(
            "Hidden from the sensor, per device",
            targets(
                (
                    f"sort_desc((sum by (device) (increase({hidden}[$__range])) or 0 * sum by"
                    f" (device) (increase({vis}[$__range]))) / (sum by (device) (increase("
                    f"{vis}[$__range])) > 0))",
                    "{{device}}",
                ),
                instant=True,
            ),
            "percentunit",
            w=12,
            h=8,
            description="Share of each device's bytes beyond the site whose destination the "
            "sensor cannot name (through a relay, behind ECH, or without any name) in the "
            "time range.",
        ),
        bargauge(
            "DNS bypass by resolver",
            targets(
                (
                    "sort_desc(sum by (resolver, protocol) (increase("
                    f"phonehome_dns_bypass_flows_total{{{SEL}}}[$__range])))",
                    "{{resolver}} ({{protocol}})",
                ),
                instant=True,
            ),
            "short",
            w=12,
            h=8,
            description="Flows in the time range to a resolver the network did not hand out, "
            "by resolver and protocol (dot, doq, doh, dns): devices resolving names past the "
            "network's resolver. Pairs beyond 64 count as resolver \"other\". "
            "docs/ENCRYPTED.md.",
        ),
        row("Where uploads go"),
        panel(
            "geomap",
            "Upload by destination country",
            12,
            12,
            targets(
                (
                    "sum by (dst_country) (increase(phonehome_upload_bytes_total"
                    f'{{{DEV}, dst_country!~"unknown|other"}}[$__range]))',
                    "",
                ),
                instant=True,
                table=True,
            ),
            description="Bytes sent per destination country in the time range (the cloud "
            "region's country where the provider publishes one, else the geo database's).",
            fieldConfig=field_defaults("decbytes", color={"mode": "continuous-GrYlRd"}),
            options={
                "view": {"id": "zero", "lat": 20, "lon": 0, "zoom": 1, "allLayers": True},
                "controls": {
                    "showZoom": True,
                    "mouseWheelZoom": False,
                    "showAttribution": True,
                },
                "basemap": {"type": "default", "name": "Basemap", "config": {}},
                "layers": [
                    {
                        "type": "markers",
                        "name": "Upload",
                        "tooltip": True,
                        "location": {
                            "mode": "lookup",
                            "lookup": "dst_country",
                            "gazetteer": "public/gazetteer/countries.json",
                        },
                        "config": {
                            "showLegend": True,
                            "style": {
                                "color": {"field": "Value", "fixed": "dark-green"},
                                "opacity": 0.6,
                                "size": {"field": "Value", "fixed": 5, "min": 5, "max": 40},
                                "symbol": {
                                    "mode": "fixed",
                                    "fixed": "img/icons/marker/circle.svg",
                                },
                                "text": {"mode": "field", "field": "dst_country", "fixed": ""},
                                "textConfig": {
                                    "fontSize": 11,
                                    "offsetX": 0,
                                    "offsetY": -14,
                                    "textAlign": "center",
                                    "textBaseline": "middle",
                                },
                            },
                        },
                    }
                ],
                "tooltip": {"mode": "details"},
            },
        ),
        bargauge(
            "Upload by party",
            targets(
                (f"topk(15, sum by (party) (increase({up}[$__range])))", "{{party}}"),
                instant=True,
            ),
            "decbytes",
            w=6,
            h=12,
            description="The company behind the server names the bytes went to (vendor map, "
            "domain-owner dataset, else the registrable domain; unknown = no server name; "
            "other = beyond a device's top parties). Who hosts them: the next panel.",
        ),
        bargauge(
            "Upload by cloud provider and region",
            targets(
                (
                    "topk(15, sum by (provider, cloud_region) (increase("
                    f'phonehome_upload_bytes_total{{{DEV}, provider!="unknown"}}[$__range])))',
                    "{{provider}} {{cloud_region}}",
                ),
                instant=True,
            ),
            "decbytes",
            w=6,
            h=12,
            description="Bytes to addresses in the cloud providers' published ranges, or "
            "announced from a cloud's AS (Alibaba, Tencent, ...: no region there).",
        ),
        timeseries(
            "Upload by party",
            targets((f"sum by (party) (rate({up}[$__rate_interval]))", "{{party}}")),
            "Bps",
            w=12,
            stack=True,
        ),
        timeseries(
            "Upload abroad by country",
            targets(
                (
                    "sum by (dst_country) (rate(phonehome_upload_bytes_total"
                    f'{{{DEV}, dst_country!="unknown"}}[$__rate_interval])'
                    f" unless on (job, instance, dst_country) {HOME})",
                    "{{dst_country}}",
                )
            ),
            "Bps",
            w=12,
            stack=True,
        ),
        row("Identifiers and alerts"),
        table(
            "Identifier exposures",
            targets(
                (
                    "sum by (device, identifier, encoding, dst_country, party) "
                    f"(increase({exposures}[$__range])) > 0",
                    "",
                ),
                instant=True,
                table=True,
            ),
            w=12,
            h=9,
            description="Which identifier kinds left which device, how encoded, to whom and "
            "where, in the time range. Values never leave the sensor: its event log has the "
            "redacted form and a keyed hash.",
            transformations=[
                organize(("Time",), rename={"Value": "exposures"}),
                {"id": "sortBy", "options": {"sort": [{"field": "exposures", "desc": True}]}},
            ],
        ),
        timeseries(
            "Alerts over time",
            targets(
                (
                    f"sum by (rule, severity) (increase({alerts}[$__rate_interval]))",
                    "{{rule}} ({{severity}})",
                )
            ),
            "short",
            w=12,
            h=9,
            bars=True,
            stack=True,
        ),
        table(
            "Prometheus alerts firing",
            targets((f'ALERTS{{alertstate="firing", alertname=~"{RULE_ALERTS}"}}', "")),
            h=7,
            description="Alerts of phonehome.rules.yml firing now.",
            transformations=[
                {"id": "labelsToFields", "options": {"mode": "columns"}},
                MERGE,
                organize(("Time", "Value", "__name__")),
            ],
        ),
        row("Policy"),
        timeseries(
            "Policy: packets blocked and would-be-blocked, by rule and device",
            targets(
                (
                    "sum by (rule, device, action) (rate(phonehome_policy_packets_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{rule}} / {{device}} ({{action}})",
                )
            ),
            "pps",
            w=16,
            h=8,
            stack=True,
            description=(
                "From the policy table's nftables counters (phonehome policy list). "
                "Action alert is a dry run: those packets passed."
            ),
        ),
        stat(
            "Policy rules and blocks",
            targets(
                (f"sum by (action) (phonehome_policy_rules{{{SEL}}})", "{{action}} rules"),
                (f"sum(phonehome_policy_abroad_blocks{{{SEL}}})", "identifier_abroad blocks"),
                (f"max(phonehome_policy_table_missing{{{SEL}}})", "table missing"),
                instant=True,
            ),
            w=8,
            h=8,
        ),
        row("Sensor health"),
        stat(
            "Sensor",
            targets((f"up{{{SEL}}}", "{{instance}}")),
            w=4,
            thresholds=[(None, "red"), (1, "green")],
            mappings=[
                {
                    "type": "value",
                    "options": {"0": {"text": "DOWN"}, "1": {"text": "UP"}},
                }
            ],
        ),
        stat(
            "Version",
            targets((f"phonehome_build_info{{{SEL}}}", "{{version}} (Python {{python}})")),
            w=4,
            text_mode="name",
        ),
        stat(
            "Flow table",
            targets((f"sum(phonehome_flows_active{{{SEL}}})", "")),
            w=4,
        ),
        stat(
            "Memory",
            targets((f"process_resident_memory_bytes{{{SEL}}}", "")),
            "bytes",
            w=4,
        ),
        stat(
            "Scrape time",
            targets((f"scrape_duration_seconds{{{SEL}}}", "")),
            "s",
            w=4,
        ),
        stat(
            "Collectors failing",
            targets((f"count(phonehome_scrape_collector_success{{{SEL}}} == 0) or vector(0)", "")),
            w=4,
            thresholds=[(None, "green"), (0.5, "red")],
        ),
        timeseries(
            "Packets",
            targets(
                (f"sum(rate(phonehome_packets_read_total{{{SEL}}}[$__rate_interval]))", "read"),
                (
                    "sum by (interface) (rate(phonehome_capture_received_packets_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "captured {{interface}}",
                ),
                (
                    "sum by (interface) (rate(phonehome_capture_dropped_packets_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "dropped {{interface}}",
                ),
            ),
            "pps",
            w=8,
        ),
        timeseries(
            "Packets skipped, by reason",
            targets(
                (
                    "sum by (reason) (rate(phonehome_packets_skipped_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{reason}}",
                )
            ),
            "pps",
            w=8,
            stack=True,
        ),
        timeseries(
            "Flows",
            targets(
                (f"sum(phonehome_flows_active{{{SEL}}})", "in the table"),
                (f"sum(phonehome_flows_active_max{{{SEL}}})", "cap"),
                (
                    "sum by (reason) (rate(phonehome_flows_evicted_total"
                    f"{{{SEL}}}[$__rate_interval])) * 60",
                    "evicted per minute ({{reason}})",
                ),
            ),
            "short",
            w=8,
        ),
        timeseries(
            "Conntrack events",
            targets(
                (
                    f"sum(rate(phonehome_conntrack_events_total{{{SEL}}}[$__rate_interval]))",
                    "events",
                ),
                (
                    "sum by (kind) (rate(phonehome_conntrack_errors_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "lost: {{kind}}",
                ),
            ),
            "ops",
            w=8,
        ),
        bargauge(
            "Data file age",
            targets(
                (f"max by (dataset) (phonehome_data_age_seconds{{{SEL}}})", "{{dataset}}"),
                instant=True,
            ),
            "dtdurations",
            w=8,
            h=8,
            description="Since each cloud-range file was last fetched (phonehome update-data).",
        ),
        timeseries(
            "Collector duration",
            targets(
                (
                    f"max by (collector) (phonehome_scrape_collector_duration_seconds{{{SEL}}})",
                    "{{collector}}",
                )
            ),
            "s",
            w=8,
        ),
    ]


def dashboard() -> Json:
    return _frame(
        UID,
        "Phonehome",
        "Which LAN device phones home to which cloud, where, how much it "
        "uploads, which identifiers leave in cleartext; and the sensor's own health.",
        [
            variable("job", "Job", "label_values(phonehome_build_info, job)"),
            variable(
                "instance",
                "Sensor",
                'label_values(phonehome_build_info{job="$job"}, instance)',
                multi=True,
            ),
            variable(
                "device",
                "Device",
                f"label_values(phonehome_device_info{{{SEL}}}, device)",
                multi=True,
            ),
        ],
        panels(),
    )


def _frame(
    uid: str, title: str, description: str, variables: list[Json], items: list[Json]
) -> Json:
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["phonehome", "network", "privacy"],
        "editable": True,
        "graphTooltip": 1,
        "liveNow": False,
        "fiscalYearStartMonth": 0,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Prometheus",
                    "query": "prometheus",
                    "regex": "",
                    "refresh": 1,
                    "hide": 0,
                    "current": {},
                    "options": [],
                },
                *variables,
            ]
        },
        "panels": layout(items),
    }


SITE = 'site=~"$site"'
"""The fleet view's selector: every query has it (the agents' external label)."""


def fleet_panels() -> list[Json]:
    exposures = f'phonehome_identifier_exposures_total{{job="phonehome", {SITE}}}'
    return [
        row("Sites"),
        stat(
            "Sites reporting",
            targets((f"count(count by (site) (phonehome_site_info{{{SITE}}}))", "")),
            w=4,
            description="Sites whose sensor's series are current in Prometheus.",
        ),
        stat(
            "Sites silent",
            targets(
                (
                    "count(group by (site) "
                    f"(last_over_time(phonehome_site_info{{{SITE}}}[7d])) unless on (site) "
                    f"group by (site) (phonehome_site_info{{{SITE}}})) or vector(0)",
                    "",
                )
            ),
            w=4,
            thresholds=[(None, "green"), (1, "red")],
            description="Sites that reported in the last 7 days but not now "
            "(PhonehomeSiteSilent fires after 10 minutes of this).",
        ),
        stat(
            "Devices across the fleet",
            targets((f'count(phonehome_device_info{{job="phonehome", {SITE}}})', "")),
            w=4,
        ),
        stat(
            "Identifier exposures",
            targets((f"sum(increase({exposures}[$__range]))", "")),
            w=4,
            thresholds=[(None, "green"), (1, "red")],
        ),
        stat(
            "Sensor alerts",
            targets(
                (f'sum(increase(phonehome_alerts_total{{job="phonehome", {SITE}}}[$__range]))', "")
            ),
            w=4,
        ),
        stat(
            "Alertmanager deliveries failing",
            targets(
                (
                    "sum(increase(phonehome_alertmanager_alerts_total"
                    f'{{{SITE}, outcome=~"failed|rejected|dropped"}}[$__range])) or vector(0)',
                    "",
                )
            ),
            w=4,
            thresholds=[(None, "green"), (1, "orange")],
            description="Alerts a sensor could not hand to one of the Alertmanagers it sends "
            "to (with a pair, the other one still got them).",
        ),
        table(
            "Sites",
            targets(
                (
                    f"max by (site, home_country) (phonehome_site_info{{{SITE}}})",
                    "",
                ),
                (f'count by (site) (phonehome_device_info{{job="phonehome", {SITE}}})', ""),
                (f'max by (site) (up{{job="phonehome", {SITE}}})', ""),
                instant=True,
                table=True,
            ),
            w=24,
            h=7,
            transformations=[
                MERGE,
                organize(
                    ("Time", "Value #A"),
                    rename={
                        "site": "Site",
                        "home_country": "Home country",
                        "Value #B": "Devices",
                        "Value #C": "Sensor up",
                    },
                ),
            ],
        ),
        row("Alerts and identifiers"),
        bargauge(
            "Sensor alerts per site",
            targets(
                (
                    "sort_desc(sum by (site) (increase(phonehome_alerts_total"
                    f'{{job="phonehome", {SITE}}}[$__range])))',
                    "{{site}}",
                ),
                instant=True,
            ),
            "short",
            w=12,
            h=9,
        ),
        bargauge(
            "Prometheus alerts firing per site",
            targets(
                (
                    f'sort_desc(count by (site) (ALERTS{{alertstate="firing", {SITE}}}))',
                    "{{site}}",
                ),
                instant=True,
            ),
            "short",
            w=12,
            h=9,
        ),
        table(
            "Devices exposing identifiers, across the fleet",
            targets(
                (
                    "sort_desc(sum by (site, device, identifier, encoding, vendor, dst_country) "
                    f"(increase({exposures}[$__range])) > 0)",
                    "",
                ),
                instant=True,
                table=True,
            ),
            h=10,
            transformations=[organize(("Time",), rename={"Value": "Exposures"})],
        ),
        row("Traffic"),
        timeseries(
            "Upload per site",
            targets(
                (
                    "sum by (site) (rate(phonehome_upload_bytes_total"
                    f'{{job="phonehome", {SITE}}}[$__rate_interval]))',
                    "{{site}}",
                )
            ),
            "Bps",
        ),
        timeseries(
            "Active series per site",
            targets(
                (
                    "sum by (site) (scrape_samples_post_metric_relabeling"
                    f'{{job="phonehome", {SITE}}})',
                    "{{site}}",
                )
            ),
            "short",
            description="Samples per scrape each site's agent sends after its relabelling: "
            "what the site costs the central Prometheus (goal: under 2,000).",
        ),
    ]


def fleet_dashboard() -> Json:
    return _frame(
        FLEET_UID,
        "Phonehome fleet",
        "Many Phonehome sites in one Prometheus: which sites report, their alerts, and the "
        "devices exposing identifiers across the fleet. `site` narrows every panel.",
        [
            variable("site", "Site", "label_values(phonehome_site_info, site)", multi=True),
        ],
        fleet_panels(),
    )


def render(board: Json | None = None) -> str:
    return json.dumps(board or dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--fleet-out", type=Path, default=FLEET_OUT)
    args = ap.parse_args(argv)
    status = 0
    for out, board in ((args.out, dashboard()), (args.fleet_out, fleet_dashboard())):
        text = render(board)
        if args.check:
            current = out.read_text() if out.is_file() else ""
            if current != text:
                print(f"{out} is out of date: run {Path(__file__).name}", file=sys.stderr)
                status = 1
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
