"""The SNTP client of hal/net.py (HostIf.ntp_start/ntp_poll, shared by every
real interface) on the MicroPython unix port, against a CPython UDP server on
loopback that answers as a real server would, or wrongly."""

import os
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"
NTP_TO_UNIX = 2208988800
WALL = 1767225600  # 2026-01-01 00:00:00 UTC

CLIENT = """
import time
from hal import net
nif = net.HostIf()
nif.ntp_start("127.0.0.1:%d")
t0 = time.ticks_ms()
while True:
    try:
        r = nif.ntp_poll()
    except ValueError as e:
        print("BAD", e)
        break
    if r is not None:
        print("ANS", r[0], r[1])
        break
    if time.ticks_diff(time.ticks_ms(), t0) > %d:
        print("NONE")
        break
    time.sleep_ms(2)
"""


class Server:
    """One-shot SNTP server on a free loopback port; `how` shapes the answer."""

    def __init__(self, how, secs=WALL + NTP_TO_UNIX, frac=0x40000000):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(30)  # until the client's request comes (a hang detector)
        self.port = self.sock.getsockname()[1]
        self.how, self.secs, self.frac = how, secs, frac
        self.requests = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            data, addr = self.sock.recvfrom(512)
        except OSError:
            return
        self.requests.append(data)
        if self.how == "silent":
            return
        li, mode, stratum = 0, 4, 2
        origin = data[40:48]
        if self.how == "kiss_of_death":
            stratum = 0
        elif self.how == "unsynchronised":
            li = 3
        elif self.how == "client_mode":
            mode = 3
        elif self.how == "other_request":
            origin = bytes(8)
        reply = bytearray(48)
        reply[0] = li << 6 | 4 << 3 | mode
        reply[1] = stratum
        reply[24:32] = origin
        reply[40:48] = struct.pack("!II", self.secs, self.frac)
        if self.how == "short":
            reply = reply[:40]
        self.sock.sendto(bytes(reply), addr)

    def close(self):
        self.thread.join(5)
        self.sock.close()


def ask(server, wait_ms=20000):
    """The client's output; it waits up to wait_ms for an answer and ends at the
    first one (a generous bound: a loaded machine may take long to answer)."""
    if not MICROPYTHON.exists():
        pytest.fail("no .venv/bin/micropython: run `make deps` in " + str(REPO))
    r = subprocess.run(
        [str(MICROPYTHON), "-c", CLIENT % (server.port, wait_ms)],
        cwd=str(REPO),
        env=dict(os.environ, MICROPYPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=90,
    )
    server.close()
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()


def test_request_is_an_sntp_v4_client_packet_with_a_random_transmit_stamp():
    s1, s2 = Server("good"), Server("good")
    ask(s1)
    ask(s2)
    (a,), (b,) = s1.requests, s2.requests
    assert len(a) == 48 and a[0] == 0x23  # LI 0, version 4, mode 3
    assert a[1:40] == bytes(39)
    assert a[40:48] != b[40:48] and a[40:48] != bytes(8)  # a fresh nonce per request


def test_server_answer_gives_unix_seconds_and_milliseconds():
    assert ask(Server("good")) == ["ANS", str(WALL), "250"]


def test_seconds_after_the_2036_wrap_of_ntp_time_are_read_in_the_next_era():
    # 2040-01-01 lies past 2**32 NTP seconds (2036-02-07): the 32-bit field has wrapped.
    unix_2040 = 2208988800
    assert ask(Server("good", secs=(unix_2040 + NTP_TO_UNIX) - (1 << 32), frac=0)) == ["ANS", str(unix_2040), "0"]


@pytest.mark.parametrize(
    "how, why",
    [
        ("kiss_of_death", "not synchronised"),
        ("unsynchronised", "not synchronised"),
        ("client_mode", "not a server reply"),
        ("other_request", "reply to another request"),
        ("short", "short reply"),
    ],
)
def test_bad_answers_are_refused_with_a_reason(how, why):
    out = ask(Server(how))
    assert out[0] == "BAD" and why in " ".join(out), out


def test_silent_server_gives_no_answer_and_no_error():
    assert ask(Server("silent"), wait_ms=300) == ["NONE"]
