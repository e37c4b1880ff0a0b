# main.py: runs the charger. On a board with `machine.Pin` it drives the ESP32
# HAL; on the unix port it runs the same firmware against the simulated board
# (an EV that stays unplugged: use `make run` / tools/rig.py for scenarios).
def _board():
    try:
        import machine

        if hasattr(machine, "Pin"):
            from hal.esp32 import Esp32Board

            return Esp32Board()
    except ImportError:
        pass
    from hal.sim import SimBoard

    return SimBoard(realtime=True)


def main():
    board = _board()
    from firmware.app import Firmware

    fw = Firmware(board, config_path=board.data_dir + "/config.json")
    print("evse firmware", fw.cfg["id"], "on", board.name)
    fw.run()


if __name__ == "__main__":
    main()
