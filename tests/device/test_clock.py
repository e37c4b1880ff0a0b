# The wall clock arriving late (NTP after boot): session stamps back-dated
# from the ticks, or left marked; the status keys of the network.
import json

import tmpdirs

from firmware.app import Firmware
from firmware.journal import Journal
from sim.board import SimBoard

WALL = 1767225600  # 2026-01-01 00:00:00 UTC
PW = "hunter2hunter2"


def fresh_dir(name):
    return tmpdirs.make("evse-clock-" + name)


def ticks(fw, sim, n):
    for _ in range(n):
        fw.tick()
        sim.wait_tick(10)


class FakeLink:
    """Records what the app posts; queues nothing."""

    def __init__(self):
        self.running = False
        self.sessions = {}
        self.statuses = []
        self.events = []

    def post_session(self, sid, payload):
        self.sessions[sid] = json.loads(payload)
        return True

    def pending_sessions(self):
        return 0

    def start(self):
        pass

    def post_status(self, payload):
        self.statuses.append(payload)

    def post_event(self, payload):
        self.events.append(payload)

    def post_ack(self, *a):
        pass

    def poll_command(self):
        return None

    def poll_mains(self):
        return None

    def poll_acked(self):
        return None


def test_session_started_before_the_clock_is_back_dated_when_ntp_sets_it():
    d = fresh_dir("open")
    sim = SimBoard(data_dir=d)
    fw = Firmware(sim, {})
    seen = []
    fw.on_event = seen.append
    ticks(fw, sim, 500)  # 5 s without a clock
    sim.set_ev("C")
    ticks(fw, sim, 300)
    assert fw.session_id is not None
    mono = fw.tracker.start["mono_ms"]
    assert fw.tracker.start["boot"] == fw.boot_id and fw.status()["clock_set"] is False
    ticks(fw, sim, 6000)  # charging for a minute, then NTP answers
    t_set = sim.ticks_ms()
    sim.set_wall_time(WALL)
    ticks(fw, sim, 200)
    ev = [e for e in seen if e["event"] == "clock_set"]
    assert len(ev) == 1 and ev[0]["restamped"] == fw.session_id
    assert fw.status()["clock_set"] is True
    start = fw.tracker.start
    expect = WALL - sim.ticks_diff(t_set, mono) // 1000
    assert abs(start - expect) <= 1, (start, expect)
    # The journal has it now: a power cut here recovers the back-dated start.
    j = Journal(d)
    j.boot()
    j.recover(WALL + 100)
    rec = [r for r in j.pending() if r["id"] == fw.session_id][0]
    assert rec["start"] == start and rec["reason"] == "power_loss"
    # And the closed record carries it too.
    sim.set_ev("A")
    ticks(fw, sim, 200)
    rec = [e["record"] for e in seen if e.get("event") == "session"][0]
    assert rec["start"] == start and isinstance(rec["end"], int) and rec["end"] > start


def test_closed_records_of_this_boot_are_posted_back_dated_and_earlier_boots_stay_marked():
    d = fresh_dir("closed")
    sim = SimBoard(data_dir=d)
    fw = Firmware(sim, {})  # boot 1: a session, never a clock
    sim.set_ev("C")
    ticks(fw, sim, 500)
    sim.set_ev("A")
    ticks(fw, sim, 200)
    old = fw.journal.pending()[0]
    assert old["start"]["boot"] == fw.boot_id
    sim2 = SimBoard(data_dir=d, start_ticks=7)
    fw2 = Firmware(sim2, {})  # boot 2: another session, then the clock
    sim2.set_ev("C")
    ticks(fw2, sim2, 500)
    sim2.set_ev("A")
    ticks(fw2, sim2, 200)
    new = [r for r in fw2.journal.pending() if r["id"] != old["id"]][0]
    assert new["start"]["boot"] == fw2.boot_id
    t_set = sim2.ticks_ms()
    sim2.set_wall_time(WALL)
    ticks(fw2, sim2, 200)
    link = FakeLink()
    fw2.link = link
    fw2._repost()
    got = link.sessions[new["id"]]
    expect = WALL - sim2.ticks_diff(t_set, new["start"]["mono_ms"]) // 1000
    assert isinstance(got["start"], int) and abs(got["start"] - expect) <= 1, (got["start"], expect)
    assert got["end"] > got["start"] and got["energy_mwh"] == new["energy_mwh"]
    # A boot whose ticks cannot be related to this clock keeps its marks.
    assert link.sessions[old["id"]]["start"] == old["start"]
    assert fw2.journal.pending()[0]["start"] == old["start"]  # the journal is not rewritten


def test_clock_set_after_half_the_ticks_period_back_dates_nothing():
    sim = SimBoard(data_dir=fresh_dir("late"))
    fw = Firmware(sim, {})
    sim.set_ev("C")
    ticks(fw, sim, 300)
    assert fw.session_id is not None
    for _ in range(4):  # 4 x 3.1 days: one whole ticks period (2**30 ms) after the start
        sim.step(1 << 28)
        ticks(fw, sim, 100)
    # ticks_diff(now, start) is now a few seconds: wrong by 12.4 days.
    assert 0 < sim.ticks_diff(sim.ticks_ms(), fw.tracker.start["mono_ms"]) < 10000
    sim.set_wall_time(WALL)
    ticks(fw, sim, 100)
    assert fw.status()["clock_set"] is True
    assert isinstance(fw.tracker.start, dict)  # cannot be related to the clock: left marked


def test_status_reports_link_state_rssi_and_never_the_wifi_password():
    sim = SimBoard(data_dir=fresh_dir("status"))
    sim.netif.kind = "wifi"
    sim.netif.rssi = -64
    fw = Firmware(sim, {"wifi_ssid": "depot", "wifi_password": PW, "mqtt_host": "broker.invalid"})
    link = fw.link
    assert fw.status()["net"] == "down" and fw.status()["rssi_dbm"] is None
    fw.link = FakeLink()
    seen = []
    fw.on_event = seen.append
    fw.start()  # (the fake link: no thread, no broker)
    assert fw.link.netup is fw.netup  # the link thread runs the network
    for _ in range(100):
        fw.netup.poll()
        sim.step(100)
    assert sim.netif.password == PW
    s = fw.status()
    assert s["net"] == "up" and s["rssi_dbm"] == -64 and s["clock_set"] is False
    ticks(fw, sim, 200)
    texts = [json.dumps(s)] + [json.dumps(e) for e in seen] + fw.link.statuses + fw.link.events
    texts += [repr(fw.netup.last_error), json.dumps(fw.config_errors)]
    for t in texts:
        assert PW not in (t if isinstance(t, str) else t.decode()), t
    assert link.running is False  # never started: the fake took its place


def test_board_without_network_interface_reports_null_network_keys():
    sim = SimBoard(data_dir=fresh_dir("nonet"))
    sim.netif = None
    fw = Firmware(sim, {})
    s = fw.status()
    assert fw.netup is None and s["net"] is None and s["rssi_dbm"] is None


def test_without_a_broker_an_ethernet_board_runs_the_network_in_its_own_thread_and_sets_the_clock():
    from hal import net

    sim = SimBoard(data_dir=fresh_dir("ownthread"))
    sim.netif.kind = "eth"
    sim.netif.ntp_server(WALL)
    fw = Firmware(sim, {})
    assert fw.link is None and fw.netup is not None
    seen = []
    fw.on_event = seen.append
    fw.start()
    try:
        t0 = net.ticks_ms()
        while sim.wall_time() is None and net.ticks_diff(net.ticks_ms(), t0) < 10000:
            ticks(fw, sim, 10)  # virtual time for the fake link; the thread polls in wall time
            net.sleep_ms(5)
        ticks(fw, sim, 100)
        assert sim.netif.ups == 1 and fw.netup.state == "up"
        assert abs(sim.wall_time() - (WALL + sim.now_ms // 1000)) <= 1  # the fake server's clock runs in virtual time
        assert fw.status()["clock_set"] and [e for e in seen if e["event"] == "clock_set"]
    finally:
        fw.shutdown()
    t0 = net.ticks_ms()
    while fw.netup.running and net.ticks_diff(net.ticks_ms(), t0) < 3000:
        net.sleep_ms(10)
    assert not fw.netup.running  # shutdown() ends the thread
