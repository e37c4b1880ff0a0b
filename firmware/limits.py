"""The offered current: the smallest of every limit, and thermal derating.

Owns the rule "the offer never exceeds the smallest of hardware, cable (PP),
configuration, thermal, remote and load-balancing limits" and the derating
steps with their hysteresis. Pure integer arithmetic on mA and tenths of a
degree; allocates nothing; never talks to the board (the charger passes the
readings in).
"""

from micropython import const

from firmware import iec61851 as iec

NO_LIMIT_MA = const(1000000)  # "this limit does not apply" (still a small int)

# Thermal levels.
T_NORMAL = const(0)
T_HALF = const(1)
T_QUARTER = const(2)
T_STOP = const(3)

# Readings outside this range are a broken sensor (tenths of a degree C).
TEMP_VALID_MIN_DC = const(-400)
TEMP_VALID_MAX_DC = const(1500)


class Limits:
    def __init__(self, cfg):
        self.config_ma = int(cfg["max_current_a"] * 1000)
        self.hw_ma = int(cfg["hw_max_current_a"] * 1000)
        self.remote_ma = NO_LIMIT_MA  # set by the current_a command
        self.ocpp_ma = NO_LIMIT_MA  # OCPP charging profiles' composite limit (firmware/ocpp_smart.py)
        self.balance_ma = NO_LIMIT_MA  # load management (firmware/energy.py)
        self.balance_reason = "balance"  # which: mains, solar, stale, phase_switch
        self.cable_ma = NO_LIMIT_MA
        # A tethered cable's configured rating (0 in the config: none).
        tethered = int(cfg["cable_max_current_a"] * 1000)
        self.tethered_ma = tethered if tethered > 0 else NO_LIMIT_MA
        self.thermal = T_NORMAL
        self.reason = None  # the limit that decides the offer (for status)

    def update_thermal(self, temp_dc, no_temp):
        """Step the derating level for a temperature reading. Going up (hotter)
        applies at once; coming back needs the hysteresis (or, after a stop,
        the resume threshold)."""
        if temp_dc == no_temp:
            self.thermal = T_NORMAL
            return
        if temp_dc < TEMP_VALID_MIN_DC or temp_dc > TEMP_VALID_MAX_DC:
            self.thermal = T_STOP  # a broken sensor must not hide overheating
            return
        level = self.thermal
        if temp_dc >= iec.DERATE_STOP_DC:
            level = T_STOP
        elif temp_dc >= iec.DERATE_QUARTER_DC:
            level = level if level > T_QUARTER else T_QUARTER
        elif temp_dc >= iec.DERATE_HALF_DC:
            level = level if level > T_HALF else T_HALF
        # Cooling down.
        if level == T_STOP and temp_dc < iec.DERATE_RESUME_DC:
            level = T_NORMAL
        elif level == T_QUARTER and temp_dc < iec.DERATE_QUARTER_DC - iec.DERATE_HYST_DC:
            level = T_HALF
        if level == T_HALF and temp_dc < iec.DERATE_HALF_DC - iec.DERATE_HYST_DC:
            level = T_NORMAL
        self.thermal = level

    def set_cable(self, pp_ohm, pp_unknown):
        """Cable limit from the PP resistance. A board without a PP input
        (a tethered cable without PP coding) has the configured
        cable_max_current_a, if any, as its cable limit."""
        if pp_ohm == pp_unknown:
            self.cable_ma = self.tethered_ma
        else:
            ma = iec.pp_limit_ma(pp_ohm)  # 0 when invalid or open
            self.cable_ma = ma if ma < self.tethered_ma else self.tethered_ma

    def offer_ma(self):
        """The current to offer now in mA: the smallest limit, derated; 0 when
        that is below 6 A (the charger then pauses with a steady pilot)."""
        m = self.hw_ma
        self.reason = "hardware"
        if self.config_ma < m:
            m = self.config_ma
            self.reason = "config"
        if self.cable_ma < m:
            m = self.cable_ma
            self.reason = "cable"
        if self.remote_ma < m:
            m = self.remote_ma
            self.reason = "remote"
        if self.ocpp_ma < m:
            m = self.ocpp_ma
            self.reason = "ocpp"
        if self.balance_ma < m:
            m = self.balance_ma
            self.reason = self.balance_reason
        t = self.thermal
        if t != T_NORMAL:
            self.reason = "thermal"
            if t == T_HALF:
                m = m // 2
            elif t == T_QUARTER:
                m = m // 4
            else:
                m = 0
        if m < iec.MIN_OFFER_MA:
            return 0
        if m > iec.MAX_OFFER_MA:
            m = iec.MAX_OFFER_MA
        return m
