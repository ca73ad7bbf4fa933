"""The `type: snmp` source: scalars and tables from SNMP agents, one custom device per target.

Modules: `source` (polling a target, emitting readings), `engine` (the interface to an SNMP
library), `gufo_engine` and `pysnmp_engine` (that interface on gufo_snmp and on pysnmp; the
config chooses per target), `transforms` (gauge, delta, rate), `profiles` (built-in sets
of OIDs). The config is in `collector.config.snmp`.
"""

from __future__ import annotations

from collector.config.model import SourceConfig
from collector.config.snmp import SnmpSourceConfig
from collector.sources import SourceContext, register_source
from collector.sources.snmp.source import SnmpSource

__all__ = ["SnmpSource"]


def _create(config: SourceConfig, ctx: SourceContext) -> SnmpSource:
    assert isinstance(config, SnmpSourceConfig)
    return SnmpSource(config, ctx)


register_source(SnmpSourceConfig, _create)
