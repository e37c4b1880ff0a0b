"""Pilot interpretation: raw high/low levels in mV -> a filtered pilot state.

Owns the filtering rules. Invalid readings (gaps between the windows) never
change the state by themselves; they are counted so the charger can treat a
pilot that stays invalid longer than FILTER_MAX_MS as a fault. A move towards
less energy (out of C/D, into A, E or F) is taken at once; a move into C/D,
and between A and B, must be seen on CONFIRM_TICKS consecutive readings. The
HAL already gives a median over a burst, so one reading is one filtered value.
Never touches outputs; allocates nothing per reading.
"""

from array import array

from micropython import const

from firmware import iec61851 as iec

CONFIRM_TICKS = const(2)  # readings that must agree before a move into C/D or A<->B


class Pilot:
    def __init__(self):
        self.buf = array("i", (0, 0))
        self.state = iec.P_INVALID  # unknown until the first valid reading
        self.high_mv = 0
        self.low_mv = 0
        self.invalid_ticks = 0  # consecutive invalid readings
        self.diode_ok = True
        self._cand = iec.P_INVALID
        self._cand_n = 0

    def read(self, hal, pwm_on):
        """Sample the pilot through the HAL and update state and diode_ok."""
        buf = self.buf
        hal.pilot_read(buf)
        self.high_mv = buf[0]
        self.low_mv = buf[1]
        k = iec.classify(buf[0])
        if k == iec.P_INVALID:
            self.invalid_ticks += 1
            self._cand_n = 0
            return
        self.invalid_ticks = 0
        # Diode check: only meaningful with PWM on and the EV connected.
        self.diode_ok = not (pwm_on and iec.P_B <= k <= iec.P_D and buf[1] > iec.DIODE_LOW_MAX_MV)
        cur = self.state
        if k == cur:
            self._cand_n = 0
            return
        if (k == iec.P_C or k == iec.P_D) or (k == iec.P_B and cur == iec.P_A) or (
            k == iec.P_A and cur == iec.P_B
        ):
            # Towards energy, or plug/unplug: confirm.
            if k != self._cand:
                self._cand = k
                self._cand_n = 1
            else:
                self._cand_n += 1
            if self._cand_n < CONFIRM_TICKS and (cur != iec.P_INVALID or k == iec.P_C or k == iec.P_D):
                return
        self.state = k
        self._cand_n = 0

    def forget(self):
        """Drop what was seen (after driving -12 V, the old reading is stale)."""
        self.state = iec.P_INVALID
        self._cand_n = 0
        self.invalid_ticks = 0
        self.diode_ok = True
