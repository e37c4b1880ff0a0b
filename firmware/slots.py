"""A/B application slots: which slot runs, whether it proved itself, rollback.

Owns the board file /slot.json (layout in docs/deploy.md). tools/deploy.py
writes the application into the inactive slot (/slot_a or /slot_b) and then
switches by replacing /slot.json in one os.rename (atomic on LittleFS). This
module is compiled twice by the deploy tool: /slots.mpy at the flash root
(used by boot.py and main.py, so a broken slot cannot break the rollback) and
firmware/slots.mpy inside each slot (used by the app for mark_good()). Both
only ever talk through the file, whose format must stay compatible.

A boot of a slot not yet marked good counts as one try (main.py calls
begin()); after MAX_TRIES such boots without mark_good() boot.py falls back to
the previous slot and records why. The app marks the slot good after
HEALTHY_AFTER control ticks (firmware/app.py, 30 s) without an exception.

Never raises (a bookkeeping failure must not stop a charger), never imports
machine, never runs in the control tick except the one mark_good() call.
"""

import json
import os
import sys

STATE_FILE = "/slot.json"
MAX_TRIES = 3  # boots of an unproven slot before falling back

_good = False  # this boot already marked good (mark_good() is then free)


def slot_dir(name):
    return "/slot_" + name


def read():
    """The state dict, or None (no file: a board without slots; corrupt: the
    same, so the board still boots whatever sits at the flash root)."""
    try:
        with open(STATE_FILE) as f:
            st = json.load(f)
        if st.get("active") in ("a", "b"):
            return st
    except Exception:
        pass
    return None


def write(st):
    """Replace the state file atomically: full temp file, then one rename."""
    tmp = STATE_FILE + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(st))
    os.rename(tmp, STATE_FILE)


def use(st=None):
    """Put the active slot first on sys.path, and its lib/ right after the
    frozen modules: a library the image freezes (stock ESP32 images freeze
    umqtt.simple) runs from flash instead of a second copy loaded into RAM.
    No writes."""
    if st is None:
        st = read()
    if st is None:
        return None
    d = slot_dir(st["active"])
    for p in (d + "/lib", d):
        while p in sys.path:
            sys.path.remove(p)
    sys.path.insert(0, d)
    sys.path.insert(sys.path.index(".frozen") + 1 if ".frozen" in sys.path else 1, d + "/lib")
    return st


def path(p):
    """An absolute path inside the active slot ("/hal/x" -> "/slot_a/hal/x")."""
    st = read()
    return p if st is None else slot_dir(st["active"]) + p


def boot():
    """boot.py: fall back to the previous slot if the active one failed
    MAX_TRIES boots, then use() the slot that is to run. Returns the state."""
    try:
        st = read()
        if st is not None and not st.get("good") and st.get("tries", 0) >= MAX_TRIES:
            st = _rollback(st)
        return use(st)
    except Exception as e:
        print("slots: boot failed:", repr(e))
        return None


def _rollback(st):
    reason = st.get("error") or "not marked good after %d boots" % st.get("tries", 0)
    what = "%s in slot_%s: %s" % (st.get("version", "?"), st["active"], reason)
    prev = st.get("previous")
    if prev not in ("a", "b"):
        print("slots: no previous slot to fall back to;", what)
        return st
    new = {
        "active": prev,
        "version": st.get("prev_version", "?"),
        "good": bool(st.get("prev_good")),
        "tries": 0,
        "error": None,
        # The failed slot is not a fallback: never switch back to it.
        "previous": None,
        "prev_version": None,
        "prev_good": False,
        "rollback": what,
    }
    write(new)
    print("slots: rollback:", what)
    return new


def begin():
    """main.py, before the firmware starts: count this boot as a try of an
    unproven slot. Returns boot_report()."""
    try:
        st = read()
        if st is not None and not st.get("good"):
            st["tries"] = st.get("tries", 0) + 1
            write(st)
    except Exception as e:
        print("slots: begin failed:", repr(e))
    return boot_report()


def fail(reason):
    """main.py: the firmware did not start or stopped with an exception."""
    try:
        st = read()
        if st is not None:
            st["error"] = str(reason)[:120]
            write(st)
    except Exception as e:
        print("slots: fail failed:", repr(e))


def mark_good():
    """The app ran healthily: this slot becomes the fallback for the next
    deploy and stops counting tries. Free after the first call."""
    global _good
    if _good:
        return
    _good = True
    try:
        st = read()
        if st is not None and not st.get("good"):
            st["good"] = True
            st["tries"] = 0
            st["error"] = None
            write(st)
            print("slots: slot_%s marked good" % st["active"])
    except Exception as e:
        print("slots: mark_good failed:", repr(e))


def boot_report():
    """What runs and why, for the console and the MQTT boot event:
    {"slot", "version", "good", "tries", "rollback"}; slot None without slots.
    rollback is None or "<version> in slot_<x>: <reason>" of the last fallback."""
    st = read()
    if st is None:
        return {"slot": None, "version": None, "good": None, "tries": 0, "rollback": None}
    return {
        "slot": st["active"],
        "version": st.get("version"),
        "good": bool(st.get("good")),
        "tries": st.get("tries", 0),
        "rollback": st.get("rollback"),
    }
