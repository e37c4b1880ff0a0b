"""The pilot's ADC: samples classified by PWM phase.

Owns the pure logic of reading the control pilot through an ESP32 ADC, shared
by the board driver (hal/esp32.py, on real pins) and the simulated board
(sim/frontend.py, on its model of the front end): it never touches `machine`
or the clock itself; the caller passes the pin, ADC and clock as callables.

- `sample_phased()`: a burst whose every ADC read is bracketed by two
  read-backs of the PWM output pin. A sample is kept only when the pin showed
  the same level before and after the read, that level had already lasted
  `settle_us` (the front end's RC has settled after the edge) and the read
  ended before its half-period could (the PWM's period and duty are known
  from the last edge seen, so no pulse can hide inside a read). Its tag says
  which half-period it belongs to: the high half gives the state, the low
  half the diode check.
- `phase_levels()`: the median raw count of each half.
- `levels()` / `median()`: the older statistical split of an unsynchronised
  burst at the midpoint of its range (kept for boards whose PWM pin cannot be
  read back, and as the baseline of the benchmarks).

The raw counts become pilot millivolts through the calibration table
(hal/pilotcal.py).

Allocates nothing per call; small ints only.
"""

import micropython
from micropython import const

# A level the burst could not see (no kept sample in that half-period):
# outside every IEC window, so the firmware reads it as invalid (hal/contract.py
# PILOT_UNSEEN repeats it).
UNSEEN = const(-30000)

_END_MARGIN_US = const(5)  # a read must end this long before its half-period can (LEDC period rounding)
_FIRST_READ_US = const(50)  # how long a read is guessed to take until one was timed


@micropython.native
def sample_phased(level, read, us, diff, plus, high_us, low_us, settle_us, window_us, enough, raw, tag):
    """Read the pilot ADC for window_us and keep the samples taken well inside
    one half-period of the PWM (module docstring). level(): the PWM pin's
    level now (plus: the level that drives +12 V); read(): one raw ADC
    reading; us()/diff(): a microsecond clock and its wrap-safe difference;
    high_us/low_us: the PWM's half-periods. Knowing them, no read starts that
    could end after its half-period may: the pin is watched instead, so the
    next edge is caught within one read-back. Stops early once both halves
    have `enough` samples. Fills raw[:n] and tag[:n] (1 high half, 0 low
    half), returns n (at most len(raw))."""
    cap = len(raw)
    t0 = us()
    prev = level()
    last = t0  # time of the latest read-back
    run_lo = t0  # the current half-period began after run_lo ...
    run_hi = t0  # ... and before run_hi
    run_len = 0  # its length; 0 until an edge was seen (the phase is unknown before)
    br = _FIRST_READ_US  # the last read's bracket (read-back to read-back)
    n = 0
    nh = 0  # of them in the high half
    while n < cap and (nh < enough or n - nh < enough):
        a = level()
        ta = us()
        if diff(ta, t0) >= window_us:
            break
        if a != prev:
            prev = a
            run_lo = last
            run_hi = ta
            run_len = high_us if a == plus else low_us
            last = ta
            continue
        last = ta
        if run_len == 0:
            continue
        t = ta
        while diff(t, run_hi) < settle_us:  # the front end settles after the edge
            t = us()
        if diff(run_lo + run_len - _END_MARGIN_US, t) < br:
            continue  # the half-period may end during a read: watch for the edge instead
        x = read()
        b = level()
        tb = us()
        br = diff(tb, t)
        last = tb
        if b != a:  # the half-period ended during the read after all: a new one began
            prev = b
            run_lo = t
            run_hi = tb
            run_len = high_us if b == plus else low_us
            continue
        raw[n] = x
        if a == plus:
            tag[n] = 1
            nh += 1
        else:
            tag[n] = 0
        n += 1
    return n


@micropython.native
def phase_levels(raw, tag, n, out):
    """out[0] = median raw count of the high-half samples, out[1] of the low
    half; -1 for a half without samples. Reorders raw[:n] and tag[:n]."""
    h = 0  # move the high samples to the front
    for i in range(n):
        if tag[i]:
            t = raw[h]
            raw[h] = raw[i]
            raw[i] = t
            t = tag[h]
            tag[h] = tag[i]
            tag[i] = t
            h += 1
    out[0] = median(raw, 0, h) if h else -1
    out[1] = median(raw, h, n) if h < n else -1


# --- the statistical split (unsynchronised bursts) ------------------------------


@micropython.native
def _select(a, lo, hi, k):
    """The k-th smallest of a[lo:hi] (quickselect, in place, no allocation)."""
    hi -= 1
    while lo < hi:
        pivot = a[(lo + hi) >> 1]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


def median(a, lo, hi):
    """Median of a[lo:hi] (upper median for an even count); reorders a[lo:hi]."""
    return _select(a, lo, hi, (lo + hi) >> 1)


@micropython.native
def _split(a, n, thr):
    """Move a[:n] values >= thr to the front; return how many there are."""
    i = 0
    j = n - 1
    while i <= j:
        if a[i] >= thr:
            i += 1
        else:
            t = a[i]
            a[i] = a[j]
            a[j] = t
            j -= 1
    return i


def levels(a, n, spread, out):
    """Split a burst a[:n] (ADC mV or counts) into high/low clusters at the
    midpoint of its range; out[0] = high median, out[1] = low median. Both are
    the median of all when the range is below `spread` (steady pilot, state E)
    or a cluster is empty. Reorders a."""
    mn = a[0]
    mx = a[0]
    for i in range(1, n):
        v = a[i]
        if v < mn:
            mn = v
        elif v > mx:
            mx = v
    if mx - mn >= spread:
        h = _split(a, n, (mn + mx) >> 1)
        if 0 < h < n:
            out[0] = median(a, 0, h)
            out[1] = median(a, h, n)
            return
    out[0] = median(a, 0, n)
    out[1] = out[0]
