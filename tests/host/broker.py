"""A real Mosquitto broker on a free loopback port, for host tests.

    with Broker() as b:          # started; b.port, b.host
        b.stop(); b.start()      # same port, same persistence file
    broker_fixture: a pytest fixture giving a started Broker

Also Blackhole(): a TCP server that accepts connections and never answers
(what a hung broker or a broken middlebox looks like to a client).
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


class Blackhole:
    """Accepts TCP connections on a free loopback port and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # held open, never read, never answered

    def close(self):
        self._stop = True
        self._thread.join(timeout=1)
        for c in self.accepted:
            c.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def broker_fixture():
    if mosquitto_path() is None:
        pytest.skip("mosquitto not installed")
    b = Broker().start()
    try:
        yield b
    finally:
        b.close()
