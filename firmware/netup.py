"""The board's network link and wall clock: bring-up, reconnects, NTP.

Owns: bringing the board's network interface up (`board.netif`: a WiFi
station joining `wifi_ssid` with `wifi_password`, or the board file's Ethernet
PHY), noticing when the link goes and starting a new attempt after a jittered
back-off (firmware/backoff.py), the link state and RSSI the status reports,
and the wall clock from SNTP (`ntp_host`), set once the link is up and again
every NTP_RESYNC_MS.

Never: runs in the control tick. poll() is one non-blocking step of a state
machine, called from the MQTT link's thread (firmware/link.py), or from a
small thread of its own when there is no broker (start()); only the driver's
start (netif.up()) and the NTP server's DNS lookup can block that thread.
Never prints, logs or reports the WiFi password. The loop reads `state` and
`rssi_dbm` (one-word attributes this thread writes).
"""

import os

from micropython import const

from firmware.backoff import Backoff, seed_for

# hal/contract.py NetIf.state() answers and NO_RSSI, repeated as consts
# (firmware/ reaches the board only through the object it is given).
_LINK_UP = const(2)
_LINK_FAILED = const(3)
_NO_RSSI = const(-128)

CONNECT_TIMEOUT_MS = const(30000)  # an attempt not up by then is restarted (after a back-off)
_POLL_MS = const(100)  # the network thread's step while the link is down
RSSI_EVERY_MS = const(10000)  # RSSI read this often while up
NTP_TIMEOUT_MS = const(3000)  # no answer by then: retry after a back-off
NTP_RESYNC_MS = const(3600000)  # 1 h; a crystal-clocked RTC drifts well under 1 s in that time
THREAD_STACK_BYTES = const(8192)  # own thread (no broker): DNS and UDP only, no TLS

# `state`: what the status reports as "net".
NONE = "none"  # nothing to bring up: a WiFi board without wifi_ssid (poll() says "up")
DOWN = "down"  # waiting for the next attempt (back-off)
CONNECTING = "connecting"
UP = "up"


class NetUp:
    POLL_MS = _POLL_MS

    def __init__(self, cfg, board):
        """board: its `netif` (hal/contract.py NetIf), `net` (the wall-clock
        ticks_ms/ticks_diff/sleep_ms of the network thread) and
        set_wall_time()."""
        self._board = board
        self._if = board.netif
        self._clock = board.net
        self._ssid = cfg.get("wifi_ssid") or ""
        self._password = cfg.get("wifi_password") or ""
        self._ntp_host = cfg.get("ntp_host") or ""
        extra = int.from_bytes(os.urandom(4), "little")
        self.backoff = Backoff(seed_for(cfg["id"], extra ^ 0x4E4554))  # not the link's sequence
        self._ntp_backoff = Backoff(seed_for(cfg["id"], extra ^ 0x4E5450))
        now = self._clock.ticks_ms()
        kind = self._if.kind
        self.state = NONE if kind == "wifi" and not self._ssid else (UP if kind == "host" else DOWN)
        self._t = now  # start of the current wait or attempt
        self._wait_ms = 0  # DOWN: the back-off before the next attempt
        self.rssi_dbm = None  # dBm while a WiFi link is up
        self._rssi_t = now
        self._ntp_t = now  # start of the NTP wait or request
        self._ntp_wait_ms = 0
        self._ntp_sent = False
        self._stop = False
        self.running = False
        # Counters for the status and the tests.
        self.ups = 0  # attempts started (netif.up() calls)
        self.connects = 0  # times the link came up
        self.drops = 0  # times an up link went away
        self.ntp_syncs = 0
        self.ntp_errors = 0
        self.last_error = None  # text; never holds the password

    # --- the state machine ------------------------------------------------------
    def poll(self):
        """One step; True while the link is up (or not managed here: NONE).
        Call it often (every few tens of ms while up, every POLL_MS while
        down) from one thread."""
        now = self._clock.ticks_ms()
        link = self._if.state()
        if link == _LINK_UP:
            if self.state != UP:
                self.state = UP
                self.connects += 1
                self.backoff.reset()
                self._read_rssi(now)
                if not self.ntp_syncs:
                    self._ntp_wait_ms = 0  # never set: ask at once
            self._keep(now)
            return True
        st = self.state
        if st == NONE:  # not ours to manage (none, or set up by the user's boot.py): the link may try
            self._keep(now)
            return True
        if st == UP:  # lost; the driver may get it back by itself within the timeout
            self.drops += 1
            self.rssi_dbm = None
            self._ntp_sent = False
            self.state = CONNECTING
            self._t = now
        elif st == CONNECTING:
            if link == _LINK_FAILED or self._clock.ticks_diff(now, self._t) >= CONNECT_TIMEOUT_MS:
                self.last_error = "link failed" if link == _LINK_FAILED else "link timeout"
                self._retry(now)
        elif self._clock.ticks_diff(now, self._t) >= self._wait_ms:  # DOWN: back-off over
            self.ups += 1
            self.state = CONNECTING
            self._t = now
            try:
                self._if.up(self._ssid, self._password)
            except Exception as e:  # noqa: BLE001 - a driver that will not start: try later
                self.last_error = "up: " + repr(e)
                self._retry(now)
        return False

    def _retry(self, now):
        self.state = DOWN
        self._t = now
        self._wait_ms = self.backoff.next_ms()

    def _keep(self, now):
        """While up: the RSSI now and then, and the clock."""
        c = self._clock
        if c.ticks_diff(now, self._rssi_t) >= RSSI_EVERY_MS:
            self._read_rssi(now)
        if not self._ntp_host:
            return
        if self._ntp_sent:
            try:
                answer = self._if.ntp_poll()
            except (OSError, ValueError) as e:
                self._ntp_failed(now, e)
                return
            if answer is None:
                if c.ticks_diff(now, self._ntp_t) >= NTP_TIMEOUT_MS:
                    self._ntp_failed(now, OSError("ntp: no answer"))
                return
            self._board.set_wall_time(answer[0], answer[1])
            self.ntp_syncs += 1
            self._ntp_backoff.reset()
            self._ntp_sent = False
            self._ntp_t = now
            self._ntp_wait_ms = NTP_RESYNC_MS
        elif c.ticks_diff(now, self._ntp_t) >= self._ntp_wait_ms:
            try:
                self._if.ntp_start(self._ntp_host)
            except OSError as e:
                self._ntp_failed(now, e)
                return
            self._ntp_sent = True
            self._ntp_t = now

    def _read_rssi(self, now):
        self._rssi_t = now
        r = self._if.rssi_dbm()
        self.rssi_dbm = None if r == _NO_RSSI else r

    def _ntp_failed(self, now, err):
        self.ntp_errors += 1
        self.last_error = repr(err)
        self._ntp_sent = False
        self._ntp_t = now
        self._ntp_wait_ms = min(NTP_RESYNC_MS, self._ntp_backoff.next_ms())

    # --- a thread of its own, when there is no MQTT link to run it -------------------
    def start(self):
        if self.running:
            return
        self.running = True
        start_thread(self._run, THREAD_STACK_BYTES)

    def _run(self):
        try:
            while not self._stop:
                self.poll()
                self._clock.sleep_ms(_POLL_MS)
        finally:
            self.running = False

    def stop(self):
        self._stop = True


def start_thread(fn, stack_bytes):
    """Run fn() in a new thread with its own stack size (the ESP32 takes it
    from the RAM beside the heap); the default size is put back after."""
    import _thread

    try:
        old = _thread.stack_size(stack_bytes)
    except Exception:  # noqa: BLE001 - a port without stack_size()
        old = None
    _thread.start_new_thread(fn, ())
    if old is not None:
        _thread.stack_size(old)
