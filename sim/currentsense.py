"""The simulated board's current sense: what its CT channels' ADC reads.

One burst of raw 12-bit codes, frame by frame and channel by channel, for the
current the EV draws: the mains at 50/60 Hz with a drift, the EV's current
waveform (fundamental plus harmonics) 120 degrees apart per phase, each CT's
gain error, the ADC's bias and uniform noise, an ESP32-like S-shaped transfer
curve with a dead zone at the bottom, clipping at 0 and 4095, and the
stuck_adc fault (one channel returns a fixed code).

CurrentSense holds the constant tables (the waveform, the transfer curve) and
the viper kernel's parameters; a burst takes its settings from the board's
public attributes (sim/board.py: adc_channels, adc_burst_len, adc_rate_hz,
adc_bias, adc_noise_counts, ct_ua_per_count, ct_error_pm, mains_hz,
mains_drift_pm, stuck_channel, stuck_code), read at every burst, so a test may
change them between ticks. Every value stays a small int on a 32-bit port (the
kernel's products below 2**28, muldiv); a burst allocates nothing.
"""

import math
from array import array

import micropython
from micropython import const

_WAVE_BITS = const(10)  # 1024-point waveform table
_PHASE_BITS = const(26)  # phase accumulator: 10 bits index + 16 bits fraction
_PHASE_MASK = const((1 << 26) - 1)
_THIRD_CYCLE = const(22369621)  # 2**26 / 3: 120 degrees between phases
_WAVE_ZERO = const(32768)  # the table is offset binary, q14 around this
_AMP_K = const(362039)  # 1000 (uA/mA) * sqrt(2) * 256 (q8): RMS mA -> peak q8 uA
_LCG_A = const(29773421)  # 1103515245 % 2**30 (sim/rng.py, inlined for the viper kernel)
_RNG_MASK = const(0x3FFFFFFF)


@micropython.viper
def _adc_fill(buf, wave, par, lin) -> int:
    # par: 0 frames, 1 channels, 2 start phase, 3 phase step, 4 bias, 5 noise
    # (+- counts), 6 rng state, 7 nonlinear (0/1), 8 stuck channel + 1 (0: none),
    # 9 stuck code, 10.. peak amplitude per channel (counts, q8). All >= 0.
    b = ptr16(buf)  # noqa: F821 (viper built-ins)
    w = ptr16(wave)  # noqa: F821
    p = ptr32(par)  # noqa: F821
    lt = ptr16(lin)  # noqa: F821
    n = p[0]
    nch = p[1]
    phase = p[2]
    inc = p[3]
    bias = p[4]
    noise = p[5]
    r = p[6]
    nl = p[7]
    span = noise * 2 + 1
    j = 0
    for _ in range(n):
        for c in range(nch):
            idx = ((phase - c * _THIRD_CYCLE) >> 16) & 1023
            # (amp * d + 2**21) >> 22 with amp = 256 * ah + al, split so that
            # no product needs more than 28 bits (machine words are 32 bits on
            # an ESP32 or a 32-bit port); the floor is exactly the same.
            d = w[idx] - 32768
            a = p[10 + c]
            v = bias + (((a >> 8) * d + (((a & 255) * d + 2097152) >> 8)) >> 14)
            if noise:
                r = (r * _LCG_A + 12345) & _RNG_MASK  # mod 2**30: a word's low bits are exact
                v += (r >> 8) % span - noise
            if v < 0:
                v = 0
            elif v > 4095:
                v = 4095
            if nl:
                v = lt[v]
            b[j] = v
            j += 1
        phase = (phase + inc) & _PHASE_MASK
    stuck = p[8]
    if stuck:
        j = stuck - 1
        while j < n * nch:
            b[j] = p[9]
            j += nch
    return r


def muldiv(a, b, d, rem=None):
    """floor(a * b / d) for 0 <= a, b < 2**30 and 0 < d < 2**29 when the result
    is below 2**30, with small ints only (on a 32-bit port a * b would be a big
    int on the heap): b's bits from the top, quotient and remainder kept apart.
    rem[0] gets the remainder when rem is given."""
    qa = a // d  # not divmod: its tuple would allocate
    ra = a - qa * d
    q = 0
    r = 0
    bit = 1 << 29
    while bit:
        q += q
        r += r
        if r >= d:
            r -= d
            q += 1
        if b & bit:
            r += ra
            if r >= d:
                r -= d
                q += 1
        bit >>= 1
    if rem is not None:
        rem[0] = r
    return qa * b + q


def make_wave(harmonics):
    """One mains cycle of the EV's current, unit RMS / sqrt(2) in q14,
    offset binary: fundamental plus (order, per mille) harmonics."""
    norm = math.sqrt(1 + sum((h / 1000) ** 2 for _, h in harmonics))
    n = 1 << _WAVE_BITS
    w = array("H", bytes(2 * n))  # no temporary list: 2 bytes an entry, not 8
    for k in range(n):
        t = 2 * math.pi * k / n
        v = math.sin(t)
        for order, h in harmonics:
            v += h / 1000 * math.sin(order * t)
        w[k] = _WAVE_ZERO + round(16384 * v / norm)
    return w


def make_lin(counts):
    """ESP32-like ADC transfer curve: an S-shaped bow of up to `counts`
    (a cubic through both ends, so 0 and 4095 stay), plus a dead zone of
    `counts` codes at the bottom where the ESP32 reads 0. Without a bow
    the kernel never looks it up: a 1-entry table instead of 8 KB of heap."""
    if not counts:
        return array("H", (0,))
    lin = array("H", bytes(2 * 4096))
    for x in range(4096):
        u = (x - 2048) / 2048
        y = round(x + counts * 2.598 * (u - u * u * u))
        if counts and x < counts:
            y = 0
        lin[x] = max(0, min(4095, y))
    return lin


class CurrentSense:
    """The CT signal of one board (module docstring): harmonics ((order, per
    mille), ...) of the EV's current, nonlinear_counts the ADC curve's bow (0:
    linear). Its tables never change: boards may share one CurrentSense."""

    def __init__(self, harmonics=((3, 30), (5, 20)), nonlinear_counts=0):
        self.wave = make_wave(harmonics)
        self.lin = make_lin(nonlinear_counts)
        self.nonlinear = 1 if nonlinear_counts else 0
        self._par = array("i", [0] * 13)

    def fill(self, buf, b, i_ma, drawn, stuck, rng):
        """One burst of board b into buf (adc_burst_len frames of
        adc_channels codes) at b.now_ms: i_ma on each of the first `drawn`
        channels, none on the others; the stuck_adc fault on (`stuck`) or
        not. rng: the board's noise PRNG state; returns its next one."""
        par = self._par
        nch = b.adc_channels
        f_mhz = b.mains_hz * (1000 + b.mains_drift_pm)  # mains in mHz
        par[0] = b.adc_burst_len
        par[1] = nch
        # Phase of the mains at now_ms: (now_ms * f_mhz) % 10**6 cycles x 10**-6,
        # as 2**26ths; with small ints only (now_ms = 1000 t1 + t0).
        now = b.now_ms
        t1 = now // 1000
        t0 = now - t1 * 1000
        cyc = (1000 * (t1 % 1000 * (f_mhz % 1000) % 1000) + t0 * f_mhz) % 1000000
        par[2] = muldiv(cyc, 1 << _PHASE_BITS, 1000000)
        par[3] = muldiv(f_mhz, 1 << _PHASE_BITS, b.adc_rate_hz * 1000)
        par[4] = b.adc_bias
        par[5] = b.adc_noise_counts
        par[6] = rng
        par[7] = self.nonlinear
        par[8] = b.stuck_channel + 1 if stuck else 0
        par[9] = b.stuck_code
        upc = b.ct_ua_per_count
        err = b.ct_error_pm
        for c in range(nch):
            par[10 + c] = muldiv(i_ma, _AMP_K * (1000 + err[c]), 1000 * upc) if c < drawn else 0
        return _adc_fill(buf, self.wave, par, self.lin)
