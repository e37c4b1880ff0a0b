# The offered current: the smallest of every limit, thermal derating with hysteresis.
from firmware import config
from firmware.limits import T_HALF, T_NORMAL, T_QUARTER, T_STOP, Limits

NO_TEMP = -32768
UNKNOWN = -1


def make(**over):
    cfg, errors = config.validate(over)
    assert errors == []
    return Limits(cfg)


def test_offer_is_the_smallest_limit():
    lim = make(max_current_a=32, hw_max_current_a=40)
    assert lim.offer_ma() == 32000 and lim.reason == "config"
    lim.set_cable(680, UNKNOWN)  # 20 A cable
    assert lim.offer_ma() == 20000 and lim.reason == "cable"
    lim.remote_ma = 10000
    assert lim.offer_ma() == 10000 and lim.reason == "remote"
    lim.balance_ma = 8000
    assert lim.offer_ma() == 8000


def test_tethered_board_has_no_cable_limit_and_invalid_pp_gives_zero():
    lim = make(max_current_a=32)
    lim.set_cable(UNKNOWN, UNKNOWN)
    assert lim.offer_ma() == 32000
    lim.set_cable(-2, UNKNOWN)  # PP open: no cable
    assert lim.offer_ma() == 0
    lim.set_cable(1000, UNKNOWN)  # between windows
    assert lim.offer_ma() == 0


def test_a_tethered_cable_rating_limits_a_board_without_pp_coding():
    # Issue 15 item 18: a tethered charger (every North American J1772 unit)
    # has no PP input; its cable's rating comes from the configuration.
    lim = make(max_current_a=80, hw_max_current_a=80, cable_max_current_a=48)
    lim.set_cable(UNKNOWN, UNKNOWN)
    assert lim.offer_ma() == 48000 and lim.reason == "cable"
    lim.set_cable(220, UNKNOWN)  # a PP reading too: the smaller of both
    assert lim.offer_ma() == 32000 and lim.reason == "cable"
    lim = make(max_current_a=80, hw_max_current_a=80)  # no rating configured: hardware and config decide
    lim.set_cable(UNKNOWN, UNKNOWN)
    assert lim.offer_ma() == 80000 and lim.reason == "hardware"


def test_below_six_amps_nothing_is_offered():
    lim = make(max_current_a=16)
    lim.remote_ma = 5900
    assert lim.offer_ma() == 0


def test_thermal_derating_steps_and_resume_threshold():
    lim = make(max_current_a=32)
    for temp, level, offer in ((400, T_NORMAL, 32000), (650, T_HALF, 16000), (680, T_QUARTER, 8000),
                               (670, T_QUARTER, 8000), (655, T_HALF, 16000), (640, T_HALF, 16000),
                               (620, T_NORMAL, 32000), (710, T_STOP, 0), (600, T_STOP, 0),
                               (549, T_NORMAL, 32000)):
        lim.update_thermal(temp, NO_TEMP)
        assert lim.thermal == level, temp
        assert lim.offer_ma() == offer, temp


def test_quarter_of_a_small_offer_pauses():
    lim = make(max_current_a=16)
    lim.update_thermal(690, NO_TEMP)
    assert lim.offer_ma() == 0  # 4 A < 6 A


def test_broken_temperature_sensor_stops_and_missing_one_does_not_derate():
    lim = make()
    lim.update_thermal(-500, NO_TEMP)
    assert lim.thermal == T_STOP
    lim.update_thermal(NO_TEMP, NO_TEMP)
    assert lim.thermal == T_NORMAL
