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
Every boot checks the active slot's files against its manifest (sha256,
~100 KB) before anything is imported from it: damaged files send it back to
an intact previous slot, proven or not. A lost or corrupt /slot.json is
rebuilt from the slots whose files match their manifests. A boot loop writes
/slot.json a bounded number of times.

Never raises (a bookkeeping failure must not stop a charger), never imports
machine, never runs in the control tick except the one mark_good() call.
"""

import sys

try:
    import store  # /store.mpy at the flash root, beside /slots.mpy
except ImportError:
    from firmware import store  # inside a slot, on the unix port, on the host

STATE_FILE = "/slot.json"
MAX_TRIES = 3  # boots of an unproven slot before falling back
_STATE_MAX_BYTES = 1024
_MANIFEST_MAX_BYTES = 16384

_good = False  # this boot already marked good (mark_good() is then free)


def slot_dir(name):
    return "/slot_" + name


def read():
    """The state dict, or None (no file: a board without slots; corrupt: the
    same here; boot() then rebuilds it from the slots themselves)."""
    st, _ = store.load_json(STATE_FILE, _STATE_MAX_BYTES)
    if isinstance(st, dict) and st.get("active") in ("a", "b"):
        return st
    return None


def write(st):
    """Replace the state file atomically (firmware/store.py)."""
    import json

    store.write(STATE_FILE, json.dumps(st))


def _unpath(d):
    for p in (d + "/lib", d):
        while p in sys.path:
            sys.path.remove(p)


def use(st=None):
    """Put the active slot first on sys.path, and its lib/ right after the
    frozen modules: a library the image freezes (stock ESP32 images freeze
    umqtt.simple) runs from flash instead of a second copy loaded into RAM.
    The other slot goes off the path. No writes."""
    if st is None:
        st = read()
    if st is None:
        return None
    for name in ("a", "b"):
        _unpath(slot_dir(name))
    d = slot_dir(st["active"])
    sys.path.insert(0, d)
    sys.path.insert(sys.path.index(".frozen") + 1 if ".frozen" in sys.path else 1, d + "/lib")
    # A firmware module imported before the slot was chosen (an image with the
    # firmware frozen: /slots.mpy takes `firmware.store` from it when
    # /store.mpy is missing) would make every later `firmware.*` import the
    # image's, not the slot's: forgotten (whoever holds one keeps it).
    for m in list(sys.modules):
        if m.split(".")[0] == "firmware" and not str(getattr(sys.modules[m], "__file__", "")).startswith(d + "/"):
            del sys.modules[m]
    return st


def forget(name):
    """Drop the modules a slot's files gave (e.g. hal.esp32, imported by boot.py
    before a rollback), so the next import takes the other slot's."""
    d = slot_dir(name) + "/"
    for m in list(sys.modules):
        f = getattr(sys.modules[m], "__file__", None)
        if f is None and m.split(".")[0] in ("firmware", "hal", "umqtt"):
            f = d  # a port without __file__: drop what a slot could have given
        if isinstance(f, str) and f.startswith(d):
            del sys.modules[m]
    _unpath(slot_dir(name))


def manifest(name):
    """The slot's manifest dict, or None when missing or damaged."""
    m, _ = store.load_json(slot_dir(name) + "/manifest.json", _MANIFEST_MAX_BYTES)
    if isinstance(m, dict) and isinstance(m.get("files"), list):
        return m
    return None


def intact(name):
    """True when every file the slot's manifest lists is there with its size
    and sha256 (the deploy's own check, repeated on the board)."""
    m = manifest(name)
    if m is None:
        return False
    try:
        import hashlib
        from binascii import hexlify

        buf = bytearray(512)
        d = slot_dir(name) + "/"
        for path, size, sha in m["files"]:
            h = hashlib.sha256()
            n = 0
            with open(d + path, "rb") as f:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    h.update(buf if k == len(buf) else buf[:k])
                    n += k
            if n != size or hexlify(h.digest()).decode() != sha:
                return False
        return True
    except Exception:
        return False


def _version_key(v):
    """"1.10.2" -> (1, 10, 2), comparable; anything else sorts first."""
    out = []
    try:
        for x in str(v).split("."):
            out.append(int(x))
    except ValueError:
        return ()
    return tuple(out)


def _adopt():
    """/slot.json is missing or corrupt: run the newest slot whose files match
    its manifest, unproven, with the other intact one as its fallback. None
    when no slot is intact (a board flashed by hand runs its flash root)."""
    found = []
    for name in ("a", "b"):
        if intact(name):
            found.append((_version_key(manifest(name).get("version")), name))
    if not found:
        return None
    found.sort()
    name = found[-1][1]
    prev = found[0][1] if len(found) > 1 else None
    st = {
        "active": name,
        "version": manifest(name).get("version"),
        "good": False,
        "tries": 0,
        "error": None,
        "previous": prev,
        "prev_version": manifest(prev).get("version") if prev else None,
        "prev_good": False,
        "rollback": None,
    }
    print("slots: %s lost or corrupt: running slot_%s (version %s)" % (STATE_FILE, name, st["version"]))
    try:
        write(st)
    except OSError as e:
        print("slots: cannot write %s: %r" % (STATE_FILE, e))
    return st


def path(p):
    """An absolute path inside the active slot ("/hal/x" -> "/slot_a/hal/x")."""
    st = read()
    return p if st is None else slot_dir(st["active"]) + p


def boot():
    """boot.py: fall back to the previous slot if the active one is damaged
    or failed MAX_TRIES boots, then use() the slot that is to run. Returns
    the state."""
    try:
        st = read()
        if st is None:
            st = _adopt()
        elif not intact(st["active"]):
            # Flash rot or a stray write: proven or not, it must not be imported
            # (a truncated .mpy can hang the import, out of any except's reach).
            st = _rollback(st, "damaged files")
        elif not st.get("good") and st.get("tries", 0) >= MAX_TRIES:
            st = _rollback(st)
        return use(st)
    except Exception as e:
        print("slots: boot failed:", repr(e))
        return None


def _rollback(st, reason=None):
    reason = reason or st.get("error") or "not marked good after %d boots" % st.get("tries", 0)
    what = "%s in slot_%s: %s" % (st.get("version", "?"), st["active"], reason)
    prev = st.get("previous")
    if prev not in ("a", "b") or not intact(prev):
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
    try:
        write(new)
    except OSError as e:  # a full flash: this boot still runs the fallback
        print("slots: cannot write %s: %r" % (STATE_FILE, e))
    forget(st["active"])
    print("slots: rollback:", what)
    return new


def begin():
    """main.py, before the firmware starts: count this boot as a try of an
    unproven slot. Returns boot_report()."""
    try:
        st = read()
        # Past MAX_TRIES (no fallback left) the count stops: no flash write per looping boot.
        if st is not None and not st.get("good") and st.get("tries", 0) < MAX_TRIES:
            st["tries"] = st.get("tries", 0) + 1
            write(st)
    except Exception as e:
        print("slots: begin failed:", repr(e))
    return boot_report()


def fail(reason):
    """main.py: the firmware did not start or stopped with an exception."""
    try:
        st = read()
        reason = str(reason)[:120]
        if st is not None and st.get("error") != reason:  # a loop writes it once
            st["error"] = reason
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
        if st is not None and (not st.get("good") or st.get("error")):
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
