"""Trace records: one JSON line describing what the firmware is doing.

Owns: the record's fields, their units and their text form, for the scenario
runner (sim/scenario.py, unix port) and a bench mode on real boards. The text
is built with integer arithmetic only (no float boxing, fixed decimals), so the
same record comes out on an ESP32 and on the unix port.

Never runs in the control tick: a record allocates (it is a new string). The
caller decides when a record is due and calls `record()` between ticks.

Fields (docs/scenarios.md has the full table):
    t          seconds since the run started, ms resolution
    state      charger state "A1".."F"
    pilot_v    pilot high level in V (the caller may pass the true level)
    duty       PWM duty in percent, null when the pilot is steady
    offer_a    offered current in A, 0 when none
    contactor  contactor commanded closed
    current_a  measured current per phase in A, 0.01 A resolution
    energy_wh  energy of the current/last session as measured, in Wh
    fault      null or the fault code
    session    null or the session id
"""

EVERY_MS = 1000  # a record at least this often, changed or not


class Shown:
    """What the last record showed of the discrete fields (state, duty, offer,
    contactor, fault, session): a new record is due when any of them moved.
    Comparing allocates nothing, so a caller may ask after every tick."""

    def __init__(self):
        self.state = None  # None: nothing shown yet, so the first ask is a change
        self.duty = -1
        self.offer = -1
        self.contactor = None
        self.fault = None
        self.session = None

    def changed(self, fw):
        ch = fw.charger
        return (
            ch.state != self.state
            or ch.duty_pm != self.duty
            or ch.offer_ma != self.offer
            or ch.contactor_on != self.contactor
            or ch.fault != self.fault
            or fw.session_id != self.session
        )

    def take(self, fw):
        ch = fw.charger
        self.state = ch.state
        self.duty = ch.duty_pm
        self.offer = ch.offer_ma
        self.contactor = ch.contactor_on
        self.fault = ch.fault
        self.session = fw.session_id


def fixed(n, scale, digits):
    """Text of the integer n / scale with `digits` decimals, truncated toward
    zero ("%d.%0*d" without floats; the sign survives -0.5 -> "-0.500")."""
    sign = ""
    if n < 0:
        sign = "-"
        n = -n
    whole = n // scale
    frac = n - whole * scale
    if digits == 0:
        return sign + str(whole)
    # scale is 10 ** k; keep the first `digits` decimals of frac.
    k = len(str(scale)) - 1
    if k > digits:
        frac //= 10 ** (k - digits)
    elif k < digits:
        frac *= 10 ** (digits - k)
    text = str(frac)
    return sign + str(whole) + "." + "0" * (digits - len(text)) + text


def _quote(s):
    if s is None:
        return "null"
    out = '"'
    for ch in str(s):
        if ch == '"' or ch == "\\":
            out += "\\" + ch
        elif ch < " ":
            out += "\\u%04x" % ord(ch)
        else:
            out += ch
    return out + '"'


def record(fw, t_ms, pilot_mv=None, extra=""):
    """One trace record as JSON text (no newline) for the firmware `fw`
    (firmware/app.py Firmware) at t_ms ms since the start of the run.

    pilot_mv: the pilot level to report in mV; default the charger's last
    reading (`fw.charger.pilot_mv`). extra: more members as JSON text
    (', "name": value ...'), appended before the closing brace."""
    ch = fw.charger
    if pilot_mv is None:
        pilot_mv = ch.pilot_mv
    parts = [
        '{"t": ',
        fixed(t_ms, 1000, 3),
        ', "state": ',
        _quote(ch.state),
        ', "pilot_v": ',
        fixed(pilot_mv, 1000, 2),
        ', "duty": ',
        fixed(ch.duty_pm, 10, 1) if ch.duty_pm else "null",
        ', "offer_a": ',
        fixed(ch.offer_ma, 1000, 2),
        ', "contactor": ',
        "true" if ch.contactor_on else "false",
        ', "current_a": [',
    ]
    meter = fw.meter
    i_ma = meter.i_ma
    n = fw.cfg["phases"] if fw.cfg["phases"] < len(i_ma) else len(i_ma)
    for i in range(n):
        if i:
            parts.append(", ")
        parts.append(fixed(i_ma[i], 1000, 2))
    parts.append('], "energy_wh": ')
    parts.append(fixed(meter.session_mwh, 1000, 3))
    parts.append(', "fault": ')
    parts.append(_quote(ch.fault))
    parts.append(', "session": ')
    parts.append(_quote(fw.session_id))
    parts.append(extra)
    parts.append("}")
    return "".join(parts)
