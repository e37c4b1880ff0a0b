# A scripted board for unit tests of the charger: every input is set directly
# by the test (pilot levels in mV, feedback, RCD...), every output recorded.
# The physics lives in sim/board.py; this one is for exact control. It keeps
# the whole board contract (hal/contract.py; tests/host/test_contract.py checks).

from hal import net
from sim import ticks as _t

PERIOD = 1 << 30  # a big int on an ESP32: only for start values (t & _t.MASK is small again)


class FakeMeter:
    def __init__(self):
        self.fault = None
        self.current_ma = 0

    def max_ma(self):
        return self.current_ma


class FakeBoard:
    name = "fake"
    data_dir = "/tmp"
    adc_channels = 3
    adc_burst_len = 64
    adc_rate_hz = 3200
    adc_full_scale = 4096
    net = net

    def __init__(self, start=PERIOD - 1000):
        self.t = start & _t.MASK  # starts 1 s before the ticks wrap, like an ESP32 might
        self.high_mv = 12000
        self.low_mv = None  # None: -12 V while PWM runs (healthy diode), else this
        self.pp = -1  # UNKNOWN: tethered
        self.feedback = -1  # UNKNOWN unless a test sets "follow"
        self.follow = False  # mirror contact follows the command (after no delay)
        self.welded = False
        self.rcd_trip = False
        self.rcd_responds = True
        self._rcd_test = False
        self.pe = -1
        self.temp = -32768
        self.duty = 0
        self.level = 0
        self.closed = False
        self.log = []  # (t, what, value)
        self.wall = None  # wall_time(): None until a test sets it
        self.adc_code = 2048  # every current-sense sample (mid-scale: no current)
        self.ua_per_count = 60000
        self.wdt_ms = 0
        self.wdt_feeds = 0
        self.led_mode = 0
        self.cause = "power_on"
        self.netif = net.HostIf()  # the host's network, as on the unix port

    # clock
    def ticks_ms(self):
        return self.t

    def ticks_diff(self, a, b):
        return _t.ticks_diff(a, b)

    def ticks_add(self, t, delta_ms):
        return _t.ticks_add(t, delta_ms)

    def advance(self, ms):
        self.t = _t.ticks_add(self.t, ms)

    def wait_tick(self, period_ms):
        self.advance(period_ms)

    def wall_time(self):
        return self.wall

    # outputs
    def pilot_pwm(self, duty_pm):
        self.duty = duty_pm
        self.log.append((self.t, "pwm", duty_pm))

    def pilot_steady(self, level):
        self.duty = 0
        self.level = level
        self.log.append((self.t, "steady", level))

    def contactor(self, closed):
        self.closed = closed
        self.log.append((self.t, "contactor", closed))

    def rcd_test(self, on):
        self._rcd_test = on

    phase_relay = True

    def phase_switch(self, phases):
        self.log.append((self.t, "phases", phases))

    def mains_read(self, out):
        return False

    # inputs
    def pilot_read(self, out):
        if self.duty == 0 and self.level == -1:
            out[0] = out[1] = -12000
            return
        out[0] = self.high_mv
        if self.duty:
            out[1] = -12000 if self.low_mv is None else self.low_mv
        else:
            out[1] = self.high_mv

    def pp_ohm(self):
        return self.pp

    def contactor_feedback(self):
        if self.follow:
            return 1 if (self.closed or self.welded) else 0
        return self.feedback

    def rcd_tripped(self):
        return self.rcd_trip or (self._rcd_test and self.rcd_responds)

    def pe_ok(self):
        return self.pe

    def set_wall_time(self, unix_s, ms=0):  # NTP (firmware/netup.py); tests set self.wall directly
        self.wall = unix_s

    def temp_dc(self):
        return self.temp

    def adc_burst(self, buf):
        for i in range(self.adc_burst_len * self.adc_channels):
            buf[i] = self.adc_code

    def adc_ua_per_count(self, channel):
        return self.ua_per_count

    # housekeeping
    def wdt_start(self, timeout_ms):
        self.wdt_ms = timeout_ms

    def wdt_feed(self):
        self.wdt_feeds += 1

    def led(self, mode):
        self.led_mode = mode

    def reset_cause(self):
        return self.cause

    def unique_id(self):
        return "fa4eb0a4d000"  # 12 hex digits, like an ESP32's factory MAC

    def safe(self):
        self.contactor(False)
        self.rcd_test(False)
        self.pilot_steady(1)

    # no OTA app partitions (sim/board.py emulates them)
    def ota_info(self):
        return None

    def ota_write(self, offset, buf):
        raise OSError(19)  # ENODEV

    def ota_read(self, offset, buf):
        raise OSError(19)

    def ota_set_boot(self):
        raise OSError(19)

    def ota_mark_valid(self):
        pass

    def reset(self):
        self.log.append((self.t, "reset", 1))


def run(ch, board, ms, step=10):
    """Tick the charger for ms milliseconds of board time."""
    for _ in range(ms // step):
        ch.tick()
        board.advance(step)


def first(board, what, value, since=None):
    """Time of the first log entry (what, value) at or after since."""
    for t, w, v in board.log:
        if w == what and v == value and (since is None or board.ticks_diff(t, since) >= 0):
            return t
    return None
