"""Static checks over the whole repository.

- ruff (configured in ruff.toml: MicroPython-aware, lib/ and .venv excluded)
  reports zero findings on every Python file;
- the layering (docs/architecture.md): firmware/ imports no port module, no
  clock, nothing of hal/ or sim/ (it reaches the board and time only through the
  HAL object it is given); hal/ imports nothing of firmware/ or sim/; no
  module of either imports by a computed name (__import__, importlib);
- nothing of sim/ is in what tools/deploy.py builds for a real board.

The ESP32 type check (mypy against micropython-esp32-stubs) lives in
tests/host/test_esp32_hal.py.
"""

import ast
import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUFF = os.path.join(REPO, ".venv", "bin", "ruff")
# Modules that only a board driver may use: pins, peripherals, radios, sockets, TLS.
PORT_MODULES = {"machine", "network", "socket", "usocket", "ssl", "ussl", "tls", "esp", "esp32", "bluetooth",
                "ubluetooth", "neopixel", "onewire", "dht", "espnow", "webrepl", "rp2", "pyb", "stm"}  # fmt: skip
# firmware/ also never reads a clock itself: time comes from the HAL (hal.ticks_ms(),
# hal.ticks_diff()), which is what lets the simulation run it on a virtual clock.
# The time module's calendar arithmetic (gmtime, mktime: no clock) is allowed.
# Allowed there: the core modules every MicroPython port has (micropython, array,
# json, os, sys, binascii, select) and _thread: the MQTT link runs in its own
# thread so that network I/O never blocks the control tick; a thread is a
# language feature (the ESP32 and unix ports have it), not a board's hardware.
FIRMWARE_MAY_NOT = PORT_MODULES | {"hal", "sim", "tools", "tests"}
TIME_MODULES = {"time", "utime"}
CALENDAR = {"gmtime", "mktime"}
HAL_MAY_NOT = {"firmware", "sim", "tools", "tests"}


def test_ruff_reports_no_findings():
    proc = subprocess.run(
        [RUFF, "check", "--no-cache", "--output-format", "concise", "."],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, "ruff findings (fix them, or `ruff check --fix` for the safe ones):\n" + (
        proc.stdout + proc.stderr
    )


def test_ruff_config_excludes_vendored_and_venv_code():
    proc = subprocess.run(
        [RUFF, "check", "--no-cache", "--show-files", "."], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    files = proc.stdout.splitlines()
    assert any(f.endswith(os.path.join("firmware", "charger.py")) for f in files), "ruff does not see firmware/"
    assert not [f for f in files if os.sep + "lib" + os.sep in f or os.sep + ".venv" + os.sep in f]


def _imports(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


def _sources(folder):
    paths = sorted(glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True))
    assert paths, "no Python files under %s/" % folder
    return paths


def _forbidden_imports(folder, forbidden):
    bad = []
    for path in _sources(folder):
        for line, mod in _imports(path):
            if mod in forbidden:
                bad.append("%s:%d imports %s" % (os.path.relpath(path, REPO), line, mod))
    return bad


def test_imports_are_seen_wherever_they_are_written(tmp_path):
    # The checker itself: nested, conditional and from-imports all count.
    src = tmp_path / "m.py"
    src.write_text("import os\ntry:\n    import machine\nexcept ImportError:\n    pass\n"
                   "def f():\n    from sim.board import SimBoard\n    import time as t\n")
    assert sorted(m for _, m in _imports(str(src))) == ["machine", "os", "sim", "time"]


def test_firmware_never_imports_port_modules_a_clock_hal_or_sim():
    bad = _forbidden_imports("firmware", FIRMWARE_MAY_NOT)
    assert bad == [], "firmware/ must reach the board and time only through the HAL object:\n" + "\n".join(bad)


def _clock_uses(path):
    """Where a file uses the time module for anything but calendar arithmetic."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name in TIME_MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module in TIME_MODULES:
            bad += [(node.lineno, "from %s import %s" % (node.module, a.name)) for a in node.names
                    if a.name not in CALENDAR]  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in names:
            parent_ok = False
            for p in ast.walk(tree):
                if isinstance(p, ast.Attribute) and p.value is node and p.attr in CALENDAR:
                    parent_ok = True
                    break
            if not parent_ok:
                bad.append((node.lineno, "time used as %s" % ast.unparse(node)))
    return bad


def test_firmware_reads_no_clock_itself_the_time_module_only_for_calendar_arithmetic():
    bad = []
    for path in _sources("firmware"):
        bad += ["%s:%d %s" % (os.path.relpath(path, REPO), line, what) for line, what in _clock_uses(path)]
    assert bad == [], "firmware/ takes time from the HAL (hal.ticks_ms()), not the time module:\n" + "\n".join(bad)


def test_the_clock_check_sees_a_clock_read(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import time\nimport utime as u\nfrom time import ticks_ms\n"
                   "def f(w):\n    return time.gmtime(w), time.ticks_ms(), u.time()\n")
    found = _clock_uses(str(src))
    assert (3, "from time import ticks_ms") in found
    assert len(found) == 3, found  # ticks_ms, time(), the from-import; gmtime passes


def test_hal_never_imports_firmware_or_sim():
    bad = _forbidden_imports("hal", HAL_MAY_NOT)
    assert bad == [], "hal/ is the board, below the firmware and apart from the simulation:\n" + "\n".join(bad)


def test_firmware_and_hal_never_import_by_a_computed_name():
    bad = []
    for path in _sources("firmware") + _sources("hal"):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                name = node.func.id
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                name = "importlib" if any(m.split(".")[0] == "importlib" for m in mods) else None
            if name in ("__import__", "importlib"):
                bad.append("%s:%d %s" % (os.path.relpath(path, REPO), node.lineno, name))
    assert bad == [], "imports the static checks cannot see:\n" + "\n".join(bad)


def test_nothing_of_sim_is_deployed_to_a_real_board():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import deploy_slots

    tool = deploy_slots.mpy_cross()
    ver = deploy_slots.cross_version(tool)
    from pathlib import Path

    real = deploy_slots.build(Path(REPO), ver, "xtensawin", [], 31, unix=False)
    emulated = deploy_slots.build(Path(REPO), ver, "x64", [], 63, unix=True)
    files = sorted(real.slot) + sorted(real.root)
    assert any(f.startswith("firmware/") for f in files) and any(f.startswith("hal/") for f in files)
    assert [f for f in files if f.startswith(("sim/", "/sim/")) or "/sim/" in f] == [], files
    # The same build does carry it for the emulated board: the check above can see sim/.
    assert "sim/board.mpy" in emulated.slot
