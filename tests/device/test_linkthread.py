# The reconnect loop both network links share (firmware/linkthread.py): the
# back-off grows while connections fail or drop at once, starts again only
# after a connection stayed up STABLE_MS, no TLS handshake while hold_tls is
# set; the OCPP link (firmware/ocpp.py) obeys it like the MQTT link does
# (tests/device/test_loop_timing.py, tests/host/test_link.py).
# timeout: 60
import _thread

import test_loop_timing
import tmpdirs

from firmware import linkthread
from firmware.backoff import Backoff


class _Clock:
    """ticks in simulated time: sleeping advances it, nothing waits."""

    def __init__(self):
        self.t = 0

    def ticks_ms(self):
        return self.t

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.t += ms


class _Scripted(linkthread.LinkThread):
    """A link whose connection lasts `up_ms` of its service rounds, then drops."""

    def __init__(self, up_ms, rounds):
        self._ticks = self._net = _Clock()
        self._lock = _thread.allocate_lock()
        self.backoff = Backoff(12345)
        self.stats = {"last_backoff_ms": 0}
        self.up_ms = up_ms
        self.rounds = rounds
        self.connects = 0
        self.failures_at_connect = []
        self.goodbye = False

    def _connect(self):
        self.connects += 1
        self.failures_at_connect.append(self.backoff.failures)
        if self.connects > self.rounds:
            self._stop_req = True
        self.connected = True
        self._t = self._ticks.t

    def _service(self):
        self._ticks.t += 100
        if self._ticks.t - self._t >= self.up_ms:
            raise OSError("dropped by the server")

    def _drop(self, err):
        self.connected = False

    def _goodbye(self):
        self.goodbye = True


def test_connections_dropped_right_after_connect_keep_the_backoff_growing():
    s = _Scripted(up_ms=100, rounds=5)
    s._run()
    assert s.failures_at_connect == [0, 1, 2, 3, 4, 5]
    assert s.goodbye and not s.running


def test_a_connection_up_for_the_stable_time_starts_the_backoff_again():
    s = _Scripted(up_ms=linkthread.STABLE_MS + 1000, rounds=3)
    s.backoff.failures = 6  # after a long outage
    s._run()
    assert s.failures_at_connect == [6, 1, 1, 1]  # reset while up, then one failure: the drop


def test_a_tls_link_waits_while_hold_tls_is_set_and_a_plain_one_does_not():
    for tls in (True, False):
        s = _Scripted(up_ms=100, rounds=0)
        s._tls = lambda tls=tls: tls
        s.hold_tls = True
        clock = s._ticks

        def sleep(ms, clock=clock, s=s):
            clock.t += ms
            if clock.t >= 5000:
                s._stop_req = True

        clock.sleep_ms = sleep
        s._run()
        assert s.connects == (0 if tls else 1), tls


def test_the_ocpp_link_makes_no_tls_handshake_while_the_contactor_is_closed():
    from firmware.config import defaults
    from firmware.ocpp import Ocpp

    d = tmpdirs.make("ocpp-hold")
    cfg = defaults()
    cfg["ocpp_url"] = "wss://127.0.0.1:9/ocpp/CP1"
    net = test_loop_timing.CountingNet()
    try:
        test_loop_timing.check_hold_tls(Ocpp(cfg, net, d), net)  # service() sets hold_tls while the contactor is closed
    finally:
        tmpdirs.remove(d)
