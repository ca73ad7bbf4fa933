"""Built-in profiles: named sets of scalars and tables for the common MIBs, so users need no OIDs.

A profile brings its metric definitions (registered like any configured metric, typed with
the device types of the targets that use it) and the polling entries that produce them.
OIDs are numeric, with the MIB object names beside them; nothing is loaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.config.snmp import INDEX, SnmpColumn, SnmpScalar, SnmpTable


@dataclass(frozen=True)
class ProfileMetric:
    display_name: str
    unit: str
    dimensions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    description: str
    metrics: dict[str, ProfileMetric]
    scalars: tuple[SnmpScalar, ...] = ()
    tables: tuple[SnmpTable, ...] = ()


# IF-MIB (RFC 2863). ifTable and ifXTable share the index ifIndex, so one walk covers both.
IF_NAME = "1.3.6.1.2.1.31.1.1.1.1"  # IF-MIB::ifName
IF_HC_IN_OCTETS = "1.3.6.1.2.1.31.1.1.1.6"  # IF-MIB::ifHCInOctets (Counter64)
IF_HC_OUT_OCTETS = "1.3.6.1.2.1.31.1.1.1.10"  # IF-MIB::ifHCOutOctets (Counter64)
IF_HIGH_SPEED = "1.3.6.1.2.1.31.1.1.1.15"  # IF-MIB::ifHighSpeed (Gauge32, Mbit/s)
IF_OPER_STATUS = "1.3.6.1.2.1.2.2.1.8"  # IF-MIB::ifOperStatus (1 up, 2 down, ...)
IF_IN_DISCARDS = "1.3.6.1.2.1.2.2.1.13"  # IF-MIB::ifInDiscards (Counter32)
IF_IN_ERRORS = "1.3.6.1.2.1.2.2.1.14"  # IF-MIB::ifInErrors (Counter32)
IF_OUT_DISCARDS = "1.3.6.1.2.1.2.2.1.19"  # IF-MIB::ifOutDiscards (Counter32)
IF_OUT_ERRORS = "1.3.6.1.2.1.2.2.1.20"  # IF-MIB::ifOutErrors (Counter32)

# HOST-RESOURCES-MIB (RFC 2790).
HR_PROCESSOR_LOAD = "1.3.6.1.2.1.25.3.3.1.2"  # HOST-RESOURCES-MIB::hrProcessorLoad (%)
HR_STORAGE_DESCR = "1.3.6.1.2.1.25.2.3.1.3"  # HOST-RESOURCES-MIB::hrStorageDescr
HR_STORAGE_SIZE = "1.3.6.1.2.1.25.2.3.1.5"  # HOST-RESOURCES-MIB::hrStorageSize
HR_STORAGE_USED = "1.3.6.1.2.1.25.2.3.1.6"  # HOST-RESOURCES-MIB::hrStorageUsed

# SNMPv2-MIB (RFC 3418).
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"  # SNMPv2-MIB::sysUpTime.0 (TimeTicks, 1/100 s)


def _if_column(metric: str, oid: str, transform: str = "gauge", scale: float = 1.0) -> SnmpColumn:
    return SnmpColumn.model_validate(
        {"metric": metric, "oid": oid, "transform": transform, "scale": scale})


PROFILES: dict[str, Profile] = {
    "if-mib": Profile(
        description="IF-MIB interfaces: traffic (64-bit counters), errors, discards, "
                    "status and speed per interface (dimension `interface` = ifName)",
        metrics={
            "custom:snmp.if.in.bytes": ProfileMetric("Interface bytes in", "BytePerSecond",
                                                     ("interface",)),
            "custom:snmp.if.out.bytes": ProfileMetric("Interface bytes out", "BytePerSecond",
                                                      ("interface",)),
            "custom:snmp.if.in.errors": ProfileMetric("Interface inbound errors", "Count",
                                                      ("interface",)),
            "custom:snmp.if.out.errors": ProfileMetric("Interface outbound errors", "Count",
                                                       ("interface",)),
            "custom:snmp.if.in.discards": ProfileMetric("Interface inbound discards", "Count",
                                                        ("interface",)),
            "custom:snmp.if.out.discards": ProfileMetric("Interface outbound discards",
                                                         "Count", ("interface",)),
            "custom:snmp.if.oper.status": ProfileMetric(
                "Interface operational status (1 up, 2 down)", "Count", ("interface",)),
            "custom:snmp.if.speed": ProfileMetric("Interface speed", "BitPerSecond",
                                                  ("interface",)),
        },
        tables=(SnmpTable(
            name="interfaces",
            dimensions={"interface": IF_NAME},
            metrics=[
                _if_column("custom:snmp.if.in.bytes", IF_HC_IN_OCTETS, "rate"),
                _if_column("custom:snmp.if.out.bytes", IF_HC_OUT_OCTETS, "rate"),
                _if_column("custom:snmp.if.in.errors", IF_IN_ERRORS, "delta"),
                _if_column("custom:snmp.if.out.errors", IF_OUT_ERRORS, "delta"),
                _if_column("custom:snmp.if.in.discards", IF_IN_DISCARDS, "delta"),
                _if_column("custom:snmp.if.out.discards", IF_OUT_DISCARDS, "delta"),
                _if_column("custom:snmp.if.oper.status", IF_OPER_STATUS),
                _if_column("custom:snmp.if.speed", IF_HIGH_SPEED, scale=1_000_000),
            ],
        ),),
    ),
    "host-resources": Profile(
        description="HOST-RESOURCES-MIB: load per processor (dimension `cpu` = row index) "
                    "and used percent per storage area (dimension `storage` = hrStorageDescr)",
        metrics={
            "custom:snmp.host.cpu.load": ProfileMetric("Processor load", "Percent", ("cpu",)),
            "custom:snmp.host.storage.used": ProfileMetric("Storage used", "Percent",
                                                           ("storage",)),
        },
        tables=(
            SnmpTable.model_validate({
                "name": "processors",
                "dimensions": {"cpu": INDEX},
                "metrics": [{"metric": "custom:snmp.host.cpu.load", "oid": HR_PROCESSOR_LOAD}],
            }),
            SnmpTable.model_validate({
                "name": "storage",
                "dimensions": {"storage": HR_STORAGE_DESCR},
                "metrics": [{"metric": "custom:snmp.host.storage.used", "oid": HR_STORAGE_USED,
                             "divide_by": HR_STORAGE_SIZE, "scale": 100}],
            }),
        ),
    ),
    "uptime": Profile(
        description="SNMPv2-MIB sysUpTime: time since the agent (re)started, in seconds",
        metrics={"custom:snmp.uptime": ProfileMetric("Agent uptime", "Second")},
        scalars=(SnmpScalar.model_validate(
            {"metric": "custom:snmp.uptime", "oid": SYS_UPTIME, "scale": 0.01}),),
    ),
}
