"""Randomized safety invariants (issue 7): hypothesis writes long random
scenarios, tools/rig.py runs them against the real firmware on the simulated
board (MicroPython unix port), and every trace record is checked against the
safety invariants with limits computed HERE, independently of the firmware,
from the scenario itself (shared/iec61851.md tables; the thermal steps
65/68/71 C as an upper bound; config; remote limits from the commands the
firmware accepted, read from the runner's command lines).

Invariants checked on every record (docs/testing.md):
- the contactor is closed only in C2 (D2 with ventilation allowed) with PWM on,
  no fault, and never closes during an x1 pause; in C1/D1 (x1) it may stay
  closed at most 6 s after the PWM went off;
- it closes only with PWM on, the EV in C/D and its diode not shorted in that
  tick, and never where the rig's runner saw the world forbid it (`unsafe`
  closes: S2 open, a diode/CP short, PE open, RCD trip);
- it never closes while the RCD self-test cannot have passed (rcd_dead on
  since the last unplug / fault);
- it is open 100 ms after a cp_short / pe_open / rcd_trip fault (diode_short:
  100 ms after the fault can be seen, i.e. with PWM on) and whenever the
  firmware's state is not C/D;
- the offered current, and the current the EV decodes from the duty, never
  exceed min(hardware, cable, config, thermal, remote) and are 0 while
  disabled, stopped, unauthorized or ventilation-blocked;
- the rig's reaction-time summary on the ESP32 timing profile, from physical
  truth (the event to the contacts open): every required opening <= 100 ms,
  none left undone, no flash erase while the contactor is closed;
- invalid commands get an error text, valid ones none (a current_a below
  6 A is valid: a pause, with a note); the process never crashes (rig exit
  3 = RigError).

`make test` runs CI_EXAMPLES derandomized examples (the same ones every run);
`make fuzz N=500` runs N fresh random ones and reports how many scenarios and
simulated hours were checked. A failure prints the scenario JSON: save it as a
file and replay it with `tools/rig.py run FILE.json --live`.
"""

import json
import math
import os
import sys
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))

from evrig import RigError  # noqa: E402
from evrig.scenario import SIM_FAULTS, validate  # noqa: E402
from evrig.unixport import run_scenario  # noqa: E402

CI_EXAMPLES = 25
OPEN_WITHIN_S = 0.100  # DEVELOPERS' invariant: open within 100 ms (target 20 ms)
# A record is labelled with its tick's start; on the ESP32 timing profile the
# tick reads the world for up to its own length after that (the longest: a
# current-sense burst, ~25 ms): the limits then in force may be those of a
# step up to this much later.
TICK_SEEN_S = 0.030
X1_MAX_S = 6.0  # x1 with the EV still in C: closed at most 6 s
EPS = 1e-6

# --- the standard's numbers, written down again from shared/iec61851.md ------------
# PP resistor windows (ohm, inclusive) -> cable capacity (A); anything else: 0.
CABLE_A = ((1100, 2460, 13), (400, 936, 20), (164, 308, 32), (80, 140, 63))
DEFAULT_PP_OHM = 220  # sim/board.py SimBoard(pp=220): a 32 A cable
DEFAULT_TEMP_C = 25
DEFAULTS = {"max_current_a": 16, "hw_max_current_a": 32, "enabled": True, "require_auth": False,
            "vent_allowed": False, "rcd_selftest": True}  # fmt: skip
FAULTS_OPEN_AT_ONCE = ("cp_short", "pe_open", "rcd_trip")


def cable_limit_a(pp, rating_a=0):
    """The cable's limit: from the PP table, or for a tethered cable without
    PP coding (pp False) none; a configured cable rating caps both."""
    if pp is False:
        amps = 80.0
    elif pp is None:
        amps = 0.0
    else:
        amps = next((float(a) for lo, hi, a in CABLE_A if lo <= pp <= hi), 0.0)
    return min(amps, rating_a) if rating_a else amps


def thermal_bound_a(base_a, temp_c):
    """Upper bound of the derated offer: half from 65 C, quarter from 68 C,
    none from 71 C (the firmware's hysteresis can only make it lower)."""
    if temp_c >= 71:
        return 0.0
    if temp_c >= 68:
        return base_a / 4
    if temp_c >= 65:
        return base_a / 2
    return base_a


def ev_decoded_a(duty_pct):
    """The current an EV reads from a duty in percent (iec61851.md table)."""
    if duty_pct < 8 or duty_pct > 97:
        return 0.0
    if duty_pct < 10:
        return 6.0
    if duty_pct <= 85:
        return duty_pct * 0.6
    if duty_pct <= 96:
        return (duty_pct - 64) * 2.5
    return 80.0


# --- the scenario generator ---------------------------------------------------------------------
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
PP_VALUES = (None, 0, 30, 59, 60, 79, 80, 100, 140, 141, 163, 164, 220, 308, 309, 399, 400, 680, 936, 937,
             1099, 1100, 1500, 2460, 2461, 4500, 4501, 100000)  # fmt: skip

current_values = st.one_of(
    st.sampled_from((0, 6, 10, 13, 16, 20, 32, 63, 80, 6.5, 16.125)),  # valid when <= hw max
    st.sampled_from((-1, 5, 5.999, 80.001, 81, 1000, 16.0001, 1e-05, 1e20, 10**12)),  # invalid
    st.integers(-10, 100),
    st.floats(-5, 120, allow_nan=False, allow_infinity=False).map(lambda x: round(x, 2)),
)
tags = st.one_of(
    st.text(PRINTABLE, min_size=1, max_size=64),  # valid unless only blanks
    st.text(st.characters(max_codepoint=0xFFFF), min_size=1, max_size=80),  # mostly invalid
    st.sampled_from((" ", "\t\n", "a" * 65, "card\x00", "caf\u00e9")),
)
commands = st.one_of(
    st.fixed_dictionaries({"current_a": current_values}),
    st.fixed_dictionaries({"enable": st.booleans()}),
    st.fixed_dictionaries({"authorize": tags}),
    st.just({"stop": None}),
    st.just({"clear_fault": None}),
    st.fixed_dictionaries({"current_a": current_values, "enable": st.booleans()}),
)
ACTION = {
    "ev": st.sampled_from("ABCCCD"),
    "draw_a": st.one_of(st.sampled_from((0, 6, 16, 32, 80)), st.floats(0, 80).map(lambda x: round(x, 1))),
    "ev_obeys": st.booleans(),
    "ev_phases": st.integers(1, 3),
    "pp_ohm": st.one_of(st.sampled_from((100, 220, 680, 1500)), st.sampled_from((220, 1500)),  # mostly a cable
                        st.sampled_from(PP_VALUES), st.integers(0, 6000)),
    "fault": st.sampled_from(("none",) * 5 + tuple(f for f in SIM_FAULTS if f != "none")),
    "temp_c": st.one_of(st.sampled_from((25, 64.9, 65, 67, 68, 70, 71, 80, 50, -40, 150)),
                        st.floats(10, 75).map(lambda x: round(x, 1)), st.floats(-40, 150).map(lambda x: round(x, 1))),
    "set": commands,
    # energy management (docs/energy.md): the house and the sun behind the same fuse
    "house_a": st.one_of(st.sampled_from((0, 5, 12, 20, 30)), st.lists(st.integers(0, 40), min_size=1, max_size=3)),
    "pv_a": st.one_of(st.sampled_from((0, 3, 8, 15)), st.lists(st.integers(0, 20), min_size=1, max_size=3)),
    "mains_meter": st.booleans(),
}  # fmt: skip
ACTION_KEYS = ("ev",) * 6 + ("draw_a", "ev_obeys", "ev_phases", "pp_ohm", "temp_c", "fault") + ("set",) * 3
ENERGY_KEYS = ("house_a", "pv_a", "mains_meter")


@st.composite
def configs(draw, energy=False):
    cfg = {}
    hw = draw(st.sampled_from((6, 10, 16, 20, 32, 40, 63, 80)))
    if draw(st.booleans()):
        cfg["hw_max_current_a"] = hw
    else:
        hw = 32
    if draw(st.booleans()):
        cfg["max_current_a"] = draw(st.sampled_from((6, 8, 10, 13, 16, 24.5, 32, 50, 63, 80)).filter(lambda a: a <= hw))
    elif hw < 16:
        cfg["max_current_a"] = hw
    for key in ("vent_allowed", "require_auth", "auto_reclose", "rcd_selftest", "pe_check", "enabled"):
        if draw(st.integers(0, 5)) == 5:  # rarely, and never in the simplest examples
            cfg[key] = not {"auto_reclose": True, "rcd_selftest": True, "pe_check": True, "enabled": True}.get(key, False)
    if draw(st.booleans()):
        cfg["fault_retries"] = draw(st.integers(0, 10))
    if draw(st.booleans()):
        cfg["phases"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 3)) == 3:  # a tethered cable's rating
        cfg["cable_max_current_a"] = draw(st.sampled_from((0, 5, 6, 13, 16, 32, 48, 80)))
    if energy or draw(st.integers(0, 3)) == 3:  # load management
        cfg["mode"] = draw(st.sampled_from(("smart", "solar")))
        cfg["mains_max_a"] = draw(st.sampled_from((10, 16, 25, 40)))
        cfg["solar_stop_min"] = draw(st.integers(1, 3))
        cfg["solar_pause_min"] = draw(st.integers(0, 2))
    return cfg


@st.composite
def sims(draw):
    sim = {}
    # Up to 2 V: above it an unplugged pilot (12 V) reads as B now and then, and
    # the checker cannot follow the spurious plug/unplug; 2.5-3 V are covered
    # by test_a_pilot_with_3_v_of_noise_never_closes_with_the_ev_in_b.
    noise = draw(st.one_of(st.just(0), st.integers(0, 400), st.integers(0, 2000)))
    if noise:
        sim["pilot_noise_mv"] = noise
    if draw(st.booleans()):
        sim["contactor_close_ms"] = draw(st.integers(0, 150))
        # a contactor's own release time (10-50 ms for real ones) is inside the
        # 100 ms the openings are checked against (physical truth)
        sim["contactor_open_ms"] = draw(st.integers(0, 50))
    for key in ("has_feedback", "has_pe"):
        if draw(st.integers(0, 3)) == 3:
            sim[key] = False
    if draw(st.booleans()):
        sim["phases"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        sim["mains_hz"] = draw(st.sampled_from((50, 60)))
    if draw(st.integers(0, 3)) == 3:  # a tethered cable without PP coding, or none seen at start
        sim["pp"] = draw(st.sampled_from((False, False, None, 680)))
    if draw(st.booleans()):
        sim["adc_noise_counts"] = draw(st.integers(0, 40))
    if draw(st.booleans()):  # ticks wrap (2^30) somewhere in the run
        sim["start_ticks"] = draw(st.integers(2**30 - 600000, 2**30 - 1))
    if draw(st.integers(0, 3)) == 3:
        sim["phase_relay"] = True
    return sim


@st.composite
def scenarios(draw, energy=False):
    until_ticks = draw(st.integers(3000, 60000))  # 30 s .. 10 min, 10 ms ticks
    cfg = draw(configs(energy))
    steps = []
    t = draw(st.integers(0, 300))
    if draw(st.integers(0, 3)) < 3:  # usually (and in the simplest examples) a car that wants energy
        steps.append({"t": t / 100, "ev": "B", "draw_a": draw(st.sampled_from((6, 10, 16, 32)))})
        t += draw(st.integers(1, 300))
        steps.append({"t": t / 100, "ev": "C"})
        t += draw(st.integers(500, 3000))  # let it charge a while
    for _ in range(draw(st.integers(1, 40))):
        if t > until_ticks - 100:  # leave a second for the last reaction
            break
        step = {"t": t / 100}
        energy = cfg.get("mode") is not None
        keys = draw(st.lists(st.sampled_from(ACTION_KEYS + (ENERGY_KEYS if energy else ())), min_size=1, max_size=3,
                             unique=True))  # fmt: skip
        for key in keys:
            step[key] = draw(ACTION[key])
        steps.append(step)
        t += draw(st.one_of(st.integers(1, 30), st.integers(30, 1000), st.integers(1000, 6000)))
    sim = draw(sims())
    if energy:
        sim["phase_relay"] = True
    if sim.get("phases", 3) != 3:  # a 1- or 2-phase board has one CT channel: the meter refuses more
        cfg["phases"] = 1
    sc = {
        "name": "fuzz",
        "seed": draw(st.integers(0, 2**30 - 1)),
        "until": until_ticks / 100,
        "config": cfg,
        "sim": sim,
        "steps": steps,
    }
    if cfg.get("mode") is not None:
        sc["mains_meter"] = {"every_s": draw(st.sampled_from((1, 2)))}
        steps.insert(0, {"t": 0, "house_a": draw(ACTION["house_a"]), "pv_a": draw(ACTION["pv_a"])})
        if len(steps) > 1 and steps[1]["t"] == 0:  # one step per time
            steps[0].update(steps.pop(1))
    return sc


# --- the checks --------------------------------------------------------------------------------
class Model:
    """What the scenario and the firmware's answers allow at each moment."""

    def __init__(self, sc):
        cfg = dict(DEFAULTS, **sc["config"])
        self.cfg = cfg
        self.hw_a = cfg["hw_max_current_a"]
        self.config_a = min(cfg["max_current_a"], self.hw_a)
        self.vent = cfg["vent_allowed"]
        self.enabled = cfg["enabled"]
        self.authorized = not cfg["require_auth"]
        self.stopped = False
        self.vent_block = False
        self.remote_a = None
        self.pp = sc["sim"].get("pp", DEFAULT_PP_OHM)
        self.cable_rating_a = cfg.get("cable_max_current_a", 0)
        self.temp_c = DEFAULT_TEMP_C
        self.faults = {}  # active injected fault -> time it was injected
        self.rcd_dead = False
        self.rcd_dead_since_reset = False  # no self-test can have passed since the last reset
        self.ev = "A"  # the EV state the steps set last
        self.connected = False  # the firmware has seen an EV (B/C/D) since the last unplug
        self.steps = list(sc["steps"])
        self.si = 0
        self.prev = None
        self.pwm_off_t = None

    def apply_steps(self, t):
        while self.si < len(self.steps) and self.steps[self.si]["t"] <= t + EPS:
            step = self.steps[self.si]
            self.si += 1
            st_t = step["t"]
            if "ev" in step:
                self.ev = step["ev"]
                if step["ev"] == "A" and self.connected:
                    # A physical unplug ends a remote stop and a D block even when
                    # the trace never shows A: the firmware may see it in a fault's
                    # cleared tick, its state still named F (found by make fuzz).
                    # Rights it grants stay (authorization): stricter is kept.
                    self.stopped = False
                    self.vent_block = False
            if "pp_ohm" in step:
                self.pp = step["pp_ohm"]
            if "temp_c" in step:
                self.temp_c = step["temp_c"]
            if "fault" in step:
                f = step["fault"]
                if f == "none":
                    self.faults = {}
                    self.rcd_dead = False
                    self.rcd_dead_since_reset = False
                else:
                    self.faults.setdefault(f, st_t)
                    if f == "rcd_dead":
                        self.rcd_dead = True

    def command(self, c, cfg):
        name, ok, err, payload = c["command"], c["ok"], c["error"], c["payload"]
        assert isinstance(ok, bool), c
        if ok:
            assert err is None, c
        else:
            assert isinstance(err, str) and err, "a rejected command needs an error text: %r" % c
            return
        if name == "current_a":
            amps = float(payload)
            assert 0 <= amps <= min(self.hw_a, 80) + EPS, "accepted an out-of-range current: %r" % c
            if amps < 6:  # below the 6 A minimum: a pause, and the ack says so
                assert c.get("note", "").startswith("paused"), "a pause without a note: %r" % c
            self.remote_a = amps
        elif name == "enable":
            self.enabled = payload == "true"
        elif name == "authorize":
            assert payload.strip(" \t\r\n") and all(0x20 <= ord(ch) < 0x7F for ch in payload.strip(" \t\r\n")), c
            self.authorized = True
            self.stopped = False
        elif name == "stop":
            self.stopped = True

    def limit_ahead(self, t):
        """limit_a() with the world steps (PP, temperature) up to t + TICK_SEEN_S applied."""
        pp, temp = self.pp, self.temp_c
        for step in self.steps[self.si:]:
            if step["t"] > t + TICK_SEEN_S + EPS:
                break
            self.pp = step.get("pp_ohm", self.pp)
            self.temp_c = step.get("temp_c", self.temp_c)
        lim = self.limit_a()
        self.pp, self.temp_c = pp, temp
        return lim

    def limit_a(self):
        if not self.enabled or self.stopped or not self.authorized or self.vent_block:
            return 0.0
        m = min(self.hw_a, self.config_a, cable_limit_a(self.pp, self.cable_rating_a))
        if self.remote_a is not None:
            m = min(m, self.remote_a)
        m = thermal_bound_a(m, self.temp_c)
        return 0.0 if m < 6 else min(m, 80.0)

    def record(self, r):
        t, state, c = r["t"], r["state"], r["contactor"]
        why = "t=%.3f %r" % (t, r)
        if state.startswith("A") or r["fault"] is not None:  # unplugged or fault: every right is reset
            if state.startswith("A"):
                if self.connected:  # an unplug; an authorization given before plugging in holds
                    self.authorized = not self.cfg["require_auth"]
                self.connected = False
                self.stopped = False
                self.vent_block = False
            self.rcd_dead_since_reset = self.rcd_dead
        if state[0] in "BCD":
            self.connected = True
        if state.startswith("D") and not self.vent:
            self.vent_block = True
        prev = self.prev
        if r["duty"] is None and (prev is None or prev["duty"] is not None):
            self.pwm_off_t = t
        lim = max(self.limit_a(), self.limit_ahead(t))
        # The offer and what the EV reads from the duty stay within every limit.
        assert r["offer_a"] <= lim + EPS, "offer %s A above the limit %s A: %s" % (r["offer_a"], lim, why)
        if r["duty"] is None:
            assert r["offer_a"] == 0, "an offer with a steady pilot: " + why
        else:
            assert ev_decoded_a(r["duty"]) <= lim + EPS, "duty %s %% reads above the limit %s A: %s" % (
                r["duty"], lim, why)  # fmt: skip
        if c:
            assert r["fault"] is None, "contactor closed during a fault: " + why
            if r["duty"] is not None:
                assert state == "C2" or (state == "D2" and self.vent), "closed outside C2/D2: " + why
            else:
                assert state == "C1" or (state == "D1" and self.vent), "closed outside C/D in x1: " + why
                assert prev is not None and prev["contactor"], "closed during an x1 pause: " + why
                assert t - self.pwm_off_t <= X1_MAX_S + EPS, "closed %.3f s after x1: %s" % (t - self.pwm_off_t, why)
            if prev is None or not prev["contactor"]:  # it closed in this tick
                assert not (self.cfg["rcd_selftest"] and self.rcd_dead_since_reset), (
                    "closed with a dead RCD (no self-test can have passed): " + why)  # fmt: skip
                # Closing needs this tick's reading: PWM on, the EV asking, its diode
                # checked and good (issue 15 item 1: a retry closed on a stale verdict).
                assert r["duty"] is not None, "closed with a steady pilot: " + why
                assert self.ev in ("C", "D"), "closed with the EV in %s: %s" % (self.ev, why)
                assert "diode_short" not in self.faults, "closed with the EV's diode shorted: " + why
            for f, since in self.faults.items():
                if f in FAULTS_OPEN_AT_ONCE:
                    assert t - since < OPEN_WITHIN_S - EPS, "still closed %.3f s after %s: %s" % (t - since, f, why)
        self.prev = r



def diode_checks(records, window):
    """diode_short can only be seen with PWM on: open within 100 ms of the
    first record with PWM on while the fault is injected (window: from, to)."""
    since = window
    seen = None
    for r in records:
        if r["t"] + EPS < since[0] or r["t"] > since[1] + EPS:
            continue
        if r["duty"] is not None and seen is None:
            seen = r["t"]
        if seen is not None and r["contactor"]:
            assert r["t"] - seen < OPEN_WITHIN_S - EPS, "closed %.3f s after a visible diode short: %r" % (
                r["t"] - seen, r)  # fmt: skip


def diode_windows(sc):
    """[(from, to)] while diode_short is injected."""
    out, since = [], None
    for s in sc["steps"]:
        f = s.get("fault")
        if f == "diode_short" and since is None:
            since = s["t"]
        elif f == "none" and since is not None:
            out.append((since, s["t"] - 0.01))
            since = None
    if since is not None:
        out.append((since, sc["until"]))
    return out


def check_scenario(sc, path):
    """Run one scenario and check every invariant; returns the summary."""
    errors = validate(sc)
    assert errors == [], errors
    model = Model(sc)
    stream = []
    try:
        # the ESP32 timing profile: board calls, flash, GC cost what they cost on a board
        records, _cmds, summary = run_scenario(path, sc, on_line=lambda kind, obj: stream.append((kind, obj)),
                                                   profile="esp32")  # fmt: skip
    except RigError as e:  # exit 3: the control loop must never crash
        raise AssertionError("the firmware process failed: %s" % e) from None
    assert records, "no trace records"
    assert records[-1]["t"] == sc["until"], "the run stopped early"
    for kind, obj in stream:
        if kind == "command":
            model.apply_steps(obj["t"])
            model.command(obj, model.cfg)
        elif kind == "record":
            model.apply_steps(obj["t"])
            model.record(obj)
    for window in diode_windows(sc):
        diode_checks(records, window)
    # A phase relay moves only with the contacts open and the pilot steady (docs/energy.md).
    for sw in (summary.get("energy") or {}).get("phase_switches", ()):
        assert not sw["contacts_closed"] and not sw["pwm"], "phase switch under load or with PWM on: %r" % sw
    unsafe = [c for c in summary["closes"] if c["cause"] == "unsafe"]
    assert unsafe == [], "closed where the simulated world forbids it: %r" % unsafe
    for o in summary["opens"]:
        # unfinished: still required when the run ended, `ms` after the event;
        # within the bound that is a run cut short, not a late opening.
        assert not (o.get("unfinished") and o["ms"] > OPEN_WITHIN_S * 1000), "a required opening never happened: %r" % o
        if o["ms"] is not None and o["cause"] != "diode_short":
            # physical truth: from the event to the contacts open (the release time included)
            assert o["ms"] <= OPEN_WITHIN_S * 1000, "opening took %s ms: %r" % (o["ms"], o)
    assert summary.get("energized_erases", 0) == 0, "a flash erase with the contactor closed: %r" % summary["stalls"]
    return summary


def _run(sc, stats):
    fd, path = tempfile.mkstemp(prefix="fuzz-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(sc, f)
        try:
            summary = check_scenario(sc, path)
        except AssertionError as e:
            raise AssertionError("%s\nscenario (save it and run tools/rig.py run FILE --live):\n%s"
                                 % (e, json.dumps(sc))) from None  # fmt: skip
    finally:
        os.unlink(path)
    stats["scenarios"] += 1
    stats["sim_seconds"] += summary["sim_seconds"]
    stats["opens"] += len(summary["opens"])
    stats["closes"] += len(summary["closes"])
    return summary


def test_random_sessions_keep_every_safety_invariant(pytestconfig):
    fuzz = pytestconfig.getoption("--fuzz", default=None)
    stats = {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0}
    pytestconfig.fuzz_stats = stats  # tests/host/conftest.py prints it in the summary

    @settings(
        max_examples=fuzz or CI_EXAMPLES,
        deadline=None,
        derandomize=not fuzz,  # make test: the same examples every run
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(scenarios())
    def prop(sc):
        _run(sc, stats)

    prop()
    assert stats["scenarios"] > 0


def test_random_sessions_with_load_management_keep_every_safety_invariant(pytestconfig):
    """The same invariants with the house, the sun and a house meter in the
    scenario, smart or solar mode and a phase relay: load management only
    ever lowers the offer, and the relay moves only with the contacts open."""
    fuzz = pytestconfig.getoption("--fuzz", default=None)
    stats = {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0}
    # the summary line counts these too (printed per test: 'load management')
    pytestconfig.fuzz_stats_energy = stats

    @settings(max_examples=(fuzz // 4 if fuzz else CI_EXAMPLES // 3) or 1, deadline=None, derandomize=not fuzz,
              database=None, suppress_health_check=list(HealthCheck), print_blob=True)  # fmt: skip
    @given(scenarios(energy=True))
    def prop(sc):
        _run(sc, stats)

    prop()
    assert stats["scenarios"] > 0


# --- regressions and the checker itself -------------------------------------------------------------------
def test_the_limit_model_follows_the_tables():
    assert [cable_limit_a(p) for p in (None, 59, 80, 140, 141, 220, 680, 1500, 2461)] == [
        0, 0, 63, 63, 0, 32, 20, 13, 0]  # fmt: skip
    assert cable_limit_a(False) == 80 and cable_limit_a(False, 48) == 48 and cable_limit_a(220, 16) == 16
    assert thermal_bound_a(32, 64.9) == 32 and thermal_bound_a(32, 65) == 16
    assert thermal_bound_a(32, 68) == 8 and thermal_bound_a(32, 71) == 0
    assert ev_decoded_a(26.6) == 26.6 * 0.6 and ev_decoded_a(90) == 65 and ev_decoded_a(7) == 0


def test_the_checker_catches_a_contactor_closed_in_b():
    sc = {"until": 10, "config": {}, "sim": {}, "steps": []}
    m = Model(sc)
    base = {"t": 1.0, "state": "B2", "duty": 26.6, "offer_a": 16.0, "contactor": False, "fault": None}
    m.record(base)
    try:
        m.record(dict(base, t=1.01, contactor=True))
    except AssertionError as e:
        assert "closed outside C2/D2" in str(e)
    else:
        raise AssertionError("a contactor closed in B2 passed the checker")


def test_the_checker_catches_an_offer_above_the_cable_limit():
    sc = {"until": 10, "config": {"max_current_a": 32}, "sim": {}, "steps": [{"t": 0.5, "pp_ohm": 1500}]}
    m = Model(sc)
    m.apply_steps(1.0)
    try:
        m.record({"t": 1.0, "state": "C2", "duty": 26.6, "offer_a": 16.0, "contactor": True, "fault": None})
    except AssertionError as e:
        assert "above the limit 13" in str(e)
    else:
        raise AssertionError("a 16 A offer on a 13 A cable passed the checker")


def test_a_long_charging_session_with_pilot_noise_keeps_every_invariant():
    stats = {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0}
    sc = {
        "until": 400, "seed": 7, "config": {"max_current_a": 32}, "sim": {"pilot_noise_mv": 300},
        "steps": [
            {"t": 1, "ev": "B", "draw_a": 32}, {"t": 2, "ev": "C"}, {"t": 60, "temp_c": 66},
            {"t": 90, "temp_c": 69}, {"t": 120, "temp_c": 40}, {"t": 150, "pp_ohm": 680},
            {"t": 200, "set": {"current_a": 10}}, {"t": 250, "set": {"current_a": 5}},
            {"t": 260, "set": {"current_a": 0}}, {"t": 300, "set": {"current_a": 16}},
            {"t": 350, "ev": "B"}, {"t": 360, "ev": "A"},
        ],
    }  # fmt: skip
    _run(sc, stats)
    assert stats["closes"] >= 2 and stats["opens"] >= 2, stats
    assert not math.isnan(stats["sim_seconds"])


def test_an_authorization_given_before_plugging_in_holds_for_the_checker_too():
    # Found by the fuzzer (a false alarm of the checker, not of the firmware):
    # it reset the authorization on every record in A, so a card tapped
    # before plugging in made the firmware's offer look unauthorized.
    sc = {"name": "fuzz", "seed": 0, "until": 30.0, "config": {"require_auth": True}, "sim": {},
          "steps": [{"t": 0.0, "ev": "A", "set": {"authorize": "0"}}, {"t": 0.01, "ev": "A"}, {"t": 0.02, "ev": "B"}]}  # fmt: skip
    _run(sc, {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0})


def test_regression_no_closing_in_the_tick_the_pwm_starts_after_a_diode_fault():
    # Found by this fuzzer: an EV with a shorted diode that keeps S2 closed
    # through x1 (ev_obeys false). After each fault hold the charger started
    # the PWM and closed the contactor in the same tick, on a pilot reading
    # taken with the pilot steady, where the diode cannot be checked: closed
    # for one tick with the diode fault present, at every retry.
    sc = {"name": "fuzz", "seed": 0, "until": 30.0, "config": {"vent_allowed": True, "pe_check": False},
          "sim": {"has_feedback": False, "has_pe": False},
          "steps": [{"t": 0.0, "ev": "B", "draw_a": 6}, {"t": 0.01, "ev": "C"},
                    {"t": 0.45, "ev_obeys": False, "fault": "diode_short"}]}  # fmt: skip
    _run(sc, {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0})


def test_regression_a_fault_retry_never_closes_on_a_stale_diode_verdict():
    # Issue 15 item 1: EV in C, diode_short at 5 s, 1 V of pilot noise, 10
    # retries. A retry whose first reading with PWM on fell between the
    # windows kept the diode verdict "ok" that forget() had set and closed
    # for one tick with the diode still shorted (5.36 s with seed 1, 6.62 s
    # with seed 2). Closing now needs this tick's valid reading, diode checked.
    for seed in range(1, 9):
        sc = {"name": "fuzz", "seed": seed, "until": 20.0, "config": {"fault_retries": 10},
              "sim": {"pilot_noise_mv": 1000},
              "steps": [{"t": 1.0, "ev": "B", "draw_a": 16}, {"t": 2.0, "ev": "C"},
                        {"t": 5.0, "fault": "diode_short"}]}  # fmt: skip
        _run(sc, {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0})


_FUZZ_CFG = {"hw_max_current_a": 6, "max_current_a": 6, "phases": 1, "cable_max_current_a": 0, "mode": "smart",
             "mains_max_a": 10, "solar_stop_min": 3, "solar_pause_min": 0}  # fmt: skip
_FUZZ_SIM = {"contactor_close_ms": 69, "contactor_open_ms": 48, "phases": 3, "adc_noise_counts": 36,
             "start_ticks": 1073141825, "phase_relay": True}  # fmt: skip


def test_regression_clearing_faults_while_the_contacts_release_keeps_their_release_time():
    # Found by make fuzz N=2000: "fault": "none" 60 ms after an unplug restarted
    # the simulated contactor's 48 ms release, and the opening measured 108 ms
    # (really 60 ms: 12 ms to the command, 48 ms of release). A simulator bug.
    sc = {"name": "fuzz", "seed": 143173200, "until": 22.0, "config": dict(_FUZZ_CFG), "sim": dict(_FUZZ_SIM),
          "mains_meter": {"every_s": 2},
          "steps": [{"t": 0, "house_a": [23], "pv_a": [18]}, {"t": 2.34, "ev": "B", "draw_a": 6}, {"t": 2.43, "ev": "C"},
                    {"t": 20.08, "house_a": 0}, {"t": 20.09, "ev": "A", "set": {"current_a": 0}},
                    {"t": 20.15, "ev": "B", "fault": "none"}]}  # fmt: skip
    _run(sc, {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0})


def test_regression_a_remote_stop_ends_with_an_unplug_seen_in_a_faults_cleared_tick():
    # Found by make fuzz N=2000: stop, then an RCD trip with the EV unplugged;
    # the firmware saw the unplug in a tick between two trips (its state still
    # F), so after the remote clear the replugged EV's new session is offered
    # energy. The checker had kept the stop until it saw a state A record.
    # (The scenario as the fuzzer shrank it; simpler ones did not reach that tick.)
    sc = {"name": "fuzz", "seed": 143173200, "until": 230.0, "config": dict(_FUZZ_CFG), "sim": dict(_FUZZ_SIM),
          "mains_meter": {"every_s": 2},
          "steps": [{"t": 0, "house_a": [23], "pv_a": [18]}, {"t": 2.34, "ev": "B", "draw_a": 6}, {"t": 2.43, "ev": "C"}, {"t": 20.08, "house_a": 0}, {"t": 20.09, "ev": "A", "set": {"current_a": -1}}, {"t": 20.1, "ev": "A"}, {"t": 20.15, "ev": "B", "ev_obeys": False}, {"t": 20.29, "fault": "rcd_trip", "ev": "A", "set": {"stop": None}}, {"t": 22.91, "set": {"clear_fault": None}}, {"t": 23.8, "ev": "B"}, {"t": 34.58, "set": {"enable": False}, "temp_c": 64.9, "pv_a": [3]}, {"t": 34.64, "ev": "B", "set": {"enable": False}, "pv_a": [4]}, {"t": 34.94, "temp_c": 21.1, "ev": "D"}, {"t": 35.22, "ev": "A"}, {"t": 39.29, "draw_a": 16, "ev": "C", "temp_c": 47.4}, {"t": 68.34, "set": {"enable": False, "current_a": 58}, "ev": "D"}, {"t": 69.0, "set": {"enable": True}, "ev": "D", "house_a": 0}, {"t": 86.36, "ev_phases": 1, "ev": "A", "fault": "cp_short"}, {"t": 102.28, "ev_phases": 1}, {"t": 114.71, "ev": "B"}, {"t": 114.87, "ev": "C", "draw_a": 73.8, "pv_a": 0}, {"t": 174.87, "ev": "C", "house_a": [20], "fault": "none"}, {"t": 175.16, "ev": "B"}, {"t": 175.33, "set": {"current_a": 82}, "ev": "C"}, {"t": 202.3, "ev": "C", "mains_meter": False}, {"t": 228.24, "set": {"clear_fault": None}, "ev_phases": 3, "ev": "C"}]}  # fmt: skip
    _run(sc, {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0})


def _noisy_b(noise_mv, seed, retries):
    return {"name": "noisy_b", "seed": seed, "until": 1200.0, "config": {"fault_retries": retries},
            "sim": {"pilot_noise_mv": noise_mv}, "steps": [{"t": 1.0, "ev": "B", "draw_a": 16}]}  # fmt: skip


def test_regression_a_run_ending_while_the_contacts_release_is_no_missed_opening():
    # Found by make fuzz (shard of 500 on the ESP32 profile): the EV opened S2
    # 9 ms before the scenario's end, the firmware had commanded the opening,
    # the contacts were still releasing: reported `unfinished` with ms 9 and
    # failed as "never happened". Run longer, the same run opens in ~16 ms.
    # The end is put halfway through that opening as this firmware times it
    # (any change in its boot or tick cost moves the opening by milliseconds).
    sc = {"name": "fuzz", "seed": 9218, "until": 36.0, "config": {}, "sim": {},
          "steps": [{"t": 1.66, "ev": "B", "draw_a": 6}, {"t": 2.71, "ev": "C"},
                    {"t": 22.96, "ev": "C", "pp_ohm": 100}, {"t": 24.43, "ev_phases": 1},
                    {"t": 33.99, "ev": "C", "set": {"enable": False}}]}  # fmt: skip
    summary = _run(sc, {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0})
    assert not any(o.get("unfinished") for o in summary["opens"]), summary["opens"]
    done = [o for o in summary["opens"] if o["cause"] == "s2_open" and o["ms"] is not None]
    assert done and done[-1]["ms"] >= 4 and done[-1]["ms"] <= OPEN_WITHIN_S * 1000, summary["opens"]
    done_ms = round(done[-1]["t"] * 1000)
    need_ms = done_ms - done[-1]["ms"]
    ended_while_releasing = 0
    for end_ms in range(need_ms - 10, done_ms, 2):  # the run ends at the first tick after `until`
        sc["until"] = end_ms / 1000
        summary = _run(sc, {"scenarios": 0, "sim_seconds": 0.0, "opens": 0, "closes": 0})
        pending = [o for o in summary["opens"] if o.get("unfinished")]
        assert all(o["ms"] <= OPEN_WITHIN_S * 1000 for o in pending), (end_ms, summary["opens"])
        ended_while_releasing += len(pending)
    assert ended_while_releasing, "no end fell inside the opening: the test saw nothing"


def test_a_pilot_with_3_v_of_noise_never_closes_with_the_ev_in_b():
    # Issue 15 item 2: 2.5-3 V of noise threw single readings of a B into the
    # C window; two in a row were taken as C and the contactor closed (15-23
    # times in 20 minutes). 20 simulated minutes per run, the EV always in B.
    closes = {}
    offered = 0
    for noise_mv, seed, retries in ((3000, 1, 3), (3000, 2, 10), (3000, 3, 3), (2500, 4, 10), (2500, 5, 3)):
        sc = _noisy_b(noise_mv, seed, retries)
        assert validate(sc) == []
        fd, path = tempfile.mkstemp(prefix="noisy-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(sc, f)
            records, _cmds, summary = run_scenario(path, sc)
        finally:
            os.unlink(path)
        assert records[-1]["t"] == sc["until"]
        closes[(noise_mv, seed)] = sum(1 for r in records if r["contactor"]) + summary["unsafe_closes"]
        offered += sum(1 for r in records if r["duty"] is not None)
    assert offered > 0, "the charger never offered energy: the test saw nothing"
    assert all(n == 0 for n in closes.values()), closes


def test_a_noisy_pilot_still_closes_within_3_s_and_opens_within_100_ms():
    # The filter that keeps a noisy B out of C must not cost the reactions:
    # 0.9 V of noise (1 V is the most the diode check tolerates: -12 V + 1 V
    # is its -11 V threshold; the ESP32 front end's calibration and ADC noise,
    # sim/frontend.py, take a few tens of mV of that), the EV going B -> C -> B
    # five times, on four seeds.
    steps = [{"t": 1.0, "ev": "B", "draw_a": 16}]
    for k in range(5):
        steps += [{"t": 5.0 + 20 * k, "ev": "C"}, {"t": 15.0 + 20 * k, "ev": "B"}]
    for seed in range(1, 5):
        sc = {"name": "noisy_cycles", "seed": seed, "until": 110.0, "config": {}, "sim": {"pilot_noise_mv": 900},
              "steps": steps}  # fmt: skip
        fd, path = tempfile.mkstemp(prefix="noisy-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(sc, f)
            summary = check_scenario(sc, path)
        finally:
            os.unlink(path)
        closes = [c for c in summary["closes"] if c["cause"] == "s2_close"]
        opens = [o for o in summary["opens"] if o["cause"] == "s2_open"]
        assert len(closes) == 5 and len(opens) == 5, summary
        assert max(c["ms"] for c in closes) <= 3000, closes
        assert max(o["ms"] for o in opens) <= OPEN_WITHIN_S * 1000, opens
