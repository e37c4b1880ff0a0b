#!/usr/bin/env python3
"""`make run`: the firmware on the simulated board, talking MQTT to a local
Mosquitto and OCPP 1.6J to a local central system, with both links' messages
shown next to the bench rig's timeline.

    run_demo.py                      # the 40 s demo in real time (default)
    run_demo.py --fast               # the same, as fast as the machine goes (~0.1 s + the clean stop)
    run_demo.py --scenario tests/scenarios/demo_session.json   # any scenario (120 s in real time)
    run_demo.py --no-mqtt            # without the broker
    run_demo.py --no-ocpp            # without the central system

What it does: starts `mosquitto` on a free loopback port (its own config in a
temporary folder; stopped by its pid at the end, on an error and on Ctrl-C),
subscribes to evse/<id>/# with paho-mqtt, and runs the scenario's firmware on
the MicroPython unix port (sim/scenario.py) with `--broker`. Lines prefixed
`rig  |` are the rig's live timeline (simulated time in seconds); lines
prefixed `mqtt |` are what the broker received from the charger (wall clock),
formatted as tools/monitor.py does. Without Mosquitto installed it says so and
runs the timeline alone. $MOSQUITTO names the broker executable (empty: none).
Beside it, tools/central.py runs an OCPP 1.6J central system (the `ocpp`
package) on another free loopback port and the firmware gets `--ocpp`: lines
prefixed `ocpp |` are what it received from the charger (BootNotification,
StatusNotification, StartTransaction, MeterValues, StopTransaction...), each
checked against the OCPP 1.6 schemas. Without the `ocpp` package it says so
and runs without OCPP.

Why real time on a 40 s scenario: accelerated, the whole session is over in a
tenth of a second and the link (which runs in wall time) can only show its
first and last status; the 120 s demo_session.json in real time is long for a
first look. A slowed-down mode (e.g. 20x) would need a speed option in
sim/scenario.py.

Ctrl-C stops the firmware the way a power switch would not: it leaves the board
safe, gives a finished session up to 5 s to reach the broker and publishes
online 0; then the broker is stopped.

Exit codes: 0 the scenario's expectations held, 1 one failed, 2 bad
arguments or scenario, 3 the MicroPython process failed, 130 interrupted.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
import central  # noqa: E402
import monitor  # noqa: E402
from evrig import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_FAILED, EXIT_OK, BadScenario, load_scenario
from evrig.report import LivePrinter
from evrig.scenario import check_expects
from evrig.unixport import parse_line, start_scenario

DEFAULT_SCENARIO = os.path.join(REPO, "tests", "scenarios", "mqtt", "demo_short.json")
DEFAULT_ID = "demo"

_out_lock = threading.Lock()


def say(prefix, text):
    with _out_lock:
        print(prefix + text, flush=True)


class _Prefixed:
    """A file-like object for LivePrinter: each line gets the rig prefix."""

    def __init__(self):
        self._buf = ""

    def write(self, text):
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            say("rig  | ", line)
        return len(text)

    def flush(self):
        pass


# --- the broker ---------------------------------------------------------------------
def mosquitto_path():
    """The broker executable: $MOSQUITTO when set (empty: none), else from PATH or sbin."""
    if "MOSQUITTO" in os.environ:
        exe = os.environ["MOSQUITTO"]
        return exe if exe and os.path.exists(exe) else None
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBroker:
    """mosquitto on 127.0.0.1:<free port>, anonymous, no persistence."""

    def __init__(self, exe):
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="evse-demo-mosq-")
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(
                "listener %d 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                "log_dest stderr\nlog_type error\nlog_type warning\n" % self.port
            )
        self.log = open(os.path.join(self.dir, "mosquitto.log"), "w+")
        self.proc = subprocess.Popen(
            [exe, "-c", conf], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True
        )

    def wait_ready(self, timeout_s=5.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def log_tail(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-1000:].strip() or "(no output)"

    def stop(self):
        p = self.proc
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def watch(port, dev_id):
    """A paho client printing every message under evse/<id>/ (None if paho is missing);
    its `offline` event is set once it has shown the charger's online 0."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        say("mqtt | ", "paho-mqtt is missing (run `make deps`): messages not shown")
        return None
    ready = threading.Event()
    offline = threading.Event()

    def on_message(client, userdata, msg):
        line = monitor.format_message(msg.topic, msg.payload, msg.retain)
        if line is not None:
            say("mqtt | ", time.strftime("%H:%M:%S ") + line)
        if msg.topic.endswith("/online") and bytes(msg.payload) == b"0":
            offline.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="evse-demo-watch")
    c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe("evse/%s/+" % dev_id, 1)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = on_message
    c.offline = offline
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not ready.wait(5):
        say("mqtt | ", "could not subscribe to the local broker: messages not shown")
    return c


# --- the firmware -------------------------------------------------------------------
def start_firmware(path, realtime, broker_port, dev_id, ocpp_url=None):
    extra = ["--broker", "127.0.0.1:%d" % broker_port, "--id", dev_id] if broker_port else []
    if ocpp_url:
        extra += ["--ocpp", ocpp_url]
    # Its own session: Ctrl-C reaches only this tool, which then interrupts it by pid.
    return start_scenario(path, realtime, extra, start_new_session=True)


def follow(proc, live, interrupted):
    """Read the firmware's lines: timeline to the screen. Returns (records, summary, tail)."""
    records, other = [], []
    summary = None
    for line in proc.stdout:
        kind, obj = parse_line(line)
        if kind == "summary":
            summary = obj
        elif kind == "command":
            live("command", obj)
        elif kind == "record":
            records.append(obj)
            live("record", obj)
        else:
            line = obj
            other.append(line)
            if not interrupted.is_set():
                live("output", line)
    return records, summary, other[-25:]


def _shown_offline(client, timeout_s=10):
    """Wait until the watcher has shown the stopped charger's last message
    (online 0, sent after everything else), however long the broker takes."""
    if client is not None:
        client.offline.wait(timeout_s)


def build_parser():
    p = argparse.ArgumentParser(
        prog="run_demo.py",
        description="Run a scenario's firmware on the simulated board against a local Mosquitto and show "
        "the live timeline (rig  |) interleaved with the charger's MQTT messages (mqtt |).",
        epilog="exit codes: 0 expectations held, 1 one failed, 2 bad arguments or scenario, "
        "3 the MicroPython process failed, 130 interrupted (Ctrl-C)",
    )
    p.add_argument("--scenario", default=DEFAULT_SCENARIO, metavar="FILE.json",
                   help="scenario to run (default: tests/scenarios/mqtt/demo_short.json, 40 s)")  # fmt: skip
    p.add_argument("--fast", action="store_true", help="accelerated simulated time instead of real time")
    p.add_argument("--no-mqtt", action="store_true", help="do not start a broker")
    p.add_argument("--no-ocpp", action="store_true", help="do not start an OCPP central system")
    p.add_argument("--id", default=DEFAULT_ID, help="the charger's id in topics and session ids (default: demo)")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Ctrl-C and a polite kill both end in the same clean-up, even when the
    # shell started us with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sc = load_scenario(args.scenario)
    except BadScenario as e:
        print("%s: invalid scenario:\n  %s" % (args.scenario, "\n  ".join(e.args[0])), file=sys.stderr)
        return EXIT_BAD_INPUT
    broker = client = proc = cs = None
    interrupted = threading.Event()
    try:
        if not args.no_mqtt:
            exe = mosquitto_path()
            if exe is None:
                say("", "NOTE: mosquitto is not installed, so the demo runs WITHOUT MQTT. To see the "
                        "charger's messages: sudo apt-get install mosquitto")  # fmt: skip
            else:
                broker = LocalBroker(exe)
                if broker.wait_ready():
                    say("mqtt | ", "mosquitto listening on 127.0.0.1:%d (pid %d); showing evse/%s/*"
                        % (broker.port, broker.proc.pid, args.id))  # fmt: skip
                    client = watch(broker.port, args.id)
                else:
                    say("", "NOTE: mosquitto did not start, running WITHOUT MQTT; its output: "
                            + broker.log_tail())  # fmt: skip
                    broker.stop()
                    broker = None
        if not args.no_ocpp:
            if not central.available():
                say("", "NOTE: the `ocpp` package is missing (run `make deps`), so the demo runs WITHOUT OCPP")
            else:
                cs = central.Central(say=lambda text: say("ocpp | ", text))
                say("ocpp | ", "central system listening on %s" % cs.url(args.id))
        say("", "scenario %s: %s" % (sc.get("name", os.path.basename(args.scenario)), sc.get("description", "")))
        say("", "%s; Ctrl-C stops it" % ("accelerated" if args.fast else "real time, %s s" % sc["until"]))
        live = LivePrinter(sc, out=_Prefixed())
        proc = start_firmware(args.scenario, not args.fast, broker.port if broker else None, args.id, cs.url(args.id) if cs else None)
        try:
            records, summary, tail = follow(proc, live, interrupted)
            rc = proc.wait()
        except KeyboardInterrupt:
            interrupted.set()
            say("", "interrupted: stopping the firmware (board safe, sessions flushed, online 0)")
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            _shown_offline(client)
            return 130
        live.finish()
        _shown_offline(client)
        if rc != 0 or summary is None:
            say("", "the MicroPython process failed (exit code %d); its last output:\n%s" % (rc, "\n".join(tail)))
            return EXIT_CRASH
        failures = check_expects(sc, records)
        for msg in failures:
            say("", "FAIL " + msg)
        n_exp = sum(len(s.get("expect", {})) for s in sc["steps"])
        say("", "%d of %d expectations held; %.0f s simulated in %.1f s; contactor open max %s ms, close max %s ms"
            % (n_exp - len(failures), n_exp, summary["sim_seconds"], summary["wall_seconds"],
               summary.get("open_max_ms"), summary.get("close_max_ms")))  # fmt: skip
        return EXIT_FAILED if failures else EXIT_OK
    except KeyboardInterrupt:
        interrupted.set()
        return 130
    finally:
        # A second Ctrl-C must not leave a broker behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if client is not None:
            client.loop_stop()
            client.disconnect()
        if broker is not None:
            broker.stop()
            say("mqtt | ", "mosquitto stopped")
        if cs is not None:
            cs.stop()
            say("ocpp | ", "central system stopped")


if __name__ == "__main__":
    sys.exit(main())
