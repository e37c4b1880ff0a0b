# The app's wiring: configuration the board cannot honour, files it keeps.
import tmpdirs

from firmware.app import Firmware
from sim.board import SimBoard


def fresh_dir(name):
    return tmpdirs.make("evse-app-" + name)


def test_more_phases_than_the_board_measures_is_a_config_error_not_a_boot_loop():
    sim = SimBoard(phases=1, data_dir=fresh_dir("phases"))
    fw = Firmware(sim, {"phases": 3})
    assert fw.cfg["phases"] == 1
    assert any("phases 3" in e for e in fw.config_errors)


def test_a_session_is_journaled_with_its_metered_energy():
    sim = SimBoard(data_dir=fresh_dir("session"))
    fw = Firmware(sim, {"max_current_a": 16})
    seen = []
    fw.on_event = seen.append
    sim.set_ev("C")
    for _ in range(60 * 100):  # one simulated minute
        fw.tick()
        sim.wait_tick(10)
    assert fw.charger.state == "C2" and fw.session_id is not None
    sim.set_ev("A")
    for _ in range(100):
        fw.tick()
        sim.wait_tick(10)
    rec = [e["record"] for e in seen if e.get("event") == "session"][0]
    assert rec["reason"] == "ev_unplugged"
    truth_mwh = sim.truth_energy_wh * 1000
    assert abs(rec["energy_mwh"] - truth_mwh) <= truth_mwh * 0.005, (rec["energy_mwh"], truth_mwh)
    assert [r["id"] for r in fw.journal.pending()] == [rec["id"]]


def test_ctrl_c_leaves_the_board_safe_and_the_watchdog_a_maintenance_window():
    from firmware import app

    sim = SimBoard(data_dir=fresh_dir("ctrlc"))
    fw = Firmware(sim, {})
    sim.set_ev("C")
    seen = {}

    def on_tick(s):
        if fw.charger.contactor_on:
            seen["charging"] = True
        if s.now_ms >= 5000:
            raise KeyboardInterrupt  # mpremote / the deploy tool pressed Ctrl-C

    sim.on_tick = on_tick
    try:
        fw.run()
        raise AssertionError("run() returned")
    except KeyboardInterrupt:
        pass
    assert seen.get("charging")
    assert sim.contactor_log[-1][1] is False  # the last command opened it
    assert not sim._pwm and sim._level == 1  # pilot steady +12 V (x1)
    assert sim._wdt_ms == app.MAINTENANCE_WDT_MS  # not 2 s: the REPL gets its window


def test_boot_event_reports_reset_cause_version_recovered_sessions_and_the_slot():
    sim = SimBoard(data_dir=fresh_dir("boot"))
    sim.set_reset_cause("watchdog")
    fw = Firmware(sim, {})
    seen = []
    fw.on_event = seen.append
    fw.start()
    boot = [e for e in seen if e["event"] == "boot"][0]
    assert boot["reset_cause"] == "watchdog" and boot["version"] and boot["recovered"] == []
    assert set(boot["slot"]) == {"slot", "version", "good", "tries", "rollback"}


def test_a_journal_full_of_unacknowledged_sessions_refuses_new_sessions_and_says_so():
    d = fresh_dir("full")
    sim = SimBoard(data_dir=d)
    fw = Firmware(sim, {})
    seen = []
    fw.on_event = seen.append
    n = 0
    while not fw.journal.full():  # sessions nobody acknowledges (no broker)
        sim.set_ev("C")
        for _ in range(100):
            fw.tick()
            sim.wait_tick(10)
        sim.set_ev("A")
        for _ in range(20):
            fw.tick()
            sim.wait_tick(10)
        n += 1
        assert n < 200
    assert [e for e in seen if e["event"] == "journal_full"]
    assert fw.status()["blocked"] == "journal_full"
    sim.set_ev("C")
    for _ in range(300):
        fw.tick()
        sim.wait_tick(10)
    assert fw.charger.duty_pm == 0 and not fw.charger.contactor_on and fw.session_id is None
    for rec in fw.journal.pending(limit=4):  # the broker acknowledges some
        fw.journal.ack(rec["id"])
    fw._check_journal()
    assert [e for e in seen if e["event"] == "journal_ok"]
    for _ in range(300):
        fw.tick()
        sim.wait_tick(10)
    assert fw.charger.contactor_on and fw.session_id is not None


def test_the_default_device_id_comes_from_the_chips_unique_id():
    # Two chargers left at a fixed default id would share topics, session ids
    # and one Home Assistant device.
    fw = Firmware(SimBoard(unique_id="a0b1c2d3e4f5", data_dir=fresh_dir("uid")), {})
    assert fw.cfg["id"] == "evse-a0b1c2d3e4f5"
    a = Firmware(SimBoard(seed=1, data_dir=fresh_dir("uid1")), {})
    b = Firmware(SimBoard(seed=2, data_dir=fresh_dir("uid2")), {})
    assert a.cfg["id"] != b.cfg["id"]
    assert Firmware(SimBoard(data_dir=fresh_dir("uid3")), {"id": "garage"}).cfg["id"] == "garage"
