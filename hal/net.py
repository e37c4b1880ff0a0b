"""Network access for the firmware's MQTT link and network thread.

Owns the socket work the firmware may not do itself (it never imports
`socket` or `network`): DNS, a TCP connect with a timeout and TCP_NODELAY,
TLS contexts, SNTP over UDP; the real-time clock the link thread runs on
(network timing is wall time even when the control loop runs in simulated
time); and the network interfaces of hal/contract.py's NetIf: `HostIf` (the
unix port: the computer's network), `WlanIf` (ESP32 WiFi station) and `LanIf`
(ESP32 Ethernet with an RMII PHY such as the LAN8720). Boards expose this
module as `board.net` and one interface as `board.netif`. Everything here
runs in the network thread only, never in the control tick.
"""

import socket
import sys
import time

from hal.contract import LINK_CONNECTING, LINK_DOWN, LINK_FAILED, LINK_UP, NO_RSSI

_IPPROTO_TCP = 6  # the unix port has no socket constants for these
_TCP_NODELAY = 1

# Stack of the thread that calls these. An ESP32 resolves names in lwIP's own
# task: 16 KB covers the TLS handshake. On the unix port glibc's getaddrinfo
# runs on the caller's stack and needs more than 16 KB for any name it must
# ask DNS about (a 16 KB thread dies with SIGSEGV; 24 KB was enough here).
LINK_STACK_BYTES = 65536 if sys.platform in ("linux", "darwin") else 16384


def ticks_ms():
    return time.ticks_ms()


def ticks_diff(a, b):
    return time.ticks_diff(a, b)


def sleep_ms(ms):
    time.sleep_ms(ms)


def tcp_connect(host, port, timeout_s):
    """A connected TCP socket with a timeout on connect and on every later
    read/write, and Nagle off (a QoS 1 publish costs ~44 ms with it on).
    DNS has no timeout API: it blocks only the link thread."""
    addr = socket.getaddrinfo(host, port)[0][-1]
    s = socket.socket()
    try:
        s.settimeout(timeout_s)
        try:
            s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except OSError:
            pass  # a port without TCP_NODELAY only gets slower QoS 1 round trips
        s.connect(addr)
    except BaseException:
        s.close()
        raise
    return s


def der_certificate(data):
    """A certificate (or a private key) as DER bytes, from DER or PEM (the
    first block): MicroPython's mbedtls builds take DER (PEM gives "invalid
    cert" where PEM parsing is left out)."""
    begin = data.find(b"-----BEGIN ")
    if begin < 0:
        return data  # DER already
    from binascii import a2b_base64

    start = data.find(b"-----", begin + 11) + 5  # the end of the BEGIN line's label
    body = data[start : data.find(b"-----END ", start)]
    return a2b_base64(b"".join(body.split()))


def tls_context(ca_path=None, cert_path=None, key_path=None):
    """An SSLContext for a client (MQTT broker, OCPP central system). With
    ca_path (PEM/DER file) the server's certificate is verified; without it
    the link is encrypted but not authenticated (docs/mqtt.md). With
    cert_path and key_path (PEM/DER files) the client shows that certificate
    (OCPP security profile 3, docs/ocpp.md)."""
    try:
        import ssl
    except ImportError:
        import tls as ssl  # type: ignore[no-redef]  # MicroPython before ssl existed
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # verify_mode is documented for MicroPython's SSLContext but missing from
    # the ESP32 stubs, hence the ignores.
    if ca_path:
        with open(ca_path, "rb") as f:
            der = der_certificate(f.read())
        try:
            ctx.load_verify_locations(cadata=der)  # the ssl module
        except TypeError:
            ctx.load_verify_locations(der)  # the tls module: cadata only, positional
        ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]
    else:
        ctx.verify_mode = ssl.CERT_NONE  # type: ignore[attr-defined]
    if cert_path and key_path:
        with open(cert_path, "rb") as f:
            cert = der_certificate(f.read())
        with open(key_path, "rb") as f:
            key = der_certificate(f.read())
        ctx.load_cert_chain(cert, key)  # bytes: both the ssl module and the tls module take them
    return ctx


# --- SNTP (RFC 4330): one 48-byte request, one 48-byte answer ------------------

NTP_PORT = 123
_NTP_TO_UNIX_S = 2208988800  # 1900-01-01 .. 1970-01-01
_NTP_2024_S = 3913056000  # 2024-01-01 as NTP seconds: anything earlier is the next era (2036 wrap)
_EAGAIN = 11  # errno of a non-blocking recv with nothing to read (Linux and lwIP)


def ntp_packet(nonce):
    """A client request (version 4, mode 3) whose transmit timestamp is the
    8-byte nonce: the server copies it into its answer's originate field,
    which is how an answer is matched to this request."""
    p = bytearray(48)
    p[0] = 0x23  # LI 0, VN 4, mode 3 (client)
    p[40:48] = nonce
    return p


def ntp_parse(data, nonce):
    """(unix_s, ms) from a server answer to the request carrying `nonce`.
    ValueError when it is short, not from a server (mode 4), from an
    unsynchronised server (leap indicator 3, or stratum 0: a kiss-o'-death
    packet), not an answer to our request, or without a transmit time."""
    if len(data) < 48:
        raise ValueError("ntp: short reply")
    if data[0] & 7 != 4:
        raise ValueError("ntp: not a server reply")
    if data[0] >> 6 == 3 or not 1 <= data[1] <= 15:
        raise ValueError("ntp: server not synchronised")
    if bytes(data[24:32]) != bytes(nonce):
        raise ValueError("ntp: reply to another request")
    secs = int.from_bytes(data[40:44], "big")
    frac = int.from_bytes(data[44:48], "big")
    if secs == 0 and frac == 0:
        raise ValueError("ntp: no transmit time")
    if secs < _NTP_2024_S:
        secs += 0x100000000  # after the 2036 wrap of the 32-bit seconds
    return secs - _NTP_TO_UNIX_S, ((frac >> 22) * 1000) >> 10  # ms: 10 bits of the fraction


def split_host_port(text, port):
    """"host" or "host:port" -> (host, port)."""
    i = text.rfind(":")
    if i > 0 and text[i + 1 :].isdigit():
        return text[:i], int(text[i + 1 :])
    return text, port


class HostIf:
    """NetIf (hal/contract.py) of a computer: always up, nothing to bring up;
    the SNTP client every interface shares."""

    kind = "host"

    def __init__(self):
        self._ntp = None  # the UDP socket of the request in flight
        self._nonce = b""

    def up(self, ssid, password):
        pass

    def down(self):
        self._ntp_close()

    def state(self):
        return LINK_UP

    def rssi_dbm(self):
        return NO_RSSI

    def ntp_start(self, host):
        import os

        self._ntp_close()
        host, port = split_host_port(host, NTP_PORT)
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        s = socket.socket(ai[0], socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            self._nonce = os.urandom(8)
            s.sendto(ntp_packet(self._nonce), ai[-1])
        except BaseException:
            s.close()
            raise
        self._ntp = s

    def ntp_poll(self):
        s = self._ntp
        if s is None:
            return None
        try:
            data = s.recv(64)
        except OSError as e:
            if e.errno == _EAGAIN:
                return None
            self._ntp_close()
            raise
        self._ntp_close()
        return ntp_parse(data, self._nonce)

    def _ntp_close(self):
        s = self._ntp
        self._ntp = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass


# The ESP32 WiFi driver's own reconnects after a drop before status() reports
# the failure; the firmware then restarts the attempt after a jittered
# back-off (firmware/netup.py). The driver's default is to retry forever at
# full speed, which hides the failure and hammers the access point.
DRIVER_RECONNECTS = 3


class WlanIf(HostIf):
    """NetIf of the ESP32 WiFi station (`network.WLAN(STA_IF)`). connect()
    returns at once; status() is a small int from the driver (no I/O)."""

    kind = "wifi"

    def __init__(self):
        super().__init__()
        self._w = None
        self._want = False  # a connect was requested and not taken back

    def up(self, ssid, password):
        import network

        w = self._w
        if w is None:
            w = network.WLAN(network.STA_IF)
            self._got_ip = network.STAT_GOT_IP
            self._connecting = network.STAT_CONNECTING
            self._idle = network.STAT_IDLE
            self._w = w
        w.active(True)  # starts the driver (a few hundred ms the first time)
        try:
            w.config(reconnects=DRIVER_RECONNECTS)
        except (OSError, ValueError):
            pass  # an older port without the setting: the driver retries itself
        try:
            w.disconnect()  # restart an attempt under way or failed
        except OSError:
            pass
        if password:
            w.connect(ssid, password)
        else:
            w.connect(ssid)  # an open network
        self._want = True

    def down(self):
        super().down()
        self._want = False
        w = self._w
        if w is None:
            return
        try:
            w.disconnect()
            w.active(False)
        except OSError:
            pass

    def state(self):
        w = self._w
        if w is None:
            return LINK_DOWN
        s = w.status()
        if s == self._got_ip:
            return LINK_UP
        if s == self._connecting:
            return LINK_CONNECTING
        if s == self._idle:
            # Also what the driver says after our own disconnect() until the
            # new attempt produces an event: connecting, if we asked for it.
            return LINK_CONNECTING if self._want else LINK_DOWN
        return LINK_FAILED  # a driver reason: no AP found, wrong password, beacon timeout...

    def rssi_dbm(self):
        w = self._w
        if w is None or w.status() != self._got_ip:
            return NO_RSSI
        try:
            return w.status("rssi")
        except (OSError, ValueError):
            return NO_RSSI


class LanIf(HostIf):
    """NetIf of an ESP32 RMII Ethernet PHY (`network.LAN`), from the board
    file's validated `eth` block (hal/boardfile.py, hal/boards/README.md)."""

    kind = "eth"

    def __init__(self, eth):
        super().__init__()
        self._eth = eth
        self._lan = None

    def up(self, ssid, password):
        import machine
        import network

        lan = self._lan
        if lan is None:
            e = self._eth
            Pin = machine.Pin
            kw: dict = {
                "mdc": Pin(e["mdc"]),
                "mdio": Pin(e["mdio"]),
                "phy_type": getattr(network, "PHY_" + e["phy"]),
                "phy_addr": e["phy_addr"],
                "ref_clk": Pin(e["clock_pin"]),
                "ref_clk_mode": Pin.IN if e["clock_mode"] == "in" else Pin.OUT,
            }
            if e["power_pin"] is not None:
                kw["power"] = Pin(e["power_pin"])  # the driver powers the PHY, then waits 100 ms
            lan = network.LAN(0, **kw)
            self._got_ip = network.ETH_GOT_IP
            self._no_link = network.ETH_DISCONNECTED
            self._lan = lan
        if not lan.active():
            lan.active(True)  # link negotiation and DHCP go on in the background

    def down(self):
        super().down()
        lan = self._lan
        if lan is None:
            return
        try:
            lan.active(False)
        except OSError:
            pass

    def state(self):
        lan = self._lan
        if lan is None or not lan.active():
            return LINK_DOWN
        s = lan.status()
        if s == self._got_ip:
            return LINK_UP
        if s == self._no_link:
            return LINK_FAILED  # no cable, or the switch port is down
        return LINK_CONNECTING
