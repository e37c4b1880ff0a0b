"""Scenario runner: drives the simulated board (sim/board.py) from a scenario
file and writes trace records, on the unix port.

    micropython -m sim.scenario SCENARIO.json [--realtime] [--hold] [--seed N] [--profile P]

(MICROPYPATH=<repo>:<repo>/lib, cwd = the repo.) The scenario has already been
validated by tools/rig.py; docs/scenarios.md describes the format. Output on
stdout, one JSON object a line:

- trace records (firmware/trace.py builds the firmware part; this adds
  `truth_energy_wh` and reports the simulator's true pilot level), written
  whenever a discrete field changes, at least once per simulated second, and
  once at each step's time after the step was applied and the firmware ticked;
- `{"t": .., "command": name, "payload": text, "ok": bool, "error": text}` for
  every remote command a step sends;
- last, `{"summary": {...}}` with contactor reaction times measured in
  simulated time, sim_seconds, wall_seconds and ticks.

--hold makes a run that lasts until the caller stops it, for tests that act
in wall time (restart a broker, send commands, kill the process) while the
firmware runs: at `until` the run does not end but goes on in real time, the
world as the last step left it; each line on stdin is one more step (a JSON
object of world actions and `set`, as in a scenario file, without `t`), applied
before the next tick; the run ends, with its summary, when stdin closes. It
then no longer depends on how fast the simulation runs.

Times: every record is labelled with the simulated time of the firmware tick
whose result it shows (ms since the run began); its physical-truth fields
(`ev_s2`, `contacts`, `truth_energy_wh`, `pilot_v`) show the world when the
record is written, at the start of the next tick. A step's world actions happen
at the step's own ms (a board alarm: between ticks, or inside one while a board
call takes its time), its `set` commands after the next tick. Reaction times
run from the physical event to the contacts' physical move (docs/scenarios.md).
`--profile ideal|esp32` picks the board's timing profile (sim/timing.py).

Owns: the step timing and the reaction-time bookkeeping. Never reaches into the
firmware's internals: it reads only the attributes the firmware documents
(charger state/offer/duty/contactor/fault, meter, session id) and talks to it
through `Firmware.command()`, exactly as the MQTT link does.
"""

import json
import os
import select
import sys
import time

from firmware.app import Firmware
from firmware.trace import EVERY_MS, Shown, fixed, record
from sim.board import SimBoard
from sim.steps import StepClock, apply_world, ms, send_commands

# World events that require the contactor to open (when commanded closed).
_FAULTS_REQUIRING_OPEN = ("cp_short", "diode_short", "pe_open", "rcd_trip")
_NEVER = 1 << 60  # a step time that never comes (unix port: still a small int)
_STALLS_LISTED = 100  # the summary lists the first stalls (flash erase, GC, TLS) of a run
_STDIN_EVERY_MS = 50  # --hold: how often stdin is polled for a step or its end
_ENERGY_EVENTS = ("solar_start", "solar_stop", "phase_switch", "phases", "mains_stale", "mains_ok")


class _Stop(Exception):
    """Raised from on_tick at `until`: ends Firmware.run()."""


class _Reboot(Exception):
    """Raised from on_tick after the firmware reset the board (SimBoard.reset()
    on the unix port records it and returns): the run goes on with a new
    Firmware on the same board and flash, as after a reboot."""


def _fresh_dir():
    """A new, empty data directory for one run (the board's flash)."""
    path = "/tmp/evse-run-" + "".join("%02x" % b for b in os.urandom(6))
    os.mkdir(path)
    return path


def _remove_tree(path):
    for name, kind, *_ in os.ilistdir(path):
        p = path + "/" + name
        if kind == 0x4000:
            _remove_tree(p)
        else:
            os.remove(p)
    os.rmdir(path)


class Runner:
    def __init__(self, scenario, seed=None, realtime=False, data_dir=None, mqtt=None, flush_ms=5000, profile=None,
                 hold=False):
        """data_dir: the board's flash, kept between runs (None: a fresh one,
        removed at the end). mqtt: config overrides that connect the link
        (mqtt_host, mqtt_port, id); the run then ends with a clean stop that
        gives queued sessions flush_ms to reach the broker and publishes online 0.
        profile: the simulated board's timing profile (sim/timing.py), default
        the scenario's "profile", else "ideal". hold: at `until`, go on in real
        time until stdin closes (module docstring)."""
        sim_args = dict(scenario.get("sim") or {})
        if seed is None:
            seed = scenario.get("seed", 1)
        sim_args["seed"] = seed
        if profile is None:
            profile = scenario.get("profile", "ideal")
        sim_args["profile"] = profile
        # The pilot's front end (sim/frontend.py): the ESP32 model unless the
        # scenario asks otherwise; its settling and noise may be set.
        sim_args.setdefault("frontend", "esp32")
        opts = {}
        if "pilot_tau_us" in sim_args:
            opts["tau_us"] = sim_args.pop("pilot_tau_us")
        if "pilot_adc_noise_counts" in sim_args:
            opts["noise_counts"] = sim_args.pop("pilot_adc_noise_counts")
        if opts:
            sim_args["frontend_opts"] = opts
        self.own_dir = data_dir is None
        sim_args["data_dir"] = _fresh_dir() if data_dir is None else data_dir
        self.sim = sim = SimBoard(**sim_args)
        cfg = dict(scenario.get("config") or {})
        if mqtt:
            cfg.update(mqtt)
        self.flush_ms = flush_ms
        self.cfg = cfg
        self.fw = Firmware(sim, cfg)
        self.ch = self.fw.charger
        # Energy-management fields in the trace: when the scenario has a house
        # or solar in it, or a mode other than normal.
        self.energy = bool(scenario.get("mains_meter")) or cfg.get("mode", "normal") != "normal" or bool(
            sim_args.get("mains_ct")) or any(("house_a" in st or "pv_a" in st) for st in scenario.get("steps", ()))
        # Energy-management accounting from the simulator's truth, every tick:
        # the EV's energy, the part of it the solar surplus covered (summed
        # over the phases, as a meter nets them), and the longest stretch with
        # any phase of the grid above the main fuse.
        self.mains_max_ma = int(self.fw.cfg["mains_max_a"] * 1000)
        self.ev_mams = 0  # mA x ms summed over the phases
        self.solar_mams = 0
        self.over_since = -1
        self.over_ms_max = 0
        self.energy_events = []  # (t_ms, event) of load management, for the summary
        if self.energy:
            self.fw.on_event = self._on_fw_event
        self.steps = StepClock(scenario)
        self.until_ms = ms(scenario["until"])
        # A house meter that publishes the grid current like a smart meter on
        # MQTT ("mains_meter": {"every_s": N}); a step's "mains_meter": false
        # silences it (a stale feed), true brings it back.
        meter = scenario.get("mains_meter")
        self.meter_every_ms = ms(meter.get("every_s", 1)) if meter else 0
        self.meter_on = bool(meter)
        self.meter_due = 0
        self.realtime = realtime
        self.hold = hold
        self.holding = False  # past `until` with hold: real time, steps from stdin
        self.end_ms = self.until_ms
        self.t0 = sim.now_ms
        self.prev = sim.now_ms  # the time of the firmware's latest tick
        self.pending = []  # steps the world saw whose `set` waits for the next tick
        self.shown = Shown()  # what the last record showed
        self.shown_s2 = None  # ... of the physical world
        self.shown_contacts = None
        self.last_rec_ms = -EVERY_MS
        self.step_due = False
        # Reaction-time bookkeeping, physical truth (ms since start).
        self.ev = None
        self.s2 = sim.ev_s2_closed
        self.s2_closed_ms = 0
        self.s2_fresh = False  # S2 closed since the contacts last opened
        self.contacts = sim.contacts_closed
        self.c_cmd = sim.contactor_commanded
        self.need_open_ms = -1  # when the world first required opening, -1: not required
        self.need_open_cause = None
        self.opens = []
        self.closes = []
        self.records = 0
        self.resets = sim.resets  # board resets seen (SimBoard.reset() on the unix port)
        self.wall0_us = time.ticks_us()
        self.wall0_ms = time.ticks_ms()

    # --- output ---------------------------------------------------------------------
    def _emit(self, t):
        fw = self.fw
        sim = self.sim
        costs = sim.costs
        mark = costs.alloc_mark() if costs is not None else 0
        self.shown.take(fw)
        self.shown_s2 = sim.ev_s2_closed
        self.shown_contacts = sim.contacts_closed
        self.last_rec_ms = t
        self.records += 1
        pilot_mv = int(sim.pilot_v() * 1000)
        extra = sim.trace_extra()
        if self.energy:
            extra += ', "grid_a": [%s, %s, %s], "phases": %d' % (
                fixed(sim.grid_ma(0), 1000, 2), fixed(sim.grid_ma(1), 1000, 2), fixed(sim.grid_ma(2), 1000, 2),
                sim.supply_phases)
        print(record(fw, t, pilot_mv, extra))
        if costs is not None:
            costs.alloc_exclude(mark)  # the record is the simulation's garbage, not the firmware's

    # --- steps: the world at their exact ms, commands at the next tick ------------------
    def _arm(self):
        if not self.steps.done():
            self.sim.set_alarm(self.t0 + self.steps.next_ms, self._on_step)

    def _on_step(self, sim):
        """The alarm: the step's world actions happen now, between (or
        inside) the firmware's ticks; its commands wait for the next tick."""
        t = self.steps.next_ms
        step = self.steps.take()
        self._apply_world(t, step)
        self.pending.append((t, step))
        self._arm()

    def _apply_world(self, t, step):
        self._physical()  # anything that happened before this step, first
        apply_world(self.sim, step)
        if "mains_meter" in step:
            self.meter_on = bool(step["mains_meter"]) and self.meter_every_ms > 0
            self.meter_due = t
        ev = step.get("ev")
        if ev is not None:
            self.ev = ev
            if ev == "A":
                self._require_open(t, "unplug")
        fault = step.get("fault")
        if fault in _FAULTS_REQUIRING_OPEN:
            self._require_open(t, fault)
        self._physical()

    def _send(self, now):
        for _t, step in self.pending:
            for line in send_commands(self.fw, step, now):
                print(line)
        self.pending = []
        self.step_due = True

    def _energized(self):
        sim = self.sim
        return sim.contacts_closed or sim.contactor_commanded

    def _require_open(self, t, cause):
        if self.need_open_ms < 0 and self._energized():
            self.need_open_ms = t
            self.need_open_cause = cause

    # --- physical truth: S2 and the contacts, at the ms they moved ----------------------
    def _physical(self):
        sim = self.sim
        t0 = self.t0
        s2 = sim.ev_s2_closed
        if s2 != self.s2:
            self.s2 = s2
            t = sim.s2_ms - t0
            if s2:
                self.s2_closed_ms = t
                self.s2_fresh = True
            else:
                self._require_open(t, "unplug" if self.ev == "A" else "s2_open")
        cmd = sim.contactor_commanded
        if cmd != self.c_cmd:
            self.c_cmd = cmd
            if cmd and sim.close_why is not None:  # a safety violation, never a "resume"
                self.closes.append({"t": (sim.contactor_cmd_ms - t0) / 1000, "cause": "unsafe",
                                    "why": sim.close_why, "ms": None})  # fmt: skip
        c = sim.contacts_closed
        if c != self.contacts:
            self.contacts = c
            t = sim.contacts_ms - t0
            if c:
                cmd = sim.contactor_cmd_ms - t0
                if self.s2_fresh:
                    self.closes.append({"t": t / 1000, "cause": "s2_close", "ms": t - self.s2_closed_ms,
                                        "decide_ms": cmd - self.s2_closed_ms})  # fmt: skip
                else:
                    self.closes.append({"t": t / 1000, "cause": "resume", "ms": None})
                self.s2_fresh = False
            elif self.need_open_ms < 0:
                self.opens.append({"t": t / 1000, "cause": "firmware", "ms": None})
                self.s2_fresh = False
        need = self.need_open_ms
        if need >= 0 and not sim.contactor_commanded and (not c or sim.contacts_welded):
            cmd = sim.contactor_cmd_ms - t0
            done = sim.contacts_ms - t0 if not c and sim.contacts_ms - t0 >= need else cmd
            if done < need:
                done = need  # the contacts were already on their way
            o = {"t": done / 1000, "cause": self.need_open_cause, "ms": done - need,
                 "decide_ms": cmd - need if cmd > need else 0}  # fmt: skip
            if c:
                o["welded"] = True  # commanded open, the contacts stay shut
            self.opens.append(o)
            self.need_open_ms = -1
            self.s2_fresh = False

    def _account(self, now, dt):
        sim = self.sim
        ev = 0
        grid = 0
        over = False
        for p in range(3):
            g = sim.grid_ma(p)
            grid += g
            ev += sim.truth_current_ma(p)
            if g > self.mains_max_ma:
                over = True
        covered = ev - grid if grid > 0 else ev
        if covered < 0:
            covered = 0
        self.ev_mams += ev * dt
        self.solar_mams += covered * dt
        if over:
            if self.over_since < 0:
                self.over_since = now
            elif now - self.over_since > self.over_ms_max:
                self.over_ms_max = now - self.over_since
        else:
            self.over_since = -1

    def _on_fw_event(self, ev):
        if ev.get("event") in _ENERGY_EVENTS:
            self.energy_events.append({"t": (self.sim.now_ms - self.t0) / 1000, "event": ev["event"]})

    def energy_summary(self):
        v = self.sim.voltage_v
        log = self.sim.phase_log
        return {
            "ev_wh": v * self.ev_mams // 3600000 / 1000,
            "solar_wh": v * self.solar_mams // 3600000 / 1000,
            "mains_over_ms_max": self.over_ms_max,
            "phase_switches": [{"t": (at - self.t0) / 1000, "phases": n, "contacts_closed": c, "pwm": w}
                               for at, n, c, w in log],
            "events": self.energy_events,
        }

    def _publish_mains(self):
        """What a smart meter publishes on the charger's mains topic (A, signed)."""
        sim = self.sim
        payload = '{"l1": %s, "l2": %s, "l3": %s}' % (
            fixed(sim.grid_ma(0), 1000, 2), fixed(sim.grid_ma(1), 1000, 2), fixed(sim.grid_ma(2), 1000, 2))
        self.fw.mains(payload.encode())

    # --- the hook: after each wait_tick of the simulated board ----------------------------
    def on_tick(self, sim):
        if sim.resets != self.resets:
            self.resets = sim.resets
            raise _Reboot()
        t = self.prev - self.t0  # the firmware just ticked at t: its outputs are current
        self.prev = sim.now_ms
        now = self.prev - self.t0
        self._physical()
        if (
            self.step_due
            or self.shown.changed(self.fw)
            or sim.ev_s2_closed != self.shown_s2
            or sim.contacts_closed != self.shown_contacts
            or t - self.last_rec_ms >= EVERY_MS
        ):
            self.step_due = False
            self._emit(t)
        if now > self.until_ms and not self.holding:  # the next tick would start after `until`
            if not self.hold:
                # The last record is at `until`: the state then is what the last
                # tick before it decided (ticks are off the 10 ms grid on a timed profile).
                if self.last_rec_ms != self.until_ms:
                    self._emit(self.until_ms)
                raise _Stop()
            self._start_holding(now)
        if self.holding and self._held(now):
            if self.last_rec_ms != t:
                self._emit(t)
            self.end_ms = t
            raise _Stop()
        if self.pending:
            self._send(now)
        if self.energy:
            self._account(now, now - t)
        if self.meter_on and now >= self.meter_due:
            self.meter_due = now + self.meter_every_ms
            self._publish_mains()
        if self.realtime:
            ahead = now - time.ticks_diff(time.ticks_ms(), self.wall0_ms)
            if ahead > 0:
                time.sleep_ms(ahead)

    # --- --hold: real time from `until` on, steps from stdin until it closes -----------------
    def _start_holding(self, now):
        self.holding = True
        self.realtime = True  # from here on the wall clock paces the run
        self.wall0_ms = time.ticks_add(time.ticks_ms(), -now)
        self.stdin_next_ms = now
        self.stdin = select.poll()
        self.stdin.register(sys.stdin, select.POLLIN)

    def _held(self, now):
        """Take the steps waiting on stdin (their world now, their commands at
        the next tick); True once stdin has closed."""
        if now < self.stdin_next_ms:
            return False
        self.stdin_next_ms = now + _STDIN_EVERY_MS
        while self.stdin.poll(0):
            line = sys.stdin.readline()
            if not line:
                return True
            line = line.strip()
            if line:
                step = json.loads(line)
                self._apply_world(now, step)
                self.pending.append((now, step))
        return False

    # --- the run -------------------------------------------------------------------------------
    def run(self):
        sim = self.sim
        # Steps at t = 0 belong to the world the first tick sees.
        while self.steps.next_ms <= 0:
            t = self.steps.next_ms
            step = self.steps.take()
            self._apply_world(t, step)
            self.pending.append((t, step))
        if self.pending:
            self._send(0)
        self._arm()
        sim.on_tick = self.on_tick
        try:
            while True:
                try:
                    self.fw.run()
                except _Reboot:
                    self._reboot()
                    continue
                break
        except _Stop:
            pass
        finally:
            sim.safe()
            self.fw.shutdown(self.flush_ms)
            if self.own_dir:
                _remove_tree(sim.data_dir)
        return self.summary()

    def _reboot(self):
        """The board was reset: a record says so, and the firmware starts again."""
        print(json.dumps({"t": (self.prev - self.t0) / 1000, "reset": self.resets}))
        self.fw = Firmware(self.sim, self.cfg)
        self.ch = self.fw.charger
        if self.energy:
            self.fw.on_event = self._on_fw_event

    def summary(self):
        wall_us = time.ticks_diff(time.ticks_us(), self.wall0_us)
        end = self.prev - self.t0
        if self.need_open_ms >= 0:  # required but never opened: a finding, not a pass
            self.opens.append(
                {
                    "t": None,
                    "cause": self.need_open_cause,
                    "ms": end - self.need_open_ms,
                    "unfinished": True,
                }
            )
        open_max = None
        for o in self.opens:
            if o["ms"] is not None and (open_max is None or o["ms"] > open_max):
                open_max = o["ms"]
        close_max = None
        for c in self.closes:
            if c["ms"] is not None and (close_max is None or c["ms"] > close_max):
                close_max = c["ms"]
        sim = self.sim
        stalls = sim.costs.stalls if sim.costs is not None else []
        return {
            "opens": self.opens,
            "closes": self.closes,
            "unsafe_closes": sum(1 for c in self.closes if c["cause"] == "unsafe"),
            "open_max_ms": open_max,
            "close_max_ms": close_max,
            "profile": sim.profile_name,
            "stalls": [{"t": (at - self.t0) / 1000, "kind": k, "ms": us / 1000, "energized": e}
                       for at, k, us, e in stalls[:_STALLS_LISTED]],
            "energized_erases": sum(1 for s in stalls if s[3] and s[1].startswith("erase")),
            "stall_count": len(stalls),
            "sim_seconds": self.end_ms / 1000,
            "wall_seconds": wall_us / 1000000,
            "ticks": self.fw.ticks,
            "records": self.records,
            "energy": self.energy_summary() if self.energy else None,
        }


_USAGE = (
    "usage: micropython -m sim.scenario SCENARIO.json [--realtime] [--hold] [--seed N]"
    " [--data DIR] [--broker HOST:PORT] [--id ID] [--profile ideal|esp32]"
    " [--ocpp ws://HOST:PORT/ID]"
)


def main(argv):
    path = None
    seed = None
    realtime = False
    hold = False
    data_dir = None
    mqtt = {}
    profile = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--realtime":
            realtime = True
        elif a == "--hold":
            hold = True
        elif a == "--ocpp" and i + 1 < len(argv):
            i += 1
            mqtt["ocpp_url"] = argv[i]  # config overrides, like --broker
        elif a in ("--seed", "--data", "--broker", "--id", "--profile") and i + 1 < len(argv):
            i += 1
            v = argv[i]
            if a == "--seed":
                seed = int(v)
            elif a == "--data":
                data_dir = v
            elif a == "--id":
                mqtt["id"] = v
            elif a == "--profile":
                profile = v
            else:
                host, _, port = v.rpartition(":")
                mqtt["mqtt_host"] = host
                mqtt["mqtt_port"] = int(port)
        elif path is None and not a.startswith("--"):
            path = a
        else:
            print(_USAGE)
            sys.exit(2)
        i += 1
    if path is None:
        print(_USAGE)
        sys.exit(2)
    with open(path) as f:
        scenario = json.load(f)
    summary = Runner(scenario, seed, realtime, data_dir, mqtt, profile=profile, hold=hold).run()
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main(sys.argv[1:])
