"""Home Assistant MQTT discovery: the retained config messages for one charger.

Owns: which entities Home Assistant shows, how each one reads the status JSON
(or the ack and session messages), what its commands send, and the device and
origin blocks. The link publishes these (retained) after every connect and
when Home Assistant announces itself. Never decides anything, never talks to
the network itself. Documented entity by entity in docs/mqtt.md.

The status JSON keys read here are the contract with firmware/app.py (listed
in docs/mqtt.md): state, fault, current_ma, current_a (per phase), power_w,
session_wh, lifetime_wh, enabled, limit_ma, offer_a, limit_reason, temp_c.

RAM: one config (~0.8 KB of JSON, its dict and strings) exists at a time.
"""

import json

from firmware.commands import TAG_MAX
from firmware.iec61851 import MIN_OFFER_MA

DISCOVERY_PREFIX = "homeassistant"

_STATES = ["A1", "A2", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F"]
# firmware/limits.py's reasons, plus "none" before the first tick decided one
_LIMITS = ["hardware", "config", "cable", "remote", "balance", "thermal", "none"]
_DIAG = "diagnostic"

# (component, object, name, fields). Fields read the status topic unless they
# name another one ("@ack", "@session": replaced by that topic).
_ENTITIES = (  # fmt: skip
    ("sensor", "state", "State", {
        "value_template": "{{ value_json.state }}",
        "device_class": "enum",
        "options": _STATES,
        "icon": "mdi:ev-station",
    }),
    ("binary_sensor", "plugged_in", "Plugged in", {
        "value_template": "{{ 'ON' if value_json.state[:1] in ['B', 'C', 'D'] else 'OFF' }}",
        "device_class": "plug",
    }),
    ("binary_sensor", "charging", "Charging", {
        "value_template": "{{ 'ON' if value_json.state in ['C2', 'D2'] else 'OFF' }}",
        "device_class": "battery_charging",
    }),
    ("binary_sensor", "problem", "Problem", {
        "value_template": "{{ 'ON' if value_json.fault else 'OFF' }}",
        "device_class": "problem",
    }),
    ("sensor", "fault", "Fault", {
        "value_template": "{{ value_json.fault or 'none' }}",
        "icon": "mdi:alert-circle-outline",
        "entity_category": _DIAG,
    }),
    ("sensor", "current", "Current", {
        "value_template": "{{ (value_json.current_ma | int(0)) / 1000 }}",
        "device_class": "current",
        "unit_of_measurement": "A",
        "state_class": "measurement",
    }),
    ("sensor", "offered_current", "Offered current", {
        "value_template": "{{ value_json.offer_a }}",
        "device_class": "current",
        "unit_of_measurement": "A",
        "state_class": "measurement",
    }),
    ("sensor", "limit_reason", "Offer limited by", {
        "value_template": "{{ value_json.limit_reason or 'none' }}",
        "device_class": "enum",
        "options": _LIMITS,
        "entity_category": _DIAG,
    }),
    ("sensor", "power", "Power", {
        "value_template": "{{ value_json.power_w }}",
        "device_class": "power",
        "unit_of_measurement": "W",
        "state_class": "measurement",
    }),
    # Goes back to 0 when a session starts: total_increasing books a drop as
    # a new cycle, so the statistics never see negative energy.
    ("sensor", "session_energy", "Session energy", {
        "value_template": "{{ value_json.session_wh }}",
        "device_class": "energy",
        "unit_of_measurement": "Wh",
        "state_class": "total_increasing",
    }),
    ("sensor", "lifetime_energy", "Lifetime energy", {
        "value_template": "{{ value_json.lifetime_wh }}",
        "device_class": "energy",
        "unit_of_measurement": "Wh",
        "state_class": "total_increasing",
    }),
    ("sensor", "temperature", "Temperature", {
        "value_template": "{{ value_json.temp_c }}",  # null (no sensor) renders None: unknown
        "device_class": "temperature",
        "unit_of_measurement": "°C",
        "state_class": "measurement",
        "entity_category": _DIAG,
    }),
    # The closed session (QoS 1, not retained): energy, with the record as attributes.
    ("sensor", "last_session", "Last session", {
        "state_topic": "@session",
        "json_attributes_topic": "@session",
        "value_template": "{{ value_json.energy_wh }}",
        "device_class": "energy",
        "unit_of_measurement": "Wh",
        "icon": "mdi:receipt-text-outline",
    }),
    # The answer to the last command: "ok" or the firmware's error text.
    ("sensor", "last_command", "Last command", {
        "state_topic": "@ack",
        "json_attributes_topic": "@ack",
        "value_template": "{{ 'ok' if value_json.ok else value_json.error }}",
        "icon": "mdi:console-line",
        "entity_category": _DIAG,
    }),
    ("switch", "enable", "Charging enabled", {
        "command_topic": "@set/enable",
        "payload_on": "true",
        "payload_off": "false",
        "value_template": "{{ 'true' if value_json.enabled else 'false' }}",
        "state_on": "true",
        "state_off": "false",
        "icon": "mdi:power",
    }),
    ("button", "stop", "Stop session", {
        "command_topic": "@set/stop",
        "payload_press": "1",
        "icon": "mdi:stop-circle-outline",
    }),
    ("button", "clear_fault", "Clear fault", {
        "command_topic": "@set/clear_fault",
        "payload_press": "1",
        "icon": "mdi:alert-remove-outline",
        "entity_category": "config",
    }),
    ("text", "authorize", "Authorize tag", {
        "command_topic": "@set/authorize",
        "min": 1,
        "max": TAG_MAX,
        "pattern": "[ -~]+",  # printable ASCII, what commands.parse accepts
        "mode": "text",
        "icon": "mdi:card-account-details-outline",
    }),
)


def topic(component, dev_id, obj):
    return "%s/%s/%s/%s/config" % (DISCOVERY_PREFIX, component, dev_id, obj)


def unique_id(dev_id, obj):
    """Namespaced, so another integration's "<id>_state" cannot collide."""
    return "evse_%s_%s" % (dev_id, obj)


def configs(cfg, topic_base, device_info=None):
    """Yield (topic, payload bytes) for every entity, one at a time (the peak
    heap stays small). topic_base is "<prefix>/<id>/" as the link uses it;
    device_info adds to the device block (serial_number, hw_version)."""
    dev_id = cfg["id"]
    device = {
        "identifiers": ["evse_" + dev_id],
        "name": "EV charger " + dev_id,
        "manufacturer": "mpy-evse",
        "model": "IEC 61851 AC charge controller",
    }
    origin = {"name": "mpy-evse"}
    try:
        from firmware import VERSION

        device["sw_version"] = VERSION
        origin["sw_version"] = VERSION
    except ImportError:
        pass
    if device_info:
        for k in device_info:
            if device_info[k]:
                device[k] = device_info[k]
    if cfg.get("config_url"):
        device["configuration_url"] = cfg["config_url"]
    common = {
        "state_topic": topic_base + "status",
        "availability_topic": topic_base + "online",
        "payload_available": "1",
        "payload_not_available": "0",
        "device": device,
        "origin": origin,
    }
    for component, obj, name, extra in _ENTITIES:
        yield _one(component, dev_id, obj, name, common, extra, topic_base)
    for i in range(cfg.get("phases") or 1):
        n = "%d" % (i + 1)
        yield _one("sensor", dev_id, "current_l" + n, "Current L" + n, common, {
            "value_template": "{{ value_json.current_a[%d] }}" % i,
            "device_class": "current",
            "unit_of_measurement": "A",
            "state_class": "measurement",
        }, topic_base)  # fmt: skip
    # Offers exactly what the firmware accepts: 6 A .. the installation limit
    # (pause with the switch). While paused (limit 0) it shows its minimum.
    yield _one("number", dev_id, "current_limit", "Current limit", common, {
        "command_topic": "@set/current_a",
        "value_template": "{{ [(value_json.limit_ma | int(0)) / 1000, %d] | max }}" % (MIN_OFFER_MA // 1000),
        "min": MIN_OFFER_MA // 1000,
        "max": cfg.get("max_current_a", 16),
        "step": 1,
        "mode": "box",
        "unit_of_measurement": "A",
        "device_class": "current",
        "icon": "mdi:current-ac",
    }, topic_base)  # fmt: skip


def _one(component, dev_id, obj, name, common, extra, topic_base):
    uid = unique_id(dev_id, obj)
    conf = {
        "name": name,
        "unique_id": uid,
        # HA's entity ids are lowercase with underscores
        "default_entity_id": component + "." + uid.lower().replace("-", "_"),
    }
    for k in common:
        conf[k] = common[k]
    for k in extra:
        v = extra[k]
        if isinstance(v, str) and v[:1] == "@":
            v = topic_base + v[1:]  # "@ack" -> "<prefix>/<id>/ack"
        conf[k] = v
    return topic(component, dev_id, obj).encode(), json.dumps(conf).encode()
