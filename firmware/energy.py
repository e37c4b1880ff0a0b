"""Energy management: the house's main fuse, solar surplus, phase switching.

Owns the load-management limit (`limit_ma`, one more minimum for
firmware/limits.py), its reason (`mains`, `solar`, `stale`, `phase_switch`),
the solar start/stop timers and the choice of 1 or 3 phases. Inputs are the
grid current per phase (house + charger - solar, signed: negative is export)
from a meter on MQTT or the board's own mains CTs, and the charger's own
measured current per phase. Pure integer arithmetic in mA and ms; never talks
to the board, never moves a relay: the app asks the charger to switch phases
only when this module wants it and the charger finds the pilot and contactor
safe (firmware/charger.py switch_phases()).

Modes:
- `normal`: no limit from here.
- `smart`: stay under `mains_max_a` on every phase (and `mains_total_a` summed
  over the phases, when set). A rise in house load cuts the offer at the
  next reading; increases are smoothed (RAISE_STEP_MA per STEP_MS).
- `solar`: charge from the surplus (export), plus `solar_import_a` allowed
  from the grid; start when the surplus reaches `solar_start_a`, hold the
  minimum for SOLAR_HOLD_MS after a start, stop after `solar_stop_min` of
  shortfall at the minimum, never restart within `solar_pause_min`. The
  smart limits apply as well.
A reading older than `mains_stale_s` is stale (not in normal mode): the limit
falls back to `mains_stale_a` (0: pause) until fresh readings come back.

Allocates nothing in step() (it runs from the loop); events (stale/fresh, solar
start/stop, phase switch) are left as bits in `event` for the app to report.
"""

from micropython import const

from firmware.config import MODES
from firmware.iec61851 import MIN_OFFER_MA
from firmware.limits import NO_LIMIT_MA

STEP_MS = const(2000)  # the control period of the load manager on fresh readings
RAISE_STEP_MA = const(2000)  # increases per step at most (decreases apply at once)
SOLAR_HOLD_MS = const(60000)  # after a solar start: hold the minimum this long
# Phase switching (solar mode, boards with a phase relay). 3 -> 1 when three
# phases at the minimum cannot be carried for PHASE_DOWN_MS; 1 -> 3 when the
# surplus carries 3 x (6 A + PHASE_UP_MARGIN_MA) for PHASE_UP_MS; never more
# often than PHASE_MIN_GAP_MS. The switch itself waits PHASE_SAFE_MS with
# the pilot steady and the contactor open (current practice: >= 10 s, so the
# EV sees a clean restart).
PHASE_DOWN_MS = const(120000)
PHASE_UP_MS = const(300000)
PHASE_UP_MARGIN_MA = const(1000)
PHASE_MIN_GAP_MS = const(900000)
PHASE_SAFE_MS = const(10000)
_READING_MAX_MA = const(1000000)  # |reading| above 1000 A per phase is not a house
_READING_MAX_A = const(1000)
MAINS_PAYLOAD_MAX = const(128)  # bytes of a mains topic payload

# Event bits left in `event` by step() (0: none).
EV_STALE = const(1)
EV_FRESH = const(2)
EV_SOLAR_START = const(4)
EV_SOLAR_STOP = const(8)
EV_PHASES = const(16)  # a phase switch is due: the app asks the charger
EVENT_NAMES = ((EV_STALE, "mains_stale"), (EV_FRESH, "mains_ok"), (EV_SOLAR_START, "solar_start"),
               (EV_SOLAR_STOP, "solar_stop"), (EV_PHASES, "phase_switch"))


class Energy:
    def __init__(self, cfg, ticks_diff, phases, can_switch):
        self.ticks_diff = ticks_diff  # the HAL's, for every time difference
        self.mode = cfg["mode"]
        self.mains_max_ma = int(cfg["mains_max_a"] * 1000)
        self.mains_total_ma = int(cfg["mains_total_a"] * 1000)  # 0: no total limit
        self.stale_ms = cfg["mains_stale_s"] * 1000
        self.stale_ma = int(cfg["mains_stale_a"] * 1000)  # 0: pause while stale
        self.start_ma = int(cfg["solar_start_a"] * 1000)
        self.stop_ms = cfg["solar_stop_min"] * 60000
        self.import_ma = int(cfg["solar_import_a"] * 1000)
        self.pause_ms = cfg["solar_pause_min"] * 60000
        self.can_switch = can_switch  # the board has a phase relay
        self.max_phases = phases
        self.phases = phases  # phases the charger supplies now
        self.want_phases = phases
        # The latest reading: grid mA per phase (signed), its time, valid flag.
        self.grid_ma = [0, 0, 0]
        self.have_reading = False
        self.reading_ms = 0
        self.fresh = False
        self._stale_said = False
        # Output.
        self.limit_ma = NO_LIMIT_MA
        self.reason = None
        self.event = 0
        # Timers and solar state.
        self._step_ms = 0
        self._stepped = False
        self.solar_on = False  # solar mode: charging from surplus now
        self._solar_since = 0  # when solar_on last changed
        self._stopped_once = False  # a solar stop happened: the pause applies
        self._short_since = 0  # shortfall at the minimum since (valid when _short)
        self._short = False
        self._up_since = 0
        self._up = False
        self._down_since = 0
        self._down = False
        self._last_switch_ms = 0
        self._switched_once = False
        self.switching = False  # waiting for a safe moment to move the relay
        self.surplus_ma = 0  # for status: what the EV could take from solar now

    # --- inputs -------------------------------------------------------------------
    def set_mode(self, mode):
        if mode not in MODES:
            return "mode must be normal, smart or solar"
        if mode != self.mode:
            self.mode = mode
            self.solar_on = False
            self._short = False
            self._stepped = False  # decide at the next step, not 2 s later
        return None

    def set_limit(self, name, ma):
        """A run-time change of mains_max_a or solar_import_a (mA, already
        range-checked by firmware/commands.py)."""
        if name == "mains_max_a":
            self.mains_max_ma = ma
        elif name == "solar_import_a":
            self.import_ma = ma
        else:
            return "unknown setting"
        self._stepped = False  # decide again at the next step
        return None

    def feed(self, now, l1, l2, l3):
        """A grid reading in mA per phase (signed, negative = export). Returns
        None or an error text; a bad reading is ignored."""
        if not (_valid(l1) and _valid(l2) and _valid(l3)):
            return "mains reading out of range"
        g = self.grid_ma
        g[0] = l1
        g[1] = l2
        g[2] = l3
        self.have_reading = True
        self.reading_ms = now
        self._stepped = False  # a fresh reading is looked at in the next step
        return None

    def age_ms(self, now):
        """Age of the latest reading in ms, or -1 when there was none."""
        if not self.have_reading:
            return -1
        return self.ticks_diff(now, self.reading_ms)

    # --- the decision -----------------------------------------------------------------
    def step(self, now, ev_ma, connected):
        """Update limit_ma and reason from the latest reading. ev_ma: the
        charger's measured current per phase (mA); connected: an EV is plugged
        in. Call every tick or so: it works only when a reading arrived or
        STEP_MS passed. Leaves what happened as bits in `event`."""
        self.event = 0
        if self.mode == "normal":
            self.limit_ma = NO_LIMIT_MA
            self.reason = None
            self.want_phases = self.max_phases
            self._phase_request(now)
            self._hold_for_switch()
            return
        periodic = self.ticks_diff(now, self._step_ms) >= STEP_MS
        due = not self._stepped or periodic
        fresh = self.have_reading and self.ticks_diff(now, self.reading_ms) <= self.stale_ms
        if fresh != self.fresh:
            self.fresh = fresh
            if not fresh:
                self.event |= EV_STALE
                self._stale_said = True
            elif self._stale_said:
                self.event |= EV_FRESH
                self._stale_said = False
            due = True
        if not due:
            return
        self._stepped = True
        if not fresh:
            self.limit_ma = self.stale_ma
            self.reason = "stale"
            self.solar_on = False
            self._short = False
            self._hold_for_switch()
            return
        n = self.phases
        g = self.grid_ma
        # The house alone per phase (grid minus what this charger draws), and
        # the headroom under the main fuse on the phases the EV uses.
        head = NO_LIMIT_MA
        house_sum = 0
        ev_sum = 0
        for p in range(3):
            e = ev_ma[p] if p < n else 0
            house = g[p] - e
            house_sum += house
            ev_sum += e
            if p < n:
                h = self.mains_max_ma - house
                if h < head:
                    head = h
        if self.mains_total_ma:
            t = (self.mains_total_ma - house_sum) // n
            if t < head:
                head = t
        target = head
        reason = "mains"
        if self.mode == "solar":
            # What the EV could take without importing more than allowed:
            # the export the house leaves (house_sum negative when exporting),
            # spread over the phases it charges on.
            surplus = -house_sum + self.import_ma
            self.surplus_ma = surplus
            s = self._solar(now, surplus, connected, ev_sum)
            if s < target:
                target = s
                reason = "solar"
        if target < MIN_OFFER_MA:
            target = 0
        cur = self.limit_ma
        if target > cur and cur != 0 and cur != NO_LIMIT_MA:
            # Increases: RAISE_STEP_MA at most, once per STEP_MS (a reading
            # that shows more room between two steps changes nothing).
            if not periodic:
                target = cur
            elif cur + RAISE_STEP_MA < target:
                target = cur + RAISE_STEP_MA
        if target != cur or periodic:
            self._step_ms = now
        self.limit_ma = target
        self.reason = reason
        self._hold_for_switch()

    def _hold_for_switch(self):
        """While a phase switch is due, the EV is paused (pilot steady) until
        the charger has moved the relay."""
        if self.switching:
            self.limit_ma = 0
            self.reason = "phase_switch"

    def _solar(self, now, surplus, connected, ev_sum):
        """The solar limit per phase (mA, 0 = paused); runs the start/stop
        timers and the phase choice."""
        n = self.phases
        per_phase = surplus // n
        if not self.solar_on:
            self._short = False
            if (
                connected
                and surplus >= self.start_ma
                and (not self._stopped_once or self.ticks_diff(now, self._solar_since) >= self.pause_ms)
            ):
                self.solar_on = True
                self._solar_since = now
                self.event |= EV_SOLAR_START
                self._choose_phases(now, surplus, True)
                return MIN_OFFER_MA
            self._choose_phases(now, surplus, False)
            return 0
        if not connected:
            self.solar_on = False
            self._solar_since = now
            return 0
        if self.ticks_diff(now, self._solar_since) < SOLAR_HOLD_MS:
            return MIN_OFFER_MA
        self._choose_phases(now, surplus, False)
        if per_phase >= MIN_OFFER_MA:
            self._short = False
            return per_phase
        # Shortfall: hold the minimum (importing) until it has lasted too long.
        if not self._short:
            self._short = True
            self._short_since = now
        elif self.ticks_diff(now, self._short_since) >= self.stop_ms:
            self.solar_on = False
            self._short = False
            self._stopped_once = True
            self._solar_since = now
            self.event |= EV_SOLAR_STOP
            return 0
        return MIN_OFFER_MA

    # --- phases ----------------------------------------------------------------------------
    def _choose_phases(self, now, surplus, starting):
        """Solar mode with a phase relay: 1 phase when the surplus cannot carry
        three at the minimum, 3 when it carries them with a margin; timers
        and a minimum gap keep it from flapping. At a start the choice is
        made at once (nothing flows yet)."""
        if not self.can_switch or self.max_phases < 3:
            return
        three_ok = surplus >= 3 * (MIN_OFFER_MA + PHASE_UP_MARGIN_MA)
        three_short = surplus < 3 * MIN_OFFER_MA
        n = self.phases
        if starting:
            self.want_phases = 3 if three_ok else 1
            self._phase_request(now)
            return
        gap_ok = not self._switched_once or self.ticks_diff(now, self._last_switch_ms) >= PHASE_MIN_GAP_MS
        if n == 3 and three_short:
            if not self._down:
                self._down = True
                self._down_since = now
            elif gap_ok and self.ticks_diff(now, self._down_since) >= PHASE_DOWN_MS:
                self.want_phases = 1
        else:
            self._down = False
        if n == 1 and three_ok:
            if not self._up:
                self._up = True
                self._up_since = now
            elif gap_ok and self.ticks_diff(now, self._up_since) >= PHASE_UP_MS:
                self.want_phases = 3
        else:
            self._up = False
        self._phase_request(now)

    def _phase_request(self, now):
        want = self.want_phases
        if not self.can_switch or want == self.phases:
            self.switching = False
            return
        if not self.switching:
            self.switching = True  # pause first: the pilot goes steady, the EV opens S2
            self.event |= EV_PHASES

    def switched(self, now, n):
        """The charger moved the relay to n phases."""
        self.phases = n
        self.switching = False
        self._last_switch_ms = now
        self._switched_once = True
        self._down = False
        self._up = False
        self._stepped = False
        self.limit_ma = 0
        if self.solar_on:
            self._solar_since = now  # hold the minimum again after the restart


def _valid(v):
    return isinstance(v, int) and -_READING_MAX_MA <= v <= _READING_MAX_MA


def parse_mains(payload):
    """The mains topic's payload (docs/energy.md): a JSON object of the grid
    current per phase in A, signed (negative: export), e.g.
    {"l1": 12.3, "l2": 8.1, "l3": -10.0}; l2/l3 may be left out (a
    single-phase house). Returns ((l1, l2, l3) in mA, None) or (None, error).
    Never raises."""
    import json

    if not isinstance(payload, (bytes, bytearray, str)) or len(payload) > MAINS_PAYLOAD_MAX:
        return None, "mains payload must be a JSON object of at most %d bytes" % MAINS_PAYLOAD_MAX
    try:
        d = json.loads(payload)
    except (ValueError, TypeError, UnicodeError, MemoryError, RuntimeError):
        return None, "mains payload is not valid JSON"
    if not isinstance(d, dict) or "l1" not in d:
        return None, 'mains payload must be an object with "l1" (and "l2", "l3") in A'
    out = [0, 0, 0]
    for i, key in enumerate(("l1", "l2", "l3")):
        v = d.get(key, 0)
        if v is True or v is False or not isinstance(v, (int, float)) or v != v:
            return None, "mains %s must be a number of amperes" % key
        if not -_READING_MAX_A <= v <= _READING_MAX_A:
            return None, "mains %s must be within -1000..1000 A" % key
        out[i] = int(round(v * 1000))
    return (out[0], out[1], out[2]), None

