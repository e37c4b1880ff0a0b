"""Home Assistant discovery (firmware/discovery.py), checked against the rules
of HA's MQTT discovery schema (docs: home-assistant.io/integrations/mqtt and
the per-platform pages), and the session energy checked the way HA's
recorder turns published values into long-term statistics.

The configs are produced on the MicroPython unix port by the firmware's own
code; the statistics test runs the whole firmware on the simulated board
against a real Mosquitto (tests/host/test_mqtt_e2e.py's helpers).
"""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from broker import Broker
from test_mqtt_e2e import MICROPYTHON, MP_ENV, REPO, Firmware, Sub, pytestmark  # noqa: F401 - pytestmark: same skips

CONFIGS = r"""
import json, sys
from firmware import discovery, commands
cfg = json.loads(sys.argv[1])
for t, p in discovery.configs(cfg, "evse/%s/" % cfg["id"], {"serial_number": "a0b1c2d3e4f5", "hw_version": "esp32_devkit"}):
    print(json.dumps([t.decode(), json.loads(p)]))
conf = None
for t, p in discovery.configs(cfg, "evse/%s/" % cfg["id"]):
    if t.endswith(b"/number/%s/current_limit/config" % cfg["id"].encode()):
        conf = json.loads(p)
# every value the number offers, as HA sends it
ok = [v for v in range(conf["min"], int(conf["max"]) + 1, conf["step"]) if commands.parse("current_a", b"%d" % v, cfg)[1] is None]
print(json.dumps(["accepted", ok]))
"""


def _configs(**cfg):
    base = {"id": "evse-a0b1c2d3e4f5", "phases": 3, "max_current_a": 16, "hw_max_current_a": 32}
    base.update(cfg)
    out = subprocess.run([MICROPYTHON, "-c", CONFIGS, json.dumps(base)], cwd=REPO, env=MP_ENV,
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    accepted = rows.pop()[1]
    return {t: c for t, c in rows}, accepted


def _by_object(confs):
    return {t.split("/")[3]: (t.split("/")[1], c) for t, c in confs.items()}


def test_every_entity_has_a_namespaced_unique_id_a_default_entity_id_and_no_deprecated_object_id():
    confs, _ = _configs()
    uids = [c["unique_id"] for c in confs.values()]
    assert len(set(uids)) == len(uids)
    for t, c in confs.items():
        component, node, obj = t.split("/")[1:4]
        assert node == "evse-a0b1c2d3e4f5" and t.startswith("homeassistant/")
        assert c["unique_id"] == "evse_evse-a0b1c2d3e4f5_" + obj
        assert "object_id" not in c
        # HA wants "<domain>.<slug>": lowercase letters, digits, underscores
        assert c["default_entity_id"] == "%s.evse_evse_a0b1c2d3e4f5_%s" % (component, obj)
        assert c["availability_topic"] == "evse/evse-a0b1c2d3e4f5/online"
        assert c["device"]["identifiers"] == ["evse_evse-a0b1c2d3e4f5"]
        assert c["origin"]["name"] == "mpy-evse" and c["origin"]["sw_version"]
        assert c.get("entity_category") in (None, "config", "diagnostic")
        if component == "sensor" and c.get("entity_category") == "config":
            raise AssertionError("HA refuses sensors in the config category: %s" % t)


def test_the_device_block_names_serial_hardware_version_and_configuration_url():
    confs, _ = _configs(config_url="http://charger.local/")
    dev = next(iter(confs.values()))["device"]
    assert dev["serial_number"] == "a0b1c2d3e4f5" and dev["hw_version"] == "esp32_devkit"
    assert dev["configuration_url"] == "http://charger.local/" and dev["sw_version"]
    confs, _ = _configs()
    assert "configuration_url" not in next(iter(confs.values()))["device"]  # none configured: none claimed


def test_a_first_class_device_has_the_entities_a_user_needs():
    ents = _by_object(_configs()[0])
    want = {
        "state": "sensor", "plugged_in": "binary_sensor", "charging": "binary_sensor", "problem": "binary_sensor",
        "fault": "sensor", "current": "sensor", "current_l1": "sensor", "current_l2": "sensor", "current_l3": "sensor",
        "offered_current": "sensor", "limit_reason": "sensor", "power": "sensor", "session_energy": "sensor",
        "lifetime_energy": "sensor", "temperature": "sensor", "last_session": "sensor", "last_command": "sensor",
        "enable": "switch", "current_limit": "number", "stop": "button", "clear_fault": "button", "authorize": "text",
        # energy management (docs/energy.md)
        "mode": "select", "mains_max": "number", "solar_import": "number", "mains_l1": "sensor", "mains_l2": "sensor",
        "mains_l3": "sensor", "mains_age": "sensor", "phases_active": "sensor",
    }  # fmt: skip
    assert {k: v[0] for k, v in ents.items()} == want
    assert "current_l2" not in _by_object(_configs(phases=1)[0])  # one sensor per measured phase
    assert ents["plugged_in"][1]["device_class"] == "plug"
    assert ents["charging"][1]["device_class"] == "battery_charging"
    assert ents["problem"][1]["device_class"] == "problem"
    assert ents["temperature"][1]["unit_of_measurement"] == "°C"
    assert ents["current_l3"][1]["value_template"] == "{{ value_json.current_a[2] }}"
    for obj, topic in (("stop", "set/stop"), ("clear_fault", "set/clear_fault"), ("authorize", "set/authorize")):
        assert ents[obj][1]["command_topic"] == "evse/evse-a0b1c2d3e4f5/" + topic
    assert ents["authorize"][1]["max"] == 64 and ents["authorize"][1]["min"] == 1
    assert ents["last_session"][1]["state_topic"] == "evse/evse-a0b1c2d3e4f5/session"
    assert ents["fault"][1]["entity_category"] == "diagnostic" and ents["temperature"][1]["entity_category"] == "diagnostic"


def test_enum_sensors_list_their_options_and_carry_no_unit_or_state_class():
    ents = _by_object(_configs()[0])
    assert ents["state"][1]["options"] == ["A1", "A2", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F"]
    assert set(ents["limit_reason"][1]["options"]) >= {"hardware", "config", "cable", "remote", "balance", "thermal"}
    for obj in ("state", "limit_reason"):
        c = ents[obj][1]
        assert c["device_class"] == "enum" and "unit_of_measurement" not in c and "state_class" not in c


def test_energy_sensors_use_a_state_class_the_energy_statistics_accept():
    ents = _by_object(_configs()[0])
    for obj in ("session_energy", "lifetime_energy"):
        c = ents[obj][1]
        assert c["device_class"] == "energy" and c["unit_of_measurement"] == "Wh"
        # total needs a last_reset to count a new session; total_increasing treats a drop as one
        assert c["state_class"] == "total_increasing" or (
            c["state_class"] == "total" and "last_reset_value_template" in c
        ), c


def test_the_current_limit_number_offers_exactly_what_the_firmware_accepts():
    confs, accepted = _configs(max_current_a=16, hw_max_current_a=32)
    c = _by_object(confs)["current_limit"][1]
    assert (c["min"], c["max"], c["step"]) == (6, 16, 1)  # the installation limit, not the hardware's
    assert accepted == list(range(6, 17))  # every value it can send is accepted
    assert c["command_topic"] == "evse/evse-a0b1c2d3e4f5/set/current_a"
    last = _by_object(confs)["last_command"][1]  # and a refused command shows in HA
    assert last["state_topic"] == "evse/evse-a0b1c2d3e4f5/ack" and "value_json.error" in last["value_template"]


ENERGY_CMDS = r"""
import json, sys
from firmware import commands
for name, lo, hi in json.loads(sys.argv[1]):
    print(json.dumps([name, [v for v in range(lo, hi + 1) if commands.parse(name, b"%d" % v, {})[1] is None]]))
for m in ("normal", "smart", "solar"):
    print(json.dumps(["mode", m, commands.parse("mode", m.encode(), {})[1]]))
"""


def test_the_energy_entities_send_only_what_the_firmware_accepts():
    ents = _by_object(_configs()[0])
    mode = ents["mode"][1]
    assert mode["options"] == ["normal", "smart", "solar"]
    assert mode["command_topic"] == "evse/evse-a0b1c2d3e4f5/set/mode"
    assert mode["value_template"] == "{{ value_json.mode }}"
    numbers = [(c["command_topic"].rsplit("/", 1)[1], c["min"], c["max"]) for c in
               (ents["mains_max"][1], ents["solar_import"][1])]  # fmt: skip
    out = subprocess.run([MICROPYTHON, "-c", ENERGY_CMDS, json.dumps(numbers)], cwd=REPO, env=MP_ENV,
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    for (name, lo, hi), (name2, ok) in zip(numbers, rows):
        assert name == name2 and ok == list(range(lo, hi + 1)), (name, ok)
    assert [r[2] for r in rows[2:]] == [None, None, None]
    assert ents["mains_l2"][1]["value_template"] == "{{ value_json.mains_a[1] if value_json.mains_a else None }}"
    assert ents["mains_age"][1]["entity_category"] == "diagnostic"
    limits = ents["limit_reason"][1]["options"]
    assert {"mains", "solar", "stale", "phase_switch", "ocpp"} <= set(limits)


# --- statistics ---------------------------------------------------------------------------------
def ha_statistic(values, state_class, last_reset=False):
    """The running sum HA's recorder compiles for a sensor (sensor/recorder.py,
    compile_statistics): a total_increasing value that falls below 90 % of
    the previous one starts a new cycle from 0; a total without last_reset
    simply follows the value, down as well. Returns the sum after each value."""
    sums, total, old, new = [], 0.0, None, None
    for v in values:
        if old is None:
            old = new = v
        elif (state_class == "total_increasing" or last_reset) and v < 0.9 * new:
            total += new - old
            old, new = 0.0, v
        else:
            new = v
        sums.append(total + new - old)
    return sums


def test_ha_statistic_model_counts_a_new_session_and_books_total_without_reset_as_negative():
    # the case of issue 15: two sessions of 169.7 Wh then 32.8 Wh
    assert ha_statistic([0, 169.7, 0, 32.8], "total_increasing")[-1] == pytest.approx(202.5)
    assert ha_statistic([0, 169.7, 32.8], "total")[-1] == pytest.approx(32.8)  # 169.7 vanished
    sums = ha_statistic([0, 169.7, 32.8], "total")
    assert sums[2] - sums[1] == pytest.approx(-136.9)


def test_the_published_session_energy_never_books_negative_energy_in_home_assistants_statistics(tmp_path):
    b = Broker().start()
    try:
        sub = Sub(b.port, ["evse/stat1/status", "evse/stat1/session", "homeassistant/sensor/stat1/session_energy/config"])
        fw = Firmware("four_sessions_hour.json", tmp_path, b.port, "stat1")
        try:
            fw.finish(timeout_s=60)
            sub.wait(lambda t, p, r: sub.count("evse/stat1/session") >= 4, 10, "four sessions")
        finally:
            fw.cleanup()
            sub.close()
    finally:
        b.close()
    conf = json.loads(sub.payloads("homeassistant/sensor/stat1/session_energy/config")[0])
    assert conf["value_template"] == "{{ value_json.session_wh }}"
    values = [json.loads(p)["session_wh"] for p in sub.payloads("evse/stat1/status")]
    sessions_wh = sum(json.loads(p)["energy_wh"] for p in sub.payloads("evse/stat1/session"))
    sums = ha_statistic(values, conf["state_class"], "last_reset_value_template" in conf)
    steps = [b - a for a, b in zip(sums, sums[1:], strict=False)]
    print("session_wh as published: %s; HA statistic %.1f Wh of %.1f Wh delivered" % (values, sums[-1], sessions_wh))
    assert any(b < a for a, b in zip(values, values[1:], strict=False)), "no new session seen: the test proves nothing"
    assert min(steps) >= 0, "HA would book negative energy: %s" % steps
    assert 0 < sums[-1] <= sessions_wh + 0.001
