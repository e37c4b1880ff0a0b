"""Session records: what one charging session was, in the shape billing needs.

Owns: the session id (device id + boot counter + sequence, unique across
reboots), the running peak and time-weighted mean current, and the record
that `firmware/journal.py` stores and the link publishes.

Never does: read the board, the meter or the clock itself. The app hands in
`now_ms` (hal.ticks_ms()), the wall time in seconds or None, and energy as
integer mWh from `firmware/meter.py`. `sample()` runs from the main loop and
allocates nothing: every accumulator is a small int (< 2**30) on the
instance, carried into a second word before it could grow past that.

Energy is an integer count of mWh everywhere; the float `*_wh` fields of a
record are a convenience. A float32 (ESP32) holds only ~7 digits, so
1234.567 kWh cannot be a float there: publish with `to_json()`, which writes
the `*_wh` fields as exact decimals from the integer `*_mwh` fields.
"""

import json

try:
    from micropython import const
except ImportError:  # CPython host tools may import this module too

    def const(x):
        return x


# A sample's current is clamped to this (131 A, above any IEC 61851 AC offer
# of 80 A), so one chunk ma * CHUNK_MS stays far below 2**30.
MAX_SAMPLE_MA = const(131071)
CHUNK_MS = const(4096)
# Accumulators carry into a high word at 2**24, so the low word never
# exceeds 2**24 + MAX_SAMPLE_MA * CHUNK_MS < 2**30.
_CARRY_BITS = const(24)
_CARRY_MASK = const(0xFFFFFF)

# When the app should journal a checkpoint of the open session (see
# docs/journal.md for the writes this costs per charged hour): after this
# much energy, or after this long if any energy flowed since the last one.
CHECKPOINT_EVERY_MWH = const(100000)  # 0.1 kWh: the most a power cut may lose
CHECKPOINT_EVERY_MS = const(300000)  # 5 min

TAG_MAX_CHARS = const(40)

REASONS = ("ev_unplugged", "ev_stopped", "remote_stop", "power_loss")
FAULT_PREFIX = "fault:"

# (float field, exact integer field) pairs of a record.
_WH_FIELDS = (
    ("energy_wh", "energy_mwh"),
    ("meter_start_wh", "meter_start_mwh"),
    ("meter_stop_wh", "meter_stop_mwh"),
)


def valid_reason(reason):
    """One of REASONS, or "fault:<code>" with a non-empty code."""
    if reason in REASONS:
        return True
    return isinstance(reason, str) and reason.startswith(FAULT_PREFIX) and len(reason) > len(FAULT_PREFIX)


def stamp(boot_id, now_ms, wall_s):
    """A point in time for a record: wall seconds when the clock is set, else
    the boot and the monotonic ms within it (meaningful only within that boot)."""
    if wall_s is None:
        return {"boot": boot_id, "mono_ms": now_ms}
    return wall_s


def wh(mwh):
    """Integer mWh -> float Wh with 3 decimals (None stays None)."""
    if mwh is None:
        return None
    return round(mwh / 1000, 3)


def _dec3(mwh):
    """Integer mWh -> exact decimal Wh text, e.g. 1234567 -> "1234.567"."""
    sign = ""
    if mwh < 0:
        sign = "-"
        mwh = -mwh
    return "%s%d.%03d" % (sign, mwh // 1000, mwh % 1000)


def to_json(rec):
    """JSON text of a record with each `*_wh` field written exactly from its
    integer `*_mwh` field (never through a float)."""
    rest = {}
    for k in rec:
        rest[k] = rec[k]
    parts = []
    for wh_key, mwh_key in _WH_FIELDS:
        if wh_key in rest:
            del rest[wh_key]
        if mwh_key in rec:
            v = rec[mwh_key]
            parts.append('"%s": %s' % (wh_key, "null" if v is None else _dec3(v)))
    text = json.dumps(rest)
    if not parts:
        return text
    return text[:-1] + (", " if rest else "") + ", ".join(parts) + "}"


class SessionTracker:
    """One charging session at a time.

        t = SessionTracker(hal, "evse1", journal.boot())
        sid = t.begin(hal.ticks_ms(), hal.wall_time(), meter_start_mwh, tag)
        journal.open_session(t.opening())
        t.sample(max_current_ma, phases_active, dt_ms)       # every meter burst
        if t.checkpoint_due(now_ms, energy_mwh):
            journal.checkpoint(sid, t.checkpoint(now_ms, wall_s, energy_mwh))
        t.end(now_ms, wall_s, energy_mwh, "ev_unplugged", meter_stop_mwh)
        journal.close_session(t.record())
    """

    def __init__(self, hal, device_id, boot_id):
        self.hal = hal
        self.device_id = device_id
        self.boot_id = boot_id
        self.seq = 0
        self.id = None
        self.active = False
        self.start = None  # stamp (session.stamp); the app back-dates it when the clock gets set
        self._end = None
        self._meter_start_mwh = None
        self._meter_stop_mwh = None
        self._tag = None
        self._reason = None
        self._reset_counters()

    def _reset_counters(self):
        self.peak_ma = 0
        self.phases = 0
        self.energy_mwh = 0
        # sum(ma * dt_ms) = (_acc_hi << 24) + _acc_lo; sum(dt_ms) likewise.
        self._acc_lo = 0
        self._acc_hi = 0
        self._t_lo = 0
        self._t_hi = 0
        self._cp_mwh = 0
        self._cp_ms = 0

    def begin(self, now_ms, wall_s, meter_start_mwh=None, tag=None):
        """Start a session; returns its id, e.g. "evse1-42-3"."""
        self.seq += 1
        self.id = "%s-%d-%d" % (self.device_id, self.boot_id, self.seq)
        self.active = True
        self._reset_counters()
        self.start = stamp(self.boot_id, now_ms, wall_s)
        self._end = None
        self._meter_start_mwh = meter_start_mwh
        self._meter_stop_mwh = None
        if tag is not None:
            tag = str(tag)[:TAG_MAX_CHARS]
        self._tag = tag
        self._reason = None
        self._cp_ms = now_ms
        return self.id

    def sample(self, max_current_ma, phases_active, dt_ms):
        """Account dt_ms at max_current_ma (the highest phase). Allocates
        nothing; negative values count as 0, currents above MAX_SAMPLE_MA
        as MAX_SAMPLE_MA."""
        if not self.active or dt_ms <= 0:
            return
        ma = max_current_ma
        if ma < 0:
            ma = 0
        elif ma > MAX_SAMPLE_MA:
            ma = MAX_SAMPLE_MA
        if ma > self.peak_ma:
            self.peak_ma = ma
        if phases_active > self.phases:
            self.phases = phases_active
        while dt_ms > 0:
            step = dt_ms if dt_ms < CHUNK_MS else CHUNK_MS
            dt_ms -= step
            lo = self._acc_lo + ma * step
            self._acc_hi += lo >> _CARRY_BITS
            self._acc_lo = lo & _CARRY_MASK
            lo = self._t_lo + step
            self._t_hi += lo >> _CARRY_BITS
            self._t_lo = lo & _CARRY_MASK

    def mean_ma(self):
        """Time-weighted mean current in mA over the sampled time (may build
        a big int on an ESP32: call it outside the control tick)."""
        t = (self._t_hi << _CARRY_BITS) + self._t_lo
        if t == 0:
            return 0
        acc = (self._acc_hi << _CARRY_BITS) + self._acc_lo
        return acc // t

    def sampled_ms(self):
        return (self._t_hi << _CARRY_BITS) + self._t_lo

    def checkpoint_due(self, now_ms, energy_mwh):
        """True when a checkpoint should be journaled: CHECKPOINT_EVERY_MWH
        since the last one, or CHECKPOINT_EVERY_MS with some energy since."""
        if not self.active:
            return False
        de = energy_mwh - self._cp_mwh
        if de >= CHECKPOINT_EVERY_MWH:
            return True
        return de > 0 and self.hal.ticks_diff(now_ms, self._cp_ms) >= CHECKPOINT_EVERY_MS

    def checkpoint(self, now_ms, wall_s, energy_mwh, meter_mwh=None):
        """Fields of a checkpoint (what a power cut would leave), and mark it
        taken. Merged over opening() they form a complete record."""
        self.energy_mwh = energy_mwh
        self._cp_mwh = energy_mwh
        self._cp_ms = now_ms
        return self._progress(stamp(self.boot_id, now_ms, wall_s), energy_mwh, meter_mwh)

    def _progress(self, end, energy_mwh, meter_mwh):
        return {
            "start": self.start,  # back-dated by the app once the clock is set
            "end": end,
            "energy_mwh": energy_mwh,
            "energy_wh": wh(energy_mwh),
            "meter_stop_mwh": meter_mwh,
            "meter_stop_wh": wh(meter_mwh),
            "peak_a": round(self.peak_ma / 1000, 2),
            "mean_a": round(self.mean_ma() / 1000, 2),
            "phases": self.phases,
        }

    def end(self, now_ms, wall_s, energy_mwh, reason, meter_stop_mwh=None):
        """Close the session. reason: see REASONS and FAULT_PREFIX."""
        if not valid_reason(reason):
            raise ValueError("bad session end reason")
        self.active = False
        self.energy_mwh = energy_mwh
        self._end = stamp(self.boot_id, now_ms, wall_s)
        self._meter_stop_mwh = meter_stop_mwh
        self._reason = reason

    def opening(self):
        """The record as it stands at begin(): every field present, zero
        energy, end = start, reason None. The journal keeps it as the open
        session; a power cut closes it with the last checkpoint merged in."""
        return {
            "id": self.id,
            "start": self.start,
            "end": self.start,
            "energy_mwh": 0,
            "energy_wh": 0.0,
            "meter_start_mwh": self._meter_start_mwh,
            "meter_start_wh": wh(self._meter_start_mwh),
            "meter_stop_mwh": self._meter_start_mwh,
            "meter_stop_wh": wh(self._meter_start_mwh),
            "peak_a": 0.0,
            "mean_a": 0.0,
            "phases": 0,
            "reason": None,
            "tag": self._tag,
        }

    def record(self):
        """The full record of the last ended session."""
        rec = self.opening()
        rec.update(self._progress(self._end, self.energy_mwh, self._meter_stop_mwh))
        rec["reason"] = self._reason
        return rec
