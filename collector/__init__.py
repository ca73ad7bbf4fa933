"""dt-collector: SNMP and MQTT readings pushed to Dynatrace as custom devices.

Data flows one way: sources -> buffer -> flush -> Dynatrace client.
"""

__version__ = "0.1.0"
