# timeout: 60
# firmware/http.py against scripted answers (no network): the request it
# writes, bodies by Content-Length, chunked and up to the close, read in
# small pieces; redirects; every malformed answer an HttpError.
from firmware import http


class _Sock:
    def __init__(self, answer):
        self.data = answer
        self.pos = 0
        self.sent = b""
        self.closed = False

    def read(self, n):
        b = self.data[self.pos : self.pos + n]
        self.pos += len(b)
        return b

    def readinto(self, buf):
        b = self.read(min(len(buf), 7))  # short reads, as a socket gives them
        buf[: len(b)] = b
        return len(b)

    def write(self, b):
        self.sent += bytes(b)
        return len(b)

    def close(self):
        self.closed = True


class _Net:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.socks = []
        self.connects = []

    def tcp_connect(self, host, port, timeout_s):
        self.connects.append((host, port))
        s = _Sock(self.answers.pop(0))
        self.socks.append(s)
        return s


def _body(resp, piece=5):
    out = b""
    buf = bytearray(piece)
    mv = memoryview(buf)
    while True:
        k = resp.readinto(mv)
        if not k:
            return out
        out += bytes(mv[:k])


def _raises(fn):
    try:
        fn()
    except http.HttpError:
        return True
    return False


def test_parse_url_takes_http_and_https_only():
    assert http.parse_url("http://h/fw.bin") == (False, "h", 80, "/fw.bin")
    assert http.parse_url("https://h:8443/a?b=c") == (True, "h", 8443, "/a?b=c")
    for bad in ("ftp://h/x", "ws://h/", "http://h:99999/", "http:///x"):
        try:
            http.parse_url(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_a_get_writes_one_request_and_reads_a_content_length_body_in_pieces():
    net = _Net(b"HTTP/1.1 200 OK\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyzEXTRA")
    r = http.request(net, "GET", "http://example.org:8080/fw/x.evfw", 5)
    assert net.connects == [("example.org", 8080)]
    sent = net.socks[0].sent
    assert sent.startswith(b"GET /fw/x.evfw HTTP/1.1\r\nHost: example.org:8080\r\n")
    assert sent.endswith(b"\r\n\r\n") and b"Content-Length" not in sent
    assert r.status == 200 and r.length == 26
    assert _body(r) == b"abcdefghijklmnopqrstuvwxyz"  # not a byte past the length
    assert r.readinto(bytearray(4)) == 0


def test_a_chunked_body_with_extensions_and_trailers_is_reassembled():
    ans = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n"
    r = http.request(_Net(ans), "GET", "http://h/", 5)
    assert r.length is None
    assert _body(r, 3) == b"Wikipedia in \r\n\r\nchunks."


def test_a_body_without_length_ends_with_the_connection():
    r = http.request(_Net(b"HTTP/1.0 200 OK\r\n\r\nall of it"), "GET", "http://h/", 5)
    assert _body(r) == b"all of it"


def test_malformed_answers_are_http_errors():
    cases = (
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 11 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 5000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",  # closed inside the headers
    )
    for ans in cases:
        assert _raises(lambda ans=ans: http.request(_Net(ans), "GET", "http://h/", 5)), ans
    bodies = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 300 + b"\r\n",
    )
    for ans in bodies:
        r = http.request(_Net(ans), "GET", "http://h/", 5)
        assert _raises(lambda r=r: _body(r)), ans


def test_redirects_are_followed_three_times_at_most_and_303_becomes_a_get():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    net = _Net(
        b"HTTP/1.1 302 Found\r\nLocation: /b\r\n\r\n", b"HTTP/1.1 301 Moved\r\nLocation: http://other:81/c\r\n\r\n", ok
    )
    r = http.request(net, "GET", "http://h:8000/a", 5)
    assert _body(r) == b"ok"
    assert net.connects == [("h", 8000), ("h", 8000), ("other", 81)]
    assert net.socks[1].sent.startswith(b"GET /b HTTP/1.1") and net.socks[0].closed
    net = _Net(b"HTTP/1.1 303 See Other\r\nLocation: /done\r\n\r\n", ok)
    http.request(net, "PUT", "http://h/up", 5, body=b"12345", content_type="application/json")
    assert net.socks[0].sent.startswith(b"PUT /up HTTP/1.1") and b"Content-Length: 5\r\n" in net.socks[0].sent
    assert net.socks[0].sent.endswith(b"\r\n\r\n12345")
    assert net.socks[1].sent.startswith(b"GET /done HTTP/1.1") and b"12345" not in net.socks[1].sent
    loop = b"HTTP/1.1 307 Again\r\nLocation: /a\r\n\r\n"
    net = _Net(loop, loop, loop, loop, loop)
    assert _raises(lambda: http.request(net, "GET", "http://h/a", 5))
    assert len(net.connects) == 4
    assert _raises(
        lambda: http.request(_Net(b"HTTP/1.1 302 F\r\nLocation: relative/x\r\n\r\n"), "GET", "http://h/a", 5)
    )
