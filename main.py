# main.py: runs the charger. On a board with `machine.Pin` it drives the ESP32
# HAL; on the unix port (the emulated board, tools/simboard.py) it runs the
# same firmware against the simulated board, configured by /data/sim.json
# when present (SimBoard keyword arguments plus "ev": "A".."D"; its files go
# to /data unless "data_dir" says otherwise).
#
# If the firmware cannot be imported or started, or stops with an exception,
# the failure is recorded in /slot.json (a failed boot of an unproven slot,
# see firmware/slots.py) and the board resets after FAIL_RESET_DELAY_MS, a
# window in which a Ctrl-C (the deploy tool) still reaches the REPL. A
# KeyboardInterrupt or SystemExit goes to the REPL: the firmware has already
# made the board safe on its way out.
import sys

FAIL_RESET_DELAY_MS = 1000
SIM_FILE = "/data/sim.json"
OTA_DIR = "/.ota"  # the emulated board's OTA app partitions (sim/ota.py, tools/simboard.py)
# Armed as soon as the board exists, before the firmware is imported and
# built (journal scan and compaction on a slow flash), so a hang there resets
# the board; the firmware's loop then re-arms its own 2 s (firmware/app.py).
BOOT_WDT_MS = 30000

_fw = None  # the running Firmware; tools/deploy.py reads its state after a Ctrl-C


def _board():
    """The board: the ESP32 HAL where machine.Pin exists (its board file from
    hal/boardfile.board_file(), as boot.py builds it), else the simulated one."""
    try:
        import machine

        real = hasattr(machine, "Pin")
    except ImportError:
        real = False
    if real:
        from hal.esp32 import Esp32Board

        return Esp32Board()
    import gc
    import json
    import os

    try:
        with open(SIM_FILE) as f:
            kw = json.loads(f.read(4096))
    except Exception:  # missing or damaged: the defaults
        kw = {}
    ev = kw.pop("ev", "A")
    kw.setdefault("data_dir", "/data")
    try:
        os.mkdir(kw["data_dir"])
    except OSError:
        pass  # exists
    gc.collect()  # the sim's tables want large blocks
    from sim.board import SimBoard

    try:
        os.stat(OTA_DIR)
        kw.setdefault("ota_dir", OTA_DIR)
    except OSError:
        pass  # no emulated partitions (simboard.py --interpreter unix64)
    board = SimBoard(realtime=True, **kw)
    board.set_ev(ev)
    from sim import follower  # rig.py --sim-ev: the EV follows this scenario (docs/rig.md)

    follower.follow(board, kw["data_dir"] + "/rig_scenario.json", lambda: _fw)
    return board


def main():
    global _fw
    try:
        import slots  # /slots.mpy, or the slot's copy boot.py registered
    except Exception:
        try:
            from firmware import slots
        except Exception:
            slots = None
    if slots is not None:
        import json

        print("slots:", json.dumps(slots.begin()))
    board = None
    try:
        board = _board()
        board.wdt_start(BOOT_WDT_MS)
        _image(board)
        import firmware
        from firmware.app import Firmware

        fw = Firmware(board, config_path=board.data_dir + "/config.json")
        _fw = fw
        print("evse firmware", fw.cfg["id"], "version", firmware.VERSION, "on", board.name)
        fw.run()
    except (KeyboardInterrupt, SystemExit):
        if _fw is None and board is not None:
            _maintenance(board)
        raise
    except Exception as e:
        if board is not None:
            board.safe()
        print("main: firmware failed:", repr(e))
        sys.print_exception(e)
        if slots is not None:
            slots.fail(repr(e))
        _reset()
        raise


def _image(board):
    """Print which OTA partition runs and whether the bootloader rolled back
    the last image (firmware/imagestate.py; tools/deploy.py --image watches it)."""
    try:
        import json

        from firmware import imagestate

        rep = imagestate.report(board)
        if rep is not None:
            print("image:", json.dumps(rep))
    except Exception as e:  # an older firmware without imagestate.py: no report
        print("image: no report:", repr(e))


def _maintenance(board):
    """Ctrl-C while the firmware was starting: outputs safe, and the boot
    watchdog gets the firmware's REPL maintenance window instead."""
    board.safe()
    try:
        from firmware.app import MAINTENANCE_WDT_MS

        board.wdt_start(MAINTENANCE_WDT_MS)
    except Exception:
        pass


def _reset():
    import time

    try:
        import machine

        reset = machine.reset
    except (ImportError, AttributeError):
        return  # plain unix port: the exception goes to the caller
    time.sleep_ms(FAIL_RESET_DELAY_MS)
    reset()


if __name__ == "__main__":
    main()
