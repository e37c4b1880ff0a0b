# timeout: 60
# A hung control loop ends in a watchdog reset, and the reset path makes the
# outputs safe before anything else (issue 7).
#
# sim/board.py's watchdog counts in virtual time: wait_tick() raises
# WatchdogReset once the watchdog has not been fed for its timeout. A real
# hang (a tick that never returns) cannot be simulated in one thread, so the
# hang here is a part of the loop that keeps waiting on the board (polling
# through wait_tick for something that never comes) and so never gets back to
# the feed: virtual time runs on and the watchdog fires inside the hung call.
# A WatchdogReset leaves the outputs exactly as they were (a hardware reset
# runs no `except` or `finally`; the sim documents this as the worst case),
# so whatever runs after the reset (boot.py, then main.py) must open the
# contactor and put the pilot steady before it does anything else.


import tmpdirs

from firmware.app import WDT_MS, Firmware
from hal.contract import PILOT_PLUS12
from sim.board import SimBoard, WatchdogReset


class LoggedBoard(SimBoard):
    """SimBoard that records every output command in order, with its time."""

    def __init__(self, **kw):
        self.log = []
        super().__init__(**kw)

    def contactor(self, closed):
        self.log.append(("contactor", bool(closed), self.now_ms))
        super().contactor(closed)

    def pilot_pwm(self, duty_pm):
        self.log.append(("pwm", duty_pm, self.now_ms))
        super().pilot_pwm(duty_pm)

    def pilot_steady(self, level):
        self.log.append(("steady", level, self.now_ms))
        super().pilot_steady(level)


def charging_firmware():
    """Firmware charging an EV at 16 A, ticked like Firmware.run() (tick,
    feed, wait_tick) with the watchdog started as run() starts it."""
    d = tmpdirs.make("evse-wdt")
    sim = LoggedBoard(seed=5, data_dir=d, ev_draw_a=16)
    fw = Firmware(sim, {})
    sim.wdt_start(WDT_MS)
    sim.set_ev("B")
    loop(fw, sim, 1000)
    sim.set_ev("C")
    loop(fw, sim, 8000)
    assert fw.charger.contactor_on and sim.contacts_closed and sim.truth_current_ma(0) > 15000
    return fw, sim, d


def loop(fw, sim, ms):
    for _ in range(ms // 10):
        fw.tick()
        sim.wdt_feed()
        sim.wait_tick(10)


def hang_forever(sim):
    """Keep waiting on the board for something that never comes: the loop
    never gets back to the feed. Returns the virtual ms it waited."""
    t0 = sim.now_ms
    for _ in range(100000):  # 1000 s of virtual time: far beyond any watchdog
        sim.wait_tick(10)
    raise AssertionError("no watchdog reset after %d ms of hang" % (sim.now_ms - t0))


def hang_and_reset(fw, sim, where):
    """Make `where` of the loop hang; return the virtual ms until the reset."""
    t0 = sim.now_ms
    if where == "charger":
        fw.charger.tick = lambda: hang_forever(sim)
    else:  # the meter's ADC burst never completes
        fw.meter.sample = lambda now, expect=None, guard=None: hang_forever(sim)
    try:
        loop(fw, sim, 1000)
    except WatchdogReset:
        return sim.now_ms - t0
    raise AssertionError("the hung loop did not end in a watchdog reset")


def test_a_hung_charger_tick_ends_in_a_watchdog_reset_within_its_timeout():
    fw, sim, d = charging_firmware()
    waited = hang_and_reset(fw, sim, "charger")
    assert WDT_MS <= waited <= WDT_MS + 20, waited  # fed 10 ms before the hang began
    assert sim.reset_cause() == "watchdog"
    tmpdirs.remove(d)


def test_a_hung_meter_burst_ends_in_a_watchdog_reset_too():
    fw, sim, d = charging_firmware()
    loop(fw, sim, 50)  # not at the meter's turn: the hang starts at its next burst
    waited = hang_and_reset(fw, sim, "meter")
    assert WDT_MS <= waited <= WDT_MS + 110, waited  # up to one meter period late
    tmpdirs.remove(d)


def test_the_reset_leaves_the_outputs_as_they_were_the_worst_case():
    fw, sim, d = charging_firmware()
    n = len(sim.log)
    hang_and_reset(fw, sim, "charger")
    assert sim.log[n:] == [], "nothing may touch the outputs on the way to a reset"
    sim.step(500)  # time passes while the chip reboots
    assert sim.contacts_closed, "the contactor is still closed"
    assert sim.ev_sees_offer_ma() > 0, "the pilot still offers current"
    assert sim.truth_current_ma(0) > 15000, "and the EV still draws it"
    tmpdirs.remove(d)


def test_boot_safe_then_firmware_start_opens_the_contactor_and_steadies_the_pilot_first():
    fw, sim, d = charging_firmware()
    hang_and_reset(fw, sim, "charger")
    sim.step(300)  # reboot time
    sim.log = []
    t_boot = sim.now_ms
    # boot.py: the board's safe() before anything else.
    sim.safe()
    assert sim.log[0] == ("contactor", False, t_boot), sim.log
    assert ("steady", PILOT_PLUS12, t_boot) in sim.log
    assert sim.ev_sees_offer_ma() == 0
    sim.step(sim.contactor_open_ms + 10)
    assert not sim.contacts_closed and sim.truth_current_ma(0) == 0
    # main.py: a new Firmware on the same board. Its construction commands the
    # outputs safe again (a boot.py that failed to build the board leaves
    # that to it) and nothing offers or closes before the first tick.
    n = len(sim.log)
    events = []
    fw2 = Firmware(sim, {})
    fw2.on_event = events.append
    start = [e[0] for e in sim.log[n:]]
    assert start[:2] in (["steady", "contactor"], ["contactor", "steady"]), sim.log[n:]
    assert not [e for e in sim.log[n:] if e[0] == "pwm" or e[:2] == ("contactor", True)], sim.log[n:]
    fw2.start()
    assert events[0]["event"] == "boot" and events[0]["reset_cause"] == "watchdog", events[0]
    # Then the charger starts over from scratch: a new RCD self-test and the
    # PWM first, the contactor only after the EV has answered it.
    sim.wdt_start(WDT_MS)
    m = len(sim.log)
    loop(fw2, sim, 10000)
    after = sim.log[m:]
    first_close = [i for i, e in enumerate(after) if e[:2] == ("contactor", True)]
    first_pwm = [i for i, e in enumerate(after) if e[0] == "pwm"]
    assert first_close and first_pwm and first_pwm[0] < first_close[0], after
    assert after[first_close[0]][2] > after[first_pwm[0]][2], "closed in the tick the PWM started"
    assert fw2.charger.contactor_on and sim.truth_current_ma(0) > 15000, "charging resumes"
    tmpdirs.remove(d)


def test_without_boot_safe_the_firmware_makes_the_outputs_safe_before_its_first_tick():
    fw, sim, d = charging_firmware()
    hang_and_reset(fw, sim, "charger")
    sim.log = []
    t0 = sim.now_ms
    Firmware(sim, {})  # no boot.py safe(): a broken board file, say
    assert ("contactor", False, t0) in sim.log and ("steady", PILOT_PLUS12, t0) in sim.log, sim.log
    assert sim.ev_sees_offer_ma() == 0
    sim.step(sim.contactor_open_ms + 10)
    assert not sim.contacts_closed
    tmpdirs.remove(d)


def test_the_real_loop_lets_the_watchdog_reset_through():
    # Firmware.run() must not swallow the reset (it re-raises every
    # BaseException after safe(); the sim's safe() there is the unix port's
    # courtesy: on an ESP32 the hardware reset runs no handler at all).
    d = tmpdirs.make("evse-wdt")
    sim = SimBoard(seed=5, data_dir=d)
    fw = Firmware(sim, {})
    n = [0]

    def on_tick(s):
        n[0] += 1
        if n[0] == 300:
            fw.charger.tick = lambda: hang_forever(s)

    sim.on_tick = on_tick
    try:
        fw.run()
    except WatchdogReset:
        pass
    else:
        raise AssertionError("run() returned")
    assert sim.reset_cause() == "watchdog"
    tmpdirs.remove(d)
