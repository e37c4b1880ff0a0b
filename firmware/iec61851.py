"""The numbers of IEC 61851-1 (Annex A) and SAE J1772 that the charger lives by.

Owns: the pilot detection windows, the duty-cycle formula, the proximity-pilot
(PP) cable coding and the protocol timing, each with its unit in the name.
Source for every figure: shared/iec61851.md (collected from the standard's
tables as used by OpenEVSE, SmartEVSE, EVerest and Tinkerforge; the stricter
value where they differ). Never holds state, never talks to the board.
"""

from micropython import const

# --- pilot states as the EV loads the pilot (classification results) ---------
P_INVALID = const(0)  # in a gap between windows: never changes state by itself
P_A = const(1)  # +12 V: no vehicle
P_B = const(2)  # +9 V: vehicle connected, not ready
P_C = const(3)  # +6 V: ready, charging
P_D = const(4)  # +3 V: ready, ventilation required
P_E = const(5)  # 0 V: CP shorted to PE, or EVSE without power
P_F = const(6)  # -12 V: EVSE fault (we never expect to read it while driving +12 V)

# Detection windows, +-1 V around each nominal high level (iec61851.md,
# "Detection windows used by careful implementations"). Gaps are invalid.
A_MIN_MV = const(11000)
A_MAX_MV = const(13000)
B_MIN_MV = const(8000)
B_MAX_MV = const(10000)
C_MIN_MV = const(5000)
C_MAX_MV = const(7000)
D_MIN_MV = const(2000)
D_MAX_MV = const(4000)
E_MIN_MV = const(-1000)
E_MAX_MV = const(1000)
F_MIN_MV = const(-13000)
F_MAX_MV = const(-11000)

# A move into a state needing confirmation (into C/D, between A and B) needs
# the mean of the recent readings at least this far inside the new window:
# "hysteresis of about 10 % between neighbouring states is allowed" (10 % of
# the 3 V between neighbouring nominal levels).
ENTRY_HYST_MV = const(300)

# Diode check: while PWM runs in B, C or D the low level must reach about -11 V
# (the EV's diode blocks the negative half). A low level above this is a
# missing or shorted diode: no energy.
DIODE_LOW_MAX_MV = const(-11000)

# --- duty cycle <-> current ---------------------------------------------------
# The EVSE generates D = I / 0.6 for 6 .. 51 A and D = I / 2.5 + 64 for 51 .. 80 A.
# Below 6 A no current can be offered: pause (x1) instead.
MIN_OFFER_MA = const(6000)
MAX_OFFER_MA = const(80000)
_LOW_RANGE_MAX_MA = const(51000)


def duty_pm(offer_ma):
    """PWM duty in per mille for an offer in mA (6000 .. 80000). Rounds down,
    so the current the EV decodes never exceeds the offer. 0 below 6 A."""
    if offer_ma < MIN_OFFER_MA:
        return 0
    if offer_ma > MAX_OFFER_MA:
        offer_ma = MAX_OFFER_MA
    if offer_ma <= _LOW_RANGE_MAX_MA:
        return offer_ma // 60  # D[%] = I[A] / 0.6  ->  D[pm] = I[mA] / 60
    return offer_ma // 250 + 640  # D[%] = I[A] / 2.5 + 64


def offer_ma_for_duty(pm):
    """The current an EV decodes from a duty in per mille (table of
    iec61851.md); 0 where the duty allows no charging."""
    if pm < 80 or pm > 970:
        return 0  # < 8 %: not allowed (3-7 % is digital communication); > 97 %: not allowed
    if pm < 100:
        return MIN_OFFER_MA  # 8 .. 10 %: 6 A
    if pm <= 850:
        return pm * 60
    if pm <= 960:
        return (pm - 640) * 250
    return MAX_OFFER_MA


def classify(high_mv):
    """Pilot state for a measured high level in mV, or P_INVALID in a gap."""
    if high_mv >= C_MIN_MV:
        if high_mv <= C_MAX_MV:
            return P_C
        if B_MIN_MV <= high_mv <= B_MAX_MV:
            return P_B
        if A_MIN_MV <= high_mv <= A_MAX_MV:
            return P_A
        return P_INVALID
    if high_mv >= D_MIN_MV:
        return P_D if high_mv <= D_MAX_MV else P_INVALID
    if E_MIN_MV <= high_mv <= E_MAX_MV:
        return P_E
    if F_MIN_MV <= high_mv <= F_MAX_MV:
        return P_F
    return P_INVALID


# --- proximity pilot: cable current capacity (Type 2 socket outlets) ----------
# Resistor PP-PE windows in ohm -> capacity in mA. Anything else (including
# < 60 ohm and > 4500 ohm) is invalid / no cable: do not charge.
# (One peer maps 680 ohm to 16 A; the standard's value is 20 A.)
PP_13A_MIN_OHM = const(1100)
PP_13A_MAX_OHM = const(2460)
PP_20A_MIN_OHM = const(400)
PP_20A_MAX_OHM = const(936)
PP_32A_MIN_OHM = const(164)
PP_32A_MAX_OHM = const(308)
PP_63A_MIN_OHM = const(80)
PP_63A_MAX_OHM = const(140)


def pp_limit_ma(ohm):
    """Cable capacity in mA for a PP resistance, 0 for an invalid reading."""
    if PP_13A_MIN_OHM <= ohm <= PP_13A_MAX_OHM:
        return 13000
    if PP_20A_MIN_OHM <= ohm <= PP_20A_MAX_OHM:
        return 20000
    if PP_32A_MIN_OHM <= ohm <= PP_32A_MAX_OHM:
        return 32000
    if PP_63A_MIN_OHM <= ohm <= PP_63A_MAX_OHM:
        return 63000
    return 0


# --- timing --------------------------------------------------------------------
OPEN_WITHIN_MS = const(100)  # C/D -> anything else, or any fault: open within this
CLOSE_WITHIN_MS = const(3000)  # B -> C with charging allowed: close within this
X1_OPEN_AFTER_MS = const(6000)  # PWM removed while the EV stays in C: open after this
PWM_CHANGE_MIN_MS = const(5000)  # do not raise the offer more often than this
EV_ADAPT_MS = const(5000)  # the EV follows a lower offer within this
F_HOLD_MIN_MS = const(300)  # after a fault, hold state F at least this long
FILTER_MAX_MS = const(50)  # never filter the pilot longer than this

# --- temperature derating (example values from a peer, iec61851.md) ---------------
DERATE_HALF_DC = const(650)  # tenths of a degree C: half current from 65 C
DERATE_QUARTER_DC = const(680)  # quarter from 68 C
DERATE_STOP_DC = const(710)  # stop from 71 C
DERATE_RESUME_DC = const(550)  # resume after a stop only below 55 C
DERATE_HYST_DC = const(20)  # 2 C hysteresis when stepping back up from half/quarter
