# OCPP Reservation (firmware/ocpp_reserve.py, firmware/ocpp.py): every
# ReserveNow answer, CancelReservation, who the reservation admits, and on
# the simulated board: a reserved connector shows Reserved, starts no session
# for a car plugged in (free charging included) nor for another card, and
# its own card's transaction carries the reservationId and ends it; expiry.
# timeout: 120
import tmpdirs
from test_ocpp import _Ch

from firmware import ocpp_schema
from firmware.app import Firmware
from firmware.ocpp_reserve import Reservation
from firmware.ocpp_time import iso
from sim.board import SimBoard

NOW = 1_800_000_000


def _req(rid=1, connector=1, expiry=NOW + 600, tag="RES1", parent=None):
    p = {"connectorId": connector, "expiryDate": iso(expiry), "idTag": tag, "reservationId": rid}
    if parent is not None:
        p["parentIdTag"] = parent
    assert ocpp_schema.check("ReserveNow", p) is None
    return p


def test_reserve_now_answers_each_case():
    r = Reservation()
    assert r.reserve(_req(connector=2), _Ch(), NOW, True) == "Rejected"  # no such connector
    assert r.reserve(_req(connector=0), _Ch(), NOW, False) == "Rejected"  # ReserveConnectorZeroSupported false
    assert r.reserve(_req(expiry=NOW - 1), _Ch(), NOW, True) == "Rejected"  # already past
    assert r.reserve(_req(), _Ch(), None, True) == "Rejected"  # no wall clock to end it by
    p = _req()
    p["expiryDate"] = "2027-01-15T08:00:00+02:00"
    assert r.reserve(p, _Ch(), NOW, True) == "Rejected"  # not UTC
    assert r.reserve(_req(), _Ch(fault="rcd_trip", state="F"), NOW, True) == "Faulted"
    assert r.reserve(_req(), _Ch(enabled=False), NOW, True) == "Unavailable"
    assert r.reserve(_req(), _Ch(inhibit=True), NOW, True) == "Unavailable"
    assert r.reserve(_req(), _Ch(state="B1"), NOW, True) == "Occupied"  # a car plugged in
    assert r.reserve(_req(), _Ch(state="C2", session_active=True), NOW, True) == "Occupied"
    assert not r.active()
    assert r.reserve(_req(connector=0, tag="A"), _Ch(), NOW, True) == "Accepted"
    assert r.active() and r.id == 1 and r.tag == "A"
    assert r.reserve(_req(rid=2, tag="B"), _Ch(), NOW, True) == "Occupied"  # another reservation holds it
    assert r.reserve(_req(rid=1, tag="C", parent="G"), _Ch(), NOW, True) == "Accepted"  # the same id replaces it
    assert r.tag == "C" and r.parent == "G" and r.connector == 1
    assert r.admits("C", None) and r.admits("X", "G") and not r.admits("X", None) and not r.admits("X", "H")
    assert not r.expired(NOW + 599) and r.expired(NOW + 600) and not r.expired(None)
    assert r.cancel(2) == "Rejected"
    assert r.cancel(1) == "Accepted" and not r.active()
    assert r.cancel(1) == "Rejected"


class _Rig:
    """The firmware on the simulated board with OCPP configured but its
    thread not started: CALLs go in as the link thread hands them over."""

    def __init__(self, **cfg):
        self.d = tmpdirs.make("ocpp-res")
        self.sim = SimBoard(data_dir=self.d)
        self.sim.set_wall_time(NOW)
        c = {"ocpp_url": "ws://127.0.0.1:9/ocpp/CP1", "max_current_a": 16}
        c.update(cfg)
        self.fw = Firmware(self.sim, c)
        self.cp = self.fw.ocpp
        self.cp.accepted = self.cp.connected = True  # online: cards go to the central system
        self.uid = 0

    def run(self, ms):
        for _ in range(ms // 10):
            self.fw.tick()
            self.sim.wait_tick(10)

    def call(self, action, payload):
        self.uid += 1
        uid = "u%d" % self.uid
        assert ocpp_schema.check(action, payload) is None
        self.cp._commands.append((uid, action, payload))
        self.run(200)
        for u, answer in self.cp._results:
            if u == uid:
                return answer
        raise AssertionError("no answer to " + action)

    def authorize_answer(self, tag, info):
        """The central system's Authorize.conf for a card presented."""
        ok, err = self.fw.command("authorize", tag.encode())
        self.cp._calls.clear()
        self.cp._replies.append(("Authorize", {"idTag": tag}, {"idTagInfo": info}))
        self.run(200)
        return ok, err

    def starts(self):
        return [e for e in self.cp.txq.entries if e[1] == "StartTransaction"]

    def close(self):
        tmpdirs.remove(self.d)


def test_a_reserved_connector_starts_no_free_session_and_refuses_other_cards():
    rig = _Rig(require_auth=False)
    try:
        rig.run(500)
        assert rig.cp._st[0] == "Available"
        assert rig.call("ReserveNow", _req(rid=7, tag="RES1"))["status"] == "Accepted"
        assert rig.cp._st[0] == "Reserved"
        rig.sim.set_ev("C")
        rig.run(5000)
        ch = rig.fw.charger
        assert not ch.session_active and not ch.contactor_on and ch.offer_ma == 0  # free charging waits
        assert rig.cp._st[0] == "Reserved"
        ok, err = rig.fw.command("authorize", b"OTHER")  # no parentIdTag in the reservation: refused at once
        assert not ok and "reserved" in err
        assert rig.call("RemoteStartTransaction", {"idTag": "OTHER"})["status"] == "Rejected"
        rig.run(2000)
        assert not ch.session_active and rig.starts() == []
        rig.authorize_answer("RES1", {"status": "Accepted"})
        rig.run(3000)
        assert ch.session_active and ch.contactor_on
        starts = rig.starts()
        assert len(starts) == 1
        start = starts[0]
        assert start[3]["idTag"] == "RES1" and start[3]["reservationId"] == 7
        assert not rig.cp.reservation.active() and not ch.reserved
        assert rig.cp._st[0] == "Charging"
    finally:
        rig.close()


def test_a_card_of_the_reservations_parent_is_admitted_only_with_that_parent():
    rig = _Rig(require_auth=True)
    try:
        rig.run(500)
        assert rig.call("ReserveNow", _req(rid=3, tag="RES1", parent="FLEET"))["status"] == "Accepted"
        rig.sim.set_ev("C")
        rig.run(2000)
        ch = rig.fw.charger
        rig.authorize_answer("STRANGER", {"status": "Accepted", "parentIdTag": "OTHERS"})
        rig.authorize_answer("LONER", {"status": "Accepted"})
        rig.run(2000)
        assert not ch.session_active
        rig.authorize_answer("DRIVER2", {"status": "Accepted", "parentIdTag": "FLEET"})
        rig.run(3000)
        assert ch.session_active
        starts = rig.starts()
        assert len(starts) == 1
        start = starts[0]
        assert start[3]["idTag"] == "DRIVER2" and start[3]["reservationId"] == 3
        rig.cp.accepted = False  # offline: a parent cannot be checked
        assert rig.call("ReserveNow", _req(rid=4))["status"] == "Occupied"  # a transaction runs
    finally:
        rig.close()


def test_a_reservation_ends_at_its_expiry_or_when_cancelled_and_free_charging_resumes():
    rig = _Rig(require_auth=False)
    try:
        rig.run(500)
        assert rig.call("ReserveNow", _req(rid=1, expiry=NOW + 10))["status"] == "Accepted"
        assert rig.call("CancelReservation", {"reservationId": 2})["status"] == "Rejected"
        assert rig.call("CancelReservation", {"reservationId": 1})["status"] == "Accepted"
        assert rig.cp._st[0] == "Available" and not rig.fw.charger.reserved
        assert rig.call("ReserveNow", _req(rid=2, expiry=NOW + 10))["status"] == "Accepted"
        rig.sim.set_ev("C")
        rig.run(5000)
        assert rig.cp._st[0] == "Reserved" and not rig.fw.charger.session_active
        rig.run(8000)  # past its expiry: the waiting car charges (free charging)
        assert not rig.cp.reservation.active()
        assert rig.fw.charger.session_active
        starts = rig.starts()
        assert len(starts) == 1
        start = starts[0]
        assert "reservationId" not in start[3]
    finally:
        rig.close()


def test_reserve_connector_zero_follows_its_key():
    rig = _Rig()
    try:
        rig.run(300)
        rig.cp.keys.values["ReserveConnectorZeroSupported"] = "false"  # read-only: as a charger without it
        assert rig.call("ReserveNow", _req(connector=0))["status"] == "Rejected"
        rig.cp.keys.values["ReserveConnectorZeroSupported"] = "true"
        assert rig.call("ReserveNow", _req(connector=0))["status"] == "Accepted"
        assert rig.cp._st[0] == "Reserved"
        rig.fw.charger.command("enable", False)
        rig.run(300)
        assert rig.cp._st[0] == "Unavailable"
        assert rig.call("ReserveNow", _req(rid=9))["status"] == "Unavailable"
    finally:
        rig.close()


def test_a_reservation_ends_within_two_seconds_of_its_expiry_though_the_tick_counter_wrapped_meanwhile():
    # The simulated board's ticks start 3.9 s before they wrap: the expiry look's
    # mark, taken at boot, is then more than half the ticks period in the past.
    rig = _Rig(require_auth=False)
    try:
        rig.run(500)
        assert rig.call("ReserveNow", _req(rid=5, expiry=NOW + 3))["status"] == "Accepted"
        while rig.sim.wall_time() < NOW + 5:
            rig.run(100)
        assert not rig.cp.reservation.active()
    finally:
        rig.close()
