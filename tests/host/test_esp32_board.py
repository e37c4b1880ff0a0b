"""The emulated board as shipped (tools/simboard.py, default --interpreter esp32):
the ESP32-faithful interpreter at the ESP32's 112 KB heap with firmware/, hal/
and umqtt.simple frozen like a board image built from manifest.py, and only
boot.py, main.py and /data on its flash.

- With no A/B slot deployed the frozen firmware boots.
- A full charging session (tools/rig.py --sim-ev) with the MQTT link over TLS
  to a real Mosquitto: the closed session reaches a subscriber that verifies
  the same CA. Prints the heap after it (micropython.mem_info on the board).
- A simulated 24 h soak on the same interpreter and heap, accelerated in
  simulated time by the scenario runner (sim/scenario.py): a session every
  hour, the TLS broker restarted several times (each a TLS reconnect), journal
  compactions. No MemoryError and no session lost. The largest free
  block, measured every simulated 15 minutes after a collection, stays
  >= 16 KB (issue 11; minimum 33.4 and 35.6 KB in two runs since the firmware collects
  before making its long-lived objects, 10.8-30.7 KB before, depending on where
  the first connect fell). Prints the figures.

No timing assertions: the soak's broker restarts happen in wall time and land
wherever the simulation is; only counts and memory are asserted.
"""

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).parent))
import deploy_board  # noqa: E402
from board_session import BoardError, BoardSession  # noqa: E402
from broker import Broker, mosquitto_path  # noqa: E402
from emulated_board import EmulatedBoard, esp32_ready  # noqa: E402
from test_link_secure import _tls_broker  # noqa: E402

RIG = REPO / "tools" / "rig.py"
BENCH = REPO / "tests" / "scenarios" / "rig"
LARGEST_FREE_MIN_KB = 16  # issue 11: room for a large JSON payload or an image chunk after a day

pytestmark = [
    pytest.mark.skipif(not (REPO / ".venv" / "bin" / "mpremote").exists(), reason="needs .venv (make deps)"),
    pytest.mark.skipif(mosquitto_path() is None or shutil.which("openssl") is None,
                       reason="needs mosquitto and openssl"),  # fmt: skip
]


@pytest.fixture(scope="module")
def esp32():
    ok, why = esp32_ready()
    if not ok:
        pytest.skip("the ESP32-faithful interpreter cannot be built (make esp32): " + why)
    p = subprocess.run([sys.executable, str(REPO / "tools" / "mpbuild.py"), "paths"], capture_output=True,
                       text=True, check=True)  # fmt: skip
    return json.loads(p.stdout)


def make_flash(root, config, ca=None):
    """boot.py, main.py and /data/config.json (plus /data/ca.crt): no firmware
    files, no slots. The firmware is the one frozen into the interpreter."""
    flash = root / "flash"
    (flash / "data").mkdir(parents=True)
    for name in ("boot.py", "main.py"):
        shutil.copy(REPO / name, flash / name)
    if ca:
        shutil.copy(ca, flash / "data" / "ca.crt")
    (flash / "data" / "config.json").write_text(json.dumps(config))
    return flash


def board_exec(port, code):
    """Interrupt what runs (the firmware makes the board safe) and run code in
    the raw REPL without a soft reset: the firmware's objects stay in the heap."""
    for attempt in range(3):
        b = BoardSession(port)
        try:
            b.interrupt()
            return b.exec(code, helpers=False)
        except BoardError:
            if attempt == 2:
                raise
            time.sleep(1)  # e.g. the Ctrl-C landed while the board was resetting
        finally:
            b.close()


def max_free_kb(mem_info_text, block_bytes=16):
    """The largest free block from micropython.mem_info() ('max free sz' in
    GC blocks of 4 words: 16 bytes on a 32-bit build)."""
    m = re.findall(r"max free sz: (\d+)", mem_info_text)
    assert m, mem_info_text
    return [int(x) * block_bytes / 1024 for x in m]


# The heap gc reports: 112 KB on esp32; on unix64 128k less the GC's own table.
@pytest.mark.parametrize("interpreter, maxsize, heap", [(None, 2**31 - 1, (112000, 112000)),
                                                         ("unix64", 2**63 - 1, (120 * 1024, 128 * 1024))])
def test_the_default_interpreter_is_the_esp32_one_and_unix64_stays_available(esp32, tmp_path, interpreter, maxsize,
                                                                              heap):  # fmt: skip
    cmd = [sys.executable, str(REPO / "tools" / "simboard.py"), "--flash", str(tmp_path / "flash")]
    if interpreter:
        cmd += ["--interpreter", interpreter]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = p.stdout.readline().strip()
        r = subprocess.run([str(REPO / ".venv" / "bin" / "mpremote"), "connect", port, "exec",
                            "import gc, sys; print(sys.maxsize, gc.mem_free() + gc.mem_alloc())"],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    finally:
        p.terminate()
        p.wait(timeout=10)
    got = [int(x) for x in r.stdout.split()]
    assert got[0] == maxsize and heap[0] <= got[1] <= heap[1], r.stdout + r.stderr


def test_with_no_slot_deployed_the_frozen_firmware_boots(esp32, tmp_path):
    flash = make_flash(tmp_path, {"id": "frozen1"})
    b = EmulatedBoard(flash)
    try:
        time.sleep(2)  # the first boot
        d = BoardSession(b.port)
        try:
            d.interrupt()
            deploy_board.reset(d, log=lambda s: None)
            seen = deploy_board.watch(d, 8, settle=0.5, log=lambda s: None)
        finally:
            d.close()
        out = board_exec(b.port, "import sys, firmware.app\nprint(sys.maxsize, sys.path, 'firmware' in sys.modules)")
    finally:
        b.stop()
    assert seen["started"] and seen["failure"] is None, seen
    assert not (flash / "firmware").exists() and not (flash / "slot.json").exists()
    assert "2147483647 ['', '.frozen', '/lib'] True" in out  # 31-bit small ints, an ESP32's sys.path


def test_a_full_session_with_mqtt_over_tls_on_the_emulated_esp32_board(esp32, tmp_path):
    broker, pki = _tls_broker()
    cfg = {"id": "tls-board", "mqtt_host": "localhost", "mqtt_port": broker.port, "mqtt_tls": True,
           "mqtt_ca": "/data/ca.crt"}  # fmt: skip
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "localhost", "-p", str(broker.port), "--cafile", pki["ca"], "-q", "1",
         "-t", "evse/tls-board/session", "-C", "1", "-W", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    b = EmulatedBoard(make_flash(tmp_path, cfg, ca=pki["ca"]))
    try:
        r = subprocess.run([sys.executable, str(RIG), "run", str(BENCH / "plug_charge_unplug.json"), "--port",
                            b.port, "--sim-ev"], capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        out, err = sub.communicate(timeout=120)
        info = board_exec(b.port, "import gc, micropython\ngc.collect()\nprint('free', gc.mem_free(), 'alloc', "
                          "gc.mem_alloc())\nmicropython.mem_info()")  # fmt: skip
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        b.stop()
        broker.close()
    assert sub.returncode == 0, err
    rec = json.loads(out.strip().splitlines()[0])
    assert rec["energy_wh"] > 0, rec
    assert "total: 112000" in info  # the ESP32's heap, nothing more
    largest = max_free_kb(info)[0]
    m = re.search(r"free (\d+) alloc (\d+)", info)
    print("\nemulated esp32 board, 112 KB heap, after a session over TLS: live %.1f KB, free %.1f KB, "
          "largest free block %.1f KB" % (int(m.group(2)) / 1024, int(m.group(1)) / 1024, largest))  # fmt: skip
    # The largest free block varies from run to run (13-33 KB seen); the 16 KB
    # goal is the soak's (below), not yet met.


# --- the 24 h soak ----------------------------------------------------------------------------
SOAK_HOURS = 24
CHECK_EVERY_S = 900  # a memory checkpoint every simulated 15 minutes


def soak_scenario(hours):
    """A session every hour: plug in at :00, charge at 16 A from :00:30 to :40,
    unplug at :41. Three phases, so checkpoints and frames fill the journal."""
    steps = []
    for h in range(hours):
        t = h * 3600
        steps += [
            {"t": t + 10, "ev": "B", "draw_a": 16},
            {"t": t + 30, "ev": "C"},
            {"t": t + 2400, "ev": "B"},
            {"t": t + 2460, "ev": "A"},
        ]
    return {"name": "soak_24h", "until": hours * 3600, "steps": steps}


# Runs in the ESP32-faithful interpreter: the scenario runner with a tick hook
# that, every CHECK_EVERY_S of simulated time, collects garbage and prints the
# GC table (mem_info) and a JSON checkpoint; at the end the link's and the
# journal's counts. A MemoryError anywhere ends it with "MemoryError" printed.
_SOAK = """
import gc, json, sys, micropython
from sim.scenario import Runner
path, port, ca, every_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
with open(path) as f:
    sc = json.load(f)
mqtt = {"id": "soak", "mqtt_host": "localhost", "mqtt_port": port}
if ca != "-":
    mqtt.update({"mqtt_tls": True, "mqtt_ca": ca})
r = Runner(sc, None, False, None, mqtt, flush_ms=30000)
st = {"next": every_s * 1000, "peak": 0, "min_free": 1 << 30}
hook = r.on_tick
def on_tick(sim):
    hook(sim)
    t = sim.now_ms - r.t0
    if t >= st["next"]:
        st["next"] += every_s * 1000
        gc.collect()
        st["peak"] = max(st["peak"], gc.mem_alloc())
        st["min_free"] = min(st["min_free"], gc.mem_free())
        if t // 1000 % 21600 == 0:
            r.fw.journal.compact()  # every 6 h, as the firmware may while idle
        micropython.mem_info()
        print("CHECK", t // 1000, gc.mem_alloc(), gc.mem_free())
r.on_tick = on_tick
try:
    s = r.run()
    fw = r.fw
    j = fw.journal
    print("DONE", json.dumps({"ticks": s["ticks"], "unsafe_closes": s["unsafe_closes"],
                      "pending": j.pending_count(), "compactions": j.compactions, "dropped": j.dropped,
                      "peak_live": st["peak"], "min_free": st["min_free"]}))
except MemoryError as e:
    print("MemoryError", repr(e))
    raise
"""


def soak(esp32, tmp_path, tls):
    """Runs the soak; (figures at the end, largest free block per checkpoint in
    KB, broker restarts, connects the broker saw)."""
    if tls:
        broker, pki = _tls_broker()
    else:
        broker, pki = Broker().start(), {"ca": "-"}
    sc = tmp_path / "soak.json"
    sc.write_text(json.dumps(soak_scenario(SOAK_HOURS)))
    proc = subprocess.Popen(
        [esp32["micropython"], "-c", _SOAK, str(sc), str(broker.port), pki["ca"], str(CHECK_EVERY_S)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    lines = []  # everything but the runner's trace records (one a simulated second)

    def read():
        for line in proc.stdout:
            if not line.startswith('{"t"'):
                lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    restarts = 0
    try:
        # Restart the broker whenever the simulation has gone another 3 hours
        # (a TLS reconnect each time), while it runs.
        next_restart_s = 3 * 3600
        while proc.poll() is None:
            time.sleep(0.5)
            done_s = max([int(x.split()[1]) for x in list(lines) if x.startswith("CHECK ")], default=0)
            if done_s >= next_restart_s and done_s < (SOAK_HOURS - 2) * 3600:
                broker.stop()
                time.sleep(1.0)
                broker.start()
                restarts += 1
                next_restart_s = done_s + 3 * 3600
        proc.wait(timeout=900)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log = Path(broker.log).read_text(errors="replace") if Path(broker.log).exists() else ""
        broker.close()
    out = "".join(lines)
    assert "MemoryError" not in out, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    end = json.loads([x for x in lines if x.startswith("DONE ")][-1][5:])
    free_kb = max_free_kb(out)
    connects = len(re.findall(r"New client connected .* as soak", log))
    print("\nsoak, %d h simulated on the ESP32-faithful interpreter at 112 KB, MQTT %s: %d broker restarts, "
          "%d connects, %d journal compactions, %d sessions pending at the end, peak live heap %.1f KB, "
          "smallest free heap %.1f KB, largest free block min %.1f KB / last %.1f KB over %d checkpoints; "
          "hourly: %s" % (SOAK_HOURS, "over TLS" if tls else "plain", restarts, connects, end["compactions"],
                          end["pending"], end["peak_live"] / 1024, end["min_free"] / 1024, min(free_kb), free_kb[-1],
                          len(free_kb), " ".join("%.0f" % x for x in free_kb[3::4])))  # fmt: skip
    return end, free_kb, restarts, connects


@pytest.fixture(scope="module")
def day_over_tls(esp32, tmp_path_factory):
    """One soak over TLS for the tests below (it takes minutes)."""
    return soak(esp32, tmp_path_factory.mktemp("soak"), tls=True)


def test_a_simulated_day_at_112k_with_tls_reconnects_has_no_memory_error_and_loses_no_session(day_over_tls):
    end, free_kb, restarts, connects = day_over_tls
    assert end["unsafe_closes"] == 0
    # TLS reconnects. Not every restart need be followed by one before the run
    # ends: the link's back-off runs in wall time, the day in accelerated time.
    assert restarts >= 3 and connects >= 3, (restarts, connects)
    assert end["compactions"] >= 1
    # None lost: a session not yet acked at the end stays in the journal
    # (pending, printed) and goes out at the next connect.
    assert end["dropped"] == 0
    assert len(free_kb) >= SOAK_HOURS * 3600 // CHECK_EVERY_S - 1  # it ran the whole day


def test_a_simulated_day_at_112k_keeps_the_largest_free_block_at_16kb(day_over_tls):
    end, free_kb, restarts, connects = day_over_tls
    assert min(free_kb) >= LARGEST_FREE_MIN_KB


def test_a_deployed_slot_comes_before_the_frozen_firmware_and_its_heap_cost_is_printed(esp32, tmp_path):
    """tools/deploy.py on the esp32 board: the slot's .mpy files (compiled for
    the board's arch and 31-bit small ints) are first on sys.path, so they run
    instead of the frozen firmware; the development path. Prints the live heap
    of each after boot (the firmware idle, nothing plugged in)."""
    flash = make_flash(tmp_path, {"id": "slot1"})
    tree = tmp_path / "tree"
    for name in ("firmware", "hal", "sim"):
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("boot.py", "main.py"):
        shutil.copy(REPO / name, tree / name)
    (tree / "firmware" / "__init__.py").write_text('VERSION = "9.9.9"\n')
    probe = ("import gc, sys, micropython, firmware\ngc.collect()\nprint('FILE', firmware.__file__, firmware.VERSION, "
             "'alloc', gc.mem_alloc())\nmicropython.mem_info()")  # fmt: skip
    b = EmulatedBoard(flash)
    try:
        time.sleep(2)  # the frozen firmware boots
        frozen = board_exec(b.port, probe)
        r = subprocess.run([sys.executable, str(REPO / "tools" / "deploy.py"), "--port", b.port, "--source",
                            str(tree), "--watch", "8"], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(1)
        slot = board_exec(b.port, probe)
    finally:
        b.stop()
    assert re.search(r"FILE firmware/__init__\.py ", frozen), frozen  # frozen: no folder in front
    m = re.search(r"FILE (/slot_[ab])/firmware/__init__\.mpy 9\.9\.9", slot)
    assert m, slot
    kb = [int(re.search(r"alloc (\d+)", x).group(1)) / 1024 for x in (frozen, slot)]
    print("\nemulated esp32 board, 112 KB heap, firmware idle after boot: live heap %.1f KB frozen, %.1f KB from "
          "%s as .mpy (largest free block %.1f / %.1f KB)"
          % (kb[0], kb[1], m.group(1), max_free_kb(frozen)[0], max_free_kb(slot)[0]))  # fmt: skip
    assert kb[1] > kb[0]  # the slot's bytecode is on the heap, the frozen firmware's is not
