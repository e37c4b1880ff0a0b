"""The board description: reading and validating a board file (hal/boards/*.json).

Owns the schema of hal/boards/README.md: which file is in force
(`board_file()`), reading it within a size bound (`load()`), and checking
every key against the chip's pin rules (`validate()`), which returns the
description normalised for the driver (hal/esp32.py). A bad file raises
BoardFileError whose message names the bad key. Runs once, when the driver
is built; never touches a pin or an ADC.
"""

import json
import os

from micropython import const

from hal.pilotcal import check_cal

SETTLE_US_DEFAULT = const(32)  # board file pilot.settle_us when absent (3.2 time constants of a 10 us front end: within 4 %)
WINDOW_US_DEFAULT = const(2100)  # board file pilot.window_us when absent: two PWM periods and a margin


# Pin facts of each chip the validation knows ("chip" in the board file):
# highest GPIO, pins that do not exist or belong to the SPI flash/PSRAM,
# input-only pins (no output driver, no pulls), ADC1 pins (ADC2 is unusable
# while WiFi runs), strapping pins (read at reset: no contactor or RCD-test
# output there), pins of the native USB (the console on most S3 boards).
class _Chip:
    def __init__(self, max_pin, reserved, input_only, adc1, adc1_text, strapping, usb):
        self.max_pin = max_pin
        self.reserved = reserved
        self.input_only = input_only
        self.adc1 = adc1
        self.adc1_text = adc1_text
        self.strapping = strapping
        self.usb = usb


_CHIPS = {
    # (strapping pins 0, 2, 5, 12, 15 of the original ESP32 are not enforced:
    # existing boards use some of them for inputs.)
    "esp32": _Chip(39, (6, 7, 8, 9, 10, 11, 20, 24, 28, 29, 30, 31), (34, 35, 36, 37, 38, 39),
                   (32, 33, 34, 35, 36, 37, 38, 39), "32..39", (), ()),
    # 22..25 do not exist; 26..32 are the SPI flash and quad PSRAM.
    "esp32s3": _Chip(48, (22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32), (),
                     (1, 2, 3, 4, 5, 6, 7, 8, 9, 10), "1..10", (0, 3, 45, 46), (19, 20)),
}
_OCTAL_PSRAM_PINS = (33, 34, 35, 36, 37)  # ESP32-S3 modules with octal PSRAM (N8R8, ...)
_chip = _CHIPS["esp32"]  # the rules in force; validate() sets them from the board file
ATTEN = {"0db": 0, "2.5db": 1, "6db": 2, "11db": 3}  # machine.ADC.ATTN_* values
_PULLS = ("up", "down", None)
# Ethernet (EMAC + RMII PHY): the RMII data pins are fixed in the ESP32's
# silicon (TXD0 19, TX_EN 21, TXD1 22, RXD0 25, RXD1 26, CRS_DV 27); the 50 MHz
# reference clock comes in on GPIO0 or goes out on GPIO0/16/17.
_RMII_PINS = (19, 21, 22, 25, 26, 27)
_CLOCK_PINS = {"in": (0,), "out": (0, 16, 17)}
_PHYS = ("LAN8720", "LAN8710", "IP101", "RTL8201", "DP83848", "KSZ8041", "KSZ8081")  # network.PHY_<name>


class BoardFileError(ValueError):
    """A board description is missing a key or holds a bad value."""


def _get(d, section, key, kind, lo=None, hi=None, optional=False):
    where = section + "." + key if section else key
    if not isinstance(d, dict) or key not in d:
        raise BoardFileError("board file: missing key '" + where + "'")
    v = d[key]
    if v is None and optional:
        return None
    if kind is int and (type(v) is not int):
        raise BoardFileError("board file: '" + where + "' must be an integer, got " + repr(v))
    if kind is bool and type(v) is not bool:
        raise BoardFileError("board file: '" + where + "' must be true or false, got " + repr(v))
    if kind is str and not isinstance(v, str):
        raise BoardFileError("board file: '" + where + "' must be a string, got " + repr(v))
    if kind is list and not isinstance(v, list):
        raise BoardFileError("board file: '" + where + "' must be a list, got " + repr(v))
    if kind is dict and not isinstance(v, dict):
        raise BoardFileError("board file: '" + where + "' must be an object, got " + repr(v))
    if kind is int and ((lo is not None and v < lo) or (hi is not None and v > hi)):
        raise BoardFileError("board file: '" + where + "' = " + str(v) + " is outside " + str(lo) + ".." + str(hi))
    return v


def _pin(d, section, key, used, output=False, adc=False, pull=None, optional=False, safety=False):
    """One GPIO, checked against the chip's rules; safety: an output that
    must be inactive from reset (contactor, RCD test): no strapping pin."""
    where = section + "." + key
    c = _chip
    p = _get(d, section, key, int, 0, c.max_pin, optional)
    if p is None:
        return None
    if p in c.reserved:
        raise BoardFileError("board file: '" + where + "' = " + str(p) + " is a flash pin (SPI flash or PSRAM) or does not exist")
    if output and p in c.input_only:
        raise BoardFileError("board file: '" + where + "' = " + str(p) + " is input-only, it cannot drive an output")
    if adc and p not in c.adc1:
        raise BoardFileError("board file: '" + where + "' = " + str(p) + " is not an ADC1 pin (" + c.adc1_text + ")")
    if safety and p in c.strapping:
        raise BoardFileError(
            "board file: '" + where + "' = " + str(p) + " is a strapping pin: its level at reset is not ours to choose"
        )
    if p in c.usb:
        raise BoardFileError("board file: '" + where + "' = " + str(p) + " is a USB data pin (the board's console)")
    if pull is not None and p in c.input_only:
        raise BoardFileError("board file: '" + where + "' = " + str(p) + " has no pull resistor; use pull null")
    if p in used:
        raise BoardFileError("board file: '" + where + "' = " + str(p) + " is already used by '" + used[p] + "'")
    used[p] = where
    return p


def _pins(d, section, counts, used, output=False, adc=False, safety=False):
    """A list of pins under `section.pins`, its length one of `counts`."""
    pins = _get(d, section, "pins", list)
    if len(pins) not in counts:
        raise BoardFileError(
            "board file: '" + section + ".pins' must list " + " or ".join(str(c) for c in counts) + " pins"
        )
    by_index = {}
    for i in range(len(pins)):
        by_index[str(i)] = pins[i]
    return [
        _pin(by_index, section + ".pins", str(i), used, output=output, adc=adc, safety=safety) for i in range(len(pins))
    ]


def _level(d, section, key):
    return _get(d, section, key, int, 0, 1)


def _pull(d, section, key):
    v = d.get(key) if isinstance(d, dict) else None
    if key not in d:
        raise BoardFileError("board file: missing key '" + section + "." + key + "'")
    if v not in _PULLS:
        raise BoardFileError("board file: '" + section + "." + key + '\' must be "up", "down" or null')
    return v


def validate(desc):
    """Check a board description (a dict parsed from JSON) and return it
    normalised: optional sections present as None/[] and every value checked.
    Raises BoardFileError naming the first bad key."""
    global _chip
    if not isinstance(desc, dict):
        raise BoardFileError("board file: top level must be an object")
    chip = desc.get("chip", "esp32")
    if chip not in _CHIPS:
        raise BoardFileError('board file: \'chip\' must be "esp32" or "esp32s3"')
    c = _CHIPS[chip]
    if chip == "esp32s3" and desc.get("octal_psram", False) is True:
        c = _Chip(c.max_pin, c.reserved + _OCTAL_PSRAM_PINS, c.input_only, c.adc1, c.adc1_text, c.strapping, c.usb)
    _chip = c
    used: dict = {}  # pin -> key that uses it
    if chip != "esp32" and desc.get("eth") is not None:
        raise BoardFileError("board file: 'eth' needs the original ESP32 (its Ethernet MAC)")
    b = {"name": _get(desc, "", "name", str), "chip": chip, "eth": _eth(desc.get("eth"), used)}

    adc = _get(desc, "", "adc", dict)
    atten = _get(adc, "adc", "atten", str)
    if atten not in ATTEN:
        raise BoardFileError("board file: 'adc.atten' must be one of 0db, 2.5db, 6db, 11db")
    b["adc"] = {"atten": atten}

    s = _get(desc, "", "pilot", dict)
    cal = None
    if isinstance(s, dict) and s.get("cal") is not None:
        try:
            cal = check_cal(s["cal"], "pilot.cal")
        except ValueError as e:
            raise BoardFileError("board file: " + str(e)) from None
    lo_mv = hi_mv = None
    if cal is None:  # the older two-point calibration (ADC mV from read_uv at -12 V and +12 V)
        if "adc_mv_at_minus12v" not in s and "adc_mv_at_plus12v" not in s:
            raise BoardFileError("board file: missing key 'pilot.cal' (the calibration table, hal/boards/README.md)")
        lo_mv = _get(s, "pilot", "adc_mv_at_minus12v", int, 0, 3300)
        hi_mv = _get(s, "pilot", "adc_mv_at_plus12v", int, 0, 3300)
    if lo_mv is not None and hi_mv is not None and abs(hi_mv - lo_mv) < 1000:
        raise BoardFileError(
            "board file: 'pilot.adc_mv_at_plus12v' and 'pilot.adc_mv_at_minus12v' are less than 1000 mV apart"
        )
    burst = _get(s, "pilot", "burst", int, 16, 128) if "burst" in s else 48
    spacing = _get(s, "pilot", "spacing_us", int, 10, 200) if "spacing_us" in s else 43
    if burst * spacing < 1100:
        raise BoardFileError("board file: 'pilot.burst' * 'pilot.spacing_us' must cover a 1 ms PWM period (>= 1100 us)")
    if 1000 % spacing == 0:  # the pilot PWM's period in us (1 kHz, hal/esp32.py PILOT_FREQ_HZ)
        raise BoardFileError("board file: 'pilot.spacing_us' must not divide 1000 us (samples would repeat one phase)")
    b["pilot"] = {
        "pwm_pin": _pin(s, "pilot", "pwm_pin", used, output=True),
        "pwm_invert": _get(s, "pilot", "pwm_invert", bool),
        "adc_pin": _pin(s, "pilot", "adc_pin", used, adc=True),
        "adc_mv_at_minus12v": lo_mv,
        "adc_mv_at_plus12v": hi_mv,
        "cal": None if cal is None else [[cal[0][i], cal[1][i]] for i in range(len(cal[0]))],
        "settle_us": _get(s, "pilot", "settle_us", int, 5, 400) if "settle_us" in s else SETTLE_US_DEFAULT,
        "window_us": _get(s, "pilot", "window_us", int, 1100, 5000) if "window_us" in s else WINDOW_US_DEFAULT,
        "burst": burst,
        "spacing_us": spacing,
    }

    s = _get(desc, "", "pp", dict, optional=True)
    if s is None:
        b["pp"] = None
    else:
        b["pp"] = {
            "adc_pin": _pin(s, "pp", "adc_pin", used, adc=True),
            "pullup_ohm": _get(s, "pp", "pullup_ohm", int, 100, 100000),
            "pullup_mv": _get(s, "pp", "pullup_mv", int, 1000, 3300),
            "max_ohm": _get(s, "pp", "max_ohm", int, 500, 100000),
        }

    s = _get(desc, "", "contactor", dict)
    b["contactor"] = {
        "pins": _pins(s, "contactor", (1, 2), used, output=True, safety=True),
        "active_level": _level(s, "contactor", "active_level"),
        "feedback_pin": None,
        "feedback_pull": None,
        "feedback_closed_level": 1,
    }
    fpull = _pull(s, "contactor", "feedback_pull")
    fb = _pin(s, "contactor", "feedback_pin", used, pull=fpull, optional=True)
    if fb is not None:
        b["contactor"]["feedback_pin"] = fb
        b["contactor"]["feedback_pull"] = fpull
        b["contactor"]["feedback_closed_level"] = _level(s, "contactor", "feedback_closed_level")

    s = _get(desc, "", "rcd", dict)
    tpull = _pull(s, "rcd", "trip_pull")
    b["rcd"] = {
        "trip_pin": _pin(s, "rcd", "trip_pin", used, pull=tpull),
        "trip_pull": tpull,
        "trip_level": _level(s, "rcd", "trip_level"),
        "test_pin": _pin(s, "rcd", "test_pin", used, output=True, safety=True),
        "test_active_level": _level(s, "rcd", "test_active_level"),
    }

    s = _get(desc, "", "pe", dict, optional=True)
    if s is None:
        b["pe"] = None
    else:
        ppull = _pull(s, "pe", "pull")
        b["pe"] = {
            "pin": _pin(s, "pe", "pin", used, pull=ppull),
            "pull": ppull,
            "ok_level": _level(s, "pe", "ok_level"),
        }

    ntcs = _get(desc, "", "ntc", list)
    b["ntc"] = []
    for i in range(len(ntcs)):
        sec = "ntc[" + str(i) + "]"
        s = ntcs[i]
        side = _get(s, sec, "side", str)
        if side not in ("low", "high"):
            raise BoardFileError("board file: '" + sec + '.side\' must be "low" (NTC to GND) or "high" (NTC to supply)')
        b["ntc"].append(
            {
                "adc_pin": _pin(s, sec, "adc_pin", used, adc=True),
                "r25_ohm": _get(s, sec, "r25_ohm", int, 100, 1000000),
                "beta": _get(s, sec, "beta", int, 1000, 10000),
                "series_ohm": _get(s, sec, "series_ohm", int, 100, 1000000),
                "supply_mv": _get(s, sec, "supply_mv", int, 1000, 3300),
                "side": side,
            }
        )

    s = _get(desc, "", "ct", dict)
    b["ct"] = {
        "pins": _pins(s, "ct", (1, 3), used, adc=True),  # one per phase
        "ratio": _get(s, "ct", "ratio", int, 1, 10000),
        "burden_ohm": _get(s, "ct", "burden_ohm", int, 1, 10000),
        "full_scale_mv": _get(s, "ct", "full_scale_mv", int, 500, 3300),
        "burst_len": _get(s, "ct", "burst_len", int, 8, 256),
        "rate_hz": _get(s, "ct", "rate_hz", int, 500, 10000),
    }

    # Energy management: an optional 1/3 phase relay and optional mains CTs
    # (the house's grid current, measured like the EV's; no direction). Both
    # may be left out of a board file (older files have neither).
    s = _get(desc, "", "phase_relay", dict, optional=True) if "phase_relay" in desc else None
    b["phase_relay"] = (
        None
        if s is None
        else {
            "pin": _pin(s, "phase_relay", "pin", used, output=True),
            "three_phase_level": _level(s, "phase_relay", "three_phase_level"),
        }
    )
    s = _get(desc, "", "mains_ct", dict, optional=True) if "mains_ct" in desc else None
    b["mains_ct"] = (
        None
        if s is None
        else {
            "pins": _pins(s, "mains_ct", (1, 2, 3), used, adc=True),
            "ratio": _get(s, "mains_ct", "ratio", int, 1, 10000),
            "burden_ohm": _get(s, "mains_ct", "burden_ohm", int, 1, 10000),
            "full_scale_mv": _get(s, "mains_ct", "full_scale_mv", int, 500, 3300),
        }
    )

    # The checkpoint area: a raw data partition found by its label (optional;
    # absent or null: none, a power cut then loses a session's energy since
    # its last journal checkpoint).
    s = _get(desc, "", "nvlog", dict, optional=True) if "nvlog" in desc else None
    if s is not None:
        label = _get(s, "nvlog", "label", str)
        if not 1 <= len(label) <= 15:
            raise BoardFileError("board file: 'nvlog.label' must be 1..15 characters (an ESP-IDF partition label)")
        s = {"label": label}
    b["nvlog"] = s

    s = _get(desc, "", "led", dict, optional=True)
    b["led"] = (
        None
        if s is None
        else {"pin": _pin(s, "led", "pin", used, output=True), "active_level": _level(s, "led", "active_level")}
    )
    return b


def _eth(s, used):
    """The optional `eth` block (an Ethernet PHY on the RMII bus), or None.
    Checked first, so a charger pin on an RMII pin is named as the clash."""
    if s is None:
        return None
    if not isinstance(s, dict):
        raise BoardFileError("board file: 'eth' must be an object or null")
    phy = _get(s, "eth", "phy", str)
    if phy not in _PHYS:
        raise BoardFileError("board file: 'eth.phy' must be one of " + ", ".join(_PHYS))
    mode = _get(s, "eth", "clock_mode", str)
    if mode not in _CLOCK_PINS:
        raise BoardFileError('board file: \'eth.clock_mode\' must be "in" (PHY or oscillator drives GPIO0) or "out"')
    for p in _RMII_PINS:
        used[p] = "eth (RMII data)"
    e = {
        "phy": phy,
        "phy_addr": _get(s, "eth", "phy_addr", int, 0, 31),
        "clock_mode": mode,
        "mdc": _pin(s, "eth", "mdc", used, output=True),
        "mdio": _pin(s, "eth", "mdio", used, output=True),
        "power_pin": _pin(s, "eth", "power_pin", used, output=True, optional=True),
    }
    clk = _get(s, "eth", "clock_pin", int, 0, 39)
    if clk not in _CLOCK_PINS[mode]:
        pins = ", ".join(str(p) for p in _CLOCK_PINS[mode])
        raise BoardFileError(
            "board file: 'eth.clock_pin' = " + str(clk) + " cannot carry the RMII clock " + mode + " (GPIO " + pins + ")"
        )
    e["clock_pin"] = _pin(s, "eth", "clock_pin", used)
    return e


_BOARD_MAX_BYTES = 16384  # a description is ~1.5 KB: anything far larger is not one


def load(path):
    """Read (at most _BOARD_MAX_BYTES) and validate a board description file."""
    try:
        with open(path, "rb") as f:
            data = f.read(_BOARD_MAX_BYTES + 1)
    except OSError:
        raise BoardFileError("board file: cannot read " + path) from None
    if len(data) > _BOARD_MAX_BYTES:
        raise BoardFileError("board file: " + path + " is larger than " + str(_BOARD_MAX_BYTES) + " bytes")
    try:
        desc = json.loads(data.decode())
    except (ValueError, MemoryError, RuntimeError) as e:  # UnicodeError is a ValueError; too deep
        raise BoardFileError("board file: " + path + " is not valid JSON (" + str(e) + ")") from None
    return validate(desc)


# The installer's board description, when present, wins over the default,
# which ships beside this module (in its A/B slot: /slot_a/hal/boards/...).
BOARD_FILE = "/data/board.json"
DEFAULT_BOARD_FILE = "boards/esp32_devkit.json"  # relative to this module's folder


def board_file():
    """Path of the board description in force: /data/board.json if present,
    else the default one next to this module."""
    try:
        os.stat(BOARD_FILE)
        return BOARD_FILE
    except OSError:
        pass
    here = globals().get("__file__", "/hal/boardfile.py")
    return here[: here.rfind("/") + 1] + DEFAULT_BOARD_FILE
