"""Network access for the firmware's MQTT link, shared by every board.

Owns the socket work the firmware may not do itself (it never imports
`socket`): DNS, a TCP connect with a timeout and TCP_NODELAY, and TLS
contexts; plus the real-time clock the link thread runs on (network timing is
wall time even when the control loop runs in simulated time). Boards expose
this module as `board.net`. The link calls these from its own thread only,
never from the control tick.
"""

import socket
import sys
import time

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
    """A certificate as DER bytes, from DER or PEM: MicroPython's mbedtls
    builds take DER in load_verify_locations (PEM gives "invalid cert")."""
    begin = data.find(b"-----BEGIN CERTIFICATE-----")
    if begin < 0:
        return data  # DER already
    from binascii import a2b_base64

    body = data[begin + 27 : data.find(b"-----END CERTIFICATE-----", begin)]
    return a2b_base64(b"".join(body.split()))


def tls_context(ca_path=None):
    """An SSLContext for the broker. With ca_path (PEM/DER file) the broker's
    certificate is verified; without it the link is encrypted but not
    authenticated (docs/mqtt.md)."""
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
    return ctx
