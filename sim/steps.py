"""A scenario's steps as the simulation and the host rig both read them
(docs/scenarios.md): the world faults a step may inject, the text a `set`
value is sent as, the step clock that hands out the steps as their time comes,
and applying a step's world actions and remote commands.

Plain Python for both interpreters: the scenario runner (sim/scenario.py) and
the emulated board's EV (sim/follower.py) on the unix port, and the rig
(tools/evrig/) on CPython, which validates scenarios against these names and
announces the steps by this clock. Never touches the firmware's internals:
world changes go to the simulated board, commands through Firmware.command().
"""

import json

# The faults of the simulated world (sim/board.py injects them); a step's
# "fault" is one of these or "none" (clears them all).
FAULTS = ("cp_short", "diode_short", "pe_open", "rcd_trip", "weld", "rcd_dead", "stuck_adc")

_NEVER = 1 << 60  # a step time that never comes (unix port: still a small int)


def ms(seconds):
    """A step time (s) in whole ms."""
    return int(seconds * 1000 + 0.5)


def payload(value):
    """The plain MQTT payload text of a step's `set` value."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


class StepClock:
    """A scenario's steps in time order: `next_ms` is the time (ms since the
    start) of the next one, `take()` hands it out. The caller decides what
    "now" is (simulated ticks, the board's clock) and takes every step with
    next_ms <= now."""

    def __init__(self, scenario):
        self._steps = scenario.get("steps") or ()
        self._i = 0
        self.next_ms = ms(self._steps[0]["t"]) if self._steps else _NEVER

    def __len__(self):
        return len(self._steps)

    def done(self):
        return self._i >= len(self._steps)

    def take(self):
        """The next step; the clock moves on to the one after it."""
        step = self._steps[self._i]
        self._i += 1
        self.next_ms = ms(self._steps[self._i]["t"]) if self._i < len(self._steps) else _NEVER
        return step


def apply_world(sim, step):
    """Apply a step's world actions (ev, draw_a, ev_obeys, ev_phases, pp_ohm,
    fault, temp_c, house_a, pv_a, clock) to the simulated board `sim`. `set`, `expect`, `note` and
    `t` are left alone."""
    for key in step:
        v = step[key]
        if key == "ev":
            sim.set_ev(v)
        elif key == "draw_a":
            sim.ev_draw_a = v
        elif key == "ev_obeys":
            sim.ev_obeys = v
        elif key == "ev_phases":
            sim.ev_phases = v
        elif key == "pp_ohm":
            sim.set_pp(v)
        elif key == "fault":
            sim.set_fault(v)
        elif key == "temp_c":
            sim.set_temp_c(v)
        elif key == "house_a":
            sim.set_house_a(v)
        elif key == "pv_a":
            sim.set_pv_a(v)
        elif key == "clock":
            sim.set_wall_time(v)  # as NTP would: the board's wall clock, UTC seconds


def send_commands(fw, step, t_ms):
    """Send a step's `set` commands through fw.command(), exactly like MQTT.
    Returns one JSON line per command ({"t", "command", "payload", "ok",
    "error"}, and "note" when the ack has one), in order; empty when the step has none."""
    lines = []
    cmds = step.get("set")
    if cmds:
        for name in cmds:
            text = payload(cmds[name])
            ok, err = fw.command(name, text)
            line = {"t": t_ms / 1000, "command": name, "payload": text, "ok": ok, "error": err}
            if fw.command_note is not None:
                line["note"] = fw.command_note
            lines.append(json.dumps(line))
    return lines
