"""The IEC 61851-1 charging state machine: the one place that decides when
energy may flow.

Owns: the states A1..D2, E and F, the contactor decision, the PWM offer, the
fault policy (hold F >= 300 ms, counted retries with back-off, then a latched
fault), the RCD self-test before each session, overcurrent supervision, the
authorization gate and the session boundaries (as events for the app).

The contactor is closed only in C (or D with ventilation allowed) with PWM on,
no fault, the RCD self-test passed and the offer within every limit. When the
PWM goes off (x1) while the EV stays in C it may stay closed until the EV opens
S2, X1_OPEN_AFTER_MS at most. Anything that ends the right to energy opens it
in the same tick it is seen.

tick() runs every TICK_MS, never blocks and allocates nothing in steady
state; it reaches the board only through the HAL object it is given.
"""

from micropython import const

from firmware import iec61851 as iec
from firmware.contactor import Contactor
from firmware.facts import STATES, TICK_MS
from firmware.limits import Limits
from firmware.pilot import DIODE_DUTY_MAX_PM, Pilot

# HAL constants (hal/contract.py), repeated as consts so the tick does not look them up.
_PILOT_PLUS12 = const(1)
_PILOT_MINUS12 = const(-1)
_UNKNOWN = const(-1)
_NO_TEMP = const(-32768)

# Overcurrent: an EV drawing more than offer + max(1 A, 10 %) for this long is
# stopped. The EV has EV_ADAPT_MS (5 s) to follow a lower offer; 6 s gives it
# that and a margin, within the "~5-7 s" of common practice.
OVERCURRENT_MS = const(6000)
OVERCURRENT_MARGIN_MA = const(1000)

# RCD self-test: the module must trip within RCD_TEST_TRIP_MS of the test
# current and release within RCD_TEST_RELEASE_MS after it stops.
RCD_TEST_TRIP_MS = const(150)
RCD_TEST_RELEASE_MS = const(150)

# Fault retry back-off: hold F for F_HOLD_MIN_MS << (2 * (n - 1)) on the n-th
# fault in a row (0.3 s, 1.2 s, 4.8 s, 19.2 s ...), capped.
FAULT_HOLD_MAX_MS = const(60000)
# A fault count goes back to zero after this long without a fault.
FAULT_FORGET_MS = const(600000)
# While latched, look at the pilot for LATCH_PROBE_MS every LATCH_PROBE_EVERY_MS
# (+12 V instead of -12 V) to see whether the EV was unplugged.
LATCH_PROBE_EVERY_MS = const(2000)
LATCH_PROBE_MS = const(40)

# Faults that never clear by themselves (a retry cannot help).
_LATCHING = ("weld", "relay_fail")

# Event kinds (pop_event() -> (kind, arg)).
EV_SESSION_START = const(1)  # arg: authorization tag or None
EV_SESSION_END = const(2)  # arg: reason ("ev_unplugged", "ev_stopped", "remote_stop", "fault:<code>")
EV_FAULT = const(3)  # arg: fault code
EV_FAULT_CLEARED = const(4)  # arg: fault code
EV_LATCHED = const(5)  # arg: fault code
_EVENT_SLOTS = const(16)

# State names (firmware/facts.py) indexed by pilot state * 2 + (1 if PWM on
# else 0): an invalid reading and A without PWM are A1, E and F have one name each.
_NAMES = (STATES[0],) * 3 + STATES[1:8] + (STATES[8],) * 2 + (STATES[9],) * 2

# RCD self-test phases.
_RCD_IDLE = const(0)
_RCD_TRIP = const(1)
_RCD_RELEASE = const(2)


class Charger:
    def __init__(self, hal, cfg, meter=None):
        self.hal = hal
        self.cfg = cfg
        self.meter = meter
        self.vent_allowed = cfg["vent_allowed"]
        self.require_auth = cfg["require_auth"]
        self.auto_reclose = cfg["auto_reclose"]
        self.fault_retries = cfg["fault_retries"]
        self.use_rcd_test = cfg["rcd_selftest"]
        self.use_pe_check = cfg["pe_check"]
        self.pilot = Pilot()
        self.limits = Limits(cfg)
        now = hal.ticks_ms()
        hal.pilot_steady(_PILOT_PLUS12)
        self.contactor = Contactor(hal)
        # What the outside reads.
        self.state = _NAMES[0]
        self.fault = None
        self.latched = False
        self.offer_ma = 0
        self.duty_pm = 0
        self.contactor_on = False
        self.pilot_mv = 0
        self.temp_dc = _NO_TEMP
        self.enabled = cfg["enabled"]
        self.inhibit = False  # set by the app: no new session (e.g. the journal is full)
        self.reserved = False  # set by OCPP while a reservation holds the connector: no session without a card
        self.auth_tag = None
        self.session_active = False
        # Internal.
        self._steady_level = _PILOT_PLUS12
        self._connected = False
        self._authorized = not self.require_auth
        self._stopped = False  # remote stop: no energy until unplug or authorize
        self._vent_block = False  # D without ventilation seen: no energy until unplug
        self._ev_stopped = False  # the EV left C by itself while offered energy
        self._pwm_changed_ms = now
        self._x1_since = now
        self._oc_since = now
        self._oc_active = False
        self._rcd_ok = False
        self._rcd_phase = _RCD_IDLE
        self._rcd_since = now
        self._fault_since = now
        self._fault_hold_ms = 0
        self._fault_n = 0
        self._last_fault_ms = now
        self._probe_since = now
        self._probing = False
        self._ev_kind = [0] * _EVENT_SLOTS
        self._ev_arg = [None] * _EVENT_SLOTS
        self._ev_head = 0
        # Read-only outside: how many events pop_event() will return (0 in most
        # ticks, so the app checks it without a call before draining).
        self.events_pending = 0

    # --- events (drained by the app after each tick) --------------------------
    def _event(self, kind, arg):
        if self.events_pending == _EVENT_SLOTS:  # full: drop the oldest, keep the newest
            self._ev_head = (self._ev_head + 1) % _EVENT_SLOTS
            self.events_pending -= 1
        i = (self._ev_head + self.events_pending) % _EVENT_SLOTS
        self._ev_kind[i] = kind
        self._ev_arg[i] = arg
        self.events_pending += 1

    def pop_event(self):
        if self.events_pending == 0:
            return None
        i = self._ev_head
        self._ev_head = (i + 1) % _EVENT_SLOTS
        self.events_pending -= 1
        return self._ev_kind[i], self._ev_arg[i]

    # --- outputs ----------------------------------------------------------------
    def _steady(self, level, now):
        if self.duty_pm != 0 or self._steady_level != level:
            if self.duty_pm != 0:
                self._x1_since = now
            self.hal.pilot_steady(level)
            self._steady_level = level
            self.duty_pm = 0
            self._pwm_changed_ms = now

    def _pwm(self, pm, now):
        if pm != self.duty_pm:
            self.hal.pilot_pwm(pm)
            self.duty_pm = pm
            self._steady_level = 0
            self._pwm_changed_ms = now

    def _open(self, now):
        self.contactor.set(False, now)
        self.contactor_on = False

    # --- sessions -------------------------------------------------------------------
    def _end_session(self, reason):
        if self.session_active:
            self.session_active = False
            self._event(EV_SESSION_END, reason)

    # --- faults -------------------------------------------------------------------
    def _enter_fault(self, code, now):
        self._open(now)  # first, before anything else
        self._steady(_PILOT_MINUS12, now)
        self.offer_ma = 0
        self._rcd_ok = False
        self._rcd_phase = _RCD_IDLE
        self.hal.rcd_test(False)
        if self.hal.ticks_diff(now, self._last_fault_ms) > FAULT_FORGET_MS:
            self._fault_n = 0
        self._fault_n += 1
        self._last_fault_ms = now
        self.fault = code
        self._fault_since = now
        hold = iec.F_HOLD_MIN_MS << (2 * (self._fault_n - 1)) if self._fault_n < 8 else FAULT_HOLD_MAX_MS
        self._fault_hold_ms = hold if hold < FAULT_HOLD_MAX_MS else FAULT_HOLD_MAX_MS
        self.state = _NAMES[iec.P_E * 2] if code == "cp_short" else _NAMES[iec.P_F * 2]
        self._event(EV_FAULT, code)
        if code in _LATCHING or not self.auto_reclose or self._fault_n > self.fault_retries:
            self._latch(now)

    def _latch(self, now):
        self.latched = True
        self._probe_since = now
        self._probing = False
        self._event(EV_LATCHED, self.fault)
        self._end_session("fault:" + self.fault)

    def _clear_fault(self, now):
        code = self.fault
        self.fault = None
        self.latched = False
        self._probing = False
        self.pilot.forget()
        self._steady(_PILOT_PLUS12, now)
        self._x1_since = now
        self._event(EV_FAULT_CLEARED, code)

    def _fault_tick(self, now):
        hal = self.hal
        self._open(now)
        if self.fault != "weld" and self.contactor.check(now) == "weld":
            self.fault = "weld"  # a weld outranks whatever brought us here
            if not self.latched:
                self._latch(now)
        if not self.latched:
            if hal.ticks_diff(now, self._fault_since) >= self._fault_hold_ms:
                self._clear_fault(now)
            return
        # Latched: probe the pilot now and then to see the EV that was there
        # when it latched being unplugged. Without an EV there is no unplug to
        # see: such a fault (a stuck RCD, no PE) waits for a remote clear or
        # a reset instead of clearing and latching again every few seconds.
        if not self._connected:
            return
        if self._probing:
            self.pilot.read(hal, False)
            self.pilot_mv = self.pilot.high_mv
            if self.pilot.state == iec.P_A and self.fault not in _LATCHING:
                self._fault_n = 0
                self._clear_fault(now)
                self._on_unplug()
                return
            if hal.ticks_diff(now, self._probe_since) >= LATCH_PROBE_MS:
                self._probing = False
                self._probe_since = now
                self._steady(_PILOT_MINUS12, now)
        elif hal.ticks_diff(now, self._probe_since) >= LATCH_PROBE_EVERY_MS:
            self._probing = True
            self._probe_since = now
            self.pilot.forget()
            self._steady(_PILOT_PLUS12, now)

    # --- connection --------------------------------------------------------------------
    def _on_plug(self, now):
        # An authorization given before plugging in (a card tapped first) holds.
        self._connected = True
        self._stopped = False
        self._vent_block = False
        self._ev_stopped = False
        self._rcd_ok = False

    def _on_unplug(self):
        self._connected = False
        self._fault_n = 0  # the next EV does not inherit this one's faults
        self._end_session("ev_stopped" if self._ev_stopped else "ev_unplugged")
        self._authorized = not self.require_auth
        self.auth_tag = None
        self._stopped = False
        self._vent_block = False
        self._rcd_ok = False

    def _rcd_selftest(self, now):
        """Advance the RCD self-test; returns a fault code or None."""
        hal = self.hal
        if self._rcd_phase == _RCD_IDLE:
            if hal.rcd_tripped():
                return "rcd_trip"
            hal.rcd_test(True)
            self._rcd_phase = _RCD_TRIP
            self._rcd_since = now
        elif self._rcd_phase == _RCD_TRIP:
            if hal.rcd_tripped():
                hal.rcd_test(False)
                self._rcd_phase = _RCD_RELEASE
                self._rcd_since = now
            elif hal.ticks_diff(now, self._rcd_since) > RCD_TEST_TRIP_MS:
                hal.rcd_test(False)
                self._rcd_phase = _RCD_IDLE
                return "rcd_selftest"
        else:
            if not hal.rcd_tripped():
                self._rcd_phase = _RCD_IDLE
                self._rcd_ok = True
            elif hal.ticks_diff(now, self._rcd_since) > RCD_TEST_RELEASE_MS:
                self._rcd_phase = _RCD_IDLE
                return "rcd_selftest"
        return None

    # --- the tick --------------------------------------------------------------------------
    def tick(self):
        hal = self.hal
        now = hal.ticks_ms()
        if self.fault is not None:
            self._fault_tick(now)
            return
        pwm_on = self.duty_pm != 0
        pilot = self.pilot
        pilot.read(hal, pwm_on)
        self.pilot_mv = pilot.high_mv
        p = pilot.state
        lim = self.limits
        self.temp_dc = hal.temp_dc()
        lim.update_thermal(self.temp_dc, _NO_TEMP)
        lim.set_cable(hal.pp_ohm(), _UNKNOWN)

        # 1. Faults, most severe first. Each opens the contactor in this tick.
        code = self.contactor.check(now)
        if code is None and self._rcd_phase == _RCD_IDLE and hal.rcd_tripped():
            code = "rcd_trip"
        if code is None and self.use_pe_check and hal.pe_ok() == 0:
            code = "pe_open"
        if code is None:
            if p == iec.P_E:
                code = "cp_short"
            elif p == iec.P_F:
                code = "pilot_hw"
            elif not pilot.diode_ok:
                code = "diode"
            elif pilot.invalid_ticks * TICK_MS > iec.FILTER_MAX_MS:
                code = "pilot_invalid"
        meter = self.meter
        if code is None and meter is not None:
            if meter.fault is not None and self.contactor_on:
                code = meter.fault
            elif self.contactor_on and pwm_on:
                limit = self.offer_ma + (self.offer_ma // 10 if self.offer_ma > 10 * OVERCURRENT_MARGIN_MA else OVERCURRENT_MARGIN_MA)
                if meter.max_ma() > limit:
                    if not self._oc_active:
                        self._oc_active = True
                        self._oc_since = now
                    elif hal.ticks_diff(now, self._oc_since) >= OVERCURRENT_MS:
                        code = "overcurrent"
                else:
                    self._oc_active = False
            else:
                self._oc_active = False
        if code is not None:
            self._oc_active = False
            self._enter_fault(code, now)
            return

        # 2. Connection.
        if p == iec.P_A:
            if self._connected:
                self._on_unplug()
        elif p != iec.P_INVALID and not self._connected:
            self._on_plug(now)
        connected = self._connected
        charge_req = p == iec.P_C or p == iec.P_D
        if p == iec.P_D and not self.vent_allowed:
            self._vent_block = True  # until unplugged, or C and D would alternate

        # 3. RCD self-test, before any energy, once per session.
        if connected and not self._rcd_ok and not self.contactor_on:
            if not self.use_rcd_test:
                self._rcd_ok = True
            else:
                code = self._rcd_selftest(now)
                if code is not None:
                    self._enter_fault(code, now)
                    return

        # 4. The offer.
        offer = lim.offer_ma()
        allowed = (
            connected
            and self.enabled
            and self._authorized
            and not self._stopped
            and not self._vent_block
            and self._rcd_ok
            and offer != 0
            and (self.session_active or not self.inhibit)
            and (self.session_active or not self.reserved or self.auth_tag is not None)
        )
        if allowed:
            if not self.session_active:
                self.session_active = True
                self._event(EV_SESSION_START, self.auth_tag)
            pm = iec.duty_pm(offer)
            if pm > DIODE_DUTY_MAX_PM and pilot.diode_pending:
                # The board cannot see this duty's low half and no diode check
                # has passed yet: offer less until one has (firmware/pilot.py).
                pm = DIODE_DUTY_MAX_PM
                offer = iec.offer_ma_for_duty(pm)
            if self.duty_pm == 0 or pm <= self.duty_pm:
                self._pwm(pm, now)  # start, or lower at once
                self.offer_ma = offer
            elif pm != self.duty_pm and hal.ticks_diff(now, self._pwm_changed_ms) >= iec.PWM_CHANGE_MIN_MS:
                self._pwm(pm, now)  # raise at most every 5 s
                self.offer_ma = offer
        else:
            self._steady(_PILOT_PLUS12, now)
            self.offer_ma = 0
        pwm_on = self.duty_pm != 0

        # 5. The contactor.
        if pwm_on and charge_req and (p == iec.P_C or self.vent_allowed):
            # Close only on this tick's reading: valid, taken with PWM on,
            # its diode check passed. Not on a reading with the pilot steady
            # (a retry with S2 still closed would close in the tick the PWM
            # starts, diode unchecked), nor after an invalid one (the state
            # and the diode verdict are then older than this tick).
            if not self.contactor_on and pilot.diode_checked:
                self.contactor.set(True, now)
                self.contactor_on = True
        elif self.contactor_on:
            # x1 pause with the EV still in C: it may stay closed until the EV
            # opens S2, X1_OPEN_AFTER_MS at most. Anything else opens now.
            if not (
                not pwm_on
                and (p == iec.P_C or (p == iec.P_D and self.vent_allowed))
                and not self._vent_block
                and hal.ticks_diff(now, self._x1_since) < iec.X1_OPEN_AFTER_MS
            ):
                self._open(now)
            if p == iec.P_B and pwm_on:
                self._ev_stopped = True  # the EV ended the charge itself
        if charge_req and self._ev_stopped and pwm_on:
            self._ev_stopped = False

        if p != iec.P_INVALID:  # an invalid reading keeps the last name
            self.state = _NAMES[p * 2 + (1 if pwm_on else 0)]

    # --- phase switching (asked for by firmware/energy.py through the app) -------------------
    def switch_phases(self, n):
        """Move the phase relay to n phases, only while the pilot is steady
        and the contactor is open (as commanded and, where the board can
        tell, as its mirror contact reads). Returns None or why not."""
        if self.duty_pm != 0 or self.contactor_on or self.hal.contactor_feedback() == 1:
            return "pilot or contactor not safe"
        self.hal.phase_switch(n)
        return None

    # --- commands (already parsed and range-checked by firmware/commands.py) ---------------
    def command(self, name, value):
        """Apply a validated remote command. Returns None or an error text.
        Nothing here can raise the offer above the other limits: the remote
        limit is only one more minimum."""
        now = self.hal.ticks_ms()
        if name == "current_a":  # value in mA (commands.parse gives int mA)
            # Below 6 A (0 included) pauses: Limits.offer_ma() is then 0, the
            # pilot goes steady and the contactor opens by the x1 rules.
            if not isinstance(value, int) or not 0 <= value <= iec.MAX_OFFER_MA:
                return "current_a must be 0..80 A"
            self.limits.remote_ma = value
            return None
        if name == "enable":
            if value is not True and value is not False:
                return "enable must be true or false"
            self.enabled = value
            return None
        if name == "authorize":
            if not isinstance(value, str) or not value:
                return "authorize needs a tag"
            self.auth_tag = value
            self._authorized = True
            self._stopped = False
            return None
        if name == "stop":
            if not self.session_active and not self._connected:
                return "no session to stop"
            self._stopped = True
            self._end_session("remote_stop")
            return None
        if name == "clear_fault":
            if self.fault is None:
                return "no fault"
            if not self.latched:
                return "fault clears by itself after its hold time"
            if self.fault in _LATCHING and self.contactor.welded():
                return "contactor still reads closed"
            self._fault_n = 0
            self._clear_fault(now)
            return None
        return "unknown command"
