"""OCPP date-times: wall seconds (UTC) to and from the ISO 8601 text OCPP
carries. Pure functions, no state."""

import time


def iso(wall_s):
    """An OCPP date-time (UTC) from wall seconds; the epoch when the clock is unset."""
    t = time.gmtime(int(wall_s or 0))
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (t[0], t[1], t[2], t[3], t[4], t[5])


def parse_time(text):
    """Wall seconds (UTC) of an OCPP date-time "YYYY-MM-DDThh:mm:ss[.f](Z|+00:00)",
    or None for anything else (another offset included)."""
    if not isinstance(text, str) or len(text) < 20 or text[4] != "-" or text[10] != "T":
        return None
    if not (text.endswith("Z") or text.endswith("+00:00")):
        return None
    try:
        y, m, d = int(text[0:4]), int(text[5:7]), int(text[8:10])
        hh, mm, ss = int(text[11:13]), int(text[14:16]), int(text[17:19])
    except ValueError:
        return None
    if not (2000 <= y < 2100 and 1 <= m <= 12 and 1 <= d <= 31 and hh < 24 and mm < 60 and ss < 61):
        return None
    # Days from the civil date (proleptic Gregorian, March-based year).
    if m <= 2:
        y -= 1
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    days = y * 365 + y // 4 - y // 100 + y // 400 + doy - 719468
    return days * 86400 + hh * 3600 + mm * 60 + ss
