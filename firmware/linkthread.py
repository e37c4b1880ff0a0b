"""The reconnect loop shared by the network links (MQTT: firmware/link.py,
OCPP: firmware/ocpp.py), each in its own thread.

Owns the shape both links have: while the network is down (firmware/netup.py)
no connection; connect, and on any failure wait a jittered back-off
(firmware/backoff.py) before the next attempt; the back-off starts again
from its minimum only after a connection stayed up STABLE_MS (a server that
drops us right after the handshake gets no reconnect storm); no TLS
handshake while `hold_tls` is set (the control loop sets it while the
contactor is closed: the handshake holds the interpreter for 1-2 s on an
ESP32, extmod/modtls_mbedtls.c); a garbage collection right before each
connect while the contactor is open, so that the connection's long-lived
objects (client, TLS context and socket, poller) take the lowest free
blocks instead of landing above the garbage of the moment and splitting the
heap's large free block for as long as the connection lasts (a 24 h soak on
the ESP32-faithful interpreter found 10.8 KB left of it without, with 16 KB
required: tests/host/test_esp32_board.py); a stop() that ends the thread.

A link subclasses LinkThread and provides _connect() (raises on failure,
sets `connected`), _service() (one round of traffic: raises when the
connection is lost), _drop(err) (forget the connection), _goodbye() (a
clean close at stop) and _tls() (whether its connection uses TLS). It sets
`_net` (sleep_ms), `_ticks` (ticks_ms/ticks_diff), `backoff`, `stats` and
`_lock` before start().
Never: holds the lock across I/O; runs in the control tick.
"""

import gc

from micropython import const

from firmware.netup import start_thread

# A connection counts as healthy, and the back-off starts again from its
# minimum, only after it stayed up this long.
STABLE_MS = const(30000)
HOLD_POLL_MS = const(100)  # how often a held TLS link looks again


class LinkThread:
    netup = None  # firmware/netup.NetUp: polled by the thread; no connection while the network is down
    hold_tls = False  # set by the control loop while the contactor is closed: no TLS handshake then
    running = False
    connected = False
    _stop_req = False
    _up_t = 0  # ticks_ms when the current connection came up

    def _tls(self):
        return False

    def _goodbye(self):
        pass

    # ---- the loop's side ---------------------------------------------------------
    def start_thread(self, stack_bytes):
        if self.running:
            return
        self.running = True
        start_thread(self._run, stack_bytes)

    def stop(self, timeout_ms=2000):
        """Ask the thread to close and end; wait up to timeout_ms. True when it has ended."""
        with self._lock:
            self._stop_req = True
        clock = self._ticks
        t0 = clock.ticks_ms()
        while self.running and clock.ticks_diff(clock.ticks_ms(), t0) < timeout_ms:
            self._net.sleep_ms(5)
        return not self.running

    # ---- the thread ----------------------------------------------------------------
    def _run(self):
        wait_ms = 0
        try:
            while not self._stop_req:
                if self.netup is not None and not self.netup.poll():
                    if self.connected:
                        self._drop(OSError("network down"))
                    if not self._sleep(self.netup.POLL_MS):
                        break
                    continue
                if not self.connected:
                    if wait_ms:
                        if not self._sleep(wait_ms):
                            break
                        wait_ms = 0
                        continue  # look at the network again: it may have gone meanwhile
                    if self.hold_tls and self._tls():  # see hold_tls
                        if not self._sleep(HOLD_POLL_MS):
                            break
                        continue
                    if not self.hold_tls:
                        gc.collect()  # see the module's doc: the connection's objects land low
                    try:
                        self._connect()
                        self._up_t = self._ticks.ticks_ms()
                    except Exception as e:  # noqa: BLE001 - any failure means: try later
                        self._drop(e)
                        wait_ms = self._next_backoff()
                    continue
                try:
                    self._service()
                    self._stable()
                except Exception as e:  # noqa: BLE001
                    self._drop(e)
                    wait_ms = self._next_backoff()
            self._goodbye()
        finally:
            self.connected = False
            self.running = False

    def _stable(self):
        """The back-off starts again once this connection proved itself."""
        if self.backoff.failures and self._ticks.ticks_diff(self._ticks.ticks_ms(), self._up_t) >= STABLE_MS:
            self.backoff.reset()

    def _next_backoff(self):
        ms = self.backoff.next_ms()
        self.stats["last_backoff_ms"] = ms
        return ms

    def _sleep(self, ms):
        """Sleep in short steps; False when stop() was called meanwhile."""
        clock = self._ticks
        t0 = clock.ticks_ms()
        while clock.ticks_diff(clock.ticks_ms(), t0) < ms:
            if self._stop_req:
                return False
            if self.netup is not None:
                self.netup.poll()  # the network and the clock are kept up during a back-off too
            self._net.sleep_ms(min(50, ms))
        return not self._stop_req
