# Energy management (firmware/energy.py) as specifications: the house's main
# fuse, stale readings, solar start/hold/follow/stop/pause, phase choice, and
# the mains payload parser. Times in ms on a clock that wraps like an ESP32's.
from firmware import config
from firmware.energy import (
    EV_FRESH,
    EV_PHASES,
    EV_SOLAR_START,
    EV_SOLAR_STOP,
    EV_STALE,
    PHASE_MIN_GAP_MS,
    PHASE_UP_MS,
    RAISE_STEP_MA,
    SOLAR_HOLD_MS,
    STEP_MS,
    Energy,
    parse_mains,
)
from firmware.limits import NO_LIMIT_MA

PERIOD = 1 << 30


def diff(a, b):
    return ((a - b + PERIOD // 2) & (PERIOD - 1)) - PERIOD // 2


class Clock:
    def __init__(self):
        self.t = PERIOD - 30000  # wraps 30 s into every test

    def run(self, e, ms, grid=None, ev=(0, 0, 0), connected=True, every=1000):
        """Advance ms, feeding `grid` (mA per phase, or a callable of the EV's
        current giving it) every `every` ms and stepping every 100 ms."""
        end = self.t + ms
        next_feed = self.t
        n = 0
        while self.t < end:
            if grid is not None and self.t >= next_feed:
                g = grid(ev) if callable(grid) else grid
                e.feed(self.t & (PERIOD - 1), g[0], g[1], g[2])
                next_feed += every
            e.step(self.t & (PERIOD - 1), ev, connected)
            if e.event:
                n += 1
            self.t += 100
        return n

    @property
    def now(self):
        return self.t & (PERIOD - 1)


def make(phases=3, can_switch=False, **over):
    cfg, errors = config.validate(over)
    assert errors == []
    return Energy(cfg, diff, phases, can_switch)


def test_normal_mode_sets_no_limit():
    e = make()
    c = Clock()
    c.run(e, 5000, grid=(90000, 90000, 90000))
    assert e.limit_ma == NO_LIMIT_MA and e.reason is None


def test_smart_mode_keeps_every_phase_under_the_main_fuse():
    e = make(mode="smart", mains_max_a=25)
    c = Clock()
    # House 5/3/2 A on the grid, EV drawing 10 A on each phase.
    ev = (10000, 10000, 10000)
    c.run(e, 3000, grid=(15000, 13000, 12000), ev=ev)
    # Headroom is set by the busiest phase: 25 - 5 = 20 A.
    assert e.limit_ma == 20000 and e.reason == "mains"


def test_a_rise_in_house_load_cuts_at_the_next_reading_and_increases_are_smoothed():
    e = make(mode="smart", mains_max_a=25)
    c = Clock()
    ev = (16000, 16000, 16000)
    c.run(e, 5000, grid=(21000, 19000, 18000), ev=ev)  # house 5 A: 20 A room
    assert e.limit_ma == 20000
    # A kettle on L1 (+9 A): the very next reading cuts to 11 A.
    e.feed(c.now, 30000, 19000, 18000)
    e.step(c.now, ev, True)
    assert e.limit_ma == 11000
    # Room again: the limit climbs RAISE_STEP_MA per STEP_MS, not at once.
    c.run(e, STEP_MS, grid=(21000, 19000, 18000), ev=ev)
    assert e.limit_ma <= 11000 + RAISE_STEP_MA
    c.run(e, 10 * STEP_MS, grid=(21000, 19000, 18000), ev=ev)
    assert e.limit_ma == 20000


def test_total_capacity_limits_the_sum_over_the_phases():
    e = make(mode="smart", mains_max_a=40, mains_total_a=60)
    c = Clock()
    c.run(e, 3000, grid=(10000, 10000, 10000), ev=(0, 0, 0))  # house 30 A in all
    assert e.limit_ma == 10000  # (60 - 30) / 3 phases


def test_less_than_six_amps_of_room_pauses():
    e = make(mode="smart", mains_max_a=25)
    c = Clock()
    c.run(e, 3000, grid=(21000, 0, 0), ev=(0, 0, 0))
    assert e.limit_ma == 0


def test_a_stale_feed_falls_back_within_the_set_time_and_recovers():
    e = make(mode="smart", mains_max_a=25, mains_stale_s=11, mains_stale_a=6)
    c = Clock()
    c.run(e, 3000, grid=(5000, 5000, 5000))
    assert e.limit_ma == 20000
    seen = []
    t0 = c.t
    while e.reason != "stale":
        e.step(c.now, (0, 0, 0), True)
        if e.event:
            seen.append(e.event)
        c.t += 100
    assert c.t - t0 <= 11000 + 3000 + 200  # stale at most mains_stale_s after the last reading
    assert seen == [EV_STALE] and e.limit_ma == 6000
    e.feed(c.now, 5000, 5000, 5000)
    e.step(c.now, (0, 0, 0), True)
    assert e.event == EV_FRESH and e.reason == "mains"


def test_a_stale_feed_may_pause_instead():
    e = make(mode="smart", mains_stale_a=0)
    c = Clock()
    c.run(e, 20000)  # never a reading
    assert e.limit_ma == 0 and e.reason == "stale"


def test_solar_starts_at_the_threshold_holds_the_minimum_then_follows_the_surplus():
    e = make(mode="solar", solar_start_a=6)
    c = Clock()
    # 4 A export in all: below the start threshold.
    c.run(e, 5000, grid=(-2000, -1000, -1000), ev=(0, 0, 0))
    assert not e.solar_on and e.limit_ma == 0
    # 9 A per phase exported: 27 A of surplus, started on three phases.
    def grid(ev):
        return (-9000 + ev[0], -9000 + ev[1], -9000 + ev[2])

    c.run(e, 1000, grid=grid, ev=(0, 0, 0))
    assert e.solar_on
    ev = (6000, 6000, 6000)
    c.run(e, SOLAR_HOLD_MS - 2000, grid=grid, ev=ev)
    assert e.limit_ma == 6000  # held at the minimum
    c.run(e, 20000, grid=grid, ev=ev)
    assert e.limit_ma == 9000 and e.reason == "solar"


def test_solar_stops_only_after_the_shortfall_lasted_and_respects_the_pause():
    e = make(mode="solar", solar_start_a=6, solar_stop_min=2, solar_pause_min=5)
    c = Clock()

    def sunny(ev):
        return (-8000 + ev[0], -8000 + ev[1], -8000 + ev[2])

    def cloudy(ev):  # 3 A of surplus in all
        return (-1000 + ev[0], -1000 + ev[1], -1000 + ev[2])

    ev = (6000, 6000, 6000)
    c.run(e, 1000, grid=sunny, ev=(0, 0, 0))
    assert e.solar_on
    c.run(e, SOLAR_HOLD_MS + 5000, grid=sunny, ev=ev)
    # A passing cloud shorter than solar_stop_min: no stop, held at 6 A.
    n = c.run(e, 100000, grid=cloudy, ev=ev)
    assert e.solar_on and e.limit_ma == 6000 and n == 0
    c.run(e, 10000, grid=sunny, ev=ev)
    # A long shortfall: stops after 2 min.
    t0 = c.t
    while e.solar_on:
        e.feed(c.now, *cloudy(ev))
        e.step(c.now, ev, True)
        c.t += 1000
    assert 120000 <= c.t - t0 <= 125000 and e.event & EV_SOLAR_STOP and e.limit_ma == 0
    # Sun again at once: no restart within solar_pause_min.
    c.run(e, 4 * 60000, grid=sunny, ev=(0, 0, 0))
    assert not e.solar_on
    c.run(e, 70000, grid=sunny, ev=(0, 0, 0))
    assert e.solar_on


def test_solar_import_allowance_adds_to_the_surplus():
    def grid(ev):  # 5 A exported per phase: 15 A of surplus
        return (-5000 + ev[0], -5000 + ev[1], -5000 + ev[2])

    ev = (6000, 6000, 6000)
    plain = make(mode="solar", solar_start_a=6)
    c = Clock()
    c.run(plain, 1000, grid=grid, ev=(0, 0, 0))
    c.run(plain, SOLAR_HOLD_MS + 20000, grid=grid, ev=ev)
    assert plain.limit_ma == 6000 and plain._short  # 5 A per phase: held at the minimum, short
    e = make(mode="solar", solar_start_a=6, solar_import_a=6)
    c = Clock()
    c.run(e, 1000, grid=grid, ev=(0, 0, 0))
    c.run(e, SOLAR_HOLD_MS + 20000, grid=grid, ev=ev)
    assert e.limit_ma == 7000 and not e._short  # (15 + 6) / 3 phases


def test_phase_choice_at_start_and_with_timers_and_a_minimum_gap():
    e = make(phases=3, can_switch=True, mode="solar", solar_start_a=6)
    c = Clock()

    def small(ev):  # 8 A of surplus in all: one phase only
        return (-8000 + ev[0], ev[1], ev[2])

    c.run(e, 1000, grid=small, ev=(0, 0, 0))
    assert e.solar_on and e.switching and e.want_phases == 1 and e.limit_ma == 0
    e.switched(c.now, 1)
    assert e.phases == 1 and not e.switching
    ev = (6000, 0, 0)

    def big(ev):  # 30 A of surplus in all
        return (-10000 + ev[0], -10000, -10000)

    # Enough for three phases: switches up only after PHASE_UP_MS, and not
    # within PHASE_MIN_GAP_MS of the last switch.
    c.run(e, PHASE_UP_MS - 5000, grid=big, ev=ev)
    assert not e.switching
    c.run(e, PHASE_MIN_GAP_MS - PHASE_UP_MS + 10000, grid=big, ev=ev)
    assert e.switching and e.want_phases == 3 and e.limit_ma == 0 and e.reason == "phase_switch"
    e.switched(c.now, 3)
    ev = (6000, 6000, 6000)

    def short(ev):  # 12 A of surplus: less than 3 x 6 A
        return (-4000 + ev[0], -4000 + ev[1], -4000 + ev[2])

    c.run(e, PHASE_MIN_GAP_MS - 5000, grid=short, ev=ev)
    assert not e.switching  # the minimum gap since the last switch
    c.run(e, 10000, grid=short, ev=ev)
    assert e.switching and e.want_phases == 1


def test_no_phase_switching_without_a_relay():
    e = make(phases=3, can_switch=False, mode="solar", solar_start_a=6)
    c = Clock()
    n = c.run(e, 5000, grid=(-8000, 0, 0), ev=(0, 0, 0))
    assert e.solar_on and not e.switching and e.phases == 3 and n == 1  # the start only


def test_a_switch_event_is_raised_once_per_request():
    e = make(phases=3, can_switch=True, mode="solar")
    c = Clock()
    got = []
    t_end = c.t + 5000
    while c.t < t_end:
        e.feed(c.now, -8000, 0, 0)
        e.step(c.now, (0, 0, 0), True)
        if e.event:
            got.append(e.event)
        c.t += 100
    assert got == [EV_SOLAR_START | EV_PHASES]


def test_mode_changes_are_validated():
    e = make()
    assert e.set_mode("solar") is None and e.mode == "solar"
    assert e.set_mode("turbo") is not None and e.mode == "solar"


def test_bad_readings_are_refused_and_change_nothing():
    e = make(mode="smart")
    c = Clock()
    c.run(e, 3000, grid=(5000, 5000, 5000))
    before = e.limit_ma
    assert e.feed(c.now, 2000000, 0, 0) is not None
    assert e.feed(c.now, "12", 0, 0) is not None
    e.step(c.now, (0, 0, 0), True)
    assert e.limit_ma == before and e.grid_ma[0] == 5000


def test_mains_payloads():
    assert parse_mains(b'{"l1": 12.3, "l2": 8.1, "l3": -10.0}') == ((12300, 8100, -10000), None)
    assert parse_mains(b'{"l1": 7}') == ((7000, 0, 0), None)
    for bad in (
        b"",
        b"12",
        b"[1, 2, 3]",
        b'{"l2": 1}',
        b'{"l1": "12"}',
        b'{"l1": true}',
        b'{"l1": 1e9}',
        b'{"l1": NaN}',
        b'{"l1": 1, "l2": null}',
        b"\xff\xfe",
        b'{"l1": ' + b"9" * 200 + b"}",
        b"{" * 100,
    ):
        v, err = parse_mains(bad)
        assert v is None and err, bad
    assert parse_mains(None)[0] is None


def test_the_main_fuse_and_import_allowance_can_change_at_run_time():
    e = make(mode="smart", mains_max_a=25)
    c = Clock()
    c.run(e, 3000, grid=(10000, 10000, 10000))
    assert e.limit_ma == 15000
    assert e.set_limit("mains_max_a", 20000) is None
    e.step(c.now, (0, 0, 0), True)
    assert e.limit_ma == 10000  # a lower fuse applies at once
    assert e.set_limit("solar_import_a", 3000) is None and e.import_ma == 3000
    assert e.set_limit("mode", 1) is not None
