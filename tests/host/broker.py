"""A real Mosquitto broker on a free loopback port, for host tests.

    with Broker() as b:          # started; b.port, b.host
        b.stop(); b.start()      # same port, same persistence file
    broker_fixture: a pytest fixture giving a started Broker

Also Blackhole(): a TCP server that accepts connections and never answers
(what a hung broker or a broken middlebox looks like to a client), and
ScriptedBroker(): a minimal MQTT broker a test scripts (go silent before a
PUBACK, drop every connection after its subscriptions, ...).
Stops only the processes it started, by pid.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest


def mosquitto_path():
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout_s=5.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def firmware_over_mqtt_marks(repo):
    """pytest marks for a test that runs the firmware's link on the unix port
    against Mosquitto: skipped, saying why, when one of the three is missing."""
    return [
        pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed"),
        pytest.mark.skipif(not os.path.exists(os.path.join(repo, ".venv", "bin", "micropython")), reason="run make deps first"),
        pytest.mark.skipif(
            not os.path.exists(os.path.join(repo, "lib", "umqtt", "simple.py")), reason="umqtt.simple not in lib/"
        ),
    ]


class Broker:
    def __init__(self, port=None, persistence=False):
        exe = mosquitto_path()
        if exe is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="mosq-")
        os.chmod(self.dir, 0o777)  # mosquitto started as root drops to its own user
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.log = os.path.join(self.dir, "mosquitto.log")
        lines = [
            "listener %d 127.0.0.1" % self.port,
            "allow_anonymous true",
            "log_dest file %s" % self.log,
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if persistence:
            lines += ["persistence true", "persistence_location %s/" % self.dir, "autosave_interval 1"]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None
        self.started_at = None

    def start(self):
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [self.exe, "-c", self.conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_port(self.port):
            self.stop()
            raise RuntimeError("mosquitto did not listen on %d; log: %s" % (self.port, self._log_tail()))
        self.started_at = time.monotonic()
        return self

    def stop(self):
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()

    def _log_tail(self):
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class _Listener:
    """A TCP server on a free loopback port; each accepted connection goes to
    self._accepted(conn) in the accepting thread."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._accepted(conn)

    def _conns(self):
        return []

    def close(self):
        self._stop = True
        self._thread.join(timeout=1)
        for c in self._conns():
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Blackhole(_Listener):
    """Accepts TCP connections on a free loopback port and never sends a byte."""

    def __init__(self):
        self.accepted = []
        super().__init__()

    def _accepted(self, conn):
        self.accepted.append(conn)  # held open, never read, never answered

    def _conns(self):
        return self.accepted


@pytest.fixture
def broker_fixture():
    if mosquitto_path() is None:
        pytest.skip("mosquitto not installed")
    b = Broker().start()
    try:
        yield b
    finally:
        b.close()


class ScriptedBroker(_Listener):
    """A minimal MQTT 3.1.1 broker on a free loopback port whose behaviour a
    test scripts per connection: CONNACK, SUBACK and PINGRESP always; for
    every PUBLISH it calls on_publish(n, conn, topic, qos, pid), n counting
    connections from 0, which returns "ack" (PUBACK a QoS 1 publish), "silent"
    (answer nothing more, ever, but keep the connection open) or "close".
    Records the topics it received per connection in `published`."""

    def __init__(self, on_publish=None):
        self.on_publish = on_publish or (lambda n, conn, topic, qos, pid: "ack")
        self.conns = []
        self.published = []  # per connection: [topic, ...]
        self._threads = []
        super().__init__()

    @staticmethod
    def publish_packet(topic, payload, qos=0, retain=False, pid=1):
        t = topic.encode()
        body = len(t).to_bytes(2, "big") + t + (pid.to_bytes(2, "big") if qos else b"") + payload
        n, rl = len(body), bytearray()
        while True:
            rl.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                break
        return bytes([0x30 | qos << 1 | int(retain)]) + bytes(rl) + body

    def _accepted(self, conn):
        n = len(self.conns)
        self.conns.append(conn)
        self.published.append([])
        t = threading.Thread(target=self._serve, args=(n, conn), daemon=True)
        self._threads.append(t)
        t.start()

    @staticmethod
    def _read(conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _serve(self, n, conn):
        try:
            while not self._stop:
                op = self._read(conn, 1)[0]
                size, shift = 0, 0
                while True:
                    b = self._read(conn, 1)[0]
                    size |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                body = self._read(conn, size)
                kind = op & 0xF0
                action = "ack"
                if kind == 0x10:  # CONNECT
                    conn.sendall(b"\x20\x02\x00\x00")
                elif kind == 0x80:  # SUBSCRIBE
                    conn.sendall(b"\x90\x03" + body[:2] + b"\x00")
                elif kind == 0xC0:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
                elif kind == 0xE0:  # DISCONNECT
                    return
                elif kind == 0x30:  # PUBLISH
                    qos = (op >> 1) & 3
                    tlen = int.from_bytes(body[:2], "big")
                    topic = body[2 : 2 + tlen].decode()
                    pid = body[2 + tlen : 4 + tlen] if qos else None
                    self.published[n].append(topic)
                    action = self.on_publish(n, conn, topic, qos, pid)
                    if action == "ack" and qos == 1:
                        conn.sendall(b"\x40\x02" + pid)
                if action == "close":
                    conn.close()
                    return
                if action == "silent":
                    while not self._stop:
                        time.sleep(0.05)  # the connection stays open; nothing is read or sent
                    return
        except OSError:
            return

    def _conns(self):
        for t in self._threads:
            t.join(timeout=1)
        return self.conns
