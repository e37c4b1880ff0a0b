"""Validation of remote commands (MQTT `<prefix>/<id>/set/<name>`).

Owns: turning an untrusted (name, payload bytes) pair into a value the charger
can take, or a short error text. Never raises, never trusts its input, never
uses floats (a payload like "nan", "1e999" or "16.000000001" cannot sneak
through a float conversion: numbers are parsed digit by digit into integers).

    parse(name, payload, limits) -> (value, None) or (None, error)

| name          | payload                                   | value                   |
| ------------- | ----------------------------------------- | ----------------------- |
| `current_a`   | 0 .. limits hw max; up to 3 decimals      | int mA; below 6000 (the |
|               | ("16", "16.5", "6.000", "3")              | 6 A minimum): pause     |
| `enable`      | true/false, 1/0, on/off (any case)        | True / False            |
| `authorize`   | RFID/user tag, printable ASCII, 1..64     | str                     |
| `stop`        | empty or anything up to PAYLOAD_MAX bytes | True                    |
| `clear_fault` | empty or anything up to PAYLOAD_MAX bytes | True                    |
| `mode`        | normal, smart or solar (any case)         | str (firmware/energy.py)|
| `mains_max_a`, `solar_import_a` | a number in the setting's range (firmware/config.py), up to 3 decimals | int mA |

A `current_a` below 6 A is a request for less than the EV may be offered:
it pauses (steady pilot, x1) until a limit of 6 A or more comes; refusing it
would leave the EV on its older, higher current. note() gives the ack's text
for it.

`limits` is a dict holding `hw_max_current_a` (the config dict itself will do;
firmware/config.py keeps it within 6..80 A). Surrounding ASCII whitespace is
ignored. Payloads longer than PAYLOAD_MAX bytes are refused unread.

A retained command is delivered again after every reconnect, long after it
was meant: `retained_error(name)` says which ones the link refuses when they
come retained (authorize, stop, clear_fault: one-shot actions). current_a and
enable are states: a retained one is a standing setting, applied again after
each reconnect (docs/mqtt.md).
"""

from micropython import const

from firmware.config import MODES, check
from firmware.iec61851 import MAX_OFFER_MA, MIN_OFFER_MA

PAYLOAD_MAX = const(64)  # bytes; longer payloads are refused before parsing
TAG_MAX = const(64)  # characters of an authorize tag
_FRACTION_DIGITS_MAX = const(3)  # "16.125" A = 16125 mA is the finest accepted

NAMES = ("current_a", "enable", "authorize", "stop", "clear_fault", "mode", "mains_max_a", "solar_import_a")
# Energy-management settings that may be changed at run time (not stored).
ENERGY_SETTINGS = ("mains_max_a", "solar_import_a")

# One-shot actions: retained, they would act again at every reconnect (a stale
# authorize would let the next EV charge with require_auth on).
_ONE_SHOT = ("authorize", "stop", "clear_fault")

_TRUE = (b"true", b"1", b"on")
_FALSE = (b"false", b"0", b"off")


def parse(name, payload, limits):
    """(value, None) for a valid command, else (None, error text). Never raises."""
    try:
        return _parse(name, payload, limits)
    except Exception:  # a bug here must not take the link or the loop down
        return None, "invalid command"


def retained_error(name):
    """None when a retained `name` command may be applied, else the ack's error."""
    if name in _ONE_SHOT:
        return "retained %s ignored: publish it without retain" % name
    return None


def _parse(name, payload, limits):
    if isinstance(payload, str):
        payload = payload.encode()
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        return None, "payload must be bytes"
    if len(payload) > PAYLOAD_MAX:
        return None, "payload too long"
    text = _strip(bytes(payload))
    if name == "current_a":
        return _current(text, limits)
    if name == "enable":
        low = text.lower()
        if low in _TRUE:
            return True, None
        if low in _FALSE:
            return False, None
        return None, "enable must be true or false"
    if name == "authorize":
        if not 1 <= len(text) <= TAG_MAX:
            return None, "tag must be 1..64 characters"
        for b in text:
            if b < 0x20 or b > 0x7E:
                return None, "tag must be printable ASCII"
        return text.decode(), None
    if name == "stop" or name == "clear_fault":
        return True, None
    if name == "mode":
        low = text.lower()
        for m in MODES:
            if low == m.encode():
                return m, None
        return None, "mode must be normal, smart or solar"
    if name in ENERGY_SETTINGS:
        ma = _decimal_to_milli(text)
        if ma is None:
            return None, "%s must be a plain number like 25 or 25.5" % name
        try:
            check(name, ma / 1000)  # the setting's own range, one definition
        except ValueError as e:
            return None, str(e)
        return ma, None
    return None, "unknown command"


def _strip(b):
    i = 0
    j = len(b)
    while i < j and b[i] in b" \t\r\n":
        i += 1
    while j > i and b[j - 1] in b" \t\r\n":
        j -= 1
    return b[i:j]


def _current(text, limits):
    ma = _decimal_to_milli(text)
    if ma is None:
        return None, "current_a must be a plain number like 16 or 16.5"
    try:
        hw_max_ma = int(limits["hw_max_current_a"] * 1000 + 0.5)
    except Exception:
        return None, "no hardware current limit configured"
    hw_max_ma = min(hw_max_ma, MAX_OFFER_MA)
    if ma > hw_max_ma:
        return None, "current_a must be 0..%s A (below %d A pauses)" % (_amps(hw_max_ma), MIN_OFFER_MA // 1000)
    return ma, None


def note(name, value):
    """What the ack says about an accepted command besides "ok", or None."""
    if name == "current_a" and value < MIN_OFFER_MA:
        if value == 0:
            return "paused: 0 A (steady pilot)"
        return "paused: %s A is below the %d A minimum (steady pilot)" % (_amps(value), MIN_OFFER_MA // 1000)
    return None


def _decimal_to_milli(text):
    """b"16.5" -> 16500; None for anything that is not digits[.digits]
    (no sign, exponent, inf/nan, hex, underscores) or has too many digits."""
    n = len(text)
    if n == 0 or n > 12:  # "80.000" is 6; 12 leaves room for leading zeros only
        return None
    whole = 0
    frac = 0
    frac_digits = -1  # -1: no point seen yet
    digits = 0
    for b in text:
        if b == 0x2E:  # "."
            if frac_digits >= 0:
                return None
            frac_digits = 0
        elif 0x30 <= b <= 0x39:
            digits += 1
            if frac_digits < 0:
                whole = whole * 10 + (b - 0x30)
                if whole > 1000:  # no current is that large: stop before ints grow
                    return None
            else:
                frac_digits += 1
                if frac_digits > _FRACTION_DIGITS_MAX:
                    return None
                frac = frac * 10 + (b - 0x30)
        else:
            return None
    if digits == 0 or frac_digits == 0:  # "." alone, or "16." (trailing point)
        return None
    if frac_digits > 0 and text[0] == 0x2E:  # ".5": ask for the leading zero
        return None
    while 0 <= frac_digits < _FRACTION_DIGITS_MAX:
        frac *= 10
        frac_digits += 1
    return whole * 1000 + frac


def _amps(ma):
    if ma % 1000:
        return "%d.%03d" % (ma // 1000, ma % 1000)
    return "%d" % (ma // 1000)
