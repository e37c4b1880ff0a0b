# The standard's numbers: pilot windows, duty formula, PP coding (shared/iec61851.md).
from firmware import iec61851 as iec


def test_nominal_levels_classify_to_their_states():
    assert iec.classify(12000) == iec.P_A
    assert iec.classify(9000) == iec.P_B
    assert iec.classify(6000) == iec.P_C
    assert iec.classify(3000) == iec.P_D
    assert iec.classify(0) == iec.P_E
    assert iec.classify(-12000) == iec.P_F


def test_window_edges_are_inclusive_and_gaps_are_invalid():
    for mv, want in ((11000, iec.P_A), (13000, iec.P_A), (8000, iec.P_B), (10000, iec.P_B),
                     (5000, iec.P_C), (7000, iec.P_C), (2000, iec.P_D), (4000, iec.P_D),
                     (-1000, iec.P_E), (1000, iec.P_E), (-11000, iec.P_F), (-13000, iec.P_F)):
        assert iec.classify(mv) == want, mv
    for mv in (10500, 7500, 4500, 1500, -5000, 13001, -13001, 10001, 7001):
        assert iec.classify(mv) == iec.P_INVALID, mv


def test_duty_for_offer_follows_both_ranges_and_never_exceeds_the_offer():
    assert iec.duty_pm(6000) == 100  # 10 %
    assert iec.duty_pm(16000) == 266  # 26.6 %: rounds down
    assert iec.duty_pm(32000) == 533
    assert iec.duty_pm(51000) == 850
    assert iec.duty_pm(80000) == 960
    assert iec.duty_pm(5999) == 0
    for ma in range(6000, 80001, 250):
        pm = iec.duty_pm(ma)
        assert iec.offer_ma_for_duty(pm) <= ma, ma
        # Within one duty step, except at the standard's seam at 85 % (51 A by the
        # low formula, 52.5 A by the high one), where the EV decodes less: safe.
        slack = 1800 if 51000 < ma <= 52500 else 250
        assert ma - iec.offer_ma_for_duty(pm) <= slack, ma


def test_ev_decoding_of_duty_matches_the_table():
    assert iec.offer_ma_for_duty(50) == 0  # 5 %: digital communication, no analogue offer
    assert iec.offer_ma_for_duty(75) == 0  # 7.5 %: not allowed
    assert iec.offer_ma_for_duty(90) == 6000
    assert iec.offer_ma_for_duty(900) == 65000
    assert iec.offer_ma_for_duty(965) == 80000
    assert iec.offer_ma_for_duty(980) == 0


def test_pp_resistors_map_to_cable_capacity_and_the_rest_is_invalid():
    assert iec.pp_limit_ma(1500) == 13000
    assert iec.pp_limit_ma(680) == 20000  # not 16 A
    assert iec.pp_limit_ma(220) == 32000
    assert iec.pp_limit_ma(100) == 63000
    for ohm in (0, 50, 60, 79, 150, 350, 1000, 3000, 4600, -2):
        assert iec.pp_limit_ma(ohm) == 0, ohm
