# boot.py: the first code to run after every reset, soft or hard.
#
# An ESP32 keeps its output pins as they were through a soft reset, so the
# contactor is opened, the RCD test released and the pilot put steady (+12 V,
# "no charging") before the application runs, straight from the board
# description with bare machine.Pin calls. Then the A/B slot logic
# (/slots.mpy, or the copy inside a slot when that file is missing or
# damaged) checks the active slot's files and picks the slot to run, which
# may be a rollback: the failed slot's modules are then forgotten. Then the
# slot's hal.esp32 builds the board and forces it safe again (its PWM pilot
# included). Nothing here may raise, not even a Ctrl-C: boot.py failing would
# skip main.py.
import sys

# Where the board description may be: the installer's, else the default one
# of the active slot (see _board_files()), else a hand-flashed root's.
BOARD_FILES = ["/data/board.json", "/hal/boards/esp32_devkit.json"]
_BOARD_MAX_BYTES = 8192


def _slots():
    try:
        import slots  # /slots.mpy at the flash root: stable, not slotted

        return slots
    except BaseException as e:
        print("boot: /slots.mpy:", repr(e))
    for d in ("/slot_a", "/slot_b"):
        sys.path.insert(0, d)
        try:
            from firmware import slots

            sys.modules["slots"] = slots  # main.py's `import slots` finds it
            return slots
        except BaseException:
            pass
        finally:
            sys.path.remove(d)
            for m in ("firmware", "firmware.slots", "firmware.store"):
                sys.modules.pop(m, None)  # the slot to run is not chosen yet
    return None  # a board flashed without the deploy tool: no slots


def _bare_pins(machine, files):
    """Outputs safe without the HAL: contactor coils off, RCD test off, pilot
    steady +12 V, from the first board file that parses. True when the
    contactor pins were driven."""
    import json

    for p in files:
        try:
            with open(p) as f:
                b = json.loads(f.read(_BOARD_MAX_BYTES))
            c = b["contactor"]
            pins = [int(n) for n in c["pins"]]
            off = 1 - int(c["active_level"])
        except BaseException:
            continue
        Pin = machine.Pin
        done = True
        for n in pins:
            try:
                Pin(n, Pin.OUT, value=off)
            except BaseException as e:
                print("boot: contactor pin", n, repr(e))
                done = False
        try:
            r = b["rcd"]
            Pin(r["test_pin"], Pin.OUT, value=1 - r["test_active_level"])
        except BaseException as e:
            print("boot: RCD test pin:", repr(e))
        try:
            s = b["pilot"]
            Pin(s["pwm_pin"], Pin.OUT, value=0 if s["pwm_invert"] else 1)
        except BaseException as e:
            print("boot: pilot pin:", repr(e))
        print("boot: outputs driven safe with bare pins from", p)
        return done
    print("boot: no usable board file: outputs left in their reset state")
    return False


def _machine():
    """The machine module of a real board, or None (unix port, emulated board)."""
    try:
        import machine
    except BaseException:
        return None
    return machine if hasattr(machine, "Pin") else None


def _safe(machine):
    """Force the outputs safe with the slot's HAL; True when done."""
    try:
        from hal.esp32 import Esp32Board

        # Building the board creates every output at its safe level; safe()
        # then says so explicitly.
        Esp32Board().safe()
        return True
    except BaseException as e:
        print("boot: could not force outputs safe with the HAL:", repr(e))
        for m in ("hal.esp32", "hal.boardfile", "hal.pilotcal", "hal"):
            sys.modules.pop(m, None)  # retried after a rollback
    return False


def _board_files():
    """The board file in force, as hal/boardfile.board_file() picks it: the
    installer's when present (damaged or not: never another board's pins),
    else the active slot's default, else a hand-flashed root's."""
    import os

    try:
        os.stat(BOARD_FILES[0])
        return BOARD_FILES[:1]
    except OSError:
        pass
    files = [p + BOARD_FILES[1] for p in sys.path if p.startswith("/slot_") and not p.endswith("/lib")]
    return files + BOARD_FILES[1:]


try:
    slots = _slots()
    if slots is not None:
        slots.use()
    _m = _machine()
    if _m is not None:
        # First the bare pins: nothing of the slot is imported yet (a damaged
        # module could hang its import before slots.boot() has checked it).
        _bare_pins(_m, _board_files())
    if slots is not None:
        _st = slots.boot()  # checks the slot's files; may fall back (its modules forgotten)
    if _m is not None and not _safe(_m):
        _bare_pins(_m, _board_files())
except BaseException as e:
    print("boot:", repr(e))
