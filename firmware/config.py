"""Configuration: defaults, validation and loading of the JSON config file.

Owns the list of settings, their types, ranges and safe defaults. A bad value
never reaches the charger: it is reported with a clear message and the default
is kept. Never raises on bad input (a corrupt file gives the defaults plus an
error), never talks to the board.
"""

import json

from firmware import store

MAX_BYTES = 4096  # a config file larger than this is damage, not settings

# name: (default, kind, low, high). kind: "int", "num", "bool", "str".
# Ranges are the physically meaningful ones; the offer is further limited by
# the board, the cable and the remote limit at run time.
SCHEMA = {
    "id": ("", "str", 1, 32),  # device id: MQTT topics, session ids; unset: "evse-" + the chip's unique id
    "max_current_a": (16, "num", 6, 80),  # installation limit per phase (breaker, supply)
    "hw_max_current_a": (32, "num", 6, 80),  # rating of this board/contactor
    # Rating of a tethered cable (a board without PP input reads no cable coding,
    # e.g. every J1772 unit); 0: none configured. Also caps a PP reading.
    "cable_max_current_a": (0, "num", 0, 80),
    "phases": (3, "int", 1, 3),
    "voltage_v": (230, "int", 100, 480),  # phase voltage for power when not measured
    "mains_hz": (50, "int", 50, 60),  # mains frequency: the meter's RMS window is one period
    "vent_allowed": (False, "bool", 0, 0),  # state D may charge (ventilation is provided)
    "require_auth": (False, "bool", 0, 0),  # no energy until an authorize command
    "auto_reclose": (True, "bool", 0, 0),  # retry after a fault (False: every fault latches)
    "fault_retries": (3, "int", 0, 10),  # retries before a fault latches
    "rcd_selftest": (True, "bool", 0, 0),  # test the RCD before each session
    "pe_check": (True, "bool", 0, 0),  # use the board's PE check when it has one
    "enabled": (True, "bool", 0, 0),  # charging enabled at boot
    "wifi_ssid": ("", "str", 0, 32),  # WiFi network to join; empty: no WiFi (an Ethernet board ignores it)
    "wifi_password": ("", "str", 0, 63),  # WPA2 passphrase, 8..63; empty: an open network. Never echoed
    "ntp_host": ("pool.ntp.org", "str", 0, 64),  # SNTP server, "host" or "host:port"; empty: clock never set
    "mqtt_host": ("", "str", 0, 64),  # empty: no MQTT
    "mqtt_port": (1883, "int", 1, 65535),
    "mqtt_user": ("", "str", 0, 64),
    "mqtt_password": ("", "str", 0, 64),
    "mqtt_tls": (False, "bool", 0, 0),
    "mqtt_ca": ("", "str", 0, 64),  # CA certificate file: with it, TLS verifies the broker
    "mqtt_prefix": ("evse", "str", 1, 32),
    "mqtt_keepalive_s": (60, "int", 10, 3600),
    "ocpp_url": ("", "str", 0, 200),  # ws[s]://host[:port]/path/<charge point id>; empty: no OCPP
    "ocpp_password": ("", "str", 0, 40),  # HTTP Basic auth (security profiles 1, 2); never echoed
    "ocpp_ca": ("", "str", 0, 64),  # CA certificate file: with it, wss:// verifies the central system
    "ocpp_client_cert": ("", "str", 0, 64),  # client certificate file (security profile 3: wss:// with both)
    "ocpp_client_key": ("", "str", 0, 64),  # its private key file; never echoed (only the file name is set here)
    "ocpp_free_tag": ("FREE", "str", 1, 20),  # idTag of transactions when require_auth is off
    "config_url": ("", "str", 0, 128),  # Home Assistant's "visit device" link, if the charger has a page
    "bench_trace": (False, "bool", 0, 0),  # stream trace records on the console (bench rigs)
    # Energy management (firmware/energy.py, docs/energy.md).
    "mode": ("normal", "str", 5, 6),  # normal | smart (house fuse) | solar (surplus)
    "mains_max_a": (25, "num", 6, 1000),  # the house's main fuse per phase
    "mains_total_a": (0, "num", 0, 3000),  # optional total over the phases (0: none)
    "mains_stale_s": (11, "int", 2, 600),  # a mains reading older than this is stale
    "mains_stale_a": (6, "num", 0, 80),  # the limit while stale: 0 (pause) or 6..80
    "solar_start_a": (6, "num", 1, 300),  # surplus (sum over the phases) that starts a solar charge
    "solar_stop_min": (10, "int", 1, 120),  # stop after this long short of surplus at the minimum
    "solar_import_a": (0, "num", 0, 300),  # grid import allowed on top of the surplus (sum)
    "solar_pause_min": (5, "int", 0, 120),  # no solar restart within this long after a stop
    "phase_switch": (True, "bool", 0, 0),  # solar mode may switch 1/3 phases (board with a relay)
    # journal checkpoints and the lifetime counter while the contactor is closed: a
    # flash erase then stalls the control loop 45-400 ms (IEC 61851-1 allows 100 ms
    # to open); off, they wait until it opens (a power cut while charging loses the
    # energy since the contactor closed).
    "flash_while_charging": (False, "bool", 0, 0),
}

MODES = ("normal", "smart", "solar")

_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def _check_ocpp_url(url):
    from firmware.ws import parse_url

    try:
        path = parse_url(url)[3]
    except ValueError as e:
        raise ValueError("ocpp_url: %s" % e)
    cp = path[path.rfind("/") + 1 :]
    if not cp or len(cp) > 20 or " " in url:
        raise ValueError("ocpp_url must end in the charge point id (1..20 characters) and hold no spaces")


def defaults():
    cfg = {}
    for name in SCHEMA:
        cfg[name] = SCHEMA[name][0]
    return cfg


def check(name, value):
    """Validated value for one setting, or raise ValueError with a message."""
    if name not in SCHEMA:
        raise ValueError("unknown setting '%s'" % name)
    kind, low, high = SCHEMA[name][1:]
    if kind == "bool":
        if value is True or value is False:
            return value
        raise ValueError("%s must be true or false" % name)
    if kind == "str":
        if not isinstance(value, str) or not low <= len(value) <= high:
            raise ValueError("%s must be a string of %d..%d characters" % (name, low, high))
        if name in ("wifi_ssid", "wifi_password"):  # limits in bytes (802.11, WPA2); the value is never shown
            n = len(value.encode())
            if n > high or name == "wifi_password" and 0 < n < 8:
                raise ValueError("%s must be %s bytes" % (name, "0..32" if name == "wifi_ssid" else "0 or 8..63"))
        if name == "ocpp_url" and value:
            _check_ocpp_url(value)
        if name == "ocpp_free_tag":
            for ch in value:
                if not " " < ch <= "~":
                    raise ValueError("ocpp_free_tag must be printable ASCII without spaces")
        if name in ("id", "mqtt_prefix"):
            for ch in value:
                if ch not in _ID_CHARS:
                    raise ValueError("%s may hold only letters, digits, '_' and '-'" % name)
        if name == "mode" and value not in MODES:
            raise ValueError("mode must be normal, smart or solar")
        return value
    # Numbers: bool is an int in Python, but true is not a current.
    if value is True or value is False or not isinstance(value, (int, float)):
        raise ValueError("%s must be a number" % name)
    if value != value or not low <= value <= high:  # NaN fails both comparisons
        raise ValueError("%s must be between %s and %s" % (name, low, high))
    if kind == "int":
        if int(value) != value:
            raise ValueError("%s must be a whole number" % name)
        if name == "mains_hz" and value not in (50, 60):
            raise ValueError("mains_hz must be 50 or 60")
        return int(value)
    if name == "mains_stale_a" and 0 < value < 6:
        raise ValueError("mains_stale_a must be 0 (pause) or 6..80")
    return value


def validate(overrides, base=None):
    """Apply overrides (a dict) on top of base (default: the defaults).
    Returns (cfg, errors): every invalid entry is left at its previous value
    and described in errors."""
    cfg = defaults() if base is None else dict(base)
    errors = []
    if not isinstance(overrides, dict):
        return cfg, ["configuration must be a JSON object"]
    for name in overrides:
        try:
            cfg[name] = check(name, overrides[name])
        except ValueError as e:
            errors.append(str(e))
    if cfg["max_current_a"] > cfg["hw_max_current_a"]:
        errors.append(
            "max_current_a %s exceeds hw_max_current_a %s: limited to the hardware"
            % (cfg["max_current_a"], cfg["hw_max_current_a"])
        )
        cfg["max_current_a"] = cfg["hw_max_current_a"]
    return cfg, errors


def load(path):
    """(cfg, errors) from a JSON file. A missing file is not an error; an
    unreadable, oversized or corrupt one gives the defaults and says why."""
    data, err = store.load_json(path, MAX_BYTES)
    if err:
        return defaults(), ["%s: defaults used" % err]
    if data is None:
        return defaults(), []
    return validate(data)


def save(path, cfg):
    """Write the config atomically (firmware/store.py)."""
    store.write(path, json.dumps(cfg))
