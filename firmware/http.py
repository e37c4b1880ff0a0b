"""A small HTTP/1.1 client for firmware downloads and diagnostics uploads.

Owns: one request over hal/net.py sockets (http:// and https://, the server
verified against a CA file like the OCPP link), redirects (at most
MAX_REDIRECTS, http(s) only), the status line and headers (bounded), and a
body read in pieces the caller sizes (Content-Length, chunked transfer
coding, or up to the close), so no body is ever held whole in RAM.

Never: imports socket or ssl, runs in the control tick, or waits without a
timeout: every socket operation has the timeout given to request(), and the
caller bounds the whole transfer.
"""

from firmware.ws import parse_url as _ws_parse_url

MAX_REDIRECTS = 3
_HEADER_MAX = 4096  # status line + headers of one answer
_LINE_MAX = 256  # one chunk-size line


class HttpError(Exception):
    """The server or the URL is not usable (args[0] says why)."""


def parse_url(url):
    """(secure, host, port, path) of an http:// or https:// URL; ValueError otherwise."""
    if url.startswith("http://") or url.startswith("https://"):
        return _ws_parse_url("ws" + url[4:])  # the same split as ws:// and wss://
    raise ValueError("URL must start with http:// or https://")


class Response:
    """An answer whose headers were read; the body comes with readinto()."""

    def __init__(self, sock, status, headers):
        self.sock = sock
        self.status = status
        self.headers = headers  # lower-case name (bytes) -> value (bytes)
        self.length = None  # the body's size when the server said it
        self._chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self._left = 0  # bytes left in the current chunk, or of the whole body
        self._done = False
        if not self._chunked and b"content-length" in headers:
            v = headers[b"content-length"]
            if not v.isdigit() or len(v) > 10:
                raise HttpError("bad Content-Length")
            self.length = int(v)
            self._left = self.length
            self._done = self.length == 0

    def _line(self):
        buf = bytearray()
        while not buf.endswith(b"\r\n"):
            b = self.sock.read(1)
            if not b:
                raise HttpError("connection closed inside a chunked body")
            buf += b
            if len(buf) > _LINE_MAX:
                raise HttpError("chunk line too long")
        return bytes(buf[:-2])

    def readinto(self, view):
        """Up to len(view) body bytes into view; 0 at the end of the body.
        Raises HttpError on a body cut short or malformed, OSError on a
        timeout."""
        if self._done or not len(view):
            return 0
        if self._chunked and self._left == 0:
            size = self._line().split(b";")[0].strip()
            try:
                self._left = int(size, 16)
            except ValueError:
                raise HttpError("bad chunk size") from None
            if self._left == 0:
                while self._line():  # trailer fields, then the empty line
                    pass
                self._done = True
                return 0
        n = len(view)
        if (self._chunked or self.length is not None) and n > self._left:
            n = self._left
        k = self.sock.readinto(view[:n] if n < len(view) else view)
        if not k:
            if self._chunked or self.length is not None:
                raise HttpError("connection closed before the end of the body")
            self._done = True  # no length: the body ends with the connection
            return 0
        if self._chunked or self.length is not None:
            self._left -= k
            if self._chunked and self._left == 0:
                if self._line():
                    raise HttpError("no CRLF after a chunk")
            elif self.length is not None and self._left == 0:
                self._done = True
        return k

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _read_head(sock):
    buf = bytearray()
    while not buf.endswith(b"\r\n\r\n"):
        b = sock.read(1)  # byte by byte: nothing of the body is read ahead
        if not b:
            raise HttpError("connection closed before the answer's headers")
        buf += b
        if len(buf) > _HEADER_MAX:
            raise HttpError("answer headers too long")
    lines = bytes(buf).split(b"\r\n")
    status = lines[0].split(b" ")
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise HttpError("not an HTTP answer")
    headers = {}
    for line in lines[1:]:
        i = line.find(b":")
        if i > 0:
            headers[line[:i].strip().lower()] = line[i + 1 :].strip()
    return int(status[1]), headers


def _absolute(base, location):
    """A redirect's Location made absolute against the URL it answered."""
    if location.startswith("http://") or location.startswith("https://"):
        return location
    if not location.startswith("/"):
        raise HttpError("unsupported redirect " + location[:60])
    secure, host, port, _ = parse_url(base)
    h = "[%s]" % host if ":" in host else host
    return "%s://%s:%d%s" % ("https" if secure else "http", h, port, location)


def request(net, method, url, timeout_s, ca=None, body=None, content_type=None):
    """Send one request (body: bytes or None) and return the Response to the
    first answer that is not a redirect (301/302/303/307/308, followed up to
    MAX_REDIRECTS times; 303 turns into a GET). The caller closes it.
    HttpError or ValueError for a bad URL or answer, OSError for the network."""
    for _ in range(MAX_REDIRECTS + 1):
        secure, host, port, path = parse_url(url)
        raw = net.tcp_connect(host, port, timeout_s)
        try:
            sock = net.tls_context(ca or None).wrap_socket(raw, server_hostname=host) if secure else raw
            req = [
                method.encode(), b" ", path.encode(), b" HTTP/1.1\r\nHost: ", host.encode(),
                b"" if port == (443 if secure else 80) else b":%d" % port,
                b"\r\nUser-Agent: evse-firmware\r\nConnection: close\r\n",
            ]  # fmt: skip
            if body is not None:
                req.append(b"Content-Length: %d\r\n" % len(body))
                if content_type:
                    req.append(b"Content-Type: " + content_type.encode() + b"\r\n")
            req.append(b"\r\n")
            sock.write(b"".join(req))
            if body:
                sock.write(body)
            status, headers = _read_head(sock)
        except BaseException:
            raw.close()
            raise
        if status in (301, 302, 303, 307, 308) and b"location" in headers:
            sock.close()
            url = _absolute(url, headers[b"location"].decode())
            if status == 303:
                method, body = "GET", None
            continue
        return Response(sock, status, headers)
    raise HttpError("more than %d redirects" % MAX_REDIRECTS)
