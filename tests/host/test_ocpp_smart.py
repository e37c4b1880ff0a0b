"""End to end over OCPP 1.6J SmartCharging: the firmware on the simulated
board (--realtime) against the `ocpp` package's central system (every
message validated against the OCPP 1.6 JSON schemas, see test_ocpp_e2e.py).

A TxDefaultProfile's schedule changes the offer on time (16 A, 8 A, then
0 A: SuspendedEVSE), a ChargePointMaxProfile caps it, GetCompositeSchedule
answers what the charger does, ClearChargingProfile gives the offer back,
a TxProfile binds to its transaction only, and the offer never goes above
the 20 A cable. Times are compared in simulated time (the trace records'
`t`; the firmware's wall clock runs on it), never in how fast the machine is.
"""

import json
import os

import pytest

pytest.importorskip("ocpp")

from ocpp.v16 import call  # noqa: E402
from test_ocpp_e2e import CentralSystem, Firmware  # noqa: E402

CABLE_A = 20  # tests/scenarios/ocpp/smart.json: PP 680 Ohm


def _profile(pid, purpose, periods, stack=0, txid=None, kind="Absolute", unit="A"):
    p = {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": {
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": [{"startPeriod": s, "limit": a} for s, a in periods],
        },
    }
    if txid is not None:
        p["transactionId"] = txid
    return p


def _offer_seen(fw, pred, what, after=None, timeout_s=60):
    """The first trace record (after the record `after`) whose offer passes pred."""
    before = set()
    if after is not None:
        with fw.cond:
            for _, r in fw.lines:
                before.add(id(r))
                if r is after:
                    break
    return fw.wait(lambda r: id(r) not in before and "offer_a" in r and pred(r["offer_a"]), timeout_s, what)[1]


def _periods(r):
    return [(p["start_period"], float(p["limit"])) for p in r.charging_schedule["charging_schedule_period"]]


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path)


def test_profiles_change_the_offer_on_time_capped_and_cleared(data_dir):
    cs = CentralSystem()
    fw = None
    try:
        fw = Firmware("smart.json", cs.url, data_dir)
        cs.wait_call(
            "StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Charging"
        )
        _, start = cs.wait_call("StartTransaction")
        first = _offer_seen(fw, lambda a: a == CABLE_A, "the cable's 20 A")
        # Refused: a TxProfile for another transaction, any profile on connector 2, a maximum on connector 1.
        assert (
            cs.send(
                call.SetChargingProfile(
                    connector_id=1, cs_charging_profiles=_profile(9, "TxProfile", [(0, 6)], txid=999)
                )
            ).status
            == "Rejected"
        )
        assert (
            cs.send(
                call.SetChargingProfile(connector_id=2, cs_charging_profiles=_profile(9, "TxDefaultProfile", [(0, 6)]))
            ).status
            == "Rejected"
        )
        assert (
            cs.send(
                call.SetChargingProfile(
                    connector_id=1, cs_charging_profiles=_profile(9, "ChargePointMaxProfile", [(0, 6)])
                )
            ).status
            == "Rejected"
        )

        # The default schedule: 16 A, 8 A after 20 s, 0 A after 30 s (from when it is set: Absolute without startSchedule).
        r = cs.send(
            call.SetChargingProfile(
                connector_id=1, cs_charging_profiles=_profile(1, "TxDefaultProfile", [(0, 16), (20, 8), (30, 0)])
            )
        )
        assert r.status == "Accepted"
        r16 = _offer_seen(fw, lambda a: a == 16, "16 A", after=first)
        # A charge point maximum of 12 A caps it; the composite schedule says so.
        r = cs.send(
            call.SetChargingProfile(
                connector_id=0, cs_charging_profiles=_profile(2, "ChargePointMaxProfile", [(0, 12)])
            )
        )
        assert r.status == "Accepted"
        r12 = _offer_seen(fw, lambda a: a == 12, "12 A", after=r16)
        comp = cs.send(call.GetCompositeSchedule(connector_id=1, duration=120))
        assert comp.status == "Accepted" and comp.connector_id == 1
        got = _periods(comp)
        assert [a for _, a in got] == [12.0, 8.0, 0.0]
        assert got[0][0] == 0 and 0 < got[1][0] <= 20 and got[2][0] - got[1][0] == 10
        assert comp.charging_schedule["charging_rate_unit"] == "A"
        comp0 = cs.send(call.GetCompositeSchedule(connector_id=0, duration=120, charging_rate_unit="W"))
        assert _periods(comp0) == [(0, 12 * 230 * 3.0)]  # the charge point's maximum alone, in W (230 V, 3 phases)
        assert cs.send(call.GetCompositeSchedule(connector_id=2, duration=60)).status == "Rejected"
        r8 = _offer_seen(fw, lambda a: a == 8, "8 A", after=r12)
        r0 = _offer_seen(fw, lambda a: a == 0, "0 A", after=r8)
        # On time, in simulated time: 20 s and 30 s after the 16 A (the profile's start, to the wall clock's second).
        assert 19.0 - 0.2 <= r8["t"] - r16["t"] <= 20.0 + 1.2, (r16["t"], r8["t"])
        assert 29.0 - 0.2 <= r0["t"] - r16["t"] <= 30.0 + 1.2, (r16["t"], r0["t"])
        # Below 6 A: paused with a steady pilot, the transaction goes on.
        cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1 and p["status"] == "SuspendedEVSE")
        assert r0["duty"] is None and r0["session"] is not None
        assert cs.calls("StopTransaction") == []

        # Cleared: the cable decides again.
        n = len(_st(cs))
        assert cs.send(call.ClearChargingProfile(id=77)).status == "Unknown"
        assert cs.send(call.ClearChargingProfile(charging_profile_purpose="TxDefaultProfile")).status == "Accepted"
        r12b = _offer_seen(fw, lambda a: a == 12, "12 A again (the maximum)", after=r0)
        assert cs.send(call.ClearChargingProfile(connector_id=0)).status == "Accepted"
        back = _offer_seen(fw, lambda a: a == CABLE_A, "20 A again", after=r12b)
        cs.wait(lambda d, m: "Charging" in _st(cs)[n:], 20, "Charging again")

        # A TxProfile of this transaction (its id from the StartTransaction's answer) overrides the default.
        txid = 101
        assert start[3]["connectorId"] == 1
        assert (
            cs.send(
                call.SetChargingProfile(connector_id=1, cs_charging_profiles=_profile(5, "TxDefaultProfile", [(0, 14)]))
            ).status
            == "Accepted"
        )
        r14 = _offer_seen(fw, lambda a: a == 14, "14 A (default)", after=back)
        r = cs.send(
            call.SetChargingProfile(
                connector_id=1, cs_charging_profiles=_profile(6, "TxProfile", [(0, 6900)], txid=txid, unit="W")
            )
        )
        assert r.status == "Accepted"
        r_w = _offer_seen(fw, lambda a: a != 14, "the TxProfile's W limit", after=r14)
        assert r_w["offer_a"] == 10  # 6900 W on three phases of 230 V
        assert cs.send(call.RemoteStopTransaction(transaction_id=txid)).status == "Accepted"
        cs.wait_call("StopTransaction")
        comp = cs.send(call.GetCompositeSchedule(connector_id=1, duration=60))
        assert _periods(comp) == [(0, 14.0)]  # the TxProfile went with its transaction, the default stays
        recs = fw.records()
        assert max(r["offer_a"] for r in recs) <= CABLE_A
    finally:
        if fw is not None:
            fw.kill()
        cs.close()
    # On flash: the TxDefaultProfile only.
    with open(os.path.join(data_dir, "ocpp_profiles.json")) as f:
        assert [p[0] for p in json.load(f)] == [5]


def _st(cs):
    return [p["status"] for _, _, _, p in cs.calls("StatusNotification") if p["connectorId"] == 1]


def test_profiles_survive_a_reboot_and_are_listed_in_the_configuration(data_dir):
    cs = CentralSystem()
    try:
        fw = Firmware("smart.json", cs.url, data_dir)
        cs.wait_call(
            "StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Charging"
        )
        r = cs.send(
            call.GetConfiguration(
                key=[
                    "ChargeProfileMaxStackLevel",
                    "ChargingScheduleAllowedChargingRateUnit",
                    "ChargingScheduleMaxPeriods",
                    "MaxChargingProfilesInstalled",
                    "SupportedFeatureProfiles",
                ]
            )
        )
        got = {k["key"]: (k["value"], k["readonly"]) for k in r.configuration_key}
        assert got == {
            "ChargeProfileMaxStackLevel": ("8", True),
            "ChargingScheduleAllowedChargingRateUnit": ("Current,Power", True),
            "ChargingScheduleMaxPeriods": ("24", True),
            "MaxChargingProfilesInstalled": ("8", True),
            "SupportedFeatureProfiles": ("Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger,SmartCharging,Reservation", True),
        }
        assert cs.send(call.ChangeConfiguration(key="MaxChargingProfilesInstalled", value="20")).status == "Rejected"
        r = cs.send(
            call.SetChargingProfile(
                connector_id=0, cs_charging_profiles=_profile(3, "ChargePointMaxProfile", [(0, 10)])
            )
        )
        assert r.status == "Accepted"
        _offer_seen(fw, lambda a: a == 10, "10 A")
        fw.kill()  # a power cut
        fw = Firmware("smart.json", cs.url, data_dir)
        cs.wait_call(
            "StatusNotification",
            timeout_s=30,
            where=lambda p: (
                p["connectorId"] == 1 and p["status"] == "Charging" and len(cs.calls("StartTransaction")) == 2
            ),
        )
        rec = _offer_seen(fw, lambda a: a > 0, "an offer after the reboot")
        assert rec["offer_a"] == 10  # the maximum held from the first offer on
        fw.kill()
    finally:
        cs.close()


def test_a_remote_starts_tx_profile_limits_the_transaction_it_starts(data_dir):
    cs = CentralSystem()
    fw = None
    try:
        fw = Firmware("remote.json", cs.url, data_dir)  # max_current_a 16, authorization required
        cs.wait_call(
            "StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Preparing"
        )
        r = cs.send(
            call.RemoteStartTransaction(id_tag="REMOTE1", charging_profile=_profile(7, "TxDefaultProfile", [(0, 10)]))
        )
        assert r.status == "Rejected"  # only a TxProfile goes with a remote start
        r = cs.send(call.RemoteStartTransaction(id_tag="REMOTE1", charging_profile=_profile(7, "TxProfile", [(0, 10)])))
        assert r.status == "Accepted"
        cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1 and p["status"] == "Charging")
        rec = _offer_seen(fw, lambda a: a > 0, "the first offer")
        assert rec["offer_a"] == 10  # from the first offer on, not the configured 16 A
        comp = cs.send(call.GetCompositeSchedule(connector_id=1, duration=30))
        assert _periods(comp) == [(0, 10.0)]
        assert max(r["offer_a"] for r in fw.records()) == 10
    finally:
        if fw is not None:
            fw.kill()
        cs.close()
