# boot.py: the first code to run after every reset, soft or hard.
#
# An ESP32 keeps its output pins as they were through a soft reset, so the
# contactor is opened and the pilot put steady (+12 V, "no charging") before
# the application runs, straight from the board description. Only one file
# read comes before it: /slot.json names the application slot (/slot_a or
# /slot_b, see docs/deploy.md) that holds hal/esp32. Nothing here may raise,
# not even a Ctrl-C: boot.py failing would skip main.py.
import sys

try:
    import slots  # /slots.mpy at the flash root: stable, not slotted
except BaseException:
    slots = None  # a board flashed without the deploy tool: no slots


def _safe():
    """Force the outputs safe; True when done (or nothing to do)."""
    try:
        import machine

        if not hasattr(machine, "Pin"):
            return True  # unix port / emulated board: main.py uses the sim HAL
        from hal.esp32 import BOARD_FILE, Esp32Board, board_file

        p = board_file()
        if p != BOARD_FILE and slots is not None:
            p = slots.path(p)  # the default board file ships inside the slot
        # Building the board creates every output at its safe level; safe()
        # then says so explicitly.
        Esp32Board(board_path=p).safe()
        return True
    except BaseException as e:
        # A broken install or board file must still boot to a REPL. The
        # outputs then stay in their reset state (inputs: relays released).
        print("boot: could not force outputs safe:", repr(e))
        for m in ("hal.esp32", "hal"):
            sys.modules.pop(m, None)  # retried after a rollback
        return False


try:
    if slots is not None:
        slots.use()
    _ok = _safe()
    if slots is not None:
        _st = slots.boot()  # may fall back to the previous slot
        if not _ok:
            _safe()
except BaseException as e:
    print("boot:", repr(e))
