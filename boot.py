# boot.py: the first code to run after every reset, soft or hard.
#
# An ESP32 keeps its output pins as they were through a soft reset, so before
# anything else the contactor is opened and the pilot put steady (+12 V, "no
# charging") straight from the board description. Nothing here may raise.
try:
    import machine

    _on_board = hasattr(machine, "Pin")
except ImportError:
    _on_board = False

if _on_board:
    try:
        from hal.esp32 import Esp32Board

        # Building the board creates every output at its safe level; safe()
        # then says so explicitly.
        Esp32Board().safe()
    except Exception as e:
        # A broken install or board file must still boot to a REPL. The
        # outputs then stay in their reset state (inputs: relays released).
        print("boot: could not force outputs safe:", e)
