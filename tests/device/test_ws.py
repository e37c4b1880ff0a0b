# The WebSocket client (firmware/ws.py): URL split, the upgrade and its checks,
# client frames, and server frames read from a real loopback TCP connection
# (a server thread, or bytes the test writes itself).
# timeout: 60
import _thread
import socket
import time

from firmware import ws
from hal import net


def _listener():
    """A listening loopback socket on a free port (the unix port's sockets
    have no getsockname: try random high ports until one binds)."""
    import os

    while True:
        port = 20000 + int.from_bytes(os.urandom(2), "little") % 40000
        srv = socket.socket()
        try:
            srv.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
        except OSError:
            srv.close()
            continue
        srv.listen(1)
        _ports[id(srv)] = port
        return srv


_ports = {}


def _port(srv):
    return _ports[id(srv)]


def _server_frame(opcode, payload, fin=True):
    """A frame as a server sends it: unmasked."""
    n = len(payload)
    head = bytearray([(0x80 if fin else 0) | opcode])
    if n < 126:
        head.append(n)
    elif n < 65536:
        head += bytes([126, n >> 8, n & 0xFF])
    else:
        head += bytes([127, 0, 0, 0, 0, n >> 24, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF])
    return bytes(head) + payload


def _read_client_frame(s):
    """(opcode, payload) of one masked client frame read from socket s."""
    h = s.recv(2)
    assert h[1] & 0x80, "client frames are masked"
    n = h[1] & 0x7F
    if n == 126:
        e = s.recv(2)
        n = e[0] << 8 | e[1]
    mask = s.recv(4)
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
    return h[0] & 0x0F, bytes(data[k] ^ mask[k & 3] for k in range(n))


class _Loop:
    """A loopback pair: `client` a WebSocket on one end, `peer` the raw other end."""

    def __init__(self):
        self.srv = _listener()
        port = _port(self.srv)
        self.sock = net.tcp_connect("127.0.0.1", port, 2)
        self.peer, _ = self.srv.accept()
        self.client = ws.WebSocket(self.sock)

    def close(self):
        for s in (self.sock, self.peer, self.srv):
            try:
                s.close()
            except OSError:
                pass


def test_url_split_gives_scheme_host_port_and_path():
    assert ws.parse_url("ws://cs.example:9000/ocpp/CP1") == (False, "cs.example", 9000, "/ocpp/CP1")
    assert ws.parse_url("wss://cs.example/ocpp/CP1") == (True, "cs.example", 443, "/ocpp/CP1")
    assert ws.parse_url("ws://10.0.0.2") == (False, "10.0.0.2", 80, "/")
    assert ws.parse_url("ws://[::1]:8080/x") == (False, "::1", 8080, "/x")
    for bad in ("http://cs/x", "ws://:80/x", "ws://cs:99999/x", "ws://cs:abc/x", "cs/x"):
        try:
            ws.parse_url(bad)
        except ValueError:
            continue
        raise AssertionError("accepted " + bad)


def test_accept_key_is_the_rfc_6455_example():
    assert ws.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_upgrade_answer_is_checked_for_status_accept_and_subprotocol():
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    good = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
    ws.WebSocket._check_answer(good, key, b"ocpp1.6")
    bad = (
        good.replace(b"101 Switching Protocols", b"401 Unauthorized"),
        good.replace(b"s3pP", b"AAAA"),
        good.replace(b"Sec-WebSocket-Protocol: ocpp1.6\r\n", b""),
        good.replace(b"ocpp1.6", b"ocpp2.0.1"),
        good.replace(b"Upgrade: websocket\r\n", b""),
        b"SSH-2.0-OpenSSH\r\n\r\n",
    )
    for answer in bad:
        try:
            ws.WebSocket._check_answer(answer, key, b"ocpp1.6")
        except ws.WsError:
            continue
        raise AssertionError("accepted %r" % answer)


def test_client_frames_are_masked_with_the_right_length_forms():
    mask = b"\x01\x02\x03\x04"
    for n, head in ((0, 6), (125, 6), (126, 8), (ws.MAX_MESSAGE_BYTES, 8)):
        payload = bytes(k & 0xFF for k in range(n))
        f = ws.encode_frame(ws.OP_TEXT, payload, mask)
        assert len(f) == head + n
        assert f[0] == 0x81 and f[1] & 0x80
        assert f[head - 4 : head] == mask
        assert bytes(f[head + k] ^ mask[k & 3] for k in range(n)) == payload
    # The longer forms, header only (a 64 KB frame does not fit an ESP32's heap).
    assert ws.frame_header(ws.OP_TEXT, 65535, mask) == b"\x81\xfe\xff\xff" + mask
    assert ws.frame_header(ws.OP_BINARY, 65536, mask) == b"\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00" + mask


def test_handshake_sends_key_subprotocol_and_basic_auth_then_text_round_trips():
    srv = _listener()
    port = _port(srv)
    seen = {}
    done = _thread.allocate_lock()
    done.acquire()

    def server():
        try:
            c, _ = srv.accept()
            req = b""
            while not req.endswith(b"\r\n\r\n"):
                req += c.recv(1)
            seen["req"] = req
            key = [ln.split(b": ")[1] for ln in req.split(b"\r\n") if ln.lower().startswith(b"sec-websocket-key")][0]
            c.send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
                + ws.accept_key(key)
                + b"\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
            )
            seen["frame"] = _read_client_frame(c)
            c.send(_server_frame(ws.OP_TEXT, b'[3,"1",{}]'))
            seen["close"] = _read_client_frame(c)
            c.close()
        finally:
            done.release()

    _thread.start_new_thread(server, ())
    w = ws.WebSocket.connect(net, "ws://127.0.0.1:%d/ocpp/CP42" % port, "ocpp1.6", 2, password="s3cret")
    w.send('[2,"1","Heartbeat",{}]')
    msg = None
    for _ in range(100):
        msg = w.recv(50)
        if msg is not None:
            break
    w.close()
    done.acquire()
    srv.close()
    req = seen["req"]
    assert req.startswith(b"GET /ocpp/CP42 HTTP/1.1\r\n")
    assert b"\r\nSec-WebSocket-Protocol: ocpp1.6\r\n" in req and b"\r\nSec-WebSocket-Version: 13\r\n" in req
    assert b"\r\nAuthorization: " + ws.basic_auth("CP42", "s3cret") + b"\r\n" in req
    assert ws.basic_auth("CP42", "s3cret") == b"Basic Q1A0MjpzM2NyZXQ="
    assert seen["frame"] == (ws.OP_TEXT, b'[2,"1","Heartbeat",{}]')
    assert msg == '[3,"1",{}]'
    assert seen["close"] == (ws.OP_CLOSE, b"\x03\xe8")  # 1000


def test_fragments_are_reassembled_and_a_ping_between_them_is_answered():
    lp = _Loop()
    try:
        lp.peer.send(_server_frame(ws.OP_TEXT, b"[2,", fin=False))
        lp.peer.send(_server_frame(ws.OP_PING, b"hi"))
        lp.peer.send(_server_frame(ws.OP_CONT, b'"7",', fin=False))
        lp.peer.send(_server_frame(ws.OP_CONT, b'"Heartbeat",{}]'))
        assert lp.client.recv(1000) == '[2,"7","Heartbeat",{}]'
        assert _read_client_frame(lp.peer) == (ws.OP_PONG, b"hi")
    finally:
        lp.close()


def test_nothing_within_the_timeout_gives_none():
    lp = _Loop()
    try:
        t0 = time.ticks_ms()
        assert lp.client.recv(30) is None
        assert time.ticks_diff(time.ticks_ms(), t0) >= 25
    finally:
        lp.close()


def _refused(frames):
    """Send `frames` to a fresh client: its recv() must raise WsError; returns
    the close frame it sent back."""
    lp = _Loop()
    try:
        for f in frames:
            lp.peer.send(f)
        try:
            lp.client.recv(1000)
            raise AssertionError("accepted %r" % (frames,))
        except ws.WsError:
            pass
        return _read_client_frame(lp.peer)
    finally:
        lp.close()


def test_oversized_frame_and_message_are_refused_with_close_1009():
    assert _refused([_server_frame(ws.OP_TEXT, b"x" * (ws.MAX_MESSAGE_BYTES + 1))]) == (ws.OP_CLOSE, b"\x03\xf1")
    two = [_server_frame(ws.OP_TEXT, b"x" * 5000, fin=False), _server_frame(ws.OP_CONT, b"y" * 5000)]
    assert _refused(two) == (ws.OP_CLOSE, b"\x03\xf1")  # 1009


def test_protocol_errors_close_with_1002():
    for bad in (
        bytes([0x81, 0x82, 1, 2, 3, 4, 0, 0]),  # a masked server frame
        bytes([0xC1, 0x00]),  # a reserved bit
        _server_frame(ws.OP_CONT, b"x"),  # continuation of nothing
        _server_frame(ws.OP_PING, b"p", fin=False),  # fragmented control frame
        _server_frame(0x3, b""),  # unknown opcode
    ):
        assert _refused([bad]) == (ws.OP_CLOSE, b"\x03\xea")  # 1002


def test_text_that_is_not_utf8_closes_with_1007():
    assert _refused([_server_frame(ws.OP_TEXT, b"\xff\xfe")]) == (ws.OP_CLOSE, b"\x03\xef")


def test_server_close_is_echoed_and_raised_with_its_code():
    lp = _Loop()
    try:
        lp.peer.send(_server_frame(ws.OP_CLOSE, b"\x03\xe9bye"))
        try:
            lp.client.recv(1000)
            raise AssertionError("no WsClosed")
        except ws.WsClosed as e:
            assert e.args[0] == 1001
        assert _read_client_frame(lp.peer) == (ws.OP_CLOSE, b"\x03\xe9")
    finally:
        lp.close()


def test_peer_gone_without_close_frame_raises():
    lp = _Loop()
    try:
        lp.peer.close()
        try:
            lp.client.recv(1000)
            raise AssertionError("no error")
        except ws.WsClosed as e:
            assert e.args[0] is None
    finally:
        lp.close()


def test_a_ping_on_its_own_is_answered_and_gives_no_message_without_waiting_for_more():
    lp = _Loop()
    try:
        lp.peer.send(_server_frame(ws.OP_PING, b"alive?"))
        assert lp.client.recv(1000) is None  # (reading on would end in the socket's 2 s timeout: OSError)
        assert _read_client_frame(lp.peer) == (ws.OP_PONG, b"alive?")
        lp.peer.send(_server_frame(ws.OP_TEXT, b"[]"))
        assert lp.client.recv(1000) == "[]"
        assert lp.client.frames == 2
        lp.client.ping()
        assert _read_client_frame(lp.peer) == (ws.OP_PING, b"")
    finally:
        lp.close()
