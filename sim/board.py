"""The simulated board: a whole charging point and its EV in virtual time.

Implements every method of hal/contract.py's Board for the MicroPython unix
port, so the firmware, the scenario runner and the benchmarks run unchanged and
far faster than real time. What it owns:

- a virtual clock in integer ms (`now_ms`, unwrapped) and `ticks_ms()` wrapping
  at TICKS_PERIOD = 2**30 like an ESP32, starting close to a wrap;
- the pilot circuit computed from its parts: the EVSE source (+-12 V through
  1 kOhm) into the EV's side (sim/ev.py: its diode and resistors, S2), and
  the faults that change it;
- the EV (sim/ev.py, `ev`), a separate device: it decodes the PWM duty
  itself, closes and opens S2 and draws current; the board tells it what it
  reads and whether the contacts are closed, and integrates the exact energy
  it drew;
- a contactor with mechanical delay and welding, an RCD with its test input,
  PE, PP, temperature, LED, watchdog;
- the CT signals for the ADC (sim/currentsense.py, `ct`: mains 50/60 Hz with
  drift, harmonics, noise, ESP32-like nonlinearity, clipping), configured by
  this board's attributes (adc_burst_len, ct_ua_per_count, ...).

Never lets wall time into the simulated world; `realtime=True` (main.py on the
unix port) only paces wait_tick() to the wall clock. Runs on the unix port,
64-bit or 32-bit (the ESP32-faithful build): every value stays a small int
with 31-bit small ints too (sim/ticks.py, sim/currentsense.py muldiv and its
viper kernel's products below 2**28). Every method the firmware calls from its
control tick returns small ints or fills a caller's buffer and allocates
nothing; world updates run only when something is due (event driven), so an
idle wait_tick(10) costs a few microseconds.
"""

import time
from array import array

from micropython import const

from hal import net as _net
from hal.contract import NO_TEMP, PILOT_PLUS12, PILOT_UNSEEN, PP_OPEN, UNKNOWN
from sim import ticks as _t
from sim.currentsense import CurrentSense
from sim.currentsense import muldiv as _muldiv
from sim.ev import EV_DIODE_MV, SimEV, ev_offer_ma, state_seen
from sim.rng import lcg as _lcg
from sim.steps import FAULTS

TICKS_PERIOD = const(1 << 30)  # ESP32 time.ticks_ms() period (a big int on an ESP32: sim/ticks.py)
_NEVER = const(1 << 60)  # a due time that never comes (unix small int)

# --- pilot circuit (shared/iec61851.md: generator table; the EV's side: sim/ev.py)
PILOT_SOURCE_MV = const(12000)  # EVSE generator level, +-12 V
PILOT_SOURCE_OHM = const(1000)  # generator source resistance

_LOG_LEN = const(64)  # contactor commands kept for contactor_log
_WATCH_FRAMES = const(8)  # adc_burst_watched: frames between two looks at the pilot (2.5 ms)
_E_UNIT_UJ = const(100000000)  # the truth energy's unit, 100 J
# PRNG states are 30 bits, so they stay small ints on a 32-bit port (an ESP32's
# word size) too: an LCG modulo 2**30 with glibc's multiplier (sim/rng.py).
_RNG_MASK = const(0x3FFFFFFF)


class WatchdogReset(Exception):
    """Raised from wait_tick() when the watchdog was not fed in time."""


def _mkdirs(path):
    """Create path and its parents (the data directory may not exist yet)."""
    import os

    at = "/" if path.startswith("/") else ""
    for part in path.split("/"):
        if not part:
            continue
        at += part if at in ("", "/") else "/" + part
        try:
            os.mkdir(at)
        except OSError:
            pass


def _divider_mv(src_mv, load_mohm):
    """Pilot voltage for a source through PILOT_SOURCE_OHM into a load given
    in milliohm, rounded to the nearest mV (small-int math: no allocation)."""
    den = load_mohm + PILOT_SOURCE_OHM * 1000
    q = _muldiv(src_mv if src_mv >= 0 else -src_mv, load_mohm, den, _REM)
    if _REM[0] + den // 2 >= den:
        q += 1
    return q if src_mv >= 0 else -q


_REM = array("i", [0])  # _muldiv's remainder for its callers here


class SimBoard:
    """Board contract (hal/contract.py) plus, for tests and the scenario runner:

    set_ev('A'|'B'|'C'|'D'); attributes ev_draw_a, ev_phases, ev_obeys,
    voltage_v (setters take effect at once); set_fault(name, on=True) with a
    name of FAULTS or 'none'; set_pp(ohm|None|False); set_temp_c(c|None);
    set_wall_time(unix_s); set_reset_cause(text); step(dt_ms); on_tick;
    set_alarm(at_ms, fn) (a world change at an exact ms, between ticks).
    Read-outs: now_ms, pilot_v(), ev_s2_closed, s2_ms, ev_state_seen(), ev_state(),
    ev_sees_offer_ma(), truth_current_ma(phase), truth_energy_wh, ev (the
    sim/ev.py SimEV), ct (the sim/currentsense.py CurrentSense, which a
    board may be given to share its tables: `ct=other.ct`),
    contacts_closed, contacts_welded, contactor_commanded, contactor_cmd_ms,
    contacts_ms, contactor_log, pilot_cmd_ms, led_mode, faults(), costs
    (sim/timing.py Costs with a timed profile: stalls, erases).
    profile="esp32" (sim/timing.py) makes every board call, flash write, GC
    and TLS handshake cost virtual time, during which the world moves on;
    "ideal" (default) charges nothing.
    A WatchdogReset leaves the outputs as they were (the worst case: boot.py
    must make them safe) and stops the watchdog until wdt_start() again.
    """

    name = "sim"
    adc_full_scale = 4096
    net = _net  # real sockets and wall-clock time for the MQTT link (hal/net.py)

    def __init__(self, seed=1, start_ticks=TICKS_PERIOD - 5000, phases=3, mains_hz=50,
                 voltage_v=230, pp=220, ev_draw_a=16, ev_phases=3, ev_obeys=True,
                 pilot_noise_mv=0, contactor_close_ms=20, contactor_open_ms=10,
                 rcd_trip_ms=25, rcd_release_ms=10, temp_c=25, has_feedback=True,
                 has_pe=True, adc_burst_len=64, adc_rate_hz=3200, adc_bias=2048,
                 adc_noise_counts=2, adc_nonlinear_counts=0, ct_ua_per_count=60000,
                 ct_error_pm=(0, 0, 0), mains_drift_pm=0, harmonics=((3, 30), (5, 20)),
                 data_dir="/tmp/evse_sim", realtime=False, phase_relay=False, mains_ct=False, unique_id=None,
                 profile="ideal", ota_dir=None, frontend="ideal", frontend_opts=None, nvlog_kb=64, nvlog_path=None,
                 ct=None):
        # --- timing profile (sim/timing.py): what board calls, flash and GC cost ---
        self.profile_name = profile
        self.profile = None  # sim/timing.py Profile, imported only for a timed one (RAM)
        self._timed = profile != "ideal"
        self.costs = None  # sim/timing.py Costs: the flash, GC and TLS model of a timed profile
        self._us = 0  # virtual time charged below one ms, us
        self._stall_us = 0  # a stall another thread caused (TLS), charged at the next board call
        self.calls = 0  # board calls that cost Python time (for the profile's per-call figure)
        # --- configuration (plain attributes may be changed between ticks) ---
        self.adc_channels = 3 if phases == 3 else 1
        self._supply_phases = self.adc_channels  # a single-phase supply feeds one phase
        self.adc_burst_len = adc_burst_len
        self.adc_rate_hz = adc_rate_hz
        self.adc_bias = adc_bias
        self.adc_noise_counts = adc_noise_counts
        self.ct_ua_per_count = ct_ua_per_count
        self.ct_error_pm = ct_error_pm  # per channel gain error of the real CT
        self.mains_hz = mains_hz
        self.mains_drift_pm = mains_drift_pm  # +-10 = +-1 %
        self.pilot_noise_mv = pilot_noise_mv
        self.contactor_close_ms = contactor_close_ms
        self.contactor_open_ms = contactor_open_ms
        self.rcd_trip_ms = rcd_trip_ms
        self.rcd_release_ms = rcd_release_ms
        self.has_feedback = has_feedback
        self.has_pe = has_pe
        self.data_dir = data_dir
        self.ota_dir = ota_dir  # the emulated OTA app partitions (sim/ota.py), None: none
        if ota_dir is not None:
            # Loaded here, in the main thread: its first import inside the OCPP
            # thread (a remote update's ota_write) while the loop ran hung the
            # GIL-less unix port (tests/host/test_ocpp_fw_e2e.py).
            from sim import ota  # noqa: F401
        self.resets = 0  # reset() calls on a port without machine.reset (tests)
        self.stuck_channel = 0  # channel the stuck_adc fault breaks
        self.stuck_code = 2048  # ... and the code it returns (2048: "no current")
        self.on_tick = None  # callable(sim) after each wait_tick(); may raise
        # --- the house behind the same main fuse (energy management) ---------
        self.phase_relay = phase_relay  # a 1/3 phase relay between contactor and EV
        self.mains_ct = mains_ct  # the board measures the grid on its own CTs
        self.house_ma = [0, 0, 0]  # the house's own load per phase
        self.pv_ma = [0, 0, 0]  # solar production per phase
        self.phase_log = []  # (now_ms, phases, contacts_closed, pwm_on) per relay move
        # --- clock -----------------------------------------------------------
        self.now_ms = 0
        self._ticks = start_ticks & _t.MASK  # a small int even when given as TICKS_PERIOD - n
        self._tick_ret = 0
        self._next_ms = 0  # the world is updated at the first step
        self._alarm_ms = _NEVER  # set_alarm(): a callback at an exact virtual ms
        self._alarm_fn = None
        self._wall = None
        self._realtime = realtime
        self._rt_due = None  # wall ms of the next paced tick, from the first one
        # --- PRNGs: one for EV/board timing, one for measurement noise -------
        self._rng = (seed * 2654435761 + 1) & _RNG_MASK
        self._nrng = (seed * 40503 + 7) & _RNG_MASK
        # --- pilot output and its reading -------------------------------------
        self._pwm = False
        self._duty_pm = 0
        self._level = PILOT_PLUS12
        self.pilot_cmd_ms = 0
        self._high_mv = PILOT_SOURCE_MV
        self._low_mv = PILOT_SOURCE_MV
        self._pp = pp
        # --- faults ------------------------------------------------------------
        self._cp_short = False
        self._diode_short = False
        self._pe_open = False
        self._rcd_fault = False
        self._weld = False
        self._rcd_dead = False
        self._stuck = False
        # --- contactor ------------------------------------------------------------
        self.contactor_commanded = False  # the coil is driven (the firmware's last command)
        self.close_why = None  # at the last close command: what forbade it (S2 open, a fault) or None
        self._seen_why = "s2_open"
        self.contacts_closed = False
        self.contacts_welded = False  # no command opens them
        self._move_due = _NEVER
        self.contactor_cmd_ms = -1  # now_ms of the last command change
        self.contacts_ms = -1  # now_ms of the last physical move
        self._log_ms = array("q", [0] * _LOG_LEN)  # ring of command times ...
        self._log_on = bytearray(_LOG_LEN)  # ... and commands: no allocation
        self._log_n = 0
        # --- RCD ----------------------------------------------------------------------
        self._rcd_test = False
        self._rcd_test_trip = False
        self._rcd_due = _NEVER
        # --- housekeeping ---------------------------------------------------------
        self._temp_dc = NO_TEMP
        self.set_temp_c(temp_c)
        self.led_mode = 0
        self._cause = "power_on"
        # a MAC-like chip id, from the seed unless given: boards with different seeds differ
        self._uid = unique_id or "5e%010x" % ((seed * 2654435761) & 0xFFFFFFFFFF)
        self._wdt_ms = 0
        self._wdt_fed = 0
        from sim.net import SimNetIf

        self.netif = SimNetIf(self)  # the network interface: link, RSSI, NTP to control (sim/net.py)
        # --- the EV (sim/ev.py) and the truth energy it draws ----------------------
        self.ev = SimEV(self._rand, ev_draw_a, ev_phases, ev_obeys)
        self._voltage_v = voltage_v
        self._p_mw = 0
        self._e_hj = 0  # exact energy (V * mA * ms = uJ): 100 J units ...
        self._e_uj = 0  # ... plus the rest, uJ
        # --- the CT signal (sim/currentsense.py): its tables, maybe another board's
        self.ct = ct or CurrentSense(harmonics, adc_nonlinear_counts)
        self._pilot_calc()
        # --- the pilot's front end (sim/frontend.py): "ideal" reads the true
        # levels; "esp32" runs the driver's phase-classified sampling on a model
        # of the RC settling, the 11 dB ADC curve and its noise; "esp32_split"
        # the older unsynchronised split on the same model (benchmarks).
        if frontend not in ("ideal", "esp32", "esp32_split"):
            raise ValueError("frontend must be ideal, esp32 or esp32_split: " + str(frontend))
        self.frontend_name = frontend
        self.frontend = None
        if frontend != "ideal":
            from sim.frontend import FrontEnd  # imported only for a modelled front end (RAM)

            self.frontend = FrontEnd(self, seed=seed, phased=frontend == "esp32", **(frontend_opts or {}))
        if self._timed:
            from sim import timing

            self.profile = timing.get(profile)
            self.costs = timing.active = timing.Costs(self, self.profile)
            self.net = timing.Net(_net, self.costs)
        # --- the checkpoint area: a NOR partition in a file (sim/nor.py) -----------
        self.nor = None
        if nvlog_kb:
            from sim.nor import Nor

            if nvlog_path is None:
                _mkdirs(data_dir)
                nvlog_path = data_dir + "/nvlog.img"
            self.nor = Nor(nvlog_path, nvlog_kb * 1024)

    # --- configuration that changes the world: setters mark it for an update --
    # (plain properties: frozen, a def costs the heap less than a closure would)
    @property
    def ev_draw_a(self):
        return self.ev.draw_ma / 1000

    @ev_draw_a.setter
    def ev_draw_a(self, a):
        self.ev.draw_ma = int(a * 1000)
        self._next_ms = self.now_ms

    @property
    def ev_phases(self):
        """Phases the EV draws on (1 or 3)."""
        return self.ev.phases

    @ev_phases.setter
    def ev_phases(self, n):
        self.ev.phases = n
        self._next_ms = self.now_ms

    @property
    def ev_obeys(self):
        """False: the EV draws what it wants whatever the pilot says."""
        return self.ev.obeys

    @ev_obeys.setter
    def ev_obeys(self, on):
        self.ev.obeys = on
        self._next_ms = self.now_ms

    @property
    def voltage_v(self):
        """Line to neutral, for the truth energy."""
        return self._voltage_v

    @voltage_v.setter
    def voltage_v(self, v):
        self._voltage_v = v
        self._next_ms = self.now_ms

    @property
    def ev_s2_closed(self):
        """The EV's S2 is closed (sim/ev.py)."""
        return self.ev.s2_closed

    @property
    def s2_ms(self):
        """now_ms of S2's last move."""
        return self.ev.s2_ms

    # --- clock ------------------------------------------------------------------------
    def ticks_ms(self):
        return self._ticks

    def ticks_diff(self, a, b):
        return _t.ticks_diff(a, b)

    def ticks_add(self, t, delta_ms):
        return _t.ticks_add(t, delta_ms)

    def wait_tick(self, period_ms):
        if self._timed:
            self.costs.tick_end()
        now = self.now_ms
        end = self._tick_ret + period_ms
        if end > now:
            self._us = 0  # the sleep ends on a whole ms
            if self._next_ms <= end or self._alarm_ms <= end:
                self.step(end - now)
            else:  # nothing due: the idle fast path, no world update
                self._advance(end - now)
        self._tick_ret = self.now_ms
        if self._realtime:
            self._pace(period_ms)
        if self._wdt_ms and self.now_ms - self._wdt_fed > self._wdt_ms:
            self._wdt_ms = 0  # a reset board runs without watchdog until started again
            self._cause = "watchdog"
            raise WatchdogReset()
        cb = self.on_tick
        if cb is not None:
            cb(self)

    def _pace(self, period_ms):
        """realtime=True: sleep so that virtual time keeps pace with the wall
        clock (resynchronising after a long stall instead of racing)."""
        if self._rt_due is None:
            self._rt_due = time.ticks_ms()
        self._rt_due = time.ticks_add(self._rt_due, period_ms)
        d = time.ticks_diff(self._rt_due, time.ticks_ms())
        if d > 0:
            time.sleep_ms(d)
        elif d < -1000:
            self._rt_due = None  # more than 1 s behind: restart pacing from now

    def step(self, dt_ms):
        """Advance virtual time by dt_ms, updating the world at every due
        event and calling the alarm (set_alarm) at its exact ms."""
        end = self.now_ms + dt_ms
        while True:
            due = self._next_ms if self._next_ms < self._alarm_ms else self._alarm_ms
            if due > end:
                break
            self._advance(due - self.now_ms)
            if self._alarm_ms <= self.now_ms:
                fn = self._alarm_fn
                self._alarm_ms = _NEVER
                self._alarm_fn = None
                fn(self)  # may change the world (its setters make _next_ms due now)
            if self._next_ms <= self.now_ms:
                self._update()
        self._advance(end - self.now_ms)

    def set_alarm(self, at_ms, fn):
        """Call fn(sim) when virtual time reaches at_ms (now_ms units), between
        or inside ticks as the world would change on a board: the firmware
        sees the change at its next reading. One alarm at a time; fn may set
        the next one. at_ms in the past: at the next step."""
        self._alarm_ms = at_ms
        self._alarm_fn = fn

    # --- the timing profile: virtual time a call costs ------------------------------------
    def _spend(self, us):
        """Let us microseconds of virtual time pass inside a board call: the
        world moves on meanwhile (contacts, S2, scenario steps)."""
        u = self._us + us
        if u >= 1000:
            self._us = u % 1000
            self.step(u // 1000)
        else:
            self._us = u

    def _call(self, us):
        """A board call from the firmware's Python: its own cost us, the
        Python that ran since the previous call, and any stall another
        thread caused (a TLS handshake holding the GIL)."""
        self.calls += 1
        s = self._stall_us
        if s:
            self._stall_us = 0
            us += s
        self._spend(self.profile.py_call_us + us)

    def _advance(self, dt):
        if dt > 0:
            self.now_ms += dt
            d = dt
            while d >= _t.HALF:  # a step of 6 days or more
                self._ticks = _t.ticks_add(self._ticks, _t.HALF - 1)
                d -= _t.HALF - 1
            self._ticks = _t.ticks_add(self._ticks, d)
            # energy += p * dt in uJ, as 100 J units plus a remainder: small ints only
            p = self._p_mw
            if p:
                if dt <= 8:  # p < 2**26 mW (67 kW): p * dt + the remainder < 2**30
                    e = self._e_uj + p * dt
                else:
                    self._e_hj += _muldiv(p, dt, _E_UNIT_UJ, _REM)
                    e = self._e_uj + _REM[0]
                if e >= _E_UNIT_UJ:
                    self._e_hj += e // _E_UNIT_UJ
                    e %= _E_UNIT_UJ
                self._e_uj = e

    def wall_time(self):
        w = self._wall  # (unix ms, now_ms) when set: one word, so the NTP thread's write is atomic
        if w is None:
            return None
        return (w[0] + self.now_ms - w[1]) // 1000

    def set_wall_time(self, unix_s, ms=0):
        self._wall = (unix_s * 1000 + ms, self.now_ms)

    # --- control pilot ------------------------------------------------------------------
    def pilot_pwm(self, duty_pm):
        if self._pwm and duty_pm == self._duty_pm:
            return
        if self._timed:
            self._call(self.profile.pwm_us)
        self._pwm = True
        self._duty_pm = duty_pm
        self._pilot_changed()

    def pilot_steady(self, level):
        if not self._pwm and level == self._level:
            return
        if self._timed:
            self._call(self.profile.pwm_us)
        self._pwm = False
        self._duty_pm = 0
        self._level = level
        self._pilot_changed()

    def _pilot_changed(self):
        self.pilot_cmd_ms = self.now_ms
        self._pilot_calc()
        self._next_ms = self.now_ms

    def pilot_read(self, out):
        p = self.profile
        fe = self.frontend
        if p is not None:  # the burst: the reading is the world at its middle
            if fe is not None:
                half = fe.burst_us() // 2
            else:
                half = (p.pilot_burst_reads if self._pwm else p.pilot_steady_reads) * max(p.pilot_spacing_us, p.adc_read_us) // 2
            self._call(half)
        if fe is not None:
            fe.pilot_read(out)
            if p is not None:  # the rest of the burst as it came out
                half = fe.burst_us() - half if fe.burst_us() > half else 0
        else:
            out[0] = self._high_mv
            out[1] = self._low_mv
        n = self.pilot_noise_mv
        if n:  # interference that survives the burst's median, per reading
            if out[0] != PILOT_UNSEEN:
                out[0] += self._noise(n)
            if not self._pwm:
                out[1] = out[0]
            elif out[1] != PILOT_UNSEEN:
                out[1] += self._noise(n)
        # What forbade closing in the world this reading saw (for close_why).
        self._seen_why = (None if self.ev.s2_closed else "s2_open") or (
            "cp_short" if self._cp_short else "diode_short" if self._diode_short else
            "pe_open" if self._pe_open else "rcd_trip" if self._rcd_fault else None)  # fmt: skip
        if p is not None:
            self._spend(half + p.pilot_levels_us)

    def _noise(self, n):
        r = _lcg(self._nrng)
        self._nrng = r
        return (r >> 8) % (2 * n + 1) - n

    def _pilot_calc(self):
        """High and low pilot levels in mV from the circuit as it is now."""
        if self._pwm:
            self._high_mv = self._cp_mv(PILOT_SOURCE_MV)
            self._low_mv = self._cp_mv(-PILOT_SOURCE_MV)
        else:
            v = self._cp_mv(PILOT_SOURCE_MV if self._level == PILOT_PLUS12 else -PILOT_SOURCE_MV)
            self._high_mv = self._low_mv = v

    def _cp_mv(self, src_mv):
        if self._cp_short:
            return 0
        r = self.ev.load_mohm()  # behind the EV's diode, milliohm
        if not r or self._pe_open:
            return src_mv  # nothing loads the pilot
        if self._diode_short:
            return _divider_mv(src_mv, r)
        if src_mv <= EV_DIODE_MV:
            return src_mv  # the diode blocks
        return EV_DIODE_MV + _divider_mv(src_mv - EV_DIODE_MV, r)

    def pp_ohm(self):
        if self._timed:
            self._call(4 * self.profile.adc_read_us)  # hal/esp32.py PP_READS
        if self._pp is False:
            return UNKNOWN  # tethered: no PP input
        if self._pp is None:
            return PP_OPEN
        return self._pp

    def set_pp(self, ohm):
        """PP resistor in ohm, None for no cable (PP_OPEN), False for tethered."""
        self._pp = ohm

    # --- contactor -------------------------------------------------------------------------
    def contactor(self, closed):
        closed = bool(closed)
        if self._timed:
            self._call(2 * self.profile.gpio_us)  # one pin per pole
        if closed == self.contactor_commanded:
            return
        if closed:  # a close the world of the latest pilot reading forbade: its reason
            self.close_why = self._seen_why
        self.contactor_commanded = closed
        self.contactor_cmd_ms = self.now_ms
        i = self._log_n % _LOG_LEN
        self._log_ms[i] = self.now_ms
        self._log_on[i] = closed
        self._log_n += 1
        self._schedule_contacts()

    @property
    def contactor_log(self):
        """[(now_ms, closed)] of the last 64 command changes, oldest first
        (built when read: for traces and tests, not for the control tick)."""
        n = self._log_n
        return [(self._log_ms[k % _LOG_LEN], bool(self._log_on[k % _LOG_LEN]))
                for k in range(max(0, n - _LOG_LEN), n)]

    def _schedule_contacts(self):
        if self.contactor_commanded == self.contacts_closed:
            self._move_due = _NEVER
        else:
            self._move_due = self.now_ms + (self.contactor_close_ms if self.contactor_commanded else self.contactor_open_ms)
        self._next_ms = self.now_ms

    def contactor_feedback(self):
        if self._timed:
            self._call(self.profile.gpio_us)
        if not self.has_feedback:
            return UNKNOWN
        return 1 if self.contacts_closed else 0

    # --- protection -------------------------------------------------------------------------
    def rcd_tripped(self):
        if self._timed:
            self._call(self.profile.gpio_us)
        return self._rcd_fault or self._rcd_test_trip

    def rcd_test(self, on):
        on = bool(on)
        if self._timed:
            self._call(self.profile.gpio_us)
        if on == self._rcd_test:
            return
        self._rcd_test = on
        if on:
            self._rcd_due = _NEVER if self._rcd_dead else self.now_ms + self.rcd_trip_ms
        else:
            self._rcd_due = self.now_ms + self.rcd_release_ms if self._rcd_test_trip else _NEVER
        self._next_ms = self.now_ms

    def pe_ok(self):
        if self._timed:
            self._call(self.profile.gpio_us)
        if not self.has_pe:
            return UNKNOWN
        return 0 if self._pe_open else 1

    def temp_dc(self):
        if self._timed:
            self._call(4 * self.profile.adc_read_us)  # hal/esp32.py NTC_READS, one sensor
        return self._temp_dc

    def set_temp_c(self, c):
        """Temperature in degrees C, or None for a board without a sensor."""
        self._temp_dc = NO_TEMP if c is None else round(c * 10)

    # --- faults ---------------------------------------------------------------------------------
    def set_fault(self, name, on=True):
        """Switch one fault of FAULTS on or off; 'none' clears them all."""
        if name == "none":
            for f in FAULTS:
                self.set_fault(f, False)
            return
        if name not in FAULTS:
            raise ValueError("unknown fault: " + str(name))
        on = bool(on)
        setattr(self, "_" + ("stuck" if name == "stuck_adc" else "rcd_fault" if name == "rcd_trip" else name), on)
        if name == "weld":
            was = self.contacts_welded
            self.contacts_welded = on and self.contacts_closed
            if self.contacts_welded != was:  # else a move under way keeps its time ("fault": "none" restarted it)
                self._schedule_contacts()
        if name == "rcd_dead" and on and self._rcd_test and not self._rcd_test_trip:
            self._rcd_due = _NEVER
        self._pilot_calc()
        self._next_ms = self.now_ms

    def faults(self):
        """Names of the faults that are on (for traces)."""
        return [f for f in FAULTS if self._fault_on(f)]

    def _fault_on(self, f):
        return getattr(self, "_" + ("stuck" if f == "stuck_adc" else "rcd_fault" if f == "rcd_trip" else f))

    # --- EV (sim/ev.py) -----------------------------------------------------------------------------
    def set_ev(self, x):
        """EV state: 'A' unplugged, 'B' plugged and not wanting energy, 'C'
        wanting energy, 'D' wanting energy with ventilation. Leaving C/D opens
        S2 and stops the current at once; entering C/D lets the EV close S2
        itself when it sees an offer."""
        self.ev.set_state(x, self.now_ms)
        if x in ("A", "B"):
            self._set_power()
        self._pilot_calc()
        self._next_ms = self.now_ms

    def ev_state(self):
        return self.ev.state

    def ev_sees_offer_ma(self):
        """The offer the EV reads: 0 unless the pilot oscillates and the EV
        can measure it (no CP short, PE present)."""
        if not self._pwm or self._cp_short or self._pe_open:
            return 0
        return ev_offer_ma(self._duty_pm)

    def ev_state_seen(self):
        """A..F from the pilot high level (what the EV's own detector reads)."""
        return state_seen(self._high_mv)

    def _rand(self, lo_hi):
        """A seeded draw in lo..hi for the EV's and the board's delays."""
        r = _lcg(self._rng)
        self._rng = r
        lo, hi = lo_hi
        return lo + (r >> 8) % (hi - lo + 1)

    def _drawn_phases(self):
        return min(self.ev.phases, self._supply_phases)

    def _set_power(self):
        self._p_mw = self._voltage_v * self.ev.i_ma * self._drawn_phases()

    # --- the world update: runs only when something is due -------------------------------------------
    def _update(self):
        now = self.now_ms
        nxt = _NEVER
        # contactor contacts
        if self._move_due <= now:
            # The contacts move at their due time even when the CPU was stalled
            # past it (a flash erase, a GC): the relay does not wait for the loop.
            self.contacts_ms = self._move_due
            self._move_due = _NEVER
            if self.contactor_commanded:
                self.contacts_closed = True
                self.contacts_welded = self._weld
            elif not self.contacts_welded:
                self.contacts_closed = False
        nxt = min(nxt, self._move_due)
        # RCD test input
        if self._rcd_due <= now:
            self._rcd_due = _NEVER
            self._rcd_test_trip = self._rcd_test
        nxt = min(nxt, self._rcd_due)
        # the EV: its S2 (which loads the pilot) and the current it draws
        ev = self.ev
        s2 = ev.s2_closed
        nxt = min(nxt, ev.update(now, self.ev_sees_offer_ma(), self.contacts_closed))
        if ev.s2_closed != s2:
            self._pilot_calc()
        self._set_power()
        self._next_ms = nxt

    # --- energy management: the phase relay and the grid ------------------------------------------
    def phase_switch(self, phases):
        n = 1 if phases == 1 or self.adc_channels == 1 else 3
        if not self.phase_relay or n == self._supply_phases:
            return
        self.phase_log.append((self.now_ms, n, self.contacts_closed, self._pwm))
        self._supply_phases = n  # the EV follows: it draws on what it is given
        self._set_power()
        self._next_ms = self.now_ms

    @property
    def supply_phases(self):
        return self._supply_phases

    def set_house_a(self, amps):
        """The house's own load in A: one number for every phase, or a list per phase."""
        self._set3(self.house_ma, amps)

    def set_pv_a(self, amps):
        """Solar production in A: one number for every phase, or a list per phase."""
        self._set3(self.pv_ma, amps)

    def _set3(self, out, amps):
        for p in range(3):
            v = amps if isinstance(amps, (int, float)) else (amps[p] if p < len(amps) else 0)
            out[p] = int(round(v * 1000))

    def grid_ma(self, phase):
        """True grid current on a phase (mA, negative: export): house + EV - solar."""
        return self.house_ma[phase] + self.truth_current_ma(phase) - self.pv_ma[phase]

    def mains_read(self, out):
        if not self.mains_ct:
            return False
        for p in range(3):
            out[p] = self.grid_ma(p)
        return True

    def truth_current_ma(self, phase):
        """Current the EV draws on a phase (0, 1, 2), mA."""
        return self.ev.i_ma if phase < self._drawn_phases() else 0

    @property
    def truth_energy_wh(self):
        """Exact energy the EV drew since the start, Wh."""
        return self._e_hj / 36 + self._e_uj / 3.6e9

    def trace_extra(self):
        """What only the simulation knows, as more trace record members (JSON
        text; firmware/rigtrace.py and sim/scenario.py append it): the true
        energy in Wh, truncated to 3 decimals like the firmware's own figures;
        physical truth: the EV's S2 closed (`ev_s2`), the contacts closed
        (`contacts`)."""
        mwh = int(self.truth_energy_wh * 1000)
        return ', "truth_energy_wh": %d.%03d, "ev_s2": %s, "contacts": %s' % (
            mwh // 1000, mwh % 1000, "true" if self.ev_s2_closed else "false",
            "true" if self.contacts_closed else "false")

    def pilot_v(self):
        return self._high_mv / 1000

    # --- current sense (sim/currentsense.py) -----------------------------------------------------------
    def adc_burst(self, buf, _charge=True):
        self._nrng = self.ct.fill(buf, self, self.ev.i_ma, self._drawn_phases(), self._stuck, self._nrng)
        if self._timed and _charge:  # the burst's sampling time, then the meter's Python on it
            self._call(self.adc_burst_len * 1000000 // self.adc_rate_hz + self.profile.meter_py_us)

    def adc_burst_watched(self, buf, guard):
        """adc_burst() watching the pilot (hal/contract.py): the burst's time
        passes in steps of _WATCH_FRAMES frames; after each, the pilot the
        step saw: with the ESP32 front end (sim/frontend.py) the driver's own
        reads, one a frame, counted against guard[3]; with the ideal one, a
        level the guard calls suspect stops it at once."""
        self.adc_burst(buf, False)
        n = self.adc_burst_len
        fe = self.frontend
        frame_us = 1000000 // self.adc_rate_hz
        left = guard[3]
        if fe is not None:
            fe.watch_start()
        done = 0
        while done < n:
            k = n - done if n - done < _WATCH_FRAMES else _WATCH_FRAMES
            if self._timed:
                self._call(k * 1000000 // self.adc_rate_hz)
            done += k
            if fe is not None and self._pwm:
                left = fe.watch(k, frame_us, guard, left)
                if left <= 0 and done < n:
                    return done
                continue
            h = self._high_mv
            lo = self._low_mv if self._pwm else h
            if (h > guard[0] or guard[1] < h < guard[2] or guard[1] < lo < guard[2]) and done < n:
                return done
        if self._timed:
            self._call(self.profile.meter_py_us)
        return n

    def adc_ua_per_count(self, channel):
        return self.ct_ua_per_count

    # --- housekeeping ---------------------------------------------------------------------------------
    def wdt_start(self, timeout_ms):
        self._wdt_ms = timeout_ms
        self._wdt_fed = self.now_ms

    def wdt_feed(self):
        if self._timed:
            self._call(self.profile.gpio_us)
        self._wdt_fed = self.now_ms

    def led(self, mode):
        if self._timed and mode != self.led_mode:
            self._call(self.profile.gpio_us)
        self.led_mode = mode

    def reset_cause(self):
        return self._cause

    def unique_id(self):
        return self._uid

    def set_reset_cause(self, cause):
        self._cause = cause

    # --- the checkpoint area (hal/contract.py nvlog_*; sim/nor.py) ---------------------------
    def nvlog_size(self):
        return 0 if self.nor is None else self.nor.size

    def nvlog_erase(self, sector):
        if self._timed:
            self._call(0)
            self.costs.nor_erase()  # a stall with both cores stopped, recorded with the contactor's state
        self.nor.erase(sector, self.contactor_commanded, self.now_ms)

    def nvlog_write(self, offset, buf):
        if self._timed:
            self._call(0)
            self.costs.nor_program(len(buf))
        self.nor.write(offset, buf, self.contactor_commanded)

    def nvlog_read(self, offset, buf):
        if self._timed:
            self._call(0)
        self.nor.read(offset, buf)

    def safe(self):
        self.contactor(False)
        self.rcd_test(False)
        self.pilot_steady(PILOT_PLUS12)

    # --- firmware image: OTA app partitions as files (sim/ota.py) -------------------------------------
    def ota_info(self):
        d = self.ota_dir
        if d is None:
            return None
        try:  # what the bootloader wrote at this boot: sim/ota.py is not loaded at boot (RAM)
            import json

            with open(d + "/boot.json") as f:
                b = json.loads(f.read())
            run = b["running"]
            return {"running": run, "next": "ota_1" if run == "ota_0" else "ota_0", "size": b["size"],
                    "state": b["state"]}  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            from sim import ota  # no bootloader ran (tests): from the otadata

            return ota.info(d)

    def _ota(self):
        from sim import ota

        info = self.ota_info()
        if info is None:
            raise OSError(19)  # ENODEV: no partitions
        return ota, info

    def ota_write(self, offset, buf):
        ota, info = self._ota()
        ota.write(self.ota_dir, info["next"], offset, buf)

    def ota_read(self, offset, buf):
        ota, info = self._ota()
        ota.read(self.ota_dir, info["next"], offset, buf)

    def ota_set_boot(self):
        ota, info = self._ota()
        ota.set_boot(self.ota_dir, info["next"])

    def ota_mark_valid(self):
        ota, info = self._ota()
        ota.mark_valid(self.ota_dir, info["running"])

    def reset(self):
        try:
            import machine

            reset = machine.reset  # the emulated board's (tools/simboard_agent.py)
        except (ImportError, AttributeError):
            self.resets += 1  # the plain unix port: the caller goes on
            return
        reset()
