"""The simulated board's pilot front end: what an ESP32 ADC reads of the pilot.

Owns the model between the pilot wire and a raw ADC count, and runs the
board driver's own sampling (hal/pilotadc.py, the same code as hal/esp32.py)
against it, sample by sample, in a burst-local microsecond clock:

- settling: after each PWM edge the pilot at the ADC follows a first-order RC
  with time constant `tau_us` (default 10 us: the 1 kOhm source into the EV's
  and the cable's capacitance, a few us, plus the board's divider and its
  anti-alias filter, ~5 us; an assumption only hardware can confirm). A
  sample taken sooner after an edge reads between the levels; 32 us after
  it (hal/boardfile.py SETTLE_US_DEFAULT) it is within 4 % of the new level.
- the divider: ADC pin mV = `offset_mv` + pilot mV x `gain_pm` / 1000
  (default 1650 mV + 0.12 x V: the esp32_devkit.json design, which puts
  +12 V at 3090 mV, inside the compressed band).
- the ESP32 ADC at 11 dB (`adc_count()`): no reading below ~142 mV (the
  offset; Espressif specifies 150-2450 mV at 11 dB), linear at ~1.366 counts
  per mV up to 2450 mV (the eFuse line fit maps 0..4095 to ~142..3139 mV),
  then compressed: the slope falls linearly to a quarter at 3300 mV (the
  flattening of the published curves above 2450 mV; its exact shape varies
  between chips). Per chip a seeded offset (+-`chip_offset_counts`) and gain
  error (+-`chip_gain_ppm`); per read uniform noise of +-`noise_counts`.
- timing of the driver's reads (the costs of hal/esp32.py's calls from
  Python on a 240 MHz ESP32, estimates): a Pin read-back LEVEL_US, a raw
  read READ_US whose conversion happens READ_LEAD_US into the call,
  time.ticks_us() TICKS_US. A burst starts at a seeded random phase of the
  PWM (the loop is not synchronised to the LEDC timer).

The world (the EV's levels) is taken as it is when the burst runs; the
board charges the burst's time to its clock on a timed profile. Every value
is a small int (< 2**30 on a 32-bit port); nothing allocates per read.
"""

from array import array

from micropython import const

from hal.pilotadc import UNSEEN, levels, median, phase_levels, sample_phased
from hal.pilotcal import cal_mv
from sim.rng import RNG_MASK, lcg

LEVEL_US = const(8)  # pin() read-back: machine_pin_call's fast path plus the loop's bytecode (estimate)
READ_US = const(30)  # adc.read_u16(): ~10 us in C (shared notes, issue 7495) plus the call (estimate)
READ_LEAD_US = const(15)  # the conversion's instant inside that call (estimate)
TICKS_US = const(5)  # time.ticks_us() from Python (estimate)
STEADY_READS = const(9)  # hal/esp32.py STEADY_BURST
WATCH_CT_US = const(90)  # a watched frame's CT reads before its pilot read (3 raw reads, estimate)
WATCH_HIDE_US = const(100)  # hal/esp32.py _WATCH_HIDE_US
WATCH_MARGIN_US = const(20)  # hal/esp32.py _WATCH_MARGIN_US
WATCH_READ_US = const(60)  # hal/esp32.py _WATCH_READ_US
SPLIT_BURST = const(48)  # hal/esp32.py's fallback: `pilot.burst` reads ...
SPLIT_SPACING_US = const(43)  # ... `pilot.spacing_us` apart (esp32_devkit.json)
SAMPLES = const(64)  # hal/esp32.py PILOT_SAMPLES
SETTLE_US = const(32)  # hal/boardfile.py SETTLE_US_DEFAULT
WINDOW_US = const(2100)  # hal/boardfile.py WINDOW_US_DEFAULT
ENOUGH = const(4)  # hal/esp32.py PILOT_ENOUGH
_Q = const(10)  # decay table in q10

# The ADC curve (adc_count): Espressif's 11 dB range and eFuse line.
ADC_ZERO_MV = const(142)  # no count below this (the ADC's offset)
ADC_LINEAR_MV = const(2450)  # top of the specified linear range at 11 dB
ADC_SLOPE_PPM = const(1366000)  # counts per mV x 10**6 in the linear range
ADC_TOP_MV = const(3300)  # the slope has fallen to a quarter here

# Pilot voltages a calibration table is measured at (tools/evrig/calibrate.py,
# hal/boards/README.md): both ends and every state's nominal high level.
CAL_POINTS_MV = (-12000, -6000, 0, 3000, 6000, 9000, 12000)


def adc_count(pin_mv, offset_counts=0, gain_ppm=0):
    """The nominal ESP32 ADC count (11 dB, 12 bit) for a pin voltage in mV,
    with a chip's offset and gain error; clamped to 0..4095."""
    if pin_mv <= ADC_ZERO_MV:
        c = 0
    elif pin_mv <= ADC_LINEAR_MV:
        c = (pin_mv - ADC_ZERO_MV) * (ADC_SLOPE_PPM // 1000) // 1000
    else:
        d = pin_mv - ADC_LINEAR_MV
        if d > ADC_TOP_MV - ADC_LINEAR_MV:
            d = ADC_TOP_MV - ADC_LINEAR_MV
        # slope s(d) = s0 (1 - 0.75 d / 850): its integral s0 (d - 0.75 d^2 / 1700)
        c = (ADC_LINEAR_MV - ADC_ZERO_MV) * (ADC_SLOPE_PPM // 1000) // 1000 + (
            d - 3 * d * d // (4 * 2 * (ADC_TOP_MV - ADC_LINEAR_MV))) * (ADC_SLOPE_PPM // 1000) // 1000
    c = c + c * (gain_ppm // 100) // 10000 + offset_counts
    return 0 if c < 0 else 4095 if c > 4095 else c


def design_cal(offset_mv, gain_pm, points=CAL_POINTS_MV, offset_counts=0, gain_ppm=0):
    """The calibration table [[raw count, pilot mV], ...] a divider of this
    design reads through an ESP32 ADC (nominal: the board files' defaults;
    with a chip's errors: what calibrating that board measures)."""
    return [[adc_count(offset_mv + v * gain_pm // 1000, offset_counts, gain_ppm), v] for v in points]


def _diff(a, b):
    return a - b


class FrontEnd:
    """The pilot front end of one SimBoard (module docstring); pilot_read()
    is the driver's pilot_read on the model. phased False: the older
    statistical split of an unsynchronised burst (the benchmarks' baseline).
    cal: the board's calibration table (default: this chip's, as measured on
    the bench)."""

    def __init__(self, board, seed=1, tau_us=10, noise_counts=2, offset_mv=1650, gain_pm=120,
                 chip_offset_counts=8, chip_gain_ppm=5000, settle_us=SETTLE_US, window_us=WINDOW_US,
                 phased=True, cal=None):
        self.board = board
        self.tau_us = tau_us
        self.noise_counts = noise_counts
        self.offset_mv = offset_mv
        self.gain_pm = gain_pm
        self.settle_us = settle_us
        self.window_us = window_us
        self.phased = phased
        r = lcg((seed * 69069 + 3) & RNG_MASK)
        self.chip_offset = (r >> 8) % (2 * chip_offset_counts + 1) - chip_offset_counts
        r = lcg(r)
        self.chip_gain_ppm = (r >> 8) % (2 * chip_gain_ppm + 1) - chip_gain_ppm if chip_gain_ppm else 0
        self._rng = lcg(r)
        # The table of a board calibrated on the bench (hal/boards/README.md):
        # this chip's own counts at the calibration points, so what remains is
        # the interpolation between them and the noise.
        t = cal or design_cal(offset_mv, gain_pm, CAL_POINTS_MV, self.chip_offset, self.chip_gain_ppm)
        self.cal = t
        self._cx = array("i", [p[0] for p in t])  # arrays: every read is a small int
        self._cy = array("i", [p[1] for p in t])
        # SPREAD_MIN_MV (hal/esp32.py, 2 V of pilot) in counts, for the split
        self._spread = (self._cx[-1] - self._cx[0]) * 2000 // abs(self._cy[-1] - self._cy[0])
        n = 8 * tau_us + 1
        self._decay = array("H", bytes(2 * n))  # exp(-dt / tau) in q10, dt in us
        e = 1.0
        k = 2.718281828 ** (-1.0 / tau_us)
        for i in range(n):
            self._decay[i] = int(e * (1 << _Q) + 0.5)
            e *= k
        self._raw = array("i", bytes(4 * SAMPLES))
        self._tag = bytearray(SAMPLES)
        self._lv = array("i", (0, 0))
        self.t = 0  # burst-local clock, us since the PWM period's start phase
        self._duty_us = 0
        self._hi = 0  # the pilot's true levels during this burst, mV
        self._lo = 0
        self.level = self._level  # bound once: the driver's callables
        self.read = self._read
        self.us = self._us
        self.reads = 0  # ADC reads taken (for the benchmarks)
        self.last_us = window_us  # the last phase-classified burst's length
        self._wt = 0  # a watched burst's PWM phase, us
        self._started = False

    # --- the driver's callables on the model ---------------------------------------
    def _level(self):
        self.t += LEVEL_US
        return 1 if self.t % 1000 < self._duty_us else 0

    def _us(self):
        self.t += TICKS_US
        return self.t

    def _read(self):
        c = self._count_at(self.t + READ_LEAD_US)
        self.t += READ_US
        return c

    def _count_at(self, t):
        """The raw count of a read converting at burst time t (us)."""
        self.reads += 1
        hi = self._hi
        lo = self._lo
        ph = t % 1000
        d = self._duty_us
        dec = self._decay
        if ph < d:  # high half: rising from the low level since the edge
            v = hi + ((lo - hi) * dec[ph] >> _Q) if ph < len(dec) else hi
        else:
            ph -= d
            v = lo + ((hi - lo) * dec[ph] >> _Q) if ph < len(dec) else lo
        return self._adc(v)

    def _adc(self, pilot_mv):
        c = adc_count(self.offset_mv + pilot_mv * self.gain_pm // 1000, self.chip_offset, self.chip_gain_ppm)
        n = self.noise_counts
        if n:
            r = lcg(self._rng)
            self._rng = r
            c += (r >> 8) % (2 * n + 1) - n
            c = 0 if c < 0 else 4095 if c > 4095 else c
        return c

    # --- the driver's watched current-sense burst (hal/esp32.py _burst) -------------
    def watch_start(self):
        """A watched burst begins: at any phase of the PWM."""
        r = lcg(self._rng)
        self._rng = r
        self._wt = (r >> 8) % 1000
        self._started = False  # the first frame has no wait before it

    def watch(self, frames, frame_us, guard, left):
        """The pilot reads of `frames` frames of a watched burst, as the
        driver takes them (hal/esp32.py _burst): in the wait before a frame,
        once the pin has been high for settle_us with time left in the high
        half and in the slack, a read of the high half; otherwise one after
        the frame's CT reads, kept only settled inside its half-period (the
        gap test only where no opposite half can hide in the CT reads). On
        the world as it is now. Returns `left` less the suspect reads."""
        b = self.board
        self._hi = b._high_mv
        self._lo = b._low_mv
        d = b._duty_pm
        self._duty_us = d
        t = self._wt  # this step's first frame deadline, in the burst's PWM phase
        lo_ok = self.settle_us + LEVEL_US  # settled, seen by a read-back
        hi_ok = d - WATCH_READ_US - WATCH_MARGIN_US  # a read started by then ends in the half
        for _ in range(frames):
            # the wait before this frame: after the previous frame's reads
            s0 = t - frame_us + WATCH_CT_US + READ_US + 2 * LEVEL_US
            s1 = t - WATCH_READ_US
            ph = s0 % 1000
            if ph < lo_ok:
                s = s0 + lo_ok - ph
            elif ph < hi_ok:
                s = s0
            else:
                s = s0 + 1000 - ph + lo_ok
            if self._started and lo_ok < hi_ok and s <= s1:
                v = cal_mv(self._cx, self._cy, self._count_at(s + READ_LEAD_US))
                if v > guard[0] or (guard[1] < v < guard[2] and 1000 - d >= WATCH_HIDE_US):
                    left -= 1
            else:
                tr = t + WATCH_CT_US + LEVEL_US + TICKS_US  # the pilot read after the CT reads
                ph = tr % 1000
                if ph < d:
                    since = ph
                    half = d
                else:
                    since = ph - d
                    half = 1000 - d
                if since >= self.settle_us + LEVEL_US and since + READ_US + LEVEL_US < half - WATCH_MARGIN_US:
                    v = cal_mv(self._cx, self._cy, self._count_at(tr + READ_LEAD_US))
                    if v > guard[0] or (guard[1] < v < guard[2] and 1000 - half >= WATCH_HIDE_US):
                        left -= 1
            self._started = True
            t += frame_us
        self._wt = t % 1000
        return left

    # --- the driver's pilot_read on the model ---------------------------------------
    def burst_us(self):
        """The time the next pilot_read is expected to take (the last
        phase-classified burst's, which may stop early), for the board's clock."""
        b = self.board
        if not b._pwm:
            return STEADY_READS * READ_US
        return self.last_us if self.phased else SPLIT_BURST * max(SPLIT_SPACING_US, READ_US)

    def pilot_read(self, out):
        b = self.board
        lv = self._lv
        if not b._pwm:
            raw = self._raw
            for i in range(STEADY_READS):
                raw[i] = self._adc(b._high_mv)
            v = cal_mv(self._cx, self._cy, median(raw, 0, STEADY_READS))
            out[0] = v
            out[1] = v
            return
        self._hi = b._high_mv
        self._lo = b._low_mv
        self._duty_us = b._duty_pm  # 1 per mille = 1 us at 1 kHz
        r = lcg(self._rng)  # a burst starts at any phase of the PWM
        self._rng = r
        self.t = (r >> 8) % 1000
        raw = self._raw
        if self.phased:
            d = self._duty_us
            t0 = self.t
            n = sample_phased(self.level, self.read, self.us, _diff, 1, d, 1000 - d, self.settle_us,
                              self.window_us, ENOUGH, raw, self._tag)
            self.last_us = self.t - t0
            phase_levels(raw, self._tag, n, lv)
            out[0] = UNSEEN if lv[0] < 0 else cal_mv(self._cx, self._cy, lv[0])
            out[1] = UNSEEN if lv[1] < 0 else cal_mv(self._cx, self._cy, lv[1])
            return
        step = SPLIT_SPACING_US if SPLIT_SPACING_US > READ_US else READ_US
        t = self.t
        for i in range(SPLIT_BURST):
            raw[i] = self._count_at(t + READ_LEAD_US)
            t += step
        levels(raw, SPLIT_BURST, self._spread, lv)
        x = cal_mv(self._cx, self._cy, lv[0])
        y = cal_mv(self._cx, self._cy, lv[1])
        out[0] = x if x >= y else y
        out[1] = y if x >= y else x
