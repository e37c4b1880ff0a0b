"""Home Assistant MQTT discovery: the retained config messages for one charger.

Owns: which entities Home Assistant shows (state, fault, current, power,
session energy, lifetime energy, an enable switch, a current-limit number),
how each one reads the status JSON, and the device block. The link publishes
these (retained) after every connect. Never decides anything, never talks to
the network itself.

The status JSON keys read here are the contract with firmware/app.py (listed
in docs/mqtt.md): state, fault, current_ma, power_w, session_wh, lifetime_wh,
enabled, limit_ma.
"""

import json

DISCOVERY_PREFIX = "homeassistant"

# (component, object, name, extra fields). value templates read the status JSON.
_SENSORS = (
    ("sensor", "state", "State", {"value_template": "{{ value_json.state }}", "icon": "mdi:ev-station"}),
    (
        "sensor",
        "fault",
        "Fault",
        {"value_template": "{{ value_json.fault or 'none' }}", "icon": "mdi:alert-circle-outline"},
    ),
    (
        "sensor",
        "current",
        "Current",
        {
            "value_template": "{{ (value_json.current_ma | int(0)) / 1000 }}",
            "device_class": "current",
            "unit_of_measurement": "A",
            "state_class": "measurement",
        },
    ),
    (
        "sensor",
        "power",
        "Power",
        {
            "value_template": "{{ value_json.power_w }}",
            "device_class": "power",
            "unit_of_measurement": "W",
            "state_class": "measurement",
        },
    ),
    (
        "sensor",
        "session_energy",
        "Session energy",
        {
            "value_template": "{{ value_json.session_wh }}",
            "device_class": "energy",
            "unit_of_measurement": "Wh",
            "state_class": "total",
        },
    ),
    (
        "sensor",
        "lifetime_energy",
        "Lifetime energy",
        {
            "value_template": "{{ value_json.lifetime_wh }}",
            "device_class": "energy",
            "unit_of_measurement": "Wh",
            "state_class": "total_increasing",
        },
    ),
)


def topic(component, dev_id, obj):
    return "%s/%s/%s/%s/config" % (DISCOVERY_PREFIX, component, dev_id, obj)


def configs(cfg, topic_base):
    """Yield (topic, payload bytes) for every entity, one at a time (a few
    hundred bytes each, so the peak heap stays small). topic_base is
    "<prefix>/<id>/" as the link uses it."""
    dev_id = cfg["id"]
    device = {
        "identifiers": ["evse_" + dev_id],
        "name": "EV charger " + dev_id,
        "manufacturer": "mpy-evse",
        "model": "IEC 61851 AC charge controller",
    }
    try:
        from firmware import VERSION

        device["sw_version"] = VERSION
    except ImportError:
        pass
    common = {
        "state_topic": topic_base + "status",
        "availability_topic": topic_base + "online",
        "payload_available": "1",
        "payload_not_available": "0",
        "device": device,
    }
    for component, obj, name, extra in _SENSORS:
        yield _one(component, dev_id, obj, name, common, extra)
    yield _one(
        "switch",
        dev_id,
        "enable",
        "Charging enabled",
        common,
        {
            "command_topic": topic_base + "set/enable",
            "payload_on": "true",
            "payload_off": "false",
            "value_template": "{{ 'true' if value_json.enabled else 'false' }}",
            "state_on": "true",
            "state_off": "false",
            "icon": "mdi:power",
        },
    )
    yield _one(
        "number",
        dev_id,
        "current_limit",
        "Current limit",
        common,
        {
            "command_topic": topic_base + "set/current_a",
            "value_template": "{{ (value_json.limit_ma | int(0)) / 1000 }}",
            "min": 0,
            "max": cfg.get("hw_max_current_a", 32),
            "step": 1,
            "mode": "box",
            "unit_of_measurement": "A",
            "device_class": "current",
            "icon": "mdi:current-ac",
        },
    )


def _one(component, dev_id, obj, name, common, extra):
    conf = {"name": name, "unique_id": dev_id + "_" + obj, "object_id": dev_id + "_" + obj}
    for k in common:
        conf[k] = common[k]
    for k in extra:
        conf[k] = extra[k]
    return topic(component, dev_id, obj).encode(), json.dumps(conf).encode()
