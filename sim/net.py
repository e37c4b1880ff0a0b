"""The simulated board's network interface (hal/contract.py NetIf), a fake.

Owns a link whose state, RSSI and timing a test controls, and a fake NTP
server that answers in the simulated world's time. Never touches a real
network: the MQTT link's sockets still come from hal/net.py. Its clock is the
board's virtual `now_ms`.
"""

from hal.contract import LINK_CONNECTING, LINK_DOWN, LINK_FAILED, LINK_UP, NO_RSSI


class SimNetIf:
    """A fake network interface (hal/contract.py NetIf) with a controllable
    link and a fake NTP server that answers in the simulated world's time.

        netif.kind = "wifi" | "eth" | "host"
        netif.reachable = False     # up() starts attempts that never succeed
        netif.fail = True           # ... that fail at once (wrong password)
        netif.connect_ms = 800      # virtual ms from up() to LINK_UP
        netif.drop()                # the link goes away (AP lost, cable pulled)
        netif.rssi = -67
        netif.ntp_server(1767225600)  # answer with this time at this moment; None: silent
    Read-outs: ups (calls of up()), ssid, password, ntp_requests, ntp_host.
    Its default is the host's: always up, no NTP answer (the wall clock stays
    unset, as the scenario library expects). Safe to call from the link
    thread: every field is one word.
    """

    def __init__(self, board):
        self._board = board
        self.kind = "host"
        self.reachable = True
        self.fail = False
        self.connect_ms = 500
        self.rssi = -60
        self.ups = 0
        self.ssid = None
        self.password = None
        self.ntp_requests = 0
        self.ntp_host = None
        self._link = None  # None: never started (up for "host", down otherwise)
        self._up_at = 0  # virtual ms of the last up()
        self._ntp = None  # (server unix ms at reference, board now_ms at reference)
        self._asked = False

    def up(self, ssid, password):
        self.ups += 1
        self.ssid = ssid
        self.password = password
        self._up_at = self._board.now_ms
        self._link = LINK_CONNECTING

    def down(self):
        self._link = LINK_DOWN

    def drop(self):
        """The link is lost (the firmware must notice and bring it up again)."""
        self._link = LINK_FAILED

    def state(self):
        link = self._link
        if link is None:
            return LINK_UP if self.kind == "host" else LINK_DOWN
        if link == LINK_CONNECTING:
            if self.fail:
                link = LINK_FAILED
            elif self.reachable and self._board.now_ms - self._up_at >= self.connect_ms:
                link = LINK_UP
            self._link = link
        return link

    def rssi_dbm(self):
        return self.rssi if self.kind == "wifi" and self.state() == LINK_UP else NO_RSSI

    def ntp_server(self, unix_s):
        self._ntp = None if unix_s is None else (unix_s * 1000, self._board.now_ms)

    def ntp_start(self, host):
        if self.state() != LINK_UP:
            raise OSError(113)  # EHOSTUNREACH
        self.ntp_requests += 1
        self.ntp_host = host
        self._asked = True

    def ntp_poll(self):
        ref = self._ntp
        if not self._asked or ref is None:
            return None
        self._asked = False
        t = ref[0] + self._board.now_ms - ref[1]
        return t // 1000, t % 1000
