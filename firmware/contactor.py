"""The contactor: commanding it, and proving from its mirror contact that it did.

Owns the weld and relay-failure detection: the mirror contact must follow the
command within CONTACTOR_SETTLE_MS. Closed while commanded open = welded (checked
at boot, before every close and after every open); open while commanded closed
= the relay or its feedback failed. A board without feedback (UNKNOWN) skips
these checks. Never decides when energy may flow: the charger does.

The relay self-test at boot is passive: the mirror contact must read open
within CONTACTOR_SETTLE_MS of the open command that every boot starts with
(a weld found then latches before any session). The self-test does not close
the contactor: with no EV that would put mains on the socket or on a tethered
plug hanging in its holster. The closing path is proven at every real close
instead (`relay_fail` when the mirror does not follow).
"""

from micropython import const

# Mechanical settle time allowed before the mirror contact must agree with the
# command (typical AC contactors: 20..50 ms close, 10..30 ms open; margin x4).
CONTACTOR_SETTLE_MS = const(200)

UNKNOWN = const(-1)  # hal.contract.UNKNOWN


class Contactor:
    def __init__(self, hal):
        self.hal = hal
        self.on = False
        self.changed_ms = hal.ticks_ms()
        hal.contactor(False)

    def set(self, on, now_ms):
        if on != self.on:
            self.hal.contactor(on)
            self.on = on
            self.changed_ms = now_ms

    def check(self, now_ms):
        """None when the mirror contact agrees with the command (or is still
        settling), else 'weld' or 'relay_fail'."""
        fb = self.hal.contactor_feedback()
        if fb == UNKNOWN:
            return None
        if (fb == 1) == self.on:
            return None
        if self.hal.ticks_diff(now_ms, self.changed_ms) < CONTACTOR_SETTLE_MS:
            return None
        return "relay_fail" if self.on else "weld"

    def welded(self):
        """Mirror contact reads closed right now while commanded open."""
        return not self.on and self.hal.contactor_feedback() == 1
