"""Pilot interpretation: raw high/low levels in mV -> a filtered pilot state.

Owns the filtering rules and the diode check. Invalid readings (gaps between
the windows) never change the state by themselves; they are counted so the
charger can treat a pilot that stays invalid longer than FILTER_MAX_MS as a
fault. A move towards less energy (out of C/D, into A, E or F) is taken on
the first reading that shows it. A move from no charge request into C or D
needs CONFIRM_TICKS consecutive readings in the new window AND the mean of
the last AVG_N readings inside that window by iec.ENTRY_HYST_MV: a pilot
noisy enough to throw single readings of a B into the C window cannot move
the mean there (docs/architecture.md, "Pilot filtering"). Moves between C
and D (D without ventilation means less energy) and between A and B (no
energy either way) need the CONFIRM_TICKS readings only. The diode check
runs on the low level; a board that cannot see the low half-period at this
duty (hal/contract.py PILOT_UNSEEN: 40 us at 96 %) leaves the verdict of the
last low level seen since the EV was plugged in, and when there is none the
charger offers at most DIODE_DUTY_MAX_PM until one is seen (`diode_pending`).
Never touches outputs; allocates nothing per reading.
"""

from array import array

from micropython import const

from firmware import iec61851 as iec

CONFIRM_TICKS = const(2)  # consecutive readings that must agree before a confirmed move
# Readings averaged to confirm a move into C/D: 16 ticks =
# 160 ms at a 10 ms tick. A B -> C move then confirms ~110 ms after S2
# closes, far inside iec.CLOSE_WITHIN_MS (3 s); moves out of C are not
# filtered by it. A power of two: the mean is a shift.
AVG_N = const(16)
_AVG_MASK = const(15)
_AVG_SHIFT = const(4)
_UNSEEN = const(-30000)  # hal/contract.py PILOT_UNSEEN: a half-period the board could not see
# The highest duty whose low half-period (100 us) a board reading from Python
# sees settled (hal/esp32.py: 32 us of settling, then a read of ~45 us).
DIODE_DUTY_MAX_PM = const(900)


class Pilot:
    def __init__(self):
        self.buf = array("i", (0, 0))
        self._ring = array("i", bytes(4 * AVG_N))  # last AVG_N high levels, mV
        self._ri = 0  # next slot
        self._rn = 0  # readings in the ring since forget()
        self._rsum = 0  # their sum (16 x 13 V: a small int)
        self.state = iec.P_INVALID  # unknown until the first valid reading
        self.high_mv = 0
        self.low_mv = 0
        self.invalid_ticks = 0  # consecutive invalid readings
        self.diode_ok = True  # False: the latest valid reading with PWM on showed no diode
        self.diode_checked = False  # this tick's reading was valid, taken with PWM on, diode passed
        self._diode_pass = False  # a low level seen since the plug-in passed the check
        self.diode_pending = False  # this reading could not see the low half, and none has passed yet
        self._cand = iec.P_INVALID
        self._cand_n = 0

    def read(self, hal, pwm_on):
        """Sample the pilot through the HAL and update state, diode_ok and
        diode_checked (which holds for this one reading only)."""
        buf = self.buf
        hal.pilot_read(buf)
        h = buf[0]
        self.high_mv = h
        self.low_mv = buf[1]
        self.diode_checked = False
        self.diode_pending = False
        if h == _UNSEEN:  # no high half seen: invalid, kept out of the mean
            self.invalid_ticks += 1
            self._cand_n = 0
            return
        ring = self._ring
        i = self._ri
        if self._rn == AVG_N:
            self._rsum -= ring[i]
        else:
            self._rn += 1
        ring[i] = h
        self._rsum += h
        self._ri = (i + 1) & _AVG_MASK
        k = iec.classify(h)
        if k == iec.P_INVALID:
            self.invalid_ticks += 1
            self._cand_n = 0
            return
        self.invalid_ticks = 0
        # Diode check: only meaningful with PWM on and the EV connected.
        if pwm_on and iec.P_B <= k <= iec.P_D:
            lo = buf[1]
            if lo == _UNSEEN:  # too short to see at this duty: the last verdict seen stands
                self.diode_checked = self._diode_pass
                self.diode_pending = not self._diode_pass
            else:
                self.diode_ok = lo <= iec.DIODE_LOW_MAX_MV
                self._diode_pass = self.diode_ok
                self.diode_checked = self.diode_ok
        else:
            self.diode_ok = True
            if k != iec.P_B and k != iec.P_C and k != iec.P_D:
                self._diode_pass = False  # unplugged (A) or a fault (E, F): a new EV is checked anew
        cur = self.state
        if k == cur:
            self._cand_n = 0
            return
        cd_now = cur == iec.P_C or cur == iec.P_D
        if k == iec.P_C or k == iec.P_D:
            confirm = True
            average = not cd_now  # into a charge request: also the mean; C <-> D: readings only
        elif (k == iec.P_B and cur == iec.P_A) or (k == iec.P_A and cur == iec.P_B):
            confirm = True  # plug / unplug: readings only (no energy either way)
            average = False
        else:
            confirm = average = False  # towards less energy, or the first reading after forget()
        if confirm:
            if k != self._cand:
                self._cand = k
                self._cand_n = 1
            elif self._cand_n < CONFIRM_TICKS:
                self._cand_n += 1
            if self._cand_n < CONFIRM_TICKS or (average and not self._mean_in(k)):
                return
        self.state = k
        self._cand_n = 0

    def _mean_in(self, k):
        """The mean of the last AVG_N readings lies in k's window, at least
        ENTRY_HYST_MV inside both of its edges."""
        if self._rn < AVG_N:
            return False
        m = self._rsum >> _AVG_SHIFT
        return iec.classify(m - iec.ENTRY_HYST_MV) == k and iec.classify(m + iec.ENTRY_HYST_MV) == k

    def forget(self):
        """Drop what was seen (after driving -12 V, the old reading is stale)."""
        self.state = iec.P_INVALID
        self._cand_n = 0
        self.invalid_ticks = 0
        self.diode_ok = True
        self.diode_checked = False
        self._diode_pass = False
        self.diode_pending = False
        self._rn = 0
        self._rsum = 0
        self._ri = 0
