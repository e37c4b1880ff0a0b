"""The simulated EV: the vehicle at the end of the cable, somebody else's device.

What it does, as IEC 61851-1 has a vehicle do it (shared/iec61851.md):

- its state: A unplugged, B plugged and not wanting energy, C wanting energy,
  D wanting energy with ventilation (set by a test or a scenario step);
- its side of the pilot circuit (load_mohm): the diode (0.7 V) and the
  resistors, 2740 Ohm whenever plugged, plus 1300 Ohm (C) or 270 Ohm (D) in
  parallel while S2 is closed;
- it decodes the PWM duty itself (ev_offer_ma: the formula here is the EV's,
  not the firmware's), closes S2 a seeded 100-500 ms after it reads an offer
  in C or D and opens it 1-2.5 s after the offer went (x1), at once when it
  leaves C/D;
- it draws current on its phases while the contacts and S2 are closed,
  following the offer after a seeded reaction time (or not: obeys False) and
  ramping to it at its rates.

The board (sim/board.py) owns the pilot, the contactor, the supply and the
clock: it tells the EV what it reads and whether it is powered (update), and
turns the current into the truth energy. The seeded times come from the
board's PRNG (`rand`), shared with the board's other seeded delays, so a seed
replays the same run. Small ints only; nothing allocates.
"""

from micropython import const

_NEVER = const(1 << 60)  # a due time that never comes (sim/board.py's)

# --- the EV's side of the pilot circuit (shared/iec61851.md: vehicle table) ---
EV_DIODE_MV = const(700)  # forward drop of the EV's diode
EV_R_B_OHM = const(2740)  # always present when connected
EV_R_C_OHM = const(1300)  # in parallel when S2 closes in state C
EV_R_D_OHM = const(270)  # in parallel when S2 closes in state D
# R_B || R_C and R_B || R_D in milliohm, floored: R_B * 1000 * r2 // (R_B + r2)
# (the product is no small int on a 32-bit port; tests/device/test_sim.py checks them)
R_BC_MOHM = const(881683)
R_BD_MOHM = const(245780)

# --- timing (seeded ranges) ----------------------------------------------------
_S2_CLOSE_MS = (100, 500)  # from "PWM with an offer" to S2 closed
_S2_OPEN_MS = (1000, 2500)  # from x1 to S2 open (IEC: within 3 s)
_REACT_MS = (200, 1000)  # from an offer change to the start of the ramp
_STOP_REACT_MS = (100, 300)  # from x1 to the start of the ramp down
_RAMP_STEP_MS = const(10)  # world update period while the current ramps


def ev_offer_ma(duty_pm):
    """The current an EV reads from a PWM duty in per mille (the EV's own
    decoding of the IEC 61851-1 duty table in shared/iec61851.md)."""
    if duty_pm < 80 or duty_pm > 970:
        return 0  # < 8 %: none or digital communication; > 97 %: not allowed
    if duty_pm < 100:
        return 6000
    if duty_pm <= 850:
        return duty_pm * 60  # I = D[%] * 0.6 A
    if duty_pm <= 960:
        return (duty_pm - 640) * 250  # I = (D[%] - 64) * 2.5 A
    return 80000


def state_seen(high_mv):
    """A..F from the pilot's high level in mV (what the EV's own detector reads)."""
    if high_mv > 10500:
        return "A"
    if high_mv > 7500:
        return "B"
    if high_mv > 4500:
        return "C"
    if high_mv > 1500:
        return "D"
    if high_mv > -1500:
        return "E"
    return "F"


class SimEV:
    """One EV (module docstring). rand((lo, hi)): the board's seeded draw in
    lo..hi. Plain attributes a board reads: state, s2_closed, s2_ms (the
    board's now_ms of S2's last move), s2_due, i_ma (the current on each
    phase it draws), phases; and may set between updates: draw_ma (what it
    wants per phase), phases (1 or 3), obeys, up_ma_s / down_ma_s / stop_ma_s
    (ramp rates: up, down to a lower offer, down after x1)."""

    def __init__(self, rand, draw_a=16, phases=3, obeys=True):
        self._rand = rand
        self.state = "A"
        self.s2_closed = False
        self.s2_ms = -1
        self.s2_due = _NEVER
        self.draw_ma = int(draw_a * 1000)
        self.phases = phases
        self.obeys = obeys  # False: draws what it wants whatever the pilot says
        self.up_ma_s = 20000
        self.down_ma_s = 20000
        self.stop_ma_s = 64000  # ramp down after x1 (stops within ~1 s)
        self.i_ma = 0
        self._i_goal = 0
        self._react_due = _NEVER
        self._ramp_ms = 0

    def set_state(self, x, now):
        """A, B, C or D at now (ms). Leaving C/D opens S2 and stops the
        current at once; in C/D the EV closes S2 itself when it sees an offer."""
        if x not in ("A", "B", "C", "D"):
            raise ValueError("EV state must be A, B, C or D: " + str(x))
        self.state = x
        if x in ("A", "B"):
            if self.s2_closed:
                self.s2_ms = now
            self.s2_closed = False
            self.s2_due = _NEVER
            self.i_ma = 0

    def load_mohm(self):
        """The resistance the EV puts on the pilot behind its diode, milliohm;
        0 when unplugged."""
        if self.state == "A":
            return 0
        if self.s2_closed:
            return R_BD_MOHM if self.state == "D" else R_BC_MOHM
        return EV_R_B_OHM * 1000

    def update(self, now, offer, powered):
        """The EV at now (ms), reading an offer of `offer` mA (0: none) with
        the contacts closed (`powered`) or open: S2 and the current move as
        they are due. Returns when it next changes by itself (ms)."""
        if self.state in ("C", "D"):
            want = offer >= 6000 or (self.s2_closed and not self.obeys)
        else:
            want = False
        if want != self.s2_closed:
            if self.s2_due == _NEVER:
                self.s2_due = now + self._rand(_S2_CLOSE_MS if want else _S2_OPEN_MS)
            if self.s2_due <= now:
                self.s2_due = _NEVER
                self.s2_closed = want
                self.s2_ms = now
        else:
            self.s2_due = _NEVER
        nxt = self.s2_due
        if powered and self.s2_closed:
            goal = self.draw_ma
            if self.obeys:
                goal = min(goal, offer) if offer >= 6000 else 0
            if goal != self._i_goal:
                self._i_goal = goal
                self._react_due = now + self._rand(_STOP_REACT_MS if offer == 0 else _REACT_MS)
                self._ramp_ms = self._react_due
            i = self.i_ma
            if i != goal:
                if self._react_due <= now:
                    rate = self.up_ma_s if goal > i else self.stop_ma_s if offer == 0 else self.down_ma_s
                    d = rate * (now - self._ramp_ms) // 1000
                    self._ramp_ms = now
                    self.i_ma = min(goal, i + d) if goal > i else max(goal, i - d)
                    nxt = min(nxt, now + _RAMP_STEP_MS)
                else:
                    nxt = min(nxt, self._react_due)
        else:
            self._i_goal = 0
            self._react_due = _NEVER
            self.i_ma = 0
        return nxt
