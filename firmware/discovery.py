"""Home Assistant MQTT discovery: the retained config messages for one charger.

Owns: which entities Home Assistant shows, how each one reads the status JSON
(or the ack and session messages), what its commands send, and the device and
origin blocks. The link publishes these (retained) after every connect and
when Home Assistant announces itself. Never decides anything, never talks to
the network itself. Documented entity by entity in docs/mqtt.md.

The status JSON keys read here are the contract with firmware/app.py (listed
in docs/mqtt.md): state, fault, current_ma, current_a (per phase), power_w,
session_wh, lifetime_wh, enabled, limit_ma, offer_a, limit_reason, temp_c,
mode, mains_a, mains_age_s, mains_max_a, solar_import_a, phases_active.

RAM: one config (~0.8 KB of JSON, its dict and strings) exists at a time.
"""

import json

from firmware.commands import TAG_MAX
from firmware.config import MODES
from firmware.iec61851 import MIN_OFFER_MA

DISCOVERY_PREFIX = "homeassistant"

_STATES = ("A1", "A2", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F")
# firmware/limits.py's reasons, plus "none" before the first tick decided one
_LIMITS = ("hardware", "config", "cable", "remote", "balance", "thermal", "mains", "solar", "stale", "phase_switch",
           "ocpp", "none")
_DIAG = "diagnostic"
_A = "current"
_E = "energy"
_M = "measurement"
_TI = "total_increasing"

# Read-only entities, one tuple each (tuples of strings keep the resident
# table small; each config dict exists only while it is published):
# (component, object, name, topic, value template, device_class, unit,
#  state_class, entity_category, icon). topic: the status unless "session"/"ack".
_ENTITIES = (  # fmt: skip
    ("sensor", "state", "State", None, "{{ value_json.state }}", "enum", None, None, None, "mdi:ev-station"),
    ("binary_sensor", "plugged_in", "Plugged in", None,
     "{{ 'ON' if value_json.state[:1] in ['B', 'C', 'D'] else 'OFF' }}", "plug", None, None, None, None),
    ("binary_sensor", "charging", "Charging", None,
     "{{ 'ON' if value_json.state in ['C2', 'D2'] else 'OFF' }}", "battery_charging", None, None, None, None),
    ("binary_sensor", "problem", "Problem", None,
     "{{ 'ON' if value_json.fault else 'OFF' }}", "problem", None, None, None, None),
    ("sensor", "fault", "Fault", None, "{{ value_json.fault or 'none' }}", None, None, None, _DIAG,
     "mdi:alert-circle-outline"),
    ("sensor", "current", "Current", None, "{{ (value_json.current_ma | int(0)) / 1000 }}", _A, "A", _M, None, None),
    ("sensor", "offered_current", "Offered current", None, "{{ value_json.offer_a }}", _A, "A", _M, None, None),
    ("sensor", "limit_reason", "Offer limited by", None, "{{ value_json.limit_reason or 'none' }}", "enum", None,
     None, _DIAG, None),
    ("sensor", "power", "Power", None, "{{ value_json.power_w }}", "power", "W", _M, None, None),
    # Goes back to 0 when a session starts: total_increasing books a drop as
    # a new cycle, so the statistics never see negative energy.
    ("sensor", "session_energy", "Session energy", None, "{{ value_json.session_wh }}", _E, "Wh", _TI, None, None),
    ("sensor", "lifetime_energy", "Lifetime energy", None, "{{ value_json.lifetime_wh }}", _E, "Wh", _TI, None, None),
    # temp_c null (no sensor) renders None: HA shows unknown
    ("sensor", "temperature", "Temperature", None, "{{ value_json.temp_c }}", "temperature", "°C", _M, _DIAG, None),
    # The closed session (QoS 1, not retained): its energy, the record as attributes.
    ("sensor", "last_session", "Last session", "session", "{{ value_json.energy_wh }}", _E, "Wh", None, None,
     "mdi:receipt-text-outline"),
    # Energy management (docs/energy.md): the house meter's last reading and its age.
    ("sensor", "mains_age", "Mains reading age", None, "{{ value_json.mains_age_s }}", "duration", "s", _M, _DIAG,
     None),
    ("sensor", "phases_active", "Phases in use", None, "{{ value_json.phases_active }}", None, None, _M, _DIAG,
     "mdi:sine-wave"),
    # The answer to the last command: "ok" or the firmware's error text.
    ("sensor", "last_command", "Last command", "ack", "{{ 'ok' if value_json.ok else value_json.error }}", None,
     None, None, _DIAG, "mdi:console-line"),
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
    for e in _ENTITIES:
        extra = {"value_template": e[4]}
        if e[3]:
            extra["state_topic"] = extra["json_attributes_topic"] = topic_base + e[3]
        if e[5]:
            extra["device_class"] = e[5]
            if e[5] == "enum":
                extra["options"] = _STATES if e[1] == "state" else _LIMITS
        for k, i in (("unit_of_measurement", 6), ("state_class", 7), ("entity_category", 8), ("icon", 9)):
            if e[i]:
                extra[k] = e[i]
        yield _one(e[0], dev_id, e[1], e[2], common, extra)
    for i in range(cfg.get("phases") or 1):
        n = "%d" % (i + 1)
        yield _one("sensor", dev_id, "current_l" + n, "Current L" + n, common, {
            "value_template": "{{ value_json.current_a[%d] }}" % i,
            "device_class": _A,
            "unit_of_measurement": "A",
            "state_class": _M,
        })  # fmt: skip
        # The grid current the house meter reports (null until a reading came).
        yield _one("sensor", dev_id, "mains_l" + n, "Mains L" + n, common, {
            "value_template": "{{ value_json.mains_a[%d] if value_json.mains_a else None }}" % i,
            "device_class": _A,
            "unit_of_measurement": "A",
            "state_class": _M,
        })  # fmt: skip
    cmd = topic_base + "set/"
    yield _one("select", dev_id, "mode", "Charging mode", common, {
        "command_topic": cmd + "mode",
        "options": MODES,
        "value_template": "{{ value_json.mode }}",
        "icon": "mdi:solar-power-variant",
    })  # fmt: skip
    for name, obj, label, lo, hi in (("mains_max_a", "mains_max", "Main fuse", 6, 200),
                                     ("solar_import_a", "solar_import", "Solar grid import allowed", 0, 50)):
        yield _one("number", dev_id, obj, label, common, {
            "command_topic": cmd + name,
            "value_template": "{{ value_json.%s }}" % name,
            "min": lo,
            "max": hi,
            "step": 1,
            "mode": "box",
            "unit_of_measurement": "A",
            "device_class": _A,
            "entity_category": "config",
        })  # fmt: skip
    yield _one("switch", dev_id, "enable", "Charging enabled", common, {
        "command_topic": cmd + "enable",
        "payload_on": "true",
        "payload_off": "false",
        "value_template": "{{ 'true' if value_json.enabled else 'false' }}",
        "state_on": "true",
        "state_off": "false",
        "icon": "mdi:power",
    })  # fmt: skip
    # Offers exactly what the firmware accepts: 6 A .. the installation limit
    # (pause with the switch). While paused (limit 0) it shows its minimum.
    yield _one("number", dev_id, "current_limit", "Current limit", common, {
        "command_topic": cmd + "current_a",
        "value_template": "{{ [(value_json.limit_ma | int(0)) / 1000, %d] | max }}" % (MIN_OFFER_MA // 1000),
        "min": MIN_OFFER_MA // 1000,
        "max": cfg.get("max_current_a", 16),
        "step": 1,
        "mode": "box",
        "unit_of_measurement": "A",
        "device_class": _A,
        "icon": "mdi:current-ac",
    })  # fmt: skip
    yield _one("button", dev_id, "stop", "Stop session", common, {
        "command_topic": cmd + "stop", "payload_press": "1", "icon": "mdi:stop-circle-outline",
    })  # fmt: skip
    yield _one("button", dev_id, "clear_fault", "Clear fault", common, {
        "command_topic": cmd + "clear_fault", "payload_press": "1", "icon": "mdi:alert-remove-outline",
        "entity_category": "config",
    })  # fmt: skip
    yield _one("text", dev_id, "authorize", "Authorize tag", common, {
        "command_topic": cmd + "authorize",
        "min": 1,
        "max": TAG_MAX,
        "pattern": "[ -~]+",  # printable ASCII, what commands.parse accepts
        "mode": "text",
        "icon": "mdi:card-account-details-outline",
    })  # fmt: skip


def _one(component, dev_id, obj, name, common, extra):
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
        conf[k] = extra[k]
    return topic(component, dev_id, obj).encode(), json.dumps(conf).encode()
