"""The whole firmware on the simulated board with a WiFi interface that comes
and goes (sim/net.py) and a fake NTP server, against a real Mosquitto: no
broker traffic before the network is up, status with link state and RSSI, a
session begun before the clock was set arrives back-dated, a lost network
drops the broker connection (last will) and both come back, the WiFi password
is never published.

DRIVER runs on the unix port: the control loop in virtual time (fast), the
link thread in wall time; it prints one JSON line per phase.
"""

import json
import os
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt

sys.path.insert(0, os.path.dirname(__file__))
from broker import Broker, firmware_over_mqtt_marks

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MICROPYTHON = os.path.join(REPO, ".venv", "bin", "micropython")
WALL = 1767225600  # 2026-01-01 00:00:00 UTC
PASSWORD = "very-secret-wpa2-passphrase"

pytestmark = firmware_over_mqtt_marks(REPO)

DRIVER = r"""
import sys, json, time
from firmware.app import Firmware
from sim.board import SimBoard

with open(sys.argv[1]) as f:
    opts = json.load(f)
sim = SimBoard(data_dir=opts["dir"])
nif = sim.netif
nif.kind = "wifi"
nif.rssi = -61
nif.reachable = False
fw = Firmware(sim, {"id": opts["id"], "mqtt_host": "127.0.0.1", "mqtt_port": opts["port"],
                    "mqtt_keepalive_s": 10, "wifi_ssid": "depot", "wifi_password": opts["pw"]})
link = fw.link


def say(**kw):
    print(json.dumps(kw))


def run(ms):
    # virtual ms of control loop, with 1 ms of wall time every 100 ms for the link thread
    for i in range(ms // 10):
        fw.tick()
        sim.wait_tick(10)
        if i % 10 == 0:
            time.sleep_ms(1)


def until(cond, wall_ms=15000):
    t0 = time.ticks_ms()
    while not cond():
        if time.ticks_diff(time.ticks_ms(), t0) > wall_ms:
            say(phase="timeout", status=fw.status(), stats=link.stats, err=fw.netup.last_error)
            raise SystemExit(3)
        run(100)


fw.start()
try:
    until(lambda: nif.ups >= 1)
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 1500:
        run(100)
    say(phase="no_network", connects=link.stats["connects"], net=fw.status()["net"])
    nif.reachable = True
    until(lambda: link.connected)
    say(phase="connected", ups=nif.ups)
    sim.set_ev("C")
    until(lambda: fw.session_id is not None)
    mono = fw.tracker.start["mono_ms"]
    run(30000)
    t_set = sim.ticks_ms()
    nif.ntp_server(opts["wall"])
    until(lambda: fw.status()["clock_set"])
    say(phase="clock", expect_start=opts["wall"] - sim.ticks_diff(t_set, mono) // 1000,
        start=fw.tracker.start)
    run(10000)
    sim.set_ev("A")
    until(lambda: fw.session_id is None)
    until(lambda: fw.journal.pending_count() == 0)
    say(phase="delivered")
    nif.drop()
    until(lambda: not link.connected)
    say(phase="dropped", drops=fw.netup.drops)
    until(lambda: link.connected, 20000)
    say(phase="reconnected", connects=link.stats["connects"], ups=nif.ups)
    run(2000)
finally:
    fw.shutdown(2000)
say(phase="end")
"""


def test_network_comes_first_clock_back_dates_and_a_lost_network_is_survived(tmp_path):
    dev = "net-e2e"
    got = []
    lock = threading.Lock()
    with Broker() as b:
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch")

        def on_message(c, u, m):
            with lock:
                got.append((time.monotonic(), m.topic, m.payload))

        sub.on_message = on_message
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.connect(b.host, b.port)
        sub.subscribe("evse/%s/#" % dev, qos=1)
        sub.loop_start()
        try:
            assert subscribed.wait(30), "the watcher could not subscribe"
            opts = tmp_path / "opts.json"
            opts.write_text(json.dumps({"id": dev, "port": b.port, "dir": str(tmp_path / "data"), "pw": PASSWORD,
                                        "wall": WALL}))
            os.mkdir(tmp_path / "data")
            env = dict(os.environ, MICROPYPATH=REPO + ":" + os.path.join(REPO, "lib"))
            p = subprocess.Popen([MICROPYTHON, "-X", "heapsize=512k", "-c", DRIVER, str(opts)], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            phases = {}
            for line in p.stdout:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                rec["at"] = time.monotonic()
                phases[rec.get("phase")] = rec
            assert p.wait(60) == 0, phases
            # The clean stop's online 0 (after the last will's) is the last message: wait for it.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with lock:
                    if [pl for _, tp, pl in got if tp == "evse/%s/online" % dev].count(b"0") >= 2:
                        break
                time.sleep(0.05)
        finally:
            sub.loop_stop()
            sub.disconnect()
    assert "end" in phases and "timeout" not in phases, phases
    with lock:
        msgs = list(got)

    def seen(topic, before=None, after=None):
        return [(t, json.loads(pl) if topic != "online" else pl.decode()) for t, tp, pl in msgs
                if tp == "evse/%s/%s" % (dev, topic) and (before is None or t < before) and (after is None or t > after)]

    # 1. No broker traffic while the network was down.
    assert phases["no_network"]["connects"] == 0 and phases["no_network"]["net"] == "connecting"
    assert not seen("online", before=phases["no_network"]["at"])
    # 2. The status says the link is up, with the signal strength.
    ups = [s for _, s in seen("status") if s.get("net") == "up"]
    assert ups and ups[0]["rssi_dbm"] == -61
    # 3. The session began 30+ s before the clock was set: it arrives with its start back-dated.
    (_, rec), = seen("session")
    expect = phases["clock"]["expect_start"]
    assert isinstance(rec["start"], int) and abs(rec["start"] - expect) <= 1, (rec["start"], expect)
    assert rec["end"] > rec["start"] and rec["start"] <= WALL - 30
    # 4. Losing the network lost the broker (last will 0), then both came back.
    lost = [v for _, v in seen("online", after=phases["delivered"]["at"])]  # ends with the clean stop's 0
    assert lost[:1] == ["0"] and "1" in lost[1:], lost
    assert phases["reconnected"]["connects"] == 2 and phases["dropped"]["drops"] == 1
    # 5. The password was never published.
    assert not [pl for _, _, pl in msgs if PASSWORD.encode() in pl]


def test_monitor_shows_wifi_signal_and_an_unset_clock():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    from monitor import format_message

    line = format_message("evse/b1/status", json.dumps({"state": "A1", "net": "up", "rssi_dbm": -67,
                                                        "clock_set": False}).encode())
    assert "wifi=-67dBm" in line and "clock=unset" in line
    line = format_message("evse/b1/status", json.dumps({"state": "A1", "rssi_dbm": None, "clock_set": True}).encode())
    assert "wifi=" not in line and "clock=" not in line  # Ethernet, clock set
