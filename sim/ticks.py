"""ESP32 tick arithmetic (period 2**30) for simulated and fake boards, in small
ints only: on an ESP32 (31-bit small ints) a value at or above 2**30 is a big int
on the heap, so `(t + d) & MASK` would allocate whenever the sum reaches the
period. Never deployed: a board has time.ticks_add/ticks_diff in C."""

from micropython import const

MASK = const(0x3FFFFFFF)  # period - 1; a literal: 1 << 30 itself is no small int there
HALF = const(0x20000000)


def ticks_add(t, d):
    """(t + d) mod 2**30 for 0 <= t < 2**30 and -2**29 <= d < 2**29."""
    r = t - HALF + d  # in [-2**30, 2**30)
    if r >= HALF:
        return r - HALF
    if r < -HALF:
        return r + MASK + HALF + 1  # left to right: no partial sum reaches 2**30
    return r + HALF


def ticks_diff(a, b):
    """a - b as a signed distance in [-2**29, 2**29), for ticks a and b."""
    d = a - b
    if d >= HALF:
        return d - MASK - 1
    if d < -HALF:
        return d + MASK + 1
    return d
