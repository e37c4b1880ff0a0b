"""A small WebSocket client (RFC 6455) for the OCPP link.

Owns: the URL split (ws:// and wss://), the HTTP upgrade (Sec-WebSocket-Key
and its Accept checked, one subprotocol requested and checked in the answer,
HTTP Basic auth), client frames (always masked), server frames (unmasked,
fragmented messages reassembled, ping answered with pong, close answered
with close), and one size limit for a frame and for a whole message
(MAX_MESSAGE_BYTES: a bigger one is refused with close 1009).

Never: imports socket or ssl (sockets come from the board's hal/net.py, as
for the MQTT link), runs in the control tick, or waits without a timeout:
every socket operation has the timeout the link gave to connect(), and
recv() returns None when nothing arrives within its own timeout.
RAM: the module ~8 KB of heap after import (unix port, 64-bit); a
connection holds one receive buffer of the message being read (at most
MAX_MESSAGE_BYTES).
"""

import os
import select
from binascii import b2a_base64
from hashlib import sha1

from micropython import const

MAX_MESSAGE_BYTES = const(8192)  # one frame, or all fragments of one message
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_HEADER_MAX = const(4096)  # the whole HTTP answer to the upgrade
OP_CONT = const(0)
OP_TEXT = const(1)
OP_BINARY = const(2)
OP_CLOSE = const(8)
OP_PING = const(9)
OP_PONG = const(10)
CLOSE_NORMAL = const(1000)
CLOSE_PROTOCOL = const(1002)
CLOSE_DATA = const(1007)  # text that is not UTF-8
CLOSE_TOO_BIG = const(1009)


class WsError(Exception):
    """A protocol error: the link drops the connection and tries again later."""


class WsClosed(WsError):
    """The server closed the connection (args[0]: its close code or None)."""


def parse_url(url):
    """(secure, host, port, path) of a ws:// or wss:// URL. ValueError when
    it is something else. The path keeps everything after the host."""
    if url.startswith("ws://"):
        secure, rest, port = False, url[5:], 80
    elif url.startswith("wss://"):
        secure, rest, port = True, url[6:], 443
    else:
        raise ValueError("URL must start with ws:// or wss://")
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    if hostport.startswith("["):  # [v6 address]:port
        j = hostport.find("]")
        host, tail = hostport[1:j], hostport[j + 1 :]
    else:
        j = hostport.rfind(":")
        host, tail = (hostport, "") if j < 0 else (hostport[:j], hostport[j:])
    if tail:
        if not tail.startswith(":") or not tail[1:].isdigit():
            raise ValueError("bad port in URL")
        port = int(tail[1:])
        if not 0 < port < 65536:
            raise ValueError("bad port in URL")
    if not host:
        raise ValueError("no host in URL")
    return secure, host, port, path


def accept_key(key):
    """The Sec-WebSocket-Accept a server must answer to `key` (bytes)."""
    return b2a_base64(sha1(key + _GUID).digest())[:-1]


def basic_auth(user, password):
    """The value of an HTTP Basic Authorization header."""
    return b"Basic " + b2a_base64((user + ":" + password).encode())[:-1]


def frame_header(opcode, n, mask):
    """The header of one final, masked client frame of n payload bytes: FIN,
    `opcode`, the 7-bit, 16-bit or 64-bit length form, the 4-byte mask."""
    if n < 126:
        h = bytearray(6)
        h[1] = 0x80 | n
        i = 2
    elif n < 65536:
        h = bytearray(8)
        h[1] = 0x80 | 126
        h[2] = n >> 8
        h[3] = n & 0xFF
        i = 4
    else:
        h = bytearray(14)
        h[1] = 0x80 | 127
        for k in range(8):
            h[2 + k] = (n >> (56 - 8 * k)) & 0xFF
        i = 10
    h[0] = 0x80 | opcode
    h[i : i + 4] = mask
    return h


def encode_frame(opcode, payload, mask):
    """One final client frame: the header, then the payload masked with the 4-byte `mask`."""
    n = len(payload)
    h = frame_header(opcode, n, mask)
    i = len(h)
    out = bytearray(i + n)
    out[:i] = h
    for k in range(n):
        out[i + k] = payload[k] ^ mask[k & 3]
    return out


class WebSocket:
    """One client connection. Use from one thread only."""

    def __init__(self, sock):
        self.sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self.close_code = None  # the server's close code, once it closed
        self.frames = 0  # frames received: any of them shows the connection is alive

    # --- the handshake -----------------------------------------------------------
    @classmethod
    def connect(cls, net, url, protocol, timeout_s, password=None, user=None, ca=None, cert=None, key=None):
        """Open `url` with subprotocol `protocol`. net: the board's hal/net.py.
        With `password` the upgrade carries Basic auth (user: the last path
        segment, the charge point id, unless given). wss:// verifies the
        server against the CA file `ca` (without one: encrypted only) and,
        with the files `cert` and `key`, shows that client certificate.
        WsError when the server does not accept, OSError on network trouble."""
        secure, host, port, path = parse_url(url)
        raw = net.tcp_connect(host, port, timeout_s)
        try:
            sock = raw
            if secure:
                ctx = net.tls_context(ca or None, cert, key) if cert and key else net.tls_context(ca or None)
                sock = ctx.wrap_socket(raw, server_hostname=host)
            key = b2a_base64(os.urandom(16))[:-1]
            req = [
                b"GET ", path.encode(), b" HTTP/1.1\r\nHost: ", host.encode(),
                b"" if port == (443 if secure else 80) else b":%d" % port,
                b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ", key,
                b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ", protocol.encode(), b"\r\n",
            ]
            if password:
                if user is None:
                    user = path[path.rfind("/") + 1 :]
                req.append(b"Authorization: " + basic_auth(user, password) + b"\r\n")
            req.append(b"\r\n")
            sock.write(b"".join(req))
            ws = cls(sock)
            ws._check_answer(ws._read_header(), key, protocol.encode())
            return ws
        except BaseException:
            raw.close()
            raise

    def _read_header(self):
        buf = bytearray()
        while not buf.endswith(b"\r\n\r\n"):
            b = self.sock.read(1)  # byte by byte: nothing of the first frame is read ahead
            if not b:
                raise WsError("connection closed during the upgrade")
            buf += b
            if len(buf) > _HEADER_MAX:
                raise WsError("upgrade answer too long")
        return bytes(buf)

    @staticmethod
    def _check_answer(text, key, protocol):
        lines = text.split(b"\r\n")
        status = lines[0].split(b" ")
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.1"):
            raise WsError("not an HTTP answer")
        if status[1] != b"101":
            raise WsError("upgrade refused: HTTP " + status[1].decode())
        headers = {}
        for line in lines[1:]:
            i = line.find(b":")
            if i > 0:
                headers[line[:i].strip().lower()] = line[i + 1 :].strip()
        if headers.get(b"upgrade", b"").lower() != b"websocket":
            raise WsError("no Upgrade: websocket")
        if b"upgrade" not in headers.get(b"connection", b"").lower():
            raise WsError("no Connection: Upgrade")
        if headers.get(b"sec-websocket-accept") != accept_key(key):
            raise WsError("wrong Sec-WebSocket-Accept")
        if headers.get(b"sec-websocket-protocol") != protocol:
            raise WsError("server did not accept subprotocol " + protocol.decode())

    # --- frames --------------------------------------------------------------------------
    def _write(self, opcode, payload):
        self.sock.write(encode_frame(opcode, payload, os.urandom(4)))

    def ping(self):
        self._write(OP_PING, b"")

    def send(self, text):
        """Send one text message (str or UTF-8 bytes)."""
        self._write(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def _read_exact(self, n):
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.readinto(view[got:])
            if not k:
                raise WsClosed(None)  # the peer went away without a close frame
            got += k
        return buf

    def _frame(self):
        """(fin, opcode, payload) of the next frame. Raises on a protocol error
        after sending the matching close frame."""
        h = self._read_exact(2)
        self.frames += 1
        fin = h[0] & 0x80
        op = h[0] & 0x0F
        if h[0] & 0x70:
            self._fail(CLOSE_PROTOCOL, "reserved bits set")
        if h[1] & 0x80:
            self._fail(CLOSE_PROTOCOL, "server frames must not be masked")
        n = h[1] & 0x7F
        if n == 126:
            e = self._read_exact(2)
            n = e[0] << 8 | e[1]
        elif n == 127:
            e = self._read_exact(8)
            if e[0] or e[1] or e[2] or e[3]:
                self._fail(CLOSE_TOO_BIG, "frame too big")
            n = e[4] << 24 | e[5] << 16 | e[6] << 8 | e[7]  # may be a long int: compared, never stored
        if op >= 8 and (n > 125 or not fin):
            self._fail(CLOSE_PROTOCOL, "bad control frame")
        if n > MAX_MESSAGE_BYTES:
            self._fail(CLOSE_TOO_BIG, "frame too big")
        return fin, op, self._read_exact(n) if n else bytearray()

    def _fail(self, code, why):
        try:
            self.close(code)
        except Exception:  # noqa: BLE001 - it is broken anyway
            pass
        raise WsError(why)

    def recv(self, timeout_ms):
        """The next text message as str, or None when none is complete within
        timeout_ms (a ping alone is answered with a pong and gives None; a
        pong is counted in `frames` only). A binary message gives "" (not
        OCPP-J: the link answers it as malformed). A close from the server
        is answered and raised as WsClosed."""
        if not self._poller.poll(timeout_ms):
            return None
        fin, op, data = self._frame()  # once a frame has begun: the socket's io timeout
        parts = None
        kind = OP_TEXT
        while True:
            if op == OP_PING:
                self._write(OP_PONG, data)
            elif op == OP_CLOSE:
                code = data[0] << 8 | data[1] if len(data) >= 2 else None
                self.close_code = code
                try:
                    self._write(OP_CLOSE, data[:2])
                except OSError:
                    pass
                raise WsClosed(code)
            elif op == OP_CONT:
                if parts is None:
                    self._fail(CLOSE_PROTOCOL, "continuation without a start")
                parts.append(data)
                size = 0
                for p in parts:
                    size += len(p)
                if size > MAX_MESSAGE_BYTES:
                    self._fail(CLOSE_TOO_BIG, "message too big")
                if fin:
                    return self._text(parts[0] if len(parts) == 1 else b"".join(parts), kind)
            elif op == OP_TEXT or op == OP_BINARY:
                if parts is not None:
                    self._fail(CLOSE_PROTOCOL, "new message inside a fragmented one")
                if fin:
                    return self._text(data, op)
                parts = [data]
                kind = op
            elif op != OP_PONG:
                self._fail(CLOSE_PROTOCOL, "unknown opcode")
            if parts is None:
                return None  # a control frame on its own: no message yet
            fin, op, data = self._frame()  # the rest of a message: the io timeout

    def _text(self, data, op):
        if op == OP_BINARY:
            return ""  # OCPP-J is text only: an empty string is a malformed message
        try:
            return bytes(data).decode()
        except UnicodeError:
            self._fail(CLOSE_DATA, "text frame is not UTF-8")

    def close(self, code=CLOSE_NORMAL):
        """Send a close frame with `code` and close the socket."""
        try:
            self._write(OP_CLOSE, bytes((code >> 8, code & 0xFF)))
        finally:
            self.sock.close()
