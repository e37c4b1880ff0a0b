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
        from hal.esp32 import safe_outputs

        safe_outputs()
    except Exception as e:  # a broken install must still boot to a REPL
        print("boot: could not force outputs safe:", e)
