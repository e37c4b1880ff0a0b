# Clock-aligned meter values (firmware/ocpp_meter.py, firmware/ocpp.py):
# the schedule at wall-clock multiples of ClockAlignedDataInterval from
# midnight UTC, only with the clock set; on the simulated board MeterValues
# with context Sample.Clock for connectors 0 and 1 outside a transaction,
# queued with the transaction inside one, and StopTxnAlignedData in the
# StopTransaction's transactionData.
# timeout: 120
from test_ocpp_reserve import NOW, _Rig

from firmware.ocpp_meter import Aligned
from firmware.ocpp_time import parse_time

DAY = NOW - NOW % 86400


def test_aligned_samples_fall_on_multiples_of_the_interval_from_midnight_once_each():
    a = Aligned()
    assert a.due(None, 900) is None
    assert a.due(DAY + 901, 0) is None  # off
    assert a.due(DAY + 901, 900) is None  # first sight of the clock: the next boundary is the first
    assert a.due(DAY + 1799, 900) is None
    assert a.due(DAY + 1800, 900) == DAY + 1800
    assert a.due(DAY + 1801, 900) is None  # once
    assert a.due(DAY + 2750, 900) == DAY + 2700  # looked at late: the boundary it passed, stamped as such
    assert a.due(DAY + 9000 + 5, 900) == DAY + 9000  # a jump forward: one sample, not a burst
    assert a.due(DAY + 9300, 600) is None  # a new interval starts afresh
    assert a.due(DAY + 9600, 600) == DAY + 9600
    assert a.due(DAY + 86400 - 1, 7) is None
    assert a.due(DAY + 86400, 7) == DAY + 86400  # an interval that does not divide a day starts again at midnight
    assert a.due(None, 7) is None and a.last is None  # the clock lost: nothing


def _keys(rig, **kw):
    for k in kw:
        assert rig.cp.keys.change(k, kw[k]) == "Accepted", k


def _clock_values(calls):
    out = []
    for action, p in calls:
        if action == "MeterValues" and p["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock":
            out.append(p)
    return out


def test_outside_a_transaction_aligned_values_go_for_connectors_0_and_1_at_the_boundaries():
    rig = _Rig()
    try:
        _keys(rig, ClockAlignedDataInterval="10", MeterValuesAlignedData="Energy.Active.Import.Register,Power.Active.Import")
        rig.run(35000)
        mvs = _clock_values(rig.cp._calls)
        assert 6 <= len(mvs) <= 8  # 3 or 4 boundaries in 35 s, two connectors each
        assert sorted({p["connectorId"] for p in mvs}) == [0, 1]
        for p in mvs:
            (mv,) = p["meterValue"]
            assert parse_time(mv["timestamp"]) % 10 == 0
            assert [v["measurand"] for v in mv["sampledValue"]] == ["Energy.Active.Import.Register", "Power.Active.Import"]
            assert "transactionId" not in p
    finally:
        rig.close()


def test_without_a_wall_clock_no_aligned_values_are_sent():
    rig = _Rig()
    try:
        rig.sim._wall = None  # no NTP, no central system's time yet
        _keys(rig, ClockAlignedDataInterval="5", MeterValuesAlignedData="Energy.Active.Import.Register")
        rig.run(20000)
        assert _clock_values(rig.cp._calls) == []
    finally:
        rig.close()


def test_in_a_transaction_aligned_values_are_queued_with_it_and_end_in_its_transaction_data():
    rig = _Rig(require_auth=True)
    try:
        _keys(rig, ClockAlignedDataInterval="10", MeterValuesAlignedData="Energy.Active.Import.Register,Current.Import",
              StopTxnAlignedData="Energy.Active.Import.Register", MeterValueSampleInterval="0")
        rig.sim.set_ev("C")
        rig.run(500)
        rig.authorize_answer("CARD", {"status": "Accepted"})
        rig.run(45000)
        rig.sim.set_ev("A")
        rig.run(3000)
        q = rig.cp.txq.entries
        assert [e[1] for e in q][0] == "StartTransaction" and q[-1][1] == "StopTransaction"
        clock = [e[3] for e in q if e[1] == "MeterValues" and e[3]["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"]
        assert 4 <= len(clock) <= 5
        regs = [int(p["meterValue"][0]["sampledValue"][0]["value"]) for p in clock]
        assert regs == sorted(regs) and regs[-1] > regs[0]  # charging
        for p in clock:
            assert p["connectorId"] == 1 and parse_time(p["meterValue"][0]["timestamp"]) % 10 == 0
        conn0 = [p for p in _clock_values(rig.cp._calls) if p["connectorId"] == 0]
        assert len(conn0) == len(clock) and not [p for p in _clock_values(rig.cp._calls) if p["connectorId"] == 1]
        stop = q[-1][3]
        data = stop["transactionData"]
        assert len(data) == len(clock)
        assert [d["timestamp"] for d in data] == [p["meterValue"][0]["timestamp"] for p in clock]
        assert all([v["measurand"] for v in d["sampledValue"]] == ["Energy.Active.Import.Register"] for d in data)
        assert all(v["context"] == "Sample.Clock" for d in data for v in d["sampledValue"])
    finally:
        rig.close()
