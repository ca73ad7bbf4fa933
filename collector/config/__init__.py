"""Config: one YAML file parsed once into typed models; nothing below sees raw dicts."""

import collector.config.mqtt  # registers type: mqtt
import collector.config.snmp  # noqa: F401  registers type: snmp
from collector.config.loader import ConfigError, ConfigIssue, load_config, parse_config
from collector.config.model import (
    BufferConfig,
    Config,
    DeviceConfig,
    DynatraceConfig,
    LogConfig,
    MetricConfig,
    SourceConfig,
)
from collector.config.sources import register_source_config, source_config_types

__all__ = [
    "BufferConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "DeviceConfig",
    "DynatraceConfig",
    "LogConfig",
    "MetricConfig",
    "SourceConfig",
    "load_config",
    "parse_config",
    "register_source_config",
    "source_config_types",
]
