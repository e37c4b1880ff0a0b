# Configuration: defaults, validation with clear messages, corrupt files.
import os

from firmware import config


def test_defaults_are_valid_and_complete():
    cfg, errors = config.validate({})
    assert errors == []
    for key in ("max_current_a", "phases", "voltage_v", "vent_allowed", "require_auth", "id"):
        assert key in cfg


def test_invalid_values_are_rejected_with_a_message_and_defaults_kept():
    cfg, errors = config.validate({"max_current_a": 500, "phases": 2.5, "vent_allowed": "yes",
                                   "id": "a/b", "voltage_v": float("nan"), "nope": 1})
    d = config.defaults()
    for key in ("max_current_a", "phases", "vent_allowed", "id", "voltage_v"):
        assert cfg[key] == d[key], key
    assert len(errors) == 6
    assert any("max_current_a" in e and "between" in e for e in errors)
    assert any("unknown setting 'nope'" in e for e in errors)


def test_boolean_is_not_a_number():
    cfg, errors = config.validate({"max_current_a": True})
    assert cfg["max_current_a"] == config.defaults()["max_current_a"]
    assert errors


def test_installation_limit_cannot_exceed_the_hardware():
    cfg, errors = config.validate({"max_current_a": 40, "hw_max_current_a": 32})
    assert cfg["max_current_a"] == 32
    assert errors


def test_corrupt_file_gives_defaults_and_an_error_and_save_load_round_trips():
    path = "/tmp/evse_cfg_test.json"
    with open(path, "w") as f:
        f.write('{"max_current_a": 2')
    cfg, errors = config.load(path)
    assert cfg == config.defaults()
    assert errors and "not valid JSON" in errors[0]
    good, _ = config.validate({"max_current_a": 10, "id": "bay-7"})
    config.save(path, good)
    cfg, errors = config.load(path)
    assert errors == [] and cfg["max_current_a"] == 10 and cfg["id"] == "bay-7"
    os.remove(path)
    assert config.load(path) == (config.defaults(), [])


def test_energy_settings_are_validated_like_the_others():
    cfg, errors = config.validate({"mode": "solar", "mains_max_a": 40, "mains_stale_s": 11, "solar_import_a": 2})
    assert errors == [] and cfg["mode"] == "solar" and cfg["mains_max_a"] == 40
    for bad in ({"mode": "turbo"}, {"mode": 1}, {"mains_max_a": 3}, {"mains_max_a": "25"}, {"mains_stale_s": 1},
                {"mains_stale_a": 3}, {"solar_start_a": 0}, {"solar_stop_min": 0}, {"solar_import_a": -1},
                {"phase_switch": "yes"}):
        cfg, errors = config.validate(bad)
        assert len(errors) == 1, bad
        name = list(bad)[0]
        assert cfg[name] == config.defaults()[name], bad
    assert config.validate({"mains_stale_a": 0})[1] == []  # 0: pause while stale
