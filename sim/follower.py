"""The simulated EV of the emulated board follows a scenario: the bench check
of `tools/rig.py run SCENARIO --port PORT --sim-ev` without a real rig.

On a real bench the operator flips the EV simulator's switches when the rig
announces a step. On the emulated board (tools/simboard.py, main.py's sim
branch) nobody can, so the board applies the scenario's world steps to its own
SimBoard, in its own clock: step times count from the moment follow() is
called, which is also when the firmware's bench trace starts (no virtual time
passes between building the board and the Firmware). With `realtime=True`
(main.py) that clock keeps pace with the wall clock, so the rig on the other
end of the serial line sees the steps happen when it announces them.

What it applies: the world actions (ev, draw_a, ev_obeys, ev_phases, pp_ohm,
fault, temp_c) through sim/steps.py's apply_world(), and the `set` remote
commands through Firmware.command() (sim/steps.py's send_commands(), the
same path as MQTT), each answer printed as a trace line
`TRACE {"t", "command", "payload", "ok", "error"}`. The rig removes `set`
steps from the uploaded file when it sends them over MQTT itself (--broker).
A step is applied just before the firmware's tick at its time, as in
sim/scenario.py; steps at t = 0 before the first tick (their `set` commands at
the first tick: the Firmware does not exist yet).

Owns: the emulated board's step timing (the clock origin, commands that wait
for the Firmware). Never reaches into the firmware:
world changes go to the SimBoard, commands through Firmware.command().
Runs only on the unix port (the SimBoard does).
"""

import json

from firmware.facts import TRACE_PREFIX
from sim.steps import StepClock, apply_world, send_commands


class Follower:
    def __init__(self, sim, scenario, get_fw):
        self.sim = sim
        self.get_fw = get_fw  # callable: the running Firmware (None before it exists)
        self.steps = StepClock(scenario)
        self.t0 = sim.now_ms
        self.pending = []  # steps whose `set` waits for the Firmware
        self.applied = 0
        while self.steps.next_ms <= 0:  # the world the first tick sees
            self._step(0, self.steps.take())

    def _step(self, t, step):
        apply_world(self.sim, step)
        if "set" in step:
            self.pending.append(step)
        self._flush(t)
        self.applied += 1

    def _flush(self, t):
        if not self.pending:
            return
        fw = self.get_fw()
        if fw is None:
            return
        for step in self.pending:
            for line in send_commands(fw, step, t):
                print(TRACE_PREFIX + line)
        self.pending = []

    def on_tick(self, sim):
        """SimBoard.on_tick: after each wait_tick, apply the steps now due."""
        now = sim.now_ms - self.t0
        self._flush(now)
        while self.steps.next_ms <= now:
            self._step(now, self.steps.take())


def follow(sim, path, get_fw):
    """If the scenario file `path` exists, make `sim` follow its steps from
    now (installs SimBoard.on_tick) and return the Follower; else None.
    get_fw: callable returning the running Firmware or None."""
    try:
        with open(path) as f:
            scenario = json.load(f)
    except OSError:
        return None  # no file: an ordinary emulated board
    except ValueError:
        print("simrig: %s is not valid JSON: ignored" % path)
        return None
    follower = Follower(sim, scenario, get_fw)
    sim.on_tick = follower.on_tick
    print("simrig: following %s (%d steps)" % (path, len(follower.steps)))
    return follower
