# The OCPP charge point's parts that need no central system: CALL checks
# (firmware/ocpp_schema.py), what an incoming frame is answered without the
# loop, the configuration keys on flash, the persisted transaction queue,
# and the connector status mapped from the charger.
# timeout: 60
import gc
import json

import tmpdirs

from firmware import backoff, journal, netup  # noqa: F401 - the firmware has these anyway: not counted

gc.collect()
_before = gc.mem_alloc()
from firmware import ocpp, ocpp_keys, ocpp_status, ocpp_txq  # noqa: E402
from firmware import ocpp_schema as sch  # noqa: E402

gc.collect()
OCPP_IMPORT_BYTES = gc.mem_alloc() - _before


def test_heap_of_the_ocpp_client_after_import_is_printed():
    print("heap after importing firmware.ocpp with firmware.ws and firmware.ocpp_schema (from source): %d bytes" % OCPP_IMPORT_BYTES)
    assert OCPP_IMPORT_BYTES > 0


def test_heap_of_a_charge_point_object_is_printed():
    # The client as it runs: configuration keys, queue, list and cache (empty),
    # profiles, reservation, the state of its link (no connection: its buffer
    # is firmware/ws.py's, 8 KB at most while a message is read).
    d = tmpdirs.make("ocpp-heap")
    try:
        gc.collect()
        before = gc.mem_alloc()
        cp = _cp(d)
        gc.collect()
        n = gc.mem_alloc() - before
        print("heap of an Ocpp charge point object (keys, empty queue, list, cache, profiles): %d bytes" % n)
        assert n > 0 and cp.keys.values
    finally:
        tmpdirs.remove(d)


def test_valid_calls_pass():
    for action, payload in (
        ("RemoteStartTransaction", {"idTag": "ABC", "connectorId": 1}),
        ("RemoteStopTransaction", {"transactionId": 5}),
        ("Reset", {"type": "Soft"}),
        ("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}),
        ("GetConfiguration", {}),
        ("GetConfiguration", {"key": ["HeartbeatInterval"]}),
        ("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "30"}),
        ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
        ("UnlockConnector", {"connectorId": 1}),
        ("ClearCache", {}),
        ("DataTransfer", {"vendorId": "x", "messageId": "m", "data": "d"}),
    ):
        assert sch.check(action, payload) is None, (action, payload)


def test_each_violation_gets_its_ocpp_error_code():
    cases = (
        ("Unknown", {}, "NotImplemented"),
        ("SetChargingProfile", {}, "OccurenceConstraintViolation"),
        ("InstallCertificate", {}, "NotSupported"),
        ("ReserveNow", {}, "OccurenceConstraintViolation"),
        ("CancelReservation", {"reservationId": "1"}, "TypeConstraintViolation"),
        ("ReserveNow", {"connectorId": -1, "expiryDate": "2030-01-01T00:00:00Z", "idTag": "A", "reservationId": 1}, "PropertyConstraintViolation"),
        ("ReserveNow", {"connectorId": 1, "expiryDate": "2030-01-01T00:00:00Z", "idTag": "A" * 21, "reservationId": 1}, "TypeConstraintViolation"),
        ("Reset", [], "FormationViolation"),
        ("Reset", {"type": "Soft", "x": 1}, "FormationViolation"),
        ("Reset", {}, "OccurenceConstraintViolation"),
        ("Reset", {"type": 1}, "TypeConstraintViolation"),
        ("Reset", {"type": "Never"}, "PropertyConstraintViolation"),
        ("RemoteStartTransaction", {"idTag": "X" * 21}, "TypeConstraintViolation"),
        ("RemoteStartTransaction", {"idTag": "X", "connectorId": 0}, "PropertyConstraintViolation"),
        ("RemoteStartTransaction", {"idTag": "X", "connectorId": 1.5}, "TypeConstraintViolation"),
        ("RemoteStartTransaction", {"idTag": "X", "chargingProfile": 3}, "TypeConstraintViolation"),
        ("RemoteStopTransaction", {"transactionId": True}, "TypeConstraintViolation"),
        ("GetConfiguration", {"key": "HeartbeatInterval"}, "TypeConstraintViolation"),
        ("GetConfiguration", {"key": ["K" * 51]}, "TypeConstraintViolation"),
        ("ChangeConfiguration", {"key": "K", "value": "v" * 501}, "TypeConstraintViolation"),
    )
    for action, payload, code in cases:
        got = sch.check(action, payload)
        assert got is not None and got[0] == code, (action, payload, got)


class _WS:
    def __init__(self):
        self.sent = []

    def send(self, text):
        self.sent.append(json.loads(text))


class _Net:
    def ticks_ms(self):
        return 0

    def ticks_diff(self, a, b):
        return a - b


def _cp(d):
    cfg = {"ocpp_url": "ws://127.0.0.1:9/ocpp/CP7", "ocpp_password": "", "ocpp_ca": "", "ocpp_free_tag": "FREE"}
    cp = ocpp.Ocpp(cfg, _Net(), d)
    cp._ws = _WS()
    return cp


def test_malformed_frames_are_answered_in_the_link_and_never_reach_the_loop():
    d = tmpdirs.make("ocpp")
    try:
        cp = _cp(d)
        frames = (
            ("{oops", "-1", "FormationViolation"),
            ("42", "-1", "FormationViolation"),
            ('[2, "a"]', "a", "FormationViolation"),
            ('[9, "b", "Reset", {}]', "b", "FormationViolation"),
            ('[2, "c", 7, {}]', "c", "FormationViolation"),
            ('[2, "%s", "Reset", {"type": "Soft"}]' % ("u" * 37), "-1", "FormationViolation"),
            ('[2, "e", "Reset", {"type": "Hardest"}]', "e", "PropertyConstraintViolation"),
            ('[2, "f", "Whatever", {}]', "f", "NotImplemented"),
        )
        for text, uid, code in frames:
            cp._incoming(text)
            m = cp._ws.sent[-1]
            assert m[0] == 4 and m[1] == uid and m[2] == code, (text, m)
            assert isinstance(m[3], str) and m[4] == {}
        assert cp._commands == []
        cp._incoming('[2, "g", "Reset", {"type": "Soft"}]')  # valid and for the loop
        assert cp._commands == [("g", "Reset", {"type": "Soft"})]
        n = len(cp._ws.sent)
        cp._incoming('[3, "nobody", {}]')  # an answer to no call of ours
        assert len(cp._ws.sent) == n
    finally:
        tmpdirs.remove(d)


def test_configuration_keys_are_checked_and_kept_on_flash():
    d = tmpdirs.make("ocpp")
    try:
        k = ocpp_keys.Keys(d + "/keys.json")
        assert k.change("MeterValueSampleInterval", "10") == "Accepted"
        assert k.change("MeterValueSampleInterval", "ten") == "Rejected"
        assert k.change("NumberOfConnectors", "2") == "Rejected"  # read-only
        assert k.change("Nope", "1") == "NotSupported"
        assert k.change("MeterValuesSampledData", "Current.Import, Energy.Active.Import.Register") == "Accepted"
        assert k.change("MeterValuesSampledData", "Voltage") == "Rejected"
        assert k.change("LocalPreAuthorize", "TRUE") == "Accepted"
        k2 = ocpp_keys.Keys(d + "/keys.json")
        assert k2.values["MeterValueSampleInterval"] == "10"
        assert k2.values["MeterValuesSampledData"] == "Current.Import,Energy.Active.Import.Register"
        assert k2.values["LocalPreAuthorize"] == "true"
        with open(d + "/keys.json", "w") as f:
            f.write('{"MeterValueSampleInterval": "x", "NumberOfConnectors": "9", "HeartbeatInterval": ')
        k3 = ocpp_keys.Keys(d + "/keys.json")  # damaged: the defaults
        assert k3.values["MeterValueSampleInterval"] == "60" and k3.values["NumberOfConnectors"] == "1"
        out = k3.listing(["HeartbeatInterval", "Nope", "Nope"])
        assert out == {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}], "unknownKey": ["Nope"]}
    finally:
        tmpdirs.remove(d)


class _Lock:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _mv(wh):
    return {"connectorId": 1, "meterValue": [{"timestamp": "t", "sampledValue": [{"value": str(wh)}]}]}


def test_transaction_queue_replays_in_order_after_a_restart_and_survives_a_torn_line():
    d = tmpdirs.make("ocpp")
    try:
        path = d + "/q"
        lk = _Lock()
        q = ocpp_txq.TxQueue(path)
        q.push("StartTransaction", "s1", {"connectorId": 1, "idTag": "T", "meterStart": 10, "timestamp": "t"}, lk)
        q.push("MeterValues", "s1", _mv(15), lk)
        q.done(1, 777, lk)  # the central system gave transactionId 777
        q.push("MeterValues", "s1", _mv(20), lk)
        q.push("StopTransaction", "s1", {"idTag": "T", "meterStop": 20, "timestamp": "t", "reason": "Local"}, lk)
        with open(path, "a") as f:
            f.write('["q", 5, "MeterVal')  # a power cut in the middle of a line
        q2 = ocpp_txq.TxQueue(path)
        assert [(e[0], e[1]) for e in q2.entries] == [(2, "MeterValues"), (3, "MeterValues"), (4, "StopTransaction")]
        assert q2.txids == {"s1": 777} and q2.open == {} and q2.seq == 4
        for seq in (2, 3, 4):
            q2.done(seq, None, lk)
        q3 = ocpp_txq.TxQueue(path)
        assert q3.entries == [] and q3.txids == {}
    finally:
        tmpdirs.remove(d)


def test_open_transaction_after_a_power_cut_gets_a_power_loss_stop_never_below_a_reported_register():
    d = tmpdirs.make("ocpp")
    try:
        cp = _cp(d)
        cp.txq.push("StartTransaction", "s9", {"connectorId": 1, "idTag": "T", "meterStart": 100, "timestamp": "t"}, cp._lock)
        cp.txq.push("MeterValues", "s9", _mv(140), cp._lock)

        class J:
            def pending(self):
                return [{"id": "s9", "meter_stop_mwh": 120500, "end": None}]  # the journal's last checkpoint

        cp2 = _cp(d)
        cp2.recover(J(), ["s9"])
        stop = cp2.txq.entries[-1]
        assert stop[1] == "StopTransaction" and stop[3]["reason"] == "PowerLoss" and stop[3]["meterStop"] == 140
        assert cp2.txq.open == {}
    finally:
        tmpdirs.remove(d)


class _Ch:
    def __init__(self, **kw):
        self.fault = None
        self.state = "A1"
        self.session_active = False
        self.contactor_on = False
        self.duty_pm = 0
        self.enabled = True
        self.inhibit = False
        for k in kw:
            setattr(self, k, kw[k])


def test_connector_status_follows_the_charger():
    cs = ocpp_status.ConnectorStatus()
    st = cs.of
    assert st(_Ch()) == ("Available", "NoError", None)
    assert st(_Ch(state="B1")) == ("Preparing", "NoError", None)
    assert st(_Ch(state="C2", session_active=True, contactor_on=True, duty_pm=266)) == ("Charging", "NoError", None)
    assert st(_Ch(state="B2", session_active=True, duty_pm=266)) == ("SuspendedEV", "NoError", None)
    assert st(_Ch(state="C1", session_active=True)) == ("SuspendedEVSE", "NoError", None)
    assert st(_Ch(enabled=False)) == ("Unavailable", "NoError", None)
    assert st(_Ch(inhibit=True, state="B1")) == ("Unavailable", "NoError", None)
    assert st(_Ch(fault="rcd_trip", state="F")) == ("Faulted", "GroundFailure", "rcd_trip")
    assert st(_Ch(fault="weld", state="F")) == ("Faulted", "PowerSwitchFailure", "weld")
    assert st(_Ch(fault="something_new", state="F")) == ("Faulted", "OtherError", "something_new")
    cs.finishing = True  # a transaction ended with the car still plugged in
    assert st(_Ch(state="B1")) == ("Finishing", "NoError", None)
    assert st(_Ch()) == ("Available", "NoError", None)
    assert st(_Ch(state="B1")) == ("Preparing", "NoError", None)  # unplugged in between: a new car


def test_central_system_time_is_read_as_utc_seconds():
    assert ocpp.parse_time("2026-12-01T19:55:07Z") == 1796154907
    assert ocpp.parse_time("2026-12-01T19:55:07.123+00:00") == 1796154907
    assert ocpp.parse_time("2000-03-01T00:00:00Z") == 951868800
    assert ocpp.parse_time("2024-02-29T23:59:59Z") == 1709251199
    assert ocpp.parse_time("2099-12-31T12:00:00Z") == 4102401600
    for bad in ("2026-12-01T19:55:07+01:00", "2026-12-01 19:55:07Z", "yesterday", "", None, 5, "2026-13-01T00:00:00Z"):
        assert ocpp.parse_time(bad) is None, bad
    assert ocpp.iso(1796154907) == "2026-12-01T19:55:07Z"


def test_a_queue_whose_flash_write_fails_refuses_and_counts_instead_of_raising():
    q = ocpp_txq.TxQueue("/nonexistent-dir-for-ocpp/q")
    ok = q.push("StartTransaction", "s1", {"connectorId": 1, "idTag": "T", "meterStart": 1, "timestamp": "t"}, _Lock())
    assert ok is False and q.entries == [] and q.flash_errors == 1 and q.dropped == 1


def test_a_queue_file_of_garbage_loads_empty_and_is_rewritten():
    d = tmpdirs.make("ocpp")
    try:
        with open(d + "/q", "wb") as f:
            f.write(b'["q", 1, "StartTransaction", "s1", {"connectorId": 1, "idTag": "T", "meterStart": 1, "timestamp": "t"}]\n\xff\xfe\x00garbage\n[1, 2]\n')
        q = ocpp_txq.TxQueue(d + "/q")
        assert [e[1] for e in q.entries] == ["StartTransaction"]
        assert [e[1] for e in ocpp_txq.TxQueue(d + "/q").entries] == ["StartTransaction"]
    finally:
        tmpdirs.remove(d)


class _ClockNet(_Net):
    def __init__(self):
        self.t = 0

    def ticks_ms(self):
        return self.t


class _PingWS(_WS):
    def __init__(self):
        super().__init__()
        self.frames = 0
        self.pings = 0

    def recv(self, timeout_ms):
        return None

    def ping(self):
        self.pings += 1


def test_websocket_ping_interval_pings_an_idle_central_system_and_drops_a_dead_one():
    d = tmpdirs.make("ocpp")
    try:
        cp = _cp(d)
        net = _ClockNet()
        cp._net = net
        w = _PingWS()
        cp._ws = w
        cp._rx_frames, cp._rx_t, cp._pinged = 0, 0, False
        cp.accepted = True
        cp._hb_ms = 10**9
        cp._last_tx = 0
        cp._service()
        assert w.pings == 0  # WebSocketPingInterval 0 (the default): never
        cp.keys.values["WebSocketPingInterval"] = "30"
        net.t = 29999
        cp._service()
        assert w.pings == 0
        net.t = 30000
        cp._service()
        cp._service()
        assert w.pings == 1
        w.frames += 1  # the pong (or anything) came
        net.t = 35000
        cp._service()
        net.t = 64999
        cp._service()
        assert w.pings == 1
        net.t = 65000
        cp._service()
        assert w.pings == 2
        net.t = 65000 + ocpp.IO_TIMEOUT_MS
        try:
            cp._service()
            raise AssertionError("a silent central system was not dropped")
        except OSError:
            pass
    finally:
        tmpdirs.remove(d)


def test_reconnect_spread_of_3000_charge_points_after_a_central_system_outage_is_printed():
    # Every charge point lost the central system at t=0; it is back at 120 s.
    # Each retries after Backoff delays (firmware/backoff.py, seeded from its id
    # and a random word as Ocpp does); the first attempt at or after 120 s gets in.
    import os

    from firmware.backoff import Backoff, seed_for

    back_ms = 120000
    per_s = {}
    last = 0
    for i in range(3000):
        b = Backoff(seed_for("CP%04d" % i, int.from_bytes(os.urandom(4), "little")))
        t = 0
        while t < back_ms:
            t += b.next_ms()
        s = (t - back_ms) // 1000
        per_s[s] = per_s.get(s, 0) + 1
        last = max(last, t - back_ms)
    peak = max(per_s.values())
    first10 = sum(per_s.get(s, 0) for s in range(10))
    print("3000 charge points, central system back after 120 s: all in within %d s; peak %d connects in one second; %d in the first 10 s" % (last // 1000 + 1, peak, first10))
    assert sum(per_s.values()) == 3000


def _profile(**change):
    p = {
        "chargingProfileId": 1,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.5}, {"startPeriod": 60, "limit": 16}]},
    }
    for k in change:
        if change[k] is None:
            del p[k]
        else:
            p[k] = change[k]
    return {"idTag": "T", "chargingProfile": p}


def test_a_charging_profile_in_a_remote_start_is_checked_to_its_schema():
    assert sch.check("RemoteStartTransaction", _profile()) is None
    assert sch.check("RemoteStartTransaction", _profile(validFrom="2026-12-01T00:00:00Z", recurrencyKind="Daily")) is None
    bad_schedule = {"chargingRateUnit": "kW", "chargingSchedulePeriod": []}
    cases = (
        (_profile(chargingSchedule=None), "OccurenceConstraintViolation"),
        (_profile(chargingProfilePurpose="Mine"), "PropertyConstraintViolation"),
        (_profile(stackLevel=-1), "PropertyConstraintViolation"),
        (_profile(chargingProfileId="1"), "TypeConstraintViolation"),
        (_profile(validTo="tomorrow"), "PropertyConstraintViolation"),
        (_profile(chargingSchedule=bad_schedule), "PropertyConstraintViolation"),
        (_profile(chargingSchedule={"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": "16"}]}), "TypeConstraintViolation"),
        (_profile(chargingSchedule={"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0}]}), "OccurenceConstraintViolation"),
        (_profile(chargingSchedule={"chargingRateUnit": "A", "chargingSchedulePeriod": [5]}), "TypeConstraintViolation"),
        (_profile(chargingSchedule={"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6, "x": 1}]}), "FormationViolation"),
        (_profile(extra=True), "FormationViolation"),
    )
    for payload, code in cases:
        got = sch.check("RemoteStartTransaction", payload)
        assert got is not None and got[0] == code, (payload, got)


def test_the_loops_side_allocates_nothing_while_nothing_changes():
    d = tmpdirs.make("ocpp")
    try:
        cp = _cp(d)

        class Hal:
            def ticks_ms(self):
                return 1000

            def ticks_diff(self, a, b):
                return a - b

            def wall_time(self):
                return None

        class Fw:
            pass

        fw = Fw()
        fw.charger = _Ch(state="C2", session_active=True, contactor_on=True, duty_pm=266, limits=Fw())
        fw.hal = Hal()
        fw.link = None
        fw.energy = Fw()
        fw.energy.phases = 3
        cp.service(fw)  # the first call posts the statuses
        cp._local, cp._mv_started, cp._mv_t = "s1", True, 1000  # a transaction, its next sample not due
        gc.collect()
        before = gc.mem_alloc()
        for _ in range(100):
            cp.service(fw)
        assert gc.mem_alloc() - before == 0
    finally:
        tmpdirs.remove(d)
