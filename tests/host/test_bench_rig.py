"""Bench mode end to end: `tools/rig.py run SCENARIO --port PORT` against the
emulated board (tools/simboard.py) as a board is shipped: the ESP32-faithful
interpreter at the ESP32's 112 KB heap with this checkout's firmware/, hal/,
umqtt.simple (and the simulator) frozen into it, boot.py and main.py in a temp
flash folder and no slot deployed, so the frozen firmware runs.

The board streams firmware/rigtrace.py's trace lines; with --sim-ev its simulated
EV follows the uploaded scenario (sim/follower.py). Scenarios run in real time, so
the dedicated ones in tests/scenarios/rig/ are short (3-12 s). Plus the
pieces that need no board: RigTrace in the unix port (records on change and
every second, no allocation when nothing is due, t across the 2^30 tick wrap),
the operator texts and the argument checks.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
MICROPYTHON = BIN / "micropython"
RIG = REPO / "tools" / "rig.py"
BENCH = REPO / "tests" / "scenarios" / "rig"
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).parent))
from broker import Broker, mosquitto_path  # noqa: E402
from emulated_board import EmulatedBoard, esp32_ready  # noqa: E402
from evrig.board_run import describe_step, needs_operator  # noqa: E402
from evrig.scenario import TRACE_FIELDS  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (MICROPYTHON.exists() and (BIN / "mpremote").exists()),
    reason="needs .venv with micropython and mpremote (make deps)",
)


def need_esp32():
    ok, why = esp32_ready()
    if not ok:
        pytest.skip("the ESP32-faithful interpreter cannot be built (make esp32): " + why)


# --- the emulated board ------------------------------------------------------------------------
def make_flash(root, config):
    """A flash folder with this checkout's boot.py and main.py and the board's
    own /data/config.json; the firmware comes frozen with the interpreter
    (firmware sources at the flash root would come first on sys.path)."""
    flash = root / "flash"
    flash.mkdir()
    for name in ("boot.py", "main.py"):
        shutil.copy(REPO / name, flash / name)
    (flash / "data").mkdir()
    (flash / "data" / "config.json").write_text(json.dumps(config))
    return flash


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    need_esp32()
    # The board's own settings, which the rig must leave as it found them.
    b = EmulatedBoard(make_flash(tmp_path_factory.mktemp("bench"), {"id": "bench1", "fault_retries": 2}))
    yield b
    b.stop()


def run_rig(*args, timeout=90, stdin=None):
    return subprocess.run(
        [sys.executable, str(RIG), "run", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, input=stdin, cwd=REPO,
    )  # fmt: skip


def read_trace(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_emulated_board_charges_and_unplugs_as_the_scenario_says(board, tmp_path):
    trace = tmp_path / "trace.jsonl"
    plot = tmp_path / "plot.png"
    r = run_rig(BENCH / "plug_charge_unplug.json", "--port", board.port, "--sim-ev",
                "--trace", trace, "--plot", plot)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "13 of 13 expectations held" in r.stdout
    recs = read_trace(trace)
    states = [x["state"] for x in recs]
    # The board's own clock: t = 0 at the firmware start, then the scenario's path.
    assert recs[0]["t"] < 0.1 and recs[0]["state"] == "A1"
    for s in ("B2", "C2", "A1"):
        assert s in states
    assert states.index("B2") < states.index("C2") < len(states) - 1 - states[::-1].index("A1")
    assert all(recs[i]["t"] <= recs[i + 1]["t"] for i in range(len(recs) - 1))
    assert recs[-1]["t"] >= 12
    charging = [x for x in recs if x["state"] == "C2" and x["t"] > 5]
    assert charging and all(abs(c - 16) < 0.5 for c in charging[-1]["current_a"])
    assert all(x["truth_energy_wh"] is not None for x in recs)  # the sim knows the truth
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Announced at their time, the remote command answered by the board:
    assert "t=1.5 s: set EV to state C (close S2)" in r.stdout
    assert "set current_a=10 -> ok" in r.stdout


def test_rig_restores_the_board_files_it_changed(board):
    data = board.flash / "data"
    assert json.loads((data / "config.json").read_text()) == {"id": "bench1", "fault_retries": 2}
    for name in ("sim.json", "rig_scenario.json", "rig_backup.json"):
        assert not (data / name).exists(), name


def test_failing_expectation_exits_1(board, tmp_path):
    trace = tmp_path / "trace.jsonl"
    r = run_rig(BENCH / "wrong_expect.json", "--port", board.port, "--sim-ev", "--trace", trace)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'FAIL step 1 (t=2.000): state expected "C2", got "B2"' in r.stdout
    assert read_trace(trace)[-1]["t"] >= 3


@pytest.mark.skipif(mosquitto_path() is None, reason="needs mosquitto")
def test_set_steps_go_over_mqtt_with_broker(tmp_path):
    """--broker: the rig removes `set` from the uploaded scenario and publishes
    it to the board's command topic; the board's link applies it and acks."""
    need_esp32()
    with Broker() as broker:
        cfg = {"id": "bench2", "mqtt_host": "127.0.0.1", "mqtt_port": broker.port}
        b = EmulatedBoard(make_flash(tmp_path, cfg))
        try:
            r = run_rig(BENCH / "plug_charge_unplug.json", "--port", b.port, "--sim-ev",
                        "--broker", "127.0.0.1:%d" % broker.port)  # fmt: skip
        finally:
            b.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rig sends remote command current_a=10" in r.stdout
    assert 'ack {"cmd": "current_a", "ok": true, "error": null}' in r.stdout
    assert "set current_a=10 -> ok" not in r.stdout  # not applied by the board's simrig


def test_step_mode_waits_for_enter_and_moves_later_steps(board, tmp_path):
    """Without --sim-ev nobody moves the emulated EV: it stays unplugged. The
    operator confirms the step at t=0.5 only 3 s after the prompt, so the
    expect at t=1 and the end move by that much (however long the boot took)."""
    sc = {
        "name": "step_mode", "until": 1.5,
        "steps": [{"t": 0.5, "ev": "A"}, {"t": 1, "expect": {"state": "A1"}}],
    }  # fmt: skip
    path = tmp_path / "step.json"
    path.write_text(json.dumps(sc))
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(RIG), "run", str(path), "--port", board.port, "--step", "--trace", str(trace)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        head = b""
        deadline = time.monotonic() + 60
        while b"press Enter" not in head:  # the prompt of the step at t=0.5 (no newline)
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk and time.monotonic() < deadline, "no prompt; output: %r" % head
            head += chunk
        time.sleep(3)  # the operator takes 3 s
        out, err = proc.communicate("\n", timeout=60)
        out = head.decode() + out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert "later steps move by" in out
    # The run ended at until + the wait, on the board's clock.
    assert read_trace(trace)[-1]["t"] >= 3


def test_restore_command_undoes_an_aborted_run(board):
    data = board.flash / "data"
    backup = {"config.json": '{"id": "bench1", "fault_retries": 2}', "sim.json": None}
    (data / "rig_backup.json").write_text(json.dumps(backup))
    (data / "config.json").write_text('{"bench_trace": true}')
    (data / "rig_scenario.json").write_text("{}")
    r = subprocess.run([sys.executable, str(RIG), "restore", "--port", board.port],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((data / "config.json").read_text()) == {"id": "bench1", "fault_retries": 2}
    assert not (data / "rig_backup.json").exists()
    assert not (data / "rig_scenario.json").exists()


def test_no_board_on_the_port_exits_3(tmp_path):
    r = run_rig(BENCH / "wrong_expect.json", "--port", tmp_path / "no-such-tty", timeout=30)
    assert r.returncode == 3
    assert "no board" in r.stderr


@pytest.mark.parametrize(
    "extra",
    [["--sim-ev", "--step"], ["--realtime"], ["--seed", "3"], ["--broker", "nohostport"]],
)
def test_bench_options_that_do_not_fit_exit_2(extra):
    r = run_rig(BENCH / "wrong_expect.json", "--port", "/dev/null", *extra, timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr


# --- operator texts -------------------------------------------------------------------------------
def test_steps_are_announced_in_rig_words():
    assert describe_step({"t": 3, "ev": "C"}) == ["set EV to state C (close S2)"]
    assert describe_step({"t": 10, "fault": "diode_short"}) == ["short the diode"]
    assert describe_step({"t": 10.05, "expect": {"contactor": False, "state": "F"}}) == [
        "expect contactor open, state F"
    ]
    assert describe_step({"t": 1, "pp_ohm": 220}) == ["set PP to 220 ohm (32 A cable)"]
    assert describe_step({"t": 1, "set": {"current_a": 10.0}}, "mqtt") == [
        "rig sends remote command current_a=10"
    ]
    assert needs_operator({"t": 1, "ev": "B"})
    assert not needs_operator({"t": 1, "expect": {"state": "A1"}})
    assert needs_operator({"t": 1, "set": {"stop": None}})
    assert not needs_operator({"t": 1, "set": {"stop": None}}, mqtt=True)


# --- RigTrace in the unix port -------------------------------------------------------------------
BENCH_SCRIPT = textwrap.dedent(
    """
    import gc, micropython
    from sim.board import SimBoard
    # The board first (its tables want large blocks), then the firmware, as main.py does.
    sim = SimBoard(data_dir=DATA, start_ticks=(1 << 30) - 2500)  # wraps after 2.5 s
    from firmware.app import Firmware
    fw = Firmware(sim, {"bench_trace": True})
    b = fw.rig_trace

    def run(n):
        while n:
            fw.tick()
            sim.wait_tick(10)
            n -= 1

    run(250)  # 2.5 s, EV unplugged: a record at start and one a second
    print("IDLE", b.records)
    n = 50
    micropython.heap_lock()
    try:
        while n:
            b.poll()  # nothing due: must not allocate
            n -= 1
    finally:
        micropython.heap_unlock()
    print("NOALLOC", b.records)
    sim.set_ev("B")
    run(10)
    print("PLUGGED", b.records)
    """
)


def test_bench_trace_prints_on_change_and_every_second_without_allocating(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "bench_check.py"
    script.write_text("DATA = %r\n" % str(data) + BENCH_SCRIPT)
    # On the ESP32-faithful interpreter at its 112 KB heap with the firmware
    # frozen, as a board runs it (from source on the 64-bit port, the
    # compiler's heap ran out at 256k).
    need_esp32()
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(REPO / "build" / "esp32" / "micropython"), str(script)],
                       capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    recs = [json.loads(x[len("TRACE "):]) for x in lines if x.startswith("TRACE ")]
    marks = {x.split()[0]: int(x.split()[1]) for x in lines if not x.startswith("TRACE ")}
    # 2.5 s idle: t = 0, 1, 2
    assert marks["IDLE"] == 3
    assert [r_["t"] for r_ in recs[:3]] == [0.0, 1.0, 2.0]
    assert marks["NOALLOC"] == marks["IDLE"]
    assert marks["PLUGGED"] > marks["NOALLOC"]  # the state change was printed at once
    plugged = recs[marks["NOALLOC"]:]
    assert any(x["state"].startswith("B") for x in plugged)
    # the ticks wrapped at 2.5 s: t still counts on from the start
    assert all(2.5 <= x["t"] <= 2.6 for x in plugged)
    assert set(recs[0]) == set(TRACE_FIELDS)
