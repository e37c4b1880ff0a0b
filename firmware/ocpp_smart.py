"""OCPP 1.6J SmartCharging: charging profiles, their composite limit, and the
three CALLs that manage them (SetChargingProfile, ClearChargingProfile,
GetCompositeSchedule).

Owns: the installed profiles (on flash, bounded, restored at boot; TxProfiles
dropped at a transaction's end and at boot, since no transaction survives a
reboot), the evaluation of a schedule at a wall time (Absolute, Recurring
Daily/Weekly, Relative; validFrom/validTo; startSchedule and duration), the
stacking (highest stackLevel in force wins within a purpose) and the purposes
combined: TxProfile over TxDefaultProfile, both capped by
ChargePointMaxProfile. Limits are kept in tenths of their unit; W becomes
mA with the configured phase voltage and the phases in use.

Never: touches the charger except by setting `Limits.ocpp_ma` (one more
minimum, firmware/limits.py), and only from the loop's OCPP service, when
a profile, the transaction or the phases change, or when the next period
boundary (computed once, a ticks deadline) has passed. Nothing here runs in
the control tick.
RAM (ESP32-faithful interpreter): ~1.2 KB after import (frozen); a full
table of 8 profiles of 24 periods ~6.4 KB.
"""

import json

from micropython import const

from firmware import store
from firmware.ocpp_time import iso, parse_time

FILE = "ocpp_profiles.json"
ACTIONS = ("SetChargingProfile", "ClearChargingProfile", "GetCompositeSchedule")
_MAX_PROFILES = const(8)  # MaxChargingProfilesInstalled
_MAX_PERIODS = const(24)  # ChargingScheduleMaxPeriods
_MAX_STACK = const(8)  # ChargeProfileMaxStackLevel
_FILE_MAX_BYTES = const(12288)  # 8 profiles of 24 periods fit with room to spare
_LIMIT_MAX_D = const(10000000)  # tenths: 1,000,000 A or W (keeps W * 100 below 2^30)
_NO_LIMIT_MA = const(1000000)  # firmware/limits.py NO_LIMIT_MA
_RECHECK_MS = const(60000)  # recompute at least this often (the phases in use may change)
_NO_CLOCK_MS = const(1000)  # and this often while there are profiles but no wall clock
_COMPOSITE_MAX = const(48)  # periods in a GetCompositeSchedule answer

# Read-only configuration keys (merged into firmware/ocpp_keys.py KEYS).
KEYS = {
    "ChargeProfileMaxStackLevel": (str(_MAX_STACK), 0, "i"),
    "ChargingScheduleAllowedChargingRateUnit": ("Current,Power", 0, "s"),
    "ChargingScheduleMaxPeriods": (str(_MAX_PERIODS), 0, "i"),
    "MaxChargingProfilesInstalled": (str(_MAX_PROFILES), 0, "i"),
}

PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
_CPMAX = const(0)
_TXDEF = const(1)
_TX = const(2)
_KINDS = ("Absolute", "Recurring", "Relative")
_ABSOLUTE = const(0)
_RECURRING = const(1)
_RELATIVE = const(2)
_RECUR_S = {"Daily": 86400, "Weekly": 604800}

# One profile, a list (as stored in the file):
_ID = const(0)  # chargingProfileId
_CONN = const(1)  # connectorId as given (0 or 1)
_PURPOSE = const(2)  # index in PURPOSES
_STACK = const(3)
_KIND = const(4)  # index in _KINDS
_RECUR = const(5)  # recurrence in seconds (0: none)
_FROM = const(6)  # validFrom, wall s or None
_TO = const(7)  # validTo, wall s or None
_START = const(8)  # startSchedule (or the time it was set / the transaction began), wall s or None
_DUR = const(9)  # duration s or None
_WATTS = const(10)  # 1: limits in W, 0: in A
_PERIODS = const(11)  # [startPeriod s, limit tenths, numberPhases or 0, ...] (flat: 4 bytes a number on an ESP32)
_TXID = const(12)  # TxProfile: the transactionId it was given (None: the transaction in progress)


def parse_profile(p, now_s):
    """A stored profile from a schema-checked csChargingProfiles, or None when
    it is semantically bad (too many periods, a stack level above the
    maximum, periods not starting at 0 or not increasing, Recurring without
    its kind or start, a date that does not parse, validTo before validFrom)."""
    s = p["chargingSchedule"]
    per = s["chargingSchedulePeriod"]
    if not per or len(per) > _MAX_PERIODS or p["stackLevel"] > _MAX_STACK:
        return None
    periods = []
    last = -1
    for q in per:
        start = q["startPeriod"]
        lim = q["limit"]
        n = q.get("numberPhases", 0)
        if start <= last or (last < 0 and start != 0) or not lim >= 0 or n > 3:  # not >= 0: NaN too
            return None
        last = start
        periods.append(start)
        periods.append(_LIMIT_MAX_D if lim >= _LIMIT_MAX_D // 10 else int(lim * 10 + 0.5))  # inf too
        periods.append(n)
    kind = _KINDS.index(p["chargingProfileKind"])
    recur = 0
    if kind == _RECURRING:
        if "recurrencyKind" not in p or "startSchedule" not in s:
            return None
        recur = _RECUR_S[p["recurrencyKind"]]
    times = []
    for t in (p.get("validFrom"), p.get("validTo"), s.get("startSchedule")):
        v = None
        if t is not None:
            v = parse_time(t)
            if v is None:
                return None
        times.append(v)
    if times[0] is not None and times[1] is not None and times[1] <= times[0]:
        return None
    start = times[2]
    if kind == _RELATIVE:
        start = None  # relative to the transaction's start
    elif start is None and p["chargingProfilePurpose"] != "TxProfile":
        start = now_s  # Absolute without startSchedule: from now (a TxProfile: from its transaction's start)
    return [
        p["chargingProfileId"],
        0,
        PURPOSES.index(p["chargingProfilePurpose"]),
        p["stackLevel"],
        kind,
        recur,
        times[0],
        times[1],
        start,
        s.get("duration"),
        1 if s["chargingRateUnit"] == "W" else 0,
        periods,
        p.get("transactionId"),
    ]


def _int(v, lo, hi):
    return isinstance(v, int) and v is not True and v is not False and lo <= v <= hi


def _stored_ok(pr):
    """A profile read back from flash has the form parse_profile() gives
    (a damaged file must never reach evaluate())."""
    if not isinstance(pr, list) or len(pr) != 13:
        return False
    big = 1 << 62  # wall seconds need not be small ints (they are not on an ESP32)
    for i, lo, hi in (
        (_ID, -big, big),
        (_CONN, 0, 1),
        (_PURPOSE, 0, 2),
        (_STACK, 0, _MAX_STACK),
        (_KIND, 0, 2),
        (_WATTS, 0, 1),
    ):
        if not _int(pr[i], lo, hi):
            return False
    if pr[_RECUR] not in (0, 86400, 604800) or (pr[_KIND] == _RECURRING) != (pr[_RECUR] != 0):
        return False
    for i in (_FROM, _TO, _START, _DUR, _TXID):
        if pr[i] is not None and not _int(pr[i], -big, big):
            return False
    if pr[_KIND] == _RECURRING and pr[_START] is None:
        return False
    per = pr[_PERIODS]
    if not isinstance(per, list) or not 0 < len(per) <= 3 * _MAX_PERIODS or len(per) % 3 or per[0] != 0:
        return False
    last = -1
    for i in range(0, len(per), 3):
        if not _int(per[i], last + 1, big) or not _int(per[i + 1], 0, _LIMIT_MAX_D) or not _int(per[i + 2], 0, 3):
            return False
        last = per[i]
    return True


def evaluate(pr, t, tx_start):
    """(limit tenths, numberPhases, next change s) of one profile at wall
    time t, or (None, 0, next change) when it is not in force then. t None
    (no wall clock yet): the first period, no next change. tx_start: the
    wall time the transaction began (None: none, or no clock)."""
    periods = pr[_PERIODS]
    if t is None:
        return periods[1], periods[2], None
    nxt = None
    vf = pr[_FROM]
    vt = pr[_TO]
    if vf is not None and t < vf:
        return None, 0, vf
    if vt is not None:
        if t >= vt:
            return None, 0, None
        nxt = vt
    kind = pr[_KIND]
    start = pr[_START]
    if kind == _RELATIVE:
        start = tx_start if tx_start is not None else t  # no transaction: its first period
    elif pr[_PURPOSE] == _TX and tx_start is not None and start is None:
        start = tx_start
    if start is None:
        start = t
    if kind == _RECURRING:
        r = pr[_RECUR]
        start += (t - start) // r * r  # the latest recurrence (floor: before startSchedule too)
        nxt = _earlier(nxt, start + r)
    if t < start:
        return None, 0, _earlier(nxt, start)
    off = t - start
    dur = pr[_DUR]
    if dur is not None:
        if off >= dur:
            return None, 0, nxt
        nxt = _earlier(nxt, start + dur)
    lim = periods[1]
    n = periods[2]
    for i in range(3, len(periods), 3):
        if periods[i] > off:
            nxt = _earlier(nxt, start + periods[i])
            break
        lim = periods[i + 1]
        n = periods[i + 2]
    return lim, n, nxt


def _earlier(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a if a < b else b


def to_ma(tenths, watts, voltage_v, phases):
    """A limit in tenths of A or W as mA per phase."""
    if watts:
        return tenths * 100 // (voltage_v * phases)
    return tenths * 100 if tenths < _NO_LIMIT_MA // 100 else _NO_LIMIT_MA


class Smart:
    def __init__(self, data_dir, voltage_v, phases):
        self.path = data_dir + "/" + FILE
        self.voltage_v = voltage_v
        self.phases = phases  # in use (the app passes the energy manager's count)
        self.profiles = []
        self.limit_ma = _NO_LIMIT_MA  # the composite now (connector 1)
        self.tx_start = None  # wall s the transaction began (None: none, or no clock)
        self.tx_active = False
        self.remote = None  # (idTag, stored TxProfile) of a RemoteStartTransaction: for the transaction it starts
        self.errors = 0  # flash writes that failed
        self._since = 0  # ticks of the last computation
        self._wait = 0  # ms from then to the next one
        self._dirty = True  # recompute at the next service()
        self.load_error = None  # why the file on flash was not used (None: fine, or none there)
        saved, self.load_error = store.load_json(self.path, _FILE_MAX_BYTES)
        if saved is not None:
            if isinstance(saved, list) and len(saved) <= _MAX_PROFILES and all(_stored_ok(pr) for pr in saved):
                for pr in saved:
                    if pr[_PURPOSE] != _TX:  # no transaction survives a reboot
                        self.profiles.append(pr)
            else:
                self.load_error = "%s is damaged" % self.path  # no profiles

    def _save(self):
        try:
            store.write(self.path, json.dumps(self.profiles))
            return True
        except OSError:
            self.errors += 1
            return False

    # --- the transaction ---------------------------------------------------------------
    def remote_start(self, tag, p, wall_s):
        """A RemoteStartTransaction for idTag `tag` with chargingProfile `p`
        (None: none; tag None: the start was refused after all). Until the
        transaction begins the profile limits the charger already (so its
        first offer obeys it); False when p is not an acceptable TxProfile."""
        self.remote = None
        self._dirty = True
        if p is None or tag is None:
            return True
        pr = parse_profile(p, wall_s) if p["chargingProfilePurpose"] == "TxProfile" else None
        if pr is None:
            return False
        pr[_CONN] = 1
        self.remote = (tag, pr)
        return True

    def tx_begin(self, wall_s, tag):
        """A transaction begins (wall_s: None without a clock; tag: its idTag).
        A RemoteStartTransaction's TxProfile is installed when this is the
        transaction it started (the same idTag), else forgotten."""
        self.tx_active = True
        self.tx_start = wall_s
        self._dirty = True
        r = self.remote
        self.remote = None
        if r is not None and r[0] == tag:
            self._install(r[1])

    def tx_end(self):
        self.tx_active = False
        self.tx_start = None
        self._dirty = True
        n = len(self.profiles)
        self.profiles = [pr for pr in self.profiles if pr[_PURPOSE] != _TX]
        if len(self.profiles) != n:
            self._save()

    # --- the CALLs -----------------------------------------------------------------------
    def call(self, action, p, limits, wall_s, txid):
        """One of ACTIONS (schema-checked) from the loop: its CALLRESULT payload.
        limits: the charger's (firmware/limits.py); txid: the transaction in
        progress' id (None: none, or not known yet)."""
        if action == "SetChargingProfile":
            try:
                return {"status": self.set_profile(p, wall_s, txid)}
            except (ValueError, TypeError, OverflowError):  # no odd number may reach the loop's caller
                return {"status": "Rejected"}
        if action == "ClearChargingProfile":
            return {"status": self.clear(p)}
        own = limits.hw_ma if limits.hw_ma < limits.config_ma else limits.config_ma
        return self.schedule(p, wall_s, own)

    def set_profile(self, p, wall_s, txid):
        """SetChargingProfile (schema-checked): "Accepted" or "Rejected".
        txid: the transaction in progress' id (None: none, or not known yet)."""
        c = p["connectorId"]
        cp = p["csChargingProfiles"]
        purpose = cp["chargingProfilePurpose"]
        if c > 1:
            return "Rejected"  # one connector
        if purpose == "ChargePointMaxProfile" and c != 0:
            return "Rejected"
        if purpose == "TxProfile":
            if c != 1 or not self.tx_active:
                return "Rejected"
            want = cp.get("transactionId")
            if want is not None and want != txid:
                return "Rejected"
        pr = parse_profile(cp, wall_s)
        if pr is None:
            return "Rejected"
        pr[_CONN] = c
        return "Accepted" if self._install(pr) else "Rejected"

    def _install(self, pr):
        """Replaces a profile of the same id, or of the same purpose and
        stack level (on the same connector); False when full or not written."""
        keep = []
        for o in self.profiles:
            if o[_ID] == pr[_ID] or (o[_PURPOSE] == pr[_PURPOSE] and o[_STACK] == pr[_STACK] and o[_CONN] == pr[_CONN]):
                continue
            keep.append(o)
        if len(keep) >= _MAX_PROFILES:
            return False
        old = self.profiles
        keep.append(pr)
        self.profiles = keep
        if not self._save():
            self.profiles = old
            return False
        self._dirty = True
        return True

    def clear(self, p):
        """ClearChargingProfile: "Accepted" when something was removed, else
        "Unknown". An id removes that profile whatever the other fields say."""
        pid = p.get("id")
        c = p.get("connectorId")
        purpose = p.get("chargingProfilePurpose")
        stack = p.get("stackLevel")
        keep = []
        for pr in self.profiles:
            if pid is not None:
                hit = pr[_ID] == pid
            else:
                hit = (
                    (c is None or pr[_CONN] == c)
                    and (purpose is None or PURPOSES[pr[_PURPOSE]] == purpose)
                    and (stack is None or pr[_STACK] == stack)
                )
            if not hit:
                keep.append(pr)
        if len(keep) == len(self.profiles):
            return "Unknown"
        self.profiles = keep
        self._save()
        self._dirty = True
        return "Accepted"

    def composite(self, t, connector, own_ma):
        """(mA per phase, numberPhases or 0, next change s or None) at wall
        time t for `connector` (0: the charge point as a whole, its
        ChargePointMaxProfile only), capped at own_ma (the charger's own
        limit)."""
        best = [None, None, None]  # per purpose: the profile in force with the highest stack level
        level = [-1, -1, -1]
        nxt = None
        rem = self.remote
        for pr in self.profiles if rem is None else self.profiles + [rem[1]]:
            k = pr[_PURPOSE]
            if k == _TX and not self.tx_active and (rem is None or pr is not rem[1]):
                continue  # a TxProfile without its transaction (a remote start's waits for it, in force)
            lim, n, when = evaluate(pr, t, self.tx_start)
            nxt = _earlier(nxt, when)
            if lim is not None and pr[_STACK] > level[k]:
                level[k] = pr[_STACK]
                best[k] = (lim, n, pr[_WATTS])
        ma = own_ma
        phases = 0
        for k in (_CPMAX, _TX if best[_TX] is not None else _TXDEF):
            if connector == 0 and k != _CPMAX:
                break
            b = best[k]
            if b is not None:
                m = to_ma(b[0], b[2], self.voltage_v, self.phases)
                if m < ma:
                    ma = m
                    phases = b[1]
        return ma, phases, nxt

    def schedule(self, p, t, own_ma):
        """GetCompositeSchedule (schema-checked): its CALLRESULT payload."""
        c = p["connectorId"]
        if c > 1 or t is None:
            return {"status": "Rejected"}  # one connector; no wall clock: no schedule to give
        end = t + p["duration"]
        watts = p.get("chargingRateUnit") == "W"
        per_w = self.voltage_v * self.phases
        periods = []
        at = t
        last = None
        while at < end and len(periods) < _COMPOSITE_MAX:
            ma, n, nxt = self.composite(at, c, own_ma)
            if ma != last:
                last = ma
                v = (ma * per_w + 50) // 100 if watts else (ma + 50) // 100  # tenths
                q = {"startPeriod": at - t, "limit": v / 10}
                if n:
                    q["numberPhases"] = n
                periods.append(q)
            if nxt is None or nxt <= at:
                break
            at = nxt
        return {
            "status": "Accepted",
            "connectorId": c,
            "scheduleStart": iso(t),
            "chargingSchedule": {
                "duration": p["duration"],
                "startSchedule": iso(t),
                "chargingRateUnit": "W" if watts else "A",
                "chargingSchedulePeriod": periods,
            },
        }

    # --- the loop ----------------------------------------------------------------------------
    def due(self, now_ms, clock):
        """True when the limit must be computed again. clock: has ticks_diff
        (the HAL). Allocates nothing."""
        return self._dirty or clock.ticks_diff(now_ms, self._since) >= self._wait

    def update(self, t, now_ms, phases):
        """Compute the connector's limit at wall time t; the next time to do
        it (a ticks deadline) is the next period boundary, _RECHECK_MS at the
        latest. Returns the limit in mA (NO_LIMIT when no profile applies)."""
        self._dirty = False
        self.phases = phases if phases > 0 else 1
        ma, _, nxt = self.composite(t, 1, _NO_LIMIT_MA)
        wait = _RECHECK_MS
        if t is None and self.profiles:
            wait = _NO_CLOCK_MS  # the clock may come with the next BootNotification answer
        elif nxt is not None and t is not None and (nxt - t) * 1000 < wait:
            wait = (nxt - t) * 1000
        self._since = now_ms
        self._wait = wait
        self.limit_ma = ma
        return ma
