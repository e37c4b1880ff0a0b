"""OCPP meter values: one sampled entry from the charger's meter, and the
clock-aligned schedule (ClockAlignedDataInterval) (docs/ocpp.md, "Meter
values").

Owns: which measurands go into an entry (the register always first, as the
transaction queue reads it back: firmware/ocpp_txq.py), their units and
text, and when the next clock-aligned sample is due. Never: sends or queues
anything (firmware/ocpp.py does), reads the wall clock more than once a
call.
"""

from firmware.ocpp_time import iso

DAY_S = 86400
TXDATA_MAX = 8  # clock-aligned entries kept for a StopTransaction's transactionData (the latest)


def sample(fw, wanted, context, wall):
    """One meterValue entry stamped `wall` (UTC seconds): the register (Wh),
    then as `wanted` (comma-separated measurands) says per phase current (A),
    power (W), temperature (Celsius, when the board has a sensor)."""
    m = fw.meter
    vals = [{"value": str(m.meter_wh()[0]), "context": context, "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]
    if "Current.Import" in wanted:
        for p in range(m.phases):
            vals.append({"value": "%d.%03d" % (m.i_ma[p] // 1000, m.i_ma[p] % 1000), "context": context, "measurand": "Current.Import", "phase": "L%d" % (p + 1), "unit": "A"})
    if "Power.Active.Import" in wanted:
        vals.append({"value": str(int(m.power_w)), "context": context, "measurand": "Power.Active.Import", "unit": "W"})
    t = fw.charger.temp_dc
    if "Temperature" in wanted and t != -32768:
        vals.append({"value": "%d.%d" % (t // 10, t % 10) if t >= 0 else "-%d.%d" % (-t // 10, -t % 10), "context": context, "measurand": "Temperature", "unit": "Celsius"})
    return {"timestamp": iso(wall), "sampledValue": vals}


class Aligned:
    """ClockAlignedDataInterval: samples at the wall-clock multiples of the
    interval counted from midnight UTC (900: :00, :15, :30, :45), only while
    the clock is set. The first is the first boundary after the clock (or a
    new interval) is seen, so a clock that jumps gives one sample, not a
    burst."""

    def __init__(self):
        self.last = None  # the latest boundary (UTC seconds) sampled or skipped
        self.every = 0

    def due(self, wall, every):
        """The boundary (UTC seconds) to sample now, or None."""
        if not every or wall is None:
            self.last = None
            return None
        day = wall - wall % DAY_S
        slot = day + (wall - day) // every * every  # the latest boundary not after `wall`
        if self.last is None or every != self.every:
            self.last = slot
            self.every = every
            return None
        if slot == self.last:
            return None
        self.last = slot
        return slot
