"""Board driver for an ESP32 charge controller (MicroPython `machine`).

Owns the pins, the LEDC pilot PWM, the ADC inputs and the watchdog of a real
board, and converts raw readings into the units of `hal/contract.py`. Decides
nothing: the firmware decides, this module only drives and measures. Every
pin number, ADC calibration, divider, pull-up, CT ratio and burden comes from
a board description (`hal/boards/*.json`, documented in hal/boards/README.md),
loaded and validated once in the constructor (hal/boardfile.py); a bad file
fails there with a message naming the bad key.

Hot paths (everything the control tick calls: pilot_*, pp_ohm, contactor*,
rcd_*, pe_ok, temp_dc, adc_burst, wdt_feed, led, wait_tick, ticks_*) allocate
nothing: integer arithmetic only, preallocated arrays, no f-strings. The NTC
curve (needs exp/log) is turned into an integer table at construction.

Pilot output. One GPIO drives the board's op-amp stage, which swings the pilot
to +12 V when the stage input is at its "plus" logic level and to -12 V
otherwise (`pilot.pwm_invert` says whether the stage inverts). The GPIO is an
LEDC channel at 1 kHz all the time: PWM duty is set with duty_ns (1 per mille =
1 us, LEDC resolution at 1 kHz is ~15 ns, well inside the +-5 us the standard
allows); steady +12 V is 100 % duty and steady -12 V is 0 % duty, so changing
mode never re-creates a peripheral and never allocates. A duty already in force
is not written again (rewriting LEDC restarts nothing, but costs time).

Pilot sampling (pilot_read). MicroPython cannot trigger the ADC from the LEDC
edge, so the samples are classified by the PWM's phase instead
(hal/pilotadc.py sample_phased): every ADC read is bracketed by two read-backs
of the PWM pin (calling the Pin reads the pad: Pin.OUT is input-output on the
ESP32 port and machine_pwm.c keeps the LEDC pad's input enabled), and a sample
counts only when both read-backs agree, the read ended before its
half-period could (known from the duty and the last edge) and the level had
lasted `pilot.settle_us` (the front
end's RC settles after each edge; a sample taken sooner reads between the
levels). The high half gives the state, the low half the diode check; each
is the median of its samples over `pilot.window_us` (two periods), converted
with the board's calibration table (`pilot.cal`, hal/pilotcal.py: raw
count -> pilot mV, piecewise linear, so the ADC's compressed top band at
11 dB is calibrated out). A half without a kept sample reads PILOT_UNSEEN:
the 40 us low half at 96 % duty is shorter than a settled read from Python.
Reads are raw (read_u16, ~10 us in C): read_uv's eFuse line would only be
undone by the table. With a steady pilot, the median of STEADY_BURST reads.
Only hardware can confirm: that the read-back works on the IDF build in use (checked at
construction: it must show the +12 V level of the initial 100 % duty, else the
driver falls back to the older statistical split of `pilot.burst` reads
`pilot.spacing_us` apart, `pilot_phased` False), the front end's settling time,
and how long a read takes from Python (35-55 us for read_uv, upstream issue
7495; WiFi interrupts can stretch one, the bracketing then drops it).

Network (netif, hal/net.py): a WiFi station (WlanIf), or the Ethernet PHY of
the board file's `eth` block (LanIf); neither touches the radio or the PHY
before the network thread calls up(), so boot.py's safe() builds no driver.

Current sense (adc_burst). Channels are read back to back inside each frame
(a few tens of us of skew between phases), frames are spaced 1/adc_rate_hz on
ticks_us deadlines (Bresenham remainder, so the mean rate is exact). Codes are
read_u16() >> 4 (12-bit, raw); calibration lives in firmware/meter.py.
"""

import os
import select
import time
from array import array

import machine
from micropython import const

from hal import net as _net
from hal.boardfile import ATTEN, board_file, load, validate
from hal.contract import NO_TEMP, NVLOG_SECTOR, PILOT_MINUS12, PILOT_UNSEEN, PP_OPEN, UNKNOWN, Board
from hal.pilotadc import levels, median, phase_levels, sample_phased
from hal.pilotcal import cal_mv, two_point_cal

PILOT_FREQ_HZ = const(1000)  # IEC 61851-1 Annex A: 1 kHz (980..1020 Hz)
PILOT_PERIOD_NS = const(1000000)  # 1 / PILOT_FREQ_HZ
SPREAD_MIN_MV = const(2000)  # pilot spread (high - low) below which one level is reported
STEADY_BURST = const(9)  # reads when the pilot is steady (odd: a true median)
PILOT_SAMPLES = const(64)  # most samples one phase-classified burst keeps
_WATCH_HIDE_US = const(100)  # a frame's CT reads without a read-back: ~3 raw reads from Python (estimate)
_WATCH_MARGIN_US = const(20)
_WATCH_READ_US = const(60)  # a pilot read and its read-back from Python, with a margin (estimate)  # a watched read must end this long before its half-period may (read-backs are sparse)
PILOT_ENOUGH = const(4)  # samples of each half after which a burst may stop early
MAINS_SAMPLES = const(40)  # mains_read(): reads per CT over ...
MAINS_WINDOW_US = const(20000)  # ... one 50 Hz period (60 reads at most: the sums stay < 2**30)
PP_READS = const(4)  # reads averaged per pp_ohm()
NTC_READS = const(4)  # reads averaged per sensor per temp_dc()
NTC_MIN_C = const(-40)  # NTC table range; outside it the sensor is open or shorted
NTC_MAX_C = const(150)
NTC_STEP_C = const(5)
NTC_FAULT_DC = const(1500)  # reported for an open/shorted NTC: hot, so the firmware stops
LED_SLOW_MS = const(500)  # half-period of the slow blink
LED_FAST_MS = const(100)  # half-period of the fast (fault) blink
SECS_1970_TO_2000 = 946684800  # shift of MicroPython's 2000 epoch (older ESP32 ports)
SECS_2024_SINCE_1970 = 1704067200  # wall_time() is None before 2024-01-01: RTC not set

_RESET_NAMES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}


# --- pure conversions (no hardware; tested on the host) -------------------------


def ntc_table_uv(n, r25_ohm, beta, series_ohm, supply_mv):
    """ADC microvolts of a low-side NTC divider at NTC_MIN_C, +NTC_STEP_C, ...
    (falling with temperature). Float maths; called once at construction."""
    import math

    t = array("i", range(n))
    for i in range(n):
        kelvin = (NTC_MIN_C + i * NTC_STEP_C) + 273.15
        r = r25_ohm * math.exp(beta * (1.0 / kelvin - 1.0 / 298.15))
        t[i] = int(supply_mv * 1000.0 * r / (r + series_ohm) + 0.5)
    return t


def ntc_dc(table, uv):
    """Tenths of a degree C for a low-side reading in uV by linear
    interpolation in the table; NTC_FAULT_DC outside it (open or shorted)."""
    n = len(table)
    if uv > table[0] or uv < table[n - 1]:
        return NTC_FAULT_DC
    i = 1
    while table[i] > uv:
        i += 1
    hi = table[i - 1]  # colder end of the segment
    span = hi - table[i]
    base = (NTC_MIN_C + (i - 1) * NTC_STEP_C) * 10
    if span <= 0:
        return base
    return base + (hi - uv) * (NTC_STEP_C * 10) // span


def pp_ohm_from_mv(v_mv, pullup_ohm, pullup_mv, max_ohm):
    """PP-PE resistance from the divider voltage (pull-up to pullup_mv)."""
    d = pullup_mv - v_mv
    if d <= 0:
        return PP_OPEN
    if v_mv <= 0:
        return 0
    r = pullup_ohm * v_mv // d
    return PP_OPEN if r > max_ohm else r


def ua_per_count(ratio, burden_ohm, full_scale_mv):
    """Line microamps per 12-bit ADC count through a CT and its burden."""
    return (full_scale_mv * 1000 * ratio + 2048 * burden_ohm) // (4096 * burden_ohm)


def isqrt(n):
    """Integer square root of n >= 0 (Newton's method, small ints only)."""
    if n <= 0:
        return 0
    x = n
    y = (x + 1) >> 1
    while y < x:
        x = y
        y = (x + n // x) >> 1
    return x


OTA_BLOCK = 4096  # erase unit of the app partitions (esp32.Partition's native block)


class Esp32Board(Board):
    """Board driver; see the module docstring. `board_path` names a JSON board
    description; `board` (a dict) is used instead when given."""

    name = "esp32"
    net = _net  # sockets and wall-clock time for the MQTT link (hal/net.py)

    def __init__(self, board_path=None, board=None):
        # Outputs are created first, each at its safe level: contactor open,
        # RCD test off, pilot steady +12 V.
        self._wdt: machine.WDT | None = None
        b = validate(board) if board is not None else load(board_path or board_file())
        self.board = b
        self.name = b["name"]
        Pin = machine.Pin
        on = b["contactor"]["active_level"]
        self._pole_on = on
        self._poles = tuple(Pin(p, Pin.OUT, value=1 - on) for p in b["contactor"]["pins"])
        r = b["rcd"]
        self._rcd_test_on = r["test_active_level"]
        self._rcd_test = Pin(r["test_pin"], Pin.OUT, value=1 - r["test_active_level"])
        p = b["pilot"]
        # 100 % duty = steady +12 V from the first instant. Pin.OUT is
        # GPIO_MODE_INPUT_OUTPUT on the ESP32 port and machine_pwm.c keeps the
        # pad's input enabled ("This allows to read the pin level"), so
        # calling the Pin reads back the LEDC output (phase classification).
        ppin = Pin(p["pwm_pin"], Pin.OUT)
        self._pwm = machine.PWM(ppin, freq=PILOT_FREQ_HZ, duty_u16=65535, invert=p["pwm_invert"])
        self._duty = -1  # last written: ns, or -1 steady +12 V, -2 steady -12 V
        self._pwm_on = False
        # --- pilot ADC (issue 12 item 4): phase-classified reads, calibration table ---
        self._plevel = ppin  # ppin(): the pad level, the LEDC output after its inversion
        self._plus = 0 if p["pwm_invert"] else 1  # the pad level that drives +12 V
        self._high_us = 0  # the PWM's high half-period, us (pilot_pwm sets it)
        self._settle = p["settle_us"]
        self._window = p["window_us"]

        atten = ATTEN[b["adc"]["atten"]]
        ADC = machine.ADC
        self._pilot_adc = ADC(Pin(p["adc_pin"]), atten=atten)
        self._plo = p["adc_mv_at_minus12v"]
        self._phi = p["adc_mv_at_plus12v"]
        self._raw = p["cal"] is not None  # a table of raw counts (read_u16), else the two-point read_uv line
        if self._raw:
            self._cx = array("i", [q[0] for q in p["cal"]])
            self._cy = array("i", [q[1] for q in p["cal"]])
            self._read = self._pilot_adc.read_u16  # bound once: calling it allocates nothing
        else:
            cx, cy = two_point_cal(self._plo, self._phi)
            self._cx = array("i", cx)
            self._cy = array("i", cy)
            self._read = self._pilot_adc.read_uv
        span = self._cx[-1] - self._cx[0]
        # SPREAD_MIN_MV of pilot in what self._read returns (u16: counts << 4; read_uv: uV)
        self._spread = (span * SPREAD_MIN_MV // abs(self._cy[-1] - self._cy[0])) * (16 if self._raw else 1000)
        self._pburst = p["burst"]
        self._pspace = p["spacing_us"]
        self._pbuf = array("i", range(max(self._pburst, PILOT_SAMPLES)))
        self._ptag = bytearray(len(self._pbuf))
        self._lv = array("i", (0, 0))
        # The read-back must show the +12 V level of the 100 % duty just set;
        # a build whose PWM pad has no input (ESP-IDF >= 5.4 keeps it, per
        # machine_pwm.c; only hardware can confirm) falls back to the
        # statistical split of an unsynchronised burst.
        self.pilot_phased = self._plevel() == self._plus

        s = b["pp"]
        self._pp = None if s is None else ADC(Pin(s["adc_pin"]), atten=atten)
        if s is not None:
            self._pp_pull_ohm = s["pullup_ohm"]
            self._pp_pull_mv = s["pullup_mv"]
            self._pp_max = s["max_ohm"]

        c = b["contactor"]
        self._fb = None
        if c["feedback_pin"] is not None:
            self._fb = Pin(c["feedback_pin"], Pin.IN, _pull_const(c["feedback_pull"]))
            self._fb_closed = c["feedback_closed_level"]
        self._trip = Pin(r["trip_pin"], Pin.IN, _pull_const(r["trip_pull"]))
        self._trip_level = r["trip_level"]
        s = b["pe"]
        self._pe = None if s is None else Pin(s["pin"], Pin.IN, _pull_const(s["pull"]))
        self._pe_ok = 1 if s is None else s["ok_level"]

        n = (NTC_MAX_C - NTC_MIN_C) // NTC_STEP_C + 1
        self._ntc = tuple(ADC(Pin(t["adc_pin"]), atten=atten) for t in b["ntc"])
        self._ntc_tab = tuple(
            ntc_table_uv(n, t["r25_ohm"], t["beta"], t["series_ohm"], t["supply_mv"]) for t in b["ntc"]
        )
        self._ntc_flip = array("i", (t["supply_mv"] * 1000 if t["side"] == "high" else 0 for t in b["ntc"]))

        ct = b["ct"]
        self._ct = tuple(ADC(Pin(q), atten=atten) for q in ct["pins"])
        self.adc_channels = len(self._ct)
        self.adc_burst_len = ct["burst_len"]
        self.adc_rate_hz = ct["rate_hz"]
        self.adc_full_scale = 4096
        self._ua = ua_per_count(ct["ratio"], ct["burden_ohm"], ct["full_scale_mv"])
        self._frame_us = 1000000 // ct["rate_hz"]
        self._frame_rem = 1000000 % ct["rate_hz"]

        s = b["phase_relay"]
        self.phase_relay = s is not None
        if s is not None:  # three phases at boot: the contactor is open anyway
            self._relay_3 = s["three_phase_level"]
            self._relay = Pin(s["pin"], Pin.OUT, value=self._relay_3)
        s = b["mains_ct"]
        self._mains = None if s is None else tuple(ADC(Pin(q), atten=atten) for q in s["pins"])
        if s is not None:
            self._mains_ua = ua_per_count(s["ratio"], s["burden_ohm"], s["full_scale_mv"])
            self._mbuf = array("H", bytes(2 * MAINS_SAMPLES))

        s = b["led"]
        self._led = None if s is None else Pin(s["pin"], Pin.OUT, value=1 - s["active_level"])
        self._led_on = 1 if s is None else s["active_level"]
        self._led_mode = 0

        # The network interface: the board file's Ethernet PHY, else WiFi.
        self.netif = _net.WlanIf() if b["eth"] is None else _net.LanIf(b["eth"])

        self._next = time.ticks_ms()  # wait_tick deadline
        self._idle = select.poll()  # nothing registered: wait_tick's GIL-free sleep
        self._epoch = SECS_1970_TO_2000 if time.gmtime(0)[0] == 2000 else 0
        self._nvlog_open(b["nvlog"])
        self.data_dir = "/data"
        try:
            os.stat(self.data_dir)
        except OSError:
            os.mkdir(self.data_dir)

    # --- clock -----------------------------------------------------------------
    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def ticks_add(self, t, delta_ms):
        return time.ticks_add(t, delta_ms)

    def wait_tick(self, period_ms):
        """Sleep until the next tick of the fixed-rate grid, without holding
        the GIL. time.sleep_ms() would not do: ports/esp32/mphalport.c
        mp_hal_delay_ms() sleeps in whole FreeRTOS ticks (10 ms, GIL released)
        only while at least one more tick fits, then busy-waits the rest in
        mp_hal_delay_us() holding the GIL, so a sleep under 10 ms, every
        sleep of this loop, would starve the link thread. An empty poll
        (extmod/modselect.c) waits in MICROPY_EVENT_POLL_HOOK
        (ports/esp32/mpconfigport.h): ulTaskNotifyTake(1) with the GIL released,
        until the deadline has passed. It wakes on the first FreeRTOS tick at or
        after the deadline (up to 10 ms late); the grid keeps its deadlines, so
        the loop locks onto the FreeRTOS tick and does not drift. ipoll()
        allocates nothing."""
        self._led_update()
        nxt = time.ticks_add(self._next, period_ms)
        now = time.ticks_ms()
        d = time.ticks_diff(nxt, now)
        if d > 0:
            for _ in self._idle.ipoll(d):
                pass  # nothing is registered: never an event
            self._next = nxt
        else:
            self._next = now  # late: return at once, restart the grid (no catch-up burst)

    def wall_time(self):
        t = time.time()
        if t + self._epoch < SECS_2024_SINCE_1970:
            return None
        return t + self._epoch

    def set_wall_time(self, unix_s, ms=0):
        t = time.gmtime(unix_s - self._epoch)
        # (year, month, day, weekday, hour, minute, second, microsecond)
        machine.RTC().datetime((t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], ms * 1000))

    # --- control pilot -----------------------------------------------------------
    def pilot_pwm(self, duty_pm):
        if duty_pm < 0:
            duty_pm = 0
        elif duty_pm > 1000:
            duty_pm = 1000
        ns = duty_pm * (PILOT_PERIOD_NS // 1000)
        self._pwm_on = True
        self._high_us = duty_pm  # the high half-period in us (1 per mille = 1 us at 1 kHz)
        if ns != self._duty:
            self._duty = ns
            self._pwm.duty_ns(ns)

    def pilot_steady(self, level):
        self._pwm_on = False
        want = -2 if level == PILOT_MINUS12 else -1
        if want != self._duty:
            self._duty = want
            self._pwm.duty_u16(0 if want == -2 else 65535)

    def pilot_read(self, out):
        a = self._pbuf
        lv = self._lv
        if self._pwm_on and self.pilot_phased:
            n = sample_phased(self._plevel, self._read, time.ticks_us, time.ticks_diff, self._plus, self._high_us,
                              1000 - self._high_us, self._settle, self._window, PILOT_ENOUGH, a, self._ptag)
            phase_levels(a, self._ptag, n, lv)
            out[0] = PILOT_UNSEEN if lv[0] < 0 else self._mv(lv[0])
            out[1] = PILOT_UNSEEN if lv[1] < 0 else self._mv(lv[1])
            return
        read = self._read
        n = self._pburst if self._pwm_on else STEADY_BURST
        step = self._pspace
        t = time.ticks_us()
        for i in range(n):
            while time.ticks_diff(t, time.ticks_us()) > 0:
                pass
            a[i] = read()
            t = time.ticks_add(t, step)
        if self._pwm_on:  # no read-back: the statistical split of an unsynchronised burst
            levels(a, n, self._spread, lv)
        else:  # steady: one level by definition; a spike must not become a "low level"
            lv[0] = median(a, 0, n)
            lv[1] = lv[0]
        x = self._mv(lv[0])
        y = self._mv(lv[1])
        if x >= y:
            out[0] = x
            out[1] = y
        else:  # an inverting measurement stage
            out[0] = y
            out[1] = x

    def _mv(self, v):
        """Pilot mV for one reading of self._read (a read_u16, or read_uv)."""
        return cal_mv(self._cx, self._cy, v >> 4 if self._raw else v // 1000)

    def pp_ohm(self):
        adc = self._pp
        if adc is None:
            return UNKNOWN
        s = 0
        for _ in range(PP_READS):
            s += adc.read_uv()
        return pp_ohm_from_mv(s // (PP_READS * 1000), self._pp_pull_ohm, self._pp_pull_mv, self._pp_max)

    # --- contactor -------------------------------------------------------------
    def contactor(self, closed):
        v = self._pole_on if closed else 1 - self._pole_on
        poles = self._poles
        for i in range(len(poles)):
            poles[i].value(v)

    def contactor_feedback(self):
        if self._fb is None:
            return UNKNOWN
        return 1 if self._fb.value() == self._fb_closed else 0

    # --- protection --------------------------------------------------------------
    def rcd_tripped(self):
        return self._trip.value() == self._trip_level

    def rcd_test(self, on):
        self._rcd_test.value(self._rcd_test_on if on else 1 - self._rcd_test_on)

    def pe_ok(self):
        if self._pe is None:
            return UNKNOWN
        return 1 if self._pe.value() == self._pe_ok else 0

    def temp_dc(self):
        n = len(self._ntc)
        if n == 0:
            return NO_TEMP
        hot = NO_TEMP
        for k in range(n):
            adc = self._ntc[k]
            s = 0
            for _ in range(NTC_READS):
                s += adc.read_uv()
            uv = s // NTC_READS
            flip = self._ntc_flip[k]
            if flip:
                uv = flip - uv  # NTC on the high side: mirror into the low-side table
            t = ntc_dc(self._ntc_tab[k], uv)
            if t > hot:
                hot = t
        return hot

    # --- current sense -------------------------------------------------------------
    def adc_burst(self, buf):
        self._burst(buf, None)

    # --- timing (issue 12): the pilot watched during the current-sense burst ---------
    def adc_burst_watched(self, buf, guard):
        """adc_burst() with one pilot read after each frame (hal/contract.py):
        stops once guard[3] reads were suspect, returns the frames filled. A
        frame is 3 CT reads (~165 us from Python) in a 312 us slot: the pilot
        read fits in the slack, so the burst keeps its rate."""
        return self._burst(buf, guard)

    # --- end timing ---

    def _burst(self, buf, guard):
        ch = self._ct
        nch = len(ch)
        a0 = ch[0]
        a1 = ch[1] if nch > 1 else a0
        a2 = ch[2] if nch > 2 else a0
        left = guard[3] if guard is not None else 0
        step = self._frame_us
        rem = self._frame_rem
        rate = self.adc_rate_hz
        err = 0
        # With the PWM on and the pin read back, the pilot reads count only
        # settled inside a half-period (as in pilot_read): the frame's wait
        # watches the pin, so the last edge is known to within a read-back.
        plevel = self._plevel
        phased = guard is not None and self._pwm_on and self.pilot_phased
        lvl = plevel() if phased else 0
        t = time.ticks_us()
        t_edge = t  # unknown phase at the start: as if an edge just now
        i = 0
        f = 0
        end = self.adc_burst_len * nch
        plus = self._plus
        high = self._high_us
        while i < end:
            early = False  # this frame's pilot read done in the wait, in a settled high half
            while True:
                now = time.ticks_us()
                wait = time.ticks_diff(t, now)
                if wait <= 0:
                    break
                if phased:
                    x = plevel()
                    if x != lvl:
                        lvl = x
                        t_edge = time.ticks_us()
                    elif (not early and x == plus and wait > _WATCH_READ_US
                          and time.ticks_diff(now, t_edge) >= self._settle
                          and time.ticks_diff(now, t_edge) + _WATCH_READ_US < high - _WATCH_MARGIN_US):
                        # the high half is where a change of state shows: read it
                        # now, in the frame's slack, rather than at the frame's phase
                        v = self._mv(self._read())
                        early = True
                        x = plevel()
                        if x != lvl:  # the half ended during the read after all
                            lvl = x
                            t_edge = time.ticks_us()
                        elif v > guard[0] or (guard[1] < v < guard[2] and 1000 - high >= _WATCH_HIDE_US):
                            left -= 1
            buf[i] = a0.read_u16() >> 4
            if nch > 1:
                buf[i + 1] = a1.read_u16() >> 4
                buf[i + 2] = a2.read_u16() >> 4
            i += nch
            f += 1
            if guard is not None and not early:
                ok = True
                if phased:
                    x = plevel()
                    ta = time.ticks_us()
                    half = self._high_us if x == self._plus else 1000 - self._high_us
                    if x != lvl:
                        lvl = x
                        t_edge = ta
                    ok = time.ticks_diff(ta, t_edge) >= self._settle
                if ok:
                    v = self._mv(self._read())
                    if phased:
                        x = plevel()
                        tb = time.ticks_us()
                        if x != lvl or time.ticks_diff(tb, t_edge) >= half - _WATCH_MARGIN_US:
                            ok = False  # an edge may have come during the read
                        if x != lvl:
                            lvl = x
                            t_edge = tb
                    # A read soon after an edge reads between the levels, so
                    # never above both: "above guard[0]" holds for any read;
                    # the gap test only where no whole opposite half-period
                    # can have passed unseen during the CT reads.
                    if ok and (v > guard[0] or (guard[1] < v < guard[2] and (
                            not phased or 1000 - half >= _WATCH_HIDE_US))):
                        left -= 1
            if guard is not None and left <= 0 and i < end:
                return f
            err += rem
            if err >= rate:
                err -= rate
                t = time.ticks_add(t, step + 1)
            else:
                t = time.ticks_add(t, step)
        return f


    def adc_ua_per_count(self, channel):
        return self._ua

    # --- energy management ---------------------------------------------------------------
    def phase_switch(self, phases):
        if self.phase_relay:
            self._relay.value(self._relay_3 if phases == 3 else 1 - self._relay_3)

    def mains_read(self, out):
        """RMS of each mains CT over one burst of MAINS_SAMPLES reads spread
        over MAINS_WINDOW_US (one 50 Hz period; 60 Hz leaves a partial period,
        a small error for a load manager). CTs without a voltage reference
        cannot tell import from export: readings are >= 0 (solar mode needs
        a signed feed on MQTT). Integer maths; allocates nothing."""
        adcs = self._mains
        if adcs is None:
            return False
        for k in range(3):
            if k >= len(adcs):
                out[k] = 0
                continue
            adc = adcs[k]
            a = self._mbuf
            s = 0
            t = time.ticks_us()
            for i in range(MAINS_SAMPLES):
                while time.ticks_diff(t, time.ticks_us()) > 0:
                    pass
                c = adc.read_u16() >> 4
                a[i] = c
                s += c
                t = time.ticks_add(t, MAINS_WINDOW_US // MAINS_SAMPLES)
            mean = s // MAINS_SAMPLES
            v = 0
            for i in range(MAINS_SAMPLES):  # two passes: every sum stays below 2**30
                d = a[i] - mean
                v += d * d
            out[k] = isqrt(v // MAINS_SAMPLES) * self._mains_ua // 1000
        return True

    # --- housekeeping ------------------------------------------------------------------
    def wdt_start(self, timeout_ms):
        """Start the watchdog, or give a running one a new timeout. It cannot
        be stopped on an ESP32; MicroPython built on ESP-IDF 5 reconfigures
        the task watchdog when WDT() is called again (the firmware uses that
        to give a REPL session a long maintenance window). On an older build
        that refuses, the running watchdog keeps its timeout and is fed."""
        try:
            self._wdt = machine.WDT(timeout=timeout_ms)
        except OSError:
            if self._wdt is not None:
                self._wdt.feed()

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def led(self, mode):
        self._led_mode = mode
        self._led_update()

    def _led_update(self):
        pin = self._led
        if pin is None:
            return
        mode = self._led_mode
        if mode == 0 or mode == 1:
            lit = mode
        else:
            half = LED_SLOW_MS if mode == 2 else LED_FAST_MS
            lit = (time.ticks_diff(time.ticks_ms(), 0) // half) & 1
        pin.value(self._led_on if lit else 1 - self._led_on)

    def reset_cause(self):
        return _RESET_NAMES.get(machine.reset_cause(), "hard")

    # --- the checkpoint area (hal/contract.py nvlog_*) ------------------------------
    # A raw data partition (hal/boards/README.md: the partition table), the
    # esp32.Partition block device with its native 4 KB blocks. MicroPython's
    # ports/esp32/esp32_partition.c: writeblocks(block, buf, offset), the
    # extended form, calls esp_partition_write() at block * 4096 + offset and
    # erases nothing ("erasing must have been done explicitly before this
    # write"); the 3-argument form would erase first. ioctl(6, block)
    # (MP_BLOCKDEV_IOCTL_BLOCK_ERASE) erases one 4 KB block
    # (esp_partition_erase_range). readblocks(block, buf, offset) reads.
    def _nvlog_open(self, spec):
        self._nv = _NoPartition()
        self._nv_size = 0
        self.nvlog_note = None  # why there is no checkpoint area, for the boot report
        if spec is None:
            return
        label = spec["label"]
        try:
            import esp32

            found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=label)
            if not found:
                self.nvlog_note = "no data partition labelled '" + label + "' in the partition table"
                return
            part = found[0]
            n = part.ioctl(4, 0) * part.ioctl(5, 0)  # block count x block size (4096)
        except Exception as e:  # no esp32 module, a driver error: no checkpoint area
            self.nvlog_note = "partition '" + label + "': " + repr(e)
            return
        self._nv = part
        self._nv_size = n - n % NVLOG_SECTOR

    def nvlog_size(self):
        return self._nv_size

    def nvlog_erase(self, sector):
        r = self._nv.ioctl(6, sector)
        if r:
            raise OSError(-r)

    def nvlog_write(self, offset, buf):
        self._nv.writeblocks(offset >> 12, buf, offset & 0xFFF)

    def nvlog_read(self, offset, buf):
        self._nv.readblocks(offset >> 12, buf, offset & 0xFFF)

    def unique_id(self):
        from binascii import hexlify

        return hexlify(machine.unique_id()).decode()

    def safe(self):
        try:
            off = 1 - self._pole_on
            poles = self._poles
        except Exception:
            return  # not constructed: nothing to drive
        for i in range(len(poles)):  # contactor first: it is what carries energy
            try:
                poles[i].value(off)
            except Exception:
                pass
        try:
            self._rcd_test.value(1 - self._rcd_test_on)
        except Exception:
            pass
        try:
            self._pwm.duty_u16(65535)
            self._duty = -1
            self._pwm_on = False
        except Exception:
            pass

    # --- firmware image: the OTA app partitions (esp32.Partition) ------------------------------
    def _ota_parts(self):
        """(running, next) esp32.Partition objects, or None on an image
        without OTA partitions (get_next_update() raises there)."""
        try:
            import esp32

            run = esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]  # the stubs know only labels
            return run, run.get_next_update()
        except Exception:
            return None

    def ota_info(self):
        parts = self._ota_parts()
        if parts is None:
            return None
        run, nxt = parts
        info = nxt.info()
        # MicroPython has no call for the running image's otadata state
        # (ESP-IDF's esp_ota_get_state_partition): "unknown".
        return {"running": run.info()[4], "next": info[4], "size": info[3], "state": "unknown"}

    def _ota_next(self):
        parts = self._ota_parts()
        if parts is None:
            raise OSError(19)  # ENODEV: no OTA partitions
        return parts[1]

    def ota_write(self, offset, buf):
        p = self._ota_next()
        n = len(buf)
        blk = (offset + OTA_BLOCK - 1) // OTA_BLOCK  # the first block that starts inside this write
        while blk * OTA_BLOCK < offset + n:
            p.ioctl(6, blk)  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE: one 4 KB flash sector
            blk += 1
        # The 4-argument writeblocks writes without erasing: block, data, offset in the block.
        p.writeblocks(offset // OTA_BLOCK, buf, offset % OTA_BLOCK)

    def ota_read(self, offset, buf):
        self._ota_next().readblocks(offset // OTA_BLOCK, buf, offset % OTA_BLOCK)

    def ota_set_boot(self):
        self._ota_next().set_boot()

    def ota_mark_valid(self):
        import esp32

        esp32.Partition.mark_app_valid_cancel_rollback()

    def reset(self):
        machine.reset()


class _NoPartition:
    """The checkpoint area of a board without one (nvlog_size() is 0)."""

    def ioctl(self, op, arg):
        return -19  # ENODEV

    def writeblocks(self, block, buf, offset):
        raise OSError(19)

    def readblocks(self, block, buf, offset):
        raise OSError(19)


def _pull_const(pull):
    if pull == "up":
        return machine.Pin.PULL_UP
    if pull == "down":
        return machine.Pin.PULL_DOWN
    return -1  # no pull: machine.Pin's "leave as is" default
