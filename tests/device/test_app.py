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


def run_s(fw, sim, seconds, every_s=1):
    """Tick the firmware, feeding the house meter every every_s like the scenario runner."""
    for i in range(seconds * 100):
        if i % (every_s * 100) == 0:
            g = [sim.grid_ma(p) / 1000 for p in range(3)]
            fw.mains(('{"l1": %.2f, "l2": %.2f, "l3": %.2f}' % (g[0], g[1], g[2])).encode())
        fw.tick()
        sim.wait_tick(10)


def test_smart_mode_limits_the_offer_to_the_main_fuse_and_reports_it():
    sim = SimBoard(data_dir=fresh_dir("smart"))
    fw = Firmware(sim, {"max_current_a": 32, "mode": "smart", "mains_max_a": 25})
    seen = []
    fw.on_event = seen.append
    sim.set_house_a([12, 3, 2])
    sim.ev_draw_a = 32
    sim.set_ev("C")
    run_s(fw, sim, 30)
    assert fw.charger.state == "C2" and 12500 <= fw.charger.offer_ma <= 13100  # 25 A less the house's 12 A
    st = fw.status()
    assert st["mode"] == "smart" and st["limit_reason"] == "mains"
    assert st["mains_a"][0] > 24 and st["mains_age_s"] <= 1 and st["phases_active"] == 3
    # The mode command switches back to normal: the configured 32 A again.
    assert fw.command("mode", b"normal") == (True, None)
    run_s(fw, sim, 12)
    assert fw.charger.offer_ma == 32000
    assert fw.command("mode", b"eco")[0] is False


def test_bad_mains_payloads_are_refused_and_the_last_good_reading_kept():
    sim = SimBoard(data_dir=fresh_dir("mains-bad"))
    fw = Firmware(sim, {"mode": "smart"})
    assert fw.mains(b'{"l1": 10, "l2": 2, "l3": 3}') == (True, None)
    for bad in (b"{", b'{"l1": "x"}', b'{"l1": 1e12}', b"\xff" * 300, b"[]"):
        ok, err = fw.mains(bad)
        assert not ok and err, bad
    assert fw.energy.grid_ma == [10000, 2000, 3000]


def test_solar_mode_switches_phases_only_after_ten_safe_seconds():
    sim = SimBoard(data_dir=fresh_dir("phases"), phase_relay=True)
    fw = Firmware(sim, {"mode": "solar", "max_current_a": 16})
    seen = []
    fw.on_event = seen.append
    sim.set_house_a(1)
    sim.set_pv_a([10, 0, 0])  # 9 A of surplus: one phase
    sim.set_ev("C")
    run_s(fw, sim, 40)
    assert [(n, c, p) for _t, n, c, p in sim.phase_log] == [(1, False, False)]
    t_switch = sim.phase_log[0][0]
    names = [e["event"] for e in seen]
    assert "solar_start" in names and "phase_switch" in names and "phases" in names
    assert fw.charger.state == "C2" and sim.supply_phases == 1 and fw.status()["phases_active"] == 1
    assert t_switch >= 10000  # the pause lasted at least PHASE_SAFE_MS before the relay moved


def test_the_default_device_id_comes_from_the_chips_unique_id():
    # Two chargers left at a fixed default id would share topics, session ids
    # and one Home Assistant device.
    fw = Firmware(SimBoard(unique_id="a0b1c2d3e4f5", data_dir=fresh_dir("uid")), {})
    assert fw.cfg["id"] == "evse-a0b1c2d3e4f5"
    a = Firmware(SimBoard(seed=1, data_dir=fresh_dir("uid1")), {})
    b = Firmware(SimBoard(seed=2, data_dir=fresh_dir("uid2")), {})
    assert a.cfg["id"] != b.cfg["id"]
    assert Firmware(SimBoard(data_dir=fresh_dir("uid3")), {"id": "garage"}).cfg["id"] == "garage"
