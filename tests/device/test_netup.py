# The network link and the clock (firmware/netup.py) on the simulated board's
# fake interface (sim.board.SimNetIf), in a fake wall clock the test drives.
from firmware import config
from firmware import netup as nu
from firmware.backoff import BACKOFF_MIN_MS
from hal import contract
from sim.net import SimNetIf

PERIOD = 1 << 30
WIFI_PW = "correct horse battery staple"


class Clock:
    """The network thread's wall clock (board.net), starting near the wrap."""

    def __init__(self):
        self.t = PERIOD - 3000

    def ticks_ms(self):
        return self.t

    def ticks_diff(self, a, b):
        return ((a - b + PERIOD // 2) & (PERIOD - 1)) - PERIOD // 2

    def sleep_ms(self, ms):
        self.advance(ms)

    def advance(self, ms):
        self.t = (self.t + ms) & (PERIOD - 1)


class Board:
    """What NetUp needs of a board: netif, net (clock), set_wall_time. The
    fake interface measures its connect time in now_ms, the same clock."""

    def __init__(self, kind="wifi"):
        self.net = Clock()
        self.now_ms = 0
        self.netif = SimNetIf(self)
        self.netif.kind = kind
        self.wall = None

    def set_wall_time(self, unix_s, ms=0):
        self.wall = (unix_s, ms)

    def step(self, ms):
        self.now_ms += ms
        self.net.advance(ms)


def cfg(**kw):
    c, errors = config.validate(dict({"id": "bay-1", "wifi_ssid": "depot", "wifi_password": WIFI_PW}, **kw))
    assert errors == [], errors
    return c


def run(board, n, ms=nu.NetUp.POLL_MS, up=None):
    """poll() every ms for up to n steps; stops early when poll() == up."""
    for _ in range(n):
        r = up_now = board.netup.poll()
        if up is not None and r == up:
            return up_now
        board.step(ms)
    return None


def make(kind="wifi", **kw):
    b = Board(kind)
    b.netup = nu.NetUp(cfg(**kw), b)
    return b


def test_link_constants_are_the_contracts():
    with open("firmware/netup.py") as f:
        src = f.read()
    for name in ("LINK_UP", "LINK_FAILED", "NO_RSSI"):
        assert ("_%s = const(%d)" % (name, getattr(contract, name))) in src, name


def test_wifi_station_joins_the_configured_network_and_reports_rssi():
    b = make()
    b.netif.rssi = -71
    assert b.netup.state == nu.DOWN
    assert run(b, 100, up=True)
    n = b.netup
    assert n.state == nu.UP and n.connects == 1 and n.ups == 1
    assert (b.netif.ssid, b.netif.password) == ("depot", WIFI_PW)
    assert n.rssi_dbm == -71
    b.netif.rssi = -80  # RSSI is re-read every RSSI_EVERY_MS, not on every poll
    run(b, nu.RSSI_EVERY_MS // nu.NetUp.POLL_MS + 1)
    assert n.rssi_dbm == -80


def test_wifi_board_without_ssid_brings_nothing_up_and_leaves_the_link_free_to_try():
    b = make(wifi_ssid="")
    run(b, 50)
    assert b.netup.state == nu.NONE and b.netif.ups == 0
    assert b.netup.poll() is True  # WiFi set up elsewhere (a user's boot.py) still reaches the broker


def test_ethernet_needs_no_ssid_and_has_no_rssi():
    b = make("eth", wifi_ssid="")
    assert run(b, 100, up=True)
    assert b.netif.ups == 1 and b.netup.rssi_dbm is None


def test_host_network_is_up_without_bring_up():
    b = make("host")
    assert b.netup.state == nu.UP  # also before the first poll (a simulated board without a broker)
    assert b.netup.poll() is True and b.netif.ups == 0


def test_failed_attempts_back_off_with_full_jitter_and_grow():
    b = make()
    b.netif.fail = True  # wrong password: every attempt fails at once
    starts = []
    last = 0
    for _ in range(12000):  # 20 simulated minutes at 100 ms
        b.netup.poll()
        if b.netif.ups != last:
            last = b.netif.ups
            starts.append(b.now_ms)
        b.step(nu.NetUp.POLL_MS)
    assert b.netup.state != nu.UP and b.netup.last_error == "link failed"
    gaps = [starts[i + 1] - starts[i] for i in range(len(starts) - 1)]
    assert len(gaps) >= 8
    for i, g in enumerate(gaps):  # n-th failure: uniform in [0, 1 s * 2^n], plus poll granularity
        assert g <= min(300000, BACKOFF_MIN_MS << i) + 2 * nu.NetUp.POLL_MS, (i, g)
    assert len(set(gaps)) > 3  # jittered, not a fixed schedule
    assert max(gaps[6:]) > 8000  # and growing: not hammering the access point


def test_an_attempt_that_never_completes_is_restarted_after_the_timeout():
    b = make()
    b.netif.reachable = False
    run(b, nu.CONNECT_TIMEOUT_MS // nu.NetUp.POLL_MS + 1)  # the last poll is the one at the timeout
    assert b.netup.last_error == "link timeout" and b.netif.ups == 1
    run(b, 1000 // nu.NetUp.POLL_MS + 2)  # the back-off after one failure is at most 1 s
    assert b.netif.ups == 2
    b.netif.reachable = True
    assert run(b, 100, up=True)


def test_a_lost_link_is_noticed_and_brought_up_again():
    b = make()
    assert run(b, 100, up=True)
    b.netif.drop()  # access point gone
    assert b.netup.poll() is False
    assert b.netup.drops == 1 and b.netup.rssi_dbm is None
    assert run(b, 3000, up=True)
    assert b.netup.connects == 2 and b.netif.ups == 2


def test_driver_exception_on_up_is_a_failed_attempt_not_a_crash():
    b = make()

    def broken(ssid, password):
        raise OSError(12)  # ENOMEM from the driver

    b.netif.up = broken
    run(b, 50)
    assert b.netup.state in (nu.DOWN, nu.CONNECTING) and "up: " in b.netup.last_error
    assert b.netup.ups >= 2  # retried after a back-off


def test_clock_is_set_from_ntp_once_up_and_re_synced():
    b = make(ntp_host="time.example:1123")
    b.netif.ntp_server(1767225600)
    assert run(b, 100, up=True)
    b.netup.poll()  # the answer to the request sent when the link came up
    assert b.netif.ntp_host == "time.example:1123"
    assert b.wall is not None and abs(b.wall[0] - 1767225600) <= 1
    assert b.netup.ntp_syncs == 1
    run(b, 100)
    assert b.netif.ntp_requests == 1  # no request storm while the clock is fresh
    b.step(nu.NTP_RESYNC_MS)
    run(b, 3)
    assert b.netif.ntp_requests == 2 and b.netup.ntp_syncs == 2


def test_silent_ntp_server_is_retried_with_back_off_and_the_clock_left_alone():
    b = make()
    assert run(b, 100, up=True)
    run(b, 3000)  # 5 minutes; the fake server never answers
    n = b.netif.ntp_requests
    assert b.wall is None and b.netup.ntp_errors >= 3
    assert 3 <= n < 40, n  # retried, but not every poll
    b.netif.ntp_server(1767225600)
    run(b, 3500)
    assert b.wall is not None and b.netup.ntp_syncs == 1


def test_no_ntp_host_means_no_requests():
    b = make(ntp_host="")
    b.netif.ntp_server(1767225600)
    run(b, 200)
    assert b.netif.ntp_requests == 0 and b.wall is None


def test_wifi_settings_are_validated_without_echoing_the_password():
    good, errors = config.validate({"wifi_ssid": "x" * 32, "wifi_password": "p" * 63})
    assert errors == []
    assert config.defaults()["ntp_host"] == "pool.ntp.org" and config.defaults()["wifi_ssid"] == ""
    for bad in ("short", "s" * 64, "\u00e9" * 32):  # < 8, > 63 characters, > 63 bytes
        cfg_, errors = config.validate({"wifi_password": bad})
        assert cfg_["wifi_password"] == "" and len(errors) == 1 and "wifi_password" in errors[0]
        assert bad not in errors[0]
    cfg_, errors = config.validate({"wifi_ssid": "\u00e9" * 17})  # 34 bytes: too long for 802.11
    assert cfg_["wifi_ssid"] == "" and errors
    cfg_, errors = config.validate({"wifi_password": 12345678})
    assert errors and "12345678" not in errors[0]
    assert config.validate({"wifi_password": ""})[1] == []  # open network


def test_failure_texts_never_hold_the_password():
    b = make()
    b.netif.fail = True
    run(b, 100)
    b.netif.fail = False
    run(b, 3000, up=True)
    for v in (b.netup.last_error, repr(b.netup.__dict__.get("last_error"))):
        assert WIFI_PW not in str(v)


class CountingNet:
    """The link's net (hal/net.py) with a broker that is never reachable:
    counts the TCP connects the link attempts."""

    def __init__(self):
        from hal import net

        self._net = net
        self.connects = 0

    def ticks_ms(self):
        return self._net.ticks_ms()

    def ticks_diff(self, a, b):
        return self._net.ticks_diff(a, b)

    def sleep_ms(self, ms):
        self._net.sleep_ms(ms)

    def tcp_connect(self, host, port, timeout_s):
        self.connects += 1
        raise OSError(111)  # ECONNREFUSED


def _wait(cond, net, ms):
    t0 = net.ticks_ms()
    while not cond() and net.ticks_diff(net.ticks_ms(), t0) < ms:
        net.sleep_ms(10)
    return cond()


def test_link_thread_brings_the_network_up_before_it_tries_the_broker():
    from firmware.link import Link

    net = CountingNet()
    b = Board()
    b.net = net  # the link thread's real clock drives NetUp too
    b.netif.reachable = False
    c = cfg(mqtt_host="broker.invalid")
    link = Link(c, net, net)
    link.netup = nu.NetUp(c, b)
    link.start()
    try:
        assert _wait(lambda: b.netif.ups == 1, net, 5000)
        net.sleep_ms(300)
        assert net.connects == 0 and link.netup.state == nu.CONNECTING  # no broker attempt without a network
        b.now_ms += b.netif.connect_ms  # associated, DHCP done
        b.netif.reachable = True
        assert _wait(lambda: net.connects >= 1, net, 5000)
        assert link.netup.state == nu.UP and not link.connected
        b.netif.drop()  # and again: the network first
        assert _wait(lambda: link.netup.state != nu.UP, net, 5000)
        n = net.connects
        net.sleep_ms(300)
        assert net.connects == n
    finally:
        assert link.stop(3000)
