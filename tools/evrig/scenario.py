"""The scenario format: its vocabulary, its validation and the checks of its
`expect` steps against trace records (docs/scenarios.md).

No I/O: a parsed scenario in, messages out. Shared by every way the rig runs a
scenario (unix port, a board over serial) and by the tests of the library.
"""

import bisect
import json
import math

# Plain-Python modules of the firmware and the simulation, the one definition
# of what they name (the package's __init__ put the repository on sys.path).
from firmware import config as fw_config
from firmware.facts import STATES
from sim.steps import FAULTS

MAX_UNTIL_S = 24 * 3600
EV_STATES = ("A", "B", "C", "D")
SIM_FAULTS = ("none",) + FAULTS  # "none" clears them all
TRACE_FIELDS = (
    "t", "state", "pilot_v", "duty", "offer_a", "contactor", "current_a",
    "energy_wh", "truth_energy_wh", "fault", "session", "ev_s2", "contacts",
)  # fmt: skip
PROFILES = ("ideal", "esp32", "esp32_worst")  # sim/timing.py


# --- validation --------------------------------------------------------------------------
def is_number(v):
    """A finite int or float (true and false are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(lo, hi, nullable=False):
    def check(v):
        if v is None and nullable:
            return None
        if not is_number(v):
            return "must be a number" + (" or null" if nullable else "")
        if not lo <= v <= hi:
            return "%s is out of range %s..%s" % (v, lo, hi)
        return None

    return check


def _int(lo, hi):
    def check(v):
        if not is_number(v) or int(v) != v:
            return "must be a whole number"
        if not lo <= v <= hi:
            return "%s is out of range %s..%s" % (v, lo, hi)
        return None

    return check


def _bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _one_of(choices):
    def check(v):
        return (
            None
            if v in choices
            else "must be one of %s, not %s" % (", ".join(choices), json.dumps(v))
        )

    return check


def _text(v):
    return None if isinstance(v, str) and v else "must be a non-empty string"


def _flag(v):
    return None if v is None or v is True else "takes null (or true)"


def _set_number(v):
    return None if is_number(v) else "must be a number"


def _per_phase(lo, hi):
    """One number for every phase, or a list of 1..3 numbers (per phase)."""
    one = _num(lo, hi)

    def check(v):
        if isinstance(v, list):
            if not 1 <= len(v) <= 3:
                return "must be a number or a list of 1..3 numbers (A per phase)"
            for x in v:
                err = one(x)
                if err:
                    return err
            return None
        return one(v)

    return check


def _mains_meter(v):
    if not isinstance(v, dict) or set(v) - {"every_s"}:
        return 'must be an object {"every_s": N}'
    return _num(0.1, 60)(v.get("every_s", 1))


# A step's actions (applied to the simulated world / sent as remote commands).
ACTIONS = {
    "ev": _one_of(EV_STATES),
    "draw_a": _num(0, 80),
    "ev_obeys": _bool,
    "ev_phases": _int(1, 3),
    "pp_ohm": _num(0, 100000, nullable=True),
    "fault": _one_of(SIM_FAULTS),
    "temp_c": _num(-40, 150),
    "house_a": _per_phase(0, 200),
    "pv_a": _per_phase(0, 200),
    "mains_meter": _bool,
    "clock": _int(946684800, 4102444800),  # the board's wall clock (UTC s, 2000..2100), as NTP would set it
}
# `set` entries: the remote command name -> the check of its value. The value
# is sent as the plain MQTT payload text; the firmware judges its range.
COMMANDS = {
    "current_a": _set_number,
    "enable": _bool,
    "authorize": _text,
    "stop": _flag,
    "clear_fault": _flag,
    "mode": _text,
}
# Top-level keys of a scenario, and the simulator options under "sim".
TOP_KEYS = ("name", "description", "seed", "until", "config", "sim", "steps", "mains_meter", "profile")
SIM_KEYS = {
    "phases": _int(1, 3),
    "mains_hz": _one_of((50, 60)),
    "voltage_v": _int(100, 480),
    "pilot_noise_mv": _int(0, 5000),
    "contactor_close_ms": _int(0, 1000),
    "contactor_open_ms": _int(0, 1000),
    "has_feedback": _bool,
    "has_pe": _bool,
    "adc_noise_counts": _int(0, 200),
    "start_ticks": _int(0, 2**30 - 1),
    "phase_relay": _bool,
    "mains_ct": _bool,
    # control (issue 15): the PP resistor at start (ohm), null: none seen,
    # false: a tethered cable without PP coding (the board has no PP input)
    "pp": lambda v: None if v is False else _num(0, 100000, nullable=True)(v),
    # the pilot's front end (sim/frontend.py; issue 12): "esp32" (the default
    # of a scenario run) models the RC settling, the 11 dB ADC curve and its
    # noise under the driver's phase-classified sampling; "esp32_split" the
    # older unsynchronised sampling; "ideal" reads the true levels
    "frontend": _one_of(("esp32", "esp32_split", "ideal")),
    "pilot_tau_us": _int(1, 50),
    "pilot_adc_noise_counts": _int(0, 50),
}


def _range_or_num(v):
    if is_number(v):
        return None
    if isinstance(v, list) and len(v) == 2 and all(is_number(x) for x in v):
        return None if v[0] <= v[1] else "range [%s, %s] has lo > hi" % (v[0], v[1])
    return "must be a number or a [lo, hi] range"


def _expect_current(v):
    if not isinstance(v, list) or not 1 <= len(v) <= 3:
        return "must be a list with one number or [lo, hi] range per phase"
    for i, x in enumerate(v):
        err = _range_or_num(x)
        if err:
            return "phase %d %s" % (i + 1, err)
    return None


def _expect_nullable_text(v):
    return None if v is None or isinstance(v, str) else "must be a string or null"


def _expect_session(v):
    return (
        None
        if v is None or isinstance(v, (str, bool))
        else "must be a string, true, false or null"
    )


def _expect_duty(v):
    return None if v is None else _range_or_num(v)


EXPECTS = {
    "state": _one_of(STATES),
    "pilot_v": _range_or_num,
    "duty": _expect_duty,
    "offer_a": _range_or_num,
    "contactor": _bool,
    "current_a": _expect_current,
    "energy_wh": _range_or_num,
    "truth_energy_wh": _range_or_num,
    "fault": _expect_nullable_text,
    "session": _expect_session,
    "grid_a": _expect_current,
    "phases": _int(1, 3),
    "ev_s2": _bool,  # timing (issue 12): physical truth
    "contacts": _bool,
}


def _config_errors(cfg):
    """Messages for bad firmware config overrides, judged by firmware/config.py itself."""
    if not isinstance(cfg, dict):
        return ["config: must be an object"]
    return ["config: " + e for e in fw_config.validate(cfg)[1]]


def validate(sc):
    """All the problems of a parsed scenario, as messages (empty: valid)."""
    if not isinstance(sc, dict):
        return ["the scenario must be a JSON object"]
    errors = []
    for key in sc:
        if key not in TOP_KEYS:
            errors.append(
                "unknown top-level key '%s' (known: %s)" % (key, ", ".join(TOP_KEYS))
            )
    for key in ("name", "description"):
        if key in sc and not isinstance(sc[key], str):
            errors.append("%s: must be a string" % key)
    if "mains_meter" in sc:
        err = _mains_meter(sc["mains_meter"])
        if err:
            errors.append("mains_meter: " + err)
    if "profile" in sc and sc["profile"] not in PROFILES:  # timing (issue 12)
        errors.append("profile: must be one of %s" % ", ".join(PROFILES))
    if "seed" in sc:
        err = _int(0, 2**30 - 1)(sc["seed"])
        if err:
            errors.append("seed: " + err)
    until = sc.get("until")
    if "until" not in sc:
        errors.append("until: missing (the simulated seconds to run)")
        until = None
    else:
        err = _num(0.01, MAX_UNTIL_S)(until)
        if err:
            errors.append("until: " + err)
            until = None
    if "config" in sc:
        errors += _config_errors(sc["config"])
    sim = sc.get("sim", {})
    if not isinstance(sim, dict):
        errors.append("sim: must be an object")
    else:
        for key, v in sim.items():
            if key not in SIM_KEYS:
                errors.append(
                    "sim: unknown key '%s' (known: %s)" % (key, ", ".join(SIM_KEYS))
                )
            else:
                err = SIM_KEYS[key](v)
                if err:
                    errors.append("sim.%s: %s" % (key, err))
    steps = sc.get("steps")
    if not isinstance(steps, list):
        errors.append("steps: missing or not a list")
        return errors
    prev_t = None
    for i, step in enumerate(steps):
        errors += ["step %d: %s" % (i, e) for e in _step_errors(step, prev_t, until)]
        if isinstance(step, dict) and is_number(step.get("t")):
            prev_t = step["t"]
    return errors


def _step_errors(step, prev_t, until):
    if not isinstance(step, dict):
        return ["must be an object"]
    errors = []
    t = step.get("t")
    if "t" not in step:
        errors.append("t: missing")
    elif not is_number(t) or t < 0:
        errors.append("t: must be a number of seconds >= 0")
    else:
        ms = t * 1000  # any whole ms: the world changes between the firmware's ticks
        if abs(ms - round(ms)) > 1e-6:
            errors.append("t: %s is not a whole millisecond" % t)
        if prev_t is not None and t <= prev_t:
            errors.append(
                "t: %s is not after the previous step's t %s (times must increase)"
                % (t, prev_t)
            )
        if until is not None and t > until:
            errors.append("t: %s is after until %s" % (t, until))
    acts = 0
    for key, v in step.items():
        if key in ("t", "note"):
            if key == "note" and not isinstance(v, str):
                errors.append("note: must be a string")
            continue
        if key in ACTIONS:
            acts += 1
            err = ACTIONS[key](v)
            if err:
                errors.append("%s: %s" % (key, err))
        elif key in ("set", "expect"):
            acts += 1
            errors += _table_errors(key, v, COMMANDS if key == "set" else EXPECTS)
        else:
            known = ", ".join(["t", "note", "set", "expect"] + list(ACTIONS))
            errors.append("unknown key '%s' (known: %s)" % (key, known))
    if acts == 0 and not errors:
        errors.append("does nothing (no action, set or expect)")
    return errors


def _table_errors(key, v, table):
    """Problems of a `set` {command: value} or `expect` {field: value} object."""
    what = "command" if key == "set" else "field"
    if not isinstance(v, dict) or not v:
        return ["%s: must be an object {%s: value}" % (key, what)]
    errors = []
    for name, value in v.items():
        if name not in table:
            errors.append(
                "%s: unknown %s '%s' (known: %s)" % (key, what, name, ", ".join(table))
            )
        else:
            err = table[name](value)
            if err:
                errors.append("%s.%s: %s" % (key, name, err))
    return errors


# --- expectations ---------------------------------------------------------------------------
def tolerance(expected):
    """How far a measured number may be from an expected plain number."""
    return max(0.05, 0.01 * abs(expected))


def _match(expected, got):
    if isinstance(expected, list):  # a [lo, hi] range
        return is_number(got) and expected[0] <= got <= expected[1]
    if is_number(expected):
        return is_number(got) and abs(got - expected) <= tolerance(expected)
    return expected == got and type(expected) is type(got)


def field_matches(field, expected, got):
    """Whether one trace field satisfies one expectation (docs/scenarios.md)."""
    if field in ("current_a", "grid_a"):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(map(_match, expected, got))
        )
    if field == "session" and isinstance(expected, bool):
        return (got is not None) == expected
    if expected is None:
        return got is None
    return _match(expected, got)


def check_expects(sc, records):
    """One message per failed expectation: step index, field, expected, got."""
    times = [r["t"] for r in records]
    failures = []
    for i, step in enumerate(sc.get("steps", [])):
        exp = step.get("expect")
        if not exp:
            continue
        k = bisect.bisect_right(times, step["t"] + 1e-9)
        if k == 0:
            failures.append(
                "step %d (t=%.3f): no trace record at or before this time"
                % (i, step["t"])
            )
            continue
        rec = records[k - 1]
        for field, want in exp.items():
            got = rec.get(field)
            if not field_matches(field, want, got):
                failures.append(
                    "step %d (t=%.3f): %s expected %s, got %s"
                    % (i, step["t"], field, json.dumps(want), json.dumps(got))
                )
    return failures

