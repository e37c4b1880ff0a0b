"""hal/esp32.py cannot run here (no ESP32), so it is checked three ways:

1. statically: mypy against the micropython-esp32-stubs installed in .venv
   (settings in tools/mypy-esp32.ini) must report zero errors;
2. every board description in hal/boards/ must pass the driver's own
   validate(), and bad descriptions must fail naming the bad key;
3. the driver is imported under CPython and under the MicroPython unix port
   with a tiny fake `machine`/`time` (below) to exercise its pure logic, and on
   MicroPython the hot-path methods run inside micropython.heap_lock(), which
   raises MemoryError on any allocation.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import types
from array import array
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_PY = REPO / ".venv" / "bin" / "python"
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"
BOARDS = sorted((REPO / "hal" / "boards").glob("*.json"))

# The fakes run under CPython and MicroPython alike: small ints only, no
# allocation in the methods the hot path calls.
FAKE_MACHINE = """
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
cause = [1]


def reset_cause():
    return cause[0]


class Pin:
    IN = 1
    OUT = 3
    PULL_DOWN = 1
    PULL_UP = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        self.v = 0 if value is None else value

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v

    def __call__(self):  # machine_pin_call: the fast read of the pad
        return self.v


class PWM:
    def __init__(self, pin, freq=0, duty_u16=0, invert=False):
        self.pin = pin
        self.freq = freq
        self.u16 = duty_u16
        self.ns = -1
        self.invert = invert
        self.writes = 0

    def duty_ns(self, ns):
        self.ns = ns
        self.u16 = -1
        self.writes += 1

    def duty_u16(self, u):
        self.u16 = u
        self.ns = -1
        self.writes += 1


class ADC:
    ATTN_11DB = 3

    def __init__(self, pin, atten=0):
        self.pin = pin
        self.atten = atten
        self.seq = [0]
        self.k = 0

    def read_uv(self):
        v = self.seq[self.k]
        self.k += 1
        if self.k >= len(self.seq):
            self.k = 0
        return v

    def read_u16(self):
        return self.read_uv() // 50


class RTC:
    set_to = []

    def datetime(self, t):
        RTC.set_to.append(t)


class WDT:
    refuse_reinit = False  # True: an old build whose WDT() fails once started
    started = False

    def __init__(self, timeout=5000):
        if WDT.refuse_reinit and WDT.started:
            raise OSError(259)  # ESP_ERR_INVALID_STATE
        WDT.started = True
        self.timeout = timeout
        self.fed = 0

    def feed(self):
        self.fed += 1
"""

FAKE_TIME = """
PERIOD = 1 << 30
MASK = PERIOD - 1
HALF = PERIOD >> 1
ms = [0]
us = [0]
us_step = [7]
slept = [0, 0]  # last sleep_ms argument, number of calls
wall = [0]
epoch = [2000]


def ticks_ms():
    return ms[0]


def ticks_us():
    us[0] = (us[0] + us_step[0]) & MASK
    return us[0]


def ticks_add(t, d):
    return (t + d) & MASK


def ticks_diff(a, b):
    return ((a - b + HALF) & MASK) - HALF


def sleep_ms(n):
    slept[0] = n
    slept[1] += 1
    ms[0] = (ms[0] + n) & MASK


def time():
    return wall[0]


def gmtime(s):
    return (epoch[0], 1, 1, 0, 0, 0, 5, 1)
"""

# wait_tick sleeps in an empty poll (GIL released on an ESP32): on the fake clock.
FAKE_SELECT = """
import time as _t


class _Poll:
    def ipoll(self, ms=-1, flags=0):
        _t.slept[0] = ms
        _t.slept[1] += 1
        _t.ms[0] = (_t.ms[0] + ms) & _t.MASK
        return ()


def poll():
    return _Poll()
"""

FAKE_OS = """
made = []


def stat(p):
    raise OSError(2)


def mkdir(p):
    made.append(p)
"""


def _module(name, src):
    m = types.ModuleType(name)
    exec(compile(src, name, "exec"), m.__dict__)
    return m


@pytest.fixture
def hw(monkeypatch):
    """(esp32 module, fake machine, fake time) with hal/esp32.py loaded under
    CPython against the fakes."""
    machine = _module("machine", FAKE_MACHINE)
    clock = _module("time", FAKE_TIME)
    upy = types.ModuleType("micropython")
    upy.const = lambda x: x
    upy.native = lambda f: f
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setitem(sys.modules, "machine", machine)
    monkeypatch.setitem(sys.modules, "micropython", upy)
    real_time = sys.modules["time"]
    spec = importlib.util.spec_from_file_location("hal_esp32_under_test", REPO / "hal" / "esp32.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["time"] = clock  # only while the module body runs
    real_select = sys.modules.get("select")
    try:
        sys.modules["select"] = _module("select", FAKE_SELECT)
        spec.loader.exec_module(mod)
    finally:
        sys.modules["time"] = real_time
        if real_select is not None:
            sys.modules["select"] = real_select
    mod.os = _module("os", FAKE_OS)
    return mod, machine, clock


def _contract(mod):
    """hal/contract.py as the driver under test imported it."""
    return sys.modules[mod.Board.__module__]


def _boardfile(mod):
    """hal/boardfile.py as the driver under test imported it."""
    return sys.modules[mod.validate.__module__]


def devkit():
    return json.loads((REPO / "hal" / "boards" / "esp32_devkit.json").read_text())


def two_point_devkit():
    """The devkit with the older two-point calibration (read_uv mV at -12 V
    and +12 V) instead of its table: still accepted, read with read_uv."""
    d = devkit()
    del d["pilot"]["cal"]
    d["pilot"]["adc_mv_at_minus12v"] = 210
    d["pilot"]["adc_mv_at_plus12v"] = 3090
    return d


# --- 1. static check ------------------------------------------------------------


def _typeshed(tmp_path):
    """A typeshed dir: MicroPython's reduced stdlib plus the ESP32 port modules."""
    if not VENV_PY.exists():
        pytest.fail("no .venv: run `make deps` in " + str(REPO))
    q = (
        "import importlib.metadata as m, json;"
        "d = m.distribution('micropython-esp32-stubs');"
        "s = m.distribution('micropython-stdlib-stubs');"
        "print(json.dumps([str(d.locate_file('')), [str(f) for f in d.files], str(s.locate_file('stdlib'))]))"
    )
    r = subprocess.run([str(VENV_PY), "-c", q], capture_output=True, text=True)
    assert r.returncode == 0, "micropython-esp32-stubs / micropython-stdlib-stubs not installed in .venv: " + r.stderr
    root, files, stdlib = json.loads(r.stdout)
    root, stdlib = Path(root), Path(stdlib)
    ts = tmp_path / "typeshed"
    (ts / "stdlib").mkdir(parents=True)
    for f in stdlib.iterdir():
        if f.name != "VERSIONS":
            (ts / "stdlib" / f.name).symlink_to(f)
    versions = (stdlib / "VERSIONS").read_text()
    tops = set()
    for f in files:
        top = f.split("/")[0]
        if f.endswith(".pyi") and not top.endswith(".dist-info"):
            tops.add(top)
    tops.add("_mpy_shed")  # helper package shipped by micropython-stdlib-stubs
    for top in sorted(tops):
        name = top[:-4] if top.endswith(".pyi") else top
        if (ts / "stdlib" / top).exists() or not (root / top).exists():
            continue
        (ts / "stdlib" / top).symlink_to(root / top)
        versions += "\n" + name + ": 3.0-"
    (ts / "stdlib" / "VERSIONS").write_text(versions + "\n")
    # mypy needs mypy_extensions from a typeshed's stubs/ folder.
    r = subprocess.run(
        [str(VENV_PY), "-c", "import mypy, os; print(os.path.dirname(mypy.__file__))"], capture_output=True, text=True
    )
    assert r.returncode == 0, "mypy not installed in .venv: " + r.stderr
    ext = Path(r.stdout.strip()) / "typeshed" / "stubs" / "mypy-extensions"
    (ts / "stubs").mkdir()
    (ts / "stubs" / "mypy-extensions").symlink_to(ext)
    return ts


def _mypy(tmp_path, target):
    ts = _typeshed(tmp_path)
    cmd = [
        str(VENV_PY),
        "-m",
        "mypy",
        "--config-file",
        str(REPO / "tools" / "mypy-esp32.ini"),
        "--custom-typeshed-dir",
        str(ts),
        "--cache-dir",
        str(tmp_path / "cache"),
        str(target),
    ]
    return subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=300)


def test_mypy_reports_zero_errors_for_esp32_driver_against_esp32_stubs(tmp_path):
    r = _mypy(tmp_path, "hal/esp32.py")
    assert r.returncode == 0 and "Success: no issues found" in r.stdout, r.stdout + r.stderr


def test_mypy_reports_zero_errors_for_the_network_layer_against_esp32_stubs(tmp_path):
    r = _mypy(tmp_path, "hal/net.py")
    assert r.returncode == 0 and "Success: no issues found" in r.stdout, r.stdout + r.stderr


def test_mypy_setup_catches_misuse_of_the_esp32_api(tmp_path):
    # The same setup must fail on code the ESP32 port would reject, or the
    # zero-error result above would mean nothing.
    bad = tmp_path / "hal_bad" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        textwrap.dedent("""
        import machine
        import time
        p = machine.PWM(machine.Pin(25), freq=1000)
        p.duty_ns("half")
        time.ticks_foo()
        machine.ADC(machine.Pin(36)).read_u17()
    """)
    )
    r = _mypy(tmp_path, bad)
    assert r.returncode == 1, r.stdout + r.stderr
    for needle in ('"duty_ns"', '"ticks_foo"', '"read_u17"'):
        assert needle in r.stdout, r.stdout


# --- 2. board description files ------------------------------------------------------


def test_there_is_at_least_one_board_file():
    assert [b.name for b in BOARDS if b.name == "esp32_devkit.json"]


@pytest.mark.parametrize("path", BOARDS, ids=[b.name for b in BOARDS])
def test_board_file_passes_the_driver_schema(hw, path):
    mod, _, _ = hw
    b = _boardfile(mod).load(str(path))
    assert b["name"] == path.stem


def _bad(mod, change):
    d = devkit()
    change(d)
    with pytest.raises(_boardfile(mod).BoardFileError) as e:
        _boardfile(mod).validate(d)
    return str(e.value)


def test_missing_key_is_named(hw):
    mod, _, _ = hw
    assert "'pilot.adc_pin'" in _bad(mod, lambda d: d["pilot"].pop("adc_pin"))
    assert "'ct.burden_ohm'" in _bad(mod, lambda d: d["ct"].pop("burden_ohm"))


def test_wrong_type_and_range_are_named(hw):
    mod, _, _ = hw
    assert "'pp.pullup_ohm'" in _bad(mod, lambda d: d["pp"].update(pullup_ohm="1k"))
    assert "'pilot.burst'" in _bad(mod, lambda d: d["pilot"].update(burst=4))
    assert "'pilot.pwm_invert'" in _bad(mod, lambda d: d["pilot"].update(pwm_invert=0))


def test_pin_rules_are_enforced(hw):
    mod, _, _ = hw
    assert "input-only" in _bad(mod, lambda d: d["contactor"].update(pins=[34]))
    assert "flash pin" in _bad(mod, lambda d: d["rcd"].update(test_pin=6))
    assert "ADC1" in _bad(mod, lambda d: d["ct"].update(pins=[34, 35, 4]))
    assert "already used" in _bad(mod, lambda d: d["rcd"].update(test_pin=26))
    assert "no pull" in _bad(mod, lambda d: d["rcd"].update(trip_pin=35, trip_pull="up"))


def _s3(d):
    """The devkit's functions moved to ESP32-S3 pins that pass every S3 rule."""
    d["chip"] = "esp32s3"
    d["pilot"].update(pwm_pin=38, adc_pin=1)
    d["pp"]["adc_pin"] = 2
    d["contactor"].update(pins=[39, 40], feedback_pin=14)
    d["rcd"].update(trip_pin=13, test_pin=41)
    d["ntc"][0]["adc_pin"] = 3
    d["ct"]["pins"] = [4, 5, 6]
    d["led"]["pin"] = 48


def test_esp32s3_pin_rules_are_enforced(hw):
    mod, _, _ = hw
    d = devkit()
    _s3(d)
    assert _boardfile(mod).validate(d)["chip"] == "esp32s3"
    for change, why in (
        (lambda d: d["contactor"].update(pins=[26, 40]), "flash pin"),  # SPI flash / PSRAM
        (lambda d: d["contactor"].update(pins=[23, 40]), "does not exist"),
        (lambda d: d["ct"].update(pins=[4, 5, 12]), "ADC1 pin (1..10)"),  # ADC2: dead with WiFi
        (lambda d: d["contactor"].update(pins=[46, 40]), "strapping pin"),
        (lambda d: d["rcd"].update(test_pin=0), "strapping pin"),
        (lambda d: d["led"].update(pin=19), "USB data pin"),
        (lambda d: d.update(octal_psram=True) or d["contactor"].update(pins=[35, 40]), "flash pin"),
        (lambda d: d.update(chip="esp32c3"), "'chip'"),
    ):
        bad = devkit()
        _s3(bad)
        change(bad)
        with pytest.raises(_boardfile(mod).BoardFileError) as e:
            _boardfile(mod).validate(bad)
        assert why in str(e.value), (why, str(e.value))
    assert _boardfile(mod).validate(devkit())["chip"] == "esp32"  # no "chip": the original ESP32's rules


def test_unreadable_or_broken_board_file_fails_clearly(hw, tmp_path):
    mod, _, _ = hw
    with pytest.raises(_boardfile(mod).BoardFileError, match="cannot read"):
        _boardfile(mod).load(str(tmp_path / "none.json"))
    p = tmp_path / "broken.json"
    p.write_text("{ not json")
    with pytest.raises(_boardfile(mod).BoardFileError, match="not valid JSON"):
        _boardfile(mod).load(str(p))
    p.write_bytes(b'{"name": "\xff"}')  # invalid UTF-8
    with pytest.raises(_boardfile(mod).BoardFileError, match="not valid JSON"):
        _boardfile(mod).load(str(p))
    p.write_bytes(b'{"name": "' + b"x" * (3 << 20) + b'"}')  # 3 MB: not read whole
    with pytest.raises(_boardfile(mod).BoardFileError, match="larger than"):
        _boardfile(mod).load(str(p))


# --- 3. pure logic under CPython -------------------------------------------------------


def test_pwm_duty_per_mille_maps_to_ns_and_steady_levels_to_full_duty(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=devkit())
    pwm = b._pwm
    assert pwm.freq == 1000 and pwm.u16 == 65535  # constructed at steady +12 V
    b.pilot_pwm(100)
    assert pwm.ns == 100000  # 10 % of 1 ms
    b.pilot_pwm(533)
    assert pwm.ns == 533000
    b.pilot_pwm(1200)
    assert pwm.ns == 1000000  # clamped to 100 %
    b.pilot_steady(_contract(mod).PILOT_MINUS12)
    assert pwm.u16 == 0
    b.pilot_steady(_contract(mod).PILOT_PLUS12)
    assert pwm.u16 == 65535


def test_unchanged_pilot_command_is_not_rewritten(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=devkit())
    b.pilot_pwm(250)
    n = b._pwm.writes
    b.pilot_pwm(250)
    b.pilot_steady(_contract(mod).PILOT_PLUS12)
    b.pilot_steady(_contract(mod).PILOT_PLUS12)
    assert b._pwm.writes == n + 1


def test_pilot_calibration_points(hw):
    mod, _, _ = hw
    cal = sys.modules[mod.cal_mv.__module__]  # hal/pilotcal.py as the driver imported it
    assert cal.pilot_mv(210, 210, 3090) == -12000
    assert cal.pilot_mv(3090, 210, 3090) == 12000
    assert cal.pilot_mv(1650, 210, 3090) == 0


def _adc_mv(volts_mv, lo=210, hi=3090):
    return lo + (volts_mv + 12000) * (hi - lo) // 24000


def test_pilot_read_with_pwm_separates_high_and_low_levels(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=two_point_devkit())
    b.pilot_pwm(100)
    hi, lo = _adc_mv(6000) * 1000, _adc_mv(-12000) * 1000
    edge = _adc_mv(-3000) * 1000
    # ~10 % of the samples high, one sample caught on each edge, noise.
    b._pilot_adc.seq = [hi + 3000, hi - 2000, hi, hi + 1000, edge] + [lo, lo + 4000, lo - 3000] * 14 + [edge]
    out = array("i", (0, 0))
    b.pilot_read(out)
    assert abs(out[0] - 6000) <= 60, out[0]
    assert abs(out[1] + 12000) <= 60, out[1]


def test_pilot_read_steady_gives_equal_levels(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=two_point_devkit())
    b.pilot_steady(_contract(mod).PILOT_PLUS12)
    b._pilot_adc.seq = [_adc_mv(9000) * 1000 + k * 1000 for k in (-3, 2, 0, 1, -1, 0, 1, 2)]
    b._pilot_adc.seq.append(_adc_mv(-12000) * 1000)  # one spike among 9 samples: no low level from it
    out = array("i", (0, 0))
    b.pilot_read(out)
    assert abs(out[0] - 9000) <= 60 and out[1] == out[0]


def test_pilot_read_pwm_shorted_to_pe_gives_zero_for_both(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=two_point_devkit())
    b.pilot_pwm(500)
    b._pilot_adc.seq = [_adc_mv(0) * 1000 + k * 2000 for k in (-2, 0, 1, 2, -1, 0)]
    out = array("i", (0, 0))
    b.pilot_read(out)
    assert abs(out[0]) <= 60 and out[1] == out[0]


def test_pilot_calibration_table_is_validated_with_clear_errors(hw):
    mod, _, _ = hw

    def bad(cal):
        return _bad(mod, lambda d: d["pilot"].__setitem__("cal", cal))

    good = devkit()["pilot"]["cal"]
    assert "3..16" in bad(good[:2])  # not enough points
    assert "3..16" in bad("0,-12000")
    assert "'pilot.cal[2]' must be [raw count, pilot mV]" in bad(good[:2] + [[2059]] + good[3:])
    assert "outside 0..4095" in bad([[-5, -12000]] + good[1:])
    assert "outside -15000..15000" in bad(good[:-1] + [[3780, 20000]])
    assert "raw counts must increase" in bad([good[1], good[0]] + good[2:])
    assert "strictly monotonic" in bad(good[:3] + [[2551, -1000]] + good[4:])
    assert "must cover the pilot's -12 V and +12 V" in bad([[92, -12000], [2059, 0], [3043, 6000]])
    assert "counts per volt" in bad([[92, -12000], [100, 0], [3780, 12000]])  # a typo'd count
    d = devkit()
    del d["pilot"]["cal"]
    with pytest.raises(_boardfile(mod).BoardFileError) as e:
        _boardfile(mod).validate(d)
    assert "'pilot.cal'" in str(e.value)
    # an inverting measurement stage: mV falling with the count
    d = devkit()
    d["pilot"]["cal"] = [[92, 12000], [2059, 0], [3780, -12000]]
    assert _boardfile(mod).validate(d)["pilot"]["cal"] == [[92, 12000], [2059, 0], [3780, -12000]]
    assert _boardfile(mod).validate(two_point_devkit())["pilot"]["cal"] is None  # the older keys still load


def _phased_board(mod, clock, duty_pm, edge_counts, settled_counts, low_counts):
    """The devkit board reading a 1 kHz PWM through the fakes: the pin's
    read-back follows the fake microsecond clock; within 20 us of an edge the
    ADC reads `edge_counts` (the front end has not settled), later the level."""
    b = mod.Esp32Board(board=devkit())
    b.pilot_phased = True
    b.pilot_pwm(duty_pm)
    clock.us_step[0] = 3

    def level():
        return 1 if clock.us[0] % 1000 < duty_pm else 0

    def read():
        ph = clock.us[0] % 1000
        since = ph if ph < duty_pm else ph - duty_pm
        c = edge_counts if since < 20 else settled_counts if ph < duty_pm else low_counts
        clock.us[0] += 20  # a read from Python takes a while
        return c << 4

    b._plevel = level
    b._read = read
    return b


def test_pilot_read_keeps_only_samples_settled_inside_their_half_period(hw):
    mod, _, clock = hw
    # 10 % duty: state C (+6 V = count 3043), -12 V = count 92; right after an
    # edge the ADC reads count 1500 (about -4 V: between the levels)
    out = array("i", (0, 0))
    for start in range(0, 1000, 37):  # whatever the phase the burst starts at
        clock.us[0] = start
        b = _phased_board(mod, clock, 100, 1500, 3043, 92)
        b.pilot_read(out)
        assert out[0] == 6000 and out[1] == -12000, (start, out[0], out[1])


def test_pilot_read_reports_the_low_level_unseen_when_its_half_period_is_too_short(hw):
    mod, _, clock = hw
    contract = _contract(mod)
    out = array("i", (0, 0))
    b = _phased_board(mod, clock, 960, 1500, 3043, 92)
    b.pilot_read(out)
    assert out[0] == 6000 and out[1] == contract.PILOT_UNSEEN


def test_pilot_read_back_is_checked_at_construction_and_an_inverting_stage_is_understood(hw):
    mod, machine, _ = hw
    assert not mod.Esp32Board(board=devkit()).pilot_phased  # the fake pad reads 0 at 100 % duty: no read-back
    orig = machine.Pin.__init__

    def reads_one(self, id, mode=-1, pull=-1, value=None):
        orig(self, id, mode, pull, value)
        self.v = 1 if value is None else value

    machine.Pin.__init__ = reads_one
    try:
        assert mod.Esp32Board(board=devkit()).pilot_phased  # the pad shows +12 V's level
        d = devkit()
        d["pilot"]["pwm_invert"] = True
        b = mod.Esp32Board(board=d)
        assert b._plus == 0 and not b.pilot_phased  # inverted: +12 V is a low pad; 1 means no read-back
    finally:
        machine.Pin.__init__ = orig


def test_pp_ohm_from_divider_voltage(hw):
    mod, _, _ = hw
    f = mod.pp_ohm_from_mv
    # 1 kOhm pull-up to 3300 mV: v = 3300 * R / (1000 + R)
    for r in (100, 220, 680, 1500):
        v = 3300 * r // (1000 + r)
        assert abs(f(v, 1000, 3300, 10000) - r) <= r // 50 + 2
    assert f(3300, 1000, 3300, 10000) == mod.PP_OPEN  # open: no current through the pull-up
    assert f(3250, 1000, 3300, 10000) == mod.PP_OPEN  # 65 kOhm: above the board's range
    assert f(0, 1000, 3300, 10000) == 0


def test_pp_ohm_through_the_board_and_tethered_board_is_unknown(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=devkit())
    b._pp.seq = [3300000 * 220 // 1220]
    assert abs(b.pp_ohm() - 220) <= 3
    t = mod.Esp32Board(board_path=str(REPO / "hal" / "boards" / "esp32_1phase_tethered.json"))
    assert t.pp_ohm() == mod.UNKNOWN


def test_ntc_conversion_matches_the_beta_equation(hw):
    import math

    mod, _, _ = hw
    n = (mod.NTC_MAX_C - mod.NTC_MIN_C) // mod.NTC_STEP_C + 1
    tab = mod.ntc_table_uv(n, 10000, 3950, 10000, 3300)
    for c10 in (-300, 0, 250, 437, 650, 710, 1000):
        k = c10 / 10 + 273.15
        r = 10000 * math.exp(3950 * (1 / k - 1 / 298.15))
        uv = int(3300000 * r / (r + 10000))
        assert abs(mod.ntc_dc(tab, uv) - c10) <= 3, c10  # 0.3 C: interpolation over 5 C steps
    assert mod.ntc_dc(tab, 3299000) == mod.NTC_FAULT_DC  # open sensor reads as hot
    assert mod.ntc_dc(tab, 1000) == mod.NTC_FAULT_DC  # shorted sensor reads as hot


def test_temp_dc_reports_hottest_and_high_side_ntc_and_no_sensor(hw):
    mod, _, _ = hw
    d = devkit()
    d["ntc"].append(dict(d["ntc"][0], adc_pin=38, side="high"))
    b = mod.Esp32Board(board=d)
    b._ntc[0].seq = [1650000]  # 25.0 C on the low-side sensor
    b._ntc[1].seq = [3300000 - 800000]  # high side: mirrors to a low-side 800 mV, hotter
    t = b.temp_dc()
    assert t > 250
    assert t == mod.ntc_dc(b._ntc_tab[1], 800000)
    t1 = mod.Esp32Board(board_path=str(REPO / "hal" / "boards" / "esp32_1phase_tethered.json"))
    assert t1.temp_dc() == mod.NO_TEMP


def test_ua_per_count_from_ct_ratio_and_burden(hw):
    mod, _, _ = hw
    # 3100 mV / 4096 counts / 22 Ohm * 2000 = 68.8 mA per count
    assert mod.ua_per_count(2000, 22, 3100) == 68803
    b = mod.Esp32Board(board=devkit())
    assert b.adc_ua_per_count(0) == b.adc_ua_per_count(2) == 68803
    assert b.adc_channels == 3 and b.adc_burst_len == 64 and b.adc_rate_hz == 3200


def test_adc_burst_interleaves_channels_at_the_board_rate(hw):
    mod, _, clock = hw
    b = mod.Esp32Board(board=devkit())
    for k in range(3):
        b._ct[k].seq = [(k + 1) * 50 * 16]  # read_u16 = uv // 50, code = u16 >> 4 = k + 1
    buf = array("H", bytes(2 * 64 * 3))
    clock.us_step[0] = 1
    t0 = clock.us[0]
    b.adc_burst(buf)
    assert list(buf[:6]) == [1, 2, 3, 1, 2, 3] and buf[-1] == 3
    elapsed = clock.ticks_diff(clock.us[0], t0)
    # 63 frame gaps at 312.5 us = 19687 us (+ the fake clock's own steps)
    assert 19687 <= elapsed <= 19687 + 64 * 3 * 2 + 10, elapsed


def test_adc_burst_watched_stops_after_the_guards_count_of_suspect_pilot_reads(hw):
    mod, _, clock = hw
    b = mod.Esp32Board(board=two_point_devkit())
    for k in range(3):
        b._ct[k].seq = [800]
    # ADC mV for a pilot level: the board file's -12 V / +12 V calibration (210 / 3090 mV)
    def adc_uv(pilot_mv):
        return (210 + (pilot_mv + 12000) * 2880 // 24000) * 1000

    c, low, b_high = adc_uv(6000), adc_uv(-12000), adc_uv(9000)
    guard = array("i", (7000, -11000, 5000, 3))  # state C's window, the diode's low level
    buf = array("H", bytes(2 * 64 * 3))
    clock.us_step[0] = 1
    b._pilot_adc.seq = [c, low, low, low]  # a charging EV: every read fine
    assert b.adc_burst_watched(buf, guard) == 64
    b._pilot_adc.seq, b._pilot_adc.k = [c, low] * 5 + [b_high, low, b_high, b_high] + [c] * 60, 0  # S2 opens
    assert b.adc_burst_watched(buf, guard) == 14  # the third suspect read, at frame 14
    b._pilot_adc.seq, b._pilot_adc.k = [c, low] * 5 + [adc_uv(0)] * 60, 0  # CP shorted: 0 V in the gap
    assert b.adc_burst_watched(buf, guard) == 13


def test_watched_burst_with_read_back_ignores_reads_between_the_levels_after_an_edge(hw):
    mod, _, clock = hw
    guard = array("i", (7000, -11000, 5000, 3))  # state C's window, the diode's low level
    buf = array("H", bytes(2 * 64 * 3))
    for duty in (100, 266, 500):
        # C at +6 V (count 3043), -12 V low (count 92); within 20 us of an edge
        # the ADC reads count 1500 (~ -4 V: in the gap the guard watches)
        b = _phased_board(mod, clock, duty, 1500, 3043, 92)
        for k in range(3):
            b._ct[k].seq = [800]
        assert b.adc_burst_watched(buf, guard) == 64, duty
    # the EV leaves C: its high half reads B (+9 V, count 3488): cut short
    b = _phased_board(mod, clock, 266, 1500, 3488, 92)
    for k in range(3):
        b._ct[k].seq = [800]
    assert b.adc_burst_watched(buf, guard) < 64


def energy_board():
    """The devkit with one EV CT, two mains CTs and a phase relay."""
    d = devkit()
    d["ct"]["pins"] = [34]
    d["mains_ct"] = {"pins": [35, 32], "ratio": 2000, "burden_ohm": 22, "full_scale_mv": 3100}
    d["phase_relay"] = {"pin": 5, "three_phase_level": 1}
    return d


def test_phase_relay_and_mains_cts_come_from_the_board_file(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=energy_board())
    assert b.phase_relay and b._relay.v == 1  # three phases at boot
    b.phase_switch(1)
    assert b._relay.v == 0
    b.phase_switch(3)
    assert b._relay.v == 1
    plain = mod.Esp32Board(board=devkit())
    assert not plain.phase_relay
    plain.phase_switch(1)  # no relay: ignored
    out = array("i", (7, 7, 7))
    assert plain.mains_read(out) is False and list(out) == [7, 7, 7]
    bad = energy_board()
    bad["phase_relay"]["three_phase_level"] = 2
    with pytest.raises(_boardfile(mod).BoardFileError, match="phase_relay.three_phase_level"):
        _boardfile(mod).validate(bad)
    bad = energy_board()
    bad["mains_ct"]["pins"] = [34]  # already the EV's CT
    with pytest.raises(_boardfile(mod).BoardFileError):
        _boardfile(mod).validate(bad)


def test_mains_read_gives_the_rms_current_of_each_mains_ct(hw):
    mod, _, clock = hw
    b = mod.Esp32Board(board=energy_board())
    # A square wave of +-100 counts around mid-scale: RMS 100 counts = 6.88 A.
    hi, lo = (2048 + 100) * 16 * 50, (2048 - 100) * 16 * 50  # read_u16 = uv // 50; code = u16 >> 4
    b._mains[0].seq = [hi, lo]
    b._mains[1].seq = [2048 * 16 * 50]  # a flat channel: no current
    clock.us_step[0] = 1
    out = array("i", (0, 0, 0))
    assert b.mains_read(out) is True
    assert out[0] == 100 * 68803 // 1000 and out[1] == 0 and out[2] == 0
    assert mod.isqrt(0) == 0 and mod.isqrt(99) == 9 and mod.isqrt(4095 * 4095) == 4095


def test_contactor_feedback_rcd_pe_outputs_follow_board_levels(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=devkit())
    assert [p.v for p in b._poles] == [0, 0]  # constructed open
    b.contactor(True)
    assert [p.v for p in b._poles] == [1, 1]
    b._fb.v = 1
    assert b.contactor_feedback() == 1
    b._fb.v = 0
    assert b.contactor_feedback() == 0
    b._trip.v = 1
    assert b.rcd_tripped() is True
    b.rcd_test(True)
    assert b._rcd_test.v == 1
    assert b.pe_ok() == mod.UNKNOWN
    t = mod.Esp32Board(board_path=str(REPO / "hal" / "boards" / "esp32_1phase_tethered.json"))
    assert t.contactor_feedback() == mod.UNKNOWN
    t._trip.v = 0  # trip_level 0 on this board
    assert t.rcd_tripped() is True
    t._pe.v = 1
    assert t.pe_ok() == 1
    t._pe.v = 0
    assert t.pe_ok() == 0


def test_safe_opens_contactor_stops_rcd_test_and_holds_plus12_even_when_a_pin_fails(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=devkit())
    b.contactor(True)
    b.rcd_test(True)
    b.pilot_pwm(300)

    def boom(v=None):
        raise OSError(5)

    b._poles[0].value = boom  # first pole driver broken
    b.safe()
    assert b._poles[1].v == 0 and b._rcd_test.v == 0 and b._pwm.u16 == 65535
    b.safe()  # idempotent, still no exception


def test_wait_tick_is_fixed_rate_across_the_2_pow_30_wrap(hw):
    mod, _, clock = hw
    clock.ms[0] = (1 << 30) - 25
    b = mod.Esp32Board(board=devkit())
    start = clock.ms[0]
    for k in range(1, 6):
        clock.ms[0] = clock.ticks_add(clock.ms[0], 3)  # 3 ms of work per tick
        b.wait_tick(10)
        assert clock.ms[0] == clock.ticks_add(start, 10 * k)  # no drift through the wrap
        assert clock.slept[0] == 7
    assert clock.ms[0] < 100  # it did wrap


def test_wait_tick_never_calls_time_sleep_ms_which_busy_waits_holding_the_gil(hw):
    mod, _, clock = hw
    b = mod.Esp32Board(board=devkit())

    def busy(n):
        raise AssertionError("time.sleep_ms(%d) spins holding the GIL below 10 ms on an ESP32" % n)

    clock.sleep_ms = busy
    t0 = clock.ms[0]
    for k in range(1, 4):
        clock.ms[0] = clock.ticks_add(clock.ms[0], 2)
        b.wait_tick(10)
        assert clock.ms[0] == clock.ticks_add(t0, 10 * k)


def test_wait_tick_when_late_returns_at_once_and_restarts_the_grid(hw):
    mod, _, clock = hw
    clock.ms[0] = (1 << 30) - 5
    b = mod.Esp32Board(board=devkit())
    calls = clock.slept[1]
    clock.ms[0] = clock.ticks_add(clock.ms[0], 25)  # late by 15 ms, across the wrap
    late = clock.ms[0]
    b.wait_tick(10)
    assert clock.slept[1] == calls and clock.ms[0] == late  # no sleep, no negative sleep
    b.wait_tick(10)
    assert clock.ms[0] == clock.ticks_add(late, 10)  # grid restarted from the late tick


def test_wall_time_none_until_set_and_both_epochs(hw):
    mod, _, clock = hw
    clock.epoch[0] = 2000
    b = mod.Esp32Board(board=devkit())
    clock.wall[0] = 3600  # RTC never set: 2000-01-01 01:00
    assert b.wall_time() is None
    clock.wall[0] = 1767225600 - 946684800  # 2026-01-01 in the 2000 epoch
    assert b.wall_time() == 1767225600
    clock.epoch[0] = 1970
    b = mod.Esp32Board(board=devkit())
    clock.wall[0] = 1767225600
    assert b.wall_time() == 1767225600
    clock.wall[0] = 1704067199  # one second before 2024
    assert b.wall_time() is None


def test_reset_cause_names_and_data_dir_created(hw):
    mod, machine, _ = hw
    b = mod.Esp32Board(board=devkit())
    assert mod.os.made == ["/data"]
    names = {1: "power_on", 2: "hard", 3: "watchdog", 4: "deepsleep", 5: "soft"}
    for code, name in names.items():
        machine.cause[0] = code
        assert b.reset_cause() == name


def test_watchdog_started_fed_and_given_a_new_timeout(hw):
    mod, _, _ = hw
    b = mod.Esp32Board(board=devkit())
    b.wdt_feed()  # before start: no-op
    b.wdt_start(2000)
    w = b._wdt
    assert w.timeout == 2000
    b.wdt_feed()
    assert w.fed == 1
    b.wdt_start(900000)  # the maintenance window after Ctrl-C (firmware/app.py)
    assert b._wdt.timeout == 900000


def test_watchdog_on_a_build_that_cannot_reconfigure_keeps_running_and_is_fed(hw):
    mod, machine, _ = hw
    machine.WDT.refuse_reinit = True
    machine.WDT.started = False
    try:
        b = mod.Esp32Board(board=devkit())
        b.wdt_start(2000)
        w = b._wdt
        b.wdt_start(900000)
        assert b._wdt is w and w.timeout == 2000 and w.fed == 1
    finally:
        machine.WDT.refuse_reinit = False


def test_led_modes_drive_the_pin(hw):
    mod, _, clock = hw
    b = mod.Esp32Board(board=devkit())
    b.led(1)
    assert b._led.v == 1
    b.led(0)
    assert b._led.v == 0
    clock.ms[0] = 0
    b.led(3)
    seen = set()
    for _ in range(4):
        seen.add(b._led.v)
        clock.ms[0] += mod.LED_FAST_MS
        b.led(3)
    assert seen == {0, 1}


# --- network: the interface the board file selects, driven against a fake `network` ---

FAKE_NETWORK = """
STA_IF = 0
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_WRONG_PASSWORD = 202
PHY_LAN8720 = 1
ETH_STARTED = 1
ETH_CONNECTED = 3
ETH_DISCONNECTED = 4
ETH_GOT_IP = 5


class WLAN:
    def __init__(self, interface):
        self.calls = []
        self.st = STAT_IDLE
        self.on = False
        self.rssi = -55

    def active(self, on=None):
        if on is None:
            return self.on
        self.on = bool(on)
        self.calls.append(("active", bool(on)))

    def config(self, **kw):
        self.calls.append(("config", kw))

    def connect(self, ssid, key=None):
        self.calls.append(("connect", ssid, key))
        self.st = STAT_CONNECTING

    def disconnect(self):
        self.calls.append(("disconnect",))
        self.st = STAT_IDLE

    def status(self, param=None):
        if param == "rssi":
            if self.st != STAT_GOT_IP:
                raise OSError(12298)  # ESP_ERR_WIFI_NOT_CONNECT
            return self.rssi
        return self.st


class LAN:
    made = []

    def __init__(self, id, **kw):
        LAN.made.append((id, kw))
        self.on = False
        self.st = 0

    def active(self, on=None):
        if on is None:
            return self.on
        self.on = bool(on)
        if on:
            self.st = ETH_STARTED

    def status(self):
        return self.st
"""


@pytest.fixture
def network(monkeypatch):
    m = _module("network", FAKE_NETWORK)
    monkeypatch.setitem(sys.modules, "network", m)
    return m


def test_board_without_eth_is_a_wifi_station_and_builds_no_driver_until_up(hw, monkeypatch):
    mod, _, _ = hw
    monkeypatch.delitem(sys.modules, "network", raising=False)
    b = mod.Esp32Board(board=devkit())  # no `network` module needed to build the board (boot.py)
    assert b.netif.kind == "wifi" and b.netif.state() == _contract(mod).LINK_DOWN


def test_wifi_station_connects_without_blocking_and_maps_the_driver_status(hw, network):
    mod, _, _ = hw
    c = _contract(mod)
    nif = mod.Esp32Board(board=devkit()).netif
    nif.up("depot", "pw-12345678")
    w = nif._w
    assert w.calls == [("active", True), ("config", {"reconnects": 3}), ("disconnect",), ("connect", "depot", "pw-12345678")]
    assert nif.state() == c.LINK_CONNECTING and nif.rssi_dbm() == c.NO_RSSI
    w.st = network.STAT_IDLE  # what the driver says after our disconnect(), until the new attempt has news
    assert nif.state() == c.LINK_CONNECTING
    w.st = network.STAT_GOT_IP
    assert nif.state() == c.LINK_UP and nif.rssi_dbm() == -55
    w.st = network.STAT_WRONG_PASSWORD
    assert nif.state() == c.LINK_FAILED and nif.rssi_dbm() == c.NO_RSSI
    nif.down()
    assert w.calls[-1] == ("active", False) and nif.state() == c.LINK_DOWN
    nif.up("cafe", "")  # an open network: no key at all
    assert w.calls[-1] == ("connect", "cafe", None)


@pytest.mark.parametrize(
    "board, phy_addr, clk, mode, power",
    [("wt32_eth01", 1, 0, "IN", 16), ("olimex_esp32_poe", 0, 17, "OUT", 12)],
)
def test_ethernet_board_file_builds_the_lan8720_driver_with_its_pins(hw, network, board, phy_addr, clk, mode, power):
    mod, machine, _ = hw
    c = _contract(mod)
    b = mod.Esp32Board(board_path=str(REPO / "hal" / "boards" / (board + ".json")))
    nif = b.netif
    assert nif.kind == "eth" and nif.state() == c.LINK_DOWN
    network.LAN.made.clear()
    nif.up("", "")
    (lan_id, kw), = network.LAN.made
    assert lan_id == 0 and kw["phy_type"] == network.PHY_LAN8720 and kw["phy_addr"] == phy_addr
    assert (kw["mdc"].id, kw["mdio"].id, kw["ref_clk"].id, kw["power"].id) == (23, 18, clk, power)
    assert kw["ref_clk_mode"] == getattr(machine.Pin, mode)
    lan = nif._lan
    assert nif.state() == c.LINK_CONNECTING
    lan.st = network.ETH_GOT_IP
    assert nif.state() == c.LINK_UP and nif.rssi_dbm() == c.NO_RSSI
    lan.st = network.ETH_DISCONNECTED  # cable pulled
    assert nif.state() == c.LINK_FAILED
    nif.up("", "")
    assert len(network.LAN.made) == 1  # the driver is built once
    nif.down()
    assert nif.state() == c.LINK_DOWN


def _with_eth(**eth):
    def change(d):
        d["eth"] = dict(
            {"phy": "LAN8720", "phy_addr": 1, "mdc": 23, "mdio": 18, "power_pin": 16, "clock_mode": "in", "clock_pin": 0},
            **eth,
        )

    return change


def test_eth_block_rules_are_enforced(hw):
    mod, _, _ = hw
    # The devkit drives the pilot from GPIO25, an RMII data pin.
    assert "'pilot.pwm_pin' = 25 is already used by 'eth (RMII data)'" in _bad(mod, _with_eth())
    wt32 = json.loads((REPO / "hal" / "boards" / "wt32_eth01.json").read_text())

    def bad(**eth):
        d = json.loads(json.dumps(wt32))
        d["eth"].update(eth)
        with pytest.raises(_boardfile(mod).BoardFileError) as e:
            _boardfile(mod).validate(d)
        return str(e.value)

    assert "'eth.clock_pin' = 17 cannot carry the RMII clock in" in bad(clock_pin=17)
    assert "'eth.clock_pin' = 4 cannot carry the RMII clock out" in bad(clock_mode="out", clock_pin=4)
    assert "'eth.clock_mode'" in bad(clock_mode="gpio0")
    assert "'eth.phy' must be one of" in bad(phy="W5500")
    assert "'eth.phy_addr'" in bad(phy_addr=32)
    assert "'eth.mdc' = 34 is input-only" in bad(mdc=34)
    assert "'eth.mdio' = 23 is already used by 'eth.mdc'" in bad(mdio=23)
    assert "flash pin" in bad(power_pin=6)
    d = json.loads(json.dumps(wt32))
    d["eth"]["power_pin"] = None  # a PHY that is always powered
    assert _boardfile(mod).validate(d)["eth"]["power_pin"] is None
    d["eth"] = None
    assert _boardfile(mod).validate(d)["eth"] is None


def test_set_wall_time_sets_the_rtc_in_the_ports_epoch(hw, monkeypatch):
    import time as real_time

    mod, machine, clock = hw
    fake_gmtime = clock.gmtime  # answers the driver's epoch question
    for epoch, shift in ((2000, 946684800), (1970, 0)):
        clock.epoch[0] = epoch
        monkeypatch.setattr(clock, "gmtime", fake_gmtime)
        b = mod.Esp32Board(board=devkit())
        asked = []

        def gmtime(s, shift=shift, asked=asked):
            asked.append(s)
            return tuple(real_time.gmtime(s + shift))

        monkeypatch.setattr(clock, "gmtime", gmtime)
        machine.RTC.set_to.clear()
        b.set_wall_time(1767225600 + 3723, 250)  # 2026-01-01 01:02:03.250 UTC, a Thursday
        assert asked == [1767225600 + 3723 - shift]
        assert machine.RTC.set_to == [(2026, 1, 1, 4, 1, 2, 3, 250000)]


# --- 4. the hot path allocates nothing, on the MicroPython VM ---------------------------

HARNESS = """
import sys
import fake_machine, fake_time, fake_os
sys.modules["machine"] = fake_machine
sys.modules["time"] = fake_time
sys.modules["os"] = fake_os
import fake_select
sys.modules["select"] = fake_select
import gc, json, micropython
from array import array
gc.collect()
m0 = gc.mem_alloc()
from hal import esp32
gc.collect()
m1 = gc.mem_alloc()
with open("hal/boards/esp32_devkit.json") as f:
    d = json.load(f)
b = esp32.Esp32Board(board=d)
d["ct"]["pins"] = [34]
d["mains_ct"] = {"pins": [35, 32], "ratio": 2000, "burden_ohm": 22, "full_scale_mv": 3100}
d["phase_relay"] = {"pin": 5, "three_phase_level": 1}
e = esp32.Esp32Board(board=d)
e._mains[0].seq = [(2048 + 100) * 800, (2048 - 100) * 800]
m3 = array("i", (0, 0, 0))
d = None
gc.collect()
m2 = gc.mem_alloc()
print("MEM module", m1 - m0, "board", m2 - m1)
# The phase-classified read: the PWM pin's read-back follows the fake clock
# (10 % duty), the ADC answers what the pilot shows in that half-period
# (esp32_devkit.json's table: count 3043 = +6 V, 92 = -12 V).
def lvl():
    return 1 if fake_time.us[0] % 1000 < 100 else 0


def rd():
    return (3043 << 4) if lvl() else (92 << 4)


b.pilot_phased = True
b._plevel = lvl
b._read = rd
b._pp.seq = [500000]
b._ntc[0].seq = [1650000]
for a in b._ct:
    a.seq = [100000]
b.wdt_start(2000)
out = array("i", (0, 0))
buf = array("H", bytes(2 * 64 * 3))
guard = array("i", (7000, -11000, 5000, 3))
fake_time.us_step[0] = 4  # fine enough for a 100 us half-period
fake_time.ms[0] = (1 << 30) - 30
b.pilot_pwm(100)
b.pilot_read(out)  # warm-up: first calls may intern names
n = 20
other = array("i", (0, 0))
micropython.heap_lock()
try:
    for i in range(n):
        b.pilot_pwm(100 + (i & 1))
        b._pilot_adc.k = 0
        b.pilot_read(out)
        b.pilot_steady(1)
        b.pilot_read(other)
        b.pp_ohm()
        b.contactor(i & 1)
        b.contactor_feedback()
        b.rcd_tripped()
        b.rcd_test(i & 1)
        b.pe_ok()
        b.temp_dc()
        b.adc_burst(buf)
        b.adc_burst_watched(buf, guard)
        b.adc_ua_per_count(0)
        b.wdt_feed()
        b.led(2 + (i & 1))
        b.wait_tick(10)
        b.ticks_diff(b.ticks_add(b.ticks_ms(), 5), b.ticks_ms())
        e.mains_read(m3)
        e.phase_switch(1 + 2 * (i & 1))
    b.safe()
finally:
    micropython.heap_unlock()
print("MAINS", m3[0], m3[1], m3[2])
print("NOALLOC", out[0], out[1])
"""


def test_hot_path_allocates_nothing_on_micropython(tmp_path):
    if not MICROPYTHON.exists():
        pytest.fail("no .venv/bin/micropython: run `make deps` in " + str(REPO))
    (tmp_path / "fake_machine.py").write_text(FAKE_MACHINE)
    (tmp_path / "fake_time.py").write_text(FAKE_TIME)
    (tmp_path / "fake_os.py").write_text(FAKE_OS)
    (tmp_path / "fake_select.py").write_text(FAKE_SELECT)
    (tmp_path / "harness.py").write_text(HARNESS)
    env = dict(os.environ, MICROPYPATH=str(tmp_path) + ":" + str(REPO))
    r = subprocess.run(
        [str(MICROPYTHON), "-X", "heapsize=256k", str(tmp_path / "harness.py")],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "NOALLOC" in r.stdout, r.stdout + r.stderr
    _, high, low = r.stdout.split()[-3:]
    assert abs(int(high) - 6000) <= 60 and abs(int(low) + 12000) <= 60  # the PWM read inside the lock
    assert "MAINS 6880 0 0" in r.stdout  # mains_read inside the lock: 100 counts RMS


# --- the OTA app partitions through esp32.Partition (a fake of its calls) ---
class _FakePartition:
    """esp32.Partition over a bytearray per label: 4 KB blocks, NOR flash
    (a write ANDs with what is there; only an erase sets bits again)."""

    RUNNING = 1
    BOOT = 0
    flash = {}
    boot = ["ota_0"]
    calls = []
    valid_calls = [0]

    def __init__(self, id):
        self.label = "ota_0" if id == self.RUNNING else id

    def get_next_update(self):
        return _FakePartition("ota_1" if self.label == "ota_0" else "ota_0")

    def info(self):
        return (0, 16, 0x10000, len(self.flash[self.label]), self.label, False)

    def ioctl(self, op, arg):
        assert op == 6  # BLOCK_ERASE
        self.calls.append(("erase", arg))
        self.flash[self.label][arg * 4096:(arg + 1) * 4096] = b"\xff" * 4096
        return 0

    def writeblocks(self, block, buf, offset):
        at = block * 4096 + offset
        part = self.flash[self.label]
        for i, v in enumerate(bytes(buf)):
            part[at + i] &= v
        self.calls.append(("write", at, len(buf)))

    def readblocks(self, block, buf, offset):
        at = block * 4096 + offset
        buf[:] = self.flash[self.label][at:at + len(buf)]

    def set_boot(self):
        self.boot[0] = self.label

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        cls.valid_calls[0] += 1


@pytest.fixture
def ota_hw(hw, monkeypatch):
    mod, machine, clock = hw
    _FakePartition.flash = {"ota_0": bytearray(b"\x00" * 16384), "ota_1": bytearray(b"\x00" * 16384)}
    _FakePartition.boot[0] = "ota_0"
    _FakePartition.calls = []
    _FakePartition.valid_calls[0] = 0
    esp32 = types.ModuleType("esp32")
    esp32.Partition = _FakePartition
    monkeypatch.setitem(sys.modules, "esp32", esp32)
    return mod.Esp32Board(board=devkit())


def test_the_driver_reports_the_running_and_the_next_app_partition(ota_hw):
    info = ota_hw.ota_info()
    assert info == {"running": "ota_0", "next": "ota_1", "size": 16384, "state": "unknown"}


def test_an_image_without_ota_partitions_reports_none(hw, monkeypatch):
    mod, machine, clock = hw

    class NoOta(_FakePartition):
        def get_next_update(self):
            raise OSError(-0x105)  # ESP_ERR_NOT_FOUND

    esp32 = types.ModuleType("esp32")
    esp32.Partition = NoOta
    monkeypatch.setitem(sys.modules, "esp32", esp32)
    b = mod.Esp32Board(board=devkit())
    assert b.ota_info() is None
    with pytest.raises(OSError):
        b.ota_write(0, b"x")


def test_writes_erase_each_block_as_they_reach_its_start_and_land_in_the_next_partition(ota_hw):
    img = bytes(range(256)) * 40  # 10240 bytes: two whole blocks and a part
    ota_hw.ota_write(0, img[:5000])  # erases blocks 0 and 1
    ota_hw.ota_write(5000, img[5000:])  # inside block 1 (no erase), then block 2
    erased = [c[1] for c in _FakePartition.calls if c[0] == "erase"]
    assert erased == [0, 1, 2]
    assert bytes(_FakePartition.flash["ota_1"][:len(img)]) == img
    assert _FakePartition.flash["ota_0"] == bytearray(16384), "the running partition is never written"
    buf = bytearray(100)
    ota_hw.ota_read(4090, memoryview(buf))
    assert bytes(buf) == img[4090:4190]


def test_set_boot_chooses_the_next_partition_and_mark_valid_cancels_the_rollback(ota_hw):
    ota_hw.ota_set_boot()
    assert _FakePartition.boot[0] == "ota_1"
    ota_hw.ota_mark_valid()
    assert _FakePartition.valid_calls[0] == 1


def test_reset_is_machine_reset(hw):
    mod, machine, clock = hw
    b = mod.Esp32Board(board=devkit())
    done = []
    machine.reset = lambda: done.append(1)
    b.reset()
    assert done == [1]
