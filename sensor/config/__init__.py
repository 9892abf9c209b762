"""TOML configuration into typed settings: a leaf of the package.

Every section is a frozen dataclass whose `validate` checks types, ranges and syntax with the
standard library only; `sensor.validate` above it judges what needs a library or a maintained
list (country codes, identifiers, source names) and the files the configuration names. Callers
use `sensor.validate.load_config`. Every error is a `ConfigError`: one line, file, key, reason.

This package imports nothing from `sensor` but `sensor.model` (the shared vocabulary), so every
stage can import its settings from here without an import cycle:

- `common`: `ConfigError` and the small parsers every section shares;
- `sections`: the data path's sections (site, paths, flows, dns, geo, update, identifiers,
  detect, daemon, devices);
- `outputs`: the alert rules, the sinks and the metrics endpoint;
- `policy`: ``[policy]`` and its rules;
- `encrypted`: what the sensor sees through encryption (``[dns_bypass]``, ``[relays]``);
- `loader`: `Config`, the TOML walk and the file reader.
"""

from sensor.config.common import ConfigError as ConfigError
from sensor.config.common import dotted as dotted
from sensor.config.common import normalize_mac as normalize_mac
from sensor.config.common import one_line as one_line
from sensor.config.encrypted import DnsBypassConfig as DnsBypassConfig
from sensor.config.encrypted import RelaysConfig as RelaysConfig
from sensor.config.loader import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from sensor.config.loader import Config as Config
from sensor.config.loader import _build as _build  # tests build single sections with it
from sensor.config.loader import load_config as load_config
from sensor.config.loader import parse_config as parse_config
from sensor.config.loader import site_name as site_name
from sensor.config.outputs import AlertmanagerConfig as AlertmanagerConfig
from sensor.config.outputs import AlertsConfig as AlertsConfig
from sensor.config.outputs import EventLogConfig as EventLogConfig
from sensor.config.outputs import JournalConfig as JournalConfig
from sensor.config.outputs import MetricsConfig as MetricsConfig
from sensor.config.policy import PolicyConfig as PolicyConfig
from sensor.config.policy import PolicyRuleConfig as PolicyRuleConfig
from sensor.config.sections import DEFAULT_LAN_NETWORKS as DEFAULT_LAN_NETWORKS
from sensor.config.sections import DEVICE_KINDS as DEVICE_KINDS
from sensor.config.sections import SITE_NAME_RE as SITE_NAME_RE
from sensor.config.sections import DaemonConfig as DaemonConfig
from sensor.config.sections import DetectConfig as DetectConfig
from sensor.config.sections import DeviceConfig as DeviceConfig
from sensor.config.sections import DnsConfig as DnsConfig
from sensor.config.sections import FlowsConfig as FlowsConfig
from sensor.config.sections import GeoConfig as GeoConfig
from sensor.config.sections import IdentifiersConfig as IdentifiersConfig
from sensor.config.sections import PathsConfig as PathsConfig
from sensor.config.sections import SiteConfig as SiteConfig
from sensor.config.sections import UpdateConfig as UpdateConfig
