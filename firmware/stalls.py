"""What may stall the control loop, and when the loop lets it (the rules in
docs/architecture.md "The control loop"): the pilot window a current-sense
burst watches, the garbage collection at a chosen point, and whether a flash
write may happen now. Used by firmware/app.py after the charger's decision;
never decides anything about energy. Allocates nothing per call.
"""

import gc
from array import array

from micropython import const

from firmware import iec61851 as iec

# Suspect pilot reads that cut a current-sense burst short: more than one, so a
# read on a PWM edge (the front end slewing between -12 V and the high level)
# does not; fewer than the high phase holds at 10 % duty over a few periods.
_WATCH_SUSPECT_READS = const(3)
GC_LOOK_EVERY = const(100)  # ticks between looks at the heap (gc.mem_alloc() walks it)
_GC_IDLE_BYTES = const(8192)  # heap grown since the last collection: collect when idle ...
_GC_CHARGING_BYTES = const(16384)  # ... and while charging (a collection costs 5-15 ms on an ESP32)


class Stalls:
    def __init__(self, cfg):
        # [above_mv, gap_lo_mv, gap_hi_mv, suspect reads that cut the burst]
        self._guard = array("i", (0, iec.DIODE_LOW_MAX_MV, 0, _WATCH_SUSPECT_READS))
        self._gc_base = gc.mem_alloc()
        self._flash_charging = cfg["flash_while_charging"]

    def flash_ok(self, ch):
        """Flash writes are allowed now: the contactor is open (or the
        configuration accepts the stall while charging)."""
        return not ch.contactor_on or self._flash_charging

    def collect(self, ch):
        """A garbage collection at this chosen point (after the decision),
        when the heap grew enough since the last one: more while charging,
        where the 5-15 ms it costs delays the next pilot reading."""
        a = gc.mem_alloc()
        if a < self._gc_base:
            self._gc_base = a  # collected elsewhere meanwhile
        elif a - self._gc_base > (_GC_CHARGING_BYTES if ch.contactor_on else _GC_IDLE_BYTES):
            gc.collect()
            self._gc_base = gc.mem_alloc()

    def watch(self, ch):
        """While energy flows, the pilot window the current-sense burst
        watches (hal/contract.py adc_burst_watched): a read above the charging
        state's window, or between the diode's low level and that window
        (a short, a shorted diode), cuts the burst short. None otherwise."""
        if not ch.contactor_on:
            return None
        g = self._guard
        s = ch.state[0]
        if s == "C":
            g[0] = iec.C_MAX_MV
            g[2] = iec.C_MIN_MV
        elif s == "D":
            g[0] = iec.D_MAX_MV
            g[2] = iec.D_MIN_MV
        else:
            return None
        return g
