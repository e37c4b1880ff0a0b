# The loop order and what may stall it (firmware/app.py, docs/architecture.md):
# the pilot reading first, nothing between it and the decision, no flash write
# while the contactor is closed, no TLS handshake then, a watchdog that a
# legitimate stall does not fire. Runs the ESP32 timing profile (sim/timing.py).
# timeout: 120
import tmpdirs

from firmware import app
from firmware.app import Firmware
from sim.board import SimBoard


class CallLog(SimBoard):
    """SimBoard that logs the board calls of interest, in order."""

    def __init__(self, **kw):
        self.log = []
        super().__init__(**kw)

    def pilot_read(self, out):
        self.log.append("pilot_read")
        super().pilot_read(out)

    def adc_burst_watched(self, buf, guard):
        self.log.append("adc_burst")
        return super().adc_burst_watched(buf, guard)

    def adc_burst(self, buf, charge=True):
        if charge:  # (adc_burst_watched's own fill is logged above)
            self.log.append("adc_burst")
        super().adc_burst(buf, charge)

    def contactor(self, closed):
        self.log.append("contactor")
        super().contactor(closed)


def run(fw, sim, ms):
    for _ in range(ms // 10):
        fw.tick()
        sim.wait_tick(10)


def test_each_tick_reads_the_pilot_first_and_meters_after_the_decision():
    d = tmpdirs.make("evse-order")
    sim = CallLog(data_dir=d, profile="esp32")
    fw = Firmware(sim, {})
    sim.set_ev("C")
    bursts = 0
    for _ in range(600):  # 6 s: plug, PWM, S2 closes, the contactor closes
        sim.log = []
        fw.tick()
        c = sim.log
        assert c and c[0] == "pilot_read", c
        if "adc_burst" in c:
            bursts += 1
            if "contactor" in c:
                assert c.index("contactor") < c.index("adc_burst"), c
        sim.wait_tick(10)
    assert bursts >= 50 and fw.charger.contactor_on
    tmpdirs.remove(d)


def _flash_log(sim):
    """[(now_ms, energized)] of every flash write and rename the firmware makes."""
    log = []
    costs = sim.costs
    opened = costs.flash_opened
    meta = costs.flash_meta

    def on_open(path, write):
        if write:
            log.append((sim.now_ms, sim.contactor_commanded))
        opened(path, write)

    def on_meta():
        log.append((sim.now_ms, sim.contactor_commanded))
        meta()

    costs.flash_opened = on_open
    costs.flash_meta = on_meta
    return log


def test_no_flash_write_while_the_contactor_is_closed_and_the_checkpoints_follow_its_opening():
    d = tmpdirs.make("evse-flash")
    sim = SimBoard(data_dir=d, profile="esp32", ev_draw_a=32)
    fw = Firmware(sim, {"max_current_a": 32})
    log = _flash_log(sim)
    sim.set_ev("C")
    run(fw, sim, 6 * 60 * 1000)  # 6 min at 22 kW: checkpoints due many times over
    assert fw.charger.contactor_on and fw.tracker.active
    assert [t for t, energized in log if energized] == []
    assert all(not s[3] for s in sim.costs.stalls if s[1].startswith("erase"))
    opened_at = sim.now_ms
    sim.set_ev("B")  # the EV stops: the contactor opens, the deferred writes follow
    run(fw, sim, 2000)
    assert not fw.charger.contactor_on
    after = [t for t, energized in log if t >= opened_at]
    assert after and not any(energized for t, energized in log)
    tmpdirs.remove(d)


def test_with_flash_while_charging_the_checkpoints_are_written_during_the_charge():
    d = tmpdirs.make("evse-flash")
    sim = SimBoard(data_dir=d, profile="esp32", ev_draw_a=32)
    fw = Firmware(sim, {"max_current_a": 32, "flash_while_charging": True})
    log = _flash_log(sim)
    sim.set_ev("C")
    run(fw, sim, 3 * 60 * 1000)
    assert len([t for t, energized in log if energized]) >= 2
    tmpdirs.remove(d)


class FakeLink:
    """What firmware/app.py uses of firmware/link.Link, scripted."""

    def __init__(self):
        self.acked = []
        self.hold_tls = False
        self.sessions = []

    def poll_command(self):
        return None

    def poll_acked(self):
        return self.acked.pop(0) if self.acked else None

    def poll_mains(self):
        return None

    def post_status(self, payload):
        pass

    def post_event(self, payload):
        pass

    def post_session(self, sid, payload):
        if sid not in self.sessions:
            self.sessions.append(sid)
        return True

    def pending_sessions(self):
        return len(self.sessions)

    def stop(self, timeout_ms=0):
        return True


def test_acks_are_journaled_once_the_contactor_opens_and_tls_is_held_while_it_is_closed():
    d = tmpdirs.make("evse-acks")
    sim = SimBoard(data_dir=d)
    fw = Firmware(sim, {})
    link = fw.link = FakeLink()
    sim.set_ev("C")
    run(fw, sim, 5000)
    sim.set_ev("A")  # first session ends: journaled, posted
    run(fw, sim, 1000)
    sid = link.sessions[0]
    assert fw.journal.pending_count() == 1
    sim.set_ev("C")
    run(fw, sim, 5000)
    assert fw.charger.contactor_on and link.hold_tls
    link.sessions.remove(sid)
    link.acked.append(sid)  # the broker acknowledges it during the second session
    run(fw, sim, 2000)
    assert fw.journal.pending_count() == 1  # no journal write while the contactor is closed
    assert sid not in link.sessions  # and not offered again meanwhile
    sim.set_ev("B")
    run(fw, sim, 2000)
    assert not fw.charger.contactor_on and not link.hold_tls
    assert fw.journal.pending_count() == 0
    tmpdirs.remove(d)


def test_the_watchdog_is_tight_while_charging_and_leaves_room_for_a_tls_handshake_when_idle():
    d = tmpdirs.make("evse-wdt")
    sim = SimBoard(data_dir=d)
    fw = Firmware(sim, {})
    seen = {}

    def on_tick(s):
        seen[fw.charger.contactor_on] = s._wdt_ms
        if s.now_ms == 3000:
            s.set_ev("C")
        if s.now_ms >= 10000:
            raise KeyboardInterrupt

    sim.on_tick = on_tick
    try:
        fw.run()
    except KeyboardInterrupt:
        pass
    assert seen[True] == app.WDT_MS and seen[False] == app.WDT_IDLE_MS
    assert app.WDT_IDLE_MS > 2000 + 400  # the longest TLS handshake reported, plus a long erase
    tmpdirs.remove(d)


class CountingNet:
    """hal/net.py with every connect counted and refused (no network needed)."""

    def __init__(self):
        import time

        self.time = time
        self.connects = 0

    def ticks_ms(self):
        return self.time.ticks_ms()

    def ticks_diff(self, a, b):
        return self.time.ticks_diff(a, b)

    def sleep_ms(self, ms):
        self.time.sleep_ms(ms)

    def tcp_connect(self, host, port, timeout_s):
        self.connects += 1
        raise OSError(111)

    def tls_context(self, ca_path=None):
        return None


def test_a_tls_link_does_not_connect_while_the_contactor_is_closed():
    from firmware.config import defaults
    from firmware.link import Link

    cfg = defaults()
    cfg.update({"mqtt_host": "127.0.0.1", "mqtt_tls": True})
    net = CountingNet()
    check_hold_tls(Link(cfg, net, net), net)


def check_hold_tls(link, net):
    """A started link thread with hold_tls set does not connect through net
    (a CountingNet); once cleared, it does."""
    link.hold_tls = True  # what the loop sets while the contactor is closed
    link.start()
    try:
        net.sleep_ms(400)
        assert net.connects == 0
        link.hold_tls = False
        for _ in range(100):
            if net.connects:
                break
            net.sleep_ms(20)
        assert net.connects >= 1
    finally:
        assert link.stop(2000)


class BurstEvent(SimBoard):
    """SimBoard whose EV opens S2 3 ms into the first watched burst it is asked for."""

    def __init__(self, **kw):
        self.armed = False
        self.event_ms = None
        super().__init__(**kw)

    def adc_burst_watched(self, buf, guard):
        if self.armed:
            self.armed = False
            self.event_ms = self.now_ms + 3
            self.set_alarm(self.event_ms, lambda s: s.set_ev("B"))
        return super().adc_burst_watched(buf, guard)


def test_s2_opening_during_a_current_sense_burst_is_decided_within_a_few_ms_not_after_the_burst():
    d = tmpdirs.make("evse-burst")
    sim = BurstEvent(data_dir=d, profile="esp32")
    fw = Firmware(sim, {})
    sim.set_ev("C")
    run(fw, sim, 6000)
    assert fw.charger.contactor_on
    sim.armed = True
    run(fw, sim, 200)
    assert sim.event_ms is not None and not fw.charger.contactor_on
    decide = sim.contactor_cmd_ms - sim.event_ms
    print("S2 open 3 ms into a 20 ms burst: open command after", decide, "ms")
    # the burst is cut at its next look at the pilot (2.5 ms steps), then the charger decides
    assert decide < 20 - 3
    tmpdirs.remove(d)


def test_a_remote_stop_closes_the_session_on_flash_only_once_the_contactor_opens():
    d = tmpdirs.make("evse-stop")
    sim = SimBoard(data_dir=d, profile="esp32", ev_draw_a=16)
    fw = Firmware(sim, {})
    seen = []
    fw.on_event = seen.append
    log = _flash_log(sim)
    sim.set_ev("C")
    run(fw, sim, 10000)
    assert fw.charger.contactor_on
    ok, err = fw.command("stop", "")
    assert ok, err
    run(fw, sim, 20)
    assert fw.charger.contactor_on  # x1: the EV gets time to ramp down and open S2
    run(fw, sim, 5000)
    assert not fw.charger.contactor_on
    assert [t for t, energized in log if energized] == []
    recs = [e["record"] for e in seen if e.get("event") == "session"]
    assert len(recs) == 1 and recs[0]["reason"] == "remote_stop", recs
    # the energy the EV drew while ramping down belongs to the session
    assert abs(recs[0]["energy_mwh"] - sim.truth_energy_wh * 1000) <= sim.truth_energy_wh * 10
    tmpdirs.remove(d)


def test_a_collection_in_a_links_thread_moves_no_simulated_time_there_and_the_loop_pays_it_at_its_next_board_call():
    # A link collects before it connects, in its own thread (firmware/linkthread.py):
    # the simulated world moves in the control loop's thread only, or the EV and
    # the scenario's steps would run in the link's thread beside the loop.
    import _thread
    import time

    d = tmpdirs.make("evse-gc-thread")
    sim = SimBoard(data_dir=d, profile="esp32")
    import gc  # after the timed board: sim/timing.py's stand-in, as the firmware gets it

    try:
        t0 = sim.now_ms
        seen = []

        def link():
            before = sim.now_ms
            gc.collect()
            seen.append(sim.now_ms - before)

        _thread.start_new_thread(link, ())
        for _ in range(2000):
            if seen:
                break
            time.sleep_ms(1)
        assert seen == [0] and sim.now_ms == t0
        out = bytearray(8)
        sim.pilot_read(out)  # the loop's next board call pays the 15 ms
        assert sim.now_ms - t0 >= 15, sim.now_ms - t0
        assert [s[1] for s in sim.costs.stalls].count("gc") == 1
    finally:
        tmpdirs.remove(d)
