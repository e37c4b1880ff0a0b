# OCPP SmartCharging (firmware/ocpp_smart.py): the composite limit of the
# installed charging profiles at a wall time (stacking, purposes, A and W,
# Absolute/Recurring/Relative, validity, period boundaries), the checks of
# SetChargingProfile, ClearChargingProfile, GetCompositeSchedule, the bounds,
# and the profiles on flash.
# timeout: 60
import gc
import json

import tmpdirs

from firmware import config, journal, ocpp_schema  # noqa: F401 - the firmware has these anyway: not counted
from firmware.limits import NO_LIMIT_MA, Limits

gc.collect()
_before = gc.mem_alloc()
from firmware import ocpp_smart  # noqa: E402

gc.collect()
SMART_IMPORT_BYTES = gc.mem_alloc() - _before
from firmware.ocpp_time import iso, parse_time  # noqa: E402

Smart = ocpp_smart.Smart

T0 = parse_time("2026-12-01T00:00:00Z")  # a midnight (UTC)
NONE = NO_LIMIT_MA


def prof(
    pid,
    purpose="TxDefaultProfile",
    stack=0,
    periods=((0, 16),),
    unit="A",
    kind="Absolute",
    start=None,
    duration=None,
    recur=None,
    vf=None,
    vt=None,
    txid=None,
    phases=None,
):
    per = []
    for q in periods:
        d = {"startPeriod": q[0], "limit": q[1]}
        if phases is not None:
            d["numberPhases"] = phases
        per.append(d)
    s = {"chargingRateUnit": unit, "chargingSchedulePeriod": per}
    if start is not None:
        s["startSchedule"] = iso(start)
    if duration is not None:
        s["duration"] = duration
    p = {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": s,
    }
    if recur is not None:
        p["recurrencyKind"] = recur
    if vf is not None:
        p["validFrom"] = iso(vf)
    if vt is not None:
        p["validTo"] = iso(vt)
    if txid is not None:
        p["transactionId"] = txid
    return p


def setp(sm, connector, p, now=T0, txid=None):
    payload = {"connectorId": connector, "csChargingProfiles": p}
    assert ocpp_schema.check("SetChargingProfile", payload) is None, payload
    return sm.set_profile(payload, now, txid)


def at(sm, t, connector=1):
    return sm.composite(t, connector, NONE)[0]


class _Dir:
    def __enter__(self):
        self.d = tmpdirs.make("smart")
        return self.d

    def __exit__(self, *a):
        tmpdirs.remove(self.d)


def test_the_highest_stack_level_in_force_wins_within_a_purpose():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        assert at(sm, T0) == NONE  # no profile: no limit
        assert setp(sm, 1, prof(1, stack=0, periods=((0, 16),))) == "Accepted"
        assert setp(sm, 1, prof(2, stack=2, periods=((0, 10),), duration=60)) == "Accepted"
        assert at(sm, T0 + 10) == 10000
        assert at(sm, T0 + 60) == 16000  # the higher one's duration is over: the lower one again
        assert setp(sm, 1, prof(3, stack=1, periods=((0, 20),))) == "Accepted"
        assert at(sm, T0 + 10) == 10000  # stack 2 still wins even when higher
        assert at(sm, T0 + 61) == 20000  # then stack 1, not 0


def test_tx_profile_overrides_tx_default_and_the_charge_point_max_caps_both():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        setp(sm, 1, prof(1, periods=((0, 10),)))
        assert setp(sm, 0, prof(2, purpose="ChargePointMaxProfile", periods=((0, 20),))) == "Accepted"
        assert at(sm, T0) == 10000
        sm.tx_begin(T0, "T")
        assert setp(sm, 1, prof(3, purpose="TxProfile", periods=((0, 32),)), txid=7) == "Accepted"
        assert at(sm, T0 + 5) == 20000  # the TxProfile replaces the default (10 A), the maximum caps it
        assert at(sm, T0 + 5, connector=0) == 20000  # connector 0: the charge point maximum alone
        assert setp(sm, 1, prof(3, purpose="TxProfile", periods=((0, 8),)), txid=7) == "Accepted"  # same id: replaced
        assert at(sm, T0 + 5) == 8000
        assert len(sm.profiles) == 3
        sm.tx_end()
        assert at(sm, T0 + 5) == 10000  # its TxProfile went with the transaction
        assert [pr[0] for pr in sm.profiles] == [1, 2]


def test_watts_become_amps_with_the_voltage_and_the_phases_in_use():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        setp(sm, 1, prof(1, unit="W", periods=((0, 11000),)))
        assert at(sm, T0) == 11000 * 1000 // 690  # 15.94 A per phase on three phases
        sm.phases = 1
        assert at(sm, T0) == 11000 * 1000 // 230  # 47.8 A on one
        sm = Smart(d, 120, 1)
        assert at(sm, T0) == 11000 * 1000 // 120


def test_an_absolute_schedule_changes_at_its_period_boundaries_and_ends_with_its_duration():
    with _Dir() as d:
        sm = Smart(d, 230, 1)
        setp(sm, 1, prof(1, start=T0 + 100, duration=180, periods=((0, 16), (60, 8), (120, 0))), now=T0)
        assert sm.composite(T0, 1, NONE) == (NONE, 0, T0 + 100)  # not yet begun: when it will
        assert sm.composite(T0 + 100, 1, NONE) == (16000, 0, T0 + 160)
        assert sm.composite(T0 + 159, 1, NONE) == (16000, 0, T0 + 160)
        assert sm.composite(T0 + 160, 1, NONE) == (8000, 0, T0 + 220)
        assert sm.composite(T0 + 220, 1, NONE) == (0, 0, T0 + 280)
        assert sm.composite(T0 + 280, 1, NONE) == (NONE, 0, None)  # duration over
        # Without startSchedule an Absolute profile runs from when it was set.
        setp(sm, 1, prof(2, stack=1, periods=((0, 12), (30, 6))), now=T0 + 1000)
        assert at(sm, T0 + 1010) == 12000 and at(sm, T0 + 1030) == 6000


def test_recurring_daily_and_weekly_schedules_repeat():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        # Daily from a midnight: 32 A, 10 A from 08:00, 32 A again from 20:00.
        day = prof(1, kind="Recurring", recur="Daily", start=T0, periods=((0, 32), (8 * 3600, 10), (20 * 3600, 32)))
        assert setp(sm, 1, day) == "Accepted"
        d3 = T0 + 3 * 86400
        assert sm.composite(d3 + 3600, 1, NONE) == (32000, 0, d3 + 8 * 3600)
        assert sm.composite(d3 + 9 * 3600, 1, NONE) == (10000, 0, d3 + 20 * 3600)
        assert sm.composite(d3 + 23 * 3600, 1, NONE) == (32000, 0, d3 + 86400)  # the next day begins
        # Weekly, 6 A during the first day of each week, a higher stack level.
        week = prof(2, stack=1, kind="Recurring", recur="Weekly", start=T0, duration=86400, periods=((0, 6),))
        assert setp(sm, 1, week) == "Accepted"
        assert at(sm, T0 + 14 * 86400 + 9 * 3600) == 6000
        assert at(sm, T0 + 15 * 86400 + 9 * 3600) == 10000  # the weekly one is over for this week
        # Recurring needs its kind and its start.
        assert setp(sm, 1, prof(3, kind="Recurring", start=T0)) == "Rejected"
        assert setp(sm, 1, prof(3, kind="Recurring", recur="Daily")) == "Rejected"


def test_a_relative_schedule_counts_from_the_transactions_start():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        setp(sm, 1, prof(1, kind="Relative", periods=((0, 6), (30, 16))))
        assert at(sm, T0 + 500) == 6000  # no transaction: its first period
        sm.tx_begin(T0 + 1000, "T")
        assert sm.composite(T0 + 1010, 1, NONE) == (6000, 0, T0 + 1030)
        assert at(sm, T0 + 1031) == 16000
        # A TxProfile of kind Absolute without startSchedule also begins with its transaction.
        assert (
            setp(sm, 1, prof(2, purpose="TxProfile", periods=((0, 10), (100, 20))), now=T0 + 1050, txid=5) == "Accepted"
        )
        assert at(sm, T0 + 1100) == 20000 and at(sm, T0 + 1099) == 10000


def test_valid_from_and_valid_to_bound_a_profile():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        setp(sm, 1, prof(1, vf=T0 + 10, vt=T0 + 20, periods=((0, 9),)))
        assert sm.composite(T0, 1, NONE) == (NONE, 0, T0 + 10)
        assert sm.composite(T0 + 10, 1, NONE) == (9000, 0, T0 + 20)
        assert at(sm, T0 + 20) == NONE
        assert setp(sm, 1, prof(2, vf=T0 + 20, vt=T0 + 10)) == "Rejected"


def test_without_a_wall_clock_each_profile_gives_its_first_period():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        setp(sm, 1, prof(1, start=T0 + 10000, periods=((0, 7), (60, 20))))
        assert sm.composite(None, 1, NONE) == (7000, 0, None)


def test_semantically_bad_profiles_are_rejected():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        assert setp(sm, 1, prof(1, purpose="TxProfile")) == "Rejected"  # no transaction
        assert setp(sm, 2, prof(1)) == "Rejected"  # one connector only
        assert setp(sm, 1, prof(1, purpose="ChargePointMaxProfile")) == "Rejected"  # connector 0 only
        assert setp(sm, 0, prof(1, purpose="TxProfile")) == "Rejected"
        sm.tx_begin(T0, "T")
        assert setp(sm, 1, prof(1, purpose="TxProfile", txid=8), txid=7) == "Rejected"  # another transaction
        assert setp(sm, 1, prof(1, purpose="TxProfile", txid=7), txid=7) == "Accepted"
        assert setp(sm, 1, prof(2, stack=9)) == "Rejected"  # above ChargeProfileMaxStackLevel
        assert setp(sm, 1, prof(2, periods=((5, 16),))) == "Rejected"  # must start at 0
        assert setp(sm, 1, prof(2, periods=((0, 16), (60, 8), (60, 6)))) == "Rejected"  # not increasing
        assert (
            setp(sm, 1, prof(2, periods=[(i * 10, 16) for i in range(25)])) == "Rejected"
        )  # above ChargingScheduleMaxPeriods
        assert setp(sm, 1, prof(2, periods=[(i * 10, 16) for i in range(24)])) == "Accepted"
        assert setp(sm, 1, prof(3, periods=((0, -1),))) == "Rejected"
        assert setp(sm, 1, prof(3, periods=((0, float("nan")),))) == "Rejected"
        assert len(sm.profiles) == 2


def test_huge_limits_are_held_at_the_maximum_and_never_raise():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        assert setp(sm, 1, prof(1, periods=((0, float("inf")),))) == "Accepted"
        assert setp(sm, 1, prof(2, stack=1, unit="W", periods=((0, 1e300),))) == "Accepted"
        assert sm.profiles[1][11] == [0, 10000000, 0]  # held at 1,000,000 W
        assert at(sm, T0) == NONE  # far above any hardware limit: no limit
        sm.phases = 1
        sm.voltage_v = 480
        assert at(sm, T0) == NONE
        sm.clear({"id": 2})
        assert at(sm, T0) == NONE


def test_at_most_eight_profiles_and_a_same_purpose_and_level_replaces():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        for i in range(8):
            assert setp(sm, 1, prof(10 + i, stack=i)) == "Accepted"
        assert setp(sm, 1, prof(30, stack=8)) == "Rejected"  # MaxChargingProfilesInstalled
        assert setp(sm, 1, prof(31, stack=3, periods=((0, 11),))) == "Accepted"  # replaces id 13
        assert len(sm.profiles) == 8 and 13 not in [pr[0] for pr in sm.profiles]


def test_clear_by_id_or_by_criteria():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        setp(sm, 1, prof(1, stack=0))
        setp(sm, 1, prof(2, stack=1))
        setp(sm, 0, prof(3, purpose="ChargePointMaxProfile"))
        assert sm.clear({"id": 99}) == "Unknown"
        assert sm.clear({"id": 2, "stackLevel": 5}) == "Accepted"  # the id decides
        assert sm.clear({"chargingProfilePurpose": "TxProfile"}) == "Unknown"
        assert sm.clear({"connectorId": 0}) == "Accepted"
        assert [pr[0] for pr in sm.profiles] == [1]
        assert sm.clear({}) == "Accepted"
        assert sm.profiles == []


def test_profiles_survive_a_reboot_but_tx_profiles_and_damaged_files_do_not():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        setp(sm, 1, prof(1, periods=((0, 16), (60, 8))))
        sm.tx_begin(T0, "T")
        setp(sm, 1, prof(2, purpose="TxProfile", periods=((0, 6),)), txid=3)
        sm2 = Smart(d, 230, 3)  # a power cut mid-transaction: the transaction is over
        assert [pr[0] for pr in sm2.profiles] == [1]
        assert at(sm2, T0 + 61) == 8000
        with open(d + "/ocpp_profiles.json", "w") as f:
            f.write('[[1, 0, "x"')
        assert Smart(d, 230, 3).profiles == []
        with open(d + "/ocpp_profiles.json", "w") as f:
            f.write(json.dumps([[1] * 13, "junk", 5]))
        sm3 = Smart(d, 230, 3)
        assert sm3.profiles == [] and "damaged" in sm3.load_error
        with open(d + "/ocpp_profiles.json", "w") as f:
            f.write(" " * 13000)  # above its bound: not even read
        sm4 = Smart(d, 230, 3)
        assert sm4.profiles == [] and "13000" in sm4.load_error
        assert setp(sm4, 1, prof(1)) == "Accepted"  # and written again
        assert [pr[0] for pr in Smart(d, 230, 3).profiles] == [1]


def test_composite_schedule_lists_the_limit_over_time_in_a_or_w():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        lim = Limits(config.validate({"max_current_a": 32})[0])
        setp(sm, 1, prof(1, start=T0, periods=((0, 16), (60, 8), (120, 0)), duration=300))
        setp(sm, 0, prof(2, purpose="ChargePointMaxProfile", periods=((0, 12),), phases=3), now=T0)
        r = sm.call("GetCompositeSchedule", {"connectorId": 1, "duration": 400}, lim, T0, None)
        assert r["status"] == "Accepted" and r["connectorId"] == 1 and r["scheduleStart"] == iso(T0)
        s = r["chargingSchedule"]
        assert s["chargingRateUnit"] == "A" and s["duration"] == 400
        assert s["chargingSchedulePeriod"] == [
            {"startPeriod": 0, "limit": 12.0, "numberPhases": 3},
            {"startPeriod": 60, "limit": 8.0},
            {"startPeriod": 120, "limit": 0.0},
            {"startPeriod": 300, "limit": 12.0, "numberPhases": 3},  # TxDefault over: the maximum alone
        ]
        r0 = sm.call(
            "GetCompositeSchedule", {"connectorId": 0, "duration": 400, "chargingRateUnit": "W"}, lim, T0, None
        )
        assert r0["chargingSchedule"]["chargingSchedulePeriod"] == [
            {"startPeriod": 0, "limit": 8280.0, "numberPhases": 3}
        ]
        sm.clear({})
        r = sm.call("GetCompositeSchedule", {"connectorId": 1, "duration": 60}, lim, T0, None)
        assert r["chargingSchedule"]["chargingSchedulePeriod"] == [
            {"startPeriod": 0, "limit": 32.0}
        ]  # the charger's own limit
        assert sm.call("GetCompositeSchedule", {"connectorId": 2, "duration": 60}, lim, T0, None) == {
            "status": "Rejected"
        }
        assert sm.call("GetCompositeSchedule", {"connectorId": 1, "duration": 60}, lim, None, None) == {
            "status": "Rejected"
        }


def test_the_limit_is_computed_again_only_at_the_next_boundary():
    with _Dir() as d:
        sm = Smart(d, 230, 3)

        class Clock:
            def ticks_diff(self, a, b):
                return a - b

        diff = Clock()
        setp(sm, 1, prof(1, start=T0, periods=((0, 16), (20, 8))))
        assert sm.due(0, diff)  # a new profile
        assert sm.update(T0 + 5, 1000, 3) == 16000
        assert not sm.due(1000 + 14999, diff)
        assert sm.due(1000 + 15000, diff)  # 15 s later the period changes
        assert sm.update(T0 + 20, 16000, 3) == 8000
        assert not sm.due(16000 + 59999, diff)  # nothing more to come: checked once a minute
        assert sm.due(16000 + 60000, diff)
        sm.clear({"id": 1})
        assert sm.due(16001, diff)  # a change: at once
        setp(sm, 1, prof(2, start=T0, periods=((0, 16), (20, 8))))
        assert sm.update(None, 20000, 3) == 16000  # no wall clock: the first period
        assert not sm.due(20999, diff) and sm.due(21000, diff)  # looked at every second until the clock is set
        assert sm.update(T0 + 25, 21000, 3) == 8000


def test_the_ocpp_limit_is_one_more_minimum_and_below_six_amps_pauses():
    lim = Limits(config.validate({"max_current_a": 32})[0])
    lim.ocpp_ma = 10000
    assert lim.offer_ma() == 10000 and lim.reason == "ocpp"
    lim.remote_ma = 8000  # MQTT's current_a stays its own limit
    assert lim.offer_ma() == 8000 and lim.reason == "remote"
    lim.remote_ma = NO_LIMIT_MA
    lim.ocpp_ma = 5000
    assert lim.offer_ma() == 0


def test_the_calls_are_checked_against_their_schemas():
    assert ocpp_schema.check("SetChargingProfile", {"connectorId": 1})[0] == "OccurenceConstraintViolation"
    assert (
        ocpp_schema.check("ClearChargingProfile", {"chargingProfilePurpose": "Other"})[0]
        == "PropertyConstraintViolation"
    )
    assert ocpp_schema.check("ClearChargingProfile", {}) is None
    assert (
        ocpp_schema.check("GetCompositeSchedule", {"connectorId": 1, "duration": "60"})[0] == "TypeConstraintViolation"
    )
    assert (
        ocpp_schema.check("GetCompositeSchedule", {"connectorId": 1, "duration": 60, "chargingRateUnit": "W"}) is None
    )


def test_a_remote_starts_tx_profile_is_installed_when_its_transaction_begins():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        assert not sm.remote_start("REMOTE1", prof(4, purpose="TxDefaultProfile"), T0)
        assert not sm.remote_start("REMOTE1", prof(4, purpose="TxProfile", periods=((5, 10),)), T0)
        assert sm.remote_start("REMOTE1", prof(4, purpose="TxProfile", periods=((0, 10), (60, 20))), T0)
        assert at(sm, T0) == 10000  # in force before the transaction: its first offer obeys it
        sm.tx_begin(T0 + 30, "REMOTE1")
        assert (
            at(sm, T0 + 31) == 10000 and at(sm, T0 + 90) == 20000 and sm.remote is None
        )  # from the transaction's start
        sm.tx_end()
        assert sm.profiles == [] and at(sm, T0 + 100) == NONE
        # Another card's transaction does not get it.
        assert sm.remote_start("REMOTE1", prof(4, purpose="TxProfile", periods=((0, 10),)), T0)
        sm.tx_begin(T0 + 100, "CARD2")
        assert at(sm, T0 + 101) == NONE and sm.remote is None
        # A remote start refused after all forgets it.
        assert sm.remote_start("REMOTE1", prof(4, purpose="TxProfile", periods=((0, 10),)), T0)
        sm.remote_start(None, None, None)
        assert at(sm, T0) == NONE


def test_heap_of_the_smart_charging_module_is_printed():
    with _Dir() as d:
        sm = Smart(d, 230, 3)
        gc.collect()
        before = gc.mem_alloc()
        for i in range(8):
            setp(sm, 1, prof(i + 1, stack=i, periods=[(j * 60, 16) for j in range(24)]))
        gc.collect()
        full = gc.mem_alloc() - before
    print("heap: import firmware.ocpp_smart %d bytes; 8 profiles of 24 periods %d bytes" % (SMART_IMPORT_BYTES, full))
    assert SMART_IMPORT_BYTES > 0 and len(sm.profiles) == 8
