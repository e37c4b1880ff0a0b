"""Metering: RMS current per phase, power, energy, and the lifetime counter.

Owns: turning one ADC burst of the current transformers (CT) into RMS mA per
phase, power from the configured phase voltage, energy integrated in integer
mWh with every remainder carried (nothing is lost between samples), CT fault
detection (clipping, a stuck channel), the per-channel gain calibration and
the lifetime energy counter on flash (bounded writes, atomic, two copies).

Never does: use floats or allocate in sample() (the control loop's hot path),
let an int reach 2**30 there (an ESP32 boxes it), read the clock other than
through the HAL object, or decide anything about charging (the charger reads
`fault` and `max_ma()`).

The RMS window is a whole number of mains periods inside the burst (64
samples at 3200 Hz: one 50 Hz period, or one 60 Hz period of 53 1/3 samples
with the last sample weighted 1/3), so neither the bias (the window's own
mean) nor the RMS depends on where in the cycle the burst started. The mains
frequency therefore has to be known (`mains_hz`); see docs/metering.md.
"""

from array import array
from binascii import crc32

import micropython
from micropython import const

from firmware import store

SMALL_INT = const(1 << 30)  # ints at or above this allocate on an ESP32

# Below this RMS current a phase reads 0 (ADC noise alone gives a few hundred
# mA on an ESP32 with a 12-bit ADC and a 100 A CT; an idle EV draws less).
FLOOR_MA = const(200)
# A channel whose samples span at most this many counts is flat (a dead or
# stuck ADC input); a live input shows some noise even at zero current.
FLAT_PP_COUNTS = const(0)
# A flat channel while current is expected, or flat at a rail at any time,
# is reported as 'ct_stuck' after this long.
STUCK_MS = const(2000)
# Energy is integrated in chunks of at most this many ms (keeps every
# product below 2**30 at 3 x 268 A x 480 V).
DT_CHUNK_MS = const(4000)
# Lifetime checkpoints: never more often than PERSIST_MIN_MS unless a session
# ended; due after PERSIST_WH of new energy, or PERSIST_MAX_MS with any.
PERSIST_MIN_MS = const(60000)
PERSIST_MAX_MS = const(300000)
PERSIST_WH = const(100)
# Calibration: accepted gains (ppm of the board's nominal scale) and the
# smallest reference current worth calibrating against.
GAIN_UNITY_PPM = const(1000000)
GAIN_MIN_PPM = const(500000)
GAIN_MAX_PPM = const(2000000)
CAL_MIN_MA = const(2000)

_REC = "lifetime"  # first word of the lifetime record
_LIFE_MAX_BYTES = const(64)  # "lifetime 1073741823 999 89abcdef\n" is 33
_CAL_MAX_BYTES = const(512)  # {"gain_ppm": [three gains]}


@micropython.native  # the hot loop of metering: ~2x faster; xtensawin (ESP32) has the native emitter
def _reduce(buf, ch, step, n, w, out):
    """One channel of an interleaved burst: mean square about the window's own
    mean, in counts^2 x 16, over samples 0..n-1 (weight 1) and sample n
    (weight w/64). Fills out[0] = mean square x16, out[1] = min, out[2] = max.
    Every intermediate stays below 2**30 for n <= 64 and 12-bit codes."""
    lo = buf[ch]
    hi = lo
    s = 0
    i = ch
    end = ch + n * step
    while i < end:
        x = buf[i]
        s += x
        if x < lo:
            lo = x
        if x > hi:
            hi = x
        i += step
    w64 = n * 64 + w
    s64 = s * 64
    if w:
        x = buf[end]
        s64 += w * x
        if x < lo:
            lo = x
        if x > hi:
            hi = x
    b = s64 // w64  # integer part of the mean; the fraction is corrected below
    rm = s64 - b * w64
    s2 = 0
    i = ch
    while i < end:
        d = buf[i] - b
        s2 += d * d
        i += step
    if w:
        d = buf[end] - b
        s2 += (w * (d * d)) // 64
    # mean square x16 = s2 * 64 * 16 / w64, done as a long division
    q = s2 // w64
    ms16 = q * 1024 + ((s2 - q * w64) * 1024) // w64
    # sum (x - b)^2 = sum (x - mean)^2 + N (mean - b)^2: remove the second part
    f = (rm * 256) // w64  # mean - b in 1/256 counts
    ms16 -= (f * f) // 4096
    if ms16 < 0:
        ms16 = 0
    out[0] = ms16
    out[1] = lo
    out[2] = hi


def _rms128(ms16):
    """RMS in counts x 128 from a mean square in counts^2 x 16 (< 2**30)."""
    # floor square root, digit by digit (r is the root of the part consumed)
    n = ms16
    r = 0
    bit = 1 << 28
    while n < bit:
        bit >>= 2
        if bit == 0:
            return 0
    while bit:
        if n >= r + bit:
            n -= r + bit
            r = (r >> 1) + bit
        else:
            r >>= 1
        bit >>= 2
    # r = floor(sqrt(ms16)) in counts x 4; n = ms16 - r*r; interpolate the rest
    return r * 32 + (n * 32) // (2 * r + 1)


def _ma(rms128, k_ua):
    """mA from RMS counts x 128 and the calibrated microamps per count."""
    q = rms128 // 128
    return (q * k_ua + ((rms128 - q * 128) * k_ua) // 128 + 500) // 1000


def _energy(acc, p2_mw, dt_ms):
    """mWh delivered in dt_ms (<= DT_CHUNK_MS) at the mean power p2_mw / 2 mW.
    Exact: the remainders wait in acc[0] (units of 1/1000 mWh) and acc[1]
    (units of 1/7.2e6 mWh) for the next call."""
    a = p2_mw // 7200
    e = 0
    acc[0] += a * dt_ms
    if acc[0] >= 1000:
        e = acc[0] // 1000
        acc[0] -= e * 1000
    acc[1] += (p2_mw - a * 7200) * dt_ms
    if acc[1] >= 7200000:
        f = acc[1] // 7200000
        acc[1] -= f * 7200000
        e += f
    return e


def _record(wh, mwh):
    body = "%s %d %d" % (_REC, wh, mwh)
    return "%s %08x\n" % (body, crc32(body.encode()) & 0xFFFFFFFF)


def _parse(data):
    """(wh, mwh) from a lifetime record (bytes), or None if it is not a valid one."""
    try:
        text = data.decode()
    except ValueError:  # UnicodeError: a flipped bit
        return None
    parts = text.strip().split(" ")
    if len(parts) != 4 or parts[0] != _REC:
        return None
    body = " ".join(parts[:3])
    try:
        wh = int(parts[1])
        mwh = int(parts[2])
        crc = int(parts[3], 16)
    except ValueError:
        return None
    if crc != crc32(body.encode()) & 0xFFFFFFFF:
        return None
    if wh < 0 or wh >= SMALL_INT or mwh < 0 or mwh > 999:
        return None
    return (wh, mwh)


class Meter:
    def __init__(self, hal, phases=3, voltage_v=230, cal=None, mains_hz=50, floor_ma=FLOOR_MA):
        nch = hal.adc_channels
        if phases < 1 or phases > 3 or phases > nch:
            raise ValueError("meter: %d phases but the board has %d CT channels" % (phases, nch))
        n = hal.adc_burst_len
        fs = hal.adc_full_scale
        # Samples per mains period x 64, and the whole periods that fit in a burst.
        per64 = (hal.adc_rate_hz * 128 + mains_hz) // (2 * mains_hz)
        periods = (n * 64) // per64
        if periods < 1:
            raise ValueError("meter: a burst of %d samples is shorter than one %d Hz period" % (n, mains_hz))
        # Fewer periods when a long burst would overflow _reduce's sums: the
        # weighted sum of codes, one weighted square, and the sum of squares
        # about the mean (at most N x (fs/2)^2).
        while periods > 0:
            w64 = periods * per64
            n1 = w64 // 64 + 1
            if n1 * 64 * fs < SMALL_INT and n1 * (fs // 2) ** 2 + n1 < SMALL_INT:
                break
            periods -= 1
        if periods < 1 or 63 * (fs - 1) ** 2 >= SMALL_INT:
            raise ValueError("meter: %d-count ADC codes overflow small ints" % fs)
        self._n = w64 // 64
        self._w = w64 % 64
        self._hal = hal
        self._nch = nch
        self._fs = fs
        self.phases = phases
        self.voltage_v = voltage_v
        self.floor_ma = floor_ma
        if voltage_v < 1 or voltage_v > 480:
            raise ValueError("meter: voltage_v %d outside 1..480" % voltage_v)
        self._buf = array("H", bytes(2 * n * nch))
        self._burst = n
        self._watched = hasattr(hal, "adc_burst_watched")
        self._red = array("i", [0, 0, 0])
        self._raw = array("i", [0, 0, 0])  # last RMS per channel before calibration, counts x 128
        self._gain = array("i", [GAIN_UNITY_PPM] * 3)
        self._k_ua = array("i", [0, 0, 0])
        self._flat_since = array("i", [0, 0, 0])
        self._flat = bytearray(3)
        err = self._set_gains([GAIN_UNITY_PPM] * nch if cal is None else cal)
        if err:
            raise ValueError(err)
        self.i_ma = array("i", [0, 0, 0])
        self.power_w = 0
        self.fault = None
        self._expect = False
        # energy
        self._acc = array("i", [0, 0])
        self._p2 = 0  # power of the previous sample, mW
        self._t_prev = 0
        self._have_t = False
        self._in_session = False
        self._ses_wh = 0
        self._ses_mwh = 0
        self.lifetime_wh = 0
        self._life_mwh = 0
        self._saved_wh = 0
        self._saved_mwh = 0
        self._saved_ms = None
        self._end_due = False

    # --- calibration -------------------------------------------------------------
    def _set_gains(self, gains):
        """Check and apply per-channel gains (ppm); None or an error text."""
        hal = self._hal
        if not isinstance(gains, (list, tuple)) or len(gains) < self.phases or len(gains) > 3:
            return "meter: cal needs one gain (ppm) per channel"
        k = [0, 0, 0]
        for c in range(len(gains)):
            g = gains[c]
            if not isinstance(g, int) or isinstance(g, bool) or g < GAIN_MIN_PPM or g > GAIN_MAX_PPM:
                return "meter: gain %r of channel %d is outside %d..%d ppm" % (g, c, GAIN_MIN_PPM, GAIN_MAX_PPM)
            if c < self._nch:
                k[c] = (hal.adc_ua_per_count(c) * g + GAIN_UNITY_PPM // 2) // GAIN_UNITY_PPM
                # _ma() multiplies up to fs/2 counts by k; _energy() takes two
                # readings of three phases at full scale in mW
                top_ma = (self._fs // 2) * k[c] // 1000 + 1
                if k[c] < 1 or (self._fs // 2 + 1) * k[c] >= SMALL_INT or 6 * self.voltage_v * top_ma >= SMALL_INT:
                    return "meter: channel %d scale %d uA/count is out of range" % (c, k[c])
        for c in range(len(gains)):
            self._gain[c] = gains[c]
            self._k_ua[c] = k[c]
        return None

    def gains(self):
        """Per-channel gains in ppm (1000000 = the board's nominal scale)."""
        return [self._gain[c] for c in range(self._nch)]

    def calibrate(self, channel, reference_ma):
        """Set the gain of channel so that the last sample() reads reference_ma
        (a known steady load through that CT). Returns the new gain in ppm;
        raises ValueError when the reading or the result is implausible."""
        if channel < 0 or channel >= self._nch:
            raise ValueError("meter: no channel %d" % channel)
        if reference_ma < CAL_MIN_MA:
            raise ValueError("meter: calibrate with at least %d mA" % CAL_MIN_MA)
        if self.fault is not None:
            raise ValueError("meter: cannot calibrate during fault %s" % self.fault)
        raw = self._raw[channel]
        nominal_ua = self._hal.adc_ua_per_count(channel)
        measured_ua = raw * nominal_ua // 128
        if measured_ua < CAL_MIN_MA * 1000 // 4:
            raise ValueError("meter: channel %d reads %d mA, too little to calibrate" % (channel, measured_ua // 1000))
        gain = (reference_ma * 1000 * GAIN_UNITY_PPM + measured_ua // 2) // measured_ua
        gains = self.gains()
        gains[channel] = gain
        err = self._set_gains(gains)
        if err:
            raise ValueError(err)
        return gain

    def save_cal(self, path):
        """Write the gains as JSON (atomic). None or an error text."""
        import json

        try:
            store.write(path, json.dumps({"gain_ppm": self.gains()}) + "\n")
        except OSError as e:
            return "meter: cannot write %s: %s" % (path, e)
        return None

    def load_cal(self, path):
        """Read gains written by save_cal(). On any problem the gains in use
        stay as they are and the problem is returned as text; None when fine."""
        data, err = store.load_json(path, _CAL_MAX_BYTES)
        if data is None:
            return "meter: calibration file %s: %s" % (path, err or "missing")
        if not isinstance(data, dict) or "gain_ppm" not in data:
            return "meter: calibration file %s has no gain_ppm" % path
        return self._set_gains(data["gain_ppm"])

    # --- the hot path --------------------------------------------------------------
    def expect_current(self, flag):
        """Tell the meter whether current should flow (contactor closed and the
        EV charging): a flat channel is then a stuck CT input."""
        self._expect = bool(flag)

    def sample(self, now_ms, expect=None, guard=None):
        """One ADC burst: RMS per phase, power, energy since the last call, CT
        faults. Allocates nothing. `expect` (optional) is expect_current().
        guard (optional, hal/contract.py adc_burst_watched): the pilot is
        watched during the burst on boards that can; a burst it cut short is
        dropped (False: nothing measured, the next one covers the energy)."""
        if expect is not None:
            self._expect = expect
        hal = self._hal
        buf = self._buf
        if guard is not None and self._watched:
            if hal.adc_burst_watched(buf, guard) < self._burst:
                return False
        else:
            hal.adc_burst(buf)
        red = self._red
        raw = self._raw
        k_ua = self._k_ua
        i_ma = self.i_ma
        flat_since = self._flat_since
        flat = self._flat
        top = self._fs - 1
        clip = False
        stuck = False
        total_ma = 0
        for c in range(self.phases):
            _reduce(buf, c, self._nch, self._n, self._w, red)
            r = _rms128(red[0])
            raw[c] = r
            i = _ma(r, k_ua[c])
            if i < self.floor_ma:
                i = 0
            i_ma[c] = i
            total_ma += i
            lo = red[1]
            hi = red[2]
            if hi - lo <= FLAT_PP_COUNTS:
                if self._expect or lo <= 0 or hi >= top:
                    if not flat[c]:
                        flat[c] = 1
                        flat_since[c] = now_ms
                    elif hal.ticks_diff(now_ms, flat_since[c]) >= STUCK_MS:
                        stuck = True
                else:
                    flat[c] = 0
            else:
                flat[c] = 0
                if lo <= 0 or hi >= top:
                    clip = True
        if stuck:
            self.fault = "ct_stuck"
        elif clip:
            self.fault = "ct_clip"
        else:
            self.fault = None
        p_mw = self.voltage_v * total_ma
        self.power_w = p_mw // 1000
        if self._have_t:
            dt = hal.ticks_diff(now_ms, self._t_prev)
            p2 = self._p2 + p_mw
            e = 0
            while dt > DT_CHUNK_MS:
                e += _energy(self._acc, p2, DT_CHUNK_MS)
                dt -= DT_CHUNK_MS
            if dt > 0:
                e += _energy(self._acc, p2, dt)
            if e:
                self._add(e)
        self._have_t = True
        self._t_prev = now_ms
        self._p2 = p_mw
        return True

    def _add(self, e):
        m = self._life_mwh + e
        if m >= 1000:
            self.lifetime_wh += m // 1000
            m %= 1000
        self._life_mwh = m
        if self._in_session:
            m = self._ses_mwh + e
            if m >= 1000:
                self._ses_wh += m // 1000
                m %= 1000
            self._ses_mwh = m

    def max_ma(self):
        """The largest phase current, mA."""
        i_ma = self.i_ma
        m = i_ma[0]
        if i_ma[1] > m:
            m = i_ma[1]
        if i_ma[2] > m:
            m = i_ma[2]
        return m

    # --- sessions ----------------------------------------------------------------------
    def session_begin(self):
        self._ses_wh = 0
        self._ses_mwh = 0
        self._in_session = True

    def session_end(self):
        """Close the session; returns its energy in mWh. The lifetime counter
        is then due for a checkpoint (checkpoint_due() answers True)."""
        self._in_session = False
        self._end_due = True
        return self.session_mwh

    @property
    def session_mwh(self):
        # A small int up to 1073 kWh per session (19 h at 3 x 80 A x 230 V).
        return self._ses_wh * 1000 + self._ses_mwh

    def meter_wh(self):
        """The lifetime reading as (Wh, mWh 0..999): OCPP MeterStart/MeterStop
        take the Wh; the mWh keep the fraction for exact session sums."""
        return (self.lifetime_wh, self._life_mwh)

    def lifetime_mwh(self):
        """The lifetime reading in mWh (a long int past 1073 kWh: not for the hot path)."""
        return self.lifetime_wh * 1000 + self._life_mwh

    # --- lifetime counter on flash ---------------------------------------------------------
    def checkpoint_due(self, now_ms):
        """True when the lifetime counter should be persisted now: after a
        session ended, after PERSIST_WH of new energy (but not more often than
        every PERSIST_MIN_MS), or after PERSIST_MAX_MS with any new energy."""
        if self._saved_ms is None:
            self._saved_ms = now_ms
        new_mwh = (self.lifetime_wh - self._saved_wh) * 1000 + self._life_mwh - self._saved_mwh
        if new_mwh <= 0:
            return False
        if self._end_due:
            return True
        age = self._hal.ticks_diff(now_ms, self._saved_ms)
        if age >= PERSIST_MAX_MS:
            return True
        return age >= PERSIST_MIN_MS and new_mwh >= PERSIST_WH * 1000

    def persist(self, path, now_ms):
        """Write the lifetime counter: path.tmp, then the old file becomes
        path.bak, then path.tmp becomes path. None or an error text."""
        wh = self.lifetime_wh
        mwh = self._life_mwh
        try:
            store.write(path, _record(wh, mwh), True)
        except OSError as e:
            # Retried when due again (PERSIST_MAX_MS), not every burst.
            self._saved_ms = now_ms
            self._end_due = False
            return "meter: cannot save %s: %s" % (path, e)
        self._saved_wh = wh
        self._saved_mwh = mwh
        self._saved_ms = now_ms
        self._end_due = False
        return None

    def load(self, path):
        """Read the lifetime counter from path (or path.tmp when path is
        missing: a write cut short before its last rename, firmware/store.py)
        or path.bak, whichever valid copy is highest (the counter only grows).
        None when path was good (or there is no counter yet: first boot), else
        a text saying what was wrong."""
        best = None
        damaged = []
        main_ok = False
        for p in (path, path + ".bak"):
            data, err = store.read(p, _LIFE_MAX_BYTES)
            v = None if data is None else _parse(data)
            if v is None:
                if data is not None or err:
                    damaged.append(err or p)
                continue
            if p == path:
                main_ok = True
            if best is None or v > best:
                best = v
        if best is None:
            if damaged:
                return "meter: %s damaged and no good copy: lifetime starts at 0" % ", ".join(damaged)
            return None
        self.lifetime_wh, self._life_mwh = best
        self._saved_wh, self._saved_mwh = best
        if damaged:
            return "meter: %s damaged, lifetime %d Wh from the last good copy" % (", ".join(damaged), best[0])
        if not main_ok:
            return "meter: %s missing, lifetime %d Wh from the last good copy" % (path, best[0])
        return None

    def saved_wh(self):
        """The lifetime Wh as last persisted: what a power cut cannot take back."""
        return self._saved_wh

    def at_least(self, mwh):
        """Raise the lifetime counter to mwh (a reading journaled after the
        last persist(): a power cut came between the two). True when raised;
        the counter is then due for a checkpoint."""
        if mwh <= self.lifetime_mwh() or mwh // 1000 >= SMALL_INT:
            return False  # (a reading no counter can hold is damage, not energy)
        self.lifetime_wh = mwh // 1000
        self._life_mwh = mwh % 1000
        self._end_due = True
        return True
