"""The pilot's calibration table: raw ADC count -> pilot millivolts.

Owns the board's pilot calibration (hal/boards/README.md `pilot.cal`): the
table's validation and the piecewise-linear conversion the driver runs on
every pilot reading (hal/esp32.py) and the simulated front end runs on its
model (sim/frontend.py), plus the older two-point calibration as the same
kind of table. Never reads an ADC, a pin or the clock.

- `check_cal()`: the rules a table must obey, a ValueError naming the bad
  point otherwise (the board file's loader prefixes "board file: ").
- `cal_mv()`: pilot mV of one raw count, integer maths, allocates nothing
  (the control tick calls it).
- `two_point_cal()` / `pilot_mv()`: the older calibration from the ADC
  millivolts read at -12 V and +12 V.
"""

from micropython import const

CAL_MIN_POINTS = const(3)  # -12 V, +12 V and at least one point between
CAL_MAX_POINTS = const(16)
CAL_MIN_COUNTS_PER_V = const(20)  # a 24 V pilot spread over fewer than ~500 counts is no divider
CAL_MAX_COUNTS_PER_V = const(400)  # more than 4096 counts over ~10 V: a typo


def check_cal(points, where):
    """Validate a table [[raw count, pilot mV], ...]; returns (counts, mvs)
    as two tuples, or raises ValueError naming `where`. Rules: at least
    CAL_MIN_POINTS points, raw counts strictly increasing in 0..4095, pilot mV
    in -15000..15000 strictly monotonic (rising, or falling for an inverting
    stage), covering -12 V and +12 V within 1.5 V, and every segment between
    CAL_MIN_COUNTS_PER_V and CAL_MAX_COUNTS_PER_V counts per volt."""
    if not isinstance(points, list) or not CAL_MIN_POINTS <= len(points) <= CAL_MAX_POINTS:
        raise ValueError("'" + where + "' must list " + str(CAL_MIN_POINTS) + ".." + str(CAL_MAX_POINTS)
                         + " [raw count, pilot mV] points")
    xs: list = []
    ys: list = []
    for i in range(len(points)):
        p = points[i]
        at = where + "[" + str(i) + "]"
        if not isinstance(p, list) or len(p) != 2 or type(p[0]) is not int or type(p[1]) is not int:
            raise ValueError("'" + at + "' must be [raw count, pilot mV] (two integers), got " + repr(p))
        if not 0 <= p[0] <= 4095:
            raise ValueError("'" + at + "' raw count " + str(p[0]) + " is outside 0..4095")
        if not -15000 <= p[1] <= 15000:
            raise ValueError("'" + at + "' pilot mV " + str(p[1]) + " is outside -15000..15000")
        if i and p[0] <= xs[-1]:
            raise ValueError("'" + at + "' raw counts must increase from point to point")
        xs.append(p[0])
        ys.append(p[1])
    rising = ys[-1] > ys[0]
    for i in range(1, len(ys)):
        dy = ys[i] - ys[i - 1]
        if dy == 0 or (dy > 0) != rising:
            raise ValueError("'" + where + "[" + str(i) + "]' pilot mV must be strictly monotonic (not monotonic)")
        per_v = (xs[i] - xs[i - 1]) * 1000 // abs(dy)
        if not CAL_MIN_COUNTS_PER_V <= per_v <= CAL_MAX_COUNTS_PER_V:
            raise ValueError("'" + where + "[" + str(i) + "]' segment has " + str(per_v) + " counts per volt (sane: "
                             + str(CAL_MIN_COUNTS_PER_V) + ".." + str(CAL_MAX_COUNTS_PER_V) + ")")
    lo = min(ys[0], ys[-1])
    hi = max(ys[0], ys[-1])
    if lo > -10500 or hi < 10500:
        raise ValueError("'" + where + "' must cover the pilot's -12 V and +12 V (ends within 1.5 V of them), got "
                         + str(lo) + ".." + str(hi) + " mV")
    return tuple(xs), tuple(ys)


def cal_mv(xs, ys, raw):
    """Pilot mV for a raw count: linear between the two table points around
    it, the end segments extended beyond the table. Integer maths."""
    n = len(xs)
    i = 1
    while i < n - 1 and raw > xs[i]:
        i += 1
    x0 = xs[i - 1]
    y0 = ys[i - 1]
    return y0 + (raw - x0) * (ys[i] - y0) // (xs[i] - x0)


def two_point_cal(lo_mv, hi_mv):
    """The table of the older two-point calibration (ADC mV at -12 V and at
    +12 V, read with read_uv): the same straight line, in ADC mV units."""
    if lo_mv < hi_mv:
        return (lo_mv, hi_mv), (-12000, 12000)
    return (hi_mv, lo_mv), (12000, -12000)


def pilot_mv(adc_mv, lo_mv, hi_mv):
    """Pilot millivolts from ADC millivolts (two-point calibration at -12/+12 V)."""
    return -12000 + (adc_mv - lo_mv) * 24000 // (hi_mv - lo_mv)
