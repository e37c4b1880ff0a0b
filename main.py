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

_fw = None  # the running Firmware; tools/deploy.py reads its state after a Ctrl-C


def _board():
    try:
        import machine

        if hasattr(machine, "Pin"):
            from hal.esp32 import BOARD_FILE, Esp32Board, board_file

            p = board_file()
            if p != BOARD_FILE:
                try:
                    import slots

                    p = slots.path(p)
                except ImportError:
                    pass
            return Esp32Board(board_path=p)
    except ImportError:
        pass
    import gc
    import json
    import os

    try:
        with open(SIM_FILE) as f:
            kw = json.load(f)
    except (OSError, ValueError):
        kw = {}
    ev = kw.pop("ev", "A")
    kw.setdefault("data_dir", "/data")
    try:
        os.mkdir(kw["data_dir"])
    except OSError:
        pass  # exists
    gc.collect()  # the sim's tables want large blocks
    from sim.board import SimBoard

    board = SimBoard(realtime=True, **kw)
    board.set_ev(ev)
    from sim import follower  # rig.py --sim-ev: the EV follows this scenario (docs/rig.md)

    follower.follow(board, kw["data_dir"] + "/rig_scenario.json", lambda: _fw)
    return board


def main():
    global _fw
    try:
        import slots
    except ImportError:
        slots = None
    if slots is not None:
        import json

        print("slots:", json.dumps(slots.begin()))
    board = None
    try:
        board = _board()
        import firmware
        from firmware.app import Firmware

        fw = Firmware(board, config_path=board.data_dir + "/config.json")
        _fw = fw
        print("evse firmware", fw.cfg["id"], "version", firmware.VERSION, "on", board.name)
        fw.run()
    except (KeyboardInterrupt, SystemExit):
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
