# heapsize: 48k
# Session tracker: ids, records, integer accounting of current and energy.
import gc
import json

from firmware.session import (
    CHECKPOINT_EVERY_MS,
    CHECKPOINT_EVERY_MWH,
    MAX_SAMPLE_MA,
    SessionTracker,
    to_json,
    valid_reason,
)

_PERIOD = 1 << 30  # an ESP32's ticks period


class _Clock:
    """Only what SessionTracker needs from the board: ticks_diff with the
    ESP32's wrap."""

    def ticks_diff(self, a, b):
        d = (a - b) & (_PERIOD - 1)
        if d >= _PERIOD // 2:
            d -= _PERIOD
        return d


def _tracker(boot=42):
    return SessionTracker(_Clock(), "evse1", boot)


def _small(t):
    for name in ("_acc_lo", "_acc_hi", "_t_lo", "_t_hi", "peak_ma", "energy_mwh"):
        v = getattr(t, name)
        if not (0 <= v < _PERIOD):
            return False
    return True


def test_24h_session_at_80a_every_100ms_keeps_small_ints_and_exact_mean_and_peak():
    t = _tracker()
    t.begin(0, None)
    half = range(12 * 3600 * 10)  # 12 h of 100 ms samples
    for _ in half:
        t.sample(80000, 3, 100)
    assert _small(t)
    for _ in half:
        t.sample(40000, 3, 100)
    assert _small(t)
    assert t.sampled_ms() == 24 * 3600 * 1000
    assert t.mean_ma() == 60000
    assert t.peak_ma == 80000
    t.end(24 * 3600 * 1000, None, 1324800000, "ev_unplugged")
    rec = t.record()
    assert rec["peak_a"] == 80.0
    assert rec["mean_a"] == 60.0
    assert rec["phases"] == 3


def test_sample_allocates_nothing_per_call():
    t = _tracker()
    t.begin(0, None)
    few = range(10)
    many = range(2000)

    def cost(r):
        gc.collect()
        gc.disable()
        a = gc.mem_alloc()
        for _ in r:
            t.sample(31999, 3, 100)
        b = gc.mem_alloc()
        gc.enable()
        return b - a

    cost(few)  # warm up
    assert cost(many) == cost(few)


def test_one_long_sample_is_chunked_and_counted_exactly():
    t = _tracker()
    t.begin(0, None)
    t.sample(80000, 1, 3600 * 1000)  # one hour in one call
    t.sample(0, 1, 3600 * 1000)
    assert _small(t)
    assert t.sampled_ms() == 7200 * 1000
    assert t.mean_ma() == 40000


def test_current_outside_range_is_clamped():
    t = _tracker()
    t.begin(0, None)
    t.sample(-500, 1, 100)
    t.sample(5000000, 1, 100)
    assert t.peak_ma == MAX_SAMPLE_MA
    assert t.mean_ma() == MAX_SAMPLE_MA // 2
    assert _small(t)


def test_samples_outside_a_session_are_ignored():
    t = _tracker()
    t.sample(16000, 1, 100)
    t.begin(0, None)
    t.sample(8000, 1, 100)
    assert t.peak_ma == 8000
    t.end(100, None, 1, "ev_stopped")
    t.sample(30000, 3, 100)
    assert t.peak_ma == 8000 and t.phases == 1


def test_ids_are_unique_per_session_and_across_boots():
    a = _tracker(boot=7)
    ids = [a.begin(0, None), a.begin(0, None)]
    b = _tracker(boot=8)
    ids.append(b.begin(0, None))
    assert ids == ["evse1-7-1", "evse1-7-2", "evse1-8-1"]


def test_record_with_wall_clock_has_every_field():
    t = _tracker()
    t.begin(1000, 1700000000, meter_start_mwh=5000000123, tag="04A1B2C3")
    t.sample(16000, 1, 60000)
    t.end(61000, 1700000060, 266667, "remote_stop", meter_stop_mwh=5000266790)
    rec = t.record()
    assert rec["id"] == "evse1-42-1"
    assert rec["start"] == 1700000000 and rec["end"] == 1700000060
    assert rec["energy_mwh"] == 266667 and rec["energy_wh"] == 266.667
    assert rec["meter_start_mwh"] == 5000000123 and rec["meter_start_wh"] == 5000000.123
    assert rec["meter_stop_mwh"] == 5000266790 and rec["meter_stop_wh"] == 5000266.79
    assert rec["peak_a"] == 16.0 and rec["mean_a"] == 16.0
    assert rec["phases"] == 1
    assert rec["reason"] == "remote_stop"
    assert rec["tag"] == "04A1B2C3"


def test_record_without_wall_clock_uses_boot_and_monotonic_ms():
    t = _tracker(boot=3)
    t.begin(500, None)
    t.end(9500, None, 0, "fault:rcd")
    rec = t.record()
    assert rec["start"] == {"boot": 3, "mono_ms": 500}
    assert rec["end"] == {"boot": 3, "mono_ms": 9500}
    assert rec["reason"] == "fault:rcd"
    assert rec["tag"] is None
    assert rec["meter_start_wh"] is None


def test_only_documented_end_reasons_are_accepted():
    for r in ("ev_unplugged", "ev_stopped", "remote_stop", "power_loss", "fault:weld"):
        assert valid_reason(r)
    for r in ("fault:", "unplugged", None, 3):
        assert not valid_reason(r)
    t = _tracker()
    t.begin(0, None)
    try:
        t.end(1, None, 0, "because")
        raised = False
    except ValueError:
        raised = True
    assert raised
    assert t.active


def test_to_json_writes_energy_as_exact_decimal_wh():
    t = _tracker()
    t.begin(0, 1700000000, meter_start_mwh=1234567891)
    t.end(1, 1700000001, 1000001, "ev_unplugged", meter_stop_mwh=1235567892)
    text = to_json(t.record())
    assert '"energy_wh": 1000.001' in text
    assert '"meter_start_wh": 1234567.891' in text
    assert '"meter_stop_wh": 1235567.892' in text
    back = json.loads(text)
    assert back["energy_mwh"] == 1000001 and back["id"] == "evse1-42-1"
    assert json.loads(to_json({"energy_mwh": None, "energy_wh": 0.0})) == {"energy_mwh": None, "energy_wh": None}


def test_checkpoint_is_due_after_energy_step_or_time_with_energy():
    t = _tracker()
    t.begin(_PERIOD - 1000, None)  # the ticks wrap during the session
    assert not t.checkpoint_due(_PERIOD - 900, CHECKPOINT_EVERY_MWH - 1)
    assert t.checkpoint_due(_PERIOD - 900, CHECKPOINT_EVERY_MWH)
    cp = t.checkpoint(_PERIOD - 900, None, CHECKPOINT_EVERY_MWH)
    assert cp["energy_mwh"] == CHECKPOINT_EVERY_MWH
    later = (_PERIOD - 900 + CHECKPOINT_EVERY_MS) & (_PERIOD - 1)
    assert not t.checkpoint_due(later, CHECKPOINT_EVERY_MWH)  # no energy since
    assert t.checkpoint_due(later, CHECKPOINT_EVERY_MWH + 1)
    assert not t.checkpoint_due(later - 1, CHECKPOINT_EVERY_MWH + 1)
