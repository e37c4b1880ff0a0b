"""Rig mode: the firmware's trace records on the console, for a pilot-signal
rig (docs/rig.md).

Owns: deciding when a record is due and printing it as one line
`TRACE {...}` (firmware/trace.py builds the JSON; firmware/facts.py holds the
prefix), so that `tools/rig.py run SCENARIO --port PORT` can tell trace lines
from other console output. Enabled by the config key `bench_trace` (off by
default); firmware/app.py creates one RigTrace and calls poll() after every
control tick.

A record is printed whenever a discrete field changes (state, duty, offer,
contactor, fault, session) and at least once per second. `t` is the time since
this object was built (Firmware start), in ms, from the HAL clock through
ticks_diff; kept as whole seconds + ms so it never grows past a small int.
`pilot_v` is the firmware's own reading. A board that measures more than the
firmware may add members: when it has `trace_extra()` (JSON text,
', "name": value ...'), each record carries it.

Never decides anything. poll() compares a few ints and identities and returns
when nothing is due: no allocation. A record allocates (a new string) and
printing it costs time on the UART (~250 bytes: ~22 ms at 115200 baud when the
driver has no TX buffer); it comes after the charger has acted in that tick.
"""

from firmware.facts import TRACE_PREFIX
from firmware.trace import EVERY_MS, Shown, record


class RigTrace:
    def __init__(self, fw):
        self.fw = fw
        hal = fw.hal
        self.hal = hal
        now = hal.ticks_ms()
        self._clock = now  # ticks when _s/_ms were last brought up to date
        self._s = 0  # seconds since start ...
        self._ms = 0  # ... plus ms (0..999)
        self._last = now  # ticks of the last record
        # What the last record showed.
        self._shown = Shown()
        self._extra = getattr(hal, "trace_extra", None)
        self.records = 0

    def poll(self):
        """After each tick: print a record if one is due (cheap when not)."""
        fw = self.fw
        hal = self.hal
        now = hal.ticks_ms()
        if hal.ticks_diff(now, self._last) < EVERY_MS and not self._shown.changed(fw):
            return
        self._emit(now)

    def t_ms(self, now):
        """ms since start at ticks `now` (not earlier than the last call)."""
        ms = self._ms + self.hal.ticks_diff(now, self._clock)
        self._clock = now
        if ms >= 1000:
            self._s += ms // 1000
            ms %= 1000
        self._ms = ms
        return self._s * 1000 + ms

    def _emit(self, now):
        fw = self.fw
        self._shown.take(fw)
        self._last = now
        self.records += 1
        extra = self._extra() if self._extra is not None else ""
        print(TRACE_PREFIX + record(fw, self.t_ms(now), None, extra))
