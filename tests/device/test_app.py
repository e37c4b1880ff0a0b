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


def _run(fw, sim, seconds):
    for _ in range(int(seconds * 100)):
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


def test_a_full_flash_mid_session_keeps_charging_refuses_the_next_session_and_says_so():
    import os

    import ramdisk

    root = ramdisk.mount(128)
    try:
        sim = SimBoard(data_dir=root + "/data")
        # checkpoints while charging (off by default: firmware/app.py, docs/architecture.md)
        fw = Firmware(sim, {"max_current_a": 16, "flash_while_charging": True})
        seen = []
        fw.on_event = seen.append
        sim.set_ev("C")
        _run(fw, sim, 10)
        assert fw.charger.contactor_on
        fillers = ramdisk.fill(root)
        _run(fw, sim, 120)  # journal checkpoints (0.1 kWh) and lifetime persists meet ENOSPC
        assert fw.charger.contactor_on and fw.charger.state == "C2"  # the session goes on
        full = [e for e in seen if e["event"] == "journal_full"]
        assert full and "28" in full[0]["error"], seen
        assert fw.status()["blocked"] == "journal_full"
        sim.set_ev("A")
        _run(fw, sim, 2)
        assert [e for e in seen if e["event"] == "session"]  # still handed to the link
        sim.set_ev("C")
        _run(fw, sim, 5)
        assert not fw.charger.contactor_on and fw.session_id is None  # refused
        sim.set_ev("A")
        for p in fillers[:16]:
            os.remove(p)
        _run(fw, sim, 65)  # the journal retries once a minute
        assert [e for e in seen if e["event"] == "journal_ok"]
        sim.set_ev("C")
        _run(fw, sim, 5)
        assert fw.charger.contactor_on
    finally:
        ramdisk.unmount(root)


def test_after_a_power_cut_the_lifetime_counter_never_restarts_below_a_journaled_meter_stop():
    d = fresh_dir("lifetime")
    sim = SimBoard(data_dir=d)
    fw = Firmware(sim, {"max_current_a": 32, "flash_while_charging": True})
    sim.set_ev("C")
    _run(fw, sim, 90)  # 22 kW: journal checkpoints every 0.1 kWh, the counter every 60 s
    saved_mwh = fw.meter._saved_wh * 1000 + fw.meter._saved_mwh  # what lifetime.txt holds
    # Power cut: nothing more is written; boot again on the same flash.
    sim2 = SimBoard(data_dir=d)
    fw2 = Firmware(sim2, {"max_current_a": 32, "flash_while_charging": True})
    seen = []
    fw2.on_event = seen.append
    rec = [r for r in fw2.journal.pending() if r["reason"] == "power_loss"][0]
    assert rec["meter_stop_mwh"] > saved_mwh, "no journal checkpoint ahead of the counter"
    assert fw2.meter.lifetime_mwh() >= rec["meter_stop_mwh"]
    sim2.set_ev("C")
    _run(fw2, sim2, 5)
    sim2.set_ev("A")
    _run(fw2, sim2, 2)
    nxt = [e["record"] for e in seen if e["event"] == "session"][0]
    assert nxt["meter_start_mwh"] >= rec["meter_stop_mwh"]
    # ... and it was persisted at boot: a third boot without the journal agrees.
    import os

    os.remove(d + "/journal.bin")
    fw3 = Firmware(SimBoard(data_dir=d), {})
    assert fw3.meter.lifetime_mwh() >= nxt["meter_stop_mwh"] - 1000  # at most the unsaved tail of session 2


def test_damaged_files_everywhere_boot_with_defaults_and_report_each_one():
    import os

    d = fresh_dir("damaged")
    with open(d + "/config.json", "wb") as f:
        f.write(b'{"id": "\xff"}')
    with open(d + "/lifetime.txt", "wb") as f:
        f.write(b"lifetime 5 0 \xff\n")
    with open(d + "/cal.json", "wb") as f:
        f.write(b"\xfe{")
    os.mkdir(d + "/journal.bin")
    os.mkdir(d + "/boot.cnt")
    sim = SimBoard(data_dir=d)
    fw = Firmware(sim, {})
    seen = []
    fw.on_event = seen.append
    fw.start()
    errors = [e["error"] for e in seen if e["event"] == "config_error"]
    notes = " ".join(e["text"] for e in seen if e["event"] == "note")
    assert errors and "config.json" in errors[0]
    assert "lifetime.txt" in notes and "cal.json" in notes and "journal.bin" in notes and "boot.cnt" in notes, notes
    sim.set_ev("C")
    _run(fw, sim, 5)
    assert fw.charger.contactor_on  # it charges


def test_the_published_lifetime_reading_never_goes_backwards_across_a_power_cut():
    d = fresh_dir("published")
    sim = SimBoard(data_dir=d)
    fw = Firmware(sim, {"max_current_a": 32, "flash_while_charging": True})
    sim.set_ev("C")
    published = []
    for _ in range(12):  # 2 minutes at 22 kW, a status every 10 s as while charging
        _run(fw, sim, 10)
        published.append(fw.status()["lifetime_wh"])
    assert published[-1] > 100 and published == sorted(published)
    fw2 = Firmware(SimBoard(data_dir=d), {"max_current_a": 32, "flash_while_charging": True})  # power cut, boot again
    assert fw2.status()["lifetime_wh"] >= max(published), (fw2.status()["lifetime_wh"], published)


def test_the_default_device_id_comes_from_the_chips_unique_id():
    # Two chargers left at a fixed default id would share topics, session ids
    # and one Home Assistant device.
    fw = Firmware(SimBoard(unique_id="a0b1c2d3e4f5", data_dir=fresh_dir("uid")), {})
    assert fw.cfg["id"] == "evse-a0b1c2d3e4f5"
    a = Firmware(SimBoard(seed=1, data_dir=fresh_dir("uid1")), {})
    b = Firmware(SimBoard(seed=2, data_dir=fresh_dir("uid2")), {})
    assert a.cfg["id"] != b.cfg["id"]
    assert Firmware(SimBoard(data_dir=fresh_dir("uid3")), {"id": "garage"}).cfg["id"] == "garage"


class _Stop(Exception):
    pass


def test_a_pending_image_is_reported_at_boot_and_marked_valid_after_thirty_seconds_of_running():
    from firmware import imagestate
    from sim import ota

    d = fresh_dir("ota")
    parts = d + "/ota"
    ota.flash(parts, b"OLD", size=8192)
    ota.set_boot(parts, "ota_1")
    assert ota.select(parts) == "ota_1"  # the bootloader booted the new image, pending verify
    imagestate._report = None
    sim = SimBoard(data_dir=d, ota_dir=parts)
    fw = Firmware(sim, {})
    seen = []
    fw.on_event = seen.append
    states = []

    def tick(s):
        states.append(ota.read_otadata(parts)["ota_1"]["state"]) if fw.ticks in (2990, 3010) else None
        if fw.ticks >= 3010:
            raise _Stop()

    sim.on_tick = tick
    try:
        fw.run()
    except _Stop:
        pass
    finally:
        imagestate._report = None
    boot = [e for e in seen if e["event"] == "boot"][0]
    assert boot["image"] == {"partition": "ota_1", "state": "pending", "rollback": None}, boot["image"]
    assert states == ["pending", "valid"], states


def test_a_board_without_app_partitions_reports_no_image():
    from firmware import imagestate

    imagestate._report = None
    sim = SimBoard(data_dir=fresh_dir("noota"))
    fw = Firmware(sim, {})
    seen = []
    fw.on_event = seen.append
    fw.start()
    assert [e for e in seen if e["event"] == "boot"][0]["image"] is None
